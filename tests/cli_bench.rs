//! `hotpool bench` as a user runs it: every mode measured, the JSON shape the
//! issue asks for, and no container left behind. (No timing is asserted.)

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `hotpool bench --json` with `args`, its containers labelled `pool`;
/// the one JSON object it prints.
fn bench_json(pool: &str, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_hotpool"))
        .args(["bench", "--image", support::testfn_image(), "--pool", pool])
        .args(args)
        .args(["--json", "line"])
        .output()
        .expect("run hotpool bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

/// Fails if any container labelled with pool `pool` is left.
fn assert_nothing_left(pool: &str) {
    let left = support::pool_containers(pool);
    assert!(left.is_empty(), "bench left containers behind: {left:?}");
}

#[test]
fn bench_measures_all_four_modes_and_cleans_up() {
    let report = bench_json(
        "bench-modes",
        &[
            "--calls",
            "40",
            "--cold-calls",
            "2",
            "--concurrency",
            "2",
            "--payload",
            "100",
        ],
    );
    let modes = report.as_object().expect("an object");
    let mut names: Vec<&str> = modes.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["cold", "floor_cold", "floor_hot", "hot"]);
    for (mode, figures) in modes {
        let p50 = figures["p50_us"].as_u64().unwrap_or(0);
        let p99 = figures["p99_us"].as_u64().unwrap_or(0);
        assert!(p50 > 0 && p99 >= p50, "{mode}: {figures}");
        assert!(
            figures["calls_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{mode}: {figures}"
        );
        // Every call costs the process some CPU: a zero would mean the clock was not read.
        assert!(
            figures["cpu_us_per_call"].as_f64().unwrap_or(0.0) > 0.0,
            "{mode}: {figures}"
        );
    }
    assert_nothing_left("bench-modes");
}

#[test]
fn bench_refuses_the_cold_format_and_zero_calls() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hotpool"))
            .args(["bench", "--image", "x"])
            .args(args)
            .output()
            .expect("run hotpool bench")
    };
    let cold = run(&["--format", "cold"]);
    assert_eq!(cold.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&cold.stderr).contains("hot format"));
    let zero = run(&["--calls", "0"]);
    assert_eq!(zero.status.code(), Some(2));
}

#[test]
fn bench_with_idle_containers_reports_their_cost_and_removes_them() {
    let report = bench_json(
        "bench-idle",
        &[
            "--transport",
            "direct",
            "--calls",
            "20",
            "--concurrency",
            "2",
            "--idle-containers",
            "3",
        ],
    );
    assert_eq!(report["idle_containers"], 3, "{report}");
    for key in [
        "p50_us_without",
        "p50_us_with",
        "p99_us_without",
        "p99_us_with",
    ] {
        assert!(report[key].as_u64().unwrap_or(0) > 0, "{key}: {report}");
    }
    for key in [
        "rss_kib_per_container",
        "engine_cpu_idle",
        "shim_cpu_idle",
        "hotpool_cpu_idle",
    ] {
        assert!(report[key].as_f64().is_some(), "{key}: {report}");
    }
    assert!(
        report["starts_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert_nothing_left("bench-idle");
}

#[test]
fn an_interrupted_bench_still_removes_its_containers() {
    const POOL: &str = "bench-interrupted";
    let _guard = support::PoolGuard(POOL.to_owned());
    let mut bench = Command::new(env!("CARGO_BIN_EXE_hotpool"))
        .args(["bench", "--image", support::testfn_image(), "--pool", POOL])
        .args(["--idle-containers", "50", "--concurrency", "2", "line"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hotpool bench");
    let pid = bench.id().to_string();
    // Failing before the bench ends, the test kills it first, so that it
    // starts nothing after the guard has removed its containers.
    let mut fail = |why: &str| -> ! {
        let _ = bench.kill();
        let _ = bench.wait();
        panic!("{why}");
    };
    let since = Instant::now();
    while support::pool_containers(POOL).len() < 3 {
        if since.elapsed() > Duration::from_secs(120) {
            fail("the bench started no containers");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    if !sent.is_ok_and(|status| status.success()) {
        fail("could not send SIGTERM to the bench");
    }
    let output = bench.wait_with_output().expect("the bench ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_nothing_left(POOL);
}
