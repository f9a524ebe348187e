//! The engine's stats stream, turned into [`Stat`] samples.
//!
//! Each engine sample carries the current and previous CPU counters, so the CPU
//! ratio is the container's share of the host's CPU time between the two, scaled
//! by the number of online CPUs (1.0 = one core busy). Memory excludes inactive
//! file cache, as `docker stats` does.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bollard::models::{ContainerBlkioStatEntry, ContainerStatsResponse};

use crate::stats::{Stat, names};

/// Converts one engine sample; `None` when it carries no data (a stopped container).
pub(crate) fn to_stat(sample: &ContainerStatsResponse, now: SystemTime) -> Option<Stat> {
    let mut metrics = BTreeMap::new();
    if let Some(ratio) = cpu_ratio(sample) {
        metrics.insert(names::CPU_RATIO.into(), ratio);
    }
    if let Some(memory) = &sample.memory_stats
        && let Some(usage) = memory.usage
    {
        let inactive = memory.stats.as_ref().and_then(|s| {
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
                .copied()
        });
        let used = usage.saturating_sub(inactive.unwrap_or(0));
        metrics.insert(names::MEMORY_BYTES.into(), used as f64);
    }
    if let Some(networks) = &sample.networks {
        let rx: u64 = networks.values().filter_map(|n| n.rx_bytes).sum();
        let tx: u64 = networks.values().filter_map(|n| n.tx_bytes).sum();
        metrics.insert(names::NET_RX_BYTES.into(), rx as f64);
        metrics.insert(names::NET_TX_BYTES.into(), tx as f64);
    }
    if let Some(entries) = sample
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.as_ref())
    {
        metrics.insert(names::BLOCK_READ_BYTES.into(), sum_op(entries, "read"));
        metrics.insert(names::BLOCK_WRITE_BYTES.into(), sum_op(entries, "write"));
    }
    (!metrics.is_empty()).then_some(Stat {
        timestamp: now,
        metrics,
    })
}

fn sum_op(entries: &[ContainerBlkioStatEntry], op: &str) -> f64 {
    entries
        .iter()
        .filter(|e| e.op.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(op)))
        .filter_map(|e| e.value)
        .sum::<u64>() as f64
}

fn cpu_ratio(sample: &ContainerStatsResponse) -> Option<f64> {
    let now = sample.cpu_stats.as_ref()?;
    let before = sample.precpu_stats.as_ref()?;
    let system_before = before.system_cpu_usage.filter(|v| *v > 0)?;
    let system_delta = now.system_cpu_usage?.checked_sub(system_before)?;
    let usage_now = now.cpu_usage.as_ref()?.total_usage?;
    let usage_before = before.cpu_usage.as_ref()?.total_usage?;
    let usage_delta = usage_now.checked_sub(usage_before)?;
    if system_delta == 0 {
        return None;
    }
    let cpus = now.online_cpus.filter(|n| *n > 0).unwrap_or(1);
    Some(usage_delta as f64 / system_delta as f64 * f64::from(cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample as Docker 20.10 (cgroup v1) streams it, trimmed.
    const SAMPLE: &str = r#"{
        "read": "2026-11-29T06:00:01.5Z",
        "cpu_stats": {"cpu_usage": {"total_usage": 3000000000}, "system_cpu_usage": 20000000000, "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": 2000000000}, "system_cpu_usage": 18000000000, "online_cpus": 2},
        "memory_stats": {"usage": 40000000, "stats": {"total_inactive_file": 5000000}, "limit": 67108864},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 8, "minor": 0, "op": "Read", "value": 4096},
            {"major": 8, "minor": 0, "op": "Write", "value": 8192},
            {"major": 8, "minor": 0, "op": "Total", "value": 12288}]}
    }"#;

    #[test]
    fn converts_an_engine_sample() {
        let sample: ContainerStatsResponse = serde_json::from_str(SAMPLE).unwrap();
        let stat = to_stat(&sample, SystemTime::UNIX_EPOCH).unwrap();
        // 1e9 ns of container CPU over 2e9 ns of host CPU, on 2 CPUs: one core.
        assert_eq!(stat.metrics[names::CPU_RATIO], 1.0);
        assert_eq!(stat.metrics[names::MEMORY_BYTES], 35_000_000.0);
        assert_eq!(stat.metrics[names::BLOCK_READ_BYTES], 4096.0);
        assert_eq!(stat.metrics[names::BLOCK_WRITE_BYTES], 8192.0);
        assert!(!stat.metrics.contains_key(names::NET_RX_BYTES));
    }

    #[test]
    fn the_first_sample_has_no_cpu_ratio() {
        let mut sample: ContainerStatsResponse = serde_json::from_str(SAMPLE).unwrap();
        sample.precpu_stats = None;
        let stat = to_stat(&sample, SystemTime::UNIX_EPOCH).unwrap();
        assert!(!stat.metrics.contains_key(names::CPU_RATIO));
    }

    #[test]
    fn an_empty_sample_is_none() {
        let sample: ContainerStatsResponse = serde_json::from_str("{}").unwrap();
        assert_eq!(to_stat(&sample, SystemTime::UNIX_EPOCH), None);
    }
}
