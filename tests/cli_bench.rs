//! `hotpool bench` as a user runs it: every mode measured, the JSON shape the
//! issue asks for, the warm tier on containerd (and said unavailable on
//! Docker), no container left behind, and one bench per `--pool` name. (No
//! timing is asserted.)

mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hotpool::pool::POOL_LABEL;
use serde_json::Value;

use support::containerd::{self, TestImage};

/// Runs `hotpool bench --json` with `args`, its containers labelled `pool`;
/// the one JSON object it prints.
fn bench_json(pool: &str, args: &[&str]) -> Value {
    bench_json_of(
        &mut Command::new(env!("CARGO_BIN_EXE_hotpool")),
        support::testfn_image(),
        pool,
        args,
    )
}

/// Runs `command` (the hotpool binary, its environment set) as `hotpool bench
/// --json` of `image` with `args`, its containers labelled `pool`; the one
/// JSON object it prints.
fn bench_json_of(command: &mut Command, image: &str, pool: &str, args: &[&str]) -> Value {
    let output = command
        .args(["bench", "--image", image, "--pool", pool])
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
    assert_modes(&report, &["cold", "floor_cold", "floor_hot", "hot"]);
    assert_eq!(report["warm"]["available"], false, "{report}");
    let why = report["warm"]["why"].as_str().unwrap_or_default();
    assert!(why.contains("docker engine"), "{report}");
    assert_nothing_left("bench-modes");
}

/// Fails unless `report` has exactly the modes `expected` (and `warm`), each
/// with figures that could have been measured.
fn assert_modes(report: &Value, expected: &[&str]) {
    let mut modes = report.as_object().expect("an object").clone();
    assert!(modes.remove("warm").is_some(), "no warm member: {report}");
    let mut names: Vec<&str> = modes.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, expected);
    for (mode, figures) in &modes {
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
}

#[test]
fn bench_on_containerd_measures_the_warm_tier_and_cleans_up() {
    const POOL: &str = "bench-warm";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let image = runtime.block_on(TestImage::push("hotpool-testfn-bench-warm"));
    let _guard = containerd::PoolGuard(POOL.to_owned());
    let report = bench_json_of(
        Command::new(env!("CARGO_BIN_EXE_hotpool")).env("DOCKER_CONFIG", image.docker_config()),
        &image.name,
        POOL,
        &[
            "--engine",
            "containerd",
            "--calls",
            "20",
            "--cold-calls",
            "3",
        ],
    );
    // containerd has no attach streams: every mode runs direct.
    assert_modes(&report, &["cold", "floor_cold", "floor_hot", "hot"]);
    let warm = &report["warm"];
    assert_eq!(warm["available"], true, "{report}");
    assert_eq!(warm["starts"], 3, "{warm}");
    for tier in ["warm", "cold"] {
        let p50 = warm[format!("{tier}_p50_us")].as_u64().unwrap_or(0);
        let p99 = warm[format!("{tier}_p99_us")].as_u64().unwrap_or(0);
        assert!(p50 > 0 && p99 >= p50, "{tier}: {warm}");
    }
    assert!(
        warm["warm_over_cold_p50"].as_f64().unwrap_or(0.0) > 0.0,
        "{warm}"
    );
    let (created, hot_idle) = (&warm["created"], &warm["hot_idle"]);
    assert_eq!(created["samples"], 3, "one per warm start: {warm}");
    assert_eq!(created["processes"], 1, "runc's init alone: {warm}");
    assert!(hot_idle["samples"].as_u64().unwrap_or(0) >= 1, "{warm}");
    assert_eq!(
        hot_idle["processes"], 2,
        "hotpool-init and the function: {warm}"
    );
    for held in [created, hot_idle] {
        for memory in ["rss_kib", "pss_kib", "anonymous_kib", "cgroup_kib"] {
            assert!(held[memory].as_u64().unwrap_or(0) > 0, "{memory}: {warm}");
        }
    }
    let left = runtime.block_on(containerd::leftovers(POOL_LABEL, POOL, &[]));
    assert_eq!(
        left,
        Default::default(),
        "containerd holds nothing of {POOL}"
    );
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

/// A bench running beside the test; killed if the test fails first, so that
/// it starts nothing after the test's guard has removed its containers.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn a_second_bench_of_one_pool_exits_2_and_leaves_the_first_alone() {
    let pool = format!("bench-owner-{}", std::process::id());
    let _guard = support::PoolGuard(pool.clone());
    let bench = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hotpool"));
        command
            .args(["bench", "--image", support::testfn_image(), "--pool", &pool])
            .args(extra)
            .arg("line");
        command
    };
    // Idle containers: it runs on through its quiet windows, holding them.
    let mut first = Running(
        bench(&["--idle-containers", "2", "--calls", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hotpool bench"),
    );
    let since = Instant::now();
    while support::pool_containers(&pool).is_empty() {
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "the first bench started no container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = support::pool_containers(&pool);

    let second = bench(&[]).output().expect("run a second hotpool bench");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "hotpool bench: pool \"{pool}\" on this engine is owned by a running hotpool (pid {})",
            first.0.id()
        )
    );
    let after = support::pool_containers(&pool);
    assert!(
        before.iter().all(|id| after.contains(id)),
        "the second bench removed containers of the first: {before:?}, then {after:?}"
    );
    assert!(
        matches!(first.0.try_wait(), Ok(None)),
        "the first bench runs on"
    );

    let sent = Command::new("kill")
        .args(["-TERM", &first.0.id().to_string()])
        .status();
    assert!(
        sent.is_ok_and(|status| status.success()),
        "SIGTERM the bench"
    );
    let mut stderr = String::new();
    first
        .0
        .stderr
        .take()
        .expect("its stderr")
        .read_to_string(&mut stderr)
        .expect("read its stderr");
    first.0.wait().expect("the first bench ends");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_nothing_left(&pool);
}
