//! One prepared container on containerd: create and start its task with the
//! direct transport's pipes, wait for it, kill it, remove it.
//!
//! Preparing writes the container: its root filesystem (a snapshot prepared on
//! the image's top layer) and its record with the whole runtime spec, both
//! under a short lease so the collector cannot take the fresh snapshot before
//! the record references it. Running creates the task with null stdio (all
//! three paths empty: the shim copies nothing, and never only some of them,
//! which the 1.6 shim cannot take) and starts it; the function's bytes go
//! through the pipes. A caller may create the task first
//! ([`ContainerdCookie::create_task`]: runc's init then waits in the
//! container's namespaces and cgroup) and `run` later only starts it: the
//! warm start `hotpool bench` measures. How it ended comes from hotpool-init
//! on the status pipe; where that says nothing (the container went down
//! whole), from the task's exit event, or containerd's answer if no event
//! comes. An OOM kill is read
//! from the cgroup's own count first, then from the `/tasks/oom` event.
//! A kill is SIGKILL straight to the task's init, where hotpool sees its PID
//! namespace (containerd's kill where it does not); closing deletes the task,
//! then the snapshot, then the record.
//!
//! A cookie may also be of a running container taken over from an earlier
//! owner ([`ContainerdCookie::adopted`]): `run` then starts nothing and hands
//! out the pipes taken over; waiting, killing and closing are as for a
//! container it started.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, KillRequest, StartRequest,
};
use containerd_client::types::Mount;
use tokio::io::BufReader;
use tokio::net::unix::pipe;
use tokio::time::Instant;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::client::{QUICK, SLOW, call, gone_is_fine};
use super::events::{self, Watch};
use super::groups::Membership;
use super::pull::{self, ImageConfig};
use super::spec::{self, SpecInput};
use super::{Engine, SIGKILL};
use crate::driver::linux::cgroup::CgroupCounters;
use crate::driver::linux::direct::{self, Direct, Ended, IoDir};
use crate::driver::linux::footprint::Footprint;
use crate::driver::linux::pidfd::ProcessHandle;
use crate::driver::linux::stderr::{self, StderrTap};
use crate::driver::wiring::Copiers;
use crate::driver::{
    BoxRead, BoxWrite, Cookie, IO_LABEL, RunResult, Running, StatSink, TASK_LABEL, Task, Transport,
};
use crate::driver::{FUNCTION_LABEL, LABEL};
use crate::error::CallError;
use crate::stats::{Stat, names};

/// How long `wait` lets the output streams run dry after the exit.
const STREAM_DRAIN: Duration = Duration::from_secs(5);
/// The pauses before looking again whether a SIGKILL was an OOM kill: the
/// event may come after the exit.
const OOM_EVENT_PAUSES: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(300),
];
/// How long a direct container's init has to open its pipes once started.
const INIT_READY: Duration = Duration::from_secs(30);
/// How long the status pipe of a container that has ended is read for the
/// init's `ready` (it is there at once, if the init said it).
const READY_AFTER_EXIT: Duration = Duration::from_secs(1);
/// How long an exit may go without its event before containerd is asked.
const EXIT_ASK_AFTER: Duration = Duration::from_secs(2);
/// How long the lease of a prepare holds what it made if hotpool dies.
const PREPARE_LEASE_EXPIRY: Duration = Duration::from_secs(600);
/// How often a task that wants stats samples gets one.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The type of a runtime spec, as containerd stores it.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The runtime of every container: runc through its v2 shim.
const RUNTIME: &str = "io.containerd.runc.v2";
/// The longest id containerd takes.
const ID_MAX: usize = 76;

/// A container's pipes: the directory, hotpool's ends until `run` takes
/// them, then the status pipe its verdict comes on.
struct DirectPipes {
    dir: Mutex<Option<IoDir>>,
    opening: Option<Opening>,
    status: tokio::sync::Mutex<Option<BufReader<pipe::Receiver>>>,
}

/// hotpool's ends of a container's pipes before `run`.
enum Opening {
    /// The first ends of a container to start: one-way once its init is ready.
    Early(direct::Ends),
    /// The one-way ends of a running container taken over from an earlier owner.
    TakenOver(direct::OneWay),
}

/// The task's own pipes and sinks, until `run` takes them.
struct Plumbing {
    input: Option<BoxRead>,
    stdout: Option<BoxWrite>,
    stats: Option<StatSink>,
}

/// A created container of a [`super::ContainerdDriver`].
pub struct ContainerdCookie {
    engine: Arc<Engine>,
    id: String,
    /// The mounts of its root filesystem, for its task.
    rootfs: Vec<Mount>,
    memory: u64,
    timeout: Option<Duration>,
    /// What the task brought for `run` to wire up (in a mutex only to be `Sync`).
    plumbing: Mutex<Plumbing>,
    stderr: Arc<StderrTap>,
    started: Option<Instant>,
    /// Whether the caller samples the counters itself (the task's `counters`).
    caller_samples_counters: bool,
    /// The pid of its task's init, once the task is created.
    pid: Option<u32>,
    /// A handle on that init, where hotpool sees its PID namespace: killed
    /// through it, not through the shim.
    init: Option<ProcessHandle>,
    /// The container's cgroup counters, once open.
    counters: Option<Arc<CgroupCounters>>,
    /// The tasks copying its bytes.
    copiers: Copiers,
    pipes: DirectPipes,
    /// What the events say of the container.
    watch: Arc<Watch>,
    /// Its place in a shim group, until it is removed.
    membership: Mutex<Option<Membership>>,
    /// Whether its task may have been created (and so must be deleted).
    task_created: AtomicBool,
    closed: AtomicBool,
    /// Let go for a next owner: `wait` returns.
    released: CancellationToken,
}

impl ContainerdCookie {
    /// Makes `task`'s container: its image present, its pipes, its snapshot
    /// and its record with the runtime spec.
    pub(super) async fn prepare(engine: Arc<Engine>, task: Task) -> Result<Self, CallError> {
        if task.transport == Transport::Attach {
            return Err(CallError::engine(
                "the containerd engine has no attach transport: use direct",
            ));
        }
        if let Some(network) = &task.network {
            return Err(CallError::engine(format!(
                "network {network:?}: on containerd a function has no network but loopback, and named networks are not supported"
            )));
        }
        let user = spec::numeric_user(&task.user)?;
        let id = container_id(&task.id);
        let mut image = pull::ensure_image(&engine, &task.image).await?;
        let runtime = engine.runtime.get().await?;
        let direct = Direct::prepare(runtime, &task, image.entrypoint.clone(), image.cmd.clone())?;
        let membership = engine.groups.join();
        let spec = spec::runtime_spec(&SpecInput {
            container_id: &id,
            task: &task,
            image: &image,
            direct: &direct,
            user,
            pids_limit: engine.pids_limit,
            nofile_limit: engine.nofile_limit,
            shim_group: membership.name(),
        });
        let spec = serde_json::to_vec(&spec)
            .map_err(|e| CallError::engine(format!("writing the runtime spec: {e}")))?;
        let labels = container_labels(&task, &direct);
        let mut created = engine
            .create_container(&id, &task.image, &image, &labels, &spec)
            .await;
        if matches!(&created, Err(status) if status.code() == Code::NotFound) {
            // The image's snapshots went (removed from outside): unpack again.
            pull::forget_unpacked(&engine, &image.top_snapshot);
            image = pull::ensure_image(&engine, &task.image).await?;
            created = engine
                .create_container(&id, &task.image, &image, &labels, &spec)
                .await;
        }
        let rootfs = created.map_err(|status| {
            CallError::engine(format!(
                "creating a container of {}: {}",
                task.image,
                status.message()
            ))
        })?;
        let pipes = DirectPipes {
            dir: Mutex::new(Some(direct.dir)),
            opening: Some(Opening::Early(direct.early)),
            status: tokio::sync::Mutex::new(None),
        };
        Ok(ContainerdCookie::new(
            engine,
            id,
            task,
            pipes,
            Some(membership),
            rootfs,
        ))
    }

    /// The cookie of running container `id`, its init's pid `pid`, taken over
    /// for `task` with its pipes `taken`: `run` hands them out, starting
    /// nothing. It joins no shim group of this driver: it is in a group of
    /// the driver that made it, where this one creates no task.
    pub(super) fn adopted(
        engine: Arc<Engine>,
        id: String,
        task: Task,
        taken: (IoDir, direct::OneWay),
        pid: u32,
    ) -> ContainerdCookie {
        let (dir, one_way) = taken;
        let pipes = DirectPipes {
            dir: Mutex::new(Some(dir)),
            opening: Some(Opening::TakenOver(one_way)),
            status: tokio::sync::Mutex::new(None),
        };
        let mut cookie = ContainerdCookie::new(engine, id, task, pipes, None, Vec::new());
        cookie.task_created.store(true, Ordering::Release);
        cookie.task_made(pid);
        cookie.watch.started();
        cookie.started = Some(Instant::now());
        cookie.counters = CgroupCounters::open(i64::from(pid)).map(Arc::new);
        cookie
    }

    /// The cookie of container `id` of `task`, watched from now on, with its
    /// pipes, its place in a shim group and its root filesystem's mounts.
    fn new(
        engine: Arc<Engine>,
        id: String,
        task: Task,
        pipes: DirectPipes,
        membership: Option<Membership>,
        rootfs: Vec<Mount>,
    ) -> ContainerdCookie {
        let watch = engine.events.watch(&id);
        ContainerdCookie {
            engine,
            id,
            rootfs,
            memory: task.memory,
            timeout: task.timeout,
            plumbing: Mutex::new(Plumbing {
                input: task.input,
                stdout: task.stdout,
                stats: task.stats,
            }),
            stderr: Arc::new(StderrTap::new(task.stderr)),
            started: None,
            pid: None,
            init: None,
            caller_samples_counters: task.counters,
            counters: None,
            copiers: Copiers::default(),
            pipes,
            watch,
            membership: Mutex::new(membership),
            task_created: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            released: CancellationToken::new(),
        }
    }

    /// containerd's id of the container.
    pub fn container_id(&self) -> &str {
        &self.id
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Option<Membership>> {
        self.membership.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the task (`runc create`: its namespaces, cgroup and root
    /// filesystem, runc's init waiting to exec), not started; yields the pid
    /// of its init.
    async fn create_task_now(&self) -> Result<u32, CallError> {
        let client = &self.engine.client;
        let create = client.request(CreateTaskRequest {
            container_id: self.id.clone(),
            rootfs: self.rootfs.clone(),
            // Null stdio: the shim copies nothing.
            stdin: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            terminal: false,
            ..Default::default()
        });
        // From here a task may exist (a create past its deadline may still
        // make one): closing deletes whatever there is.
        self.task_created.store(true, Ordering::Release);
        let mut tasks = client.tasks();
        let creating = call("task_create", SLOW, tasks.create(create));
        // The membership is only taken at close, which `&mut self` of
        // `run` and `create_task` rules out.
        let group = self.membership().take();
        let created = match &group {
            Some(group) => group.create_task(creating).await,
            None => creating.await,
        };
        *self.membership() = group;
        created.map(|created| created.pid).map_err(|status| {
            CallError::engine(format!(
                "creating the task of container {}: {}",
                self.id,
                status.message()
            ))
        })
    }

    /// Starts the created task (`runc start`: its init execs hotpool-init).
    async fn start_task(&self) -> Result<(), CallError> {
        let client = &self.engine.client;
        let start = client.request(StartRequest {
            container_id: self.id.clone(),
            exec_id: String::new(),
        });
        call("task_start", SLOW, client.tasks().start(start))
            .await
            .map_err(|status| {
                CallError::engine(format!(
                    "starting container {}: {}",
                    self.id,
                    status.message()
                ))
            })?;
        self.watch.started();
        Ok(())
    }

    /// Creates the container's task now without starting it, so that
    /// [`Cookie::run`] later only starts it: a warm start, with the
    /// namespaces, cgroup and root filesystem made and runc's init waiting.
    /// At most once, and before `run`; closing or dropping the cookie removes
    /// the task as it would a started one.
    pub async fn create_task(&mut self) -> Result<(), CallError> {
        if self.pid.is_some() || !matches!(self.pipes.opening, Some(Opening::Early(_))) {
            return Err(CallError::engine(format!(
                "the task of container {} was created before",
                self.id
            )));
        }
        self.task_made(self.create_task_now().await?);
        Ok(())
    }

    /// Notes the pid of the created task's init, and opens a handle on it.
    fn task_made(&mut self, pid: u32) {
        self.pid = Some(pid);
        self.init = ProcessHandle::open(pid).ok();
    }

    /// What the container holds now (its processes and their memory, its
    /// cgroup's memory), once its task is created; `None` before, or where
    /// its cgroup cannot be read from this host.
    pub fn footprint(&self) -> Option<Footprint> {
        Footprint::of_cgroup_of(self.pid?)
    }

    /// Waits for containerd to report the task's exit: its event, or, when
    /// none comes for a while, its own answer. Yields the exit status.
    async fn engine_exit(&self) -> i64 {
        loop {
            if let Ok(status) = tokio::time::timeout(EXIT_ASK_AFTER, self.watch.exited()).await {
                return i64::from(status);
            }
            if let Some(status) = events::exit_status(&self.engine.client, &self.id).await {
                return i64::from(status);
            }
        }
    }

    /// Waits until all of stdout has reached the task's sink and all of stderr the
    /// tap (the pipes end once the container has stopped).
    async fn drain_output(&self) {
        self.copiers.drain(STREAM_DRAIN).await;
    }

    /// Turns an exit status into a result: an OOM kill if the cgroup counted
    /// one or the events said so (a SIGKILL waits a moment for that event).
    async fn judge_exit(&self, code: i64) -> RunResult {
        const SIGKILLED: i64 = 128 + 9;
        if code == 0 {
            return Ok(());
        }
        let oom_killed = || {
            self.counters
                .as_ref()
                .and_then(|counters| counters.oom_kills())
                .is_some_and(|kills| kills > 0)
                || self.watch.oom_killed()
        };
        let mut oom = oom_killed();
        for pause in OOM_EVENT_PAUSES.iter().filter(|_| code == SIGKILLED) {
            if oom {
                break;
            }
            tokio::time::sleep(*pause).await;
            oom = oom_killed();
        }
        if oom {
            Err(CallError::Oom {
                limit_bytes: self.memory,
            })
        } else {
            Err(CallError::Exited {
                code,
                stderr_tail: self.stderr.tail(),
            })
        }
    }

    /// What the init reports; `None` if the container went down whole before
    /// it could say.
    async fn direct_verdict(&self) -> Option<Ended> {
        let mut status = self.pipes.status.lock().await;
        direct::verdict(status.as_mut()?).await
    }

    /// Turns the init's verdict into a result. A SIGKILL is an OOM kill if
    /// the cgroup counted one; where it cannot be read, the events say.
    async fn judge_direct(&self, ended: Ended) -> RunResult {
        const SIGKILL_SIGNAL: i64 = 9;
        match ended {
            Ended::Exit(0) => Ok(()),
            Ended::Signal(SIGKILL_SIGNAL) => {
                match self.counters.as_ref().and_then(|c| c.oom_kills()) {
                    Some(0) => Err(CallError::Exited {
                        code: ended.code(),
                        stderr_tail: self.stderr.tail(),
                    }),
                    Some(_) => Err(CallError::Oom {
                        limit_bytes: self.memory,
                    }),
                    None => self.judge_exit(ended.code()).await,
                }
            }
            _ => Err(CallError::Exited {
                code: ended.code(),
                stderr_tail: self.stderr.tail(),
            }),
        }
    }

    /// Samples the counters into `sink` every [`SAMPLE_EVERY`] while the
    /// container runs.
    fn sample(&self, counters: Arc<CgroupCounters>, sink: StatSink) {
        self.copiers.keep(tokio::spawn(async move {
            let mut before = (Instant::now(), counters.cpu_time());
            loop {
                tokio::time::sleep(SAMPLE_EVERY).await;
                let now = (Instant::now(), counters.cpu_time());
                let mut metrics = BTreeMap::new();
                if let (Some(cpu_before), Some(cpu_now)) = (before.1, now.1) {
                    let wall = now.0.duration_since(before.0).as_secs_f64();
                    if wall > 0.0 {
                        let used = cpu_now.saturating_sub(cpu_before).as_secs_f64();
                        metrics.insert(names::CPU_RATIO.into(), used / wall);
                    }
                }
                if let Some(memory) = counters.memory_bytes() {
                    metrics.insert(names::MEMORY_BYTES.into(), memory as f64);
                }
                if metrics.is_empty() {
                    return;
                }
                sink(Stat {
                    timestamp: SystemTime::now(),
                    metrics,
                });
                before = now;
            }
        }));
    }

    /// Kills the task if it may still run and waits for its exit, then
    /// deletes it (never beside a creation in its shim group, if it may be
    /// the group's last), then its snapshot and record.
    async fn remove(&self) -> Result<(), CallError> {
        let client = &self.engine.client;
        if self.task_created.load(Ordering::Acquire) {
            if self.watch.exit_status().is_none() {
                self.kill().await?;
                let _ = tokio::time::timeout(SLOW, self.engine_exit()).await;
            }
            let delete = client.request(containerd_client::services::v1::DeleteTaskRequest {
                container_id: self.id.clone(),
            });
            let mut tasks = client.tasks();
            let deleting = call("task_delete", SLOW, tasks.delete(delete));
            let group = self.membership().take();
            let deleted = match &group {
                Some(group) => group.delete_task(deleting).await,
                None => deleting.await,
            };
            gone_is_fine(deleted).map_err(|status| {
                CallError::engine(format!(
                    "removing container {}: deleting its task: {}",
                    self.id,
                    status.message()
                ))
            })?;
        }
        self.engine.remove_records(&self.id, &self.id).await
    }
}

impl Engine {
    /// Prepares container `id`'s snapshot on `image` and creates its record,
    /// under a lease; yields the snapshot's mounts. Leaves nothing if it fails.
    async fn create_container(
        &self,
        id: &str,
        image_name: &str,
        image: &ImageConfig,
        labels: &HashMap<String, String>,
        spec: &[u8],
    ) -> Result<Vec<Mount>, Status> {
        let client = &self.client;
        let lease = format!("hotpool-prepare-{id}");
        client
            .create_lease(&lease, PREPARE_LEASE_EXPIRY, labels.clone())
            .await?;
        let created = async {
            let prepare = client.leased(
                PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: id.to_owned(),
                    parent: image.top_snapshot.clone(),
                    labels: labels.clone(),
                },
                &lease,
            );
            let mounts = call(
                "snapshot_prepare",
                QUICK,
                client.snapshots().prepare(prepare),
            )
            .await?
            .mounts;
            let container = Container {
                id: id.to_owned(),
                labels: labels.clone(),
                image: image_name.to_owned(),
                runtime: Some(Runtime {
                    name: RUNTIME.to_owned(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: SPEC_TYPE_URL.to_owned(),
                    value: spec.to_vec(),
                }),
                snapshotter: self.snapshotter.clone(),
                snapshot_key: id.to_owned(),
                ..Default::default()
            };
            let create = client.leased(
                CreateContainerRequest {
                    container: Some(container),
                },
                &lease,
            );
            if let Err(status) = call(
                "container_create",
                QUICK,
                client.containers().create(create),
            )
            .await
            {
                let _ = self.remove_records(id, id).await;
                return Err(status);
            }
            Ok(mounts)
        }
        .await;
        if let Err(status) = client.delete_lease(&lease).await {
            tracing::warn!(lease, error = %status.message(), "could not delete a prepare's lease; it expires by itself");
        }
        created
    }
}

impl ContainerdCookie {
    /// Creates (unless it was) and starts the task, waits for its init to
    /// open the pipes, and opens hotpool's one-way ends from `early`.
    async fn start_and_open(&mut self, early: direct::Ends) -> Result<direct::OneWay, CallError> {
        let pid = match self.pid {
            Some(pid) => pid,
            None => {
                let pid = self.create_task_now().await?;
                self.task_made(pid);
                pid
            }
        };
        self.start_task().await?;
        self.started = Some(Instant::now());
        // Every container gets its counters where they open: an OOM kill's
        // verdict reads them first.
        self.counters = CgroupCounters::open(i64::from(pid)).map(Arc::new);
        let ready = tokio::select! {
            ready = early.ready() => ready,
            code = self.engine_exit() => {
                // A function that ends at once may have its exit reported
                // before its pipe is seen readable: what the init wrote
                // before it ended is there to read.
                match tokio::time::timeout(READY_AFTER_EXIT, early.ready()).await {
                    Ok(ready) => ready,
                    Err(_) => {
                        self.judge_exit(code).await?;
                        return Err(CallError::engine(format!(
                            "container {} ended before hotpool-init opened its pipes",
                            self.id
                        )));
                    }
                }
            }
            () = tokio::time::sleep(INIT_READY) => {
                return Err(CallError::engine(format!(
                    "hotpool-init in container {} did not open its pipes in {INIT_READY:?}",
                    self.id
                )));
            }
        };
        ready.map_err(|e| {
            CallError::engine(format!("hotpool-init in container {}: {e}", self.id))
        })?;
        early
            .one_way()
            .map_err(|e| CallError::engine(format!("opening the pipes of {}: {e}", self.id)))
    }
}

impl Cookie for ContainerdCookie {
    async fn run(&mut self) -> Result<Running, CallError> {
        let opening = self
            .pipes
            .opening
            .take()
            .ok_or_else(|| CallError::engine("the container was started before"))?;
        let one_way = match opening {
            Opening::Early(early) => self.start_and_open(early).await?,
            Opening::TakenOver(one_way) => one_way,
        };
        *self.pipes.status.get_mut() = Some(one_way.status);
        let dir = self.pipes.dir.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = dir.as_mut() {
            dir.own(one_way.owner);
        }
        let mark = dir.as_ref().map(IoDir::mark);
        self.copiers.pump_stderr(tokio::spawn(stderr::pump(
            ReaderStream::new(one_way.stderr),
            self.stderr.clone(),
        )));
        let (stdin, stdout): (BoxWrite, BoxRead) =
            (Box::new(one_way.stdin), Box::new(one_way.stdout));
        let plumbing = self.plumbing.get_mut().unwrap_or_else(|e| e.into_inner());
        let (input, stdout_sink, stats_sink) = (
            plumbing.input.take(),
            plumbing.stdout.take(),
            plumbing.stats.take(),
        );
        let mut running = self.copiers.wire(stdin, stdout, input, stdout_sink);
        running.mark = mark;
        // Samples only where the caller does not read the counters itself.
        if let (Some(sink), Some(counters)) = (stats_sink, &self.counters)
            && !self.caller_samples_counters
        {
            self.sample(counters.clone(), sink);
        }
        Ok(running)
    }

    async fn wait(&self, cancel: &CancellationToken) -> RunResult {
        let deadline = self
            .started
            .zip(self.timeout)
            .and_then(|(started, timeout)| started.checked_add(timeout));
        // The init says how the function ended; containerd is asked only
        // where it cannot: the container went down whole.
        let ended = async {
            match self.direct_verdict().await {
                Some(ended) => Ending::Reported(ended),
                None => Ending::Exited(self.engine_exit().await),
            }
        };
        tokio::pin!(ended);
        let interrupted = tokio::select! {
            ending = &mut ended => {
                self.drain_output().await;
                return match ending {
                    Ending::Reported(ended) => self.judge_direct(ended).await,
                    Ending::Exited(code) => self.judge_exit(code).await,
                };
            }
            () = sleep_until(deadline) => CallError::Timeout {
                timeout: self.timeout.unwrap_or_default(),
            },
            () = cancel.cancelled() => CallError::Cancelled,
            () = self.released.cancelled() => {
                return Err(CallError::engine("let go for a next owner"));
            }
        };
        self.kill().await?;
        let _ = ended.await;
        self.drain_output().await;
        Err(interrupted)
    }

    async fn kill(&self) -> Result<(), CallError> {
        // SIGKILL to the init ends every process of the container's PID
        // namespace; the shim only sees the exit (see `linux::pidfd`).
        if let Some(init) = &self.init {
            match init.kill() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(container = %self.id, error = %e, "could not signal the init; asking containerd")
                }
            }
        }
        let client = &self.engine.client;
        let kill = client.request(KillRequest {
            container_id: self.id.clone(),
            exec_id: String::new(),
            signal: SIGKILL,
            all: true,
        });
        match call("task_kill", QUICK, client.tasks().kill(kill)).await {
            Ok(_) => Ok(()),
            // No task, or one that is not running any more: either way it is dead.
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {
                Ok(())
            }
            Err(status) => Err(CallError::engine(format!(
                "killing container {}: {}",
                self.id,
                status.message()
            ))),
        }
    }

    fn cpu_time(&self) -> Option<Duration> {
        self.counters.as_ref()?.cpu_time()
    }

    fn memory_bytes(&self) -> Option<u64> {
        self.counters.as_ref()?.memory_bytes()
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.copiers.abort();
        if let Err(e) = self.remove().await {
            tracing::warn!(container = %self.id, error = %e, "could not remove a container");
        }
        self.engine.events.unwatch(&self.id);
        drop(self.membership().take());
        drop(
            self.pipes
                .dir
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }
    async fn release(&self) -> bool {
        if self.started.is_none() || self.closed.swap(true, Ordering::AcqRel) {
            self.close().await;
            return false;
        }
        self.released.cancel();
        self.copiers.abort();
        self.engine.events.unwatch(&self.id);
        drop(self.membership().take());
        // Taken once `wait` has let go of it.
        drop(self.pipes.status.lock().await.take());
        let dir = self
            .pipes
            .dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        dir.is_some_and(|dir| {
            dir.release();
            true
        })
    }
}

impl Drop for ContainerdCookie {
    /// A cookie dropped without `close` (a panic, a cancelled caller) still
    /// removes its container, if a runtime is there to do it.
    fn drop(&mut self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.copiers.abort();
        self.engine.events.unwatch(&self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let engine = self.engine.clone();
            let id = std::mem::take(&mut self.id);
            runtime.spawn(async move {
                let _ = engine.remove_container(&id, &id).await;
            });
        }
    }
}

/// How a container ended: as its init reported, or the status containerd gave.
enum Ending {
    Reported(Ended),
    Exited(i64),
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The labels of a task's container (and of its snapshot and lease).
fn container_labels(task: &Task, direct: &Direct) -> HashMap<String, String> {
    task.labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain([
            (LABEL.to_owned(), "1".to_owned()),
            (FUNCTION_LABEL.to_owned(), task.function.clone()),
            (TASK_LABEL.to_owned(), task.id.clone()),
            (IO_LABEL.to_owned(), direct.dir.path().display().to_string()),
        ])
        .collect()
}

/// A containerd id from a task id: `hotpool-` first, then the task id's
/// letters and digits in runs joined by single `.`, `_` or `-` (any other
/// character is a `-`); past [`ID_MAX`] characters, its end.
fn container_id(task_id: &str) -> String {
    let mut id = String::from("hotpool");
    let mut separator = Some('-');
    for c in task_id.chars() {
        if c.is_ascii_alphanumeric() {
            if let Some(separator) = separator.take() {
                id.push(separator);
            }
            id.push(c);
        } else if separator.is_none() {
            separator = Some(if "._-".contains(c) { c } else { '-' });
        }
    }
    if id.len() <= ID_MAX {
        return id;
    }
    const PREFIX: &str = "hotpool-";
    let tail = id[id.len() - (ID_MAX - PREFIX.len())..].trim_start_matches(['.', '_', '-']);
    format!("{PREFIX}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_identifiers_containerd_takes() {
        assert_eq!(container_id("echo-0123abcd"), "hotpool-echo-0123abcd");
        assert_eq!(container_id("a b//c..d_"), "hotpool-a-b-c.d");
        assert_eq!(container_id("--x"), "hotpool-x");
        let long = format!("{}-{}", "f".repeat(100), "0123456789abcdef");
        let id = container_id(&long);
        assert!(id.len() <= ID_MAX, "{id}");
        assert!(
            id.starts_with("hotpool-") && id.ends_with("-0123456789abcdef"),
            "{id}"
        );
        assert!(super::super::is_identifier(&id));
        assert!(super::super::is_identifier(&container_id("ünïcode name")));
    }
}
