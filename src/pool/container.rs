//! A hot container: its driver cookie, its pipes, how it ended, and why it
//! left; and what became of one an earlier owner of the pool left.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::budget::Reservation;
use super::collector::CallTag;
use super::function_log::CurrentCall;
use super::readings::Readings;
use super::spec::FunctionKey;
use super::stdout::Stdout;
use crate::driver::{AdoptError, AdoptRefusal, BoxWrite, CallMark, Cookie, Driver, RunResult};
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
            CallError::Timeout { .. } | CallError::StreamStalled { .. } => EvictionReason::Timeout,
            CallError::Cancelled | CallError::RequestBody { .. } => EvictionReason::Cancelled,
            _ => EvictionReason::Exited,
        }
    }
}

/// What became of a container an earlier owner of the pool left, as a build
/// found it; the `outcome` label of `hotpool_adopted_containers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Adoption {
    /// Taken over, idle and hot.
    Adopted,
    /// Removed: it names no function, or one not configured now.
    NotConfigured,
    /// Removed: its function's container spec changed (or it is cold now).
    SpecChanged,
    /// Removed: its function had as many containers as its concurrency.
    OverConcurrency,
    /// Removed: the memory budget had no room for it.
    OverBudget,
    /// Removed: it was in a call.
    InCall,
    /// Removed: it had ended.
    Ended,
    /// Removed: it wrote to stdout while idle.
    WroteWhileIdle,
    /// Removed: nothing proved it between calls.
    Unproven,
}

impl Adoption {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Adoption::Adopted => "adopted",
            Adoption::NotConfigured => "not_configured",
            Adoption::SpecChanged => "spec_changed",
            Adoption::OverConcurrency => "over_concurrency",
            Adoption::OverBudget => "over_budget",
            Adoption::InCall => "in_call",
            Adoption::Ended => "ended",
            Adoption::WroteWhileIdle => "wrote_while_idle",
            Adoption::Unproven => "unproven",
        }
    }
}

/// Why a leftover was not taken over: its outcome, and in words for the log.
#[derive(Debug)]
pub(crate) struct NotAdopted {
    pub(crate) outcome: Adoption,
    pub(crate) why: String,
}

impl NotAdopted {
    pub(crate) fn new(outcome: Adoption, why: impl Into<String>) -> NotAdopted {
        NotAdopted {
            outcome,
            why: why.into(),
        }
    }
}

impl From<AdoptError> for NotAdopted {
    fn from(error: AdoptError) -> NotAdopted {
        let outcome = match error.refusal {
            AdoptRefusal::InCall => Adoption::InCall,
            AdoptRefusal::Ended => Adoption::Ended,
            AdoptRefusal::WroteWhileIdle => Adoption::WroteWhileIdle,
            AdoptRefusal::Unproven => Adoption::Unproven,
        };
        NotAdopted::new(outcome, error.message)
    }
}

impl From<CallError> for NotAdopted {
    /// A container that failed to come up as one of the pool's proves nothing.
    fn from(error: CallError) -> NotAdopted {
        NotAdopted::new(Adoption::Unproven, error.to_string())
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
    pub(crate) current_call: Arc<Mutex<CurrentCall>>,
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
        current_call: Arc<Mutex<CurrentCall>>,
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
