//! The calls of a replay: when each arrives and how long it runs, drawn from
//! the trace with the replay's seed, minute by minute. The simulation and the
//! live mode ([`super::live`]) draw them here, so both see the same calls.

use super::rng::SplitMix64;
use super::trace::Trace;
use super::{Arrivals, Options};

/// A minute of the trace, in nanoseconds.
pub(crate) const MINUTE_NS: u64 = 60_000_000_000;

/// One call: when it arrives (nanoseconds from the start of the replay), the
/// index of its function in the trace, and how long it runs (nanoseconds),
/// both divided by [`Options::speed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Call {
    pub(crate) at: u64,
    pub(crate) function: u32,
    pub(crate) duration: u64,
}

/// Draws the calls of a trace, minute after minute.
pub(crate) struct CallSource<'a> {
    trace: &'a Trace,
    arrivals: Arrivals,
    speed: f64,
    rng: SplitMix64,
}

impl<'a> CallSource<'a> {
    pub(crate) fn new(trace: &'a Trace, options: &Options) -> CallSource<'a> {
        CallSource {
            trace,
            arrivals: options.arrivals,
            speed: options.speed,
            rng: SplitMix64::new(options.seed),
        }
    }

    /// Replaces `calls` with those of `minute`, in order of arrival.
    pub(crate) fn minute(&mut self, minute: usize, calls: &mut Vec<Call>) {
        calls.clear();
        let start = minute as u64 * MINUTE_NS;
        for (index, function) in self.trace.functions.iter().enumerate() {
            let count = u64::from(function.per_minute[minute]);
            for call in 0..count {
                let at = start
                    + match self.arrivals {
                        Arrivals::Uniform => self.rng.below(MINUTE_NS),
                        Arrivals::Equidistant => call * MINUTE_NS / count,
                    };
                let duration = function.durations.at(self.rng.unit() * 100.0);
                calls.push(Call {
                    at: self.compress(at),
                    function: index as u32,
                    duration: self.compress(duration),
                });
            }
        }
        calls.sort_unstable();
    }

    /// Every call of the trace.
    pub(crate) fn all(mut self) -> Vec<Call> {
        let mut all = Vec::new();
        let mut minute_calls = Vec::new();
        for minute in 0..self.trace.minutes() {
            self.minute(minute, &mut minute_calls);
            all.append(&mut minute_calls);
        }
        all
    }

    /// `ns` of trace time in the replay's time.
    fn compress(&self, ns: u64) -> u64 {
        compress(ns, self.speed)
    }
}

/// `ns` of trace time, `speed` times faster.
pub(crate) fn compress(ns: u64, speed: f64) -> u64 {
    if speed == 1.0 {
        ns
    } else {
        (ns as f64 / speed).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::simulate;
    use crate::replay::trace::testing::{TestFunction, write};

    fn trace(calls: Vec<(usize, u32)>) -> Trace {
        let dir = tempfile::tempdir().unwrap();
        let function = TestFunction {
            name: "f",
            calls,
            duration_ms: 1000.0,
            memory_mb: 1024,
        };
        Trace::load(&write(dir.path(), &[function])).unwrap()
    }

    fn options(speed: f64) -> Options {
        Options {
            policy: "fixed:30s".parse().unwrap(),
            speed,
            ..Options::default()
        }
    }

    #[test]
    fn a_faster_replay_divides_arrival_times_and_durations() {
        let trace = trace(vec![(0, 3), (1, 2), (5, 1)]);
        let slow = CallSource::new(&trace, &options(1.0)).all();
        let fast = CallSource::new(&trace, &options(10.0)).all();
        assert_eq!(slow.len(), 6);
        for (slow, fast) in slow.iter().zip(&fast) {
            assert_eq!(fast.at, compress(slow.at, 10.0));
            assert_eq!(fast.duration, 100_000_000, "1 s / 10");
        }
        assert!(fast.iter().all(|call| call.at < 6 * MINUTE_NS / 10));
        assert!(fast.windows(2).all(|pair| pair[0].at <= pair[1].at));
    }

    #[test]
    fn a_slice_at_speed_ten_is_simulated_over_its_own_shorter_span() {
        // One call a minute for ten minutes; a 30 s keep-alive.
        let day = trace((100..110).map(|minute| (minute, 1)).collect());
        let slice = day.slice(None, 100..110).unwrap();
        let equidistant = |speed| Options {
            arrivals: Arrivals::Equidistant,
            ..options(speed)
        };
        let slow = simulate(&slice, &equidistant(1.0), |_| {}).unwrap();
        assert_eq!((slow.invocations, slow.container_starts), (10, 10));
        // At speed 10 the calls come 6 s apart: one container serves them all,
        // from 0 until the span ends at 60 s.
        let fast = simulate(&slice, &equidistant(10.0), |_| {}).unwrap();
        assert_eq!((fast.invocations, fast.container_starts), (10, 1));
        assert!((fast.total_gb_s - 60.0).abs() < 1e-6, "{fast:?}");
        // Busy: the 250 ms start and ten calls of 100 ms.
        assert!(
            (fast.idle_gb_s - (60.0 - 0.25 - 1.0)).abs() < 1e-6,
            "{fast:?}"
        );
    }
}
