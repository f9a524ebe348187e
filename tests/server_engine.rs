//! `hotpool serve` with an engine that stops answering, on real parts: the real
//! binary and the real engine, reached through a proxy of the engine's socket
//! that the test wedges and unwedges (`support/wedge.rs`), never the engine
//! itself, which other tests share.
//!
//! While the engine is wedged, `/healthz` turns 503 and says what failed, a hot
//! call over the direct transport is still answered (it needs no engine), and
//! a call that needs a start gets `engine_error` within the engine's
//! deadlines; unwedged, `/healthz` is 200 again. A stop while it is wedged ends
//! within the shutdown timeout and the removal deadlines, and names the
//! container it left. The bounds below are margins for a loaded machine, not
//! speeds.

mod support;

use std::time::{Duration, Instant};

use hotpool::driver::docker::Deadlines;
use serde_json::{Value, json};

use support::server::{Server, containers_of, error_of, function};
use support::wedge::WedgeProxy;
use support::{process_dirs_in, remove_pool_containers, runtime_root};

/// Slack on top of a deadline for the answer to come back.
const MARGIN: Duration = Duration::from_secs(20);
/// How long `/healthz` may take to notice a wedge, or a recovery: a few probes
/// every few seconds, each with a deadline of a few seconds.
const NOTICE: Duration = Duration::from_secs(60);

/// Functions kept hot for ten minutes; `fresh` waits long enough for its
/// start to fail by the engine's deadline rather than its queue timeout.
fn functions() -> Vec<String> {
    vec![
        function("hot", "line", "line", "keep_alive = \"fixed:10m\""),
        function(
            "fresh",
            "line",
            "line",
            "keep_alive = \"fixed:10m\"\nqueue_timeout = \"90s\"",
        ),
    ]
}

/// Removes, when dropped, what a server of `pool` with process id `pid` left
/// behind: its containers and its pipe directories.
struct LeftBehind {
    pool: String,
    pid: u32,
}

impl Drop for LeftBehind {
    fn drop(&mut self) {
        remove_pool_containers(&self.pool);
        for dir in process_dirs_in(&runtime_root(), self.pid) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A server whose engine is reached through `proxy`, its leftovers removed
/// on drop.
fn serve_through(proxy: &WedgeProxy, test: &str, pool_extra: &str) -> (Server, LeftBehind) {
    let server = Server::start_with_env(
        test,
        "",
        pool_extra,
        &functions(),
        &[("DOCKER_HOST", &proxy.docker_host())],
    );
    let guard = LeftBehind {
        pool: server.pool.clone(),
        pid: server.pid(),
    };
    (server, guard)
}

/// Polls `/healthz` until it answers `status`, failing after `within`.
fn health_turns(server: &Server, status: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let health = server.get("/healthz");
        if health.status == status {
            return health.json();
        }
        assert!(
            Instant::now() < deadline,
            "/healthz did not turn {status} within {within:?}: {health}; stderr:\n{}",
            server.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_wedged_engine_fails_healthz_and_starts_while_hot_calls_go_on() {
    let proxy = WedgeProxy::start();
    let (server, _left_behind) = serve_through(&proxy, "engine-wedged", "");
    assert_eq!(
        server.get("/healthz").json(),
        json!({"status": "ok", "engine": "ok"})
    );
    let warm = server.invoke("hot", b"warm up");
    assert_eq!(warm.status, 200, "{warm}");

    proxy.wedge();
    let health = health_turns(&server, 503, NOTICE);
    assert_eq!(health["status"], "engine_unreachable", "{health}");
    let problem = health["engine"].as_str().expect("engine is a string");
    assert!(
        problem.contains("the docker engine did not answer ping within")
            && problem.contains("failing since"),
        "{health}"
    );

    let hot = server.invoke("hot", b"still served");
    assert_eq!(hot.status, 200, "a hot direct call needs no engine: {hot}");
    assert_eq!(hot.header("hotpool-start"), Some("hot"), "{hot}");
    assert_eq!(hot.body, b"still served");

    let deadlines = Deadlines::default();
    let asked = Instant::now();
    let fresh = server.invoke("fresh", b"needs a start");
    let waited = asked.elapsed();
    assert_eq!(fresh.status, 500, "{fresh}");
    let error = error_of(&fresh);
    assert_eq!(error["kind"], "engine_error", "{fresh}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("the docker engine did not answer")),
        "{fresh}"
    );
    assert!(
        waited <= deadlines.create + MARGIN,
        "the call needing a start waited {waited:?}"
    );

    let metrics = server.get("/metrics").text();
    assert!(
        metrics.lines().any(|line| {
            line.starts_with("hotpool_engine_api_seconds_count{")
                && line.contains("op=\"ping\"")
                && line.contains("result=\"timeout\"")
        }),
        "no ping timed out in the metric:\n{metrics}"
    );
    assert!(
        !server.stderr.text().contains("not on this host"),
        "an engine behind a unix socket is local: direct calls stay direct\n{}",
        server.stderr.text()
    );

    proxy.unwedge();
    assert_eq!(
        health_turns(&server, 200, NOTICE),
        json!({"status": "ok", "engine": "ok"})
    );
    let again = server.invoke("fresh", b"started now");
    assert_eq!(again.status, 200, "{again}");
    server.stop();
}

#[test]
fn a_stop_with_a_wedged_engine_ends_in_bounded_time_and_names_what_it_left() {
    let proxy = WedgeProxy::start();
    let shutdown_timeout = Duration::from_secs(2);
    let (mut server, _left_behind) =
        serve_through(&proxy, "engine-stop", "shutdown_timeout = \"2s\"");
    let warm = server.invoke("hot", b"warm up");
    assert_eq!(warm.status, 200, "{warm}");
    let names = container_names(&server.pool);
    assert_eq!(names.len(), 1, "one idle container: {names:?}");

    proxy.wedge();
    let stopped = Instant::now();
    server.terminate();
    let bound = shutdown_timeout + Deadlines::default().removal() + MARGIN;
    let status = server.wait_within(bound);
    let took = stopped.elapsed();
    let stdout = server.stdout.text();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "no exit 1 within {bound:?} of SIGTERM ({status:?}); stdout:\n{stdout}\nstderr:\n{}",
        server.stderr.text()
    );
    let line = stdout
        .lines()
        .find(|line| line.starts_with("hotpool: stopped;"))
        .unwrap_or_else(|| panic!("no stop line in stdout:\n{stdout}"));
    let id = names[0]
        .strip_prefix("hotpool-")
        .expect("a hotpool container");
    assert!(
        line.contains(&format!(
            "the engine did not remove 1 container of pool {} ({id})",
            server.pool
        )) && line.contains(&format!(
            "`docker ps -a --filter label=hotpool.pool={}` lists what is left",
            server.pool
        )),
        "{line}"
    );
    assert_eq!(
        containers_of(&server.pool).len(),
        1,
        "the container is still there, as the line says (stopped after {took:?})"
    );
    proxy.unwedge();
}

/// The names of the containers labelled `hotpool.pool=<pool>`.
fn container_names(pool: &str) -> Vec<String> {
    let output = std::process::Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=hotpool.pool={pool}"))
        .output()
        .expect("run docker ps");
    assert!(output.status.success(), "docker ps failed");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}
