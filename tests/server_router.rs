//! The HTTP API's router ([`hotpool::server::router`]) served in-process over
//! the in-process driver: no engine and no binary, so the routes' contract
//! (statuses, JSON errors, headers, tokens) is checked in milliseconds. The
//! tests that spawn `hotpool serve` check the same routes against real engines.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hotpool::driver::in_process::InProcessDriver;
use hotpool::pool::{FunctionSpec, Pool};
use hotpool::server::auth::Tokens;
use hotpool::server::connections::{self, ConnectionLimits};
use hotpool::server::engine_health::EngineHealth;
use hotpool::server::{AppState, router};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use support::http::{self, HttpResponse};

/// The token of the tests that configure one.
const TOKEN: &str = "router-test-token";

/// The router of a pool of the in-process driver, served on a loopback port.
struct InProcessServer {
    addr: SocketAddr,
    stop: CancellationToken,
    pool: Pool<InProcessDriver>,
    runtime: tokio::runtime::Runtime,
}

impl InProcessServer {
    /// Serves `echo` (a line function), with `tokens` if given.
    fn start(tokens: Option<&str>) -> InProcessServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let stop = CancellationToken::new();
        let (addr, pool) = runtime.block_on(async {
            let pool = Pool::builder(InProcessDriver::new(Duration::ZERO))
                .build()
                .await
                .expect("a pool");
            let mut echo = FunctionSpec::new("echo", "in-process");
            echo.cmd = vec!["line".into()];
            pool.register(echo);
            let state = Arc::new(AppState {
                pool: pool.clone(),
                max_body: 1 << 20,
                body_timeout: Duration::from_secs(10),
                max_stream: 4 << 20,
                metrics: None,
                tokens: tokens.map(|text| Tokens::parse(text).expect("a token")),
                metrics_auth: false,
                engine: Arc::new(EngineHealth::default()),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a port");
            let addr = listener.local_addr().expect("its address");
            let limits = ConnectionLimits {
                max_connections: 16,
                header_timeout: Duration::from_secs(10),
                drain_timeout: Duration::from_secs(5),
            };
            tokio::spawn(connections::serve(
                listener,
                router(state),
                limits,
                stop.clone(),
            ));
            (addr, pool)
        });
        InProcessServer {
            addr,
            stop,
            pool,
            runtime,
        }
    }

    fn invoke(&self, function: &str, body: &[u8], token: Option<&str>) -> HttpResponse {
        let path = format!("/invoke/{function}");
        let bearer = token.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        http::request_with(self.addr, "POST", &path, &headers, body).expect("POST /invoke")
    }

    fn get(&self, path: &str) -> HttpResponse {
        http::get(self.addr, path).expect("GET")
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        self.stop.cancel();
        let pool = self.pool.clone();
        self.runtime.block_on(async move {
            pool.shutdown().await;
        });
    }
}

/// The `error` object of a JSON error answer.
fn error_of(response: &HttpResponse) -> Value {
    let json: Value = serde_json::from_slice(&response.body).expect("a JSON body");
    json["error"].clone()
}

#[test]
fn a_call_is_answered_cold_then_hot_with_its_id_and_errors_are_json_with_their_status() {
    let server = InProcessServer::start(None);
    let first = server.invoke("echo", b"hello", None);
    assert_eq!((first.status, first.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(first.header("hotpool-start"), Some("cold"), "{first}");
    let second = server.invoke("echo", b"again", None);
    assert_eq!(second.header("hotpool-start"), Some("hot"), "{second}");
    let (one, two) = (
        first.header("hotpool-call-id"),
        second.header("hotpool-call-id"),
    );
    assert!(one.is_some() && one != two, "each call has its own id");
    let functions: Value = serde_json::from_slice(&server.get("/functions").body).unwrap();
    let echo = functions["functions"]
        .as_array()
        .and_then(|all| all.iter().find(|f| f["name"] == "echo"))
        .expect("echo is listed");
    assert_eq!(echo["containers"]["idle"], 1, "{echo}");

    let died = server.invoke("echo", b"!exit 3", None);
    assert_eq!(died.status, 502, "{died}");
    assert_eq!(error_of(&died)["kind"], "exited", "{died}");
    assert_eq!(error_of(&died)["exit_code"], 3, "{died}");

    let unknown = server.invoke("nobody", b"x", None);
    assert_eq!(unknown.status, 404, "{unknown}");
    assert_eq!(error_of(&unknown)["kind"], "unknown_function", "{unknown}");
    let no_route = server.get("/nowhere");
    assert_eq!(no_route.status, 404, "{no_route}");
    assert_eq!(error_of(&no_route)["kind"], "not_found", "{no_route}");
    let wrong_method = server.get("/invoke/echo");
    assert_eq!(wrong_method.status, 405, "{wrong_method}");
    assert_eq!(
        error_of(&wrong_method)["kind"],
        "method_not_allowed",
        "{wrong_method}"
    );
    // The in-process function writes no stderr: its call has no log kept.
    let id = second.header("hotpool-call-id").unwrap();
    let log = server.get(&format!("/calls/{id}/log"));
    assert_eq!(log.status, 404, "{log}");
    assert_eq!(error_of(&log)["kind"], "unknown_call", "{log}");
}

#[test]
fn with_tokens_calls_and_call_logs_need_one_and_health_does_not() {
    let server = InProcessServer::start(Some(TOKEN));
    let refused = server.invoke("echo", b"hello", None);
    assert_eq!(refused.status, 401, "{refused}");
    assert_eq!(error_of(&refused)["kind"], "unauthorized", "{refused}");
    let wrong = server.invoke("echo", b"hello", Some("not-the-token"));
    assert_eq!(wrong.status, 401, "{wrong}");
    let let_in = server.invoke("echo", b"hello", Some(TOKEN));
    assert_eq!(let_in.status, 200, "{let_in}");
    let log = server.get("/calls/some-call/log");
    assert_eq!(log.status, 401, "{log}");
    for open in ["/healthz", "/livez"] {
        let answer = server.get(open);
        assert_eq!(answer.status, 200, "{open}: {answer}");
    }
}
