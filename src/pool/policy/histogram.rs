//! The hybrid histogram keep-alive of Shahrad et al., "Serverless in the Wild:
//! Characterizing and Optimizing the Serverless Workload at a Large Cloud
//! Provider" (USENIX ATC 2020), as hotpool reads it.
//!
//! Per function, a histogram of idle times (IT: from the moment no call of the
//! function runs to the next call; 0 when a call arrives while another runs) in
//! one-minute bins over four hours. When it is representative, a call's end
//! unloads the function, a container is prewarmed at the 5th percentile of IT
//! (less a 10% margin) and kept until the 99th (plus 10%); when the 5th
//! percentile is 0, the container simply stays until then. While the histogram
//! is not representative (too few idle times, too many beyond four hours, or
//! bin counts too even to predict from), a fixed keep-alive applies.
//!
//! What it hands on ([`HistogramLearned`]) is the histogram and how long the
//! function has been idle.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Found, KeepAlivePolicy, Learned, after, aged};

/// The width of a bin.
const BIN: Duration = Duration::from_secs(60);
/// Four hours of bins.
const BINS: usize = 240;
/// Idle times recorded before the histogram is trusted.
const MIN_SAMPLES: u32 = 10;
/// The coefficient of variation of bin counts under which the histogram predicts
/// nothing (the paper's threshold).
const MIN_CV: f64 = 2.0;
/// The share of idle times beyond four hours over which the histogram is not
/// representative.
const MAX_OUT_OF_BOUNDS: f64 = 0.5;
/// The margin taken off the prewarm window and added to the keep-alive window.
const MARGIN: f64 = 0.1;
/// The keep-alive while the histogram is not representative.
const FALLBACK: Duration = Duration::from_secs(600);

/// The prewarm and keep-alive windows, both counted from the last call's end.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Windows {
    prewarm: Duration,
    keep_alive: Duration,
}

#[derive(Debug)]
pub(crate) struct HybridHistogram {
    bins: Vec<u32>,
    out_of_bounds: u32,
    samples: u32,
    /// Calls in flight, as last told.
    running: usize,
    /// When the function last became idle (no call running).
    idle_since: Option<Instant>,
    windows: Option<Windows>,
}

impl HybridHistogram {
    pub(crate) fn new() -> HybridHistogram {
        HybridHistogram {
            bins: vec![0; BINS],
            out_of_bounds: 0,
            samples: 0,
            running: 0,
            idle_since: None,
            windows: None,
        }
    }

    fn record(&mut self, idle_time: Duration) {
        self.samples += 1;
        let bin = (idle_time.as_secs() / BIN.as_secs()) as usize;
        match self.bins.get_mut(bin) {
            Some(count) => *count += 1,
            None => self.out_of_bounds += 1,
        }
        self.windows = self.representative().then(|| self.windows_now());
    }

    fn representative(&self) -> bool {
        if self.samples < MIN_SAMPLES
            || f64::from(self.out_of_bounds) > MAX_OUT_OF_BOUNDS * f64::from(self.samples)
        {
            return false;
        }
        let mean = self.bins.iter().map(|&c| f64::from(c)).sum::<f64>() / BINS as f64;
        let variance = self
            .bins
            .iter()
            .map(|&c| (f64::from(c) - mean).powi(2))
            .sum::<f64>()
            / BINS as f64;
        mean > 0.0 && variance.sqrt() / mean >= MIN_CV
    }

    /// The 5th percentile less the margin, and the 99th plus it.
    fn windows_now(&self) -> Windows {
        let in_bounds: u32 = self.bins.iter().sum();
        let percentile = |p: f64| {
            let target = (p * f64::from(in_bounds)).ceil().max(1.0) as u32;
            let mut seen = 0;
            self.bins
                .iter()
                .position(|&count| {
                    seen += count;
                    seen >= target
                })
                .unwrap_or(BINS - 1)
        };
        let head = BIN * percentile(0.05) as u32;
        let tail = BIN * (percentile(0.99) as u32 + 1);
        Windows {
            prewarm: head.mul_f64(1.0 - MARGIN),
            keep_alive: tail.mul_f64(1.0 + MARGIN),
        }
    }

    /// The windows, and when the function became idle, while it is idle.
    fn idle_windows(&self) -> Option<(Instant, Windows)> {
        Some((self.idle_since?, self.windows?)).filter(|_| self.running == 0)
    }
}

impl KeepAlivePolicy for HybridHistogram {
    fn call_arrived(&mut self, now: Instant, _: Found, level: usize) {
        match self.idle_since.filter(|_| level == 1) {
            Some(since) => self.record(now.saturating_duration_since(since)),
            // Another call runs: the function was never idle.
            None if level > 1 => self.record(Duration::ZERO),
            None => {}
        }
        self.running = level;
    }

    fn call_returned(&mut self, now: Instant, in_flight: usize) {
        self.running = in_flight;
        if in_flight == 0 {
            self.idle_since = Some(now);
        }
    }

    fn idle_removed(&mut self, _: Instant, _: usize) {}

    fn idle_until(&self, idle_since: Instant, _: usize) -> Instant {
        let Some(windows) = self.windows else {
            return after(idle_since, FALLBACK);
        };
        match self.idle_since.filter(|_| self.running == 0) {
            // Unloaded at the call's end, unless it is the prewarmed one.
            Some(since) if windows.prewarm > Duration::ZERO => {
                if idle_since >= after(since, windows.prewarm) {
                    after(since, windows.keep_alive)
                } else {
                    idle_since
                }
            }
            Some(since) => after(since, windows.keep_alive),
            None => after(idle_since, windows.keep_alive),
        }
    }

    fn prewarm(&self, now: Instant) -> usize {
        match self.idle_windows() {
            Some((since, windows)) if windows.prewarm > Duration::ZERO => usize::from(
                after(since, windows.prewarm) <= now && now < after(since, windows.keep_alive),
            ),
            _ => 0,
        }
    }

    fn next_change(&self, now: Instant) -> Option<Instant> {
        let (since, windows) = self.idle_windows()?;
        if windows.prewarm == Duration::ZERO {
            return None;
        }
        [
            after(since, windows.prewarm),
            after(since, windows.keep_alive),
        ]
        .into_iter()
        .find(|at| *at > now)
    }

    fn learned(&self, now: Instant) -> Option<Learned> {
        Some(Learned::Histogram(HistogramLearned {
            bins: self.bins.clone(),
            out_of_bounds: self.out_of_bounds,
            samples: self.samples,
            idle_for: self
                .idle_since
                .filter(|_| self.running == 0)
                .map(|since| now.saturating_duration_since(since)),
        }))
    }

    fn restore(&mut self, learned: Learned, now: Instant) -> Result<(), String> {
        let Learned::Histogram(learned) = learned else {
            return Err("learned by another policy".into());
        };
        if learned.bins.len() != BINS {
            return Err(format!("{} bins, not {BINS}", learned.bins.len()));
        }
        let counted: u64 = learned.bins.iter().map(|&c| u64::from(c)).sum::<u64>()
            + u64::from(learned.out_of_bounds);
        if counted != u64::from(learned.samples) {
            return Err(format!(
                "{counted} idle times counted, {} recorded",
                learned.samples
            ));
        }
        self.bins = learned.bins;
        self.out_of_bounds = learned.out_of_bounds;
        self.samples = learned.samples;
        self.running = 0;
        self.idle_since = aged(now, learned.idle_for);
        self.windows = self.representative().then(|| self.windows_now());
        Ok(())
    }
}

/// What a [`HybridHistogram`] learned, its times as ages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HistogramLearned {
    bins: Vec<u32>,
    out_of_bounds: u32,
    samples: u32,
    /// How long no call had run; `None` if one ran.
    idle_for: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// A function called once every `gap`, each call taking a second, `calls`
    /// times from `start`; returns when the last call ended.
    fn periodic(
        policy: &mut HybridHistogram,
        start: Instant,
        gap: Duration,
        calls: u32,
    ) -> Instant {
        let mut now = start;
        for _ in 0..calls {
            policy.call_arrived(now, Found::Nothing, 1);
            now += Duration::from_secs(1);
            policy.call_returned(now, 0);
            now += gap;
        }
        now - gap
    }

    #[test]
    fn a_regular_function_is_unloaded_then_prewarmed_before_its_next_call() {
        let start = Instant::now();
        let mut policy = HybridHistogram::new();
        let ended = periodic(&mut policy, start, 30 * MINUTE, 20);
        let windows = policy.windows.expect("representative");
        assert_eq!(windows.prewarm, (30 * MINUTE).mul_f64(0.9));
        assert_eq!(windows.keep_alive, (31 * MINUTE).mul_f64(1.1));
        assert_eq!(
            policy.idle_until(ended, 1),
            ended,
            "unloaded at the call's end"
        );
        assert_eq!(policy.prewarm(ended + MINUTE), 0);
        let prewarm_at = ended + windows.prewarm;
        assert_eq!(policy.next_change(ended), Some(prewarm_at));
        assert_eq!(policy.prewarm(prewarm_at), 1);
        assert_eq!(
            policy.idle_until(prewarm_at + Duration::from_secs(1), 1),
            ended + windows.keep_alive,
            "the prewarmed container stays to the end of the window"
        );
    }

    #[test]
    fn overlapping_calls_collapse_idle_times_to_zero() {
        let start = Instant::now();
        let mut policy = HybridHistogram::new();
        for i in 0..20 {
            let now = start + Duration::from_secs(i);
            policy.call_arrived(now, Found::Nothing, 1);
            policy.call_arrived(now, Found::Nothing, 2);
            policy.call_returned(now, 1);
            policy.call_returned(now, 0);
        }
        let windows = policy.windows.expect("representative");
        assert_eq!(windows.prewarm, Duration::ZERO, "no prewarm");
        assert_eq!(windows.keep_alive, MINUTE.mul_f64(1.1), "the first bin");
    }

    #[test]
    fn too_few_idle_times_fall_back_to_the_fixed_keep_alive() {
        let start = Instant::now();
        let mut policy = HybridHistogram::new();
        let ended = periodic(&mut policy, start, 30 * MINUTE, 3);
        assert_eq!(policy.idle_until(ended, 1), ended + FALLBACK);
        assert_eq!(policy.prewarm(ended + 29 * MINUTE), 0);
    }

    #[test]
    fn a_histogram_handed_on_unloads_and_prewarms_alike() {
        let start = Instant::now();
        let mut policy = HybridHistogram::new();
        let ended = periodic(&mut policy, start, 30 * MINUTE, 20);
        let at = ended + MINUTE;
        let json = serde_json::to_string(&policy.learned(at).unwrap()).unwrap();
        let shift = Duration::from_secs(3600);
        let mut next = HybridHistogram::new();
        next.restore(serde_json::from_str(&json).unwrap(), at + shift)
            .unwrap();
        assert_eq!(next.windows, policy.windows);
        assert!(next.windows.is_some(), "representative");
        let prewarm_at = ended + policy.windows.unwrap().prewarm;
        assert_eq!(next.next_change(at + shift), Some(prewarm_at + shift));
        assert_eq!(next.prewarm(prewarm_at + shift), 1);
        assert_eq!(next.idle_until(ended + shift, 1), ended + shift, "unloaded");
        assert_eq!(
            HybridHistogram::new().idle_until(ended, 1),
            ended + FALLBACK,
            "a fresh one keeps it"
        );
    }

    #[test]
    fn a_histogram_whose_counts_do_not_add_up_is_refused() {
        let mut policy = HybridHistogram::new();
        periodic(&mut policy, Instant::now(), 30 * MINUTE, 20);
        let Some(Learned::Histogram(mut learned)) = policy.learned(Instant::now()) else {
            panic!("the histogram learns");
        };
        learned.samples += 1;
        let mut next = HybridHistogram::new();
        assert!(
            next.restore(Learned::Histogram(learned), Instant::now())
                .is_err()
        );
        assert_eq!(next.samples, 0);
    }
}
