//! Resource samples of a running task, and how they are down-sampled.
//!
//! A driver emits one [`Stat`] per engine sample (about one a second). A call keeps
//! its samples, [`decimate`]s them to at most `max` points and [`average`]s them into
//! the [`CallStats`] that metrics and callers see; calls shorter than the engine's
//! sampling interval get their figures from the container's counters ([`Usage`]). This is fn's `Stat`/`Decimate` with the
//! flaw its comment admits fixed: the output never exceeds `max` points, and samples
//! spread evenly in time yield exactly `max`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// Well-known metric names that drivers put in a [`Stat`].
pub mod names {
    /// CPU used, in cores (1.0 is one core busy all the time).
    pub const CPU_RATIO: &str = "cpu_ratio";
    /// Memory in use, in bytes (page cache that can be dropped excluded).
    pub const MEMORY_BYTES: &str = "memory_bytes";
    /// Bytes received over the network.
    pub const NET_RX_BYTES: &str = "net_rx_bytes";
    /// Bytes sent over the network.
    pub const NET_TX_BYTES: &str = "net_tx_bytes";
    /// Bytes read from block devices.
    pub const BLOCK_READ_BYTES: &str = "block_read_bytes";
    /// Bytes written to block devices.
    pub const BLOCK_WRITE_BYTES: &str = "block_write_bytes";
}

/// A bucket of metrics from a driver at one point in time, for one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stat {
    /// When the sample was taken.
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    /// Metric name to value; see [`names`]. Names are usually `'static`, so a
    /// sample costs one allocation.
    pub metrics: BTreeMap<Cow<'static, str>, f64>,
}

fn rfc3339<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_nanos(*time))
}

fn nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos()
}

fn from_nanos(nanos: u128) -> SystemTime {
    let secs = (nanos / 1_000_000_000) as u64;
    UNIX_EPOCH + Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

/// Averages samples into one: the mean timestamp, and for each metric the mean over
/// the samples that have it. `None` for no samples.
pub fn average(samples: &[Stat]) -> Option<Stat> {
    let count = samples.len();
    if count == 0 {
        return None;
    }
    let time_sum: u128 = samples.iter().map(|s| nanos(s.timestamp)).sum();
    let mut sums: BTreeMap<&Cow<'static, str>, (f64, u32)> = BTreeMap::new();
    for sample in samples {
        for (name, value) in &sample.metrics {
            let entry = sums.entry(name).or_default();
            entry.0 += value;
            entry.1 += 1;
        }
    }
    Some(Stat {
        timestamp: from_nanos(time_sum / count as u128),
        metrics: sums
            .into_iter()
            .map(|(name, (sum, n))| (name.clone(), sum / f64::from(n)))
            .collect(),
    })
}

/// Down-samples to at most `max` points by averaging samples that fall in the same
/// window of time. The span from the first to the last timestamp is cut into `max`
/// equal windows; each non-empty window becomes one point (so gaps in time give
/// fewer points), and samples spread evenly in time give exactly `max`. Input of
/// `max` points or fewer comes back as it is; `max == 0` gives nothing. Input need
/// not be sorted: it is sorted by timestamp first.
pub fn decimate(max: usize, mut samples: Vec<Stat>) -> Vec<Stat> {
    if max == 0 {
        return Vec::new();
    }
    samples.sort_by_key(|s| s.timestamp);
    if samples.len() <= max {
        return samples;
    }
    windows(max, &samples)
        .into_iter()
        .filter_map(|window| average(&samples[window]))
        .collect()
}

/// The contiguous, non-empty index ranges of sorted `samples` that [`decimate`]
/// averages, in order. Needs `samples.len() > max > 0`.
fn windows(max: usize, samples: &[Stat]) -> Vec<Range<usize>> {
    let count = samples.len();
    let first = nanos(samples[0].timestamp);
    let span = nanos(samples[count - 1].timestamp) - first;
    let bucket = |index: usize| -> usize {
        let offset = nanos(samples[index].timestamp) - first;
        match (offset * max as u128).checked_div(span) {
            Some(by_time) => (by_time as usize).min(max - 1),
            // All at one instant: spread by position instead of by time.
            None => index * max / count,
        }
    };
    let mut ranges = Vec::with_capacity(max);
    let mut start = 0;
    let mut current = bucket(0);
    for index in 1..count {
        let b = bucket(index);
        if b != current {
            ranges.push(start..index);
            start = index;
            current = b;
        }
    }
    ranges.push(start..count);
    ranges
}

/// What a call used, measured from the container's own counters (cgroup) at the
/// call's start and end: exact however short the call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Usage {
    /// CPU time over wall time, in cores.
    pub cpu_ratio: f64,
    /// CPU time the container used during the call, in seconds.
    pub cpu_seconds: f64,
    /// The container's memory in use at the call's end.
    pub memory_bytes: u64,
}

/// The stats of one call: the engine's samples taken while it ran, decimated and
/// averaged, and what the container's counters say it used.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CallStats {
    /// How many samples the engine delivered during the call, before decimation.
    pub sample_count: usize,
    /// The decimated samples, ascending in time.
    pub samples: Vec<Stat>,
    /// The average of all samples, if there were any.
    pub average: Option<Stat>,
    /// The counters' view, where the driver can read them.
    pub usage: Option<Usage>,
}

impl CallStats {
    /// Decimates `samples` to at most `max` points and averages them.
    pub fn new(max: usize, samples: Vec<Stat>, usage: Option<Usage>) -> CallStats {
        let sample_count = samples.len();
        let average = average(&samples);
        CallStats {
            sample_count,
            samples: decimate(max, samples),
            average,
            usage,
        }
    }

    fn averaged(&self, name: &str) -> Option<f64> {
        self.average.as_ref()?.metrics.get(name).copied()
    }

    /// CPU use in cores: the counters' exact figure, else the samples' average.
    pub fn cpu_ratio(&self) -> Option<f64> {
        self.usage
            .map(|u| u.cpu_ratio)
            .or_else(|| self.averaged(names::CPU_RATIO))
    }

    /// Memory in use: the samples' average, else the counters' reading at the end.
    pub fn memory_bytes(&self) -> Option<f64> {
        self.averaged(names::MEMORY_BYTES)
            .or_else(|| self.usage.map(|u| u.memory_bytes as f64))
    }

    /// Whether there is anything to report.
    pub fn is_empty(&self) -> bool {
        self.sample_count == 0 && self.usage.is_none()
    }

    /// The compact form of the `Hotpool-Stats` header:
    /// `cpu_ratio=0.0123; memory_bytes=1048576; samples=0`.
    pub fn header_value(&self) -> String {
        let mut parts = Vec::with_capacity(4);
        if let Some(cpu) = self.cpu_ratio() {
            parts.push(format!("cpu_ratio={cpu:.4}"));
        }
        if let Some(memory) = self.memory_bytes() {
            parts.push(format!("memory_bytes={memory:.0}"));
        }
        parts.push(format!("samples={}", self.sample_count));
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stat(at_ms: u64, metrics: &[(&str, f64)]) -> Stat {
        Stat {
            timestamp: UNIX_EPOCH + Duration::from_millis(at_ms),
            metrics: metrics
                .iter()
                .map(|(k, v)| (Cow::Owned(k.to_string()), *v))
                .collect(),
        }
    }

    fn series(times_ms: &[u64]) -> Vec<Stat> {
        times_ms
            .iter()
            .enumerate()
            .map(|(i, t)| stat(*t, &[("index", i as f64)]))
            .collect()
    }

    #[test]
    fn call_stats_prefer_exact_counters_for_cpu_and_samples_for_memory() {
        let usage = Usage {
            cpu_ratio: 0.5,
            cpu_seconds: 0.001,
            memory_bytes: 100,
        };
        let counters_only = CallStats::new(240, Vec::new(), Some(usage));
        assert_eq!(counters_only.cpu_ratio(), Some(0.5));
        assert_eq!(counters_only.memory_bytes(), Some(100.0));
        assert_eq!(
            counters_only.header_value(),
            "cpu_ratio=0.5000; memory_bytes=100; samples=0"
        );
        let samples = vec![stat(0, &[("cpu_ratio", 1.0), ("memory_bytes", 200.0)])];
        let both = CallStats::new(240, samples.clone(), Some(usage));
        assert_eq!(
            (both.cpu_ratio(), both.memory_bytes()),
            (Some(0.5), Some(200.0))
        );
        let samples_only = CallStats::new(240, samples, None);
        assert_eq!(samples_only.cpu_ratio(), Some(1.0));
        assert!(CallStats::new(240, Vec::new(), None).is_empty());
    }

    #[test]
    fn average_of_nothing_is_none() {
        assert_eq!(average(&[]), None);
    }

    #[test]
    fn average_takes_each_metric_over_the_samples_that_have_it() {
        let samples = [
            stat(1000, &[("a", 2.0), ("b", 10.0)]),
            stat(3000, &[("a", 4.0)]),
        ];
        let mean = average(&samples).unwrap();
        assert_eq!(mean.timestamp, UNIX_EPOCH + Duration::from_millis(2000));
        assert_eq!(mean.metrics["a"], 3.0);
        assert_eq!(mean.metrics["b"], 10.0);
    }

    #[test]
    fn the_seed_example_480_to_240() {
        let input = series(&(0..480).map(|i| i * 1000).collect::<Vec<_>>());
        let out = decimate(240, input);
        assert_eq!(out.len(), 240);
    }

    #[test]
    fn short_input_comes_back_sorted() {
        let out = decimate(10, series(&[30, 10, 20]));
        let times: Vec<_> = out.iter().map(|s| nanos(s.timestamp)).collect();
        assert_eq!(times, vec![10_000_000, 20_000_000, 30_000_000]);
    }

    #[test]
    fn a_gap_gives_fewer_points() {
        // Ten samples at the start, one at the end: the middle windows are empty.
        let mut times: Vec<u64> = (0..10).collect();
        times.push(1_000_000);
        assert_eq!(decimate(5, series(&times)).len(), 2);
    }

    #[test]
    fn one_instant_is_spread_by_position() {
        let out = decimate(4, series(&[7; 10]));
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn max_zero_and_empty_input() {
        assert!(decimate(0, series(&[1, 2, 3])).is_empty());
        assert!(decimate(5, Vec::new()).is_empty());
    }

    fn arbitrary_series() -> impl Strategy<Value = Vec<Stat>> {
        prop::collection::vec((0u64..10_000, -1e6f64..1e6), 0..400).prop_map(|points| {
            points
                .into_iter()
                .map(|(t, v)| stat(t, &[("v", v)]))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn never_more_than_max(max in 0usize..300, input in arbitrary_series()) {
            let n = input.len();
            let out = decimate(max, input);
            prop_assert!(out.len() <= max);
            prop_assert!(out.len() <= n);
            if max > 0 && n > 0 {
                prop_assert!(!out.is_empty());
            }
        }

        #[test]
        fn timestamps_ascend(max in 1usize..300, input in arbitrary_series()) {
            let out = decimate(max, input);
            prop_assert!(out.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        }

        #[test]
        fn each_point_averages_a_contiguous_window(max in 1usize..100, input in arbitrary_series()) {
            let mut sorted = input.clone();
            sorted.sort_by_key(|s| s.timestamp);
            let out = decimate(max, input);
            if sorted.len() > max {
                let ranges = windows(max, &sorted);
                // The windows tile the input, in order, without gaps or overlaps.
                prop_assert_eq!(ranges.first().map(|r| r.start), Some(0));
                prop_assert_eq!(ranges.last().map(|r| r.end), Some(sorted.len()));
                prop_assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
                prop_assert!(ranges.iter().all(|r| !r.is_empty()));
                prop_assert_eq!(ranges.len(), out.len());
                for (range, point) in ranges.into_iter().zip(&out) {
                    prop_assert_eq!(Some(point.clone()), average(&sorted[range]));
                }
            } else {
                prop_assert_eq!(out, sorted);
            }
        }

        #[test]
        fn evenly_spread_input_yields_exactly_max(
            max in 1usize..300, extra in 1usize..2000, step_ms in 1u64..5000, start in 0u64..1_000_000,
        ) {
            let count = max + extra;
            let times: Vec<u64> = (0..count as u64).map(|i| start + i * step_ms).collect();
            prop_assert_eq!(decimate(max, series(&times)).len(), max);
        }

        #[test]
        fn a_constant_series_stays_constant(
            max in 1usize..100, times in prop::collection::vec(0u64..100_000, 1..500), value in -1e9f64..1e9,
        ) {
            let input: Vec<Stat> = times.iter().map(|t| stat(*t, &[("v", value)])).collect();
            for point in decimate(max, input) {
                prop_assert!((point.metrics["v"] - value).abs() <= value.abs() * 1e-12);
            }
        }
    }
}
