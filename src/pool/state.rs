//! One function version's scheduling state, as a synchronous state machine.
//!
//! Every event (a call arrives, a container comes back, a start ends or fails, a
//! busy container is evicted, a tick) is one method that takes `now` and returns
//! what the scheduler must do: hand this container to that waiter, start n
//! containers, retire these with reasons, refuse these waiters, look again then.
//! Nothing here awaits, locks or talks to an engine, so every rule is tested
//! without tokio; the scheduler carries the actions out.
//!
//! The rules: idle containers form a stack and the most recently returned is
//! reused first, so surplus ones stay idle long enough to go; calls that find none
//! wait first come first served, within `max_queue` beyond what starting and
//! startable containers will serve; a container is started only while live
//! waiters outnumber idle plus starting containers, within `max_concurrency`; a
//! failed start refuses the waiters no other container will serve. When an idle
//! container goes is the keep-alive policy's call, and which goes first under
//! memory pressure the eviction policy's.
//!
//! The warm floor (`min_idle`): at least that many containers are idle or
//! starting beyond what waiting calls will take, within `max_concurrency`. Its
//! starts are asked for apart from the others ([`Actions::fill`]) because they
//! take only free memory: one the budget cannot hold is reported back
//! ([`FunctionState::fill_refused`]) and tried again a second later, and the
//! floor counts as short until it is met. The keep-alive policy removes no idle
//! container below the floor, prewarms count towards it, and after a failed
//! start the floor waits, twice as long after each failure in a row, so a
//! function whose starts keep failing does not spin. A lowered floor retires
//! nothing at once: the idle containers then present get their keep-alive
//! counted afresh from the change.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::container::EvictionReason;
use super::policy::{self, EvictionPolicy, Found, IdleContainer, KeepAlivePolicy, Learned, after};
use super::spec::{Eviction, KeepAlive, Limits};

/// A container as the state machine sees it: how many calls it served, which the
/// eviction policy may weigh.
pub(crate) trait Served {
    fn calls_served(&self) -> u64;
}

/// A call waiting for a container; gone once its caller stopped waiting.
pub(crate) trait Waiter {
    /// Whether nobody waits on it any more.
    fn is_gone(&self) -> bool;
}

/// What a call finds when it arrives.
#[derive(Debug)]
pub(crate) enum Arrival<C> {
    /// An idle container, now counted busy; `prewarmed` if it was started before
    /// any call asked and this is its first call. `start` containers must be
    /// started ahead of the calls the keep-alive policy expects next, and
    /// `fill` for the warm floor.
    Ready {
        container: C,
        prewarmed: bool,
        start: usize,
        fill: usize,
    },
    /// It waits; `start` containers must be started, and `fill` for the warm
    /// floor.
    Queued { start: usize, fill: usize },
    /// Every container is busy and the queue is full.
    Full,
    /// The version drains: the call belongs to the function's current version.
    Draining,
}

/// What the scheduler must do after an event.
#[must_use]
#[derive(Debug)]
pub(crate) struct Actions<C, W> {
    /// Hand this container, counted busy, to this waiter. If the waiter is gone by
    /// then, give the container back with [`FunctionState::returned`].
    pub(crate) grant: Option<(W, C)>,
    /// Start this many containers; each ends in [`FunctionState::started`] or
    /// [`FunctionState::start_failed`].
    pub(crate) start: usize,
    /// Start this many containers for the warm floor, with memory that is free
    /// now; each ends in [`FunctionState::started`],
    /// [`FunctionState::start_failed`] or, if the memory budget cannot hold it,
    /// [`FunctionState::fill_refused`].
    pub(crate) fill: usize,
    /// Kill and remove these containers, which have left the accounting.
    pub(crate) retire: Vec<(C, EvictionReason)>,
    /// These waiters get no container from this version: the start error, or (a
    /// draining version) a turn at the current one.
    pub(crate) refuse: Vec<W>,
    /// Tick again by then: an idle container's keep-alive ends, or the keep-alive
    /// policy wants a prewarm.
    pub(crate) wake: Option<Instant>,
    /// Prewarmed containers among `retire` that never served a call.
    pub(crate) prewarms_wasted: usize,
}

impl<C, W> Default for Actions<C, W> {
    fn default() -> Self {
        Actions {
            grant: None,
            start: 0,
            fill: 0,
            retire: Vec::new(),
            refuse: Vec::new(),
            wake: None,
            prewarms_wasted: 0,
        }
    }
}

/// How many containers are in each state, and how many calls wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) idle: usize,
    pub(crate) busy: usize,
    pub(crate) starting: usize,
    pub(crate) waiting: usize,
}

struct Idle<C> {
    container: C,
    since: Instant,
    /// Started by a prewarm and not used yet.
    prewarmed: bool,
    /// Names this idle spell, so an eviction picked outside the lock takes the
    /// container it picked or nothing.
    ticket: u64,
}

/// How long the warm floor waits after a failed start before it starts again;
/// doubled after each failure in a row, up to [`FLOOR_RETRY_MAX`]. Also how
/// often a floor the memory budget cannot hold looks for memory again.
pub(crate) const FLOOR_RETRY: Duration = Duration::from_secs(1);
/// The longest the warm floor waits after failed starts.
pub(crate) const FLOOR_RETRY_MAX: Duration = Duration::from_secs(60);

/// The state of one function version. `C` is a container, `W` a waiting call.
pub(crate) struct FunctionState<C, W> {
    /// Least recently returned first; the last is reused first.
    idle: Vec<Idle<C>>,
    waiting: VecDeque<W>,
    starting: usize,
    /// Starts of `starting` that a prewarm asked for.
    prewarming: usize,
    busy: usize,
    /// Each container's memory limit, for the eviction policy.
    memory: u64,
    /// Set once the version takes no more calls, with the reason its containers
    /// go as they come back.
    draining: Option<EvictionReason>,
    max_concurrency: usize,
    max_queue: usize,
    /// The warm floor: idle or starting containers beyond what waiters take.
    min_idle: usize,
    /// Failed starts in a row, which the floor's pause doubles with.
    failed_starts: u32,
    /// The floor starts nothing before then.
    floor_paused_until: Option<Instant>,
    /// The memory budget could not hold a start of the floor, which is not met
    /// since.
    floor_out_of_memory: bool,
    /// When the floor was last lowered: the keep-alive of containers idle
    /// since before counts from then.
    floor_lowered: Option<Instant>,
    keep_alive_choice: KeepAlive,
    keep_alive: Box<dyn KeepAlivePolicy>,
    eviction_choice: Eviction,
    eviction: Box<dyn EvictionPolicy>,
    next_ticket: u64,
}

impl<C: Served, W: Waiter> FunctionState<C, W> {
    /// The state of a version whose containers have `memory` bytes each.
    pub(crate) fn new(limits: &Limits, memory: u64) -> Self {
        FunctionState {
            idle: Vec::new(),
            waiting: VecDeque::new(),
            starting: 0,
            prewarming: 0,
            busy: 0,
            memory,
            draining: None,
            max_concurrency: limits.max_concurrency,
            max_queue: limits.max_queue,
            min_idle: limits.min_idle,
            failed_starts: 0,
            floor_paused_until: None,
            floor_out_of_memory: false,
            floor_lowered: None,
            keep_alive_choice: limits.keep_alive,
            keep_alive: policy::keep_alive(limits.keep_alive, memory),
            eviction_choice: limits.eviction,
            eviction: policy::eviction(limits.eviction),
            next_ticket: 0,
        }
    }

    /// New limits for the running containers, at `now`. A policy that is chosen
    /// again keeps what it learned; surplus idle containers over a lowered
    /// concurrency go; under a lowered floor every idle container's keep-alive
    /// counts afresh from `now`, and what a raised one lacks starts at the next
    /// [`FunctionState::tick`] (so a pool being built takes over its earlier
    /// owner's containers first).
    pub(crate) fn set_limits(&mut self, limits: &Limits, now: Instant) -> Actions<C, W> {
        self.max_concurrency = limits.max_concurrency;
        self.max_queue = limits.max_queue;
        if limits.min_idle < self.min_idle {
            self.floor_lowered = Some(now);
        }
        self.min_idle = limits.min_idle;
        if self.keep_alive_choice != limits.keep_alive {
            self.keep_alive_choice = limits.keep_alive;
            self.keep_alive = policy::keep_alive(limits.keep_alive, self.memory);
        }
        if self.eviction_choice != limits.eviction {
            self.eviction_choice = limits.eviction;
            self.eviction = policy::eviction(limits.eviction);
        }
        let mut actions = Actions::default();
        while self.live() > self.max_concurrency && !self.idle.is_empty() {
            let level = self.level_at(0);
            let surplus = self.idle.remove(0);
            self.keep_alive.idle_removed(surplus.since, level);
            actions.prewarms_wasted += usize::from(surplus.prewarmed);
            actions
                .retire
                .push((surplus.container, EvictionReason::Replaced));
        }
        actions.start = self.launches();
        actions
    }

    /// What its keep-alive policy learned, as of `now`, and the choice of
    /// policy that learned it; `None` if the policy learns nothing.
    pub(crate) fn learned(&self, now: Instant) -> Option<(KeepAlive, Learned)> {
        Some((self.keep_alive_choice, self.keep_alive.learned(now)?))
    }

    /// Its keep-alive policy starts from what the policy `choice` `learned`,
    /// as of `now`; says why not if `choice` is not its policy now or what it
    /// learned cannot be taken.
    pub(crate) fn restore(
        &mut self,
        choice: KeepAlive,
        learned: Learned,
        now: Instant,
    ) -> Result<(), String> {
        if choice != self.keep_alive_choice {
            return Err(format!(
                "learned under keep-alive {choice}, which is {} now",
                self.keep_alive_choice
            ));
        }
        self.keep_alive.restore(learned, now)
    }

    /// A call arrives: it takes the newest idle container, or waits (`waiter()`
    /// is queued) while the containers starting, startable and the queue leave
    /// room for it.
    pub(crate) fn call_arrives(&mut self, now: Instant, waiter: impl FnOnce() -> W) -> Arrival<C> {
        if self.draining.is_some() {
            return Arrival::Draining;
        }
        if let Some(idle) = self.idle.pop() {
            self.busy += 1;
            let level = self.in_flight();
            let found = if idle.prewarmed {
                Found::Prewarmed
            } else {
                Found::Idle(idle.since)
            };
            self.keep_alive.call_arrived(now, found, level);
            let start = self.prewarms(now);
            return Arrival::Ready {
                container: idle.container,
                prewarmed: idle.prewarmed,
                start,
                fill: self.fills(now),
            };
        }
        let startable = self.max_concurrency.saturating_sub(self.live());
        if self.live_waiters() >= self.starting + startable + self.max_queue {
            return Arrival::Full;
        }
        self.waiting.push_back(waiter());
        let level = self.in_flight();
        self.keep_alive.call_arrived(now, Found::Nothing, level);
        let start = self.launches() + self.prewarms(now);
        Arrival::Queued {
            start,
            fill: self.fills(now),
        }
    }

    /// A busy container finished its call cleanly at `now`.
    pub(crate) fn returned(&mut self, container: C, now: Instant) -> Actions<C, W> {
        self.busy -= 1;
        let in_flight = self.in_flight();
        self.keep_alive.call_returned(now, in_flight);
        self.offer(container, now, false)
    }

    /// A granted container came back unused: its caller had left.
    pub(crate) fn grant_refused(&mut self, container: C, now: Instant) -> Actions<C, W> {
        self.busy -= 1;
        self.offer(container, now, false)
    }

    /// A container started at `now`, `took` after its start turn came, which
    /// it `waited` for.
    pub(crate) fn started(
        &mut self,
        container: C,
        now: Instant,
        took: Duration,
        waited: Duration,
    ) -> Actions<C, W> {
        self.starting -= 1;
        self.keep_alive.start_took(took, waited);
        // Starts work again: the floor need not wait for its pause to end.
        self.failed_starts = 0;
        self.floor_paused_until = None;
        let prewarm = self.prewarming > 0;
        self.prewarming = self.prewarming.saturating_sub(1);
        self.offer(container, now, prewarm)
    }

    /// A container an earlier owner left joins the idle ones (or is retired
    /// past the function's concurrency).
    pub(crate) fn adopted(&mut self, container: C, now: Instant) -> Actions<C, W> {
        self.offer(container, now, false)
    }

    /// A start failed at `now`: the waiters that no idle or starting container
    /// will serve are refused, the latest first, and the floor pauses, twice
    /// as long as after the failure before if that one failed too.
    pub(crate) fn start_failed(&mut self, now: Instant) -> Actions<C, W> {
        self.starting -= 1;
        self.prewarming = self.prewarming.saturating_sub(1);
        let served = self.idle.len() + self.starting;
        let unserved = self.live_waiters().saturating_sub(served);
        let mut actions = Actions::default();
        for _ in 0..unserved {
            actions.refuse.extend(self.waiting.pop_back());
        }
        let doublings = self.failed_starts.min(6);
        self.failed_starts = self.failed_starts.saturating_add(1);
        let pause = (FLOOR_RETRY * 2u32.pow(doublings)).min(FLOOR_RETRY_MAX);
        self.floor_paused_until = Some(after(now, pause));
        actions.wake = self.floor_wake(now);
        actions
    }

    /// A start of the floor found no room in the memory budget at `now`: the
    /// floor is short until it is met, and looks for memory again in a
    /// second. Waiters that counted on the start get one of their own, which
    /// may evict.
    pub(crate) fn fill_refused(&mut self, now: Instant) -> Actions<C, W> {
        self.starting -= 1;
        self.floor_out_of_memory = true;
        let retry = after(now, FLOOR_RETRY);
        self.floor_paused_until = Some(self.floor_paused_until.map_or(retry, |at| at.max(retry)));
        Actions {
            start: self.launches(),
            wake: self.floor_wake(now),
            ..Actions::default()
        }
    }

    /// How many containers the warm floor lacks because the memory budget
    /// could not hold them (0 while it is met or was never refused memory).
    pub(crate) fn floor_short(&mut self) -> usize {
        let lacking = self.min_idle.saturating_sub(self.spare());
        if lacking == 0 || self.draining.is_some() {
            self.floor_out_of_memory = false;
        }
        if self.floor_out_of_memory { lacking } else { 0 }
    }

    /// The warm floor.
    pub(crate) fn min_idle(&self) -> usize {
        self.min_idle
    }

    /// A busy container was evicted by its call; waiters may need another.
    pub(crate) fn evicted_busy(&mut self) -> Actions<C, W> {
        self.busy -= 1;
        Actions {
            start: self.launches(),
            ..Actions::default()
        }
    }

    /// Takes out the idle container `is_it` picks (one that died while idle).
    pub(crate) fn remove_idle(&mut self, is_it: impl Fn(&C) -> bool) -> Option<C> {
        // A prewarmed container that died is not counted wasted: it was not let go.
        let position = self.idle.iter().position(|idle| is_it(&idle.container))?;
        Some(self.idle.remove(position).container)
    }

    /// Time passed: idle containers past their keep-alive go but those the
    /// floor holds, and the prewarms the keep-alive policy wants and the starts
    /// the floor lacks begin. Its `wake` says when to tick again (`None`:
    /// nothing waits for a deadline).
    pub(crate) fn tick(&mut self, now: Instant) -> Actions<C, W> {
        let mut actions = Actions::default();
        // Levels count from the top, so removing a deeper one changes none.
        let top = self.level_at(0);
        let deadlines: Vec<Instant> = (self.idle.iter().enumerate())
            .map(|(position, idle)| self.deadline(idle, top - position))
            .collect();
        // The oldest go first, so the floor holds the newest.
        let mut spare = self.spare();
        let min_idle = if self.draining.is_some() {
            0
        } else {
            self.min_idle
        };
        let keep_alive = &mut self.keep_alive;
        let mut kept = Vec::with_capacity(self.idle.len());
        for ((position, idle), until) in self.idle.drain(..).enumerate().zip(deadlines) {
            let level = top - position;
            if until > now {
                actions.wake = earliest(actions.wake, Some(until));
                kept.push(idle);
            } else if spare <= min_idle {
                // Held by the floor past its keep-alive.
                kept.push(idle);
            } else {
                spare -= 1;
                keep_alive.idle_removed(idle.since, level);
                actions.prewarms_wasted += usize::from(idle.prewarmed);
                actions
                    .retire
                    .push((idle.container, EvictionReason::IdleTimeout));
            }
        }
        self.idle = kept;
        if self.draining.is_none() {
            let prewarm = self.prewarms(now);
            actions.start = prewarm + self.launches();
            actions.fill = self.fills(now);
            actions.wake = earliest(actions.wake, self.keep_alive.next_change(now));
            actions.wake = earliest(actions.wake, self.floor_wake(now));
        }
        actions
    }

    /// Takes no more calls: idle containers go now, busy and starting ones as they
    /// come back, all for `reason`; waiters are refused.
    pub(crate) fn drain(&mut self, reason: EvictionReason) -> Actions<C, W> {
        self.draining = Some(reason);
        Actions {
            retire: self
                .idle
                .drain(..)
                .map(|idle| (idle.container, reason))
                .collect(),
            refuse: self.waiting.drain(..).collect(),
            ..Actions::default()
        }
    }

    /// Takes calls again (a draining version made current once more).
    pub(crate) fn resume(&mut self) {
        self.draining = None;
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    /// The idle container the eviction policy would give up first, with its
    /// priority and its ticket. `pool` is what every priority of the pool shares:
    /// the epoch they count from, the clock of the last eviction, and what a start
    /// of this version costs.
    pub(crate) fn eviction_candidate(&self, pool: EvictionClock) -> Option<(f64, u64)> {
        self.idle
            .iter()
            .map(|idle| {
                let view = IdleContainer {
                    idle_since: idle.since,
                    epoch: pool.epoch,
                    clock: pool.clock,
                    calls: idle.container.calls_served(),
                    memory: self.memory,
                    start_cost: pool.start_cost,
                };
                (self.eviction.priority(&view), idle.ticket)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// Takes out the idle container of `ticket`, if no call took it meanwhile; a
    /// prewarmed one that never served counts as wasted.
    pub(crate) fn evict_idle(&mut self, ticket: u64) -> Option<(C, bool)> {
        let position = self.idle.iter().position(|idle| idle.ticket == ticket)?;
        let level = self.level_at(position);
        let idle = self.idle.remove(position);
        self.keep_alive.idle_removed(idle.since, level);
        Some((idle.container, idle.prewarmed))
    }

    /// Containers and waiting calls now; calls whose caller left are dropped.
    pub(crate) fn counts(&mut self) -> Counts {
        Counts {
            idle: self.idle.len(),
            busy: self.busy,
            starting: self.starting,
            waiting: self.live_waiters(),
        }
    }

    /// When the next idle container goes, if none is taken before; `None`
    /// while the floor holds them all.
    pub(crate) fn idle_deadline(&mut self) -> Option<Instant> {
        if self.spare() <= self.min_idle {
            return None;
        }
        self.idle
            .iter()
            .enumerate()
            .map(|(position, idle)| self.deadline(idle, self.level_at(position)))
            .min()
    }

    /// When the idle container `idle` at `level` goes, unless the floor holds
    /// it: when its keep-alive ends, counted from the floor's last lowering if
    /// it was idle before.
    fn deadline(&self, idle: &Idle<C>, level: usize) -> Instant {
        let until = self.keep_alive.idle_until(idle.since, level);
        match self.floor_lowered {
            Some(lowered) if idle.since < lowered => {
                after(lowered, until.saturating_duration_since(idle.since))
            }
            _ => until,
        }
    }

    /// Whether a draining version has nothing left.
    pub(crate) fn is_finished(&mut self) -> bool {
        self.draining.is_some() && self.live() == 0 && self.live_waiters() == 0
    }

    /// Gives a free container to the first live waiter; else it goes idle, or
    /// goes for good if the version drains or has more containers than allowed.
    fn offer(&mut self, container: C, now: Instant, prewarmed: bool) -> Actions<C, W> {
        let mut actions = Actions::default();
        while let Some(waiter) = self.waiting.pop_front() {
            if !waiter.is_gone() {
                self.busy += 1;
                actions.grant = Some((waiter, container));
                return actions;
            }
        }
        if let Some(reason) = self.draining {
            actions.retire.push((container, reason));
        } else if self.live() >= self.max_concurrency {
            actions.retire.push((container, EvictionReason::Replaced));
        } else {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            self.idle.push(Idle {
                container,
                since: now,
                prewarmed,
                ticket,
            });
            actions.wake = earliest(
                Some(self.keep_alive.idle_until(now, self.busy + 1)),
                self.keep_alive.next_change(now),
            );
        }
        actions.prewarms_wasted = usize::from(prewarmed && actions.retire.len() == 1);
        actions
    }

    /// How many containers to start now for the keep-alive policy's prewarm,
    /// within the concurrency. Counts them starting.
    fn prewarms(&mut self, now: Instant) -> usize {
        if self.draining.is_some() {
            return 0;
        }
        let wanted = self.keep_alive.prewarm(now);
        let room = self.max_concurrency.saturating_sub(self.live());
        let prewarm = wanted.saturating_sub(self.live()).min(room);
        self.starting += prewarm;
        self.prewarming += prewarm;
        prewarm
    }

    /// How many containers to start now for the warm floor, within the
    /// concurrency, unless it pauses after a failure. Counts them starting.
    fn fills(&mut self, now: Instant) -> usize {
        // Most functions have no floor: no pass over the waiters for them.
        if self.min_idle == 0
            || self.draining.is_some()
            || self.floor_paused_until.is_some_and(|at| now < at)
        {
            return 0;
        }
        let lacking = self.min_idle.saturating_sub(self.spare());
        let room = self.max_concurrency.saturating_sub(self.live());
        let fill = lacking.min(room);
        self.starting += fill;
        fill
    }

    /// When the floor, short now, may start again after its pause.
    fn floor_wake(&mut self, now: Instant) -> Option<Instant> {
        let paused = self.floor_paused_until.filter(|at| *at > now)?;
        (self.draining.is_none() && self.spare() < self.min_idle).then_some(paused)
    }

    /// Idle and starting containers beyond what waiting calls will take.
    fn spare(&mut self) -> usize {
        (self.idle.len() + self.starting).saturating_sub(self.live_waiters())
    }

    /// How many containers to start now: one per live waiter that no idle or
    /// starting container will serve, within the concurrency. Counts them
    /// starting.
    fn launches(&mut self) -> usize {
        if self.draining.is_some() {
            return 0;
        }
        let demand = self.live_waiters();
        let supply = self.idle.len() + self.starting;
        let room = self.max_concurrency.saturating_sub(self.live());
        let launches = demand.saturating_sub(supply).min(room);
        self.starting += launches;
        launches
    }

    /// The level of the idle container at `position` (0: the oldest, reused
    /// last): the calls in flight at which a call takes it.
    fn level_at(&self, position: usize) -> usize {
        self.busy + self.idle.len() - position
    }

    /// Calls running or waiting for a container.
    fn in_flight(&mut self) -> usize {
        self.busy + self.live_waiters()
    }

    fn live(&self) -> usize {
        self.idle.len() + self.busy + self.starting
    }

    fn live_waiters(&mut self) -> usize {
        self.waiting.retain(|waiter| !waiter.is_gone());
        self.waiting.len()
    }
}

/// What the eviction priorities of one pool share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EvictionClock {
    /// What idle times count from.
    pub(crate) epoch: Instant,
    /// The priority of the last container evicted (GreedyDual's inflation).
    pub(crate) clock: f64,
    /// What a start of the version costs.
    pub(crate) start_cost: std::time::Duration,
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;
    use crate::pool::FunctionSpec;

    /// How long every start in these tests took.
    const START: Duration = Duration::from_millis(250);

    /// A waiting call whose caller can leave.
    #[derive(Debug, Clone)]
    struct Call {
        id: u32,
        left: Rc<Cell<bool>>,
    }

    impl Waiter for Call {
        fn is_gone(&self) -> bool {
            self.left.get()
        }
    }

    fn call(id: u32) -> Call {
        Call {
            id,
            left: Rc::new(Cell::new(false)),
        }
    }

    impl Served for &'static str {
        fn calls_served(&self) -> u64 {
            0
        }
    }

    type State = FunctionState<&'static str, Call>;

    fn limits(max_concurrency: usize, max_queue: usize, idle_secs: u64) -> Limits {
        let mut spec = FunctionSpec::new("f", "img");
        spec.max_concurrency = max_concurrency;
        spec.max_queue = max_queue;
        spec.keep_alive = KeepAlive::fixed(Duration::from_secs(idle_secs));
        spec.split().2
    }

    fn state(max_concurrency: usize, max_queue: usize) -> State {
        FunctionState::new(&limits(max_concurrency, max_queue, 60), 64 << 20)
    }

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    /// `container` started at `now`, taking [`START`] after a turn that came
    /// at once.
    fn up(state: &mut State, container: &'static str, now: Instant) -> Actions<&'static str, Call> {
        state.started(container, now, START, Duration::ZERO)
    }

    /// Puts containers on the idle stack as started with no call waiting (as a
    /// prewarm would).
    fn with_idle(state: &mut State, now: Instant, containers: &[&'static str]) {
        for container in containers {
            state.starting += 1;
            let actions = up(state, container, now);
            assert!(actions.grant.is_none() && actions.retire.is_empty());
        }
    }

    fn floored(min_idle: usize) -> State {
        let mut limits = limits(4, 5, 60);
        limits.min_idle = min_idle;
        FunctionState::new(&limits, 64 << 20)
    }

    #[test]
    fn the_floor_counts_what_starts_and_is_refilled_when_a_call_takes_one() {
        let now = Instant::now();
        let mut state = floored(2);
        let ticked = state.tick(now);
        assert_eq!((ticked.start, ticked.fill), (0, 2));
        assert_eq!(state.tick(now).fill, 0, "starting ones count");
        for container in ["a", "b"] {
            let _ = up(&mut state, container, now);
        }
        let Arrival::Ready { fill: 1, .. } = state.call_arrives(now, || call(1)) else {
            panic!("one taken, one started for the floor")
        };
    }

    #[test]
    fn a_floor_start_the_budget_refuses_hands_its_waiter_a_start_of_its_own() {
        let now = Instant::now();
        let mut state = floored(1);
        assert_eq!(state.tick(now).fill, 1);
        let Arrival::Queued { start: 0, fill: 1 } = state.call_arrives(now, || call(1)) else {
            panic!("the floor's start serves the call, and the floor wants another")
        };
        assert_eq!(state.fill_refused(now).start, 0, "one serves the call");
        let refused = state.fill_refused(now);
        assert_eq!(refused.start, 1, "a start that may evict, for the call");
        assert_eq!(refused.wake, Some(secs(now, 1)), "the floor looks again");
        assert_eq!(state.floor_short(), 1);
        assert_eq!(state.tick(now).fill, 0, "not before a second passed");
        assert_eq!(state.tick(secs(now, 1)).fill, 1);
    }

    #[test]
    fn a_call_waits_for_one_start_and_gets_the_container() {
        let now = Instant::now();
        let mut state = state(2, 0);
        let Arrival::Queued { start: 1, .. } = state.call_arrives(now, || call(1)) else {
            panic!("the first call starts one container")
        };
        let actions = up(&mut state, "c1", now);
        let (waiter, container) = actions.grant.expect("the waiter gets it");
        assert_eq!((waiter.id, container), (1, "c1"));
        assert_eq!(
            state.counts(),
            Counts {
                idle: 0,
                busy: 1,
                starting: 0,
                waiting: 0
            }
        );
        let back = state.returned(container, now);
        assert!(back.grant.is_none() && back.retire.is_empty());
        assert_eq!(state.counts().idle, 1);
    }

    /// A keep-alive policy that writes down what it is told.
    #[derive(Debug, Default)]
    struct Spy {
        told: std::sync::Arc<std::sync::Mutex<Vec<(&'static str, usize)>>>,
    }

    impl KeepAlivePolicy for Spy {
        fn call_arrived(&mut self, _: Instant, _: Found, level: usize) {
            self.told.lock().unwrap().push(("arrived", level));
        }
        fn call_returned(&mut self, _: Instant, in_flight: usize) {
            self.told.lock().unwrap().push(("returned", in_flight));
        }
        fn idle_removed(&mut self, _: Instant, level: usize) {
            self.told.lock().unwrap().push(("removed", level));
        }
        fn start_took(&mut self, _: Duration, waited: Duration) {
            let waited_ms = waited.as_millis() as usize;
            self.told
                .lock()
                .unwrap()
                .push(("started after waiting ms", waited_ms));
        }
        fn idle_until(&self, idle_since: Instant, _: usize) -> Instant {
            idle_since + Duration::from_secs(60)
        }
        fn prewarm(&self, _: Instant) -> usize {
            0
        }
        fn next_change(&self, _: Instant) -> Option<Instant> {
            None
        }
    }

    #[test]
    fn the_policy_is_told_levels_start_waits_and_a_call_that_left_is_not_in_flight() {
        let start = Instant::now();
        let mut state = state(3, 3);
        let spy = Spy::default();
        let told = spy.told.clone();
        state.keep_alive = Box::new(spy);
        let first = call(1);
        assert!(matches!(
            state.call_arrives(start, || first.clone()),
            Arrival::Queued { start: 1, .. }
        ));
        let (_, c1) = up(&mut state, "c1", start).grant.expect("granted");
        let second = call(2);
        assert!(matches!(
            state.call_arrives(start, || second.clone()),
            Arrival::Queued { start: 1, .. }
        ));
        second.left.set(true);
        let back = state.returned(c1, secs(start, 1));
        assert!(back.grant.is_none(), "the second caller left");
        // The start made for the call that left comes up idle, on top.
        let _ = state.started("c2", secs(start, 2), START, Duration::from_millis(750));
        let gone = state.tick(secs(start, 100));
        assert_eq!(gone.retire.len(), 2);
        assert_eq!(
            *told.lock().unwrap(),
            [
                ("arrived", 1),
                ("started after waiting ms", 0),
                ("arrived", 2),
                ("returned", 0),
                ("started after waiting ms", 750),
                ("removed", 2),
                ("removed", 1)
            ]
        );
    }

    #[test]
    fn the_newest_idle_container_is_reused_first() {
        let now = Instant::now();
        let mut state = state(3, 0);
        with_idle(&mut state, now, &["old", "mid", "new"]);
        let Arrival::Ready { container, .. } = state.call_arrives(now, || call(9)) else {
            panic!("an idle container is ready")
        };
        assert_eq!(container, "new");
    }

    #[test]
    fn starts_stay_within_concurrency_and_the_queue_bounds_waiters() {
        let now = Instant::now();
        let mut state = state(2, 1);
        let starts: Vec<_> = (0..3)
            .map(|i| match state.call_arrives(now, || call(i)) {
                Arrival::Queued { start, .. } => start,
                other => panic!("call {i} should wait: {other:?}"),
            })
            .collect();
        assert_eq!(starts, [1, 1, 0], "two starts, then one queued call");
        assert!(matches!(state.call_arrives(now, || call(3)), Arrival::Full));
    }

    #[test]
    fn waiters_who_left_neither_start_containers_nor_take_them() {
        let now = Instant::now();
        let mut state = state(2, 5);
        let gone = call(1);
        let Arrival::Queued { start: 1, .. } = state.call_arrives(now, || gone.clone()) else {
            panic!("one start")
        };
        gone.left.set(true);
        let Arrival::Queued { start: 0, .. } = state.call_arrives(now, || call(2)) else {
            panic!("the starting container serves the live waiter")
        };
        let (waiter, _) = up(&mut state, "c", now).grant.expect("granted");
        assert_eq!(waiter.id, 2, "the caller who left is skipped");
    }

    #[test]
    fn a_failed_start_refuses_only_the_waiters_nobody_else_serves() {
        let now = Instant::now();
        let mut state = state(2, 5);
        for i in 0..3 {
            let _ = state.call_arrives(now, || call(i));
        }
        assert_eq!(state.counts().starting, 2);
        let failed = state.start_failed(now);
        let refused: Vec<_> = failed.refuse.iter().map(|w| w.id).collect();
        assert_eq!(refused, [2, 1], "one start left serves the first caller");
        assert_eq!(state.counts().waiting, 1);
    }

    #[test]
    fn an_evicted_busy_container_is_replaced_for_the_waiters() {
        let now = Instant::now();
        let mut state = state(1, 5);
        with_idle(&mut state, now, &["c"]);
        let Arrival::Ready { .. } = state.call_arrives(now, || call(1)) else {
            panic!("ready")
        };
        let Arrival::Queued { start: 0, .. } = state.call_arrives(now, || call(2)) else {
            panic!("no room to start while c is busy")
        };
        assert_eq!(state.evicted_busy().start, 1);
    }

    #[test]
    fn idle_containers_go_at_their_keep_alive_deadline() {
        let start = Instant::now();
        let mut state = FunctionState::new(&limits(3, 0, 10), 64 << 20);
        with_idle(&mut state, start, &["a"]);
        with_idle(&mut state, secs(start, 5), &["b"]);
        let actions = state.tick(secs(start, 9));
        assert!(actions.retire.is_empty());
        assert_eq!(actions.wake, Some(secs(start, 10)));
        let actions = state.tick(secs(start, 10));
        assert_eq!(actions.retire, [("a", EvictionReason::IdleTimeout)]);
        assert_eq!(actions.wake, Some(secs(start, 15)));
    }

    #[test]
    fn the_deadline_does_not_depend_on_the_stack_order() {
        let start = Instant::now();
        let mut state = FunctionState::new(&limits(3, 0, 10), 64 << 20);
        with_idle(&mut state, secs(start, 5), &["late"]);
        with_idle(&mut state, start, &["early"]);
        let actions = state.tick(secs(start, 11));
        assert_eq!(actions.retire, [("early", EvictionReason::IdleTimeout)]);
    }

    #[test]
    fn draining_retires_idle_refuses_waiters_and_retires_what_comes_back() {
        let now = Instant::now();
        let mut state = state(2, 5);
        with_idle(&mut state, now, &["idle"]);
        let Arrival::Ready {
            container: busy, ..
        } = state.call_arrives(now, || call(1))
        else {
            panic!("ready")
        };
        let _ = state.call_arrives(now, || call(2));
        let drained = state.drain(EvictionReason::Replaced);
        assert!(drained.retire.is_empty(), "the idle one was taken");
        assert_eq!(drained.refuse.len(), 1);
        assert!(matches!(
            state.call_arrives(now, || call(3)),
            Arrival::Draining
        ));
        let back = state.returned(busy, now);
        assert_eq!(back.retire, [("idle", EvictionReason::Replaced)]);
        let started = up(&mut state, "late", now);
        assert_eq!(started.retire, [("late", EvictionReason::Replaced)]);
        assert!(state.is_finished());
    }

    #[test]
    fn lowered_concurrency_retires_the_surplus_and_raised_starts_for_waiters() {
        let now = Instant::now();
        let mut state = state(3, 5);
        with_idle(&mut state, now, &["a", "b", "c"]);
        let lowered = state.set_limits(&limits(1, 5, 60), now);
        let retired: Vec<_> = lowered.retire.iter().map(|r| r.0).collect();
        assert_eq!(retired, ["a", "b"], "the least recently used go");
        let Arrival::Ready { .. } = state.call_arrives(now, || call(1)) else {
            panic!("c stays")
        };
        let Arrival::Queued { start: 0, .. } = state.call_arrives(now, || call(2)) else {
            panic!("no room")
        };
        assert_eq!(state.set_limits(&limits(2, 5, 60), now).start, 1);
    }

    #[test]
    fn a_lowered_keep_alive_applies_to_containers_already_idle() {
        let start = Instant::now();
        let mut state = FunctionState::new(&limits(2, 0, 600), 64 << 20);
        with_idle(&mut state, start, &["a"]);
        let _ = state.set_limits(&limits(2, 0, 5), start);
        let actions = state.tick(secs(start, 6));
        assert_eq!(actions.retire.len(), 1);
    }

    #[test]
    fn eviction_picks_the_least_recently_used_and_tickets_go_stale() {
        let start = Instant::now();
        let mut state = state(3, 0);
        with_idle(&mut state, secs(start, 2), &["new"]);
        with_idle(&mut state, secs(start, 1), &["old"]);
        let clock = EvictionClock {
            epoch: start,
            clock: 0.0,
            start_cost: Duration::from_millis(250),
        };
        let (_, ticket) = state.eviction_candidate(clock).expect("a candidate");
        assert_eq!(state.evict_idle(ticket), Some(("old", false)));
        assert_eq!(
            state.evict_idle(ticket),
            None,
            "a ticket takes one container"
        );
        let (_, ticket) = state.eviction_candidate(clock).expect("another");
        let Arrival::Ready {
            container: "new", ..
        } = state.call_arrives(start, || call(1))
        else {
            panic!("a call takes it first")
        };
        assert_eq!(state.evict_idle(ticket), None);
    }

    #[test]
    fn a_call_that_finds_a_container_starts_those_the_policy_wants_ahead() {
        let mut spec = FunctionSpec::new("f", "img");
        spec.keep_alive = "adaptive".parse().unwrap();
        spec.max_concurrency = 100;
        let mut state: State = FunctionState::new(&spec.split().2, 64 << 20);
        let mut now = Instant::now();
        with_idle(&mut state, now, &["c"; 20]);
        // Ten calls a second that all keep running: the policy wants starts
        // ahead of the next ones while idle containers are left.
        let mut started = 0;
        for i in 0..18 {
            let Arrival::Ready { start, .. } = state.call_arrives(now, || call(i)) else {
                panic!("call {i} finds an idle container")
            };
            started += start;
            now += Duration::from_millis(100);
        }
        assert!(started > 0);
        assert_eq!(state.counts().starting, started);
    }

    #[test]
    fn a_prewarm_starts_on_tick_and_its_first_call_is_counted_warm_or_wasted() {
        let mut spec = FunctionSpec::new("f", "img");
        // A cold start worth little: the container goes a second after each call.
        spec.keep_alive = "adaptive:0.001".parse().unwrap();
        let mut state: State = FunctionState::new(&spec.split().2, 64 << 20);
        let mut now = Instant::now();
        // Calls every 10 s, each served by the one container: regular gaps.
        let container = {
            let _ = state.call_arrives(now, || call(0));
            up(&mut state, "c", now).grant.expect("granted").1
        };
        let mut container = Some(container);
        for i in 1..12 {
            now += Duration::from_millis(100);
            let back = state.returned(container.take().unwrap(), now);
            assert!(back.grant.is_none());
            // Let go at the end once the gaps are regular; tick retires it.
            let _ = state.tick(now);
            now += Duration::from_secs(10);
            let prewarm_due = state.tick(now - Duration::from_secs(1));
            for _ in 0..prewarm_due.start {
                let _ = up(&mut state, "prewarmed", now - Duration::from_millis(900));
            }
            container = Some(match state.call_arrives(now, || call(i)) {
                Arrival::Ready {
                    container,
                    prewarmed,
                    start: 0,
                    ..
                } => {
                    if i >= 9 {
                        assert!(prewarmed, "call {i} is served by a prewarm");
                    }
                    container
                }
                Arrival::Queued { start: 1, .. } => {
                    up(&mut state, "c", now).grant.expect("granted").1
                }
                other => panic!("{other:?}"),
            });
        }
        // The next call never comes: the prewarmed container is wasted.
        now += Duration::from_millis(100);
        let _ = state.returned(container.take().unwrap(), now);
        let _ = state.tick(now);
        let due = state.tick(now + Duration::from_secs(9));
        assert_eq!(due.start, 1);
        let _ = up(&mut state, "unused", now + Duration::from_secs(9));
        let late = state.tick(now + Duration::from_secs(60));
        assert_eq!((late.retire.len(), late.prewarms_wasted), (1, 1));
    }
}
