//! `GET /calls/{id}/log` of `hotpool serve`: a call's stderr read back by its
//! `Hotpool-Call-Id`, escaped as in the server's log; a 404 `unknown_call` for an
//! id the server does not keep; the same tokens as `/invoke`; and a function
//! flooding stderr call after call, which must keep the store within
//! `[server] call_logs` while a failed call's log outlives the successful ones.
//! `?follow=1` streams the log of a call in flight until the call ends. The real
//! binary on Docker and containerd (the token check, the HTTP layer's, on
//! Docker alone; `tests/server_router.rs` checks it in-process too), testfn's `!stderr`, `!log-ctrl`, `!log-flood`,
//! `!log-storm`, `!sleep` and `!exit`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::cli_engine::Engine;
use support::http::{self, HttpResponse};
use support::server::{Server, error_of, eventually, function, function_of};

/// The name of the pool of [`start`]'s server for `test` on `engine`, for a
/// guard made before it starts (so dropped after it stops).
fn pool_of(engine: &Engine, test: &str) -> String {
    format!(
        "server-test-{test}-{}-{}",
        engine.name(),
        std::process::id()
    )
}

/// A server on `engine` of one `line` function, `name`, with `[server]` lines
/// `server_extra` and function lines `function_extra`, and the `[[function]]`
/// tables `more`; its pool is [`pool_of`]`(engine, test)`.
fn start(
    engine: &Engine,
    test: &str,
    server_extra: &str,
    (name, function_extra): (&str, &str),
    more: &[String],
) -> Server {
    let mut functions = vec![function_of(
        &engine.image,
        name,
        "line",
        "line",
        function_extra,
    )];
    functions.extend_from_slice(more);
    let server = Server::start_with_env(
        &format!("{test}-{}", engine.name()),
        server_extra,
        &format!("shutdown_timeout = \"30s\"\n\n{}", engine.config_table()),
        &functions,
        &engine.env(),
    );
    assert_eq!(server.pool, pool_of(engine, test));
    server
}

/// Stops `server`: it exits 0, and none of its containers is left on `engine`.
fn stop(engine: &Engine, server: Server) {
    let pool = server.pool.clone();
    server.stop();
    assert_eq!(engine.containers_of(&pool), Vec::<String>::new());
}

/// `GET /calls/<call_id>/log`.
fn log_of(server: &Server, call_id: &str) -> HttpResponse {
    server.get(&format!("/calls/{call_id}/log"))
}

/// The `Hotpool-Call-Id` of an answer.
fn call_id_of(response: &HttpResponse) -> String {
    response
        .header("hotpool-call-id")
        .unwrap_or_else(|| panic!("no Hotpool-Call-Id: {response}"))
        .to_owned()
}

/// Waits until the log of `call_id` reads `text` (stderr is read apart from
/// the answer, so its last lines may come a moment after it); returns it.
fn wait_for_log(server: &Server, call_id: &str, text: &str) -> HttpResponse {
    eventually(&format!("the log of {call_id} reads {text:?}"), || {
        let log = log_of(server, call_id);
        log.status == 200 && log.text() == text
    });
    log_of(server, call_id)
}

per_engine_binary!(a_calls_stderr_comes_back_by_its_id);
fn a_calls_stderr_comes_back_by_its_id(engine: Engine) {
    let _guard = engine.guard(&pool_of(&engine, "call-logs"));
    // A cold function that writes a line on stderr, then echoes.
    let cold = format!(
        "[[function]]\nname = \"cold\"\nimage = \"{}\"\ncmd = [\"stderr\", \"cold and alone\"]\n\
         format = \"cold\"\nmemory = \"32m\"\n",
        engine.image
    );
    let server = start(&engine, "call-logs", "", ("echo", ""), &[cold]);

    let said = server.invoke("echo", b"!stderr hello from the call");
    assert_eq!(said.status, 200, "{said}");
    let id = call_id_of(&said);
    let log = wait_for_log(&server, &id, "hello from the call\n");
    assert_eq!(
        log.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{log}"
    );
    assert_eq!(log.header("hotpool-call-state"), Some("succeeded"), "{log}");
    assert_eq!(log.header("hotpool-call-id"), Some(id.as_str()), "{log}");

    // A cold call's container logs under its call too.
    let cold = server.invoke("cold", b"body");
    assert_eq!((cold.status, cold.text().as_str()), (200, "body"), "{cold}");
    wait_for_log(&server, &call_id_of(&cold), "cold and alone\n");

    // A call that wrote nothing has no log: it cost the store nothing.
    let quiet = server.invoke("echo", b"quiet");
    assert_eq!(quiet.status, 200, "{quiet}");
    let log = log_of(&server, &call_id_of(&quiet));
    assert_eq!(log.status, 404, "{log}");
    assert_eq!(error_of(&log)["kind"], "unknown_call", "{log}");

    // Control characters and bytes that are not UTF-8 come back escaped.
    let controls = server.invoke("echo", b"!log-ctrl");
    assert_eq!(controls.status, 200, "{controls}");
    let log = wait_for_log(
        &server,
        &call_id_of(&controls),
        "ctrl \\x1b[31mred\\x1b[0m \\x1b[2J cr\\rhidden bell\\x07 nul\\x00 bad\\xff end\n",
    );
    assert!(!log.body.contains(&0x1b), "{log}");

    // A failed call's log, with the line it wrote before it exited.
    let failed = server.invoke("echo", b"!exit 3");
    assert_eq!(failed.status, 502, "{failed}");
    assert_eq!(error_of(&failed)["kind"], "exited", "{failed}");
    let log = wait_for_log(&server, &call_id_of(&failed), "exiting with 3\n");
    assert_eq!(log.header("hotpool-call-state"), Some("failed"), "{log}");

    // An id the server never gave.
    let unknown = log_of(&server, "no-such-call");
    assert_eq!(unknown.status, 404, "{unknown}");
    let error = error_of(&unknown);
    assert_eq!(error["kind"], "unknown_call", "{unknown}");
    assert_eq!(error["call_id"], "no-such-call", "{unknown}");
    stop(&engine, server);
}

// Decided by the HTTP layer, not the engine: on Docker alone.
#[test]
fn a_call_log_needs_a_token_as_calls_do() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "secret-one\n").unwrap();
    let server = Server::start(
        "call-logs-auth",
        &format!("auth_tokens_file = \"{}\"", tokens.display()),
        &[function("echo", "line", "line", "")],
    );
    let with_token = [("Authorization", "Bearer secret-one")];
    let said = http::request_with(
        server.addr,
        "POST",
        "/invoke/echo",
        &with_token,
        b"!stderr for token holders",
    )
    .unwrap();
    assert_eq!(said.status, 200, "{said}");
    let path = format!("/calls/{}/log", call_id_of(&said));

    for refused in [
        http::get(server.addr, &path).unwrap(),
        http::request_with(
            server.addr,
            "GET",
            &path,
            &[("Authorization", "Bearer secret-two")],
            b"",
        )
        .unwrap(),
    ] {
        assert_eq!(refused.status, 401, "{refused}");
        assert_eq!(error_of(&refused)["kind"], "unauthorized", "{refused}");
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    }
    eventually("the log is read with the token", || {
        let log = http::request_with(server.addr, "GET", &path, &with_token, b"").unwrap();
        log.status == 200 && log.text() == "for token holders\n"
    });
    server.stop();
}

per_engine_binary!(a_stderr_flood_stays_within_call_logs_and_a_failed_calls_log_outlives_it);
fn a_stderr_flood_stays_within_call_logs_and_a_failed_calls_log_outlives_it(engine: Engine) {
    const BOUND: f64 = (1 << 20) as f64;
    const CALLS: usize = 24;
    let _guard = engine.guard(&pool_of(&engine, "call-logs-flood"));
    let server = start(
        &engine,
        "call-logs-flood",
        "call_logs = \"1m\"",
        ("flood", "log_per_call = \"256k\"\nlog_rate = \"64m\""),
        &[],
    );
    let failed = server.invoke("flood", b"!exit 3");
    assert_eq!(failed.status, 502, "{failed}");
    let failed_id = call_id_of(&failed);
    wait_for_log(&server, &failed_id, "exiting with 3\n");

    // 24 calls of 200 KB of stderr each: 4.8 MB through a store of 1 MiB.
    let mut flooded = Vec::new();
    for _ in 0..CALLS {
        let response = server.invoke("flood", b"!log-flood 200000");
        assert_eq!(response.status, 200, "{response}");
        assert_eq!(response.text(), "flooded 200000");
        flooded.push(call_id_of(&response));
        let held = server.metric("hotpool_call_logs_bytes", &[]);
        assert!(
            0.0 < held && held <= BOUND,
            "the store holds {held} bytes, bound {BOUND}"
        );
    }
    let last = flooded.last().unwrap();
    eventually("the last flood's log is kept, its lines in it", || {
        let log = log_of(&server, last);
        log.status == 200
            && log
                .text()
                .lines()
                .filter(|l| l.starts_with("flood "))
                .count()
                > 100
    });
    let held = server.metric("hotpool_call_logs_bytes", &[]);
    assert!(held <= BOUND, "the store holds {held} bytes, bound {BOUND}");

    // The oldest successful logs made room; the failed one stayed.
    let first = log_of(&server, &flooded[0]);
    assert_eq!(first.status, 404, "{first}");
    assert_eq!(error_of(&first)["kind"], "unknown_call", "{first}");
    let kept = log_of(&server, &failed_id);
    assert_eq!(
        (kept.status, kept.text().as_str()),
        (200, "exiting with 3\n"),
        "{kept}"
    );
    assert!(server.metric("hotpool_call_logs_evicted_total", &["state=\"succeeded\""]) >= 1.0);
    assert_eq!(
        server.metric("hotpool_call_logs_evicted_total", &["state=\"failed\""]),
        0.0
    );
    stop(&engine, server);
}

per_engine_binary!(a_call_in_flight_is_followed_until_it_ends);
fn a_call_in_flight_is_followed_until_it_ends(engine: Engine) {
    let _guard = engine.guard(&pool_of(&engine, "call-logs-follow"));
    let server = start(
        &engine,
        "call-logs-follow",
        "",
        ("storm", "log_rate = \"16k\""),
        &[],
    );
    // A thread of the container writes stderr for ever, tagged with the call in
    // it: this one, then the next.
    let storming = server.invoke("storm", b"!log-storm");
    assert_eq!(storming.text(), "storming", "{storming}");
    let first = call_id_of(&storming);
    let sleeping = server.invoke_in_background("storm", b"!sleep 10000");
    // The id of the call in flight, as the server's log shows it.
    let mut in_flight = None;
    eventually(
        "the storm's lines are logged under the sleeping call",
        || {
            in_flight = (server.stderr.text().lines())
                .filter_map(|line| line.split_once("function=storm call_id="))
                .filter_map(|(_, rest)| rest.split_whitespace().next())
                .find(|id| *id != first)
                .map(str::to_owned);
            in_flight.is_some()
        },
    );
    let id = in_flight.unwrap();
    sleeping.assert_running();

    let mut stream = TcpStream::connect(server.addr).unwrap();
    write!(
        stream,
        "GET /calls/{id}/log?follow=1 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    )
    .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("\r\n\r\n")
        || !String::from_utf8_lossy(&received).contains("flood ")
    {
        let n = stream.read(&mut buffer).unwrap();
        assert!(
            n > 0,
            "the stream ended early: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..n]);
    }
    // Lines came while the call still ran.
    sleeping.assert_running();
    stream.read_to_end(&mut received).unwrap();
    let followed = http::parse(&received).unwrap();
    assert_eq!(followed.status, 200, "{followed}");
    assert_eq!(followed.header("hotpool-call-state"), Some("running"));
    assert_eq!(followed.header("transfer-encoding"), Some("chunked"));
    let answered = sleeping.join();
    assert_eq!(answered.status, 200, "{answered}");
    assert_eq!(call_id_of(&answered), id);

    // The stream ended once the call had: it holds what the log held then.
    let log = log_of(&server, &id);
    assert_eq!(log.header("hotpool-call-state"), Some("succeeded"), "{log}");
    let (followed, kept) = (followed.text(), log.text());
    assert!(
        kept.starts_with(&followed),
        "the followed log is not the start of the kept one:\n{followed}\n---\n{kept}"
    );
    assert!(followed.lines().filter(|l| l.starts_with("flood ")).count() > 10);

    let refused = server.get(&format!("/calls/{id}/log?follow=yes"));
    assert_eq!(refused.status, 400, "{refused}");
    assert_eq!(error_of(&refused)["kind"], "bad_request", "{refused}");
    stop(&engine, server);
}
