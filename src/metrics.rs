//! The metrics hotpool emits: their names, and their help texts and units
//! ([`describe`]). `hotpool serve` renders them for Prometheus.
//!
//! Everything is emitted through the `metrics` facade; without an installed
//! recorder (the library embedded without one) it costs next to nothing. Labels
//! are bounded: function, outcome, start, state, reason, result, op; never a
//! container or call id.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

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
/// Time container starts waited for one of the pool's start turns, by function.
pub const START_WAIT_SECONDS: &str = "hotpool_start_wait_seconds";
/// Containers by function and state (`idle`, `busy`, `starting`).
pub const CONTAINERS: &str = "hotpool_containers";
/// Containers evicted, by function and reason.
pub const EVICTIONS_TOTAL: &str = "hotpool_evictions_total";
/// Containers an earlier owner of the pool left, by function and outcome, as
/// a build found them: `adopted` (taken over), or why one was removed.
pub const ADOPTED_CONTAINERS_TOTAL: &str = "hotpool_adopted_containers_total";
/// The memory limits of live containers, added up.
pub const MEMORY_RESERVED_BYTES: &str = "hotpool_memory_reserved_bytes";
/// The pool's memory budget.
pub const MEMORY_BUDGET_BYTES: &str = "hotpool_memory_budget_bytes";
/// Per-call average CPU use in cores, from the decimated engine stats.
pub const TASK_CPU_RATIO: &str = "hotpool_task_cpu_ratio";
/// Per-call average memory use, from the decimated engine stats.
pub const TASK_MEMORY_BYTES: &str = "hotpool_task_memory_bytes";
/// Container engine API latency by engine (`docker`, `containerd`), operation
/// and result (`success`, `error`, `timeout`).
pub const ENGINE_API_SECONDS: &str = "hotpool_engine_api_seconds";
/// Image pulls by result (`success` or an error kind).
pub const IMAGE_PULLS_TOTAL: &str = "hotpool_image_pulls_total";
/// Prewarmed containers (started before any call asked) by function and outcome:
/// `used` by a call, or `wasted` (removed unused).
pub const PREWARMS_TOTAL: &str = "hotpool_prewarms_total";
/// How many containers a function's warm floor (`min_idle`) lacks because the
/// memory budget cannot hold them, by function.
pub const MIN_IDLE_SHORT: &str = "hotpool_min_idle_short";
/// Function stderr bytes not logged, by function and reason (`per_call`, `rate`,
/// `too_long`).
pub const FUNCTION_LOG_DROPPED_BYTES_TOTAL: &str = "hotpool_function_log_dropped_bytes_total";
/// What the store of recent calls' logs holds, in bytes, each entry's overhead
/// included.
pub const CALL_LOGS_BYTES: &str = "hotpool_call_logs_bytes";
/// Calls' logs dropped from the store to make room, by the call's state then
/// (`succeeded`, `failed`, `running`).
pub const CALL_LOGS_EVICTED_TOTAL: &str = "hotpool_call_logs_evicted_total";
/// Records of hotpool's own log dropped because its stderr did not keep up.
pub const LOG_DROPPED_TOTAL: &str = "hotpool_log_dropped_total";

/// Gives every metric its help text and unit, for whichever recorder is
/// installed (`hotpool serve` installs a Prometheus one).
pub fn describe() {
    describe_counter!(
        PREWARMS_TOTAL,
        Unit::Count,
        "Containers started before any call asked, by function and outcome (used by a call, or wasted: removed unused)."
    );
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
    describe_histogram!(
        START_WAIT_SECONDS,
        Unit::Seconds,
        "Time container starts waited for one of the pool's start turns (at most 16 start at once), prewarms' included, by function."
    );
    describe_gauge!(
        CONTAINERS,
        Unit::Count,
        "Containers by function and state (idle, busy, starting)."
    );
    describe_gauge!(
        MIN_IDLE_SHORT,
        Unit::Count,
        "Containers a function's warm floor (min_idle) lacks because the memory budget cannot hold them, by function."
    );
    describe_counter!(
        EVICTIONS_TOTAL,
        Unit::Count,
        "Containers removed from the pool, by function and reason."
    );
    describe_counter!(
        ADOPTED_CONTAINERS_TOTAL,
        Unit::Count,
        "Containers an earlier owner of the pool left, as hotpool found them when it started, by function and outcome: adopted (taken over), or why it was removed (not_configured, spec_changed, over_concurrency, over_budget, in_call, ended, wrote_while_idle, unproven)."
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
        ENGINE_API_SECONDS,
        Unit::Seconds,
        "Container engine API latency by engine (docker, containerd), operation and result (success, error, timeout: no answer within the call's deadline)."
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
    describe_gauge!(
        CALL_LOGS_BYTES,
        Unit::Bytes,
        "What the store of recent calls' logs (GET /calls/{id}/log) holds, each entry's overhead included."
    );
    describe_counter!(
        CALL_LOGS_EVICTED_TOTAL,
        Unit::Count,
        "Calls' logs dropped from the store to make room, by the call's state then (succeeded, failed, running)."
    );
    describe_counter!(
        LOG_DROPPED_TOTAL,
        Unit::Count,
        "Records of hotpool's own log dropped because its stderr did not keep up."
    );
}
