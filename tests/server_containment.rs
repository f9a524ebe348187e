//! `hotpool serve` against hostile or careless clients: unknown routes, refused
//! calls on keep-alive connections, malformed and slow bodies, idle sockets by the
//! hundred, a client holding a half-sent head through shutdown, and bearer tokens.
//!
//! Each test runs the real binary with its own pool on the real engine and stops
//! it with SIGTERM, checking that nothing of its pool is left. Those where
//! clients hold or wait on a function run on Docker over both transports and
//! on containerd; those the HTTP layer alone decides (routes, refused bodies,
//! tokens) run on Docker alone.

mod support;

use hotpool::driver::Transport;

use std::any::Any;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use support::cli_engine::Engine;
use support::http::{self, HttpResponse};
use support::server::{Server, error_of, eventually, function, function_of};

/// The `[pool]` line of the servers that need no shorter shutdown.
const SHUTDOWN: &str = "shutdown_timeout = \"30s\"";

/// A server of an `echo` function on one engine, and the guard of its pool
/// there.
struct EchoServer {
    server: Server,
    _guard: Box<dyn Any>,
    engine: Engine,
}

impl EchoServer {
    /// Starts a server on `engine` whose function `echo` runs over
    /// `transport`, with `[server]` lines `server_extra` and `[pool]` lines
    /// `pool_extra`.
    fn start(
        engine: Engine,
        transport: Transport,
        test: &str,
        server_extra: &str,
        pool_extra: &str,
    ) -> EchoServer {
        let server = Server::start_with_env(
            &format!("{test}-{}-{transport}", engine.name()),
            server_extra,
            &format!(
                "{pool_extra}\ntransport = \"{transport}\"\n\n{}",
                engine.config_table()
            ),
            &[function_of(&engine.image, "echo", "line", "line", "")],
            &engine.env(),
        );
        EchoServer {
            _guard: engine.guard(&server.pool),
            server,
            engine,
        }
    }

    /// Asserts that the server drove the test's engine; [`Server::stop`], then
    /// asserts that the engine has nothing of the pool.
    fn stop(self) {
        let timed = format!(
            "hotpool_engine_api_seconds_count{{engine=\"{}\"",
            self.engine.name()
        );
        let metrics = self.server.get("/metrics").text();
        assert!(metrics.contains(&timed), "no {timed} in /metrics");
        let pool = self.server.pool.clone();
        self.server.stop();
        assert_eq!(
            self.engine.containers_of(&pool),
            Vec::<String>::new(),
            "containers of pool {pool} are left on {}",
            self.engine.name()
        );
    }
}

impl Deref for EchoServer {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl DerefMut for EchoServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// Reads one response from a keep-alive connection (Content-Length bodies).
fn read_response(stream: &mut TcpStream) -> HttpResponse {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !http::complete(&received) {
        let n = stream.read(&mut buffer).expect("read a response");
        assert!(
            n > 0,
            "the server closed the connection mid-response: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..n]);
    }
    http::parse(&received).expect("a whole response")
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

/// Whether the server closed `stream` (a read sees the end or a reset).
fn closed_by_server(mut stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

// Decided by the HTTP layer, not the engine: on Docker alone.
per_transport!(sync unknown_routes_and_wrong_methods_answer_json);
fn unknown_routes_and_wrong_methods_answer_json(transport: Transport) {
    let server = Server::start_on(
        transport,
        "routes",
        "",
        &[function("echo", "line", "line", "")],
    );
    for (method, path, status, kind) in [
        ("GET", "/nope", 404, "not_found"),
        ("POST", "/invoke", 404, "not_found"),
        ("DELETE", "/functions", 405, "method_not_allowed"),
        ("GET", "/invoke/echo", 405, "method_not_allowed"),
    ] {
        let response = http::request(server.addr, method, path, b"").expect("an answer");
        assert_eq!(response.status, status, "{method} {path}: {response}");
        assert_eq!(
            error_of(&response)["kind"],
            kind,
            "{method} {path}: {response}"
        );
    }
    server.stop();
}

per_engine_binary_transport!(a_refused_call_leaves_its_keep_alive_connection_usable);
fn a_refused_call_leaves_its_keep_alive_connection_usable(engine: Engine, transport: Transport) {
    let server = EchoServer::start(engine, transport, "keepalive", "", SHUTDOWN);
    let mut stream = connect(&server);
    // The head first, the body later: the answer must wait for the body, or the
    // body would be read as the next request.
    let body = vec![b'x'; 64 << 10];
    write!(
        stream,
        "POST /invoke/nope HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(&body).unwrap();
    let refused = read_response(&mut stream);
    assert_eq!(refused.status, 404, "{refused}");
    assert_eq!(error_of(&refused)["kind"], "unknown_function");
    assert_ne!(refused.header("connection"), Some("close"), "{refused}");

    stream
        .write_all(b"POST /invoke/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let served = read_response(&mut stream);
    assert_eq!(served.status, 200, "{served}");
    assert_eq!(served.body, b"hello");
    drop(stream);
    server.stop();
}

// Decided by the HTTP layer, not the engine: on Docker alone.
per_transport!(sync an_answer_before_the_body_ends_says_connection_close);
fn an_answer_before_the_body_ends_says_connection_close(transport: Transport) {
    let server = Server::start_on(
        transport,
        "closeafter",
        "max_body = \"1k\"",
        &[function("echo", "line", "line", "")],
    );
    let mut stream = connect(&server);
    stream
        .write_all(b"POST /invoke/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    stream.write_all(&[b'x'; 2048]).unwrap();
    let refused = read_response(&mut stream);
    assert_eq!(refused.status, 413, "{refused}");
    assert_eq!(error_of(&refused)["kind"], "body_too_large");
    assert_eq!(refused.header("connection"), Some("close"), "{refused}");
    server.stop();
}

per_engine_binary_transport!(malformed_bodies_are_bad_requests);
fn malformed_bodies_are_bad_requests(engine: Engine, transport: Transport) {
    let server = EchoServer::start(engine, transport, "malformed", "", SHUTDOWN);

    let mut bad_chunk = connect(&server);
    bad_chunk
        .write_all(
            b"POST /invoke/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .unwrap();
    let answer = read_response(&mut bad_chunk);
    assert_eq!(answer.status, 400, "{answer}");
    assert_eq!(error_of(&answer)["kind"], "bad_request", "{answer}");

    let mut short = connect(&server);
    short
        .write_all(b"POST /invoke/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf")
        .unwrap();
    short.shutdown(Shutdown::Write).unwrap();
    let answer = read_response(&mut short);
    assert_eq!(answer.status, 400, "{answer}");
    assert_eq!(error_of(&answer)["kind"], "bad_request", "{answer}");

    let echo = server.function_status("echo");
    assert_eq!(
        echo["containers"]["starting"].as_u64().unwrap()
            + echo["containers"]["idle"].as_u64().unwrap(),
        0,
        "a malformed request starts no container: {echo}"
    );
    server.stop();
}

// Decided by the HTTP layer, not the engine: on Docker alone.
per_transport!(sync a_body_that_stalls_gets_408);
fn a_body_that_stalls_gets_408(transport: Transport) {
    let server = Server::start_on(
        transport,
        "slowbody",
        "body_timeout = \"1s\"",
        &[function("echo", "line", "line", "")],
    );
    let mut stream = connect(&server);
    stream
        .write_all(b"POST /invoke/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhal")
        .unwrap();
    let answer = read_response(&mut stream);
    assert_eq!(answer.status, 408, "{answer}");
    assert_eq!(error_of(&answer)["kind"], "body_timeout", "{answer}");
    assert_eq!(answer.header("connection"), Some("close"), "{answer}");
    server.stop();
}

/// The server process's open file descriptors.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the server's fd directory")
        .count()
}

per_engine_binary_transport!(idle_and_slow_clients_cannot_use_up_the_server);
fn idle_and_slow_clients_cannot_use_up_the_server(engine: Engine, transport: Transport) {
    let server = EchoServer::start(
        engine,
        transport,
        "slowloris",
        "max_connections = 16\nheader_timeout = \"1s\"",
        SHUTDOWN,
    );
    let before = open_files(server.pid());
    // A hundred clients that each send half a request head and stall.
    let stalled: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut stream = connect(&server);
            stream
                .write_all(b"POST /invoke/echo HTTP/1.1\r\nHo")
                .unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = open_files(server.pid());
    assert!(
        during <= before + 16 + 8,
        "the server holds {during} files with 100 stalled clients (had {before}, cap 16 connections)"
    );
    // Slots come free as heads time out: a real call still gets through.
    let served = server.invoke("echo", b"still here");
    assert_eq!(served.status, 200, "{served}");
    assert_eq!(served.body, b"still here");
    // The first clients the server took were cut at the head timeout.
    let cut = stalled
        .iter()
        .take(16)
        .filter(|stream| closed_by_server(stream))
        .count();
    assert_eq!(
        cut, 16,
        "every stalled connection the server accepted is cut"
    );
    drop(stalled);
    server.stop();
}

per_engine_binary_transport!(sigterm_ends_within_the_shutdown_timeout_whatever_clients_do);
fn sigterm_ends_within_the_shutdown_timeout_whatever_clients_do(
    engine: Engine,
    transport: Transport,
) {
    let mut server = EchoServer::start(
        engine,
        transport,
        "halfhead",
        "header_timeout = \"1h\"",
        "shutdown_timeout = \"2s\"",
    );
    let warm = server.invoke("echo", b"warm");
    assert_eq!(warm.status, 200, "{warm}");
    let mut holder = connect(&server);
    holder
        .write_all(b"POST /invoke/echo HTTP/1.1\r\nHost: t\r\nContent-Len")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.terminate();
    // The head timeout is an hour: only the shutdown deadline can end this.
    let status = wait_for_exit_of(&mut server.server);
    assert_eq!(status, Some(0), "stderr:\n{}", server.stderr.text());
    assert!(closed_by_server(&holder));
    assert_eq!(
        server.engine.containers_of(&server.pool),
        Vec::<String>::new()
    );
}

/// Waits (far longer than the 2 s shutdown timeout, far shorter than the hour of
/// the head timeout) for the server to exit; its exit code.
fn wait_for_exit_of(server: &mut Server) -> Option<i32> {
    let status = server.wait_within(Duration::from_secs(60));
    status.and_then(|s| s.code())
}

// Decided by the HTTP layer, not the engine: on Docker alone.
per_transport!(sync bearer_tokens_guard_every_route_but_healthz);
fn bearer_tokens_guard_every_route_but_healthz(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# callers\nsecret-one\nsecret-two\n").unwrap();
    let server = Server::start_on(
        transport,
        "auth",
        &format!("auth_tokens_file = \"{}\"", tokens.display()),
        &[function("echo", "line", "line", "")],
    );
    let refused = http::post(server.addr, "/invoke/echo", b"hi").unwrap();
    assert_eq!(refused.status, 401, "{refused}");
    assert_eq!(error_of(&refused)["kind"], "unauthorized", "{refused}");
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let call_id = error_of(&refused)["call_id"].as_str().unwrap().to_owned();
    assert_ne!(
        call_id, "-",
        "a refused request has an id of its own: {refused}"
    );
    assert_eq!(refused.header("hotpool-call-id"), Some(call_id.as_str()));
    eventually("the refusal is logged under its id", || {
        server.stderr.text().contains(&call_id)
    });
    for wrong in ["Bearer secret", "Bearer secret-one2", "Basic secret-one"] {
        let refused = http::request_with(
            server.addr,
            "POST",
            "/invoke/echo",
            &[("Authorization", wrong)],
            b"hi",
        )
        .unwrap();
        assert_eq!(refused.status, 401, "{wrong}: {refused}");
    }
    let listed = http::get(server.addr, "/functions").unwrap();
    assert_eq!(listed.status, 401, "{listed}");

    let served = http::request_with(
        server.addr,
        "POST",
        "/invoke/echo",
        &[("Authorization", "Bearer secret-two")],
        b"hi",
    )
    .unwrap();
    assert_eq!(served.status, 200, "{served}");
    assert_eq!(served.body, b"hi");
    assert_eq!(http::get(server.addr, "/healthz").unwrap().status, 200);
    assert_eq!(http::get(server.addr, "/metrics").unwrap().status, 200);
    server.stop();
}

// Decided by the HTTP layer, not the engine: on Docker alone.
per_transport!(sync metrics_can_need_a_token_too);
fn metrics_can_need_a_token_too(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "scrape-token\n").unwrap();
    let server = Server::start_on(
        transport,
        "metricsauth",
        &format!(
            "auth_tokens_file = \"{}\"\nmetrics_auth = true",
            tokens.display()
        ),
        &[function("echo", "line", "line", "")],
    );
    assert_eq!(http::get(server.addr, "/metrics").unwrap().status, 401);
    let scraped = http::request_with(
        server.addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer scrape-token")],
        b"",
    )
    .unwrap();
    assert_eq!(scraped.status, 200, "{scraped}");
    assert_eq!(http::get(server.addr, "/healthz").unwrap().status, 200);
    server.stop();
}

#[test]
fn an_unreadable_tokens_file_is_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hotpool.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nauth_tokens_file = \"/nonexistent/tokens\"\n\
             [pool]\nname = \"server-test-badtokens-{}\"\n{}",
            support::free_port(),
            std::process::id(),
            function("echo", "line", "line", "")
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hotpool"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run hotpool serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("server.auth_tokens_file") && stderr.contains("/nonexistent/tokens"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn an_attach_function_on_containerd_is_a_bad_config() {
    let engine = Engine::containerd();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hotpool.toml");
    let pool = format!("server-test-attach-{}", std::process::id());
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[pool]\nname = \"{pool}\"\n\
             transport = \"attach\"\n\n{}\n{}",
            support::free_port(),
            engine.config_table(),
            function_of(&engine.image, "echo", "line", "line", "")
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hotpool"))
        .args(["serve", "--config"])
        .arg(&config)
        .envs(engine.env())
        .output()
        .expect("run hotpool serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "hotpool: bad config {}: function \"echo\" (function[0]).transport: \
             the containerd engine has no attach transport: use direct",
            config.display()
        )
    );
    assert_eq!(engine.containers_of(&pool), Vec::<String>::new());
}

per_engine_binary_transport!(waiting_clients_are_served_once_a_connection_frees);
fn waiting_clients_are_served_once_a_connection_frees(engine: Engine, transport: Transport) {
    let server = EchoServer::start(engine, transport, "cap", "max_connections = 2", SHUTDOWN);
    // Two keep-alive connections hold both slots...
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(&server)).collect();
    for stream in &mut held {
        stream
            .write_all(b"POST /invoke/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            .unwrap();
        assert_eq!(read_response(stream).status, 200);
    }
    // ...so a third client waits; it is served as soon as one of them leaves.
    let waiting = std::thread::spawn({
        let addr = server.addr;
        move || http::post(addr, "/invoke/echo", b"third").expect("the third call")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "the cap lets only two connections in"
    );
    drop(held.pop());
    let third = waiting.join().unwrap();
    assert_eq!(third.status, 200, "{third}");
    assert_eq!(third.body, b"third");
    eventually("the server answers /healthz", || {
        http::get(server.addr, "/healthz").is_ok()
    });
    drop(held);
    server.stop();
}
