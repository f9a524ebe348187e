//! The pool's replaceable decisions, each behind a small trait so it can be
//! chosen per function and tested alone: keep-alive (when an idle container goes,
//! and how many to start before any call asks) and eviction under memory pressure
//! (which idle container goes first).
//!
//! The defaults keep today's behaviour: a fixed idle timeout
//! ([`FixedKeepAlive`]) and least-recently-used eviction ([`LeastRecentlyUsed`]).

use std::fmt;
use std::time::{Duration, Instant};

use super::spec::{Eviction, KeepAlive};

/// When a function's idle containers go, and how many it keeps started with no
/// call asking. One instance per function; it sees every call arrive and every
/// container come back, and may learn from them.
pub(crate) trait KeepAlivePolicy: Send + fmt::Debug {
    /// A call arrived at `now`.
    fn call_arrived(&mut self, now: Instant);

    /// A container came back idle at `now` after a call.
    fn call_returned(&mut self, now: Instant);

    /// When a container that went idle at `idle_since` goes.
    fn idle_until(&self, idle_since: Instant) -> Instant;

    /// How many containers should be up at `now` even with no call asking.
    fn prewarm(&self, now: Instant) -> usize;
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
}

/// The policy a [`KeepAlive`] names.
pub(crate) fn keep_alive(choice: KeepAlive) -> Box<dyn KeepAlivePolicy> {
    match choice {
        KeepAlive::Fixed { idle_timeout } => Box::new(FixedKeepAlive { idle_timeout }),
    }
}

/// The policy an [`Eviction`] names.
pub(crate) fn eviction(choice: Eviction) -> Box<dyn EvictionPolicy> {
    match choice {
        Eviction::LeastRecentlyUsed => Box::new(LeastRecentlyUsed),
    }
}

/// Every idle container goes after the same time idle; none is started early.
#[derive(Debug)]
pub(crate) struct FixedKeepAlive {
    idle_timeout: Duration,
}

impl KeepAlivePolicy for FixedKeepAlive {
    fn call_arrived(&mut self, _: Instant) {}

    fn call_returned(&mut self, _: Instant) {}

    fn idle_until(&self, idle_since: Instant) -> Instant {
        after(idle_since, self.idle_timeout)
    }

    fn prewarm(&self, _: Instant) -> usize {
        0
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

/// `timeout` after `from`; a timeout too long to add is a century, which is never.
pub(crate) fn after(from: Instant, timeout: Duration) -> Instant {
    from.checked_add(timeout)
        .or_else(|| from.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_keeps_each_container_its_idle_timeout_and_prewarms_none() {
        let now = Instant::now();
        let mut policy = keep_alive(KeepAlive::fixed(Duration::from_secs(60)));
        policy.call_arrived(now);
        policy.call_returned(now);
        assert_eq!(policy.idle_until(now), now + Duration::from_secs(60));
        assert_eq!(policy.prewarm(now), 0);
    }

    #[test]
    fn an_endless_idle_timeout_does_not_overflow() {
        let now = Instant::now();
        let policy = keep_alive(KeepAlive::fixed(Duration::MAX));
        assert!(policy.idle_until(now) > now + Duration::from_secs(365 * 24 * 3600));
    }

    #[test]
    fn least_recently_used_ranks_the_longest_idle_lowest() {
        let epoch = Instant::now();
        let policy = eviction(Eviction::LeastRecentlyUsed);
        let older = IdleContainer {
            idle_since: epoch + Duration::from_secs(1),
            epoch,
        };
        let newer = IdleContainer {
            idle_since: epoch + Duration::from_secs(2),
            epoch,
        };
        assert!(policy.priority(&older) < policy.priority(&newer));
    }
}
