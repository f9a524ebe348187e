//! The Docker driver: runs tasks as containers on a Docker engine, through bollard.
//!
//! Every container it creates carries the labels `hotpool=1` and
//! `hotpool.function=<name>`, runs with an init process, no capabilities,
//! `no-new-privileges`, pids and open-file limits, the task's memory limit with swap
//! disabled, its CPU quota and user, a read-only root filesystem (unless the task
//! opts out) with a sized tmpfs at `/tmp`, Docker's own logging off (`none`: the
//! driver reads stderr itself), and no network unless the task names one (then
//! not even a sandbox in dockerd's libnetwork: see [`DockerDriver`]'s create body).
//!
//! A task's bytes travel by its [`Transport`]: the engine's attach streams, or
//! named pipes shared with the container (`direct`: see `driver/linux/direct.rs`).
//!
//! Every call of dockerd's API has a deadline of its own ([`Deadlines`]): an
//! engine that does not answer fails the call as an `engine_error` instead of
//! hanging it.
//!
//! A pool name is claimed with a lock file in the runtime directory, under the
//! engine's ID (see `driver/linux/pool_lock.rs`): the claim keeps apart the processes of this
//! host (and the pools of this process) that drive one engine, not hosts that
//! share a remote one.

mod attach;
mod cookie;
mod deadlines;
mod engine_stats;
mod pull;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};

pub use cookie::DockerCookie;
pub use deadlines::Deadlines;

use super::{
    AdoptError, AdoptRefusal, ClaimError, Driver, EngineCallError, EngineTraits, FUNCTION_LABEL,
    IO_LABEL, LABEL, Leftover, MIN_TMP_SIZE, TASK_LABEL, TMP_BYTES_PER_INODE, Task, Transport,
};
use crate::driver::PoolLock;
use crate::driver::linux::credentials;
use crate::driver::linux::direct::{self, Direct, LazyRuntimeDir};
use crate::driver::pulls::SharedPulls;
use crate::error::CallError;
use deadlines::Op;

/// How often removing a container is tried while the engine fails.
const REMOVE_ATTEMPTS: u32 = 5;

/// The engine's name in metrics and messages.
pub const ENGINE: &str = "docker";

/// The smallest memory limit the engine accepts: 6 MiB.
pub const MIN_MEMORY: u64 = 6 << 20;

/// How the Docker driver sets up containers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DockerOptions {
    /// Where `config.json` with registry credentials lives; `None`: `$DOCKER_CONFIG`,
    /// else `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// The most processes a container may run.
    pub pids_limit: i64,
    /// The most files a container's process may have open (`nofile`, soft and hard).
    pub nofile_limit: i64,
    /// Where the `direct` transport keeps its init program and the pipes of each
    /// container, and where pool names are claimed (`pools/`); `None`:
    /// `$XDG_RUNTIME_DIR/hotpool`, else `/run/hotpool` for root, else
    /// `hotpool-UID` in the temporary directory.
    pub runtime_dir: Option<PathBuf>,
    /// The engine's unix socket; `None`: `DOCKER_HOST`, else
    /// `/var/run/docker.sock`.
    pub socket: Option<PathBuf>,
    /// How long each kind of engine call may take before it is given up.
    pub deadlines: Deadlines,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            socket: None,
            docker_config_dir: None,
            pids_limit: 256,
            nofile_limit: 1024,
            runtime_dir: None,
            deadlines: Deadlines::default(),
        }
    }
}

/// What the driver has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStatistics {
    /// Image pulls started (concurrent prepares of one image share one).
    pub image_pulls: u64,
}

/// What every cookie of a driver shares: the engine client and the pulls in flight.
pub(crate) struct Engine {
    pub(crate) docker: Docker,
    deadlines: Deadlines,
    docker_config_dir: Option<PathBuf>,
    pids_limit: i64,
    nofile_limit: i64,
    pulls: SharedPulls,
    /// The runtime directory, installed once a direct task needs it.
    runtime: LazyRuntimeDir,
    /// Where the engine is, if not on this host (then `direct` tasks attach).
    remote: Option<String>,
    /// Whether that was logged yet.
    remote_logged: std::sync::atomic::AtomicBool,
}

/// Runs tasks as Docker containers. Cheap to clone.
#[derive(Clone)]
pub struct DockerDriver {
    engine: Arc<Engine>,
}

impl DockerDriver {
    /// Connects to the local engine (`DOCKER_HOST`, else the default socket),
    /// negotiates the API version so older engines work, and checks it answers.
    pub async fn connect(options: DockerOptions) -> Result<DockerDriver, CallError> {
        fn unreachable(e: impl std::fmt::Display) -> CallError {
            CallError::engine(format!(
                "cannot reach the Docker engine ({e}); is it running? `docker info` should answer"
            ))
        }
        let deadlines = options.deadlines;
        // bollard's own timeout (on the head of every answer) is the longest
        // deadline: the table's always comes first.
        let client = match &options.socket {
            Some(socket) => Docker::connect_with_unix(
                &socket.to_string_lossy(),
                whole_seconds(deadlines.longest()).as_secs(),
                bollard::API_DEFAULT_VERSION,
            ),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(unreachable)?
        .with_timeout(whole_seconds(deadlines.longest()));
        let docker = timed(&deadlines, Op::Version, client.negotiate_version())
            .await
            .map_err(unreachable)?;
        timed(&deadlines, Op::Ping, docker.ping())
            .await
            .map_err(unreachable)?;
        Ok(DockerDriver {
            engine: Arc::new(Engine {
                docker,
                deadlines,
                docker_config_dir: credentials::config_dir(options.docker_config_dir.as_deref()),
                pids_limit: options.pids_limit,
                nofile_limit: options.nofile_limit,
                pulls: SharedPulls::default(),
                runtime: LazyRuntimeDir::new(options.runtime_dir),
                remote: match &options.socket {
                    Some(_) => None,
                    None => remote_engine(std::env::var("DOCKER_HOST").ok().as_deref()),
                },
                remote_logged: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Installs the init program of the `direct` transport (once; a task that
    /// needs it does so too) and says where.
    pub async fn install_runtime(&self) -> Result<PathBuf, CallError> {
        Ok(self.engine.runtime.get().await?.init())
    }

    /// The engine client, for callers that need the raw API.
    pub fn docker(&self) -> &Docker {
        &self.engine.docker
    }

    /// A snapshot of what the driver has done.
    pub fn statistics(&self) -> DriverStatistics {
        DriverStatistics {
            image_pulls: self.engine.pulls.started(),
        }
    }
}

impl Engine {
    /// Awaits one call of dockerd's API within its deadline; see [`timed`].
    async fn timed<T>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, Failure> {
        timed(&self.deadlines, op, call).await
    }

    /// What tells this engine apart from others: its ID, else where it is.
    async fn identity(&self) -> Result<String, Failure> {
        let info = self.timed(Op::Info, self.docker.info()).await?;
        Ok(info.id.filter(|id| !id.is_empty()).unwrap_or_else(|| {
            std::env::var("DOCKER_HOST")
                .ok()
                .filter(|host| !host.is_empty())
                .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned())
        }))
    }

    /// Whether direct tasks attach, the engine being elsewhere; says so once.
    fn attaches_instead(&self) -> bool {
        let Some(host) = &self.remote else {
            return false;
        };
        if !self.remote_logged.swap(true, Ordering::Relaxed) {
            tracing::info!(docker_host = %host, "the Docker engine is not on this host: functions use the attach transport, as no directory can be shared with their containers");
        }
        true
    }

    /// Force-removes a container; one that is already gone is fine.
    /// Tries again while the engine fails (restarting, say), up to
    /// [`REMOVE_ATTEMPTS`] times with a doubling pause.
    pub(crate) async fn remove_container(&self, id: &str) -> Result<(), CallError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let mut pause = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match self
                .timed(
                    Op::Remove,
                    self.docker.remove_container(id, Some(options.clone())),
                )
                .await
            {
                Ok(()) => return Ok(()),
                // 404: gone already; 409: its removal is in progress.
                Err(EngineCallError::Failed(
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 404 | 409,
                        ..
                    },
                )) => return Ok(()),
                Err(e) if attempt >= REMOVE_ATTEMPTS => {
                    return Err(CallError::engine(format!("removing container {id}: {e}")));
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
            }
        }
    }

    fn container_config(&self, task: &Task, direct: Option<&Direct>) -> ContainerCreateBody {
        let memory = i64::try_from(task.memory).unwrap_or(i64::MAX);
        let limit = (memory > 0).then_some(memory);
        let tmp_size = task.tmp_size.max(MIN_TMP_SIZE);
        let tmp_options = format!(
            "rw,noexec,nosuid,nodev,mode=1777,size={tmp_size},nr_inodes={}",
            tmp_size / TMP_BYTES_PER_INODE
        );
        let attach = direct.is_none();
        let mut binds: Vec<String> = task
            .volumes
            .iter()
            .map(|(host, container)| format!("{}:{}", host.display(), container.display()))
            .collect();
        if let Some(direct) = direct {
            binds.push(format!("{}:{}:ro", direct.init.display(), direct::INIT));
            binds.push(format!("{}:{}", direct.dir.path().display(), direct::IO));
        }
        ContainerCreateBody {
            image: Some(task.image.clone()),
            entrypoint: direct.map(Direct::entrypoint),
            cmd: match direct {
                Some(direct) => Some(direct.command.clone()),
                None => (!task.command.is_empty()).then(|| task.command.clone()),
            },
            env: Some(task.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: task.workdir.clone(),
            user: Some(docker_user(&task.user)),
            labels: Some(
                task.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain([
                        (LABEL.to_owned(), "1".to_owned()),
                        (FUNCTION_LABEL.to_owned(), task.function.clone()),
                        (TASK_LABEL.to_owned(), task.id.clone()),
                    ])
                    .chain(direct.map(|direct| {
                        (IO_LABEL.to_owned(), direct.dir.path().display().to_string())
                    }))
                    .collect(),
            ),
            attach_stdin: Some(attach),
            attach_stdout: Some(attach),
            attach_stderr: Some(attach),
            open_stdin: Some(attach),
            // Closing our end of stdin closes the container's: the function sees EOF.
            stdin_once: Some(attach),
            tty: Some(false),
            // No network at all, not network mode `none` alone: the container
            // still gets its own network namespace with only loopback (runc
            // makes it), but dockerd leaves it out of libnetwork, whose store
            // lock deadlocked dockerd 20.10 when hundreds of containers with a
            // sandbox exited at once (moby #27761).
            network_disabled: Some(task.network.is_none()),
            host_config: Some(HostConfig {
                memory: limit,
                // Swap limit equal to the memory limit: no swap at all.
                memory_swap: limit,
                nano_cpus: Some(task.cpus.nano_cpus()),
                network_mode: Some(task.network.clone().unwrap_or_else(|| "none".to_owned())),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                pids_limit: Some(self.pids_limit),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".to_owned()),
                    soft: Some(self.nofile_limit),
                    hard: Some(self.nofile_limit),
                }]),
                init: Some(true),
                readonly_rootfs: Some(task.read_only),
                tmpfs: Some(HashMap::from([("/tmp".to_owned(), tmp_options)])),
                // hotpool reads stderr itself and logs it.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".to_owned()),
                    config: None,
                }),
                binds: (!binds.is_empty()).then_some(binds),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

impl Driver for DockerDriver {
    type Cookie = DockerCookie;
    type Claim = PoolLock;

    fn traits(&self) -> EngineTraits {
        EngineTraits {
            name: ENGINE,
            min_memory: MIN_MEMORY,
            attach: true,
        }
    }

    async fn ping(&self) -> Result<(), CallError> {
        self.engine
            .timed(Op::Ping, self.engine.docker.ping())
            .await
            .map(drop)
            .map_err(CallError::engine)
    }

    fn removal_deadline(&self) -> Duration {
        self.engine.deadlines.removal()
    }

    async fn claim_pool(&self, pool: &str) -> Result<PoolLock, ClaimError> {
        let failed = |error: String| ClaimError::Io {
            pool: pool.to_owned(),
            error: std::io::Error::other(error),
        };
        let engine = self
            .engine
            .identity()
            .await
            .map_err(|e| failed(format!("the Docker engine did not say its ID: {e}")))?;
        let (root, name) = (self.engine.runtime.path().to_owned(), pool.to_owned());
        tokio::task::spawn_blocking(move || PoolLock::take(&root, &engine, &name))
            .await
            .map_err(|e| failed(e.to_string()))?
    }

    async fn prepare(&self, task: Task) -> Result<DockerCookie, CallError> {
        let image = pull::ensure_image(&self.engine, &task.image).await?;
        let direct = match task.transport {
            Transport::Attach => None,
            Transport::Direct if self.engine.attaches_instead() => None,
            Transport::Direct => {
                let runtime = self.engine.runtime.get().await?;
                Some(Direct::prepare(
                    runtime,
                    &task,
                    image.entrypoint,
                    image.cmd,
                )?)
            }
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&container_name(&task.id))
            .build();
        let config = self.engine.container_config(&task, direct.as_ref());
        let created = self
            .engine
            .timed(
                Op::Create,
                self.engine.docker.create_container(Some(options), config),
            )
            .await
            .map_err(|e| {
                CallError::engine(format!("creating a container of {}: {e}", task.image))
            })?;
        Ok(DockerCookie::new(
            self.engine.clone(),
            created.id,
            task,
            direct,
        ))
    }

    async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, CallError> {
        let leftovers = self.leftovers(key, value).await?;
        for leftover in &leftovers {
            self.remove_leftover(leftover).await?;
        }
        Ok(leftovers.len())
    }

    async fn leftovers(&self, key: &str, value: &str) -> Result<Vec<Leftover>, CallError> {
        let filters = HashMap::from([("label", vec![format!("{key}={value}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .engine
            .timed(
                Op::ListContainers,
                self.engine.docker.list_containers(Some(options)),
            )
            .await
            .map_err(|e| {
                CallError::engine(format!(
                    "listing the containers labelled {key}={value}: {e}"
                ))
            })?;
        Ok(containers
            .into_iter()
            .filter_map(|container| {
                let engine_id = container.id?;
                let labels: BTreeMap<String, String> =
                    container.labels.unwrap_or_default().into_iter().collect();
                let task_id = labels.get(TASK_LABEL).cloned().unwrap_or_default();
                Some(Leftover::new(task_id, engine_id, labels))
            })
            .collect())
    }

    async fn adopt(&self, leftover: &Leftover, task: Task) -> Result<DockerCookie, AdoptError> {
        let refused =
            |refusal, why: &dyn fmt::Display| AdoptError::new(refusal, &leftover.engine_id, why);
        let io = leftover
            .labels
            .get(IO_LABEL)
            .ok_or_else(|| refused(AdoptRefusal::Unproven, &"it has no direct pipes"))?;
        let info = self
            .engine
            .timed(
                Op::Inspect,
                self.engine
                    .docker
                    .inspect_container(&leftover.engine_id, None),
            )
            .await
            .map_err(|e| refused(AdoptRefusal::Unproven, &e))?;
        let pid = info
            .state
            .filter(|state| state.running == Some(true))
            .and_then(|state| state.pid)
            .filter(|pid| *pid > 0)
            .ok_or_else(|| refused(AdoptRefusal::Ended, &"it is not running"))?;
        let runtime = self.engine.runtime.get().await?;
        let (dir, one_way) = runtime
            .take_over(Path::new(io))
            .map_err(|e| refused(e.refusal(), &e))?;
        Ok(DockerCookie::adopted(
            self.engine.clone(),
            leftover.engine_id.clone(),
            task,
            (dir, one_way),
            pid,
        ))
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> Result<(), CallError> {
        self.engine.remove_container(&leftover.engine_id).await?;
        if let Some(io) = leftover.labels.get(IO_LABEL) {
            direct::remove_left_dir(self.engine.runtime.path(), Path::new(io));
        }
        Ok(())
    }
}

/// The engine's address if it is not on this host: a `DOCKER_HOST` other than
/// a unix socket.
fn remote_engine(docker_host: Option<&str>) -> Option<String> {
    docker_host
        .filter(|host| !host.is_empty() && !host.starts_with("unix://"))
        .map(str::to_owned)
}

/// A container name from a task id: the characters Docker allows, `hotpool-` first.
fn container_name(task_id: &str) -> String {
    let clean: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("hotpool-{clean}")
}

/// How a call of dockerd's API failed.
type Failure = EngineCallError<bollard::errors::Error>;

/// Awaits one call of dockerd's API for at most its deadline in `deadlines`,
/// and records its latency in
/// `hotpool_engine_api_seconds{engine="docker",op,result}`.
async fn timed<T>(
    deadlines: &Deadlines,
    op: Op,
    call: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, Failure> {
    crate::driver::timed_engine_call(ENGINE, op.as_str(), deadlines.of(op), call).await
}

/// `duration` in whole seconds, rounded up (bollard's timeouts are whole
/// seconds, and one of 0 s would fail every call).
fn whole_seconds(duration: Duration) -> Duration {
    let up = u64::from(duration.subsec_nanos() > 0);
    Duration::from_secs(duration.as_secs().saturating_add(up).max(1))
}

/// The user as dockerd is told it: a bare uid gets its own number as gid, as on
/// containerd. Left to itself dockerd would take the gid from the image's
/// `/etc/passwd`, and 0, the root group, from an image without one. Names pass
/// as they are, for dockerd to look up in the image.
fn docker_user(user: &str) -> String {
    match direct::numeric_user(user) {
        Some((uid, gid)) => format!("{uid}:{gid}"),
        None => user.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine whose client is never used: enough to build container configs.
    fn offline_engine() -> Engine {
        Engine {
            docker: Docker::connect_with_http(
                "http://127.0.0.1:9",
                1,
                bollard::API_DEFAULT_VERSION,
            )
            .expect("a client"),
            deadlines: Deadlines::default(),
            docker_config_dir: None,
            pids_limit: 256,
            nofile_limit: 1024,
            pulls: SharedPulls::default(),
            runtime: LazyRuntimeDir::new(Some(PathBuf::from("/nonexistent"))),
            remote: None,
            remote_logged: std::sync::atomic::AtomicBool::new(false),
        }
    }

    #[test]
    fn only_an_engine_off_this_host_is_remote() {
        assert_eq!(remote_engine(None), None);
        assert_eq!(remote_engine(Some("")), None);
        assert_eq!(remote_engine(Some("unix:///var/run/docker.sock")), None);
        assert_eq!(
            remote_engine(Some("tcp://10.0.0.2:2376")).as_deref(),
            Some("tcp://10.0.0.2:2376")
        );
    }

    #[test]
    fn a_tmp_size_of_zero_still_gets_a_bounded_tmp() {
        // tmpfs reads size=0 and nr_inodes=0 as "no limit".
        let mut task = Task::new("t", "f", "img");
        task.tmp_size = 0;
        let config = offline_engine().container_config(&task, None);
        let tmpfs = config.host_config.unwrap().tmpfs.unwrap();
        assert!(
            tmpfs["/tmp"].ends_with(",size=1048576,nr_inodes=64"),
            "{tmpfs:?}"
        );
    }

    #[test]
    fn a_bare_uid_runs_in_its_own_group_and_names_pass_as_they_are() {
        assert_eq!(docker_user("7"), "7:7");
        assert_eq!(docker_user("4321:99"), "4321:99");
        assert_eq!(docker_user("nobody"), "nobody");
        assert_eq!(docker_user("7:nogroup"), "7:nogroup");
        let mut task = Task::new("t", "f", "img");
        task.user = "0".into();
        let config = offline_engine().container_config(&task, None);
        assert_eq!(config.user.as_deref(), Some("0:0"));
    }

    #[test]
    fn bollard_timeouts_round_up_to_a_whole_second() {
        assert_eq!(
            whole_seconds(Duration::from_millis(1)),
            Duration::from_secs(1)
        );
        assert_eq!(whole_seconds(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            whole_seconds(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(2500)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn container_names_are_sanitized() {
        assert_eq!(container_name("echo/1 a"), "hotpool-echo-1-a");
        assert_eq!(container_name("fn_1.x-y"), "hotpool-fn_1.x-y");
    }
}
