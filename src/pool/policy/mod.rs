//! The pool's replaceable decisions, each behind a small trait so it can be
//! chosen per function and tested alone: keep-alive (when an idle container goes,
//! and how many to start before any call asks) and eviction under memory pressure
//! (which idle container goes first).
//!
//! The defaults keep today's behaviour: a fixed idle timeout
//! ([`FixedKeepAlive`]) and least-recently-used eviction ([`LeastRecentlyUsed`]).
//!
//! A keep-alive policy that learns can say what it learned as a [`Learned`]
//! value, and a new instance of it can start from one: that is how a pool hands
//! it to the next owner of its name. Its times are ages at the moment it was
//! taken, never `Instant`s, as it crosses processes.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

mod adaptive;
mod histogram;

use super::spec::{Eviction, KeepAlive};
use adaptive::Adaptive;
use histogram::HybridHistogram;

/// When a function's idle containers go, and how many it keeps started with no
/// call asking. One instance per function; it sees every call arrive and every
/// container come back, and may learn from them.
///
/// The newest idle container is reused first, so each container has a *level*:
/// the number of calls in flight at which a call takes it. A container that
/// goes idle with `n` calls still in flight is at level `n + 1`, the one below
/// it in the idle stack at `n + 2`, and so on; levels stay put as calls come
/// and go.
pub(crate) trait KeepAlivePolicy: Send + fmt::Debug {
    /// A call arrived at `now`, making `level` calls in flight; `found` says
    /// what idle container it took, if any.
    fn call_arrived(&mut self, now: Instant, found: Found, level: usize);

    /// A call ended at `now`, leaving `in_flight` calls; its container came back.
    fn call_returned(&mut self, now: Instant, in_flight: usize);

    /// An idle container at `level` that went idle at `idle_since` was removed
    /// without serving another call.
    fn idle_removed(&mut self, idle_since: Instant, level: usize);

    /// When an idle container at `level` that went idle at `idle_since` goes.
    fn idle_until(&self, idle_since: Instant, level: usize) -> Instant;

    /// How many containers should be up at `now` even with no call asking.
    fn prewarm(&self, now: Instant) -> usize;

    /// A container of the function started: `took` passed from its start
    /// turn until it was ready (the engine's own time: the waits for memory
    /// and for a turn, which every function's starts make longer, are not in
    /// it), after `waited` for that turn behind other starts.
    fn start_took(&mut self, _took: Duration, _waited: Duration) {}

    /// The next time after `now` that [`KeepAlivePolicy::prewarm`] may change.
    fn next_change(&self, now: Instant) -> Option<Instant>;

    /// What it learned so far, as of `now`; `None` if it learns nothing.
    fn learned(&self, _now: Instant) -> Option<Learned> {
        None
    }

    /// Starts from what an instance of the same policy `learned`, taken as of
    /// `now`, in place of what this one learned; says why not if it cannot
    /// (another policy's, or values no instance would hold), changing nothing.
    fn restore(&mut self, _learned: Learned, _now: Instant) -> Result<(), String> {
        Err("this policy learns nothing".into())
    }
}

/// What a keep-alive policy learned, by policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub(crate) enum Learned {
    Adaptive(adaptive::AdaptiveLearned),
    Histogram(histogram::HistogramLearned),
}

/// The instant `age` before `now`, if the clock reaches that far back.
fn aged(now: Instant, age: Option<Duration>) -> Option<Instant> {
    now.checked_sub(age?)
}

/// A century: a time that long is never, and a restored policy holds no longer
/// one.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What a call found when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// A container that went idle at this instant when its last call ended.
    Idle(Instant),
    /// A container a prewarm started, serving its first call.
    Prewarmed,
    /// No idle container: the call waits for a start.
    Nothing,
}

/// Which idle container goes when another container needs its memory: the one
/// with the lowest priority, over every function of the pool.
pub(crate) trait EvictionPolicy: Send + fmt::Debug {
    /// The priority of an idle container; the lowest goes first.
    fn priority(&self, idle: &IdleContainer) -> f64;
}

/// What an eviction policy knows of an idle container.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleContainer {
    /// When it went idle.
    pub(crate) idle_since: Instant,
    /// A fixed point in time that every priority of the pool counts from.
    pub(crate) epoch: Instant,
    /// The priority of the last container the pool evicted.
    pub(crate) clock: f64,
    /// The calls it served.
    pub(crate) calls: u64,
    /// Its memory limit, in bytes.
    pub(crate) memory: u64,
    /// What starting another costs.
    pub(crate) start_cost: Duration,
}

/// The policy a [`KeepAlive`] names, for a function whose containers have
/// `memory` bytes each.
pub(crate) fn keep_alive(choice: KeepAlive, memory: u64) -> Box<dyn KeepAlivePolicy> {
    match choice {
        KeepAlive::Fixed { idle_timeout } => Box::new(FixedKeepAlive { idle_timeout }),
        KeepAlive::Histogram => Box::new(HybridHistogram::new()),
        KeepAlive::Adaptive { cold_start_mgb_s } => {
            Box::new(Adaptive::new(memory, cold_start_mgb_s as f64 / 1000.0))
        }
    }
}

/// The policy an [`Eviction`] names.
pub(crate) fn eviction(choice: Eviction) -> Box<dyn EvictionPolicy> {
    match choice {
        Eviction::LeastRecentlyUsed => Box::new(LeastRecentlyUsed),
        Eviction::GreedyDual => Box::new(GreedyDual),
    }
}

/// Every idle container goes after the same time idle; none is started early.
#[derive(Debug)]
pub(crate) struct FixedKeepAlive {
    idle_timeout: Duration,
}

impl KeepAlivePolicy for FixedKeepAlive {
    fn call_arrived(&mut self, _: Instant, _: Found, _: usize) {}

    fn call_returned(&mut self, _: Instant, _: usize) {}

    fn idle_removed(&mut self, _: Instant, _: usize) {}

    fn idle_until(&self, idle_since: Instant, _: usize) -> Instant {
        after(idle_since, self.idle_timeout)
    }

    fn prewarm(&self, _: Instant) -> usize {
        0
    }

    fn next_change(&self, _: Instant) -> Option<Instant> {
        None
    }
}

/// The container idle the longest goes first.
#[derive(Debug)]
pub(crate) struct LeastRecentlyUsed;

impl EvictionPolicy for LeastRecentlyUsed {
    fn priority(&self, idle: &IdleContainer) -> f64 {
        idle.idle_since
            .saturating_duration_since(idle.epoch)
            .as_secs_f64()
    }
}

/// GreedyDual (as FaasCache uses it): priority = clock + calls x start cost /
/// size. A container that served many calls, is costly to start again, or is
/// small stays; the clock (the priority of the last eviction) ages out the rest.
/// Calls are counted per container, so one busy function cannot crowd out all
/// others.
#[derive(Debug)]
pub(crate) struct GreedyDual;

impl EvictionPolicy for GreedyDual {
    fn priority(&self, idle: &IdleContainer) -> f64 {
        let mib = (idle.memory as f64 / f64::from(1 << 20)).max(1.0);
        idle.clock + idle.calls.max(1) as f64 * idle.start_cost.as_secs_f64() / mib
    }
}

/// `timeout` after `from`; a timeout too long to add is a century, which is never.
pub(crate) fn after(from: Instant, timeout: Duration) -> Instant {
    from.checked_add(timeout)
        .or_else(|| from.checked_add(CENTURY))
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_keeps_each_container_its_idle_timeout_and_prewarms_none() {
        let now = Instant::now();
        let mut policy = keep_alive(KeepAlive::fixed(Duration::from_secs(60)), 1 << 20);
        policy.call_arrived(now, Found::Nothing, 1);
        policy.call_returned(now, 0);
        assert_eq!(policy.idle_until(now, 1), now + Duration::from_secs(60));
        assert_eq!(policy.prewarm(now), 0);
    }

    #[test]
    fn an_endless_idle_timeout_does_not_overflow() {
        let now = Instant::now();
        let policy = keep_alive(KeepAlive::fixed(Duration::MAX), 1 << 20);
        assert!(policy.idle_until(now, 1) > now + Duration::from_secs(365 * 24 * 3600));
    }

    #[test]
    fn least_recently_used_ranks_the_longest_idle_lowest() {
        let epoch = Instant::now();
        let policy = eviction(Eviction::LeastRecentlyUsed);
        let older = idle(epoch, 1, 1, 64);
        let newer = idle(epoch, 2, 1, 64);
        assert!(policy.priority(&older) < policy.priority(&newer));
    }

    fn idle(epoch: Instant, since_secs: u64, calls: u64, memory_mib: u64) -> IdleContainer {
        IdleContainer {
            idle_since: epoch + Duration::from_secs(since_secs),
            epoch,
            clock: 0.0,
            calls,
            memory: memory_mib << 20,
            start_cost: Duration::from_millis(250),
        }
    }

    #[test]
    fn greedy_dual_keeps_busy_and_small_containers_and_ages_by_its_clock() {
        let epoch = Instant::now();
        let policy = eviction(Eviction::GreedyDual);
        let rank = |idle: IdleContainer| policy.priority(&idle);
        assert!(
            rank(idle(epoch, 0, 1, 64)) < rank(idle(epoch, 0, 10, 64)),
            "more calls stay"
        );
        assert!(
            rank(idle(epoch, 0, 1, 512)) < rank(idle(epoch, 0, 1, 64)),
            "larger goes"
        );
        let mut later = idle(epoch, 0, 10, 64);
        later.clock = rank(idle(epoch, 0, 10, 64));
        assert!(
            rank(idle(epoch, 0, 10, 64)) < rank(later),
            "the clock ages old priorities"
        );
    }
}
