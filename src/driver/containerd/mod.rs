//! The containerd driver: runs tasks as containers on containerd directly,
//! through its gRPC API, doing itself what dockerd would do for it.
//!
//! Everything hotpool makes lives in one containerd namespace of its own
//! (`hotpool` by default; never Docker's `moby` nor the kubelet's `k8s.io`).
//! Every container carries the labels `hotpool=1`, `hotpool.function=<name>`,
//! `hotpool.task=<task id>` and `hotpool.io=<its pipe directory>`, and runs
//! under an OCI runtime spec hotpool writes whole: the containment defaults of
//! the Docker driver, a seccomp profile of its own, no network but loopback.
//! Tasks take the direct transport only (the shim copies nothing: null
//! stdio); containerd has no attach streams for hotpool to use.
//!
//! Containers share shims: every container names a shim group in the
//! `io.containerd.runc.v2.group` annotation, and the runc shim serves each
//! group from one process. Groups hold at most
//! [`ContainerdOptions::group_size`] containers.
//!
//! A running container an earlier owner left between calls is taken over
//! ([`Driver::adopt`]): its task must run, its pipes are moved into this
//! driver's runtime directory (and its `hotpool.io` label follows them, so a
//! later owner may take it over again), and its cookie watches its events as
//! a started one's. Its shim group stays the earlier driver's: group names
//! are a driver's own, so no task of this driver is ever created in it.
//!
//! A pool name is claimed with a lock file in the runtime directory, under the
//! engine identity `containerd:<socket>:<namespace>` (see
//! `driver/linux/pool_lock.rs`).

mod client;
mod content;
mod cookie;
mod events;
mod groups;
mod pull;
mod registry;
mod seccomp;
mod spec;
mod transfer;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::driver::linux::footprint::Footprint;
pub use cookie::ContainerdCookie;

use containerd_client::services::v1::snapshots::{ListSnapshotsRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    DeleteContainerRequest, DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest,
    ListRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use dashmap::DashMap;
use tonic::Code;

use super::{
    AdoptError, AdoptRefusal, ClaimError, Driver, EngineTraits, IO_LABEL, Leftover, TASK_LABEL,
    Task,
};
use crate::driver::PoolLock;
use crate::driver::linux::credentials;
use crate::driver::linux::direct::{self, LazyRuntimeDir};
use crate::driver::pulls::SharedPulls;
use crate::error::CallError;
use client::{Client, QUICK, SLOW, call, gone_is_fine, label_filter};
use events::Events;
use groups::ShimGroups;

/// The engine's name in metrics and messages.
pub const ENGINE: &str = "containerd";

/// The smallest memory limit tasks may have: 6 MiB, as on Docker (runc's own
/// setup runs in the container's cgroup and needs a few MiB).
pub const MIN_MEMORY: u64 = 6 << 20;

/// The namespaces hotpool never uses: Docker's and the kubelet's.
const FOREIGN_NAMESPACES: [(&str, &str); 2] = [("moby", "Docker's"), ("k8s.io", "the kubelet's")];

/// How long `connect` waits for containerd to answer.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// The deadline of `/healthz`'s probe: the version answers from memory.
const PING_DEADLINE: Duration = Duration::from_secs(3);

/// SIGKILL.
const SIGKILL: u32 = 9;

/// How the containerd driver reaches containerd and sets up containers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ContainerdOptions {
    /// containerd's gRPC socket (default `/run/containerd/containerd.sock`,
    /// as on a Kubernetes node).
    pub socket: PathBuf,
    /// The containerd namespace of everything hotpool makes (default
    /// `hotpool`). `moby` (Docker's) and `k8s.io` (the kubelet's) are refused.
    pub namespace: String,
    /// The snapshotter that unpacks images and holds containers' root
    /// filesystems (default `overlayfs`).
    pub snapshotter: String,
    /// Where `config.json` with registry credentials lives; `None`:
    /// `$DOCKER_CONFIG`, else `~/.docker` (as `docker login` writes it).
    pub docker_config_dir: Option<PathBuf>,
    /// The most processes a container may run.
    pub pids_limit: i64,
    /// The most files a container's process may have open (`nofile`, soft and hard).
    pub nofile_limit: i64,
    /// Where the `direct` transport keeps its init program and the pipes of
    /// each container, and where pool names are claimed (`pools/`); `None`:
    /// `$XDG_RUNTIME_DIR/hotpool`, else `/run/hotpool` for root, else
    /// `hotpool-UID` in the temporary directory.
    pub runtime_dir: Option<PathBuf>,
    /// The most containers one shim process serves (default 64). One shim per
    /// container costs about 2.4 MiB and a steady trickle of wake-ups each;
    /// one per group of 200 cost 16 MiB in all, and start latency measured no
    /// different up to 200. At 1,000 idle containers, groups of 64 took the
    /// shims' idle CPU from about 0.012 cores (groups of 32) to 0.006 with the
    /// same start rate. But a shim's death takes its whole group with it, so a
    /// group is kept to a size whose loss a pool replaces in seconds.
    pub group_size: usize,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "hotpool".to_owned(),
            snapshotter: "overlayfs".to_owned(),
            docker_config_dir: None,
            pids_limit: 256,
            nofile_limit: 1024,
            runtime_dir: None,
            group_size: 64,
        }
    }
}

/// What the driver has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStatistics {
    /// Image pulls started (concurrent prepares of one image share one).
    pub image_pulls: u64,
    /// Of those, the ones containerd's Transfer service did (1.7 and later).
    pub transfer_pulls: u64,
}

/// What every cookie of a driver shares: the client, the settings, the pulls
/// in flight, the images read, the shim groups and the events.
pub(crate) struct Engine {
    client: Client,
    namespace: String,
    snapshotter: String,
    docker_config_dir: Option<PathBuf>,
    pids_limit: i64,
    nofile_limit: i64,
    runtime: LazyRuntimeDir,
    pulls: SharedPulls,
    /// What was read of each image, by the digest of its manifest.
    images: DashMap<String, Arc<pull::ImageConfig>>,
    /// What the daemon's Transfer service can do, asked at the first pull.
    transfer: tokio::sync::OnceCell<transfer::TransferSupport>,
    /// Pulls done through the Transfer service.
    transfer_pulls: std::sync::atomic::AtomicU64,
    groups: Arc<ShimGroups>,
    events: Events,
}

/// Runs tasks as containers on containerd. Cheap to clone.
#[derive(Clone)]
pub struct ContainerdDriver {
    engine: Arc<Engine>,
}

impl ContainerdDriver {
    /// Connects to containerd at `options.socket` and checks that it answers
    /// (its version) within a deadline.
    pub async fn connect(options: ContainerdOptions) -> Result<ContainerdDriver, CallError> {
        check_namespace(&options.namespace).map_err(CallError::engine)?;
        if options.group_size == 0 {
            return Err(CallError::engine(
                "a shim group holds at least one container: group_size must be 1 or more",
            ));
        }
        let socket = options.socket.display().to_string();
        let unreachable = |e: String| {
            CallError::engine(format!(
                "cannot reach containerd at {socket} ({e}); is it running? \
                 `ctr --address {socket} version` should answer"
            ))
        };
        let client = Client::connect(&options.socket, &options.namespace, CONNECT_DEADLINE)
            .await
            .map_err(unreachable)?;
        call(
            "version",
            CONNECT_DEADLINE,
            client.version().version(client.request(())),
        )
        .await
        .map_err(|status| unreachable(status.message().to_owned()))?;
        let events = Events::follow(client.clone());
        Ok(ContainerdDriver {
            engine: Arc::new(Engine {
                client,
                namespace: options.namespace,
                snapshotter: options.snapshotter,
                docker_config_dir: credentials::config_dir(options.docker_config_dir.as_deref()),
                pids_limit: options.pids_limit,
                nofile_limit: options.nofile_limit,
                runtime: LazyRuntimeDir::new(options.runtime_dir),
                pulls: SharedPulls::default(),
                images: DashMap::new(),
                transfer: tokio::sync::OnceCell::new(),
                transfer_pulls: Default::default(),
                groups: Arc::new(ShimGroups::new(
                    format!("hotpool-{}", crate::id::new_id()),
                    options.group_size,
                )),
                events,
            }),
        })
    }

    /// Installs the init program of the `direct` transport (once; a task that
    /// needs it does so too) and says where.
    pub async fn install_runtime(&self) -> Result<PathBuf, CallError> {
        Ok(self.engine.runtime.get().await?.init())
    }

    /// The containerd namespace the driver works in.
    pub fn namespace(&self) -> &str {
        &self.engine.namespace
    }

    /// A snapshot of what the driver has done.
    pub fn statistics(&self) -> DriverStatistics {
        DriverStatistics {
            image_pulls: self.engine.pulls.started(),
            transfer_pulls: self
                .engine
                .transfer_pulls
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Engine {
    /// What tells this engine apart from others on this host: its socket and
    /// the namespace.
    fn identity(&self) -> String {
        format!(
            "containerd:{}:{}",
            self.client.socket().display(),
            self.namespace
        )
    }

    /// Removes container `id` and everything of it: its task (killed first if
    /// it runs), then [`Engine::remove_records`]. What is gone already is fine.
    pub(crate) async fn remove_container(
        &self,
        id: &str,
        snapshot_key: &str,
    ) -> Result<(), CallError> {
        let failed = |what: &str, status: tonic::Status| {
            CallError::engine(format!(
                "removing container {id}: {what}: {}",
                status.message()
            ))
        };
        let client = &self.client;
        let kill = client.request(KillRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal: SIGKILL,
            all: true,
        });
        match call("task_kill", QUICK, client.tasks().kill(kill)).await {
            // Killed: wait for its exit before deleting it.
            Ok(_) => {
                let wait = client.request(WaitRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                });
                let _ = call("task_wait", SLOW, client.tasks().wait(wait)).await;
            }
            // No task, or one that has exited already.
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {}
            Err(status) => return Err(failed("killing its task", status)),
        }
        let delete = client.request(DeleteTaskRequest {
            container_id: id.to_owned(),
        });
        gone_is_fine(call("task_delete", SLOW, client.tasks().delete(delete)).await)
            .map_err(|status| failed("deleting its task", status))?;
        self.remove_records(id, snapshot_key).await
    }

    /// Removes container `id`'s snapshot, then its record (in that order: once
    /// the record is gone the collector may take the snapshot first). What is
    /// gone already is fine.
    pub(crate) async fn remove_records(
        &self,
        id: &str,
        snapshot_key: &str,
    ) -> Result<(), CallError> {
        let failed = |what: &str, status: tonic::Status| {
            CallError::engine(format!(
                "removing container {id}: {what}: {}",
                status.message()
            ))
        };
        let client = &self.client;
        if !snapshot_key.is_empty() {
            self.remove_snapshot(snapshot_key)
                .await
                .map_err(|status| failed("removing its snapshot", status))?;
        }
        let delete = client.request(DeleteContainerRequest { id: id.to_owned() });
        gone_is_fine(
            call(
                "container_delete",
                QUICK,
                client.containers().delete(delete),
            )
            .await,
        )
        .map_err(|status| failed("deleting it", status))
    }

    async fn remove_snapshot(&self, key: &str) -> Result<(), tonic::Status> {
        let client = &self.client;
        let remove = client.request(RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        });
        gone_is_fine(call("snapshot_remove", QUICK, client.snapshots().remove(remove)).await)
    }

    /// Removes the snapshots labelled `key=value` but those in `held` (the
    /// snapshots of containers), and the leases labelled so: what a prepare
    /// that died half-way left.
    async fn remove_labelled_leftovers(
        &self,
        key: &str,
        value: &str,
        held: &HashSet<String>,
    ) -> Result<(), CallError> {
        let client = &self.client;
        let filter = label_filter(key, value);
        let listing = |status: tonic::Status| {
            CallError::engine(format!(
                "listing leftovers of {key}={value}: {}",
                status.message()
            ))
        };
        let list = client.request(ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters: vec![filter.clone()],
        });
        let mut listed = call("snapshot_list", QUICK, client.snapshots().list(list))
            .await
            .map_err(listing)?;
        let mut snapshots = Vec::new();
        while let Some(page) = listed.message().await.map_err(listing)? {
            snapshots.extend(page.info.into_iter().map(|info| info.name));
        }
        for snapshot in snapshots.iter().filter(|name| !held.contains(*name)) {
            self.remove_snapshot(snapshot).await.map_err(|status| {
                CallError::engine(format!(
                    "removing snapshot {snapshot}: {}",
                    status.message()
                ))
            })?;
        }
        let list = client.request(ListRequest {
            filters: vec![filter],
        });
        let leases = call("lease_list", QUICK, client.leases().list(list))
            .await
            .map_err(listing)?
            .leases;
        for lease in leases {
            client.delete_lease(&lease.id).await.map_err(|status| {
                CallError::engine(format!("deleting lease {}: {}", lease.id, status.message()))
            })?;
        }
        Ok(())
    }
}

impl Driver for ContainerdDriver {
    type Cookie = ContainerdCookie;
    type Claim = PoolLock;

    fn traits(&self) -> EngineTraits {
        EngineTraits::new(ENGINE, MIN_MEMORY, false)
    }

    async fn ping(&self) -> Result<(), CallError> {
        let client = &self.engine.client;
        call(
            "version",
            PING_DEADLINE,
            client.version().version(client.request(())),
        )
        .await
        .map(drop)
        .map_err(|status| CallError::engine(status.message().to_owned()))
    }

    fn removal_deadline(&self) -> Duration {
        // A kill and a task delete (its shim reaps the process), then the
        // snapshot and the container record.
        QUICK + SLOW + QUICK + QUICK
    }

    async fn claim_pool(&self, pool: &str) -> Result<PoolLock, ClaimError> {
        let engine = self.engine.identity();
        let (root, name) = (self.engine.runtime.path().to_owned(), pool.to_owned());
        tokio::task::spawn_blocking(move || PoolLock::take(&root, &engine, &name))
            .await
            .map_err(|e| ClaimError::Io {
                pool: pool.to_owned(),
                error: std::io::Error::other(e.to_string()),
            })?
    }

    async fn prepare(&self, task: Task) -> Result<ContainerdCookie, CallError> {
        ContainerdCookie::prepare(self.engine.clone(), task).await
    }

    async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, CallError> {
        let leftovers = self.leftovers(key, value).await?;
        for leftover in &leftovers {
            self.remove_leftover(leftover).await?;
        }
        Ok(leftovers.len())
    }

    /// Every container labelled `key=value`, running or not. What a prepare
    /// that died half-way left with the label (a snapshot no container holds,
    /// a lease) is removed on the way.
    async fn leftovers(&self, key: &str, value: &str) -> Result<Vec<Leftover>, CallError> {
        let client = &self.engine.client;
        let list = client.request(ListContainersRequest {
            filters: vec![label_filter(key, value)],
        });
        let containers = call("container_list", QUICK, client.containers().list(list))
            .await
            .map_err(|status| {
                CallError::engine(format!("listing containers: {}", status.message()))
            })?
            .containers;
        let held = containers
            .iter()
            .map(|container| container.snapshot_key.clone())
            .collect();
        self.engine
            .remove_labelled_leftovers(key, value, &held)
            .await?;
        Ok(containers
            .into_iter()
            .map(|container| {
                let labels: BTreeMap<String, String> = container.labels.into_iter().collect();
                let task_id = labels.get(TASK_LABEL).cloned().unwrap_or_default();
                Leftover::new(task_id, container.id, labels)
            })
            .collect())
    }

    async fn adopt(&self, leftover: &Leftover, task: Task) -> Result<ContainerdCookie, AdoptError> {
        let id = &leftover.engine_id;
        let refused = |refusal, why: &dyn fmt::Display| AdoptError::new(refusal, id, why);
        let io = leftover
            .labels
            .get(IO_LABEL)
            .ok_or_else(|| refused(AdoptRefusal::Unproven, &"it has no direct pipes"))?;
        let client = &self.engine.client;
        let get = client.request(GetRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        });
        let pid = call("task_get", QUICK, client.tasks().get(get))
            .await
            .map_err(|status| refused(AdoptRefusal::Unproven, &status.message()))?
            .process
            .filter(|process| process.status == TaskStatus::Running as i32 && process.pid > 0)
            .map(|process| process.pid)
            .ok_or_else(|| refused(AdoptRefusal::Ended, &"it is not running"))?;
        let runtime = self.engine.runtime.get().await?;
        let (dir, one_way) = runtime
            .take_over(Path::new(io))
            .map_err(|e| refused(e.refusal(), &e))?;
        Ok(ContainerdCookie::adopted(
            self.engine.clone(),
            id.clone(),
            task,
            (dir, one_way),
            pid,
        ))
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> Result<(), CallError> {
        // hotpool keys a container's snapshot by the container's id.
        let id = &leftover.engine_id;
        self.engine.remove_container(id, id).await?;
        if let Some(io) = leftover.labels.get(IO_LABEL) {
            direct::remove_left_dir(self.engine.runtime.path(), Path::new(io));
        }
        Ok(())
    }
}

/// Why hotpool may not work in containerd namespace `namespace`, if it may not.
fn check_namespace(namespace: &str) -> Result<(), String> {
    if let Some((_, whose)) = FOREIGN_NAMESPACES
        .iter()
        .find(|(foreign, _)| *foreign == namespace)
    {
        return Err(format!(
            "containerd namespace {namespace:?} is {whose}: hotpool keeps to a namespace of its own (default \"hotpool\")"
        ));
    }
    if !is_identifier(namespace) {
        return Err(format!(
            "{namespace:?} is no containerd namespace: letters and digits, joined by single '.', '_' or '-'"
        ));
    }
    Ok(())
}

/// Whether `name` is an identifier as containerd accepts one: at most 76
/// characters, letters and digits in runs joined by single `.`, `_` or `-`.
fn is_identifier(name: &str) -> bool {
    const MAX: usize = 76;
    !name.is_empty()
        && name.len() <= MAX
        && name
            .split(['.', '_', '-'])
            .all(|run| !run.is_empty() && run.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_kubelet_namespaces_are_refused() {
        for foreign in ["moby", "k8s.io"] {
            let refused = check_namespace(foreign).unwrap_err();
            assert!(refused.contains("namespace of its own"), "{refused}");
        }
        assert_eq!(check_namespace("hotpool"), Ok(()));
        assert_eq!(check_namespace("hotpool-test.1"), Ok(()));
        assert!(check_namespace("").is_err());
        assert!(check_namespace("a..b").is_err());
        assert!(check_namespace("with space").is_err());
    }
}
