//! The scheduler: hands hot containers to calls, starts and removes them.
//!
//! Rules, per function: idle containers are a LIFO stack (the newest idle is
//! reused first, so extras age out); calls that find none wait in a bounded FIFO
//! queue; a container is started only while waiting calls outnumber idle plus
//! starting containers, within the function's max concurrency and the pool's
//! memory budget (idle containers of other functions are evicted for it, least
//! recently used first). A container serves one call at a time. A start failure
//! reaches every waiting call that no other container will serve. A container
//! that dies while idle leaves the stack before anyone gets it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::BufReader;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::PoolConfig;
use super::budget::{MemoryBudget, Reservation};
use super::collector::{CallTag, StatsCollector};
use super::container::{EvictionReason, HotContainer, Pipes, Slot, StderrLog};
use super::format::{self, FrameError};
use super::function::FunctionPool;
use super::spec::{FunctionKey, FunctionSpec};
use crate::driver::{Cookie, Driver, Task};
use crate::error::CallError;

/// The label that ties a container to the pool that started it.
pub const POOL_LABEL: &str = "hotpool.pool";

/// Read and write buffer of a hot container's stdout.
const STDOUT_BUFFER_BYTES: usize = 64 * 1024;

/// The longest the reaper sleeps between looks at idle containers.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// The state every call and background task of one pool shares.
pub(crate) struct Inner<D: Driver> {
    pub(crate) driver: D,
    pub(crate) config: PoolConfig,
    pub(crate) functions: DashMap<FunctionKey, Arc<FunctionPool<D>>>,
    /// The newest spec of each function name.
    current: DashMap<String, FunctionKey>,
    /// Every live hot container, by id, so shutdown can reach busy ones.
    containers: DashMap<String, Arc<HotContainer<D>>>,
    pub(crate) budget: Arc<MemoryBudget>,
    /// Where engine stats samples of calls go.
    pub(crate) collector: StatsCollector,
    /// Starts, removals and container watchers; shutdown waits for all of them.
    pub(crate) tracker: TaskTracker,
    /// Shutdown began: take no new calls.
    pub(crate) closing: CancellationToken,
    /// Shutdown's deadline passed: cut the calls still running.
    pub(crate) abort: CancellationToken,
    /// An idle container appeared somewhere (a parked start may evict it).
    idle_appeared: Notify,
    in_flight: AtomicUsize,
    calls_done: Notify,
}

/// Where a slot comes from when it is offered to waiting calls.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Started,
    Returned,
}

pub(crate) fn busy(reason: impl Into<String>) -> CallError {
    CallError::Busy {
        reason: reason.into(),
        retry_after: Duration::from_secs(1),
    }
}

impl<D: Driver> Inner<D> {
    pub(crate) fn new(driver: D, config: PoolConfig) -> Inner<D> {
        Inner {
            driver,
            budget: MemoryBudget::new(config.memory_budget),
            collector: StatsCollector::start(config.stats_max_points),
            config,
            functions: DashMap::new(),
            current: DashMap::new(),
            containers: DashMap::new(),
            tracker: TaskTracker::new(),
            closing: CancellationToken::new(),
            abort: CancellationToken::new(),
            idle_appeared: Notify::new(),
            in_flight: AtomicUsize::new(0),
            calls_done: Notify::new(),
        }
    }

    /// Counts a call in until the guard drops; `None` once shutdown began.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<InFlight<D>> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight {
            inner: self.clone(),
        };
        (!self.closing.is_cancelled()).then_some(guard)
    }

    /// The pool of this exact spec, made current for its name.
    pub(crate) fn function_for(&self, spec: &FunctionSpec) -> Arc<FunctionPool<D>> {
        let key = spec.key();
        if let Some(pool) = self.functions.get(&key) {
            return pool.clone();
        }
        let pool = self
            .functions
            .entry(key)
            .or_insert_with(|| Arc::new(FunctionPool::new(spec.clone())))
            .clone();
        self.make_current(&pool);
        pool
    }

    /// Records `pool` as its name's current spec; the previous one drains.
    fn make_current(&self, pool: &FunctionPool<D>) {
        let previous = self.current.insert(pool.spec.name.clone(), pool.key);
        pool.lock().draining = false;
        if let Some(old) = previous.filter(|old| *old != pool.key) {
            self.drain(old);
        }
    }

    /// Stops reusing the containers of spec `key`: idle ones go now, busy ones when
    /// their call ends.
    fn drain(&self, key: FunctionKey) {
        let Some(pool) = self.functions.get(&key).map(|p| p.clone()) else {
            return;
        };
        let idle = {
            let mut slots = pool.lock();
            slots.draining = true;
            let idle = std::mem::take(&mut slots.idle);
            pool.publish(&slots);
            idle
        };
        for slot in idle {
            self.retire(&pool, slot.container, EvictionReason::Replaced);
        }
    }

    /// A hot container for one call: an idle one, or one started for it.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        pool: &Arc<FunctionPool<D>>,
    ) -> Result<CheckedOut<D>, CallError> {
        let deadline = expiry(Instant::now(), pool.spec.queue_timeout);
        loop {
            let taken = {
                let mut slots = pool.lock();
                if slots.draining {
                    drop(slots);
                    self.make_current(pool);
                    continue;
                }
                match slots.idle.pop() {
                    Some(slot) => {
                        slots.busy += 1;
                        pool.publish(&slots);
                        Ok(CheckedOut::new(self.clone(), pool.clone(), slot))
                    }
                    None if slots.live_waiters() >= pool.capacity_for_waiters(&slots) => {
                        return Err(busy(format!(
                            "{} runs {} containers, all busy, and {} calls already wait",
                            pool.spec.name, pool.spec.max_concurrency, pool.spec.max_queue
                        )));
                    }
                    None => {
                        let (sender, receiver) = oneshot::channel();
                        slots.waiting.push_back(sender);
                        Err(receiver)
                    }
                }
            };
            let mut checked = match taken {
                Ok(checked) => checked,
                Err(receiver) => self.wait_for_grant(pool, receiver, deadline).await?,
            };
            match usable(checked.slot()) {
                Ok(()) => return Ok(checked),
                Err(reason) => checked.evict(reason),
            }
        }
    }

    async fn wait_for_grant(
        self: &Arc<Self>,
        pool: &Arc<FunctionPool<D>>,
        mut receiver: oneshot::Receiver<super::function::Grant<D>>,
        deadline: Instant,
    ) -> Result<CheckedOut<D>, CallError> {
        self.launch(pool);
        match tokio::time::timeout_at(deadline, &mut receiver).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(_)) => Err(busy("the pool is shutting down")),
            Err(_) => {
                receiver.close();
                // A container may have been handed over just as time ran out.
                if let Ok(Ok(checked)) = receiver.try_recv() {
                    checked.check_in();
                }
                Err(busy(format!(
                    "no container of {} came free within {}",
                    pool.spec.name,
                    humantime::format_duration(pool.spec.queue_timeout)
                )))
            }
        }
    }

    /// Starts the containers that waiting calls need.
    fn launch(self: &Arc<Self>, pool: &Arc<FunctionPool<D>>) {
        for _ in 0..pool.claim_launches() {
            self.tracker.spawn(self.clone().start(pool.clone()));
        }
    }

    async fn start(self: Arc<Self>, pool: Arc<FunctionPool<D>>) {
        let started = Instant::now();
        let result = self.start_hot(&pool).await;
        record_start(&pool.name, started, result.as_ref().err());
        match result {
            Ok(slot) => self.offer(&pool, slot, Origin::Started),
            Err(error) => self.start_failed(&pool, error),
        }
    }

    async fn start_hot(
        self: &Arc<Self>,
        pool: &Arc<FunctionPool<D>>,
    ) -> Result<Slot<D>, CallError> {
        let memory = self.reserve(pool).await?;
        let id = crate::id::new_id();
        let current_call = Arc::new(Mutex::new(None));
        let mut task = self.task(pool, &id);
        task.stderr = Box::new(StderrLog::new(
            pool.name.clone(),
            current_call.clone(),
            &pool.spec,
        ));
        let stats_key = self.collector.next_id();
        let call_tag = Arc::new(CallTag::default());
        task.stats = Some(self.collector.sink(stats_key, call_tag.clone()));
        task.counters = true;
        let mut cookie = self.driver.prepare(task).await?;
        let running = match cookie.run().await {
            Ok(running) => running,
            Err(error) => {
                cookie.close().await;
                return Err(error);
            }
        };
        let (Some(stdin), Some(stdout)) = (running.stdin, running.stdout) else {
            cookie.close().await;
            return Err(CallError::engine(
                "the driver did not hand out the container's pipes",
            ));
        };
        let container = Arc::new(HotContainer::new(
            id.clone(),
            cookie,
            current_call,
            (stats_key, call_tag),
            memory,
        ));
        self.containers.insert(id, container.clone());
        let watched = container.clone();
        let pool_ref = Arc::downgrade(self);
        let key = pool.key;
        self.tracker.spawn(async move {
            watched.watch().await;
            if let Some(inner) = pool_ref.upgrade() {
                inner.died_while_idle(key, &watched.id);
            }
        });
        Ok(Slot {
            container,
            pipes: Pipes {
                stdin,
                stdout: BufReader::with_capacity(STDOUT_BUFFER_BYTES, stdout),
            },
            last_used: Instant::now(),
            fresh: true,
        })
    }

    /// The driver task for a container of `pool`.
    pub(crate) fn task(&self, pool: &FunctionPool<D>, id: &str) -> Task {
        let mut task = pool.spec.task(id);
        task.labels
            .insert(POOL_LABEL.to_owned(), self.config.name.clone());
        task
    }

    /// Reserves a container's memory, evicting idle containers of other functions,
    /// least recently used first, when the budget is full. Waits up to the
    /// function's queue timeout for memory to come back; then the pool is `busy`.
    pub(crate) async fn reserve(&self, pool: &FunctionPool<D>) -> Result<Reservation, CallError> {
        let deadline = expiry(Instant::now(), pool.spec.queue_timeout);
        loop {
            // Listen before checking: memory freed or a container going idle between
            // the check and the wait would otherwise be missed.
            let freed = self.budget.freed();
            let idle_appeared = self.idle_appeared.notified();
            tokio::pin!(freed, idle_appeared);
            freed.as_mut().enable();
            idle_appeared.as_mut().enable();
            if let Some(reservation) = self.budget.try_reserve(pool.spec.memory) {
                return Ok(reservation);
            }
            // After an eviction, wait for its memory: a container going idle in
            // the meantime must not be evicted too for the same reservation.
            let evicted = self.evict_least_recently_used(pool.key);
            let wake = async {
                if evicted {
                    return freed.await;
                }
                tokio::select! {
                    () = &mut freed => {},
                    () = &mut idle_appeared => {},
                }
            };
            if tokio::time::timeout_at(deadline, wake).await.is_err() {
                return Err(busy(format!(
                    "the memory budget ({} bytes) is full with busy containers",
                    self.budget.budget()
                )));
            }
        }
    }

    /// Evicts the least recently used idle container of any function but `except`,
    /// if there is one; says whether there was.
    fn evict_least_recently_used(&self, except: FunctionKey) -> bool {
        let pools: Vec<_> = self
            .functions
            .iter()
            .filter(|entry| *entry.key() != except)
            .map(|entry| entry.value().clone())
            .collect();
        loop {
            let oldest = pools
                .iter()
                .filter_map(|pool| pool.lock().idle.first().map(|s| (s.last_used, pool)))
                .min_by_key(|(last_used, _)| *last_used);
            let Some((last_used, pool)) = oldest else {
                return false;
            };
            let victim = {
                let mut slots = pool.lock();
                // Still the oldest of its stack? Another call may have taken it.
                let still_there = slots.idle.first().is_some_and(|s| s.last_used == last_used);
                let victim = still_there.then(|| slots.idle.remove(0));
                pool.publish(&slots);
                victim
            };
            if let Some(slot) = victim {
                self.retire(pool, slot.container, EvictionReason::MemoryPressure);
                return true;
            }
        }
    }

    /// Gives a container to the first waiting call, else puts it on the idle stack.
    fn offer(self: &Arc<Self>, pool: &Arc<FunctionPool<D>>, mut slot: Slot<D>, origin: Origin) {
        let mut slots = pool.lock();
        match origin {
            Origin::Started => slots.starting -= 1,
            Origin::Returned => slots.busy -= 1,
        }
        while let Some(waiter) = slots.waiting.pop_front() {
            if waiter.is_closed() {
                continue;
            }
            slots.busy += 1;
            match waiter.send(Ok(CheckedOut::new(self.clone(), pool.clone(), slot))) {
                Ok(()) => {
                    pool.publish(&slots);
                    return;
                }
                Err(returned) => {
                    slots.busy -= 1;
                    let Ok(back) = returned else {
                        unreachable!("the grant comes back as it was sent")
                    };
                    slot = back.take_slot();
                }
            }
        }
        if slots.draining || self.closing.is_cancelled() {
            pool.publish(&slots);
            drop(slots);
            let reason = if self.closing.is_cancelled() {
                EvictionReason::Shutdown
            } else {
                EvictionReason::Replaced
            };
            self.retire(pool, slot.container, reason);
            return;
        }
        slot.last_used = Instant::now();
        slots.idle.push(slot);
        pool.publish(&slots);
        drop(slots);
        self.idle_appeared.notify_waiters();
    }

    /// A start failed: the calls that no idle or starting container will serve get
    /// its error.
    fn start_failed(&self, pool: &FunctionPool<D>, error: CallError) {
        tracing::warn!(function = %pool.name, error = %error, "a container failed to start");
        let mut slots = pool.lock();
        slots.starting -= 1;
        let served = slots.idle.len() + slots.starting;
        let unserved = slots.live_waiters().saturating_sub(served);
        for _ in 0..unserved {
            if let Some(waiter) = slots.waiting.pop_back() {
                let _ = waiter.send(Err(error.clone()));
            }
        }
        pool.publish(&slots);
    }

    /// A call's container must go: count it out and remove it.
    fn evict_busy(
        self: &Arc<Self>,
        pool: &Arc<FunctionPool<D>>,
        slot: Slot<D>,
        reason: EvictionReason,
    ) {
        {
            let mut slots = pool.lock();
            slots.busy -= 1;
            pool.publish(&slots);
        }
        self.retire(pool, slot.container, reason);
        self.launch(pool);
    }

    /// Kills and removes a container that has left its function's accounting.
    fn retire(
        &self,
        pool: &FunctionPool<D>,
        container: Arc<HotContainer<D>>,
        reason: EvictionReason,
    ) {
        metrics::counter!(crate::metrics::EVICTIONS_TOTAL, "function" => pool.name.clone(), "reason" => reason.as_str())
            .increment(1);
        tracing::debug!(function = %pool.name, container = %container.id, reason = reason.as_str(), "evicting");
        self.containers.remove(&container.id);
        self.collector.forget(container.stats_key);
        self.tracker.spawn(async move {
            // One that died already needs no kill (it would only be refused).
            if container.is_dead() {
                container.cookie.close().await;
                return;
            }
            kill_with_retries(&container).await;
            container.cookie.close().await;
        });
    }

    /// The watcher saw container `id` of spec `key` die: if it was idle, it leaves
    /// the stack now, before any call gets it.
    fn died_while_idle(&self, key: FunctionKey, id: &str) {
        let Some(pool) = self.functions.get(&key).map(|p| p.clone()) else {
            return;
        };
        let dead = {
            let mut slots = pool.lock();
            let position = slots.idle.iter().position(|s| s.container.id == id);
            let dead = position.map(|p| slots.idle.remove(p));
            pool.publish(&slots);
            dead
        };
        if let Some(slot) = dead {
            let reason = slot.container.exit_reason();
            self.retire(&pool, slot.container, reason);
        }
    }

    /// Removes idle containers past their idle timeout and empty drained pools;
    /// returns when to look again.
    fn reap(&self) -> Instant {
        let now = Instant::now();
        let mut next = now + REAP_INTERVAL;
        let pools: Vec<_> = self.functions.iter().map(|e| e.value().clone()).collect();
        for pool in pools {
            let super::KeepAlive::Fixed { idle_timeout } = pool.spec.keep_alive;
            let (expired, empty_and_drained) = {
                let mut slots = pool.lock();
                let fresh_from = slots
                    .idle
                    .iter()
                    .position(|s| expiry(s.last_used, idle_timeout) > now)
                    .unwrap_or(slots.idle.len());
                let expired: Vec<_> = slots.idle.drain(..fresh_from).collect();
                if let Some(oldest) = slots.idle.first() {
                    next = next.min(expiry(oldest.last_used, idle_timeout));
                }
                pool.publish(&slots);
                let empty_and_drained = slots.draining && slots.is_empty();
                (expired, empty_and_drained)
            };
            for slot in expired {
                self.retire(&pool, slot.container, EvictionReason::IdleTimeout);
            }
            if empty_and_drained {
                self.functions.remove_if(&pool.key, |_, p| {
                    let mut slots = p.lock();
                    slots.draining && slots.is_empty()
                });
            }
        }
        next
    }

    /// Runs [`Inner::reap`] until shutdown.
    pub(crate) async fn reaper(self: Arc<Self>) {
        loop {
            let next = self.reap();
            tokio::select! {
                () = self.closing.cancelled() => return,
                () = tokio::time::sleep_until(next) => {},
            }
        }
    }

    /// Stops taking calls, lets in-flight calls finish within the shutdown timeout,
    /// then removes every container and waits until they are gone.
    pub(crate) async fn shutdown(&self) {
        self.closing.cancel();
        let calls_done = async {
            loop {
                let done = self.calls_done.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        };
        if tokio::time::timeout(self.config.shutdown_timeout, calls_done)
            .await
            .is_err()
        {
            tracing::warn!("calls still running at the shutdown deadline are cut");
        }
        self.abort.cancel();
        let pools: Vec<_> = self.functions.iter().map(|e| e.value().clone()).collect();
        for pool in &pools {
            let idle = {
                let mut slots = pool.lock();
                slots.waiting.clear();
                let idle = std::mem::take(&mut slots.idle);
                pool.publish(&slots);
                idle
            };
            for slot in idle {
                self.retire(pool, slot.container, EvictionReason::Shutdown);
            }
        }
        // Containers still busy: killing them ends their calls, which evict them.
        let busy: Vec<_> = self.containers.iter().map(|c| c.value().clone()).collect();
        for container in busy {
            kill_with_retries(&container).await;
        }
        self.tracker.close();
        self.tracker.wait().await;
        self.sweep().await;
    }

    /// Removes every container the engine still lists with this pool's label: one
    /// whose removal failed while the engine was away, or one the pool lost track
    /// of. Retried while the engine does not answer, up to [`SWEEP_ATTEMPTS`] times.
    async fn sweep(&self) {
        let mut pause = RETRY_PAUSE;
        for attempt in 1..=SWEEP_ATTEMPTS {
            match self
                .driver
                .remove_labelled(POOL_LABEL, &self.config.name)
                .await
            {
                Ok(0) => return,
                Ok(count) => {
                    tracing::info!(count, pool = %self.config.name, "removed containers left after shutdown");
                    return;
                }
                Err(error) if attempt == SWEEP_ATTEMPTS => {
                    tracing::error!(pool = %self.config.name, %error, "could not remove the pool's containers; `docker ps -a --filter label=hotpool.pool=...` lists them");
                }
                Err(error) => {
                    tracing::warn!(pool = %self.config.name, %error, "removing the pool's containers failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// How often a failed kill is tried, and shutdown's final sweep.
const KILL_ATTEMPTS: u32 = 5;
const SWEEP_ATTEMPTS: u32 = 8;
/// The first pause between tries; it doubles each time.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// `timeout` after `from`: when an idle container expires, when a waiting call
/// gives up. A timeout too long to add is a century, which is never.
fn expiry(from: Instant, timeout: Duration) -> Instant {
    from.checked_add(timeout)
        .unwrap_or_else(|| from + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Kills a container, trying again while the engine fails (an engine restarting
/// mid-load, say); a container that died meanwhile needs no more tries.
async fn kill_with_retries<D: Driver>(container: &HotContainer<D>) {
    let mut pause = RETRY_PAUSE;
    for attempt in 1..=KILL_ATTEMPTS {
        match container.cookie.kill().await {
            Ok(()) => return,
            Err(_) if container.is_dead() => return,
            Err(error) if attempt == KILL_ATTEMPTS => {
                tracing::warn!(container = %container.id, %error, "could not kill a container; shutdown sweeps it");
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

/// Records a container start (hot, or a cold call's) that took since `started`.
pub(crate) fn record_start(function: &Arc<str>, started: Instant, error: Option<&CallError>) {
    let outcome = error.map_or("success", |e| e.kind().as_str());
    metrics::counter!(crate::metrics::CONTAINER_STARTS_TOTAL, "function" => function.clone(), "result" => outcome)
        .increment(1);
    metrics::histogram!(crate::metrics::CONTAINER_START_SECONDS, "function" => function.clone())
        .record(started.elapsed().as_secs_f64());
}

/// Whether a container can take a call: alive, and nothing unasked on its stdout.
fn usable<D: Driver>(slot: &mut Slot<D>) -> Result<(), EvictionReason> {
    if slot.container.is_dead() {
        return Err(slot.container.exit_reason());
    }
    match format::check_quiet(&mut slot.pipes.stdout) {
        Ok(()) => Ok(()),
        Err(FrameError::Protocol(detail)) => {
            tracing::warn!(container = %slot.container.id, %detail, "evicting a container that broke the framing while idle");
            Err(EvictionReason::ProtocolError)
        }
        Err(FrameError::Closed | FrameError::Io(_)) => Err(EvictionReason::Exited),
    }
}

/// A call in flight; shutdown waits until none is left.
pub(crate) struct InFlight<D: Driver> {
    inner: Arc<Inner<D>>,
}

impl<D: Driver> Drop for InFlight<D> {
    fn drop(&mut self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.calls_done.notify_waiters();
        }
    }
}

/// A hot container lent to one call. Give it back with [`CheckedOut::check_in`]
/// or [`CheckedOut::evict`]. Dropped otherwise (the caller went away), it goes back
/// to the stack if no call began in it, and is evicted if one did, since its pipes
/// may hold half a call.
pub(crate) struct CheckedOut<D: Driver> {
    inner: Arc<Inner<D>>,
    pool: Arc<FunctionPool<D>>,
    slot: Option<Slot<D>>,
    in_call: bool,
}

impl<D: Driver> CheckedOut<D> {
    fn new(inner: Arc<Inner<D>>, pool: Arc<FunctionPool<D>>, slot: Slot<D>) -> CheckedOut<D> {
        CheckedOut {
            inner,
            pool,
            slot: Some(slot),
            in_call: false,
        }
    }

    pub(crate) fn slot(&mut self) -> &mut Slot<D> {
        self.slot
            .as_mut()
            .expect("a checked-out container has its slot")
    }

    /// The slot, for a call that begins writing into it now.
    pub(crate) fn begin_call(&mut self) -> &mut Slot<D> {
        self.in_call = true;
        self.slot()
    }

    fn take_slot(mut self) -> Slot<D> {
        self.slot
            .take()
            .expect("a checked-out container has its slot")
    }

    /// The call ended cleanly: the container serves the next one.
    pub(crate) fn check_in(mut self) {
        let slot = self
            .slot
            .take()
            .expect("a checked-out container has its slot");
        self.inner.offer(&self.pool, slot, Origin::Returned);
    }

    /// The container must go, for `reason`.
    pub(crate) fn evict(mut self, reason: EvictionReason) {
        let slot = self
            .slot
            .take()
            .expect("a checked-out container has its slot");
        self.inner.evict_busy(&self.pool, slot, reason);
    }
}

impl<D: Driver> Drop for CheckedOut<D> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if self.in_call {
                self.inner
                    .evict_busy(&self.pool, slot, EvictionReason::Cancelled);
            } else {
                self.inner.offer(&self.pool, slot, Origin::Returned);
            }
        }
    }
}
