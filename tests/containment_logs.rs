//! A function's logs can neither wedge `hotpool serve` nor flood its log: the real
//! binary on a free loopback port, the real engine, testfn's log commands
//! (`!log-storm`, `!log-flood`, `!log-nonl`, `!log-ctrl`), and hotpool's stderr
//! read by a thread of the test, slowly where that is the point.
//!
//! Each test runs its own server with its own pool name, stops it with SIGTERM,
//! and checks that it exits 0 with none of its containers left; each runs on
//! Docker over both transports and on containerd.

mod support;

use hotpool::driver::Transport;

use std::any::Any;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::cli_engine::Engine;
use support::http::{self, HttpResponse};

/// How long a server may take to answer, or to exit after SIGTERM.
const PATIENCE: Duration = Duration::from_secs(120);

/// The defaults of `FunctionSpec`: what a call may log, and a container per second.
const LOG_PER_CALL: u64 = 1 << 20;

/// A `[[function]]` table: testfn on `engine` in mode `cmd` with the `line` format.
fn function(engine: &Engine, name: &str, cmd: &str) -> String {
    support::server::function_of(&engine.image, name, cmd, "line", "")
}

/// How the test reads the server's stderr.
#[derive(Clone, Copy)]
enum Reader {
    /// As fast as it comes.
    Fast,
    /// 4 KiB every quarter of a second: 16 KiB/s, far less than floods write.
    Slow,
}

/// Output of a child process, collected by a thread so its pipe never fills (or,
/// for [`Reader::Slow`], fills and stays full).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn drain(&self, mut from: impl Read + Send + 'static, reader: Reader) -> JoinHandle<()> {
        let into = self.0.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = from.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                into.lock().unwrap().extend_from_slice(&buffer[..n]);
                if let Reader::Slow = reader {
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        })
    }

    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

/// Polls `condition` until it holds, failing with `what` after [`PATIENCE`].
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting until {what}");
}

/// A running `hotpool serve`. Dropping it (a failed test) stops it and removes its
/// containers; [`Server::stop`] asserts a clean exit with no container left.
struct Server {
    child: Child,
    addr: SocketAddr,
    pool: String,
    engine: Engine,
    stderr: Captured,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
    _dir: tempfile::TempDir,
    /// Removes the pool's containers after the drop of a server that failed
    /// to.
    _guard: Box<dyn Any>,
}

impl Server {
    /// Starts a server on `engine` whose pool is
    /// `logs-test-<test>-<engine>-<transport>-<pid>` serving `functions` over
    /// `transport`, its stderr read by `reader`, and waits until `/healthz`
    /// answers. Its stderr is a pipe, not a terminal, and `NO_COLOR` is unset.
    fn start(
        engine: Engine,
        transport: Transport,
        test: &str,
        functions: &[String],
        reader: Reader,
    ) -> Server {
        let pool = format!(
            "logs-test-{test}-{}-{transport}-{}",
            engine.name(),
            std::process::id()
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        let config = format!(
            "[server]\nlisten = \"{addr}\"\n\n[pool]\nname = \"{pool}\"\n\
             memory_budget = \"1g\"\nshutdown_timeout = \"30s\"\ntransport = \"{transport}\"\n\n\
             {}\n{}",
            engine.config_table(),
            functions.join("\n")
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hotpool.toml");
        std::fs::write(&path, config).expect("write the config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hotpool"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("HOTPOOL_LOG", "info")
            .envs(engine.env())
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hotpool serve");
        let stderr = Captured::default();
        let readers = vec![
            Captured::default().drain(child.stdout.take().unwrap(), Reader::Fast),
            stderr.drain(child.stderr.take().unwrap(), reader),
        ];
        let server = Server {
            child,
            addr,
            _guard: engine.guard(&pool),
            pool,
            engine,
            stderr,
            readers,
            exited: None,
            _dir: dir,
        };
        eventually("hotpool serve answers /healthz", || {
            http::get(server.addr, "/healthz").is_ok_and(|r| r.status == 200)
        });
        server
    }

    /// `POST /invoke/<function>`; it must answer (any status).
    fn invoke(&self, function: &str, body: &str) -> HttpResponse {
        let path = format!("/invoke/{function}");
        http::post(self.addr, &path, body.as_bytes())
            .unwrap_or_else(|e| panic!("POST {path}: {e}; server stderr so far:\n{}", self.log()))
    }

    /// A call that must answer 200 with `answer`; returns its call id.
    fn call_ok(&self, function: &str, body: &str, answer: &str) -> String {
        let response = self.invoke(function, body);
        assert_eq!(response.status, 200, "{function} {body:?}: {response}");
        assert_eq!(response.text(), answer, "{function} {body:?}: {response}");
        response
            .header("hotpool-call-id")
            .expect("a Hotpool-Call-Id header")
            .to_owned()
    }

    /// The sum of the series of `metric` that have all of `labels` (0 if none).
    fn metric(&self, metric: &str, labels: &[&str]) -> f64 {
        let response = http::get(self.addr, "/metrics").expect("GET /metrics");
        assert_eq!(response.status, 200, "/metrics: {response}");
        support::server::metric_sum(&response.text(), metric, labels)
    }

    /// The server's stderr so far, last 8 KiB (for failure messages).
    fn log(&self) -> String {
        let text = self.stderr.text();
        let mut start = text.len().saturating_sub(8 << 10);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }

    /// Sends SIGTERM and waits for the exit, up to [`PATIENCE`].
    fn terminate_and_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + PATIENCE;
            while self.exited.is_none() && Instant::now() < deadline {
                self.exited = self.child.try_wait().expect("wait for the server");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if self.exited.is_some() {
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
        self.exited
    }

    /// Asserts that the server drove the test's engine; SIGTERM, then asserts
    /// exit status 0 and that no container of the pool is left; returns
    /// everything the server wrote to stderr.
    fn stop(mut self) -> Vec<u8> {
        let engine = format!("engine=\"{}\"", self.engine.name());
        assert!(
            self.metric("hotpool_engine_api_seconds_count", &[&engine]) > 0.0,
            "the server's engine calls are not {engine}"
        );
        let status = self.terminate_and_wait();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "hotpool serve did not exit 0 after SIGTERM ({status:?}); stderr:\n{}",
            self.log()
        );
        assert_eq!(
            self.engine.containers_of(&self.pool),
            Vec::<String>::new(),
            "containers of pool {} are left after shutdown",
            self.pool
        );
        self.stderr.bytes()
    }
}

impl Drop for Server {
    /// A test that failed early: stop the server and kill it if it does not go,
    /// without panicking again (its guard then removes its containers).
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        if self.terminate_and_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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
    let server = Server::start(engine, transport, "slow-reader", &functions, Reader::Slow);
    // Two containers write stderr as fast as they can for as long as they live.
    server.call_ok("flood-a", "!log-storm", "storming");
    server.call_ok("flood-b", "!log-storm", "storming");
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
        let health = http::get(server.addr, "/healthz").expect("GET /healthz");
        assert_eq!(health.status, 200, "/healthz: {health}");
        server.call_ok("echo", &format!("hello {i}"), &format!("hello {i}"));
    }
    // The flooders themselves still serve calls.
    server.call_ok("flood-a", "still here", "still here");
    server.call_ok("flood-b", "still here", "still here");
    // What the reader cannot take is dropped and counted, not queued without end.
    eventually("hotpool drops log records it cannot write", || {
        server.metric("hotpool_log_dropped_total", &[]) > 0.0
    });
    // The flooding containers are stopped and removed, the server exits.
    server.stop();
}

per_engine_binary_transport!(a_log_flood_is_cut_to_its_budget_with_the_rest_said_dropped);
fn a_log_flood_is_cut_to_its_budget_with_the_rest_said_dropped(
    engine: Engine,
    transport: Transport,
) {
    let functions = [function(&engine, "flood", "line")];
    let server = Server::start(engine, transport, "flood", &functions, Reader::Fast);
    const FLOOD: u64 = 8_000_000;
    let call_id = server.call_ok("flood", &format!("!log-flood {FLOOD}"), "flooded 8000000");
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
    server.stop();
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
    let server = Server::start(engine, transport, "escape", &functions, Reader::Fast);
    // stderr travels apart from stdout: a call's records are awaited before the
    // next call, or they could arrive during it and carry its id.
    let ctrl = server.call_ok("ctrl", "!log-ctrl", "wrote controls");
    let escaped = "ctrl \\x1b[31mred\\x1b[0m \\x1b[2J cr\\rhidden bell\\x07 nul\\x00 bad\\xff end";
    eventually("the control characters are logged, escaped", || {
        records_of(&server.stderr.text(), &ctrl)
            .iter()
            .any(|r| r.contains(escaped))
    });
    // 100 000 bytes without a newline: one record of 16 KiB, the rest said dropped.
    let nonl = server.call_ok("ctrl", "!log-nonl 100000", "wrote 100000");
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
    let again = server.call_ok("fail", "!log-ctrl", "wrote controls");
    eventually("the second control line is logged", || {
        records_of(&server.stderr.text(), &again)
            .iter()
            .any(|r| r.contains(escaped))
    });
    let exited = server.invoke("fail", "!exit 3");
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

    let log = String::from_utf8_lossy(&server.stop()).into_owned();
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
