//! The discrete-event simulation behind `hotpool replay`: each function of a
//! trace is a [`FunctionState`], the pool's own state machine with its keep-alive
//! and eviction policies, and this module does what the pool's scheduler does
//! with its actions, on a virtual clock: starts take the cold start, calls take
//! their sampled duration, ticks come when a state machine asks to be woken, and a
//! start that does not fit the memory budget evicts the idle container of another
//! function that the eviction policies rank lowest, or waits for memory.
//!
//! Time is counted in nanoseconds from the start of the trace (the day, or a
//! slice of it), divided by [`Options::speed`]; the state machines see it as
//! `std::time::Instant`s from a base taken when the replay starts.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use super::calls::{CallSource, MINUTE_NS, compress};
use super::trace::Trace;
use super::{Options, Progress, Report};
use crate::pool::FunctionSpec;
use crate::pool::state::{Actions, Arrival, EvictionClock, FunctionState, Served, Waiter};

/// Concurrency and queue of every function: as many as its calls need.
const UNLIMITED: usize = u32::MAX as usize;
const BYTES_PER_GB: f64 = (1u64 << 30) as f64;
const SECOND_NS: u64 = 1_000_000_000;

/// A memory budget that cannot hold one container of a function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the memory budget ({budget} bytes) is smaller than one container of function {function} ({memory} bytes)"
)]
pub struct BudgetTooSmall {
    /// The budget.
    pub budget: u64,
    /// The function.
    pub function: String,
    /// The memory of one of its containers.
    pub memory: u64,
}

/// Replays `trace` with `options`; `progress` hears after each simulated minute.
pub fn simulate(
    trace: &Trace,
    options: &Options,
    mut progress: impl FnMut(Progress),
) -> Result<Report, BudgetTooSmall> {
    let wall = Instant::now();
    if let Some(budget) = options.memory_budget
        && let Some(function) = trace.functions.iter().find(|f| f.memory > budget)
    {
        return Err(BudgetTooSmall {
            budget,
            function: function.name.clone(),
            memory: function.memory,
        });
    }
    let mut sim = Simulation::new(trace, options);
    let mut source = CallSource::new(trace, options);
    let mut calls = Vec::new();
    let minutes = trace.minutes();
    for minute in 0..minutes {
        source.minute(minute, &mut calls);
        for call in &calls {
            sim.run_until(call.at);
            sim.arrive(call.function as usize, call.duration, call.at);
        }
        progress(Progress {
            minute: minute + 1,
            minutes,
            invocations: sim.invocations,
        });
    }
    sim.run_until(u64::MAX);
    Ok(sim.report(wall.elapsed()))
}

/// A simulated container: the calls it served (what GreedyDual weighs).
#[derive(Debug)]
struct Container {
    calls: u64,
}

impl Served for Container {
    fn calls_served(&self) -> u64 {
        self.calls
    }
}

/// A call waiting for a container since it `arrived`; it never gives up.
#[derive(Debug)]
struct Call {
    duration: u64,
    arrived: u64,
}

impl Waiter for Call {
    fn is_gone(&self) -> bool {
        false
    }
}

type Changes = Actions<Container, Call>;

/// What made a state machine decide.
#[derive(Debug, Clone, Copy)]
enum Cause {
    /// A container finished starting.
    Started,
    /// A container finished its call.
    Returned,
    /// A tick.
    Tick,
}

#[derive(Debug)]
enum Event {
    /// A container of the function finished starting, after waiting for a
    /// start slot that many nanoseconds.
    Started(usize, u64),
    /// A container of the function finished its call.
    Returned(usize, Container),
    /// The function asked to be woken; `u64` names the request.
    Tick(usize, u64),
}

/// An event due at `at`; `seq` orders events due at once by when they were made.
#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl Ord for Scheduled {
    /// Reversed, so the heap gives the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

/// One function of the replay.
struct Function {
    state: FunctionState<Container, Call>,
    memory: u64,
    calls: u64,
    cold: u64,
    /// The pending tick: when, and which request it is (earlier ones are stale).
    tick: Option<(u64, u64)>,
    /// Its idle containers (as its state machine counts them).
    idle: usize,
    /// Its starts waiting for memory: since when each waits.
    parked: VecDeque<u64>,
}

struct Simulation {
    base: Instant,
    /// When the figures stop: the end of the trace's last minute.
    end: u64,
    functions: Vec<Function>,
    events: BinaryHeap<Scheduled>,
    seq: u64,
    cold_start: u64,
    budget: Option<u64>,
    /// Memory held by live containers, in bytes.
    held: u64,
    /// Idle containers of every function.
    idle: usize,
    /// The functions with starts waiting for memory, in the order they began to.
    parked: Vec<usize>,
    /// Memory was freed or a container went idle since parked starts last
    /// looked for room.
    room_changed: bool,
    /// GreedyDual's clock: the priority of the last container evicted.
    eviction_clock: f64,
    /// Where the integral of `held` has got to.
    now: u64,
    /// Memory held over the day, in byte-nanoseconds.
    held_integral: u128,
    /// Memory of containers starting or serving over the day, in byte-nanoseconds.
    busy_integral: u128,
    invocations: u64,
    cold_starts: u64,
    warm_after_wait: u64,
    /// Nanoseconds calls waited for a container, summed.
    call_wait: u64,
    container_starts: u64,
    prewarms_used: u64,
    prewarms_wasted: u64,
    memory_waits: u64,
    longest_memory_wait: u64,
    /// The most containers starting at once.
    start_slots: usize,
    /// Containers starting now.
    starting: usize,
    /// Starts waiting for a slot (their memory held): function, since when
    /// it waits.
    waiting_for_slot: VecDeque<(usize, u64)>,
    /// Time starts waited for a slot, in nanoseconds.
    start_wait: u64,
    /// Starts begun in each second of the day.
    starts_per_second: Vec<u32>,
    engine_start_cost: Duration,
}

impl Simulation {
    fn new(trace: &Trace, options: &Options) -> Simulation {
        let (keep_alive, eviction) = options.policy.split();
        let functions = trace
            .functions
            .iter()
            .map(|function| {
                let mut spec = FunctionSpec::new(function.name.clone(), "replay");
                spec.memory = function.memory;
                spec.keep_alive = keep_alive;
                spec.eviction = eviction;
                spec.max_concurrency = UNLIMITED;
                spec.max_queue = UNLIMITED;
                spec.min_idle = options.min_idle;
                let (_, _, limits) = spec.split();
                Function {
                    state: FunctionState::new(&limits, function.memory),
                    memory: function.memory,
                    calls: 0,
                    cold: 0,
                    tick: None,
                    idle: 0,
                    parked: VecDeque::new(),
                }
            })
            .collect();
        let end = compress(trace.minutes() as u64 * MINUTE_NS, options.speed);
        let mut sim = Simulation {
            base: Instant::now(),
            end,
            functions,
            events: BinaryHeap::new(),
            seq: 0,
            cold_start: u64::try_from(options.cold_start.as_nanos()).unwrap_or(u64::MAX),
            budget: options.memory_budget,
            held: 0,
            idle: 0,
            parked: Vec::new(),
            room_changed: false,
            eviction_clock: 0.0,
            now: 0,
            held_integral: 0,
            busy_integral: 0,
            invocations: 0,
            cold_starts: 0,
            warm_after_wait: 0,
            call_wait: 0,
            container_starts: 0,
            prewarms_used: 0,
            prewarms_wasted: 0,
            memory_waits: 0,
            longest_memory_wait: 0,
            start_slots: options.start_slots.unwrap_or(usize::MAX).max(1),
            starting: 0,
            waiting_for_slot: VecDeque::new(),
            start_wait: 0,
            starts_per_second: vec![0; end.div_ceil(SECOND_NS) as usize],
            engine_start_cost: options.engine_start_cost,
        };
        // As the pool's reaper looks at a function once it is registered.
        for function in 0..sim.functions.len() {
            sim.schedule_tick(function, 0);
        }
        sim
    }

    /// Nanoseconds of `[from, to)` within the figures' span.
    fn within_end(&self, from: u64, to: u64) -> u64 {
        to.min(self.end).saturating_sub(from.min(self.end))
    }

    fn instant(&self, at: u64) -> Instant {
        self.base + Duration::from_nanos(at)
    }

    /// Schedules `event` at `at`; returns its sequence number.
    fn push(&mut self, at: u64, event: Event) -> u64 {
        self.seq += 1;
        self.events.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
        self.seq
    }

    /// Moves the clock to `at`, adding the memory held meanwhile.
    fn advance(&mut self, at: u64) {
        let held_for = self.within_end(self.now, at);
        self.held_integral += u128::from(self.held) * u128::from(held_for);
        self.now = self.now.max(at);
    }

    /// Handles every event due by `until` (those due at `until` too).
    fn run_until(&mut self, until: u64) {
        while self.events.peek().is_some_and(|next| next.at <= until) {
            let Scheduled { at, event, .. } = self.events.pop().expect("peeked");
            self.advance(at);
            let now = self.instant(at);
            match event {
                Event::Started(function, waited) => {
                    self.slot_freed(at);
                    // The engine's own time, from its turn (the waits for
                    // memory and a slot are everyone's, not the function's),
                    // and the wait for the slot, which prices its starts.
                    let took = Duration::from_nanos(self.cold_start);
                    let waited = Duration::from_nanos(waited);
                    let changes = self.functions[function].state.started(
                        Container { calls: 0 },
                        now,
                        took,
                        waited,
                    );
                    self.carry_out(function, changes, at, Cause::Started);
                }
                Event::Returned(function, container) => {
                    let changes = self.functions[function].state.returned(container, now);
                    self.carry_out(function, changes, at, Cause::Returned);
                }
                Event::Tick(function, request) => {
                    if self.functions[function].tick.map(|(_, r)| r) != Some(request) {
                        continue;
                    }
                    self.functions[function].tick = None;
                    let changes = self.functions[function].state.tick(now);
                    self.carry_out(function, changes, at, Cause::Tick);
                }
            }
            self.unpark(at);
        }
    }

    /// A call of `function` running `duration` arrives at `at`.
    fn arrive(&mut self, function: usize, duration: u64, at: u64) {
        self.advance(at);
        self.invocations += 1;
        self.functions[function].calls += 1;
        let now = self.instant(at);
        match self.functions[function].state.call_arrives(now, || Call {
            duration,
            arrived: at,
        }) {
            Arrival::Ready {
                container,
                prewarmed,
                start,
                fill,
            } => {
                self.prewarms_used += u64::from(prewarmed);
                self.idle_change(function, -1);
                self.serve(function, container, duration, at);
                self.start(function, start, at);
                self.fill_floor(function, fill, at);
            }
            Arrival::Queued { start, fill } => {
                self.start(function, start, at);
                self.fill_floor(function, fill, at);
            }
            Arrival::Full | Arrival::Draining => {
                unreachable!("a replayed function has no concurrency limit and never drains")
            }
        }
        self.unpark(at);
    }

    /// Does what a state machine decided after `cause`, as the pool's scheduler
    /// does. A container granted right after its start serves a cold call.
    fn carry_out(&mut self, function: usize, changes: Changes, at: u64, cause: Cause) {
        let Actions {
            grant,
            start,
            fill,
            retire,
            refuse,
            wake,
            prewarms_wasted,
        } = changes;
        debug_assert!(refuse.is_empty(), "no start fails and nothing drains");
        self.prewarms_wasted += prewarms_wasted as u64;
        if let Some(wake) = wake {
            let wake = wake.saturating_duration_since(self.base).as_nanos();
            self.schedule_tick(function, u64::try_from(wake).unwrap_or(u64::MAX));
        }
        let freed = matches!(cause, Cause::Started | Cause::Returned);
        if freed && grant.is_none() && retire.is_empty() {
            // It went idle: a parked start of another function may evict it.
            self.idle_change(function, 1);
            self.room_changed = true;
        }
        if !retire.is_empty() {
            if matches!(cause, Cause::Tick) {
                // A tick retires idle containers; others retire the one freed.
                self.idle_change(function, -(retire.len() as isize));
            }
            self.held -= retire.len() as u64 * self.functions[function].memory;
            self.room_changed = true;
        }
        self.start(function, start, at);
        self.fill_floor(function, fill, at);
        if let Some((call, container)) = grant {
            if matches!(cause, Cause::Started) {
                self.cold_starts += 1;
                self.functions[function].cold += 1;
            } else {
                self.warm_after_wait += 1;
            }
            self.call_wait += at - call.arrived;
            self.serve(function, container, call.duration, at);
        }
    }

    /// Wakes `function` at `at`, unless an earlier tick is pending or the day is
    /// over by then.
    fn schedule_tick(&mut self, function: usize, at: u64) {
        if at >= self.end
            || self.functions[function]
                .tick
                .is_some_and(|(due, _)| due <= at)
        {
            return;
        }
        // The request is named by the sequence number its event gets.
        let request = self.seq + 1;
        let seq = self.push(at, Event::Tick(function, request));
        debug_assert_eq!(seq, request);
        self.functions[function].tick = Some((at, request));
    }

    /// `container` serves a call of `duration` from `at`.
    fn serve(&mut self, function: usize, mut container: Container, duration: u64, at: u64) {
        container.calls += 1;
        let end = at.saturating_add(duration);
        self.busy_integral +=
            u128::from(self.functions[function].memory) * u128::from(self.within_end(at, end));
        let _ = self.push(end, Event::Returned(function, container));
    }

    /// `function` has `change` more idle containers.
    fn idle_change(&mut self, function: usize, change: isize) {
        let idle = &mut self.functions[function].idle;
        *idle = idle.checked_add_signed(change).expect("idle counts match");
        self.idle = self
            .idle
            .checked_add_signed(change)
            .expect("idle counts match");
        if cfg!(debug_assertions) {
            let counted = self.functions[function].state.counts().idle;
            assert_eq!(self.functions[function].idle, counted, "idle counts match");
        }
    }

    /// Starts `count` containers of `function`, each when its memory fits; the
    /// others wait for memory.
    fn start(&mut self, function: usize, count: usize, at: u64) {
        for _ in 0..count {
            if self.make_room(function) {
                self.begin_start(function, at);
            } else {
                let parked = &mut self.functions[function].parked;
                if parked.is_empty() {
                    self.parked.push(function);
                }
                parked.push_back(at);
            }
        }
    }

    /// Starts `count` containers of `function`'s warm floor with memory that is
    /// free, as the pool does; one that does not fit is refused.
    fn fill_floor(&mut self, function: usize, count: usize, at: u64) {
        let memory = self.functions[function].memory;
        for _ in 0..count {
            if self
                .budget
                .is_some_and(|budget| self.held + memory > budget)
            {
                let now = self.instant(at);
                let changes = self.functions[function].state.fill_refused(now);
                // No container was freed: as after a tick that retired none.
                self.carry_out(function, changes, at, Cause::Tick);
            } else {
                self.begin_start(function, at);
            }
        }
    }

    /// Starts what waits for memory and now fits (each function's oldest first),
    /// as the pool's parked starts look again when memory is freed or a container
    /// goes idle.
    fn unpark(&mut self, at: u64) {
        if !std::mem::take(&mut self.room_changed) {
            return;
        }
        let mut parked = std::mem::take(&mut self.parked);
        parked.retain(|&function| {
            while let Some(&since) = self.functions[function].parked.front() {
                if !self.make_room(function) {
                    return true;
                }
                self.functions[function].parked.pop_front();
                self.memory_waits += 1;
                self.longest_memory_wait = self.longest_memory_wait.max(at - since);
                self.begin_start(function, at);
            }
            false
        });
        self.parked = parked;
    }

    /// Holds the memory of a container of `function` from `at` and starts it
    /// when a start slot is free, as the pool's starts take their turn once
    /// their memory is reserved.
    fn begin_start(&mut self, function: usize, at: u64) {
        self.held += self.functions[function].memory;
        self.container_starts += 1;
        if self.starting < self.start_slots {
            self.take_slot(function, at, at);
        } else {
            self.waiting_for_slot.push_back((function, at));
        }
    }

    /// A start of `function` that began to wait for a slot at `since` takes
    /// one at `at`.
    fn take_slot(&mut self, function: usize, since: u64, at: u64) {
        self.starting += 1;
        self.start_wait += at - since;
        if let Some(second) = self.starts_per_second.get_mut((at / SECOND_NS) as usize) {
            *second += 1;
        }
        let ready = at.saturating_add(self.cold_start);
        // Starting, or waiting to: held but not idle.
        let memory = self.functions[function].memory;
        self.busy_integral += u128::from(memory) * u128::from(self.within_end(since, ready));
        let _ = self.push(ready, Event::Started(function, at - since));
    }

    /// A start ended at `at`: the longest-waiting start takes its slot.
    fn slot_freed(&mut self, at: u64) {
        self.starting -= 1;
        if let Some((function, since)) = self.waiting_for_slot.pop_front() {
            self.take_slot(function, since, at);
        }
    }

    /// Whether a container of `function` fits the budget, after evicting idle
    /// containers of other functions if need be.
    fn make_room(&mut self, function: usize) -> bool {
        let Some(budget) = self.budget else {
            return true;
        };
        let memory = self.functions[function].memory;
        while self.held + memory > budget {
            // Only other functions' idle containers can go.
            if self.idle == self.functions[function].idle || !self.evict_one(function) {
                return false;
            }
        }
        true
    }

    /// Evicts the idle container of any function but `except` that the eviction
    /// policies rank lowest, as the pool does; says whether there was one.
    fn evict_one(&mut self, except: usize) -> bool {
        let clock = EvictionClock {
            epoch: self.base,
            clock: self.eviction_clock,
            start_cost: Duration::from_nanos(self.cold_start),
        };
        let lowest = self
            .functions
            .iter()
            .enumerate()
            .filter(|(index, f)| *index != except && f.idle > 0)
            .filter_map(|(index, f)| {
                let (priority, ticket) = f.state.eviction_candidate(clock)?;
                Some((priority, ticket, index))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let Some((priority, ticket, victim)) = lowest else {
            return false;
        };
        let (_, prewarmed) = self.functions[victim]
            .state
            .evict_idle(ticket)
            .expect("the candidate is idle: nothing ran in between");
        self.eviction_clock = priority;
        self.prewarms_wasted += u64::from(prewarmed);
        self.idle_change(victim, -1);
        self.room_changed = true;
        self.held -= self.functions[victim].memory;
        true
    }

    fn report(mut self, wall: Duration) -> Report {
        self.advance(self.end);
        let gb_s = |byte_ns: u128| byte_ns as f64 / BYTES_PER_GB / 1e9;
        let mut cold_pct: Vec<f64> = self
            .functions
            .iter()
            .filter(|f| f.calls > 0)
            .map(|f| 100.0 * f.cold as f64 / f.calls as f64)
            .collect();
        cold_pct.sort_by(f64::total_cmp);
        let mut per_second: Vec<f64> = self
            .starts_per_second
            .iter()
            .map(|&n| f64::from(n))
            .collect();
        per_second.sort_by(f64::total_cmp);
        Report {
            invocations: self.invocations,
            cold_starts: self.cold_starts,
            cold_ratio: self.cold_starts as f64 / self.invocations.max(1) as f64,
            container_starts: self.container_starts,
            idle_gb_s: gb_s(self.held_integral - self.busy_integral),
            total_gb_s: gb_s(self.held_integral),
            p75_function_cold_pct: percentile(&cold_pct, 0.75),
            prewarms_used: self.prewarms_used,
            prewarms_wasted: self.prewarms_wasted,
            wall_s: wall.as_secs_f64(),
            warm_after_wait: self.warm_after_wait,
            memory_waits: self.memory_waits,
            longest_memory_wait_s: self.longest_memory_wait as f64 / 1e9,
            start_wait_s: self.start_wait as f64 / 1e9,
            call_wait_s: self.call_wait as f64 / 1e9,
            peak_starts_per_s: self.starts_per_second.iter().copied().max().unwrap_or(0),
            p99_starts_per_s: percentile(&per_second, 0.99),
            engine_start_s: self.container_starts as f64 * self.engine_start_cost.as_secs_f64(),
        }
    }
}

/// The `q` quantile of sorted `values`, interpolated linearly between ranks; 0
/// for none.
pub(crate) fn percentile(values: &[f64], q: f64) -> f64 {
    let Some(last) = values.len().checked_sub(1) else {
        return 0.0;
    };
    let rank = q * last as f64;
    let below = rank.floor() as usize;
    let above = (below + 1).min(last);
    values[below] + (values[above] - values[below]) * (rank - below as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::Arrivals;
    use crate::replay::trace::MINUTES;
    use crate::replay::trace::testing::{TestFunction, write};

    /// Replays `functions` with `policy`, evenly spread arrivals and a 250 ms
    /// cold start.
    fn replay(functions: &[TestFunction], policy: &str, budget: Option<u64>) -> Report {
        let options = Options {
            policy: policy.parse().unwrap(),
            memory_budget: budget,
            arrivals: Arrivals::Equidistant,
            ..Options::default()
        };
        replay_with(functions, &options)
    }

    fn replay_with(functions: &[TestFunction], options: &Options) -> Report {
        let dir = tempfile::tempdir().unwrap();
        let trace = Trace::load(&write(dir.path(), functions)).unwrap();
        simulate(&trace, options, |_| {}).unwrap()
    }

    /// A function of 1 GB containers whose calls run `duration_ms`.
    fn function(name: &'static str, calls: Vec<(usize, u32)>, duration_ms: f64) -> TestFunction {
        TestFunction {
            name,
            calls,
            duration_ms,
            memory_mb: 1024,
        }
    }

    fn once_a_minute_for(minutes: std::ops::Range<usize>) -> Vec<(usize, u32)> {
        minutes.map(|minute| (minute, 1)).collect()
    }

    fn assert_gb_s(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-6,
            "{actual} GB-s, not {expected}"
        );
    }

    #[test]
    fn a_keep_alive_shorter_than_the_gaps_makes_every_call_cold() {
        let report = replay(
            &[function("f", once_a_minute_for(0..10), 1000.0)],
            "fixed:30s",
            None,
        );
        assert_eq!(report.invocations, 10);
        assert_eq!((report.cold_starts, report.container_starts), (10, 10));
        assert_eq!(report.cold_ratio, 1.0);
        // Each container: 0.25 s starting, 1 s serving, 30 s idle, 1 GB.
        assert_gb_s(report.idle_gb_s, 10.0 * 30.0);
        assert_gb_s(report.total_gb_s, 10.0 * 31.25);
        assert_eq!(report.p75_function_cold_pct, 100.0);
    }

    #[test]
    fn starts_beyond_the_slots_wait_for_one_and_hold_their_memory_meanwhile() {
        // Three functions whose first calls arrive at once.
        let functions = ["a", "b", "c"].map(|name| function(name, vec![(0, 1)], 1000.0));
        let options = |start_slots| Options {
            policy: "fixed:30s".parse().unwrap(),
            arrivals: Arrivals::Equidistant,
            start_slots,
            engine_start_cost: Duration::from_millis(100),
            ..Options::default()
        };
        let free = replay_with(&functions, &options(None));
        assert_eq!(free.start_wait_s, 0.0);
        let one = replay_with(&functions, &options(Some(1)));
        // One at a time: the second waits one cold start, the third two.
        assert!((one.start_wait_s - 0.75).abs() < 1e-9, "{one:?}");
        assert_eq!(one.cold_starts, 3);
        // Each call waits for its own start too: 0.25 s, then 0.5 and 0.75.
        assert!((free.call_wait_s - 0.75).abs() < 1e-9, "{free:?}");
        assert!((one.call_wait_s - 1.5).abs() < 1e-9, "{one:?}");
        // Waiting holds memory, and is not idle.
        assert_gb_s(one.idle_gb_s, free.idle_gb_s);
        assert_gb_s(one.total_gb_s, free.total_gb_s + 0.75);
        for report in [&free, &one] {
            assert_eq!(report.peak_starts_per_s, 3, "all begin in the first second");
            assert_eq!(report.p99_starts_per_s, 0.0, "no start in most seconds");
            assert!((report.engine_start_s - 0.3).abs() < 1e-9, "{report:?}");
        }
    }

    #[test]
    fn a_keep_alive_longer_than_the_gaps_starts_one_container() {
        let report = replay(
            &[function("f", once_a_minute_for(0..10), 1000.0)],
            "fixed:2m",
            None,
        );
        assert_eq!((report.cold_starts, report.container_starts), (1, 1));
        // Idle 58.75 s after the cold call, 59 s after the next eight, then 2 min.
        assert_gb_s(report.idle_gb_s, 58.75 + 8.0 * 59.0 + 120.0);
        assert_gb_s(report.total_gb_s, 540.0 + 1.0 + 120.0);
        assert_eq!(report.p75_function_cold_pct, 10.0);
    }

    #[test]
    fn figures_stop_at_the_end_of_the_day() {
        let report = replay(&[function("f", vec![(1439, 1)], 1000.0)], "fixed:10m", None);
        assert_eq!(report.cold_starts, 1);
        assert_gb_s(report.total_gb_s, 60.0);
        assert_gb_s(report.idle_gb_s, 60.0 - 1.25);
    }

    #[test]
    fn a_call_handed_a_freed_container_while_its_start_runs_is_warm() {
        // 50 calls 1.2 s apart, 1 s each: the second arrives while the first
        // runs, and the first's container comes back before the second's start
        // ends; from then on the first container serves every call.
        let report = replay(&[function("f", vec![(0, 50)], 1000.0)], "fixed:10m", None);
        assert_eq!(report.invocations, 50);
        assert_eq!(
            (
                report.cold_starts,
                report.warm_after_wait,
                report.container_starts
            ),
            (1, 1, 2)
        );
        // The first container lives until 10 min after the last call ends (at
        // 59.8 s); the second from 1.2 s until 10 min after its start ended.
        let total = (59.8 + 600.0) + (1.45 + 600.0 - 1.2);
        assert_gb_s(report.total_gb_s, total);
        assert_gb_s(report.idle_gb_s, total - 2.0 * 0.25 - 50.0);
    }

    #[test]
    fn under_a_memory_budget_a_start_evicts_another_functions_idle_container() {
        let functions = [
            function("a", vec![(0, 1), (2, 1), (4, 1)], 1000.0),
            function("b", vec![(1, 1), (3, 1), (5, 1)], 1000.0),
        ];
        for (policy, last_held) in [
            ("lru", 86_400.0 - 300.0),
            ("greedy-dual", 86_400.0 - 300.0),
            ("fixed:10m", 1.25 + 600.0),
        ] {
            let unlimited = replay(&functions, policy, None);
            assert_eq!(unlimited.container_starts, 2, "{policy}: one each");
            let budget = replay(&functions, policy, Some(1 << 30));
            assert_eq!(budget.container_starts, 6, "{policy}: one container fits");
            assert_eq!(budget.cold_starts, 6, "{policy}");
            // Each held from its start until the next minute's start evicts it;
            // the last until its keep-alive ends, or the day does.
            assert_gb_s(budget.total_gb_s, 5.0 * 60.0 + last_held);
        }
    }

    #[test]
    fn greedy_dual_keeps_the_container_that_served_more_calls_and_lru_the_newer() {
        // Two containers fit. c's start must evict a's (idle longer, 10 calls) or
        // b's (1 call); a calls again after.
        let functions = [
            function("a", vec![(0, 10), (3, 1)], 1000.0),
            function("b", vec![(1, 1)], 1000.0),
            function("c", vec![(2, 1)], 1000.0),
        ];
        let lru = replay(&functions, "lru", Some(2 << 30));
        assert_eq!(lru.container_starts, 4, "a's container went");
        let greedy_dual = replay(&functions, "greedy-dual", Some(2 << 30));
        assert_eq!(greedy_dual.container_starts, 3, "b's container went");
    }

    #[test]
    fn a_start_that_does_not_fit_waits_until_memory_is_free() {
        let functions = [
            function("a", vec![(0, 1)], 90_000.0),
            function("b", vec![(1, 1)], 1000.0),
        ];
        let report = replay(&functions, "fixed:10m", Some(1 << 30));
        assert_eq!((report.cold_starts, report.container_starts), (2, 2));
        // b's call at 60 s waits for a's container to come back at 90.25 s and
        // be evicted; b's container then lives until 10 min after its call.
        assert_gb_s(report.total_gb_s, 90.25 + 601.25);
        assert_gb_s(report.idle_gb_s, 600.0);
        assert_eq!(report.memory_waits, 1);
        assert!((report.longest_memory_wait_s - 30.25).abs() < 1e-9);
    }

    #[test]
    fn a_budget_smaller_than_a_container_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let functions = [function("big", vec![(0, 1)], 1.0)];
        let trace = Trace::load(&write(dir.path(), &functions)).unwrap();
        let options = Options {
            memory_budget: Some(512 << 20),
            ..Options::default()
        };
        let error = simulate(&trace, &options, |_| {}).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the memory budget (536870912 bytes) is smaller than one container of function big (1073741824 bytes)"
        );
    }

    #[test]
    fn uniform_arrivals_are_the_same_for_a_seed_and_progress_covers_the_day() {
        let dir = tempfile::tempdir().unwrap();
        let functions = [
            function("a", vec![(0, 30), (1, 5), (700, 40)], 500.0),
            function("b", once_a_minute_for(0..1440), 50.0),
        ];
        let trace = Trace::load(&write(dir.path(), &functions)).unwrap();
        let options = Options {
            policy: "fixed:30s".parse().unwrap(),
            ..Options::default()
        };
        let mut minutes = Vec::new();
        let run = |minutes: &mut Vec<usize>| {
            let mut report = simulate(&trace, &options, |p| minutes.push(p.minute)).unwrap();
            report.wall_s = 0.0;
            report
        };
        let first = run(&mut minutes);
        assert_eq!(minutes, (1..=MINUTES).collect::<Vec<_>>());
        assert_eq!(first, run(&mut Vec::new()));
        assert_eq!(first.invocations, 75 + 1440);
        assert!(first.cold_starts <= first.container_starts);
        assert!(first.idle_gb_s < first.total_gb_s);
    }

    #[test]
    fn neither_a_starts_wait_for_a_slot_nor_a_slow_engine_brings_in_the_forecast() {
        // Sixty times faster than the trace: a minute of it is a second. A
        // burst of 15 calls of a second within a second, every one starting a
        // container through one slot (the last waits about 3 s for it); fewer
        // than the forecast needs to measure a rate. Then, long after those
        // containers went, a call a second: a quarter of a call is expected
        // within a quiet engine's start (250 ms), too few for the forecast,
        // however long the function's starts wait or take. (When a start's
        // time held its wait for a slot, and the forecast acted from a call
        // expected within it, the waits brought it in.)
        let mut calls = vec![(0, 15)];
        calls.extend((700..760).map(|minute| (minute, 1)));
        let functions = [function("f", calls, 60_000.0)];
        let options = |cold_start| Options {
            arrivals: Arrivals::Equidistant,
            start_slots: Some(1),
            speed: 60.0,
            cold_start,
            ..Options::default()
        };
        let prewarms = |report: &Report| report.prewarms_used + report.prewarms_wasted;

        let waited = replay_with(&functions, &options(Duration::from_millis(250)));
        assert!(
            waited.start_wait_s > 10.0,
            "the burst's starts waited: {waited:?}"
        );
        assert_eq!(prewarms(&waited), 0, "{waited:?}");
        // The same calls where the engine itself takes 2 s a start: two calls
        // within a start, but the forecast keeps out all the same.
        let slow = replay_with(&functions, &options(Duration::from_secs(2)));
        assert!(slow.cold_starts > 0, "{slow:?}");
        assert_eq!(prewarms(&slow), 0, "{slow:?}");
    }

    #[test]
    fn starts_that_wait_for_a_slot_make_containers_worth_keeping() {
        // Sixty times faster than the trace: bursts of 40 calls of a second
        // within a second, at irregular gaps of 6-9 s, of 10 GB containers
        // where a cold start is worth 100 GB-s. Keeping one through a gap
        // costs more than a start (0.3 of a cold start) and less than a cold
        // start: with any number of starts at once the policy lets the
        // surplus go and the forecast starts it again in the next burst.
        // Through one slot a burst's starts wait seconds each, which prices
        // a start far above keeping the container.
        let gaps = [6, 8, 7, 9];
        let mut calls = Vec::new();
        let mut minute = 0;
        for burst in 0..150 {
            calls.push((minute, 40));
            minute += gaps[burst % gaps.len()];
        }
        let functions = [TestFunction {
            name: "f",
            calls,
            duration_ms: 60_000.0,
            memory_mb: 10 * 1024,
        }];
        let options = |start_slots| Options {
            policy: "adaptive:100".parse().unwrap(),
            arrivals: Arrivals::Equidistant,
            start_slots,
            speed: 60.0,
            ..Options::default()
        };
        let free = replay_with(&functions, &options(None));
        let queued = replay_with(&functions, &options(Some(1)));
        assert!(queued.start_wait_s > 0.0, "{queued:?}");
        assert!(
            queued.container_starts * 2 < free.container_starts,
            "free: {free:?}, queued: {queued:?}"
        );
    }

    #[test]
    fn a_warm_floor_buys_off_a_sparse_functions_cold_starts_with_idle_memory() {
        let functions = [function("f", vec![(10, 1), (200, 1), (900, 1)], 1000.0)];
        let options = |min_idle| Options {
            policy: "fixed:1m".parse().unwrap(),
            arrivals: Arrivals::Equidistant,
            min_idle,
            ..Options::default()
        };
        let none = replay_with(&functions, &options(0));
        assert_eq!((none.cold_starts, none.container_starts), (3, 3));
        let floor = replay_with(&functions, &options(1));
        // One started at the start of the day, and one after each call took
        // the idle one.
        assert_eq!((floor.cold_starts, floor.container_starts), (0, 4));
        // A 1 GB container idle all day but for the calls and the starts.
        assert!(floor.idle_gb_s > 86_000.0, "{floor:?}");
        assert!(floor.idle_gb_s - none.idle_gb_s > 85_000.0, "{none:?}");
    }

    #[test]
    fn a_warm_floor_takes_only_free_memory_and_evicts_nothing() {
        let functions = [
            function("a", vec![(5, 1)], 1000.0),
            function("b", vec![(10, 1)], 1000.0),
        ];
        let options = Options {
            policy: "fixed:1m".parse().unwrap(),
            memory_budget: Some(1 << 30),
            arrivals: Arrivals::Equidistant,
            min_idle: 1,
            ..Options::default()
        };
        let report = replay_with(&functions, &options);
        // a's floor takes the one container's room at the start of the day and
        // serves its call; b's floor never fits, so b's call starts one, which
        // evicts a's idle container; neither floor evicts the other's after.
        assert_eq!((report.cold_starts, report.container_starts), (1, 2));
        assert_eq!(report.memory_waits, 0);
    }

    #[test]
    fn the_percentile_interpolates_between_ranks() {
        assert_eq!(percentile(&[0.0, 10.0, 20.0, 100.0], 0.75), 40.0);
        assert_eq!(percentile(&[7.0], 0.75), 7.0);
        assert_eq!(percentile(&[], 0.75), 0.0);
    }
}
