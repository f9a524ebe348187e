//! One version of a function: its container spec, its current limits, its
//! scheduling state behind one short lock, and the gate of its cold calls.
//!
//! The state machine ([`FunctionState`]) decides; this type only holds it, keeps
//! the spec it was registered with, and publishes its counts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::checked_out::CheckedOut;
use super::container::Slot;
use super::function_log::LogLimits;
use super::function_metrics::FunctionMetrics;
use super::spec::{ContainerSpec, FunctionKey, FunctionSpec, KeepAlive, Lifecycle, Limits};
use super::state::{Counts, FunctionState, Served, Waiter};
use crate::driver::Driver;
use crate::error::CallError;

/// What a waiting call is handed: a container, or why none will come from this
/// version.
pub(crate) type Grant<D> = Result<CheckedOut<D>, Refusal>;

/// Why a waiting call gets no container from the version it waited on.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The start meant for it failed.
    Failed(CallError),
    /// The version drains: the call goes to the function's current version.
    Moved,
}

/// A waiting call's end of the channel its container comes through.
pub(crate) type WaitingCall<D> = oneshot::Sender<Grant<D>>;

impl<D: Driver> Waiter for WaitingCall<D> {
    fn is_gone(&self) -> bool {
        self.is_closed()
    }
}

impl<D: Driver> Served for Slot<D> {
    fn calls_served(&self) -> u64 {
        self.calls
    }
}

/// What a start is taken to cost until one was measured.
const FIRST_START_COST: Duration = Duration::from_millis(250);

/// The state machine of one version, over the pool's containers and callers.
pub(crate) type State<D> = FunctionState<Slot<D>, WaitingCall<D>>;

/// One version of a function.
pub(crate) struct FunctionPool<D: Driver> {
    pub(crate) name: Arc<str>,
    pub(crate) key: FunctionKey,
    pub(crate) container: ContainerSpec,
    /// The whole spec, limits as last registered.
    spec: Mutex<Arc<FunctionSpec>>,
    limits: Mutex<Arc<Limits>>,
    state: Mutex<State<D>>,
    /// Shared with its containers' stderr logs.
    pub(crate) log_limits: Arc<LogLimits>,
    /// Cold calls run at most `max_concurrency` at once.
    cold: Arc<ColdGate>,
    /// How long its last start took.
    start_cost: Mutex<Duration>,
    /// The handles of its per-call series.
    pub(crate) metrics: FunctionMetrics,
}

impl<D: Driver> FunctionPool<D> {
    pub(crate) fn new(spec: FunctionSpec) -> FunctionPool<D> {
        let (name, container, mut limits) = spec.clone().split();
        // A cold function keeps no idle containers.
        limits.min_idle *= usize::from(container.lifecycle.is_hot());
        if container.lifecycle.is_hot() {
            // At 0 from the start, so a dashboard shows the function before any prewarm.
            for outcome in ["used", "wasted"] {
                metrics::counter!(crate::metrics::PREWARMS_TOTAL, "function" => name.clone(), "outcome" => outcome)
                    .increment(0);
            }
        }
        let name: Arc<str> = name.into();
        FunctionPool {
            key: container.key(&name),
            metrics: FunctionMetrics::new(&name),
            name,
            state: Mutex::new(FunctionState::new(&limits, container.memory)),
            container,
            start_cost: Mutex::new(FIRST_START_COST),
            log_limits: LogLimits::new(limits.log_per_call, limits.log_rate),
            cold: Arc::new(ColdGate::new(limits.max_concurrency)),
            limits: Mutex::new(Arc::new(limits)),
            spec: Mutex::new(Arc::new(spec)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State<D>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spec as last registered.
    pub(crate) fn spec(&self) -> Arc<FunctionSpec> {
        self.spec.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The limits a call runs under now.
    pub(crate) fn limits(&self) -> Arc<Limits> {
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes `spec`'s limits (its container spec is this version's); the state
    /// machine's answer is for the caller to carry out.
    pub(crate) fn set_limits(
        &self,
        spec: FunctionSpec,
        state: &mut State<D>,
        now: std::time::Instant,
    ) -> Actions<D> {
        let mut limits = spec.clone().split().2;
        limits.min_idle *= usize::from(self.container.lifecycle.is_hot());
        self.log_limits.set(limits.log_per_call, limits.log_rate);
        self.cold.resize(limits.max_concurrency);
        *self.spec.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(spec);
        let actions = state.set_limits(&limits, now);
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
        actions
    }

    /// What its next start is expected to cost: what the last one took.
    pub(crate) fn start_cost(&self) -> Duration {
        *self.start_cost.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn record_start_cost(&self, took: Duration) {
        *self.start_cost.lock().unwrap_or_else(|e| e.into_inner()) = took;
    }

    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.container.lifecycle
    }

    /// Waits for a cold slot, within the queue limits; `None` past `wait`.
    pub(crate) async fn cold_slot(
        &self,
        max_queue: usize,
        wait: Duration,
    ) -> Result<ColdSlot, ColdRefusal> {
        self.cold.enter(max_queue, wait).await
    }

    /// Publishes `hotpool_containers{function,state}` and
    /// `hotpool_min_idle_short{function}`.
    pub(crate) fn publish(&self, state: &mut State<D>) {
        let counts = state.counts();
        self.metrics.containers(
            counts.idle,
            counts.busy + self.cold.running(),
            counts.starting,
        );
        self.metrics
            .floor_short(state.floor_short(), state.min_idle());
    }

    /// A snapshot for [`super::Pool::status`].
    pub(crate) fn status(&self) -> FunctionStatus {
        let mut state = self.lock();
        let Counts {
            idle,
            busy,
            starting,
            waiting,
        } = state.counts();
        FunctionStatus {
            name: self.name.to_string(),
            key: self.key,
            lifecycle: self.container.lifecycle,
            idle,
            busy: busy + self.cold.running(),
            starting,
            waiting: waiting + self.cold.waiting(),
            draining: state.is_draining(),
            idle_deadline: state
                .idle_deadline()
                .map(|at| at.saturating_duration_since(tokio::time::Instant::now().into_std())),
            keep_alive: self.limits().keep_alive,
            min_idle: state.min_idle(),
        }
    }
}

/// The actions of one version's state machine.
pub(crate) type Actions<D> = super::state::Actions<Slot<D>, WaitingCall<D>>;

/// At most `max_concurrency` cold calls at once; a lowered limit takes effect as
/// running calls end.
struct ColdGate {
    permits: Arc<Semaphore>,
    limit: Mutex<usize>,
    /// Permits to forget as they come back, after the limit was lowered.
    owed: AtomicUsize,
    waiting: AtomicUsize,
}

/// Why a cold call got no slot.
pub(crate) enum ColdRefusal {
    /// `max_queue` calls already wait.
    QueueFull,
    /// None came free within the wait.
    TimedOut,
}

/// A running cold call's slot, held until its container is removed; given
/// back on drop.
pub(crate) struct ColdSlot {
    gate: Arc<ColdGate>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for ColdSlot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let owed = self
            .gate
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                owed.checked_sub(1)
            });
        if owed.is_ok() {
            permit.forget();
        }
    }
}

impl ColdGate {
    fn new(limit: usize) -> ColdGate {
        ColdGate {
            permits: Arc::new(Semaphore::new(limit)),
            limit: Mutex::new(limit),
            owed: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    async fn enter(
        self: &Arc<Self>,
        max_queue: usize,
        wait: Duration,
    ) -> Result<ColdSlot, ColdRefusal> {
        if self.permits.available_permits() == 0 && self.waiting() >= max_queue {
            return Err(ColdRefusal::QueueFull);
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match permit {
            Ok(Ok(permit)) => Ok(ColdSlot {
                gate: self.clone(),
                permit: Some(permit),
            }),
            // The semaphore is never closed; a timeout is the only refusal.
            Ok(Err(_)) | Err(_) => Err(ColdRefusal::TimedOut),
        }
    }

    fn resize(&self, new_limit: usize) {
        let mut limit = self.limit.lock().unwrap_or_else(|e| e.into_inner());
        if new_limit > *limit {
            let mut grow = new_limit - *limit;
            // Cancel debts first, then add permits.
            while grow > 0 {
                let paid = self
                    .owed
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                        owed.checked_sub(1)
                    });
                if paid.is_err() {
                    break;
                }
                grow -= 1;
            }
            self.permits.add_permits(grow);
        } else {
            let shrink = *limit - new_limit;
            let forgotten = self.permits.forget_permits(shrink);
            self.owed.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        *limit = new_limit;
    }

    /// Cold calls running now.
    fn running(&self) -> usize {
        let limit = *self.limit.lock().unwrap_or_else(|e| e.into_inner());
        (limit + self.owed.load(Ordering::Acquire)).saturating_sub(self.permits.available_permits())
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// One function version, as [`super::Pool::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionStatus {
    /// The function's name.
    pub name: String,
    /// The key of this version (its name and container spec).
    pub key: FunctionKey,
    /// Its lifecycle, and a hot one's format.
    pub lifecycle: Lifecycle,
    /// Hot containers waiting for a call.
    pub idle: usize,
    /// Containers serving a call (hot or cold).
    pub busy: usize,
    /// Containers being started.
    pub starting: usize,
    /// Calls waiting for a container.
    pub waiting: usize,
    /// Whether a newer version replaced it (or it was removed) and it drains.
    pub draining: bool,
    /// How long until its next idle container goes, if no call takes it.
    pub idle_deadline: Option<Duration>,
    /// Its keep-alive policy.
    pub keep_alive: KeepAlive,
    /// Its warm floor: idle or starting containers it keeps at least.
    pub min_idle: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lowered_cold_limit_applies_as_running_calls_end() {
        let gate = Arc::new(ColdGate::new(2));
        let wait = Duration::from_millis(10);
        let first = gate.enter(0, wait).await.ok().expect("a slot");
        let second = gate.enter(0, wait).await.ok().expect("a slot");
        gate.resize(1);
        assert_eq!(gate.running(), 2);
        drop(first);
        assert_eq!(gate.running(), 1);
        assert!(
            gate.enter(0, wait).await.is_err(),
            "one runs, the limit is one"
        );
        drop(second);
        assert!(gate.enter(0, wait).await.is_ok());
        gate.resize(3);
        let held: Vec<_> = futures_util::future::join_all((0..3).map(|_| gate.enter(0, wait)))
            .await
            .into_iter()
            .map(|slot| slot.ok().expect("a slot under the raised limit"))
            .collect();
        assert_eq!(gate.running(), held.len());
    }
}
