//! What `hotpool bench` records of one mode: each call's latency, the time its
//! rounds took, and the CPU time hotpool's process spent meanwhile.

use std::time::{Duration, Instant};

use serde_json::json;

/// Latencies of one mode, the time its calls took, and the CPU time hotpool's
/// process spent meanwhile (all its threads).
#[derive(Default)]
pub(super) struct Samples {
    pub(super) latencies: Vec<Duration>,
    elapsed: Duration,
    cpu: Duration,
}

impl Samples {
    pub(super) fn percentile(&self, p: usize) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }

    /// The p50 and the p99.
    pub(super) fn p50_p99(&self) -> (Duration, Duration) {
        (self.percentile(50), self.percentile(99))
    }

    pub(super) fn calls_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// hotpool's CPU time per call, in microseconds: unlike latency, it hardly
    /// moves with the machine's load.
    pub(super) fn cpu_us_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.latencies.len().max(1) as f64
    }

    pub(super) fn json(&self) -> serde_json::Value {
        json!({
            "p50_us": self.percentile(50).as_micros(),
            "p99_us": self.percentile(99).as_micros(),
            "calls_per_s": (self.calls_per_s() * 10.0).round() / 10.0,
            "cpu_us_per_call": (self.cpu_us_per_call() * 10.0).round() / 10.0,
        })
    }
}

/// The CPU time of this process so far, over all its threads.
pub(crate) fn process_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill in.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Adds one mode's round to its samples.
pub(super) async fn timed(
    samples: &mut Samples,
    round: impl Future<Output = Result<Vec<Vec<Duration>>, String>>,
) -> Result<(), String> {
    let (start, cpu_start) = (Instant::now(), process_cpu_time());

    let latencies = round.await?;
    samples.elapsed += start.elapsed();
    samples.cpu += process_cpu_time().saturating_sub(cpu_start);
    samples.latencies.extend(latencies.into_iter().flatten());
    Ok(())
}
