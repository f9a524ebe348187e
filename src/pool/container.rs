//! A hot container: its driver cookie, its pipes, how it ended, and why it left.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::budget::Reservation;
use super::collector::CallTag;
use super::readings::Readings;
use super::spec::FunctionKey;
use super::stdout::Stdout;
use crate::driver::{BoxWrite, CallMark, Cookie, Driver, RunResult};
use crate::error::CallError;

/// A container's stderr log, beside the rest of a container's parts.
pub(crate) use super::function_log::StderrLog;

/// Why a container left the pool; the `reason` label of `hotpool_evictions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EvictionReason {
    /// Idle past its function's idle timeout.
    IdleTimeout,
    /// Its memory was needed by another function's container.
    MemoryPressure,
    /// The engine OOM-killed it.
    Oom,
    /// It exited (or was killed from outside).
    Exited,
    /// It broke the framing of its format.
    ProtocolError,
    /// A call in it ran past its timeout.
    Timeout,
    /// The pool shut down.
    Shutdown,
    /// The pool let it go, idle, for its next owner to take over.
    HandedOver,
    /// Its function's spec changed; it drained.
    Replaced,
    /// The caller went away in the middle of a call.
    Cancelled,
}

impl EvictionReason {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EvictionReason::IdleTimeout => "idle_timeout",
            EvictionReason::MemoryPressure => "memory_pressure",
            EvictionReason::Oom => "oom",
            EvictionReason::Exited => "exited",
            EvictionReason::ProtocolError => "protocol_error",
            EvictionReason::Timeout => "timeout",
            EvictionReason::Shutdown => "shutdown",
            EvictionReason::HandedOver => "handed_over",
            EvictionReason::Replaced => "replaced",
            EvictionReason::Cancelled => "cancelled",
        }
    }

    /// The reason for a container that died with `error`.
    pub(crate) fn of_death(error: &CallError) -> EvictionReason {
        match error {
            CallError::Oom { .. } => EvictionReason::Oom,
            CallError::ProtocolError { .. } => EvictionReason::ProtocolError,
            CallError::Timeout { .. } => EvictionReason::Timeout,
            _ => EvictionReason::Exited,
        }
    }
}

/// One running container of a hot function.
pub(crate) struct HotContainer<D: Driver> {
    /// The task id the pool gave it (unique; also in its container name).
    pub(crate) id: String,
    /// The function version it belongs to.
    pub(crate) key: FunctionKey,
    pub(crate) cookie: D::Cookie,
    /// The call in it now (or last), for its stderr lines.
    pub(crate) current_call: Arc<Mutex<Option<String>>>,
    /// Its key in the stats thread.
    pub(crate) stats_key: u64,
    /// The call in it now, for its stats samples.
    pub(crate) call_tag: Arc<CallTag>,
    died: CancellationToken,
    exit: OnceLock<RunResult>,
    /// Its share of the memory budget, given back when the container is dropped.
    _memory: Reservation,
}

impl<D: Driver> HotContainer<D> {
    pub(crate) fn new(
        id: String,
        key: FunctionKey,
        cookie: D::Cookie,
        current_call: Arc<Mutex<Option<String>>>,
        (stats_key, call_tag): (u64, Arc<CallTag>),
        memory: Reservation,
    ) -> HotContainer<D> {
        HotContainer {
            id,
            key,
            cookie,
            current_call,
            stats_key,
            call_tag,
            died: CancellationToken::new(),
            exit: OnceLock::new(),
            _memory: memory,
        }
    }

    /// Waits for the container to exit (forever, for a healthy one) and records how.
    pub(crate) async fn watch(&self) {
        let result = self.cookie.wait(&CancellationToken::new()).await;
        let _ = self.exit.set(result);
        self.died.cancel();
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.died.is_cancelled()
    }

    /// The eviction reason its death gives (`exited` while it is alive).
    pub(crate) fn exit_reason(&self) -> EvictionReason {
        self.exit
            .get()
            .and_then(|result| result.as_ref().err())
            .map_or(EvictionReason::Exited, EvictionReason::of_death)
    }

    pub(crate) fn died(&self) -> &CancellationToken {
        &self.died
    }

    /// Why the container is gone, waiting up to `grace` for the engine to say.
    /// `None` if it is still alive after that.
    pub(crate) async fn death(&self, grace: Duration) -> Option<CallError> {
        let _ = tokio::time::timeout(grace, self.died.cancelled()).await;
        let result = self.exit.get()?;
        Some(result.clone().err().unwrap_or(CallError::Exited {
            code: 0,
            stderr_tail: String::new(),
        }))
    }
}

/// The ends of a hot container's pipes that the pool holds, and its
/// between-calls mark where the driver keeps one.
pub(crate) struct Pipes {
    pub(crate) stdin: BoxWrite,
    pub(crate) stdout: Stdout,
    pub(crate) mark: Option<CallMark>,
}

impl Pipes {
    /// Marks a request about to be written.
    pub(crate) fn mark_busy(&self) {
        if let Some(mark) = &self.mark {
            mark.busy();
        }
    }

    /// Marks the last request answered in full, nothing else read.
    pub(crate) fn mark_idle(&self) {
        if let Some(mark) = &self.mark {
            mark.idle();
        }
    }
}

/// A hot container with its pipes: what the idle stack holds and a call uses.
pub(crate) struct Slot<D: Driver> {
    pub(crate) container: Arc<HotContainer<D>>,
    pub(crate) pipes: Pipes,
    /// It has served no call yet: its first call waited for it to start.
    pub(crate) fresh: bool,
    /// The calls it served.
    pub(crate) calls: u64,
    /// Its counters' last readings.
    pub(crate) readings: Readings,
}
