//! Keep-alive policies in `hotpool serve`, on the real engine: `/functions` shows
//! each function's policy and when its next idle container goes, and `adaptive`
//! prewarms a container before calls that come like clockwork, so they are served
//! warm and counted in `hotpool_prewarms_total`; a warm floor (`min_idle`) has
//! a container running before any call.

mod support;

use std::time::Duration;

use serde_json::Value;

use support::server::{Server, containers_of, docker_ps, eventually, function};

/// A timer's period: long enough for a prewarm to be worth it, short enough to
/// keep the test about a minute.
const CLOCKWORK_PERIOD: Duration = Duration::from_secs(5);
/// Calls of the clockwork test: enough periods for the pattern to be learned,
/// then calls for prewarmed containers to serve.
const CLOCKWORK_CALLS: usize = 13;

/// `hotpool_prewarms_total{function,outcome}` as `/metrics` shows it now; `None`
/// when it has no such series.
fn prewarms(server: &Server, function: &str, outcome: &str) -> Option<f64> {
    let page = server.get("/metrics").text();
    let labels = [
        format!("function=\"{function}\""),
        format!("outcome=\"{outcome}\""),
    ];
    page.lines()
        .filter_map(|line| line.strip_prefix("hotpool_prewarms_total{"))
        .filter_map(|rest| rest.split_once("} "))
        .find(|(found, _)| {
            labels
                .iter()
                .all(|label| found.split(',').any(|l| l == label))
        })
        .map(|(_, value)| value.trim().parse().expect("a sample value"))
}

#[test]
fn functions_show_each_keep_alive_and_when_the_next_idle_container_goes() {
    let server = Server::start_with(
        "keep-alive-listing",
        "",
        "eviction = \"greedy-dual\"",
        &[
            function("fixed", "line", "line", "keep_alive = \"fixed:30s\""),
            function("shorthand", "line", "line", "idle_timeout = \"45s\""),
            function("learning", "line", "line", ""),
            function("once", "echo", "cold", ""),
        ],
    );
    for (name, keep_alive) in [
        ("fixed", "fixed:30s"),
        ("shorthand", "fixed:45s"),
        ("learning", "adaptive"),
        ("once", "adaptive"),
    ] {
        let status = server.function_status(name);
        assert_eq!(status["keep_alive"], keep_alive, "{status}");
        assert_eq!(status["eviction"], "greedy-dual", "the pool's: {status}");
        assert_eq!(
            status["idle_deadline_ms"],
            Value::Null,
            "no container is idle yet: {status}"
        );
    }

    for name in ["fixed", "once"] {
        let called = server.invoke(name, b"hello");
        assert_eq!((called.status, called.text()), (200, "hello".to_owned()));
    }
    let fixed = server.function_status("fixed");
    assert_eq!(fixed["containers"]["idle"], 1, "{fixed}");
    let deadline = fixed["idle_deadline_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("a number once a container is idle: {fixed}"));
    assert!(
        deadline > 0 && deadline <= 30_000,
        "the idle container goes within its 30 s: {fixed}"
    );
    let once = server.function_status("once");
    assert_eq!(
        once["idle_deadline_ms"],
        Value::Null,
        "a cold function keeps no container: {once}"
    );
    assert_eq!(
        prewarms(&server, "fixed", "used"),
        Some(0.0),
        "a hot function's prewarms are exported from the start"
    );
    assert_eq!(
        prewarms(&server, "once", "used"),
        None,
        "a cold function never prewarms"
    );
    server.stop();
}

#[test]
fn adaptive_prewarms_before_clockwork_calls_and_they_are_served_warm() {
    let server = Server::start(
        "keep-alive-clockwork",
        "",
        &[function(
            "tick",
            "line",
            "line",
            // A cold start worth little idle memory: the container goes a second
            // after each call, and only a prewarm can serve the next one warm.
            "keep_alive = \"adaptive:0.001\"",
        )],
    );
    assert_eq!(
        server.function_status("tick")["keep_alive"],
        "adaptive:0.001"
    );
    // Calls on a timer's schedule, as a cron job makes them: a period apart
    // from the first, however long each took. (A caller that sleeps after
    // each answer instead shortens its period by a cold start once its calls
    // turn hot, and the clock takes a few spells to follow.)
    let first = std::time::Instant::now();
    let mut starts = Vec::new();
    for call in 0..CLOCKWORK_CALLS {
        let due = first + CLOCKWORK_PERIOD * call as u32;
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        let body = format!("tick {call}");
        let answer = server.invoke("tick", body.as_bytes());
        assert_eq!((answer.status, answer.text()), (200, body), "{answer}");
        starts.push(answer.header("hotpool-start").unwrap_or("none").to_owned());
    }
    let used = prewarms(&server, "tick", "used").expect("tick's prewarms are exported");
    assert!(
        used > 0.0,
        "a prewarmed container served a call (starts {starts:?}); stderr:\n{}",
        server.stderr.text()
    );
    assert_eq!(starts[0], "cold", "the first call starts a container");
    // Eight equal periods make the pattern; the calls after them are served warm.
    let learned = &starts[9..];
    assert!(
        learned.iter().all(|start| start == "hot"),
        "once the periods are learned every call is served warm, {used} of them by prewarmed containers: {starts:?}"
    );
    assert!(
        used >= learned.len() as f64,
        "{used} prewarms used: {starts:?}"
    );
    server.stop();
}

#[test]
fn a_warm_floor_has_a_container_running_before_the_first_call_which_is_hot() {
    let server = Server::start(
        "keep-alive-floor",
        "",
        &[
            function("floored", "line", "line", "min_idle = 1"),
            function("plain", "line", "line", ""),
        ],
    );
    eventually("the floor's container runs, no call made", || {
        server.function_status("floored")["containers"]["idle"] == 1
    });
    let running = docker_ps(&[
        "--filter",
        &format!("label=hotpool.pool={}", server.pool),
        "--filter",
        "status=running",
    ]);
    assert_eq!(running.len(), 1, "one running container, the floor's");
    assert_eq!(containers_of(&server.pool), running);
    assert_eq!(server.function_status("floored")["min_idle"], 1);
    assert_eq!(server.function_status("plain")["min_idle"], 0);
    let answer = server.invoke("floored", b"first");
    assert_eq!((answer.status, answer.text()), (200, "first".to_owned()));
    assert_eq!(answer.header("hotpool-start"), Some("hot"), "{answer}");
    // The call took the floor's container: another is started for the floor.
    eventually("the floor is refilled", || {
        server.function_status("floored")["containers"]["idle"] == 2
    });
    server.stop();
}
