//! The container driver contract, from fn's `drivers` package.
//!
//! A [`Driver`] prepares a [`Task`] (pulling its image, creating its container) and
//! returns a [`Cookie`]. [`Cookie::run`] starts the container with its pipes
//! attached; [`Cookie::wait`] yields the [`RunResult`]: `Ok`, or the typed
//! [`CallError`]. [`Cookie::close`] removes the container.
//!
//! The same contract serves cold and hot use. A task that brings its own `input`
//! and `stdout` sink is driven by the driver like `docker run -i` (cold). A task
//! without them gets the container's stdin and stdout in [`Running`], so a pool can
//! keep writing calls into one container (hot). stderr always goes to the task's
//! sink, and its tail is kept for `exited` errors.
//!
//! A task is contained by default ([`Task::new`]): one CPU, an unprivileged user,
//! a read-only root filesystem and a sized tmpfs at `/tmp`. Its bytes travel
//! [`Transport::Direct`] by default: through pipes shared with the container,
//! not through the engine.
//!
//! Every call a driver makes of its engine has a deadline: an engine that
//! stops answering fails calls as `engine_error`, never hangs them, and
//! [`Driver::ping`] says whether it answers at all.
//!
//! A pool name has one owner at a time on one engine: a pool claims its name
//! with [`Driver::claim_pool`] before it touches any container labelled with it,
//! and holds the guard while it lives; a second claim fails with
//! [`ClaimError::Owned`], naming the owner.
//!
//! The drivers: [`docker`] (dockerd), and [`any::AnyDriver`], the engine chosen
//! at run time, which the server and the command line use; `in_process`
//! (with the `test-util` feature) runs tokio tasks as containers for tests.
//! What an engine accepts (its minimum memory, whether it attaches) is asked
//! of it: [`Driver::traits`]. The parts of a local engine's driver that speak
//! to no engine (direct pipes, cgroup counters, the pool lock, registry
//! credentials) are in `linux/`.

pub mod any;
mod call_mark;
mod claim;
pub mod containerd;
mod cpus;
pub mod docker;
#[cfg(any(test, feature = "test-util"))]
pub mod in_process;
pub(crate) mod linux;
mod pulls;
mod wiring;

pub use crate::id::new_id;
pub use any::{AnyCookie, AnyDriver, EngineChoice, EngineKind};
pub use call_mark::CallMark;
pub use claim::{ClaimError, MAX_POLICIES_BYTES, PoolClaim, PoolOwner};
pub use cpus::Cpus;
pub use linux::pool_lock::{PoolLock, handover_path};

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::error::CallError;
use crate::stats::Stat;

/// The label every hotpool container carries, with the value `1`.
pub const LABEL: &str = "hotpool";

/// The label naming the function a container was made for.
pub const FUNCTION_LABEL: &str = "hotpool.function";

/// The label naming the task a container was made for.
pub const TASK_LABEL: &str = "hotpool.task";

/// The label naming a direct container's pipe directory on the host.
pub const IO_LABEL: &str = "hotpool.io";

/// The user tasks run as unless they name another: unprivileged, as fn's were.
pub const DEFAULT_USER: &str = "1000:1000";

/// The size of a task's `/tmp` unless it names another: 64 MiB.
pub const DEFAULT_TMP_SIZE: u64 = 64 << 20;

/// The smallest `/tmp`: 1 MiB (a tmpfs of size 0 would be unlimited).
pub const MIN_TMP_SIZE: u64 = 1 << 20;

/// Bytes of `/tmp` per inode: a 64 MiB `/tmp` holds at most 4096 files.
pub(crate) const TMP_BYTES_PER_INODE: u64 = 16 << 10;

/// What an engine accepts and can do, as its driver tells it: configs and flags
/// are checked against this once the engine is known, not against constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineTraits {
    /// The engine's name in metrics and messages: `docker`, `in-process`.
    pub name: &'static str,
    /// The smallest memory limit it accepts, in bytes.
    pub min_memory: u64,
    /// Whether it can carry a task's bytes over its own attach streams
    /// ([`Transport::Attach`]). [`Transport::Direct`] is every driver's.
    pub attach: bool,
}

impl EngineTraits {
    /// An engine named `name` that accepts memory limits of `min_memory` bytes
    /// and more, and can attach or not.
    pub fn new(name: &'static str, min_memory: u64, attach: bool) -> EngineTraits {
        EngineTraits {
            name,
            min_memory,
            attach,
        }
    }

    /// Why a task of `memory` bytes (0: no limit) over `transport` cannot run
    /// here, if it cannot.
    pub fn refuses(&self, memory: u64, transport: Transport) -> Option<String> {
        if memory != 0 && memory < self.min_memory {
            return Some(format!(
                "{} is under the {} engine's minimum of {}",
                mebibytes(memory),
                self.name,
                mebibytes(self.min_memory)
            ));
        }
        if transport == Transport::Attach && !self.attach {
            return Some(format!(
                "the {} engine has no attach transport: use direct",
                self.name
            ));
        }
        None
    }
}

/// A reader the driver reads from or hands out.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A writer the driver writes to or hands out.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;
/// Where a task's stats samples go, one call per sample.
pub type StatSink = Arc<dyn Fn(Stat) + Send + Sync>;

/// Everything a driver needs to run one container.
#[non_exhaustive]
pub struct Task {
    /// Unique id of the task; also names the container.
    pub id: String,
    /// The function this task belongs to (the `hotpool.function` label).
    pub function: String,
    /// The image to run.
    pub image: String,
    /// Command and arguments; empty runs the image's default.
    pub command: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Memory limit in bytes (swap disabled); 0 is unlimited.
    pub memory: u64,
    /// Kill the container this long after it starts; `None` lets it run.
    pub timeout: Option<Duration>,
    /// `(host path, container path)` bind mounts.
    pub volumes: Vec<(PathBuf, PathBuf)>,
    /// Working directory inside the container; `None` keeps the image's.
    pub workdir: Option<String>,
    /// Network mode; `None` means no network at all.
    pub network: Option<String>,
    /// CPU quota (default one core).
    pub cpus: Cpus,
    /// The user the function runs as: `uid[:gid]` (a bare uid runs with gid =
    /// uid on every engine) or a name from the image (default [`DEFAULT_USER`]).
    pub user: String,
    /// Size of the tmpfs mounted at `/tmp`, in bytes (default
    /// [`DEFAULT_TMP_SIZE`]); its inode count scales with it. Its pages count
    /// against the memory limit.
    pub tmp_size: u64,
    /// Whether the root filesystem is read-only (default yes), leaving `/tmp` the
    /// only place to write.
    pub read_only: bool,
    /// Labels besides `hotpool=1` and `hotpool.function` (a pool adds `hotpool.pool`).
    pub labels: BTreeMap<String, String>,
    /// Fed to the container's stdin, which is then closed. `None`: stdin is handed
    /// out in [`Running::stdin`].
    pub input: Option<BoxRead>,
    /// Receives the container's stdout. `None`: stdout is handed out in
    /// [`Running::stdout`].
    pub stdout: Option<BoxWrite>,
    /// Receives the container's stderr.
    pub stderr: Box<dyn Write + Send>,
    /// Receives engine stats samples while the container runs, unless the task
    /// asked for [`Task::counters`] and got them: sampling those is then the
    /// caller's, and the engine does no work for an idle container.
    pub stats: Option<StatSink>,
    /// The caller reads the container's resource counters through
    /// [`Cookie::cpu_time`] and [`Cookie::memory_bytes`], and samples them
    /// itself: where they open, the engine sends no [`Task::stats`] samples.
    pub counters: bool,
    /// How the bytes of stdin, stdout and stderr travel (default
    /// [`Transport::Direct`], which a driver whose engine is elsewhere takes as
    /// [`Transport::Attach`]).
    pub transport: Transport,
    /// How long a hot container on the direct transport outlives its owner (a
    /// hotpool killed outright, say) before it ends itself; `None`: it ends
    /// when its function does, as its stdin closes. Not for cold containers,
    /// whose stdin must end.
    pub orphan_timeout: Option<Duration>,
}

/// How a container's stdin, stdout and stderr reach hotpool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// Through the engine's attach streams: works with any engine, local or not.
    Attach,
    /// Through named pipes in a directory shared with the container, with
    /// hotpool's init program starting the function: the engine is not on the
    /// path. Needs the engine on this host; elsewhere the driver attaches.
    #[default]
    Direct,
}

impl Transport {
    /// `attach` or `direct`, as configs and flags spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Attach => "attach",
            Transport::Direct => "direct",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(text: &str) -> Result<Transport, String> {
        match text {
            "attach" => Ok(Transport::Attach),
            "direct" => Ok(Transport::Direct),
            other => Err(format!(
                "{other:?} is not a transport: use direct or attach"
            )),
        }
    }
}

impl Task {
    /// A contained task (one CPU, user [`DEFAULT_USER`], a read-only root and a
    /// [`DEFAULT_TMP_SIZE`] `/tmp`) with no memory limit, no timeout, no pipes
    /// claimed and stderr discarded.
    pub fn new(
        id: impl Into<String>,
        function: impl Into<String>,
        image: impl Into<String>,
    ) -> Task {
        Task {
            id: id.into(),
            function: function.into(),
            image: image.into(),
            command: Vec::new(),
            env: BTreeMap::new(),
            memory: 0,
            timeout: None,
            volumes: Vec::new(),
            workdir: None,
            network: None,
            cpus: Cpus::ONE,
            user: DEFAULT_USER.to_owned(),
            tmp_size: DEFAULT_TMP_SIZE,
            read_only: true,
            labels: BTreeMap::new(),
            input: None,
            stdout: None,
            stderr: Box::new(std::io::sink()),
            stats: None,
            counters: false,
            transport: Transport::Direct,
            orphan_timeout: None,
        }
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("function", &self.function)
            .field("image", &self.image)
            .field("command", &self.command)
            .field("memory", &self.memory)
            .field("timeout", &self.timeout)
            .field("cpus", &self.cpus)
            .field("user", &self.user)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// How a task ended: `Ok` when it exited with code 0, else why not.
pub type RunResult = Result<(), CallError>;

/// The pipes of a started container that the task did not claim.
pub struct Running {
    /// The container's stdin, when the task brought no `input`.
    pub stdin: Option<BoxWrite>,
    /// The container's stdout, when the task brought no `stdout` sink.
    pub stdout: Option<BoxRead>,
    /// Where its owner notes whether it is between calls, for a later owner
    /// to read ([`Driver::adopt`]); `None` where the driver keeps none.
    pub mark: Option<CallMark>,
}

/// A container a pool's earlier owner left running ([`Driver::leftovers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leftover {
    /// The id of the task that made it.
    pub task_id: String,
    /// The engine's id of it.
    pub engine_id: String,
    /// Its labels, `hotpool.function` and the pool's own among them.
    pub labels: BTreeMap<String, String>,
}

impl Leftover {
    /// A leftover of task `task_id`, known to the engine as `engine_id`.
    pub fn new(
        task_id: impl Into<String>,
        engine_id: impl Into<String>,
        labels: BTreeMap<String, String>,
    ) -> Leftover {
        Leftover {
            task_id: task_id.into(),
            engine_id: engine_id.into(),
            labels,
        }
    }
}

/// Why a driver did not take a leftover over ([`Driver::adopt`]), whatever
/// the engine: what a pool counts as the outcome of a leftover it removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AdoptRefusal {
    /// It was in a call: its mark says so, or part of a request waits
    /// unread on its stdin.
    InCall,
    /// It is no longer running: its function, or its container, ended.
    Ended,
    /// It wrote to stdout while no call was in it.
    WroteWhileIdle,
    /// Anything else that leaves it unproven between calls: it has no direct
    /// pipes, they are not the driver's, the engine could not say.
    Unproven,
}

/// A leftover the driver did not take over: why, and in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AdoptError {
    /// Why, as a pool counts it.
    pub refusal: AdoptRefusal,
    /// What the driver found.
    pub message: String,
}

impl AdoptError {
    /// A refusal of container `container` for `refusal`: `why`.
    pub fn new(refusal: AdoptRefusal, container: &str, why: impl fmt::Display) -> AdoptError {
        AdoptError {
            refusal,
            message: format!("container {container}: {why}"),
        }
    }
}

impl From<CallError> for AdoptError {
    /// An engine that failed to answer proves nothing.
    fn from(error: CallError) -> AdoptError {
        AdoptError {
            refusal: AdoptRefusal::Unproven,
            message: error.to_string(),
        }
    }
}

/// `6 MiB`, or `1500 bytes` for what is no whole number of MiB.
fn mebibytes(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Runs tasks on some container runtime.
pub trait Driver: Clone + Send + Sync + 'static {
    /// The prepared task.
    type Cookie: Cookie;

    /// A claimed pool name: the claim holds until it is dropped.
    type Claim: PoolClaim;

    /// What the engine accepts and can do.
    fn traits(&self) -> EngineTraits;

    /// Gets a task ready to run: pulls its image if missing (one pull however many
    /// prepares ask at once) and creates its container. Close the cookie whether or
    /// not it runs.
    fn prepare(&self, task: Task) -> impl Future<Output = Result<Self::Cookie, CallError>> + Send;

    /// Claims pool name `pool` on this driver's engine for as long as the
    /// returned guard lives: until then every other claim of it fails with
    /// [`ClaimError::Owned`], whether another process on this host or this
    /// process makes it. The owner's death ends its claim, however it dies. A
    /// refused claim changes nothing.
    fn claim_pool(
        &self,
        pool: &str,
    ) -> impl Future<Output = Result<Self::Claim, ClaimError>> + Send;

    /// Removes every container carrying the label `key=value` (left behind by an
    /// earlier run that crashed, say); returns how many there were. For a pool's
    /// label, only its claim's holder may: the containers of a live owner would
    /// go too.
    fn remove_labelled(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<usize, CallError>> + Send;

    /// Whether the engine answers now: `Ok` once it has, an `engine_error`
    /// saying what failed once it has not, within a short deadline of the
    /// driver's own. Cheap enough to ask every few seconds.
    fn ping(&self) -> impl Future<Output = Result<(), CallError>> + Send;

    /// How long the engine may take to kill and remove one container, each
    /// call to its deadline. A pool's shutdown gives up on an engine that has
    /// removed no container for this long, and says what it left behind.
    fn removal_deadline(&self) -> Duration;

    /// The running containers labelled `key=value` that a new owner may try to
    /// take over ([`Driver::adopt`]): hot containers on the direct transport
    /// whose owner is gone. For a pool's label, only its claim's holder may
    /// ask. A driver that cannot take containers over finds none.
    fn leftovers(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<Leftover>, CallError>> + Send {
        let _ = (key, value);
        async { Ok(Vec::new()) }
    }

    /// Takes over `leftover` as a container of `task` (whose spec the caller
    /// matched to the leftover's), if it is provably between calls: its
    /// cookie's [`Cookie::run`] then hands out its pipes without starting
    /// anything. A leftover that cannot be proven so is refused, saying why
    /// ([`AdoptRefusal`]), and is the caller's to remove (with
    /// [`Driver::remove_leftover`]).
    fn adopt(
        &self,
        leftover: &Leftover,
        task: Task,
    ) -> impl Future<Output = Result<Self::Cookie, AdoptError>> + Send {
        let _ = task;
        let refused = AdoptError::new(
            AdoptRefusal::Unproven,
            &leftover.engine_id,
            format!("{} cannot take containers over", self.traits().name),
        );
        async move { Err(refused) }
    }

    /// Removes `leftover`, one of [`Driver::leftovers`], with what the driver
    /// keeps of it (its pipe directory); one already gone is fine. A driver
    /// that finds no leftovers has none to remove.
    fn remove_leftover(
        &self,
        leftover: &Leftover,
    ) -> impl Future<Output = Result<(), CallError>> + Send {
        let _ = leftover;
        async { Ok(()) }
    }
}

/// A prepared task: one container.
pub trait Cookie: Send + Sync + 'static {
    /// Starts the container with its pipes attached; the task's timeout counts from
    /// here. Call once.
    fn run(&mut self) -> impl Future<Output = Result<Running, CallError>> + Send;

    /// Waits for the container to exit and says how it ended. If the task's timeout
    /// passes first, or `cancel` fires, the container is killed and the status is
    /// `timeout` or `cancelled`. When the driver owns stdout, all of it has reached
    /// the sink by the time this returns.
    fn wait(&self, cancel: &CancellationToken) -> impl Future<Output = RunResult> + Send;

    /// Kills the container now (SIGKILL); one that is already dead is fine.
    fn kill(&self) -> impl Future<Output = Result<(), CallError>> + Send;

    /// Removes the container and stops everything watching it. Safe to call twice.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// Lets go of the container without removing it, for a next owner to
    /// take over ([`Driver::adopt`]): hotpool's ends of its pipes close, it
    /// waits for an owner (a hot container on the direct transport does, up
    /// to its orphan timeout), and [`Cookie::wait`] returns. Says whether it
    /// was let go: a driver that cannot let a container go removes it, as
    /// [`Cookie::close`] does, and says `false`.
    fn release(&self) -> impl Future<Output = bool> + Send {
        async {
            self.close().await;
            false
        }
    }

    /// CPU time the container has used since it started, if the task asked for
    /// counters and the driver can read them (the Docker driver can where the
    /// engine runs on this host). Cheap: read at the start and end of every call.
    fn cpu_time(&self) -> Option<Duration> {
        None
    }

    /// Memory the container uses now, in bytes; like [`Cookie::cpu_time`].
    fn memory_bytes(&self) -> Option<u64> {
        None
    }
}

/// Why a call of an engine's API failed: the engine's own error, or no answer
/// within the call's deadline.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineCallError<E> {
    /// The engine answered with an error, or the connection failed.
    #[error(transparent)]
    Failed(E),
    /// The engine did not answer within the deadline; the call was given up.
    #[error("the {engine} engine did not answer {op} within {}", humantime::format_duration(*.deadline))]
    NoAnswer {
        engine: &'static str,
        op: &'static str,
        deadline: Duration,
    },
}

/// Awaits one call of an engine's API for at most `deadline`, and records its
/// latency in `hotpool_engine_api_seconds{engine,op,result}`, `result` being
/// `success`, `error` or `timeout` (no answer within the deadline).
pub(crate) async fn timed_engine_call<T, E>(
    engine: &'static str,
    op: &'static str,
    deadline: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, EngineCallError<E>> {
    let start = std::time::Instant::now();
    let result = match tokio::time::timeout(deadline, call).await {
        Ok(answered) => answered.map_err(EngineCallError::Failed),
        Err(_) => Err(EngineCallError::NoAnswer {
            engine,
            op,
            deadline,
        }),
    };
    let outcome = match &result {
        Ok(_) => "success",
        Err(error) => error.outcome(),
    };
    record_engine_call(engine, op, outcome, start.elapsed());
    result
}

impl<E> EngineCallError<E> {
    /// The `result` label of the metric: `error` or `timeout`.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            EngineCallError::Failed(_) => "error",
            EngineCallError::NoAnswer { .. } => "timeout",
        }
    }
}

/// Records one engine call that took `elapsed`, its `outcome` being `success`
/// or [`EngineCallError::outcome`].
pub(crate) fn record_engine_call(
    engine: &'static str,
    op: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    metrics::histogram!(
        crate::metrics::ENGINE_API_SECONDS,
        "engine" => engine,
        "op" => op,
        "result" => outcome
    )
    .record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_given_up_and_says_so() {
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<Result<(), std::io::Error>>();
        let error = timed_engine_call("docker", "kill", Duration::from_secs(10), never)
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(matches!(
            error,
            EngineCallError::NoAnswer { op: "kill", .. }
        ));
        assert_eq!(
            error.to_string(),
            "the docker engine did not answer kill within 10s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_passes_through() {
        let answered = async { Err::<(), _>(std::io::Error::other("no such container")) };
        let error = timed_engine_call("docker", "kill", Duration::from_secs(10), answered)
            .await
            .unwrap_err();
        assert!(matches!(error, EngineCallError::Failed(_)));
        assert_eq!(error.to_string(), "no such container");
        let ok = timed_engine_call("docker", "ping", Duration::from_secs(1), async {
            Ok::<_, std::io::Error>(7)
        });
        assert_eq!(ok.await.unwrap(), 7);
    }
}
