//! The scheduler: carries out what each function version's state machine
//! decides (hands containers to calls, starts and removes containers), keeps the
//! pool-wide parts (the memory budget, the registry of versions, shutdown, the
//! claim of the pool's name), and lends containers to calls.
//!
//! The rules themselves live in [`super::state`]; the choices a user can swap in
//! [`super::policy`]. Under memory pressure a start evicts the idle container of
//! another function that the eviction policies rank lowest; a start of a warm
//! floor takes only free memory, so floors never evict each other. A container
//! that dies while idle leaves its stack before anyone gets it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{Notify, Semaphore, SemaphorePermit, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::PoolConfig;
use super::budget::{MemoryBudget, Reservation};
use super::call_logs::CallLogs;
use super::checked_out::{CheckedOut, Lender};
use super::collector::{CallTag, StatsCollector};
use super::container::{
    Adoption, EvictionReason, HotContainer, NotAdopted, Pipes, Slot, StderrLog,
};
use super::function::{Actions, FunctionPool, Grant, Refusal};
use super::function_log::CurrentCall;
use super::policy::after;
use super::readings::Readings;
use super::spec::{FunctionKey, FunctionSpec, Lifecycle, Limits};
use super::state::{Arrival, EvictionClock};
use super::stdout::Stdout;
use super::teardown::{Leftovers, Removals};
use crate::driver::{Cookie, Driver, FUNCTION_LABEL, Leftover, Running, Task};
use crate::error::CallError;
use crate::format::{self, FrameError};

/// The label that ties a container to the pool that started it.
pub const POOL_LABEL: &str = "hotpool.pool";

/// The label holding the fingerprint of a hot container's spec: a new owner
/// takes over only containers its functions would have started.
pub const SPEC_LABEL: &str = "hotpool.spec";

/// The longest the reaper sleeps between looks at idle containers.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// How many containers a pool creates and starts at once, at most, hot and
/// cold together: a thousand calls arriving at once asked dockerd for a
/// thousand starts, and 839 of them passed their 30 s deadline.
pub const STARTS_AT_ONCE: usize = 16;

/// A hot start's turn: when it came, after waiting how long behind other
/// starts.
struct StartTurn {
    came: Instant,
    waited: Duration,
}

/// Where a start's memory comes from.
#[derive(Debug, Clone, Copy)]
enum Memory {
    /// Reserved, evicting idle containers of other functions or waiting for
    /// memory up to the queue timeout (a call's start, a prewarm).
    Reserve,
    /// Taken only if free now (the warm floor's start): a floor never evicts
    /// another function's container, nor waits.
    IfFree,
}

/// The state every call and background task of one pool shares.
pub(crate) struct Inner<D: Driver> {
    /// Itself, for the tasks it spawns and the containers it lends.
    this: Weak<Inner<D>>,
    pub(crate) driver: D,
    pub(crate) config: PoolConfig,
    /// Every version, current and draining, by key.
    pub(crate) versions: DashMap<FunctionKey, Arc<FunctionPool<D>>>,
    /// The current version of each registered function.
    pub(super) current: DashMap<Arc<str>, Arc<FunctionPool<D>>>,
    /// Every live hot container, by id, so shutdown can reach busy ones.
    containers: DashMap<String, Arc<HotContainer<D>>>,
    pub(crate) budget: Arc<MemoryBudget>,
    /// The logs of recent calls, fed by their containers' stderr.
    pub(crate) call_logs: Arc<CallLogs>,
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
    /// A deadline sooner than the reaper's next look appeared (limits changed, a
    /// prewarm is due).
    wake_reaper: Notify,
    /// The reaper's next look, in nanoseconds since `epoch`.
    reaper_next: AtomicU64,
    /// What eviction priorities count from.
    epoch: std::time::Instant,
    /// GreedyDual's clock: the priority of the last container evicted (f64 bits).
    eviction_clock: AtomicU64,
    in_flight: AtomicUsize,
    calls_done: Notify,
    /// The containers on the engine, and their removals.
    pub(crate) removals: Arc<Removals>,
    /// Bounds the containers being created and started at once.
    starts: Semaphore,
    /// The claim of the pool's name on its engine: held until the pool is
    /// dropped, or hands over.
    claim: Mutex<Option<D::Claim>>,
}

pub(crate) fn busy(reason: impl Into<String>) -> CallError {
    CallError::Busy {
        reason: reason.into(),
        retry_after: Duration::from_secs(1),
    }
}

/// The state machines' clock: tokio's, so paused-time tests drive it too.
pub(super) fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl<D: Driver> Inner<D> {
    pub(crate) fn new(driver: D, config: PoolConfig, claim: D::Claim) -> Arc<Inner<D>> {
        Arc::new_cyclic(|this| Inner {
            this: this.clone(),
            driver,
            budget: MemoryBudget::new(config.memory_budget),
            collector: StatsCollector::start(config.stats_max_points),
            call_logs: Arc::new(CallLogs::new(
                config.call_logs_bytes,
                config.call_logs_entries,
            )),
            config,
            versions: DashMap::new(),
            current: DashMap::new(),
            containers: DashMap::new(),
            tracker: TaskTracker::new(),
            closing: CancellationToken::new(),
            abort: CancellationToken::new(),
            idle_appeared: Notify::new(),
            wake_reaper: Notify::new(),
            reaper_next: AtomicU64::new(0),
            epoch: now(),
            eviction_clock: AtomicU64::new(0f64.to_bits()),
            in_flight: AtomicUsize::new(0),
            calls_done: Notify::new(),
            removals: Arc::new(Removals::new()),
            starts: Semaphore::new(STARTS_AT_ONCE),
            claim: Mutex::new(Some(claim)),
        })
    }

    /// What `with` makes of the claim of the pool's name; `None` once the
    /// pool handed over.
    pub(crate) fn with_claim<R>(&self, with: impl FnOnce(&D::Claim) -> R) -> Option<R> {
        self.claim
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(with)
    }

    /// Itself as an `Arc`; it is only ever reached through one.
    pub(crate) fn arc(&self) -> Arc<Inner<D>> {
        self.this
            .upgrade()
            .expect("the pool is alive while it is used")
    }

    /// Counts a call in until the guard drops; `None` once shutdown began.
    pub(crate) fn enter(&self) -> Option<InFlight<D>> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight { inner: self.arc() };
        (!self.closing.is_cancelled()).then_some(guard)
    }

    /// Makes `spec` its name's current version. The same container spec keeps its
    /// containers and takes the new limits in place (a draining version with it
    /// is taken back); another one is a new version, and the old one drains.
    /// Its warm floor fills at the reaper's next look, which it asks for: at
    /// once, or once a pool being built has taken over what it may.
    pub(crate) fn register(&self, spec: FunctionSpec) {
        let key = spec.key();
        let name: Arc<str> = spec.name.as_str().into();
        let replaced = match self.current.entry(name) {
            Entry::Occupied(entry) if entry.get().key == key => None,
            Entry::Occupied(mut entry) => Some(entry.insert(self.version(key, &spec))),
            Entry::Vacant(entry) => {
                entry.insert(self.version(key, &spec));
                None
            }
        };
        let pool = self
            .versions
            .get(&key)
            .map(|p| p.clone())
            .expect("a current version is registered");
        let actions = {
            let mut state = pool.lock();
            let actions = pool.set_limits(spec, &mut state, now());
            pool.publish(&mut state);
            actions
        };
        self.carry_out(&pool, actions, None);
        if let Some(old) = replaced {
            self.drain(&old, EvictionReason::Replaced);
        }
        self.wake_reaper.notify_one();
    }

    /// The version of `key`: a draining one taken back, or a new one.
    fn version(&self, key: FunctionKey, spec: &FunctionSpec) -> Arc<FunctionPool<D>> {
        // Under the map's lock, so the reaper cannot remove it as it comes back.
        self.versions
            .entry(key)
            .and_modify(|pool| pool.lock().resume())
            .or_insert_with(|| Arc::new(FunctionPool::new(spec.clone())))
            .clone()
    }

    /// Removes function `name`: its version drains. Says whether it was there.
    pub(crate) fn remove(&self, name: &str) -> bool {
        let Some((_, pool)) = self.current.remove(name) else {
            return false;
        };
        self.drain(&pool, EvictionReason::Replaced);
        true
    }

    /// The current version of `name`.
    pub(crate) fn current(&self, name: &str) -> Result<Arc<FunctionPool<D>>, CallError> {
        self.current
            .get(name)
            .map(|p| p.clone())
            .ok_or_else(|| CallError::UnknownFunction { name: name.into() })
    }

    /// The current spec of every registered function.
    pub(crate) fn specs(&self) -> Vec<Arc<FunctionSpec>> {
        self.current.iter().map(|entry| entry.spec()).collect()
    }

    /// Stops giving out the containers of `pool`: idle ones go now, busy ones
    /// when their call ends, and its waiting calls go to the current version.
    fn drain(&self, pool: &Arc<FunctionPool<D>>, reason: EvictionReason) {
        let actions = {
            let mut state = pool.lock();
            let actions = state.drain(reason);
            pool.publish(&mut state);
            actions
        };
        self.carry_out(pool, actions, None);
    }

    /// Does what a state machine decided. Refused waiters get `failed`, or are
    /// sent to the current version when it is `None`.
    fn carry_out(
        &self,
        pool: &Arc<FunctionPool<D>>,
        actions: Actions<D>,
        failed: Option<&CallError>,
    ) {
        let Actions {
            grant,
            start,
            fill,
            retire,
            refuse,
            wake,
            prewarms_wasted,
        } = actions;
        if prewarms_wasted > 0 {
            count_prewarms(pool, "wasted", prewarms_wasted);
        }
        if let Some(wake) = wake {
            self.wake_reaper_by(wake);
        }
        for (slot, reason) in retire {
            self.retire(pool, slot.container, reason);
        }
        for waiter in refuse {
            let refusal = failed.map_or(Refusal::Moved, |error| Refusal::Failed(error.clone()));
            let _ = waiter.send(Err(refusal));
        }
        self.start_containers(pool, start);
        self.fill_floor(pool, fill);
        let Some((waiter, slot)) = grant else {
            return;
        };
        // A caller who left just now hands the container straight back.
        if let Err(Ok(refused)) = waiter.send(Ok(CheckedOut::new(self.arc(), slot))) {
            let actions = {
                let mut state = pool.lock();
                let actions = state.grant_refused(refused.into_slot(), now());
                pool.publish(&mut state);
                actions
            };
            self.settle(pool, actions);
        }
    }

    fn start_containers(&self, pool: &Arc<FunctionPool<D>>, count: usize) {
        for _ in 0..count {
            self.tracker
                .spawn(self.arc().start(pool.clone(), Memory::Reserve));
        }
    }

    /// Starts `count` containers for `pool`'s warm floor, each only with memory
    /// free now.
    fn fill_floor(&self, pool: &Arc<FunctionPool<D>>, count: usize) {
        for _ in 0..count {
            self.tracker
                .spawn(self.arc().start(pool.clone(), Memory::IfFree));
        }
    }

    /// A hot container of function `name` for one call: an idle one, or one
    /// started for it. Returns the version it came from and the limits the call
    /// runs under.
    pub(crate) async fn checkout(
        &self,
        first: Arc<FunctionPool<D>>,
    ) -> Result<(Arc<FunctionPool<D>>, Arc<Limits>, CheckedOut<D>), CallError> {
        let name = first.name.clone();
        let mut next = Some(first);
        let mut deadline = None;
        let mut drained: Option<Arc<FunctionPool<D>>> = None;
        loop {
            let pool = match next.take() {
                Some(pool) => pool,
                None => self.current(&name)?,
            };
            if drained.as_ref().is_some_and(|d| Arc::ptr_eq(d, &pool)) {
                // The current version itself drains: the pool is shutting down.
                return Err(busy("the pool is shutting down"));
            }
            let limits = pool.limits();
            let deadline =
                *deadline.get_or_insert_with(|| expiry(Instant::now(), limits.queue_timeout));
            let mut receiver = None;
            let arrival = {
                let mut state = pool.lock();
                let arrival = state.call_arrives(now(), || {
                    let (sender, waiting) = oneshot::channel();
                    receiver = Some(waiting);
                    sender
                });
                pool.publish(&mut state);
                arrival
            };
            let mut checked = match arrival {
                Arrival::Ready {
                    mut container,
                    prewarmed,
                    start,
                    fill,
                } => {
                    self.start_containers(&pool, start);
                    self.fill_floor(&pool, fill);
                    // Idle before the call came: the call is hot, whoever started it.
                    container.fresh = false;
                    if prewarmed {
                        count_prewarms(&pool, "used", 1);
                    }
                    CheckedOut::new(self.arc(), container)
                }
                Arrival::Full => {
                    return Err(busy(format!(
                        "{name} runs {} containers, all busy, and {} calls already wait",
                        limits.max_concurrency, limits.max_queue
                    )));
                }
                Arrival::Draining => {
                    drained = Some(pool);
                    continue;
                }
                Arrival::Queued { start, fill } => {
                    self.start_containers(&pool, start);
                    self.fill_floor(&pool, fill);
                    let receiver = receiver.expect("a queued call has its receiver");
                    match self
                        .wait_for_grant(&name, receiver, deadline, limits.queue_timeout)
                        .await?
                    {
                        Some(checked) => checked,
                        None => {
                            drained = Some(pool);
                            continue;
                        }
                    }
                }
            };
            match usable(checked.slot()) {
                Ok(()) => return Ok((pool, limits, checked)),
                Err(reason) => checked.evict(reason),
            }
        }
    }

    /// A container for a waiting call; `None` if its version drained meanwhile.
    async fn wait_for_grant(
        &self,
        name: &str,
        mut receiver: oneshot::Receiver<Grant<D>>,
        deadline: Instant,
        queue_timeout: Duration,
    ) -> Result<Option<CheckedOut<D>>, CallError> {
        match tokio::time::timeout_at(deadline, &mut receiver).await {
            Ok(Ok(Ok(checked))) => Ok(Some(checked)),
            Ok(Ok(Err(Refusal::Failed(error)))) => Err(error),
            Ok(Ok(Err(Refusal::Moved))) => Ok(None),
            Ok(Err(_)) => Err(busy("the pool is shutting down")),
            Err(_) => {
                receiver.close();
                // A container may have been handed over just as time ran out;
                // dropping it gives it back.
                drop(receiver.try_recv());
                Err(busy(format!(
                    "no container of {name} came free within {}",
                    humantime::format_duration(queue_timeout)
                )))
            }
        }
    }

    async fn start(self: Arc<Self>, pool: Arc<FunctionPool<D>>, memory: Memory) {
        let started = Instant::now();
        let reserved = match memory {
            Memory::Reserve => self.reserve(&pool).await,
            Memory::IfFree => {
                let Some(reservation) = self.budget.try_reserve(pool.container.memory) else {
                    self.fill_refused(&pool);
                    return;
                };
                Ok(reservation)
            }
        };
        let result = match reserved {
            Ok(reservation) => self.start_hot(&pool, reservation).await,
            Err(error) => Err(error),
        };
        record_start(&pool.name, started, result.as_ref().err());
        if result.is_ok() {
            pool.record_start_cost(started.elapsed());
        }
        match result {
            Ok((slot, turn)) => {
                let actions = {
                    let mut state = pool.lock();
                    let actions = state.started(slot, now(), turn.came.elapsed(), turn.waited);
                    pool.publish(&mut state);
                    actions
                };
                self.settle(&pool, actions);
            }
            Err(error) => {
                tracing::warn!(function = %pool.name, error = %error, "a container failed to start");
                let actions = {
                    let mut state = pool.lock();
                    let actions = state.start_failed(now());
                    pool.publish(&mut state);
                    actions
                };
                self.carry_out(&pool, actions, Some(&error));
            }
        }
    }

    /// A start of `pool`'s warm floor found no free memory: it is not made,
    /// and the floor is short.
    fn fill_refused(&self, pool: &Arc<FunctionPool<D>>) {
        let actions = {
            let mut state = pool.lock();
            let actions = state.fill_refused(now());
            pool.publish(&mut state);
            actions
        };
        self.carry_out(pool, actions, None);
    }

    /// Waits for a turn to create and start a container of `function`
    /// ([`STARTS_AT_ONCE`]), and counts the wait; `None` if the pool began
    /// shutting down first.
    pub(crate) async fn start_turn(&self, function: &Arc<str>) -> Option<SemaphorePermit<'_>> {
        let asked = Instant::now();
        let turn = tokio::select! {
            turn = self.starts.acquire() => turn.expect("the semaphore is never closed"),
            () = self.closing.cancelled() => return None,
        };
        metrics::histogram!(crate::metrics::START_WAIT_SECONDS, "function" => function.clone())
            .record(asked.elapsed().as_secs_f64());
        Some(turn)
    }

    /// Carries out the actions of a container coming free, and says so if it went
    /// idle.
    fn settle(&self, pool: &Arc<FunctionPool<D>>, actions: Actions<D>) {
        let went_idle = actions.grant.is_none() && actions.retire.is_empty();
        self.carry_out(pool, actions, None);
        if went_idle {
            self.idle_appeared.notify_waiters();
        }
    }

    /// Starts a hot container of `pool` in `memory`; with it, its start turn.
    async fn start_hot(
        &self,
        pool: &Arc<FunctionPool<D>>,
        memory: Reservation,
    ) -> Result<(Slot<D>, StartTurn), CallError> {
        // A turn once the memory is there: no start waits for memory holding one.
        let asked = Instant::now();
        let Some(turn) = self.start_turn(&pool.name).await else {
            return Err(busy("the pool is shutting down"));
        };
        let start_turn = StartTurn {
            came: Instant::now(),
            waited: asked.elapsed(),
        };
        let (task, wiring) = self.hot_task(pool, &crate::id::new_id());
        let id = task.id.clone();
        let mut cookie = self.prepare(task).await?;
        let ran = cookie.run().await;
        drop(turn);
        let slot = self.hot_slot(id, pool, cookie, ran, wiring, memory).await?;
        Ok((slot, start_turn))
    }

    /// Takes over the hot containers an earlier owner of the pool left
    /// running (it crashed, say) that are provably between calls and whose
    /// spec a registered function's current version has, as far as their
    /// function's concurrency and the memory budget allow; removes every
    /// other container of the pool's label. Counts each, with what became
    /// of it, in `hotpool_adopted_containers_total`; says how many it took
    /// over and how many it removed.
    pub(crate) async fn adopt_leftovers(&self) -> Result<(usize, usize), CallError> {
        use futures_util::StreamExt;
        let found = self.driver.leftovers(POOL_LABEL, &self.config.name).await?;
        // Chosen in turn before any is taken over: a container past its
        // function's concurrency takes no memory another function's could use.
        let mut chosen = HashMap::new();
        let verdicts: Vec<_> = found
            .into_iter()
            .map(|leftover| {
                let verdict = self.adoptable(&leftover, &mut chosen);
                (leftover, verdict)
            })
            .collect();
        let outcomes = futures_util::stream::iter(verdicts)
            .map(|(leftover, verdict)| async move {
                let taken = match verdict {
                    Ok((pool, memory)) => self
                        .adopt(&pool, &leftover, memory)
                        .await
                        .map(|slot| self.settle_adopted(&pool, slot)),
                    Err(refused) => Err(refused),
                };
                let outcome = match &taken {
                    Ok(()) => Adoption::Adopted,
                    Err(refused) => refused.outcome,
                };
                let function = leftover.labels.get(FUNCTION_LABEL).cloned();
                metrics::counter!(crate::metrics::ADOPTED_CONTAINERS_TOTAL, "function" => function.unwrap_or_default(), "outcome" => outcome.as_str())
                    .increment(1);
                match taken {
                    Ok(()) => Ok(true),
                    Err(NotAdopted { outcome, why }) => {
                        tracing::info!(container = %leftover.engine_id, outcome = outcome.as_str(), %why, "not taking over a container an earlier run left; removing it");
                        self.driver.remove_leftover(&leftover).await.map(|()| false)
                    }
                }
            })
            .buffer_unordered(STARTS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let mut counts = (0, 0);
        for outcome in outcomes {
            if outcome? {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
        Ok(counts)
    }

    /// The function version `leftover` may join, with its memory reserved,
    /// if fewer than its concurrency are `chosen` for it already (none runs
    /// yet as the pool is built); else why not.
    fn adoptable(
        &self,
        leftover: &Leftover,
        chosen: &mut HashMap<FunctionKey, usize>,
    ) -> Result<(Arc<FunctionPool<D>>, Reservation), NotAdopted> {
        let function = leftover
            .labels
            .get(FUNCTION_LABEL)
            .ok_or_else(|| NotAdopted::new(Adoption::NotConfigured, "it names no function"))?;
        let pool = self.current(function).map_err(|_| {
            NotAdopted::new(
                Adoption::NotConfigured,
                format!("{function} is not configured"),
            )
        })?;
        let changed = |why: String| NotAdopted::new(Adoption::SpecChanged, why);
        if pool.lifecycle() == Lifecycle::Cold {
            return Err(changed(format!("{function} is cold now")));
        }
        let fingerprint = pool.container.fingerprint(&pool.name);
        if leftover.labels.get(SPEC_LABEL) != Some(&fingerprint) {
            return Err(changed(format!("{function}'s container spec changed")));
        }
        let count = chosen.entry(pool.key).or_default();
        let concurrency = pool.limits().max_concurrency;
        if *count >= concurrency {
            return Err(NotAdopted::new(
                Adoption::OverConcurrency,
                format!("{function} runs at most {concurrency} containers"),
            ));
        }
        let memory = self
            .budget
            .try_reserve(pool.container.memory)
            .ok_or_else(|| NotAdopted::new(Adoption::OverBudget, "the memory budget is full"))?;
        *count += 1;
        Ok((pool, memory))
    }

    /// Puts an adopted container in its version's idle stack.
    fn settle_adopted(&self, pool: &Arc<FunctionPool<D>>, slot: Slot<D>) {
        let actions = {
            let mut state = pool.lock();
            let actions = state.adopted(slot, now());
            pool.publish(&mut state);
            actions
        };
        self.settle(pool, actions);
    }

    /// Takes over `leftover`, a container an earlier owner of the pool left
    /// running, as one of `pool`'s, with its memory: if the driver can prove
    /// it is between calls, it joins the idle containers as they are.
    async fn adopt(
        &self,
        pool: &Arc<FunctionPool<D>>,
        leftover: &Leftover,
        memory: Reservation,
    ) -> Result<Slot<D>, NotAdopted> {
        let prefix = format!("{}-", pool.name);
        let Some(suffix) = leftover.task_id.strip_prefix(&prefix) else {
            return Err(NotAdopted::new(
                Adoption::Unproven,
                format!("it is no task of {}", pool.name),
            ));
        };
        let (task, wiring) = self.hot_task(pool, suffix);
        let id = task.id.clone();
        let mut cookie = self.driver.adopt(leftover, task).await?;
        self.removals.prepared(&id);
        let ran = cookie.run().await;
        let mut slot = self.hot_slot(id, pool, cookie, ran, wiring, memory).await?;
        slot.fresh = false;
        Ok(slot)
    }

    /// The task of a hot container of `pool` with id `id`: its stderr goes to
    /// the pool's log under the call in it, its samples to the collector.
    fn hot_task(&self, pool: &FunctionPool<D>, id: &str) -> (Task, HotWiring) {
        let current_call: Arc<Mutex<CurrentCall>> = Arc::default();
        let mut task = self.task(pool, id);
        task.stderr = Box::new(StderrLog::new(
            pool.name.clone(),
            current_call.clone(),
            pool.log_limits.clone(),
            self.call_logs.clone(),
        ));
        let stats_key = self.collector.next_id();
        let call_tag = Arc::new(CallTag::default());
        task.stats = Some(self.collector.sink(stats_key, call_tag.clone()));
        task.counters = true;
        task.orphan_timeout = Some(spread_orphan_timeout(self.config.orphan_timeout, id));
        task.labels.insert(
            SPEC_LABEL.to_owned(),
            pool.container.fingerprint(&pool.name),
        );
        let wiring = HotWiring {
            current_call,
            stats: (stats_key, call_tag),
        };
        (task, wiring)
    }

    /// A hot container whose cookie `ran`: noted as the pool's, watched,
    /// and marked between calls; removed if it did not run.
    async fn hot_slot(
        &self,
        id: String,
        pool: &Arc<FunctionPool<D>>,
        cookie: D::Cookie,
        ran: Result<Running, CallError>,
        wiring: HotWiring,
        memory: Reservation,
    ) -> Result<Slot<D>, CallError> {
        let running = match ran {
            Ok(running) => running,
            Err(error) => {
                self.removals.close(&id, &cookie).await;
                return Err(error);
            }
        };
        let (Some(stdin), Some(stdout)) = (running.stdin, running.stdout) else {
            self.removals.close(&id, &cookie).await;
            return Err(CallError::engine(
                "the driver did not hand out the container's pipes",
            ));
        };
        let container = Arc::new(HotContainer::new(
            id.clone(),
            pool.key,
            cookie,
            wiring.current_call,
            wiring.stats,
            memory,
        ));
        self.containers.insert(id, container.clone());
        let watched = container.clone();
        let pool_ref = self.this.clone();
        self.tracker.spawn(async move {
            watched.watch().await;
            if let Some(inner) = pool_ref.upgrade() {
                inner.died_while_idle(&watched);
            }
        });
        let pipes = Pipes {
            stdin,
            stdout: Stdout::new(stdout),
            mark: running.mark,
        };
        pipes.mark_idle();
        Ok(Slot {
            container,
            pipes,
            fresh: true,
            calls: 0,
            readings: Readings::default(),
        })
    }

    /// Prepares `task`, noting its container as the pool's, by the task's id,
    /// until it is closed through [`Removals::close`] by that id.
    pub(crate) async fn prepare(&self, task: Task) -> Result<D::Cookie, CallError> {
        let id = task.id.clone();
        let cookie = self.driver.prepare(task).await?;
        self.removals.prepared(&id);
        Ok(cookie)
    }

    /// The driver task for a container of `pool`.
    pub(crate) fn task(&self, pool: &FunctionPool<D>, id: &str) -> Task {
        let mut task = pool.container.task(&pool.name, id);
        task.labels
            .insert(POOL_LABEL.to_owned(), self.config.name.clone());
        task
    }

    /// Reserves a container's memory, evicting idle containers of other functions
    /// (lowest eviction priority first) when the budget is full. Waits up to the
    /// function's queue timeout for memory to come back; then the pool is `busy`.
    pub(crate) async fn reserve(&self, pool: &FunctionPool<D>) -> Result<Reservation, CallError> {
        let deadline = expiry(Instant::now(), pool.limits().queue_timeout);
        loop {
            // Listen before checking: memory freed or a container going idle between
            // the check and the wait would otherwise be missed.
            let freed = self.budget.freed();
            let idle_appeared = self.idle_appeared.notified();
            tokio::pin!(freed, idle_appeared);
            freed.as_mut().enable();
            idle_appeared.as_mut().enable();
            if let Some(reservation) = self.budget.try_reserve(pool.container.memory) {
                return Ok(reservation);
            }
            // After an eviction, wait for its memory: a container going idle in
            // the meantime must not be evicted too for the same reservation.
            let evicted = self.evict_for_memory(pool.key);
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

    /// Evicts the idle container of any version but `except` that the eviction
    /// policies rank lowest, if there is one; says whether there was.
    fn evict_for_memory(&self, except: FunctionKey) -> bool {
        let pools: Vec<_> = self
            .versions
            .iter()
            .filter(|entry| *entry.key() != except)
            .map(|entry| entry.value().clone())
            .collect();
        loop {
            let clock = f64::from_bits(self.eviction_clock.load(Ordering::Acquire));
            let lowest = pools
                .iter()
                .filter_map(|pool| {
                    let shared = EvictionClock {
                        epoch: self.epoch,
                        clock,
                        start_cost: pool.start_cost(),
                    };
                    let (priority, ticket) = pool.lock().eviction_candidate(shared)?;
                    Some((priority, ticket, pool))
                })
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let Some((priority, ticket, pool)) = lowest else {
                return false;
            };
            let victim = {
                let mut state = pool.lock();
                let victim = state.evict_idle(ticket);
                pool.publish(&mut state);
                victim
            };
            // Gone meanwhile (a call took it)? Look again.
            if let Some((slot, prewarmed)) = victim {
                self.eviction_clock
                    .store(priority.to_bits(), Ordering::Release);
                if prewarmed {
                    count_prewarms(pool, "wasted", 1);
                }
                self.retire(pool, slot.container, EvictionReason::MemoryPressure);
                return true;
            }
        }
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
        let removals = self.removals.clone();
        self.tracker.spawn(async move {
            let _removing = removals.turn().await;
            if reason == EvictionReason::HandedOver && !container.is_dead() {
                return removals.release(&container.id, &container.cookie).await;
            }
            // One that died already needs no kill (it would only be refused).
            if !container.is_dead() {
                kill_with_retries(&container).await;
            }
            removals.close(&container.id, &container.cookie).await;
        });
    }

    /// The watcher saw `container` die: if it was idle, it leaves the stack now,
    /// before any call gets it.
    fn died_while_idle(&self, container: &Arc<HotContainer<D>>) {
        let Some(pool) = self.versions.get(&container.key).map(|p| p.clone()) else {
            return;
        };
        let dead = {
            let mut state = pool.lock();
            let dead = state.remove_idle(|slot| Arc::ptr_eq(&slot.container, container));
            pool.publish(&mut state);
            dead
        };
        if let Some(slot) = dead {
            let reason = slot.container.exit_reason();
            self.retire(&pool, slot.container, reason);
            // Its warm floor may lack one now.
            self.wake_reaper.notify_one();
        }
    }

    /// Ticks every version: idle containers past their keep-alive go, prewarms
    /// start, finished drained versions leave. Returns when to look again.
    fn reap(&self) -> Instant {
        let now = now();
        let mut next = Instant::from_std(now) + REAP_INTERVAL;
        let pools: Vec<_> = self.versions.iter().map(|e| e.value().clone()).collect();
        for pool in pools {
            let (mut actions, finished) = {
                let mut state = pool.lock();
                let actions = state.tick(now);
                pool.publish(&mut state);
                (actions, state.is_finished())
            };
            if let Some(wake) = actions.wake.take() {
                next = next.min(Instant::from_std(wake));
            }
            self.carry_out(&pool, actions, None);
            if finished {
                self.versions
                    .remove_if(&pool.key, |_, p| p.lock().is_finished());
            }
        }
        next
    }

    /// Wakes the reaper if `wake` comes before its next look.
    fn wake_reaper_by(&self, wake: std::time::Instant) {
        let at = nanos_since(self.epoch, wake);
        if at < self.reaper_next.load(Ordering::Acquire) {
            self.reaper_next.store(at, Ordering::Release);
            self.wake_reaper.notify_one();
        }
    }

    /// Runs [`Inner::reap`] until shutdown. Spawned on the tracker: once
    /// shutdown returns, it holds the pool no more.
    pub(crate) async fn reaper(self: Arc<Self>) {
        loop {
            let next = self.reap();
            self.reaper_next
                .store(nanos_since(self.epoch, next.into_std()), Ordering::Release);
            tokio::select! {
                () = self.closing.cancelled() => return,
                () = tokio::time::sleep_until(next) => {},
                () = self.wake_reaper.notified() => {},
            }
        }
    }

    /// Stops taking calls, lets in-flight calls finish within the shutdown timeout,
    /// then removes every container and waits until they are gone, or until
    /// the engine has removed none for the driver's removal deadline, or the
    /// removal timeout passed; says what it left.
    pub(crate) async fn shutdown(&self) -> Leftovers {
        self.leave(EvictionReason::Shutdown).await
    }

    /// [`Inner::shutdown`], but its idle containers are let go for the next
    /// owner of the pool rather than removed, what the engine lists besides
    /// is not swept, and the pool's name is let go at the end, once what the
    /// keep-alive policies learned is left to the next owner.
    pub(crate) async fn hand_over(&self) -> Leftovers {
        let leftovers = self.leave(EvictionReason::HandedOver).await;
        let claim = self.claim.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(claim) = claim {
            self.leave_policies(&claim);
        }
        leftovers
    }

    /// Stops taking calls and, once they are done or cut, drains every
    /// version with `reason`.
    async fn leave(&self, reason: EvictionReason) -> Leftovers {
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
        let teardown = async {
            let pools: Vec<_> = self.versions.iter().map(|e| e.value().clone()).collect();
            for pool in &pools {
                self.drain(pool, reason);
            }
            // Containers still busy: killing them ends their calls, which evict them.
            let busy: Vec<_> = self.containers.iter().map(|c| c.value().clone()).collect();
            for container in busy {
                kill_with_retries(&container).await;
            }
            self.tracker.close();
            self.tracker.wait().await;
            reason == EvictionReason::HandedOver || self.sweep().await
        };
        let patience = self.driver.removal_deadline();
        let removal = self.removals.while_progressing(teardown, patience);
        let Ok(removed) = tokio::time::timeout(self.config.removal_timeout, removal).await else {
            let containers = self.removals.unremoved();
            tracing::warn!(
                pool = %self.config.name,
                left = containers.len(),
                "the removal timeout ({}) passed: the containers left go to the next owner of the pool, or end themselves",
                humantime::format_duration(self.config.removal_timeout)
            );
            return Leftovers {
                containers,
                unswept: true,
            };
        };
        match removed {
            Some(true) => Leftovers::default(),
            Some(false) => Leftovers {
                containers: self.removals.unremoved(),
                unswept: true,
            },
            None => {
                let containers = self.removals.unremoved();
                tracing::error!(
                    pool = %self.config.name,
                    left = containers.len(),
                    "the engine removed no container for {}: giving up on it",
                    humantime::format_duration(patience)
                );
                Leftovers {
                    containers,
                    unswept: true,
                }
            }
        }
    }

    /// Removes every container the engine still lists with this pool's label: one
    /// whose removal failed while the engine was away, or one the pool lost track
    /// of. Retried while the engine does not answer, up to [`SWEEP_ATTEMPTS`] times.
    /// Says whether the engine lists none any more.
    async fn sweep(&self) -> bool {
        let mut pause = RETRY_PAUSE;
        for attempt in 1..=SWEEP_ATTEMPTS {
            match self
                .driver
                .remove_labelled(POOL_LABEL, &self.config.name)
                .await
            {
                Ok(0) => return true,
                Ok(count) => {
                    tracing::info!(count, pool = %self.config.name, "removed containers left after shutdown");
                    return true;
                }
                Err(error) if attempt == SWEEP_ATTEMPTS => {
                    tracing::error!(pool = %self.config.name, %error, "could not remove the pool's containers");
                }
                Err(error) => {
                    tracing::warn!(pool = %self.config.name, %error, "removing the pool's containers failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        false
    }
}

impl<D: Driver> Lender<D> for Inner<D> {
    fn check_in(&self, slot: Slot<D>) {
        let Some(pool) = self.version_of(&slot) else {
            return;
        };
        let actions = {
            let mut state = pool.lock();
            let actions = state.returned(slot, now());
            pool.publish(&mut state);
            actions
        };
        self.settle(&pool, actions);
    }

    fn evict(&self, slot: Slot<D>, reason: EvictionReason) {
        let Some(pool) = self.version_of(&slot) else {
            return;
        };
        let actions = {
            let mut state = pool.lock();
            let actions = state.evicted_busy();
            pool.publish(&mut state);
            actions
        };
        self.retire(&pool, slot.container, reason);
        self.carry_out(&pool, actions, None);
    }
}

impl<D: Driver> Inner<D> {
    /// The version a lent container belongs to. A version leaves the registry
    /// only once nothing of it is lent, so this always finds it; if it did not,
    /// the container would still be removed.
    fn version_of(&self, slot: &Slot<D>) -> Option<Arc<FunctionPool<D>>> {
        let pool = self.versions.get(&slot.container.key).map(|p| p.clone());
        if pool.is_none() {
            tracing::error!(container = %slot.container.id, "a container came back to a version that is gone; removing it");
            let (container, removals) = (slot.container.clone(), self.removals.clone());
            self.tracker.spawn(async move {
                kill_with_retries(&container).await;
                removals.close(&container.id, &container.cookie).await;
            });
        }
        pool
    }
}

/// What a hot container's task shares with the pool: the call in it (its
/// stderr lines are tagged with it) and its stats key and call tag.
struct HotWiring {
    current_call: Arc<Mutex<CurrentCall>>,
    stats: (u64, Arc<CallTag>),
}

/// How often a failed kill is tried, and shutdown's final sweep.
const KILL_ATTEMPTS: u32 = 5;
const SWEEP_ATTEMPTS: u32 = 8;
/// The first pause between tries; it doubles each time.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// `timeout` after `from`: when a waiting call gives up.
fn expiry(from: Instant, timeout: Duration) -> Instant {
    Instant::from_std(after(from.into_std(), timeout))
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

/// `at` in nanoseconds since `epoch` (0 before it).
fn nanos_since(epoch: std::time::Instant, at: std::time::Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// Counts prewarmed containers by what became of them: `used` by a call, or
/// `wasted` (removed before any call).
fn count_prewarms<D: Driver>(pool: &FunctionPool<D>, outcome: &'static str, count: usize) {
    metrics::counter!(crate::metrics::PREWARMS_TOTAL, "function" => pool.name.clone(), "outcome" => outcome)
        .increment(count as u64);
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

/// The orphan timeout of container `id` (an id of [`crate::id::new_id`], whose
/// digits are spread evenly): the pool's, plus up to a quarter more, so that
/// the containers of a hotpool gone for good do not all end at once (a
/// thousand container exits at once are what deadlocked dockerd 20.10 here).
fn spread_orphan_timeout(timeout: Duration, id: &str) -> Duration {
    let share = id
        .get(..4)
        .and_then(|digits| u16::from_str_radix(digits, 16).ok())
        .unwrap_or(0);
    timeout + timeout.mul_f64(f64::from(share) / f64::from(u16::MAX) / 4.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphan_timeouts_spread_over_a_quarter_more_than_the_pools() {
        let timeout = Duration::from_secs(600);
        let spread: Vec<Duration> = (0..1000)
            .map(|_| spread_orphan_timeout(timeout, &crate::id::new_id()))
            .collect();
        assert!(
            spread
                .iter()
                .all(|t| *t >= timeout && *t <= timeout * 5 / 4)
        );
        let (min, max) = (spread.iter().min().unwrap(), spread.iter().max().unwrap());
        assert!(
            *max - *min > Duration::from_secs(120),
            "a thousand containers end over minutes, not at once: {min:?} to {max:?}"
        );
        assert_eq!(spread_orphan_timeout(timeout, "zz"), timeout);
    }
}
