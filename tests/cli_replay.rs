//! `hotpool replay` as a user runs it, on the N=10 sample of the Azure Functions
//! 2019 trace: the JSON keys the issue names and invariants that hold whatever
//! the machine (no timing or exact figure is asserted).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The N=10 sample trace (shipped in examples/traces).
fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/traces/azure2019/10")
}

fn replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotpool"))
        .arg("replay")
        .args(args)
        .output()
        .expect("run hotpool replay")
}

/// The JSON report of a replay of the sample with `policy`.
fn report(policy: &str) -> Value {
    let sample = sample();
    let output = replay(&[sample.to_str().unwrap(), "--policy", policy, "--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stderr.is_empty(), "no progress off a terminal");
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

#[test]
fn replay_reports_the_issues_keys_and_a_longer_keep_alive_saves_cold_starts() {
    let short = report("fixed:30s");
    let mut keys: Vec<&str> = short
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "call_wait_s",
            "cold_ratio",
            "cold_starts",
            "container_starts",
            "engine_start_s",
            "idle_gb_s",
            "invocations",
            "p75_function_cold_pct",
            "p99_starts_per_s",
            "peak_starts_per_s",
            "prewarms_used",
            "prewarms_wasted",
            "start_wait_s",
            "total_gb_s",
            "wall_s"
        ]
    );
    let long = report("fixed:20m");
    for report in [&short, &long] {
        let number = |key: &str| report[key].as_f64().expect(key);
        assert_eq!(number("invocations"), 28432.0, "every call of the trace");
        assert!(number("cold_starts") > 0.0);
        assert!(number("cold_starts") <= number("container_starts"));
        assert!(number("container_starts") <= number("invocations"));
        assert!(number("cold_ratio") <= 1.0);
        assert!(number("idle_gb_s") > 0.0 && number("idle_gb_s") <= number("total_gb_s"));
        assert!((0.0..=100.0).contains(&number("p75_function_cold_pct")));
        assert!(number("peak_starts_per_s") >= number("p99_starts_per_s"));
        assert!(number("peak_starts_per_s") > 0.0);
        assert!(number("start_wait_s") >= 0.0);
        // Each cold call waits a whole start (250 ms) at least.
        assert!(number("call_wait_s") >= 0.25 * number("cold_starts"));
        assert!(
            (number("engine_start_s") - 0.105 * number("container_starts")).abs() < 1e-6,
            "the default cost per start"
        );
    }
    let cold = |report: &Value| report["cold_starts"].as_u64().unwrap();
    let idle = |report: &Value| report["idle_gb_s"].as_f64().unwrap();
    assert!(cold(&long) < cold(&short), "{long} vs {short}");
    assert!(idle(&long) > idle(&short), "{long} vs {short}");
}

/// The issue's bar for `adaptive`: at the idle memory it uses, fewer cold
/// starts than the fixed-timeout curve gives there (interpolated). The replay
/// is seeded, so this holds or fails the same on every machine.
#[test]
fn adaptive_lies_below_the_fixed_timeout_curve() {
    let point = |report: Value| {
        let cold = report["cold_starts"].as_f64().unwrap();
        (cold, report["idle_gb_s"].as_f64().unwrap())
    };
    let fixed: Vec<(f64, f64)> = [
        "fixed:2m",
        "fixed:5m",
        "fixed:10m",
        "fixed:20m",
        "fixed:60m",
    ]
    .into_iter()
    .map(|policy| point(report(policy)))
    .collect();
    let (cold, idle) = point(report("adaptive"));
    let (below, above) = fixed
        .windows(2)
        .map(|pair| (pair[0], pair[1]))
        .find(|(below, above)| below.1 <= idle && idle <= above.1)
        .unwrap_or_else(|| panic!("adaptive's {idle} GB-s is within the curve {fixed:?}"));
    let share = (idle - below.1) / (above.1 - below.1);
    let fixed_cold = below.0 + share * (above.0 - below.0);
    assert!(
        cold < fixed_cold,
        "adaptive: {cold} cold starts at {idle} GB-s; the fixed curve: {fixed_cold}"
    );
}

#[test]
fn replay_names_a_missing_trace_and_a_bad_policy() {
    let missing = replay(&["/nonexistent/trace"]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.starts_with("hotpool replay: /nonexistent/trace_inv.csv: "),
        "{stderr}"
    );
    let sample = sample();
    let policy = replay(&[sample.to_str().unwrap(), "--policy", "sometimes"]);
    assert_eq!(policy.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&policy.stderr).contains("greedy-dual"));
}
