//! `hotpool serve` as a client sees it: the real binary on a free loopback port, a
//! config written by the test, the real engine, and plain HTTP/1.1 over a socket.
//!
//! Each test runs its own server with its own pool name (its containers labelled
//! `hotpool.pool=<name>`), stops it with SIGTERM, and checks that it exits 0 and
//! that none of its containers is left.

mod support;

use hotpool::driver::Transport;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::http::HttpResponse;
use support::server::{
    Captured, PATIENCE, Server, containers_of, error_of, function, wait_for_exit,
};
use support::testfn_image;

per_transport!(sync line_function_is_cold_then_hot);
fn line_function_is_cold_then_hot(transport: Transport) {
    let server = Server::start_on(
        transport,
        "line",
        "",
        &[function("echo", "line", "line", "")],
    );

    let first = server.invoke("echo", b"hello there");
    assert_eq!(first.status, 200, "{first}");
    assert_eq!(first.body, b"hello there");
    assert_eq!(first.header("hotpool-start"), Some("cold"), "{first}");
    assert_eq!(
        first.header("content-type"),
        Some("application/octet-stream")
    );

    let second = server.invoke("echo", b"and again");
    assert_eq!(second.status, 200, "{second}");
    assert_eq!(second.body, b"and again");
    assert_eq!(second.header("HOTPOOL-START"), Some("hot"), "{second}");

    let stats = second.header("hotpool-stats").expect("the call's stats");
    assert!(
        stats.contains("cpu_ratio=")
            && stats.contains("memory_bytes=")
            && stats.contains("samples="),
        "{stats}"
    );

    let first_id = first.header("hotpool-call-id").expect("a call id");
    let second_id = second.header("Hotpool-Call-Id").expect("a call id");
    assert!(!first_id.is_empty());
    assert_ne!(first_id, second_id, "every call has its own id");

    assert_eq!(
        server.function_status("echo")["containers"]["idle"],
        1,
        "the container stays hot"
    );
    server.stop();
}

per_transport!(sync http_function_round_trips_binary_and_its_headers);
fn http_function_round_trips_binary_and_its_headers(transport: Transport) {
    let server = Server::start_on(
        transport,
        "http",
        "",
        &[function("web", "http", "http", "")],
    );
    let body: Vec<u8> = (0..=255u8).collect();

    for expected_start in ["cold", "hot"] {
        let response = server.invoke("web", &body);
        assert_eq!(response.status, 200, "{response}");
        assert_eq!(response.body, body, "every byte value comes back as sent");
        assert_eq!(response.header("hotpool-start"), Some(expected_start));
        assert_eq!(
            response.header("content-type"),
            Some("application/octet-stream")
        );
        let call_id = response.header("hotpool-call-id").expect("a call id");
        assert!(!call_id.is_empty());
        assert_eq!(
            response.header("x-echo-call-id"),
            Some(call_id),
            "the function saw the call id it was given: {response}"
        );
    }
    server.stop();
}

per_transport!(sync cold_function_echoes_and_is_always_cold);
fn cold_function_echoes_and_is_always_cold(transport: Transport) {
    let server = Server::start_on(
        transport,
        "cold",
        "",
        &[
            function("once", "echo", "cold", ""),
            function("slow", "sleep\", \"3", "cold", ""),
        ],
    );
    // A cold call has the engine's samples only (README, Per-call stats): one
    // that runs three seconds has some, and so its stats.
    let slow = server.invoke("slow", b"zzz");
    assert_eq!(slow.status, 200, "{slow}");
    let stats = slow.header("hotpool-stats").unwrap_or_default();
    let samples: u64 = stats
        .rsplit("samples=")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(samples >= 1, "a 3 s cold call carries its samples: {slow}");
    let mut ids = Vec::new();
    for i in 0..3 {
        // Newlines and NULs are fine in a cold body.
        let body = format!("call {i}\nsecond line\0end").into_bytes();
        let response = server.invoke("once", &body);
        assert_eq!(response.status, 200, "{response}");
        assert_eq!(response.body, body);
        assert_eq!(response.header("hotpool-start"), Some("cold"), "{response}");
        ids.push(response.header("hotpool-call-id").unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "every call has its own id: {ids:?}");
    assert_eq!(
        server.function_status("once")["containers"]["idle"],
        0,
        "a cold function keeps no container"
    );
    server.stop();
}

per_transport!(sync function_failures_are_502_and_504_with_their_kind);
fn function_failures_are_502_and_504_with_their_kind(transport: Transport) {
    let server = Server::start_on(
        transport,
        "failures",
        "",
        &[
            function("echo", "line", "line", ""),
            function("web", "http", "http", ""),
            function("quick", "line", "line", "timeout = \"500ms\""),
        ],
    );

    let exited = server.invoke("echo", b"!exit 3");
    assert_eq!(exited.status, 502, "{exited}");
    let error = error_of(&exited);
    assert_eq!(error["kind"], "exited", "{exited}");
    assert_eq!(error["exit_code"], 3, "{exited}");
    assert!(exited.header("hotpool-call-id").is_some(), "{exited}");
    // The dead container is gone: the next call gets a new one.
    let after = server.invoke("echo", b"still here");
    assert_eq!(after.status, 200, "{after}");
    assert_eq!(after.body, b"still here");
    assert_eq!(after.header("hotpool-start"), Some("cold"), "{after}");

    // `echo` has memory = "32m" (every function here does).
    let oom = server.invoke("echo", b"!oom");
    assert_eq!(oom.status, 502, "{oom}");
    let error = error_of(&oom);
    assert_eq!(error["kind"], "oom", "{oom}");
    assert_eq!(error["memory_limit_bytes"], 32u64 << 20, "{oom}");

    let slow = server.invoke("quick", b"!sleep 5000");
    assert_eq!(slow.status, 504, "{slow}");
    let error = error_of(&slow);
    assert_eq!(error["kind"], "timeout", "{slow}");
    assert_eq!(error["timeout_ms"], 500, "{slow}");

    let garbage = server.invoke("web", b"!garbage");
    assert_eq!(garbage.status, 502, "{garbage}");
    assert_eq!(error_of(&garbage)["kind"], "protocol_error", "{garbage}");

    server.stop();
}

per_transport!(sync bad_requests_are_refused_before_any_container_starts);
fn bad_requests_are_refused_before_any_container_starts(transport: Transport) {
    let server = Server::start_on(
        transport,
        "refused",
        "max_body = \"1k\"",
        &[
            function("echo", "line", "line", ""),
            function("once", "echo", "cold", ""),
        ],
    );

    let unknown = server.invoke("nope", b"hi");
    assert_eq!(unknown.status, 404, "{unknown}");
    assert_eq!(error_of(&unknown)["kind"], "unknown_function", "{unknown}");

    let big = vec![b'x'; 2048];
    for name in ["echo", "once"] {
        let too_large = server.invoke(name, &big);
        assert_eq!(too_large.status, 413, "{too_large}");
        assert_eq!(
            error_of(&too_large)["kind"],
            "body_too_large",
            "{too_large}"
        );
    }
    // Exactly the limit is accepted.
    let at_limit = server.invoke("once", &vec![b'y'; 1024]);
    assert_eq!(at_limit.status, 200, "{at_limit}");
    assert_eq!(at_limit.body.len(), 1024);

    let two_lines = server.invoke("echo", b"a\nb");
    assert_eq!(two_lines.status, 400, "{two_lines}");
    assert_eq!(error_of(&two_lines)["kind"], "bad_request", "{two_lines}");

    let echo = server.function_status("echo");
    assert_eq!(
        (
            &echo["containers"]["idle"],
            &echo["containers"]["busy"],
            &echo["containers"]["starting"]
        ),
        (&Value::from(0), &Value::from(0), &Value::from(0)),
        "refused calls start no container: {echo}"
    );
    server.stop();
}

/// Checks a `busy` answer: 503, `Retry-After` in whole seconds, JSON kind `busy`.
fn assert_busy(refused: &HttpResponse) {
    assert_eq!(refused.status, 503, "{refused}");
    let retry_after = refused
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After header: {refused}"));
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After is whole seconds: {retry_after:?}"
    );
    let error = error_of(refused);
    assert_eq!(error["kind"], "busy", "{refused}");
    assert_eq!(error["retry_after_s"].to_string(), retry_after, "{refused}");
}

per_transport!(sync a_full_function_is_busy_with_retry_after);
fn a_full_function_is_busy_with_retry_after(transport: Transport) {
    let server = Server::start_on(
        transport,
        "busy",
        "",
        &[function(
            "solo",
            "line",
            "line",
            "max_concurrency = 1\nmax_queue = 0",
        )],
    );

    let occupying = server.invoke_in_background("solo", b"!sleep 3000");
    server.wait_for_count("solo", "/containers/busy", 1, &[&occupying]);

    assert_busy(&server.invoke("solo", b"me too"));

    let occupied = occupying.join();
    assert_eq!(occupied.status, 200, "{occupied}");
    assert_eq!(occupied.body, b"slept");

    // Free again: the same container serves the next call.
    let next = server.invoke("solo", b"my turn");
    assert_eq!(next.status, 200, "{next}");
    assert_eq!(next.header("hotpool-start"), Some("hot"), "{next}");
    server.stop();
}

per_transport!(sync a_full_queue_is_busy_with_retry_after);
/// The hot busy path with a queue: one call runs, one waits, the next is refused.
fn a_full_queue_is_busy_with_retry_after(transport: Transport) {
    let server = Server::start_on(
        transport,
        "busyqueue",
        "",
        &[function(
            "solo",
            "line",
            "line",
            "max_concurrency = 1\nmax_queue = 1\nqueue_timeout = \"60s\"",
        )],
    );

    let occupying = server.invoke_in_background("solo", b"!sleep 3000");
    server.wait_for_count("solo", "/containers/busy", 1, &[&occupying]);
    let queued = server.invoke_in_background("solo", b"queued");
    server.wait_for_count("solo", "/waiting", 1, &[&occupying, &queued]);

    assert_busy(&server.invoke("solo", b"one too many"));

    let occupied = occupying.join();
    assert_eq!(occupied.status, 200, "{occupied}");
    assert_eq!(occupied.body, b"slept");
    let served = queued.join();
    assert_eq!(served.status, 200, "{served}");
    assert_eq!(served.body, b"queued");
    assert_eq!(
        served.header("hotpool-start"),
        Some("hot"),
        "the queued call got the container the first call freed: {served}"
    );
    server.stop();
}

per_transport!(sync a_full_cold_function_is_busy_with_retry_after);
/// `max_queue = 0` on a cold function: one call runs, the next is refused.
fn a_full_cold_function_is_busy_with_retry_after(transport: Transport) {
    let server = Server::start_on(
        transport,
        "busycold",
        "",
        &[format!(
            "[[function]]\nname = \"slow\"\nimage = \"{}\"\ncmd = [\"sleep\", \"3\"]\n\
             format = \"cold\"\nmemory = \"32m\"\nmax_concurrency = 1\nmax_queue = 0\n",
            testfn_image()
        )],
    );

    let occupying = server.invoke_in_background("slow", b"first");
    server.wait_for_count("slow", "/containers/busy", 1, &[&occupying]);

    assert_busy(&server.invoke("slow", b"second"));

    let occupied = occupying.join();
    assert_eq!(occupied.status, 200, "{occupied}");
    assert_eq!(occupied.body, b"first");
    server.stop();
}

per_transport!(sync functions_and_metrics_describe_the_pool);
fn functions_and_metrics_describe_the_pool(transport: Transport) {
    let server = Server::start_on(
        transport,
        "listing",
        "",
        &[
            function("echo", "line", "line", "max_concurrency = 3"),
            function("web", "http", "http", ""),
            function("once", "echo", "cold", ""),
        ],
    );

    let listed = server.get("/functions");
    assert_eq!(listed.status, 200, "{listed}");
    assert_eq!(listed.header("content-type"), Some("application/json"));
    let json = listed.json();
    let mut formats: Vec<(String, String)> = json["functions"]
        .as_array()
        .expect("functions is an array")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or_default().to_owned(),
                f["format"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    formats.sort();
    assert_eq!(
        formats,
        [("echo", "line"), ("once", "cold"), ("web", "http")]
            .map(|(n, f)| (n.to_owned(), f.to_owned())),
        "{json}"
    );
    let echo = server.function_status("echo");
    assert_eq!(echo["image"], testfn_image(), "{echo}");
    assert_eq!(echo["max_concurrency"], 3, "{echo}");
    assert_eq!(echo["memory_bytes"], 32u64 << 20, "{echo}");
    assert_eq!(
        (
            echo["cpus"].as_f64(),
            echo["user"].as_str(),
            echo["read_only"].as_bool()
        ),
        (Some(1.0), Some("1000:1000"), Some(true)),
        "the containment defaults: {echo}"
    );

    let called = server.invoke("echo", b"counted");
    assert_eq!(called.status, 200, "{called}");

    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200, "{metrics}");
    let text = metrics.text();
    assert!(
        text.lines()
            .any(|l| l == "hotpool_calls_total{function=\"echo\",outcome=\"success\"} 1"),
        "one successful call of echo is counted:\n{text}"
    );
    assert!(
        text.contains("# TYPE hotpool_call_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("hotpool_call_duration_seconds_count{function=\"echo\",start=\"cold\"} 1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "hotpool_calls_total{function=\"web\",outcome=\"success\"} 0"),
        "a function never called is counted at 0 from its registration:\n{text}"
    );
    assert!(
        !text.contains("hotpool_calls_total{function=\"web\",outcome=\"timeout\""),
        "an outcome that never happened has no series:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "hotpool_prewarms_total{function=\"web\",outcome=\"used\"} 0"),
        "prewarms are exported at 0 for every hot function:\n{text}"
    );
    server.stop();
}

/// Runs `hotpool serve --config <path>`, which must exit within [`PATIENCE`];
/// returns its status and stderr.
fn serve_to_exit(config: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hotpool"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hotpool serve");
    let stderr = Captured::default();
    let reader = stderr.drain(child.stderr.take().unwrap());
    let Some(status) = wait_for_exit(&mut child, PATIENCE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("hotpool serve with a bad config kept running");
    };
    reader.join().unwrap();
    (status, stderr.text())
}

#[test]
fn bad_configs_exit_2_naming_the_key_or_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let pool = format!("server-test-badconfig-{}", std::process::id());
    std::fs::write(
        &bad,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[pool]\nname = \"{pool}\"\n\
             [[function]]\nname = \"echo\"\nimage = \"hotpool-testfn:dev\"\nmemory = \"12q\"\n",
            support::free_port()
        ),
    )
    .unwrap();
    let (status, stderr) = serve_to_exit(&bad);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("hotpool: bad config {}: ", bad.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"function "echo" (function[0]).memory: "12q" has an unknown unit"#),
        "{stderr}"
    );

    for (config, says) in [
        (
            "[server]\nlisen = \"127.0.0.1:1\"\n",
            "server.lisen: unknown key, did you mean `listen`?\n",
        ),
        (
            "[server]\nlisten = 127.0.0.1:8080\n",
            "line 2, column 15: invalid float, expected nothing\n",
        ),
    ] {
        std::fs::write(&bad, config).unwrap();
        let (status, stderr) = serve_to_exit(&bad);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr,
            format!("hotpool: bad config {}: {says}", bad.display()),
            "one line"
        );
    }

    let missing = dir.path().join("no-such-config.toml");
    let (status, stderr) = serve_to_exit(&missing);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("hotpool: bad config {}", missing.display())),
        "{stderr}"
    );
    assert!(containers_of(&pool).is_empty());
}

per_transport!(sync sigterm_finishes_the_call_in_flight_and_removes_every_container);
fn sigterm_finishes_the_call_in_flight_and_removes_every_container(transport: Transport) {
    let mut server = Server::start_on(
        transport,
        "shutdown",
        "",
        &[
            function("echo", "line", "line", ""),
            function("web", "http", "http", ""),
        ],
    );
    // An idle container of another function, which shutdown must remove too.
    let warm = server.invoke("web", b"warm");
    assert_eq!(warm.status, 200, "{warm}");
    assert_eq!(containers_of(&server.pool).len(), 1);

    let in_flight = server.invoke_in_background("echo", b"!sleep 1500");
    server.wait_for_count("echo", "/containers/busy", 1, &[&in_flight]);
    assert_eq!(containers_of(&server.pool).len(), 2);

    server.terminate();
    let answer = in_flight.join();
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.body, b"slept");

    let status = server.wait();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit after SIGTERM: {status:?}; stderr:\n{}",
        server.stderr.text()
    );
    assert_eq!(
        containers_of(&server.pool),
        Vec::<String>::new(),
        "no container of the pool is left"
    );
    assert!(
        server.stdout.text().contains("every container removed"),
        "stdout:\n{}",
        server.stdout.text()
    );
}

per_transport!(sync function_stderr_goes_to_the_log_with_the_call_id_never_to_the_caller);
fn function_stderr_goes_to_the_log_with_the_call_id_never_to_the_caller(transport: Transport) {
    let server = Server::start_on(
        transport,
        "stderr",
        "",
        &[function("echo", "line", "line", "")],
    );
    let response = server.invoke("echo", b"!stderr a note from the function");
    assert_eq!(response.status, 200, "{response}");
    assert_eq!(
        response.body, b"a note from the function",
        "stderr is not in the body"
    );
    let call_id = response
        .header("hotpool-call-id")
        .expect("a call id")
        .to_owned();
    let deadline = Instant::now() + PATIENCE;
    let logged = loop {
        let log = server.stderr.text();
        if let Some(line) = log.lines().find(|l| l.contains("a note from the function")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the function's stderr never reached the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        logged.contains(&call_id),
        "the log line names the call: {logged}"
    );
    assert!(
        logged.contains("function=echo"),
        "and the function: {logged}"
    );
    server.stop();
}
