//! A function's metric handles, registered once when its version is made.
//!
//! Every call updates about ten of its function's series. Through the `metrics`
//! macros each update builds a labelled key, hashes it and looks it up in the
//! recorder's registry; through a handle it is one atomic operation. So the
//! series a hot call touches on its way are held here. A recorder must be
//! installed before a function is registered for its series to be recorded (as
//! `hotpool serve` does); handles taken with none installed record nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::{Counter, Gauge, Histogram};

use super::response::Start;
use crate::metrics::{
    CALL_DURATION_SECONDS, CALL_QUEUE_SECONDS, CALLS_TOTAL, CONTAINERS, MIN_IDLE_SHORT,
    TASK_CPU_RATIO, TASK_MEMORY_BYTES,
};
use crate::stats::CallStats;

/// The handles of one function's per-call series.
pub(crate) struct FunctionMetrics {
    name: Arc<str>,
    idle: Gauge,
    busy: Gauge,
    starting: Gauge,
    floor_short: Gauge,
    /// What `floor_short` was last set to.
    last_floor_short: AtomicUsize,
    queue_seconds: Histogram,
    hot_seconds: Histogram,
    cold_seconds: Histogram,
    successes: Counter,
    cpu_ratio: Histogram,
    memory_bytes: Histogram,
}

impl FunctionMetrics {
    pub(crate) fn new(name: &Arc<str>) -> FunctionMetrics {
        let containers = |state: &'static str| metrics::gauge!(CONTAINERS, "function" => name.clone(), "state" => state);
        let duration = |start: Start| metrics::histogram!(CALL_DURATION_SECONDS, "function" => name.clone(), "start" => start.as_str());
        let floor_short = metrics::gauge!(MIN_IDLE_SHORT, "function" => name.clone());
        // At 0 from the start, so a dashboard shows the function before any shortage.
        floor_short.set(0.0);
        FunctionMetrics {
            name: name.clone(),
            idle: containers("idle"),
            busy: containers("busy"),
            starting: containers("starting"),
            floor_short,
            last_floor_short: AtomicUsize::new(0),
            queue_seconds: metrics::histogram!(CALL_QUEUE_SECONDS, "function" => name.clone()),
            hot_seconds: duration(Start::Hot),
            cold_seconds: duration(Start::Cold),
            successes: metrics::counter!(CALLS_TOTAL, "function" => name.clone(), "outcome" => "success"),
            cpu_ratio: metrics::histogram!(TASK_CPU_RATIO, "function" => name.clone()),
            memory_bytes: metrics::histogram!(TASK_MEMORY_BYTES, "function" => name.clone()),
        }
    }

    /// `hotpool_containers{function,state}`.
    pub(crate) fn containers(&self, idle: usize, busy: usize, starting: usize) {
        self.idle.set(idle as f64);
        self.busy.set(busy as f64);
        self.starting.set(starting as f64);
    }

    /// `hotpool_min_idle_short`: the warm floor of `min_idle` lacks `short`
    /// containers the memory budget cannot hold; logged once per change.
    pub(crate) fn floor_short(&self, short: usize, min_idle: usize) {
        let before = self.last_floor_short.swap(short, Ordering::AcqRel);
        if before == short {
            return;
        }
        self.floor_short.set(short as f64);
        if short > 0 {
            tracing::warn!(function = %self.name, min_idle, short, "the memory budget cannot hold the function's warm floor: it lacks {short} of {min_idle} idle containers");
        } else {
            tracing::info!(function = %self.name, min_idle, "the function's warm floor is met again");
        }
    }

    /// `hotpool_call_queue_seconds`: how long a call waited for a container.
    pub(crate) fn queued(&self, seconds: f64) {
        self.queue_seconds.record(seconds);
    }

    /// `hotpool_call_duration_seconds` of a call that succeeded.
    pub(crate) fn succeeded(&self, start: Start, seconds: f64) {
        match start {
            Start::Hot => &self.hot_seconds,
            Start::Cold => &self.cold_seconds,
        }
        .record(seconds);
    }

    /// Counts one call in `hotpool_calls_total` with its outcome.
    pub(crate) fn count_call(&self, outcome: &'static str) {
        if outcome == "success" {
            self.successes.increment(1);
        } else {
            metrics::counter!(CALLS_TOTAL, "function" => self.name.clone(), "outcome" => outcome)
                .increment(1);
        }
    }

    /// `hotpool_task_cpu_ratio` and `hotpool_task_memory_bytes` of one call.
    pub(crate) fn used(&self, stats: &CallStats) {
        if let Some(cpu) = stats.cpu_ratio() {
            self.cpu_ratio.record(cpu);
        }
        if let Some(memory) = stats.memory_bytes() {
            self.memory_bytes.record(memory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Usage;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn handles_and_the_lookup_of_a_rare_outcome_land_in_the_same_series() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let rendered = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let metrics = FunctionMetrics::new(&Arc::from("echo"));
            metrics.containers(1, 2, 3);
            metrics.floor_short(1, 2);
            metrics.count_call("success");
            metrics.count_call("success");
            metrics.count_call("timeout");
            metrics.succeeded(Start::Hot, 0.001);
            let usage = Usage {
                cpu_ratio: 0.5,
                cpu_seconds: 0.0005,
                memory_bytes: 4096,
            };
            metrics.used(&CallStats::new(10, Vec::new(), Some(usage)));
        });
        let text = rendered.render();
        for line in [
            r#"hotpool_containers{function="echo",state="idle"} 1"#,
            r#"hotpool_containers{function="echo",state="busy"} 2"#,
            r#"hotpool_containers{function="echo",state="starting"} 3"#,
            r#"hotpool_min_idle_short{function="echo"} 1"#,
            r#"hotpool_calls_total{function="echo",outcome="success"} 2"#,
            r#"hotpool_calls_total{function="echo",outcome="timeout"} 1"#,
            r#"hotpool_call_duration_seconds_count{function="echo",start="hot"} 1"#,
            r#"hotpool_call_duration_seconds_count{function="echo",start="cold"} 0"#,
            r#"hotpool_task_cpu_ratio_count{function="echo"} 1"#,
            r#"hotpool_task_memory_bytes_count{function="echo"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    /// What the subscriber writes, shared.
    #[derive(Clone, Default)]
    struct Written(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_short_floor_is_logged_once_per_change() {
        let written = Written::default();
        let writer = written.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let metrics = FunctionMetrics::new(&Arc::from("echo"));
            for short in [0, 1, 1, 1, 2, 2, 0, 0] {
                metrics.floor_short(short, 2);
            }
        });
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains("lacks 1 of 2"),
            "{text}"
        );
        assert!(
            lines[1].contains("WARN") && lines[1].contains("lacks 2 of 2"),
            "{text}"
        );
        assert!(
            lines[2].contains("INFO") && lines[2].contains("met again"),
            "{text}"
        );
    }
}
