//! The Prometheus metrics hotpool exports: their names, help texts, units and
//! histogram buckets, and the recorder that renders them for `/metrics`.
//!
//! Everything is emitted through the `metrics` facade; without an installed
//! recorder (the library embedded without one) it costs next to nothing. Labels
//! are bounded: function, outcome, start, state, reason, result, op; never a
//! container or call id.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Calls by function and outcome (`success` or an error kind).
pub const CALLS_TOTAL: &str = "hotpool_calls_total";
/// Call latency by function and start (`hot`, `cold`), successful calls only.
pub const CALL_DURATION_SECONDS: &str = "hotpool_call_duration_seconds";
/// Time calls waited for a container, by function.
pub const CALL_QUEUE_SECONDS: &str = "hotpool_call_queue_seconds";
/// Container starts by function and result.
pub const CONTAINER_STARTS_TOTAL: &str = "hotpool_container_starts_total";
/// Container start latency by function.
pub const CONTAINER_START_SECONDS: &str = "hotpool_container_start_seconds";
/// Containers by function and state (`idle`, `busy`, `starting`).
pub const CONTAINERS: &str = "hotpool_containers";
/// Containers evicted, by function and reason.
pub const EVICTIONS_TOTAL: &str = "hotpool_evictions_total";
/// The memory limits of live containers, added up.
pub const MEMORY_RESERVED_BYTES: &str = "hotpool_memory_reserved_bytes";
/// The pool's memory budget.
pub const MEMORY_BUDGET_BYTES: &str = "hotpool_memory_budget_bytes";
/// Per-call average CPU use in cores, from the decimated engine stats.
pub const TASK_CPU_RATIO: &str = "hotpool_task_cpu_ratio";
/// Per-call average memory use, from the decimated engine stats.
pub const TASK_MEMORY_BYTES: &str = "hotpool_task_memory_bytes";
/// Docker engine API latency by operation and result.
pub const DOCKER_API_SECONDS: &str = "hotpool_docker_api_seconds";
/// Image pulls by result (`success` or an error kind).
pub const IMAGE_PULLS_TOTAL: &str = "hotpool_image_pulls_total";
/// Function stderr bytes not logged, by function and reason (`per_call`, `rate`,
/// `too_long`).
pub const FUNCTION_LOG_DROPPED_BYTES_TOTAL: &str = "hotpool_function_log_dropped_bytes_total";
/// Records of hotpool's own log dropped because its stderr did not keep up.
pub const LOG_DROPPED_TOTAL: &str = "hotpool_log_dropped_total";

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
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TASK_CPU_RATIO.into()), &CPU_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TASK_MEMORY_BYTES.into()), &MEMORY_BUCKETS)?
        .install_recorder()?;
    describe();
    // Exported from the start, so a dashboard shows 0 rather than nothing.
    metrics::counter!(LOG_DROPPED_TOTAL).absolute(0);
    Ok(handle)
}

fn describe() {
    describe_counter!(
        CALLS_TOTAL,
        Unit::Count,
        "Calls by function and outcome (success or an error kind)."
    );
    describe_histogram!(
        CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Latency of successful calls, queueing included, by function and start (hot: a running container; cold: one started for the call)."
    );
    describe_histogram!(
        CALL_QUEUE_SECONDS,
        Unit::Seconds,
        "Time calls waited for a container, by function."
    );
    describe_counter!(
        CONTAINER_STARTS_TOTAL,
        Unit::Count,
        "Container starts by function and result (success or an error kind)."
    );
    describe_histogram!(
        CONTAINER_START_SECONDS,
        Unit::Seconds,
        "Time to start a container (pull, create, attach, start), by function."
    );
    describe_gauge!(
        CONTAINERS,
        Unit::Count,
        "Containers by function and state (idle, busy, starting)."
    );
    describe_counter!(
        EVICTIONS_TOTAL,
        Unit::Count,
        "Containers removed from the pool, by function and reason."
    );
    describe_gauge!(
        MEMORY_RESERVED_BYTES,
        Unit::Bytes,
        "The memory limits of live containers, added up."
    );
    describe_gauge!(
        MEMORY_BUDGET_BYTES,
        Unit::Bytes,
        "The most memory the limits of live containers may add up to."
    );
    describe_histogram!(
        TASK_CPU_RATIO,
        Unit::Count,
        "Average CPU use of a call in cores (1 = one core), from decimated engine stats, by function."
    );
    describe_histogram!(
        TASK_MEMORY_BYTES,
        Unit::Bytes,
        "Average memory use of a call, from decimated engine stats, by function."
    );
    describe_histogram!(
        DOCKER_API_SECONDS,
        Unit::Seconds,
        "Docker engine API latency by operation and result."
    );
    describe_counter!(
        IMAGE_PULLS_TOTAL,
        Unit::Count,
        "Image pulls by result (success or an error kind)."
    );
    describe_counter!(
        FUNCTION_LOG_DROPPED_BYTES_TOTAL,
        Unit::Bytes,
        "Function stderr bytes not logged, by function and reason (per_call: over the call's log_per_call budget; rate: over the container's log_rate; too_long: past 16 KiB in one line)."
    );
    describe_counter!(
        LOG_DROPPED_TOTAL,
        Unit::Count,
        "Records of hotpool's own log dropped because its stderr did not keep up."
    );
}
