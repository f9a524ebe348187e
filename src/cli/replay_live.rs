//! `hotpool replay --write-config` and `--live`: a slice of the trace as a
//! `hotpool serve` config, and the comparison of what that server measured
//! with the simulation of the same slice ([`hotpool::replay::live`]).

use std::path::Path;

use serde_json::{Map, Value, json};

use hotpool::replay::{self, Options, Report, Trace, live};

/// The keys set side by side, in the order shown.
const COMPARED: [&str; 12] = [
    "invocations",
    "cold_starts",
    "cold_ratio",
    "container_starts",
    "idle_gb_s",
    "total_gb_s",
    "p75_function_cold_pct",
    "prewarms_used",
    "prewarms_wasted",
    "peak_starts_per_s",
    "start_wait_s",
    "call_wait_s",
];

/// Writes the config of the slice `trace`, replayed with `options` by a server
/// set up as `setup` says, to `path` (`--write-config`'s file).
pub(super) fn write_config(
    path: &Path,
    trace: &Trace,
    options: &Options,
    setup: &live::ServeSetup,
) -> Result<(), String> {
    let text = live::serve_config(trace, options, setup);
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "hotpool replay: wrote {}: {} functions, {} calls in {} minutes at speed {}; serve it with `hotpool serve --config {}`",
        path.display(),
        trace.function_count(),
        trace.invocations(),
        trace.minutes(),
        options.speed,
        path.display(),
    );
    Ok(())
}

/// Which of the simulation's options were given on the command line: those not
/// given follow what the live server measured.
pub(super) struct Given {
    /// `--cold-start`.
    pub(super) cold_start: bool,
    /// `--start-slots`.
    pub(super) start_slots: bool,
}

/// Sends the slice `trace` to the server at `url` (`--live`), simulates it with
/// `options`, prints both (one JSON object with `json`); exit status 1 if a
/// call failed.
pub(super) async fn compare(
    url: &str,
    trace: Trace,
    mut options: Options,
    given: Given,
    json: bool,
) -> Result<i32, String> {
    eprintln!(
        "hotpool replay: sending {} calls of {} functions over {:.1} s to {url}",
        trace.invocations(),
        trace.function_count(),
        trace.minutes() as f64 * 60.0 / options.speed,
    );
    let measured = live::run(&trace, &options, url)
        .await
        .map_err(|e| e.to_string())?;
    if !given.cold_start
        && let Some(cold_start) = measured.cold_start
    {
        options.cold_start = cold_start;
        // The server's start time counts its wait for a start turn: the
        // simulation must not make its starts wait for a slot again.
        if !given.start_slots {
            options.start_slots = None;
        }
    }
    let simulated = {
        let options = options.clone();
        tokio::task::spawn_blocking(move || replay::simulate(&trace, &options, |_| {}))
            .await
            .expect("the replay does not panic")
            .map_err(|e| e.to_string())?
    };
    let comparison = comparison(&simulated, &measured, &options);
    if json {
        println!("{comparison}");
    } else {
        print_table(&comparison, &options);
    }
    if measured.failed > 0 {
        eprintln!(
            "hotpool replay: {} of {} calls failed, the first: {}",
            measured.failed,
            measured.sent,
            measured.first_failure.as_deref().unwrap_or("?")
        );
        return Ok(1);
    }
    Ok(0)
}

/// Both reports, the live one over the simulated one key by key, and how the
/// live run went.
fn comparison(simulated: &Report, measured: &live::LiveReport, options: &Options) -> Value {
    let as_map = |report: &Report| match serde_json::to_value(report) {
        Ok(Value::Object(map)) => map,
        _ => unreachable!("a report is an object"),
    };
    let simulated = as_map(simulated);
    let live = as_map(&measured.report);
    let mut ratios = Map::new();
    for key in COMPARED {
        let (Some(s), Some(l)) = (simulated[key].as_f64(), live[key].as_f64()) else {
            continue;
        };
        let ratio = if s == 0.0 && l == 0.0 { 1.0 } else { l / s };
        ratios.insert(
            key.to_owned(),
            if ratio.is_finite() {
                json!(ratio)
            } else {
                Value::Null
            },
        );
    }
    json!({
        "simulated": simulated,
        "live": live,
        "live_over_simulated": ratios,
        "cold_start_s": options.cold_start.as_secs_f64(),
        "start_slots": options.start_slots,
        "speed": options.speed,
        "sent": measured.sent,
        "failed": measured.failed,
        "send_lag_p99_ms": measured.send_lag_p99_ms,
    })
}

fn print_table(comparison: &Value, options: &Options) {
    println!(
        "hotpool replay, live against simulated: policy {}, speed {}, cold start {:.0} ms and {} starts at once (simulated), {} calls sent, {} failed, sent p99 {:.1} ms late",
        options.policy,
        options.speed,
        options.cold_start.as_secs_f64() * 1e3,
        options
            .start_slots
            .map_or_else(|| "any number of".to_owned(), |slots| slots.to_string()),
        comparison["sent"],
        comparison["failed"],
        comparison["send_lag_p99_ms"].as_f64().unwrap_or(0.0),
    );
    println!(
        "{:<22} {:>12} {:>12} {:>9}",
        "", "simulated", "live", "live/sim"
    );
    let show = |value: &Value| match value.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) if x.abs() < 1.0 => format!("{x:.4}"),
        Some(x) => format!("{x:.2}"),
        None => "-".to_owned(),
    };
    for key in COMPARED {
        let ratio = match comparison["live_over_simulated"][key].as_f64() {
            Some(ratio) => format!("{ratio:.2}"),
            None => "-".to_owned(),
        };
        println!(
            "{key:<22} {:>12} {:>12} {ratio:>9}",
            show(&comparison["simulated"][key]),
            show(&comparison["live"][key]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeConfig;
    use hotpool::replay::Trace;

    /// The shipped N=10 sample.
    fn sample() -> Trace {
        let prefix =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/traces/azure2019/10");
        Trace::load(&prefix).unwrap()
    }

    #[test]
    fn the_generated_config_is_one_the_server_takes_with_the_replays_policy() {
        let trace = sample().slice(Some(3), 0..10).unwrap();
        for (policy, keep_alive, eviction) in [
            ("fixed:1m", "fixed:1m", "lru"),
            ("adaptive", "adaptive", "lru"),
            ("greedy-dual", "fixed:365days", "greedy-dual"),
        ] {
            let mut options = Options::default();
            options.policy = policy.parse().unwrap();
            options.speed = 10.0;
            options.memory_budget = Some(32 << 30);
            let mut setup = live::ServeSetup::default();
            setup.pool = "replay-test".to_owned();
            let text = live::serve_config(&trace, &options, &setup);
            let config = ServeConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(config.pool.name, "replay-test");
            assert_eq!(config.pool.memory_budget, 2 << 30, "32 GiB / 16");
            assert_eq!(config.functions.len(), 3);
            for (index, function) in config.functions.iter().enumerate() {
                assert_eq!(function.name, live::function_name(&trace, index));
                assert_eq!(function.keep_alive, keep_alive.parse().unwrap(), "{policy}");
                assert_eq!(function.eviction, eviction.parse().unwrap(), "{policy}");
                assert_eq!(function.transport, hotpool::driver::Transport::Direct);
                assert_eq!(function.image, "hotpool-testfn:dev");
                assert!(function.memory >= 8 << 20, "{}", function.memory);
            }
            assert!(text.contains("cmd = [\"http\", \"--hold\", "), "{text}");
        }
    }
}
