//! How a call ends, whether its answer comes whole ([`super::call`]) or streams
//! ([`super::stream`]): why its container closed its stdout
//! ([`death_verdict`]), what it used ([`usage_since`]), and the guards that
//! log its end ([`LogEnd`]) and count it ([`CallCount`]) however it ends.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::call_logs::{CallLogs, CallState};
use super::container::HotContainer;
use super::function::FunctionPool;
use super::function_log::{CurrentCall, end_call};
use super::readings::Readings;
use crate::driver::{Cookie, Driver};
use crate::error::{CallError, ErrorKind};
use crate::stats::Usage;

/// How long past its timeout a hot call may be answered, at most.
///
/// A call whose container closed stdout waits for the engine to say why until
/// the call's deadline, and at least this long: a function that dies (exits, is
/// OOM-killed) is reported within moments of its stdout closing, and the caller
/// gets that reason. A container still running then closed its stdout but kept
/// running: it can no longer answer, and the caller gets `protocol_error`.
/// Stdout is only ever seen closed before the call's deadline, so every answer
/// comes within the timeout plus this.
pub const TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Why a call's container closed its stdout at `call_started` + some time,
/// with `timeout` the call's: the engine's verdict on its death, awaited until
/// the call's deadline and at least [`TIMEOUT_MARGIN`], or a protocol error if
/// it runs on.
pub(super) async fn death_verdict<D: Driver>(
    container: &HotContainer<D>,
    timeout: Duration,
    call_started: Instant,
) -> CallError {
    let until_deadline = timeout.saturating_sub(call_started.elapsed());
    let grace = until_deadline.max(TIMEOUT_MARGIN);
    container
        .death(grace)
        .await
        .unwrap_or_else(|| CallError::ProtocolError {
            detail: "the function closed its stdout but kept running".into(),
        })
}

/// What a call that started at `started` used: CPU time since `cpu_before`,
/// over its wall time, and memory now.
pub(super) fn usage_since(
    cookie: &impl Cookie,
    readings: &mut Readings,
    cpu_before: Option<Duration>,
    started: Instant,
) -> Option<Usage> {
    let now = Instant::now();
    let cpu = readings.cpu_at_end(now, || cookie.cpu_time())?;
    let cpu = cpu.saturating_sub(cpu_before?).as_secs_f64();
    Some(Usage {
        cpu_ratio: cpu
            / now
                .saturating_duration_since(started)
                .as_secs_f64()
                .max(1e-9),
        cpu_seconds: cpu,
        memory_bytes: readings.memory(now, || cookie.memory_bytes())?,
    })
}

/// Tells the log of a call how the call ended, before its container goes to
/// another call ([`LogEnd::now`]) or as it is dropped: as failed, unless said
/// otherwise (a caller that went away is a call that failed). It borrows
/// what it needs while the call does, and owns it once a stream outlives the
/// call's frame ([`LogEnd::into_owned`]).
pub(crate) struct LogEnd<'a> {
    current: Cow<'a, Arc<Mutex<CurrentCall>>>,
    logs: Cow<'a, Arc<CallLogs>>,
    id: Cow<'a, str>,
    said: bool,
}

impl<'a> LogEnd<'a> {
    pub(super) fn new(
        current: &'a Arc<Mutex<CurrentCall>>,
        logs: &'a Arc<CallLogs>,
        id: &'a str,
    ) -> Self {
        LogEnd {
            current: Cow::Borrowed(current),
            logs: Cow::Borrowed(logs),
            id: Cow::Borrowed(id),
            said: false,
        }
    }

    /// The same, owning what it borrowed.
    pub(super) fn into_owned(mut self) -> LogEnd<'static> {
        let owned = LogEnd {
            current: Cow::Owned(self.current.as_ref().clone()),
            logs: Cow::Owned(self.logs.as_ref().clone()),
            id: Cow::Owned(self.id.to_string()),
            said: self.said,
        };
        // Said by the owned one.
        self.said = true;
        owned
    }

    /// The call ended at `state`.
    pub(super) fn now(&mut self, state: CallState) {
        self.said = true;
        end_call(&self.current, &self.id, &self.logs, state);
    }
}

impl Drop for LogEnd<'_> {
    fn drop(&mut self) {
        if !self.said {
            end_call(&self.current, &self.id, &self.logs, CallState::Failed);
        }
    }
}

/// Counts one call in `hotpool_calls_total` when dropped: with its outcome, or as
/// `cancelled` if the caller dropped the call before it had one. Borrows its
/// function's pool, or owns it once a stream outlives the call's frame.
pub(crate) struct CallCount<'a, D: Driver> {
    pool: Cow<'a, Arc<FunctionPool<D>>>,
    pub(super) outcome: &'static str,
}

impl<'a, D: Driver> CallCount<'a, D> {
    /// A call of `pool`'s function, `cancelled` until it has an outcome.
    pub(super) fn new(pool: &'a Arc<FunctionPool<D>>) -> Self {
        CallCount {
            pool: Cow::Borrowed(pool),
            outcome: ErrorKind::Cancelled.as_str(),
        }
    }

    /// The same, owning its pool.
    pub(super) fn into_owned(mut self) -> CallCount<'static, D> {
        let owned = CallCount {
            pool: Cow::Owned(self.pool.as_ref().clone()),
            outcome: self.outcome,
        };
        // Counted by the owned one.
        self.outcome = "";
        owned
    }
}

impl<D: Driver> Drop for CallCount<'_, D> {
    fn drop(&mut self) {
        if !self.outcome.is_empty() {
            self.pool.metrics.count_call(self.outcome);
        }
    }
}
