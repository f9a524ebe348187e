//! `hotpool bench` as a user runs it: every mode measured, the JSON shape the
//! issue asks for, the warm tier on containerd (and said unavailable on
//! Docker), no container left behind, and one bench per `--pool` name, on
//! Docker and on containerd (`--engine`). (No timing is asserted.)

mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::cli_engine::Engine;

/// `hotpool bench` of the test function on `engine`, its containers labelled
/// `pool`, with `args` and then the function's command `line`.
fn bench(engine: &Engine, pool: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hotpool"));
    command.arg("bench");
    engine.configure(&mut command);
    command
        .args(["--image", &engine.image, "--pool", pool])
        .args(args)
        .arg("line");
    command
}

/// Runs `hotpool bench --json` with `args` on `engine`, its containers
/// labelled `pool`; the one JSON object it prints.
fn bench_json(engine: &Engine, pool: &str, args: &[&str]) -> Value {
    let args = [args, &["--json"]].concat();
    let output = bench(engine, pool, &args)
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

/// Fails if any container labelled with pool `pool` is left on `engine`.
fn assert_nothing_left(engine: &Engine, pool: &str) {
    let left = engine.containers_of(pool);
    assert!(left.is_empty(), "bench left containers behind: {left:?}");
}

per_engine_binary!(bench_measures_all_four_modes_and_cleans_up);
fn bench_measures_all_four_modes_and_cleans_up(engine: Engine) {
    let pool = format!("bench-modes-{}", engine.name());
    let _guard = engine.guard(&pool);
    let report = bench_json(
        &engine,
        &pool,
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
    if engine.name() == "containerd" {
        // No attach streams: its hot modes are the direct ones.
        let modes = [
            "cold",
            "direct",
            "exited_direct",
            "floor_cold",
            "floor_direct",
        ];
        assert_modes(&report, &modes);
        assert_warm_tier(&report["warm"], 2);
    } else {
        assert_modes(&report, &["cold", "floor_cold", "floor_hot", "hot"]);
        assert_eq!(report["warm"]["available"], false, "{report}");
        let why = report["warm"]["why"].as_str().unwrap_or_default();
        assert!(why.contains("docker engine"), "{report}");
    }
    assert_nothing_left(&engine, &pool);
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

/// Fails unless `warm` measured `starts` warm and cold starts and what a
/// created task and an idle hot container hold.
fn assert_warm_tier(warm: &Value, starts: u64) {
    assert_eq!(warm["available"], true, "{warm}");
    assert_eq!(warm["starts"], starts, "{warm}");
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
    assert_eq!(created["samples"], starts, "one per warm start: {warm}");
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

per_engine_binary!(bench_with_idle_containers_reports_their_cost_and_removes_them);
fn bench_with_idle_containers_reports_their_cost_and_removes_them(engine: Engine) {
    let pool = format!("bench-idle-{}", engine.name());
    let _guard = engine.guard(&pool);
    let report = bench_json(
        &engine,
        &pool,
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
    assert_nothing_left(&engine, &pool);
}

per_engine_binary!(an_interrupted_bench_still_removes_its_containers);
fn an_interrupted_bench_still_removes_its_containers(engine: Engine) {
    let pool = format!("bench-interrupted-{}", engine.name());
    let _guard = engine.guard(&pool);
    let idle = ["--idle-containers", "50", "--concurrency", "2"];
    let mut bench = bench(&engine, &pool, &idle)
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
    while engine.containers_of(&pool).len() < 3 {
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
    assert_nothing_left(&engine, &pool);
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

per_engine_binary!(a_second_bench_of_one_pool_exits_2_and_leaves_the_first_alone);
fn a_second_bench_of_one_pool_exits_2_and_leaves_the_first_alone(engine: Engine) {
    let pool = format!("bench-owner-{}-{}", engine.name(), std::process::id());
    let _guard = engine.guard(&pool);
    let bench = |extra: &[&str]| bench(&engine, &pool, extra);
    // Idle containers: it runs on through its quiet windows, holding them.
    let mut first = Running(
        bench(&["--idle-containers", "2", "--calls", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hotpool bench"),
    );
    let since = Instant::now();
    while engine.containers_of(&pool).is_empty() {
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "the first bench started no container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = engine.containers_of(&pool);

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
    let after = engine.containers_of(&pool);
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
    assert_nothing_left(&engine, &pool);
}
