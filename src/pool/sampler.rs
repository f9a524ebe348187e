//! A long call's samples, taken from its container's counters.
//!
//! The engine's stats stream makes the engine work every second for every
//! container it follows, busy or idle: at a thousand hot containers that is most
//! of a core spent on nothing. So where a hot container's cgroup counters are
//! readable, no stream follows it: a call that runs past a second samples the
//! counters itself, once a second, into the same stats thread the engine's
//! samples go to, and an idle container costs the engine nothing. Where they are
//! not readable (an engine on another host), the driver follows the engine's
//! stream instead and this sampler waits forever.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::driver::{Cookie, StatSink};
use crate::stats::{Stat, names};

/// How often a running call's counters are sampled: the engine's own interval.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Samples `cookie`'s counters every [`SAMPLE_INTERVAL`] after `started`, when
/// its CPU counter read `cpu_before`, into the sink `sink` makes (only once a
/// sample is due, so a short call makes none). Never ends; waits forever at
/// once where there are no counters.
pub(crate) async fn sample_counters(
    cookie: &impl Cookie,
    cpu_before: Option<Duration>,
    started: Instant,
    sink: impl FnOnce() -> StatSink,
) -> Infallible {
    let Some(mut cpu_then) = cpu_before else {
        return std::future::pending().await;
    };
    let (mut then, mut make_sink, mut sink_made) = (started, Some(sink), None);
    loop {
        tokio::time::sleep_until(then + SAMPLE_INTERVAL).await;
        let now = Instant::now();
        let Some(cpu) = cookie.cpu_time() else {
            return std::future::pending().await;
        };
        let wall = now.saturating_duration_since(then).as_secs_f64().max(1e-9);
        let mut metrics = BTreeMap::new();
        metrics.insert(
            names::CPU_RATIO.into(),
            cpu.saturating_sub(cpu_then).as_secs_f64() / wall,
        );
        if let Some(memory) = cookie.memory_bytes() {
            metrics.insert(names::MEMORY_BYTES.into(), memory as f64);
        }
        if let Some(make) = make_sink.take() {
            sink_made = Some(make());
        }
        if let Some(sink) = &sink_made {
            sink(Stat {
                timestamp: SystemTime::now(),
                metrics,
            });
        }
        (cpu_then, then) = (cpu, now);
    }
}
