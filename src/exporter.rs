//! The Prometheus recorder of `hotpool serve`: histograms with explicit buckets
//! (never summaries), every metric described, rendered for `/metrics`.

use hotpool::metrics::{LOG_DROPPED_TOTAL, TASK_CPU_RATIO, TASK_MEMORY_BYTES};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of latency histograms, in seconds: 100 µs to 60 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    15.0, 60.0,
];
/// Buckets of per-call CPU use, in cores.
const CPU_BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0];
/// Buckets of per-call memory use, in bytes: 1 MiB to 4 GiB.
const MEMORY_BUCKETS: [f64; 10] = [
    1048576.0,
    4194304.0,
    16777216.0,
    33554432.0,
    67108864.0,
    134217728.0,
    268435456.0,
    536870912.0,
    1073741824.0,
    4294967296.0,
];

/// Installs the Prometheus recorder (histograms with explicit buckets, never
/// summaries) and describes every metric; render `/metrics` from the handle.
pub(crate) fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TASK_CPU_RATIO.into()), &CPU_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TASK_MEMORY_BYTES.into()), &MEMORY_BUCKETS)?
        .install_recorder()?;
    hotpool::metrics::describe();
    // Exported from the start, so a dashboard shows 0 rather than nothing.
    metrics::counter!(LOG_DROPPED_TOTAL).absolute(0);
    Ok(handle)
}
