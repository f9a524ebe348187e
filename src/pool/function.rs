//! One function's share of the pool: its idle stack, its waiting calls, and the
//! counts the launcher decides by. Everything here runs under one short lock and
//! never awaits; the scheduler does the slow parts outside it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Semaphore, oneshot};

use super::container::Slot;
use super::scheduler::CheckedOut;
use super::spec::{FunctionKey, FunctionSpec};
use crate::driver::Driver;
use crate::error::CallError;

/// What a waiting call is handed: a container, or why none will come.
pub(crate) type Grant<D> = Result<CheckedOut<D>, CallError>;

/// The pool of one function spec.
pub(crate) struct FunctionPool<D: Driver> {
    pub(crate) spec: Arc<FunctionSpec>,
    pub(crate) key: FunctionKey,
    pub(crate) name: Arc<str>,
    slots: Mutex<Slots<D>>,
    /// Cold calls run at most `max_concurrency` at once.
    pub(crate) cold_permits: Arc<Semaphore>,
    /// Cold calls waiting for a permit.
    pub(crate) cold_waiting: AtomicUsize,
}

/// The mutable state of a function pool.
pub(crate) struct Slots<D: Driver> {
    /// Idle hot containers, least recently used first: the newest is popped first,
    /// so extras age out at the bottom.
    pub(crate) idle: Vec<Slot<D>>,
    /// Calls waiting for a container, first come first served.
    pub(crate) waiting: VecDeque<oneshot::Sender<Grant<D>>>,
    /// Containers being started.
    pub(crate) starting: usize,
    /// Containers serving a call.
    pub(crate) busy: usize,
    /// The spec was replaced: serve no new calls, remove containers as they free up.
    pub(crate) draining: bool,
}

impl<D: Driver> Slots<D> {
    /// Waiting calls whose caller is still there (the others are dropped).
    pub(crate) fn live_waiters(&mut self) -> usize {
        self.waiting.retain(|waiter| !waiter.is_closed());
        self.waiting.len()
    }

    /// Containers alive or coming.
    pub(crate) fn live(&self) -> usize {
        self.idle.len() + self.busy + self.starting
    }

    /// Whether nothing is left in it.
    pub(crate) fn is_empty(&mut self) -> bool {
        self.live() == 0 && self.live_waiters() == 0
    }
}

impl<D: Driver> FunctionPool<D> {
    pub(crate) fn new(spec: FunctionSpec) -> FunctionPool<D> {
        let name: Arc<str> = spec.name.as_str().into();
        FunctionPool {
            key: spec.key(),
            cold_permits: Arc::new(Semaphore::new(spec.max_concurrency)),
            spec: Arc::new(spec),
            name,
            slots: Mutex::new(Slots {
                idle: Vec::new(),
                waiting: VecDeque::new(),
                starting: 0,
                busy: 0,
                draining: false,
            }),
            cold_waiting: AtomicUsize::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Slots<D>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many containers to start now: one per waiting call that no idle or
    /// starting container will serve, within the function's max concurrency.
    /// Counts them as starting.
    pub(crate) fn claim_launches(&self) -> usize {
        let mut slots = self.lock();
        if slots.draining {
            return 0;
        }
        let demand = slots.live_waiters();
        let supply = slots.idle.len() + slots.starting;
        let room = self.spec.max_concurrency.saturating_sub(slots.live());
        let launches = demand.saturating_sub(supply).min(room);
        slots.starting += launches;
        self.publish(&slots);
        launches
    }

    /// How many calls may wait: one per container starting or still startable,
    /// plus the queue (`max_queue` counts only calls that wait for a busy one).
    pub(crate) fn capacity_for_waiters(&self, slots: &Slots<D>) -> usize {
        let startable = self.spec.max_concurrency.saturating_sub(slots.live());
        slots.starting + startable + self.spec.max_queue
    }

    /// Publishes `hotpool_containers{function,state}`.
    pub(crate) fn publish(&self, slots: &Slots<D>) {
        let cold_busy = self.spec.max_concurrency - self.cold_permits.available_permits();
        for (state, count) in [
            ("idle", slots.idle.len()),
            ("busy", slots.busy + cold_busy),
            ("starting", slots.starting),
        ] {
            metrics::gauge!(crate::metrics::CONTAINERS, "function" => self.name.clone(), "state" => state)
                .set(count as f64);
        }
    }

    /// A snapshot for [`super::Pool::status`].
    pub(crate) fn status(&self) -> FunctionStatus {
        let mut slots = self.lock();
        let cold_busy = self.spec.max_concurrency - self.cold_permits.available_permits();
        FunctionStatus {
            name: self.spec.name.clone(),
            key: self.key,
            format: self.spec.format,
            idle: slots.idle.len(),
            busy: slots.busy + cold_busy,
            starting: slots.starting,
            waiting: slots.live_waiters() + self.cold_waiting.load(Ordering::Relaxed),
            draining: slots.draining,
        }
    }
}

/// One function pool, as [`super::Pool::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionStatus {
    /// The function's name.
    pub name: String,
    /// The key of its spec.
    pub key: FunctionKey,
    /// Its format.
    pub format: super::Format,
    /// Hot containers waiting for a call.
    pub idle: usize,
    /// Containers serving a call (hot or cold).
    pub busy: usize,
    /// Containers being started.
    pub starting: usize,
    /// Calls waiting for a container.
    pub waiting: usize,
    /// Whether a newer spec replaced it.
    pub draining: bool,
}
