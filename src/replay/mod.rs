//! `hotpool replay`: a day of a real trace through the pool's own scheduling
//! core, on a virtual clock.
//!
//! [`Trace::load`] reads a trace in the Azure Functions 2019 schema;
//! [`simulate`] drives each function's scheduling state machine (the same code,
//! keep-alive and eviction policies the pool runs) through it, with
//! a simulated container start of [`Options::cold_start`], and returns a
//! [`Report`].
//!
//! The model, so figures compare with published ones:
//! - each minute's calls arrive uniformly at random within the minute (seeded), or
//!   evenly ([`Arrivals`]); each call's duration is sampled from the
//!   piecewise-linear curve through its function's duration percentiles, floored
//!   at 1 ms;
//! - one call per container; the most recently freed idle container is reused; a
//!   cold start adds [`Options::cold_start`] to the call and to the container's
//!   busy time;
//! - a container holds its function's memory from the start of its start until
//!   it is removed; idle memory is what it holds while neither starting nor
//!   serving; GB are 1024 MB; figures cover the trace's minutes (the 24-hour
//!   day, or a slice of it: [`Trace::slice`]), run [`Options::speed`] times
//!   faster.

mod calls;
pub mod live;
mod rng;
mod sim;
mod slice;
mod trace;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::pool::{Eviction, KeepAlive};

pub use sim::{BudgetTooSmall, simulate};

/// What one container start (and its removal) cost the Docker engine on the
/// development machine, in CPU time of dockerd and its containerd: 20 starts
/// of the test function took 2.1 CPU seconds (the shims' own time is not in
/// it).
pub const ENGINE_START_COST: Duration = Duration::from_millis(105);
pub use slice::{SliceError, parse_minutes};
pub use trace::{Trace, TraceError};

/// How a replay runs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Options {
    /// When idle containers go, and which goes first under the memory budget.
    pub policy: Policy,
    /// The most memory live containers may hold, in bytes; `None`: no limit.
    pub memory_budget: Option<u64>,
    /// How long a container takes to start.
    pub cold_start: Duration,
    /// Seeds the arrival times and durations.
    pub seed: u64,
    /// How each minute's calls spread over the minute.
    pub arrivals: Arrivals,
    /// The most containers starting at once, as the pool's own limit
    /// ([`crate::pool::STARTS_AT_ONCE`]); more wait for a slot, and their
    /// calls with them. `None`: any number at once.
    pub start_slots: Option<usize>,
    /// What one start costs the engine, in CPU time: `engine_start_s` is
    /// the starts times this.
    pub engine_start_cost: Duration,
    /// Every function's warm floor ([`crate::pool::FunctionSpec::min_idle`]):
    /// its containers count in idle GB-s and container starts.
    pub min_idle: usize,
    /// How many times faster than the trace time runs: arrival times and
    /// call durations are divided by it (the cold start and the policy are
    /// not), and so is the span the figures cover.
    pub speed: f64,
}

impl Default for Options {
    /// The `adaptive` policy, no memory budget, a 250 ms cold start, seed 1,
    /// uniform arrivals, the pool's 16 starts at once, each costing the
    /// engine [`ENGINE_START_COST`], no warm floor, at the trace's own speed.
    fn default() -> Self {
        Options {
            policy: Policy::KeepAlive(KeepAlive::ADAPTIVE),
            memory_budget: None,
            cold_start: Duration::from_millis(250),
            seed: 1,
            arrivals: Arrivals::Uniform,
            start_slots: Some(crate::pool::STARTS_AT_ONCE),
            engine_start_cost: ENGINE_START_COST,
            min_idle: 0,
            speed: 1.0,
        }
    }
}

/// Which policy every function of the trace gets. Written as a keep-alive policy
/// (`fixed:10m`, `histogram`, `adaptive`), or `lru` / `greedy-dual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Policy {
    /// This keep-alive; under a memory budget the least recently used idle
    /// container goes first.
    KeepAlive(KeepAlive),
    /// Idle containers stay until the memory budget needs their memory; this
    /// eviction picks which goes.
    NeverRemove(Eviction),
}

impl Policy {
    /// The keep-alive and eviction policies it gives each function.
    pub(crate) fn split(self) -> (KeepAlive, Eviction) {
        match self {
            Policy::KeepAlive(keep_alive) => (keep_alive, Eviction::LeastRecentlyUsed),
            Policy::NeverRemove(eviction) => (KeepAlive::fixed(Duration::MAX), eviction),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::KeepAlive(keep_alive) => keep_alive.fmt(f),
            Policy::NeverRemove(eviction) => eviction.fmt(f),
        }
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(eviction) = text.parse() {
            return Ok(Policy::NeverRemove(eviction));
        }
        match text.parse() {
            Ok(keep_alive) => Ok(Policy::KeepAlive(keep_alive)),
            Err(_) if !text.starts_with("fixed:") => Err(format!(
                "{text:?} is not a policy: use fixed:DURATION, histogram, adaptive, lru or greedy-dual"
            )),
            Err(error) => Err(error),
        }
    }
}

/// How each minute's calls spread over the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// Each at a uniformly random time within the minute.
    Uniform,
    /// Evenly: the first at the start of the minute.
    Equidistant,
}

impl fmt::Display for Arrivals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arrivals::Uniform => "uniform",
            Arrivals::Equidistant => "equidistant",
        })
    }
}

impl FromStr for Arrivals {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "uniform" => Ok(Arrivals::Uniform),
            "equidistant" => Ok(Arrivals::Equidistant),
            other => Err(format!(
                "{other:?} is not an arrival pattern: use uniform or equidistant"
            )),
        }
    }
}

/// What a replay measured over the day.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// Calls in the trace.
    pub invocations: u64,
    /// Calls served by a container started for them.
    pub cold_starts: u64,
    /// `cold_starts` / `invocations`.
    pub cold_ratio: f64,
    /// Containers started, prewarms included.
    pub container_starts: u64,
    /// Memory held by containers neither starting nor serving, in GB-seconds.
    pub idle_gb_s: f64,
    /// Memory held by containers, in GB-seconds.
    pub total_gb_s: f64,
    /// The 75th percentile over functions with calls of each one's cold-start
    /// percentage.
    pub p75_function_cold_pct: f64,
    /// Prewarmed containers that served a call.
    pub prewarms_used: u64,
    /// Prewarmed containers removed before any call.
    pub prewarms_wasted: u64,
    /// Seconds the replay took.
    pub wall_s: f64,
    /// Calls that waited for a start but were handed a container another call
    /// freed meanwhile: warm here, as in the pool; a simulator that gives each
    /// call the container started for it counts them cold.
    #[serde(skip)]
    pub warm_after_wait: u64,
    /// Starts that waited for memory: the memory budget was full of busy
    /// containers. Their calls waited too, which no other figure shows.
    #[serde(skip)]
    pub memory_waits: u64,
    /// The longest a start waited for memory, in seconds.
    #[serde(skip)]
    pub longest_memory_wait_s: f64,
    /// Seconds starts waited for a start slot, summed, prewarms' included.
    pub start_wait_s: f64,
    /// Seconds calls waited for a container, summed: a cold call's start, its
    /// wait for a slot and for memory, or a queued call's wait for one freed.
    pub call_wait_s: f64,
    /// The most containers begun in one second of the day.
    pub peak_starts_per_s: u32,
    /// The 99th percentile over the seconds of the day of the containers
    /// begun in each.
    pub p99_starts_per_s: f64,
    /// The engine's CPU seconds spent on starts: `container_starts` times
    /// [`Options::engine_start_cost`].
    pub engine_start_s: f64,
}

/// How far a replay is, after each simulated minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Minutes of the day replayed.
    pub minute: usize,
    /// Minutes in the day.
    pub minutes: usize,
    /// Calls that arrived so far.
    pub invocations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_what_they_display() {
        for text in [
            "fixed:10m",
            "fixed:30s",
            "histogram",
            "adaptive",
            "lru",
            "greedy-dual",
        ] {
            let policy: Policy = text.parse().unwrap();
            assert_eq!(policy.to_string(), text);
        }
        assert_eq!(
            "lru".parse::<Policy>().unwrap().split(),
            (KeepAlive::fixed(Duration::MAX), Eviction::LeastRecentlyUsed)
        );
        assert_eq!(
            "fixed:30s".parse::<Policy>().unwrap().split(),
            (
                KeepAlive::fixed(Duration::from_secs(30)),
                Eviction::LeastRecentlyUsed
            )
        );
    }

    #[test]
    fn bad_policies_and_arrivals_say_what_is_allowed() {
        let unknown = "fifo".parse::<Policy>().unwrap_err();
        assert!(
            unknown.contains("\"fifo\"") && unknown.contains("greedy-dual"),
            "{unknown}"
        );
        let duration = "fixed:soon".parse::<Policy>().unwrap_err();
        assert!(
            duration.contains("\"soon\" is not a duration"),
            "{duration}"
        );
        let arrivals = "poisson".parse::<Arrivals>().unwrap_err();
        assert!(arrivals.contains("uniform or equidistant"), "{arrivals}");
        assert_eq!("equidistant".parse(), Ok(Arrivals::Equidistant));
    }
}
