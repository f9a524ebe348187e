//! `hotpool replay --live` against a real `hotpool serve` on Docker: a tiny
//! slice of the shipped N=10 sample (3 functions, 2 minutes at speed 30, a few
//! dozen calls over 4 s) written as a config by `--write-config`, served, sent
//! and set beside its simulation. Asserted: every call sent is counted by the
//! server and by the simulation, cold starts happen and never outnumber
//! container starts; no timing. The server guard removes the containers.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output};

use serde_json::Value;

use support::server::Server;
use support::{free_port, repo_root, testfn_image};

/// `hotpool replay` on the slice, with `args` after it.
fn replay(args: &[&str]) -> Output {
    let sample = repo_root().join("examples/traces/azure2019/10");
    Command::new(env!("CARGO_BIN_EXE_hotpool"))
        .arg("replay")
        .arg(sample)
        .args([
            "--functions",
            "3",
            "--minutes",
            "0..2",
            "--speed",
            "30",
            "--policy",
            "fixed:2s",
        ])
        .args(args)
        .output()
        .expect("run hotpool replay")
}

fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn a_slice_sent_to_a_real_server_counts_the_calls_the_simulation_counts() {
    let pool = format!("server-test-replay-live-{}", std::process::id());
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("hotpool.toml");
    succeeded(&replay(&[
        "--write-config",
        config.to_str().unwrap(),
        "--listen",
        &addr.to_string(),
        "--pool",
        &pool,
        "--image",
        testfn_image(),
    ]));
    let server = Server::start_from_file(dir, config, &pool, addr);

    let url = format!("http://{addr}");
    let output = replay(&["--live", &url, "--json"]);
    let stdout = succeeded(&output);
    let comparison: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let (simulated, live) = (&comparison["simulated"], &comparison["live"]);
    let sent = comparison["sent"].as_u64().unwrap();
    assert!(sent >= 20, "a few dozen calls: {comparison}");
    assert_eq!(comparison["failed"], 0, "{comparison}");
    assert_eq!(live["invocations"].as_u64(), Some(sent), "{comparison}");
    assert_eq!(
        simulated["invocations"], live["invocations"],
        "{comparison}"
    );
    let cold = live["cold_starts"].as_u64().unwrap();
    let starts = live["container_starts"].as_u64().unwrap();
    assert!(cold >= 1 && cold <= starts, "{comparison}");
    assert!(
        live["idle_gb_s"].as_f64().unwrap() <= live["total_gb_s"].as_f64().unwrap(),
        "{comparison}"
    );
    assert!(
        comparison["cold_start_s"].as_f64().unwrap() > 0.0,
        "the simulation starts containers as long as the server's took: {comparison}"
    );
    // A cold call waited for its container's start.
    let call_waits = live["call_wait_s"]
        .as_f64()
        .expect("the calls' waits are measured");
    assert!(call_waits > 0.0, "{comparison}");
    // A start's wait for its turn is part of the start's time.
    let waited = live["start_wait_s"]
        .as_f64()
        .expect("the starts' waits are measured");
    let started = comparison["cold_start_s"].as_f64().unwrap() * starts as f64;
    assert!(
        (0.0..=started + 1e-3).contains(&waited),
        "{waited} s of waits in {started} s of starts: {comparison}"
    );
    server.stop();
}
