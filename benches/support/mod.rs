//! Shared by the benches: reads criterion's estimates back and prints ratios, so
//! every bench run shows hotpool against its baseline side by side.

#![allow(dead_code)]

use std::path::PathBuf;

/// The median time criterion measured for `group/function`, in nanoseconds.
fn median_ns(group: &str, function: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = target
        .join("criterion")
        .join(group)
        .join(function)
        .join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Prints `candidate / baseline` of the median times of one group, when this run
/// measured (`cargo bench`), not when it only checked the benches run (`cargo test`).
pub fn print_ratio(group: &str, candidate: &str, baseline: &str) {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    match (median_ns(group, candidate), median_ns(group, baseline)) {
        (Some(c), Some(b)) => println!(
            "ratio {group}: {candidate} / {baseline} = {:.3} (median {:.1} µs vs {:.1} µs)",
            c / b,
            c / 1e3,
            b / 1e3
        ),
        _ => println!(
            "ratio {group}: no estimates for both {candidate} and {baseline} (filtered out?)"
        ),
    }
}

/// Prints the calls per second one iteration of `group/function` stands for,
/// against `target`.
pub fn print_rate(group: &str, function: &str, target: f64) {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    if let Some(ns) = median_ns(group, function) {
        let rate = 1e9 / ns;
        let verdict = if rate >= target { "meets" } else { "MISSES" };
        println!(
            "rate {group}/{function}: {rate:.0} calls/s ({verdict} the target of {target:.0})"
        );
    }
}
