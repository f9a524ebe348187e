//! What the live mode reads from a server's `/metrics` (Prometheus text
//! format): each function's calls, cold calls, waits, starts, prewarms and
//! containers by state.

use std::collections::HashMap;

use crate::metrics::{
    CALL_DURATION_SECONDS, CALL_QUEUE_SECONDS, CALLS_TOTAL, CONTAINER_START_SECONDS,
    CONTAINER_STARTS_TOTAL, CONTAINERS, PREWARMS_TOTAL, START_WAIT_SECONDS,
};

/// One function's figures in one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct FunctionFigures {
    /// Calls, whatever their outcome.
    pub(crate) calls: f64,
    /// Calls that did not succeed.
    pub(crate) failed: f64,
    /// Successful calls served by a container started for them.
    pub(crate) cold: f64,
    /// Seconds calls waited for a container, added up.
    pub(crate) call_wait_seconds: f64,
    /// Containers started.
    pub(crate) starts: f64,
    /// Seconds those starts took, added up.
    pub(crate) start_seconds: f64,
    /// Seconds starts waited for a start turn, added up.
    pub(crate) start_wait_seconds: f64,
    pub(crate) prewarms_used: f64,
    pub(crate) prewarms_wasted: f64,
    pub(crate) idle: f64,
    /// Containers idle, busy or starting.
    pub(crate) live: f64,
}

impl FunctionFigures {
    /// The counters' growth since `before` (the gauges as now).
    pub(crate) fn since(&self, before: &FunctionFigures) -> FunctionFigures {
        FunctionFigures {
            calls: self.calls - before.calls,
            failed: self.failed - before.failed,
            cold: self.cold - before.cold,
            starts: self.starts - before.starts,
            start_seconds: self.start_seconds - before.start_seconds,
            start_wait_seconds: self.start_wait_seconds - before.start_wait_seconds,
            call_wait_seconds: self.call_wait_seconds - before.call_wait_seconds,
            prewarms_used: self.prewarms_used - before.prewarms_used,
            prewarms_wasted: self.prewarms_wasted - before.prewarms_wasted,
            ..*self
        }
    }
}

/// Every function's figures in a scrape, by name.
pub(crate) fn parse(text: &str) -> HashMap<String, FunctionFigures> {
    let mut figures: HashMap<String, FunctionFigures> = HashMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = parse_labels(labels);
        let label = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let Some(function) = label("function") else {
            continue;
        };
        let entry = figures.entry(function.to_owned()).or_default();
        let field = match (name, label("outcome"), label("start"), label("result")) {
            (CALLS_TOTAL, Some(outcome), _, _) => {
                if outcome != "success" {
                    entry.failed += value;
                }
                &mut entry.calls
            }
            (n, _, Some("cold"), _) if n == count_of(CALL_DURATION_SECONDS) => &mut entry.cold,
            (CONTAINER_STARTS_TOTAL, _, _, Some("success")) => &mut entry.starts,
            (n, _, _, _) if n == sum_of(CONTAINER_START_SECONDS) => &mut entry.start_seconds,
            (n, _, _, _) if n == sum_of(START_WAIT_SECONDS) => &mut entry.start_wait_seconds,
            (n, _, _, _) if n == sum_of(CALL_QUEUE_SECONDS) => &mut entry.call_wait_seconds,
            (PREWARMS_TOTAL, Some("used"), _, _) => &mut entry.prewarms_used,
            (PREWARMS_TOTAL, Some("wasted"), _, _) => &mut entry.prewarms_wasted,
            (CONTAINERS, _, _, _) => {
                if label("state") == Some("idle") {
                    entry.idle += value;
                }
                &mut entry.live
            }
            _ => continue,
        };
        *field += value;
    }
    figures
}

fn count_of(histogram: &str) -> String {
    format!("{histogram}_count")
}

fn sum_of(histogram: &str) -> String {
    format!("{histogram}_sum")
}

/// `a="x",b="y"` as pairs; hotpool's label values hold no quotes or commas.
fn parse_labels(text: &str) -> Vec<(&str, &str)> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.trim(), value.trim().trim_matches('"')))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_gives_each_functions_calls_starts_and_containers() {
        let text = r#"# HELP hotpool_calls_total Calls.
# TYPE hotpool_calls_total counter
hotpool_calls_total{function="a",outcome="success"} 10
hotpool_calls_total{function="a",outcome="timeout"} 2
hotpool_calls_total{function="b",outcome="success"} 1
hotpool_call_duration_seconds_bucket{function="a",start="cold",le="0.1"} 1
hotpool_call_duration_seconds_count{function="a",start="cold"} 3
hotpool_call_duration_seconds_count{function="a",start="hot"} 7
hotpool_container_starts_total{function="a",result="success"} 4
hotpool_container_starts_total{function="a",result="engine_error"} 1
hotpool_container_start_seconds_sum{function="a"} 1.5
hotpool_container_start_seconds_count{function="a"} 4
hotpool_start_wait_seconds_sum{function="a"} 0.25
hotpool_start_wait_seconds_count{function="a"} 4
hotpool_call_queue_seconds_sum{function="a"} 0.75
hotpool_call_queue_seconds_count{function="a"} 12
hotpool_prewarms_total{function="a",outcome="used"} 1
hotpool_prewarms_total{function="a",outcome="wasted"} 2
hotpool_containers{function="a",state="idle"} 2
hotpool_containers{function="a",state="busy"} 1
hotpool_containers{function="a",state="starting"} 1
hotpool_memory_reserved_bytes 123
"#;
        let figures = parse(text);
        assert_eq!(figures.len(), 2);
        let a = figures["a"];
        assert_eq!(
            a,
            FunctionFigures {
                calls: 12.0,
                failed: 2.0,
                cold: 3.0,
                starts: 4.0,
                start_seconds: 1.5,
                start_wait_seconds: 0.25,
                call_wait_seconds: 0.75,
                prewarms_used: 1.0,
                prewarms_wasted: 2.0,
                idle: 2.0,
                live: 4.0,
            }
        );
        let before = FunctionFigures {
            calls: 2.0,
            idle: 9.0,
            ..FunctionFigures::default()
        };
        let grown = a.since(&before);
        assert_eq!((grown.calls, grown.idle, grown.starts), (10.0, 2.0, 4.0));
        assert_eq!(figures["b"].calls, 1.0);
    }
}
