//! A function's logs can neither wedge `hotpool serve` nor flood its log: the real
//! binary on a free loopback port, the real engine, testfn's log commands
//! (`!log-storm`, `!log-flood`, `!log-nonl`, `!log-ctrl`), and hotpool's stderr
//! read by a thread of the test, slowly where that is the point.
//!
//! Each test runs its own server with its own pool name, stops it with SIGTERM,
//! and checks that it exits 0 with none of its containers left; each runs on
//! Docker over both transports and on containerd.

mod support;

use std::time::Duration;

use hotpool::driver::Transport;

use support::cli_engine::Engine;
use support::server::{Launch, Server, eventually};

/// The defaults of `FunctionSpec`: what a call may log, and a container per second.
const LOG_PER_CALL: u64 = 1 << 20;

/// How long the slow reader of hotpool's stderr sleeps after each 4 KiB: 16
/// KiB/s, far less than floods write.
const SLOW_READER: Duration = Duration::from_millis(250);

/// A `[[function]]` table: testfn on `engine` in mode `cmd` with the `line` format.
fn function(engine: &Engine, name: &str, cmd: &str) -> String {
    support::server::function_of(&engine.image, name, cmd, "line", "")
}

/// The name of the pool of [`start`]'s server for `test` on `engine` over
/// `transport`, for a guard made before it starts (so dropped after it stops).
fn pool_of(engine: &Engine, transport: Transport, test: &str) -> String {
    format!(
        "server-test-logs-{test}-{}-{transport}-{}",
        engine.name(),
        std::process::id()
    )
}

/// Starts a server on `engine` whose pool is [`pool_of`]`(engine, transport,
/// test)` serving `functions` over `transport`, its stderr read with a pause
/// of `stderr_pause` after each read, and waits until `/healthz` answers. Its
/// stderr is a pipe, not a terminal, and `NO_COLOR` is unset.
fn start(
    engine: &Engine,
    transport: Transport,
    test: &str,
    functions: &[String],
    stderr_pause: Duration,
) -> Server {
    let pool_extra = format!(
        "shutdown_timeout = \"30s\"\ntransport = \"{transport}\"\n\n{}",
        engine.config_table()
    );
    let launch = Launch {
        unset: vec!["NO_COLOR".to_owned()],
        stderr_pause,
        ..Launch::with_env(&engine.env())
    };
    let name = format!("logs-{test}-{}-{transport}", engine.name());
    let server = Server::start_launched(&name, ("", &pool_extra), functions, launch, &[]);
    assert_eq!(server.pool, pool_of(engine, transport, test));
    server
}

/// A call that must answer 200 with `answer`; returns its call id.
fn call_ok(server: &Server, function: &str, body: &str, answer: &str) -> String {
    let response = server.invoke(function, body.as_bytes());
    assert_eq!(response.status, 200, "{function} {body:?}: {response}");
    assert_eq!(response.text(), answer, "{function} {body:?}: {response}");
    response
        .header("hotpool-call-id")
        .expect("a Hotpool-Call-Id header")
        .to_owned()
}

/// Asserts that `server` drove `engine`; SIGTERM, then asserts exit status 0
/// and that no container of the pool is left on `engine` (nor in Docker);
/// returns everything the server wrote to stderr.
fn stop(engine: &Engine, server: Server) -> String {
    let label = format!("engine=\"{}\"", engine.name());
    assert!(
        server.metric("hotpool_engine_api_seconds_count", &[&label]) > 0.0,
        "the server's engine calls are not {label}"
    );
    let (pool, stderr) = (server.pool.clone(), server.stderr.clone());
    server.stop();
    assert_eq!(
        engine.containers_of(&pool),
        Vec::<String>::new(),
        "containers of pool {pool} are left after shutdown"
    );
    stderr.text()
}

/// The records of hotpool's log that carry `call_id`.
fn records_of<'a>(log: &'a str, call_id: &str) -> Vec<&'a str> {
    let tag = format!("call_id={call_id}");
    log.lines()
        .filter(|line| line.split(' ').any(|field| field == tag))
        .collect()
}

/// The `dropped_bytes` of a "bytes of stderr dropped" record.
fn dropped_bytes(record: &str) -> Option<u64> {
    record
        .split(' ')
        .find_map(|field| field.strip_prefix("dropped_bytes="))?
        .parse()
        .ok()
}

per_engine_binary_transport!(a_slow_log_reader_and_two_log_floods_do_not_stall_the_server);
fn a_slow_log_reader_and_two_log_floods_do_not_stall_the_server(
    engine: Engine,
    transport: Transport,
) {
    let functions = [
        function(&engine, "flood-a", "line"),
        function(&engine, "flood-b", "line"),
        function(&engine, "echo", "line"),
    ];
    let _guard = engine.guard(&pool_of(&engine, transport, "slow-reader"));
    let server = start(&engine, transport, "slow-reader", &functions, SLOW_READER);
    // Two containers write stderr as fast as they can for as long as they live.
    call_ok(&server, "flood-a", "!log-storm", "storming");
    call_ok(&server, "flood-b", "!log-storm", "storming");
    // Both floods reach hotpool, faster than their rate limit: hundreds of KiB
    // each, against a reader that takes 16 KiB a second.
    let rate_cut = |flooder: &str| {
        server.metric(
            "hotpool_function_log_dropped_bytes_total",
            &[&format!("function=\"{flooder}\""), "reason=\"rate\""],
        )
    };
    eventually("both flooders are rate-limited", || {
        rate_cut("flood-a") > 0.0 && rate_cut("flood-b") > 0.0
    });
    for i in 0..20 {
        let health = server.get("/healthz");
        assert_eq!(health.status, 200, "/healthz: {health}");
        call_ok(
            &server,
            "echo",
            &format!("hello {i}"),
            &format!("hello {i}"),
        );
    }
    // The flooders themselves still serve calls.
    call_ok(&server, "flood-a", "still here", "still here");
    call_ok(&server, "flood-b", "still here", "still here");
    // What the reader cannot take is dropped and counted, not queued without end.
    eventually("hotpool drops log records it cannot write", || {
        server.metric("hotpool_log_dropped_total", &[]) > 0.0
    });
    // The flooding containers are stopped and removed, the server exits.
    stop(&engine, server);
}

per_engine_binary_transport!(a_log_flood_is_cut_to_its_budget_with_the_rest_said_dropped);
fn a_log_flood_is_cut_to_its_budget_with_the_rest_said_dropped(
    engine: Engine,
    transport: Transport,
) {
    let functions = [function(&engine, "flood", "line")];
    let _guard = engine.guard(&pool_of(&engine, transport, "flood"));
    let server = start(&engine, transport, "flood", &functions, Duration::ZERO);
    const FLOOD: u64 = 8_000_000;
    let call_id = call_ok(
        &server,
        "flood",
        &format!("!log-flood {FLOOD}"),
        "flooded 8000000",
    );
    // Every byte is logged or said dropped (once stderr is quiet for a moment).
    let (mut logged, mut dropped, mut notes) = (0, 0, 0);
    eventually("the flood is all logged or said dropped", || {
        let log = server.stderr.text();
        let records = records_of(&log, &call_id);
        // Flood lines are 100 bytes, newline included.
        logged = 100 * records.iter().filter(|r| r.contains(": flood 0")).count() as u64;
        let said: Vec<u64> = records.iter().filter_map(|r| dropped_bytes(r)).collect();
        (dropped, notes) = (said.iter().sum(), said.len());
        logged + dropped == FLOOD
    });
    assert!(logged > 0, "nothing of the flood was logged");
    assert!(
        logged <= LOG_PER_CALL,
        "{logged} bytes logged for one call, over its budget of {LOG_PER_CALL}"
    );
    // One record per stretch of drops, not one per dropped line.
    assert!((1..=20).contains(&notes), "{notes} dropped records");
    let cut = server.metric(
        "hotpool_function_log_dropped_bytes_total",
        &["function=\"flood\""],
    );
    assert!(cut > 0.0, "the cut is not counted in the metric");
    stop(&engine, server);
}

per_engine_binary_transport!(
    function_logs_are_escaped_cut_at_16_kib_and_hotpools_log_has_no_colours
);
fn function_logs_are_escaped_cut_at_16_kib_and_hotpools_log_has_no_colours(
    engine: Engine,
    transport: Transport,
) {
    let functions = [
        function(&engine, "ctrl", "line"),
        function(&engine, "fail", "line"),
    ];
    let _guard = engine.guard(&pool_of(&engine, transport, "escape"));
    let server = start(&engine, transport, "escape", &functions, Duration::ZERO);
    // stderr travels apart from stdout: a call's records are awaited before the
    // next call, or they could arrive during it and carry its id.
    let ctrl = call_ok(&server, "ctrl", "!log-ctrl", "wrote controls");
    let escaped = "ctrl \\x1b[31mred\\x1b[0m \\x1b[2J cr\\rhidden bell\\x07 nul\\x00 bad\\xff end";
    eventually("the control characters are logged, escaped", || {
        records_of(&server.stderr.text(), &ctrl)
            .iter()
            .any(|r| r.contains(escaped))
    });
    // 100 000 bytes without a newline: one record of 16 KiB, the rest said dropped.
    let nonl = call_ok(&server, "ctrl", "!log-nonl 100000", "wrote 100000");
    eventually("the rest of the long line is said dropped", || {
        let log = server.stderr.text();
        let said: u64 = records_of(&log, &nonl)
            .iter()
            .filter_map(|r| dropped_bytes(r))
            .sum();
        said == 100_000 - 16 * 1024
    });
    let log = server.stderr.text();
    let truncated: Vec<_> = records_of(&log, &nonl)
        .into_iter()
        .filter(|r| r.contains(" truncated=true"))
        .collect();
    assert_eq!(truncated.len(), 1, "{} records", truncated.len());
    assert!(truncated[0].contains(&"x".repeat(16 * 1024)));
    assert!(!truncated[0].contains(&"x".repeat(16 * 1024 + 1)));

    // A call that fails after writing control characters (in a container of its
    // own: ctrl's stderr is inside a cut line until its next newline): its error
    // keeps the raw stderr tail, and hotpool's record of the failure stays one line.
    let again = call_ok(&server, "fail", "!log-ctrl", "wrote controls");
    eventually("the second control line is logged", || {
        records_of(&server.stderr.text(), &again)
            .iter()
            .any(|r| r.contains(escaped))
    });
    let exited = server.invoke("fail", b"!exit 3");
    assert_eq!(exited.status, 502, "{exited}");
    let error = &exited.json()["error"];
    assert_eq!(error["kind"], "exited", "{exited}");
    let tail = error["stderr_tail"].as_str().expect("a stderr tail");
    assert!(
        tail.contains("\x1b[31mred\x1b[0m \x1b[2J cr\rhidden"),
        "{tail:?}"
    );
    assert!(tail.ends_with(" end\nexiting with 3\n"), "{tail:?}");
    assert!(tail.len() <= 4096, "the tail is {} bytes", tail.len());

    let log = stop(&engine, server);
    let failed: Vec<_> = log.lines().filter(|r| r.contains("call failed")).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].contains("kind=\"exited\"") && failed[0].contains("end\\nexiting with 3"),
        "hotpool's record of the failed call is not one line with its tail: {failed:?}"
    );
    // Not a terminal: no colour codes, and no function can put escapes or carriage
    // returns in the log.
    assert!(!log.contains('\x1b'), "ESC in the log");
    assert!(!log.contains('\r'), "CR in the log");
}
