//! Whether the engine answers, as `/healthz` reports it.
//!
//! A prober in the background (not one per request: a load balancer checking
//! every second must not load the engine) asks the driver's
//! [`Driver::ping`] every [`PROBE_EVERY`]. Once [`FAILURES_TO_REPORT`] probes
//! in a row have failed, `/healthz` answers 503 with what failed and since
//! when, so a load balancer sends the node no more calls; the first probe that
//! passes makes it answer 200 again. Hot calls do not need the engine and go
//! on meanwhile, for whoever still sends them.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::driver::Driver;
use tokio_util::sync::CancellationToken;

/// How often the engine is pinged.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How many failed probes in a row make the engine unreachable: one slow
/// answer under load is not a wedge.
pub const FAILURES_TO_REPORT: u32 = 2;

/// What the probes found so far.
#[derive(Debug, Default)]
pub struct EngineHealth {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
enum State {
    /// The last probe passed (or none ran yet: the engine answered at start).
    #[default]
    Answers,
    /// The last `failures` probes failed, the first at `since`; `error` is the
    /// last one's.
    Failing {
        error: String,
        since: SystemTime,
        failures: u32,
    },
}

impl EngineHealth {
    /// Records a probe's result, made at `at`.
    pub fn record(&self, result: Result<(), String>, at: SystemTime) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = match (result, &*state) {
            (Ok(()), _) => State::Answers,
            (Err(error), State::Answers) => State::Failing {
                error,
                since: at,
                failures: 1,
            },
            (
                Err(error),
                State::Failing {
                    since, failures, ..
                },
            ) => State::Failing {
                error,
                since: *since,
                failures: failures + 1,
            },
        };
    }

    /// `None` while the engine answers; else what failed and since when, as
    /// of `now`.
    pub fn problem(&self, now: SystemTime) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &*state {
            State::Failing {
                error,
                since,
                failures,
            } if *failures >= FAILURES_TO_REPORT => {
                let for_how_long = now.duration_since(*since).unwrap_or_default();
                Some(format!(
                    "{error}; failing since {} ({} ago, {failures} probes in a row)",
                    humantime::format_rfc3339_seconds(*since),
                    humantime::format_duration(Duration::from_secs(for_how_long.as_secs())),
                ))
            }
            _ => None,
        }
    }
}

/// Pings the engine through `driver` every [`PROBE_EVERY`] into `health`,
/// until `stop`.
pub async fn probe<D: Driver>(
    driver: D,
    health: std::sync::Arc<EngineHealth>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = driver.ping() => result,
        };
        if let Err(error) = &result {
            tracing::warn!(%error, "the engine did not answer a health probe");
        }
        health.record(result.map_err(|e| e.to_string()), SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    #[test]
    fn the_engine_is_unreachable_after_failed_probes_in_a_row_and_back_after_one_passes() {
        let health = EngineHealth::default();
        assert_eq!(health.problem(at(0)), None, "it answered at start");
        health.record(Err("no answer".into()), at(2));
        assert_eq!(
            health.problem(at(2)),
            None,
            "one slow answer is not a wedge"
        );
        health.record(Ok(()), at(4));
        health.record(Err("first".into()), at(6));
        health.record(
            Err("the docker engine did not answer ping within 3s".into()),
            at(9),
        );
        assert_eq!(
            health.problem(at(20)).as_deref(),
            Some(
                "the docker engine did not answer ping within 3s; failing since \
                 2023-11-14T22:13:26Z (14s ago, 2 probes in a row)"
            )
        );
        health.record(Ok(()), at(22));
        assert_eq!(health.problem(at(22)), None);
    }
}
