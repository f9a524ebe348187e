//! The shipped dashboards against real parts: the real `hotpool serve` on the real
//! engine, having taken the pool over from another (`--take-over`, so that it
//! counts containers taken over and removed), driven through every call outcome,
//! scraped by a real Prometheus (Debian's
//! `prometheus`, configured from `dashboards/prometheus.yml`). Its `/metrics` must
//! pass `promtool check metrics`, and every query of every dashboard panel must
//! come back from Prometheus with data.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bollard::query_parameters::ListContainersOptionsBuilder;
use hotpool::pool::POOL_LABEL;
use serde_json::Value;

use support::testfn_image;

/// The function the per-function dashboard is evaluated for: it sees every outcome
/// but `busy`, hot and cold starts, and evictions.
const DASHBOARD_FUNCTION: &str = "line";
/// What Grafana sends for the overview's "All" (its `allValue`).
const ALL_FUNCTIONS: &str = ".*";
/// What `$__rate_interval` becomes (Prometheus scrapes every second here).
const RATE_INTERVAL: &str = "1m";
/// The outcomes the load produces, each of which Prometheus must see.
const OUTCOMES: [&str; 6] = [
    "success",
    "oom",
    "exited",
    "timeout",
    "busy",
    "protocol_error",
];

// ---------------------------------------------------------------------------
// HTTP: the shared test client, addressed by "host:port" strings.

type Reply = support::http::HttpResponse;

fn http(addr: &str, method: &str, target: &str, body: &[u8]) -> std::io::Result<Reply> {
    let addr = addr.parse().map_err(std::io::Error::other)?;
    support::http::request(addr, method, target, body)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Processes this test starts, stopped (SIGTERM, then SIGKILL) when dropped.

struct Running {
    what: &'static str,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    /// Starts `command`, collecting its output; returns its stdout lines as well.
    fn spawn(what: &'static str, command: &mut Command) -> (Running, Receiver<String>) {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {what}: {e} (scripts/prerequisites installs what tests need)")
            });
        let log = Arc::new(Mutex::new(String::new()));
        let (lines, receiver) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out_log = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out_log.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = lines.send(line);
            }
        });
        let err_log = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                err_log.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        (Running { what, child, log }, receiver)
    }

    fn log(&self) -> String {
        format!("--- {} output ---\n{}", self.what, self.log.lock().unwrap())
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGTERM, then up to `grace` to exit (else SIGKILL); the status if it exited
    /// on its own.
    fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
        if thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

/// Polls `check` until it gives a value; fails with `what` and its last complaint.
fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting until {what}; last: {last}")
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

// ---------------------------------------------------------------------------
// hotpool serve and its load.

/// The config of the test's servers; `http_env` is the `http` function's
/// environment (a TOML inline table), part of its container spec.
fn hotpool_config(pool: &str, image: &str, http_env: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[pool]
name = "{pool}"
memory_budget = "1g"
shutdown_timeout = "20s"

[[function]]
name = "line"
image = "{image}"
cmd = ["line"]
format = "line"
# 64m rather than 32m: `!spin` holds a 32 MiB buffer of its own.
memory = "64m"
timeout = "2s"
# One container at a time, so each failure leaves none: `adaptive` would start
# a spare ahead of calls this frequent.
keep_alive = "fixed:10m"

[[function]]
name = "http"
image = "{image}"
cmd = ["http"]
format = "http"
env = {http_env}

[[function]]
name = "cold"
image = "{image}"
cmd = ["echo"]
format = "cold"

# One container and one queued call at most: with the container busy and a call
# waiting, the next call is refused as busy. (max_queue = 0 cannot be used: a hot
# call waiting for its container to start counts as queued, so every call of
# such a function is refused.)
[[function]]
name = "single"
image = "{image}"
cmd = ["line"]
format = "line"
max_concurrency = 1
max_queue = 1
"#
    )
}

/// Starts `hotpool serve` with `config` (written to `dir/file`) and `args`,
/// and returns it with the address it listens on.
fn start_hotpool(
    what: &'static str,
    dir: &Path,
    file: &str,
    config: &str,
    args: &[&str],
) -> (Running, String) {
    let path = dir.join(file);
    std::fs::write(&path, config).unwrap();
    let (mut server, lines) = Running::spawn(
        what,
        Command::new(env!("CARGO_BIN_EXE_hotpool"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .args(args),
    );
    let addr = loop {
        match lines.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                // `hotpool serving a, b on http://ADDR (pid N)`
                if let Some((_, rest)) = line.split_once("on http://") {
                    break rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                }
            }
            Err(e) => panic!(
                "hotpool serve did not say where it listens ({e}); exited: {:?}\n{}",
                server.exited(),
                server.log()
            ),
        }
    };
    eventually(
        "hotpool serve answers /healthz",
        Duration::from_secs(30),
        || match http(&addr, "GET", "/healthz", b"") {
            Ok(reply) if reply.status == 200 => Ok(()),
            Ok(reply) => Err(format!("status {}", reply.status)),
            Err(e) => Err(e.to_string()),
        },
    );
    (server, addr)
}

fn invoke(addr: &str, function: &str, body: &str) -> Reply {
    http(
        addr,
        "POST",
        &format!("/invoke/{function}"),
        body.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("POST /invoke/{function} {body:?}: {e}"))
}

/// Calls and expects status 200 with `answer` as the body; returns `Hotpool-Start`.
fn call_ok(addr: &str, function: &str, body: &str, answer: &str) -> String {
    let reply = invoke(addr, function, body);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, answer),
        "{function} {body:?}"
    );
    reply.header("hotpool-start").unwrap_or_default().to_owned()
}

/// Calls and expects the error `kind` with `status`.
fn call_fails(addr: &str, function: &str, body: &str, status: u16, kind: &str) -> Reply {
    let reply = invoke(addr, function, body);
    assert_eq!(
        reply.status,
        status,
        "{function} {body:?}: {}",
        reply.text()
    );
    assert_eq!(
        reply.json()["error"]["kind"],
        kind,
        "{function} {body:?}: {}",
        reply.text()
    );
    reply
}

/// One function's entry in `GET /functions`.
fn function_status(addr: &str, name: &str) -> Result<Value, String> {
    let reply = http(addr, "GET", "/functions", b"").map_err(|e| e.to_string())?;
    reply.json()["functions"]
        .as_array()
        .and_then(|list| list.iter().find(|f| f["name"] == name).cloned())
        .ok_or_else(|| format!("{name} is not in /functions: {}", reply.text()))
}

/// Starts a server that warms a container of `line` and one of `http`, and
/// a second one that takes the pool over from it (`--take-over`) with
/// `http`'s container spec changed: it takes `line`'s container over and
/// removes `http`'s, and counts both. Returns the second, and where it
/// listens: on the first one's socket.
fn take_over_warm_containers(dir: &Path, pool: &str) -> (Running, String) {
    let image = testfn_image();
    let config = hotpool_config(pool, image, "{}");
    let (mut first, addr) = start_hotpool("hotpool serve (first)", dir, "first.toml", &config, &[]);
    for function in ["line", "http"] {
        assert_eq!(call_ok(&addr, function, "warm", "warm"), "cold");
    }
    let changed = hotpool_config(pool, image, r#"{ CHANGED = "1" }"#);
    let (next, handed) = start_hotpool(
        "hotpool serve (next)",
        dir,
        "next.toml",
        &changed,
        &["--take-over"],
    );
    assert_eq!(
        handed, addr,
        "the next server listens on the first's socket"
    );
    let status = eventually("the first server exits", Duration::from_secs(60), || {
        first.exited().ok_or_else(|| "still running".to_owned())
    });
    assert!(status.success(), "{status}\n{}", first.log());
    let found = hotpool_counter(&addr, "hotpool_adopted_containers_total");
    let wanted = [(("http", "spec_changed"), 1.0), (("line", "adopted"), 1.0)]
        .map(|((function, outcome), count)| ((function.to_owned(), outcome.to_owned()), count));
    assert_eq!(found, BTreeMap::from(wanted), "{}", next.log());
    (next, addr)
}

/// Every outcome once or more, hot and cold successes, and a CPU-heavy call.
/// Returns a `/metrics` page scraped while calls were in flight.
fn drive(addr: &str, round: u32) -> String {
    for i in 0..3 {
        let body = format!("cold {round}.{i}");
        let start = call_ok(addr, "cold", &body, &body);
        assert_eq!(start, "cold", "a cold-format call starts a container");
    }
    for i in 0..3 {
        let body = format!("http {round}.{i}");
        call_ok(addr, "http", &body, &body);
    }

    for i in 0..3 {
        let body = format!("line {round}.{i}");
        let start = call_ok(addr, "line", &body, &body);
        if i > 0 {
            assert_eq!(start, "hot", "{body}: the container is reused");
        }
    }
    // A call that burns a core, so per-call CPU has a real value.
    assert_eq!(call_ok(addr, "line", "!spin 1500", "spun"), "hot");
    for (command, status, kind) in [
        ("!oom", 502, "oom"),
        ("!exit 3", 502, "exited"),
        ("!sleep 5000", 504, "timeout"),
        ("!garbage", 502, "protocol_error"),
    ] {
        call_fails(addr, "line", command, status, kind);
        let after = format!("after {kind}");
        let start = call_ok(addr, "line", &after, &after);
        assert_eq!(start, "cold", "{kind} evicted the only container");
        let again = format!("again after {kind}");
        assert_eq!(call_ok(addr, "line", &again, &again), "hot");
    }
    busy(addr)
}

/// Occupies `single`'s one container and its one queue place; the next call is
/// busy. Returns `/metrics` as scraped meanwhile.
fn busy(addr: &str) -> String {
    let occupy = {
        let addr = addr.to_owned();
        thread::spawn(move || invoke(&addr, "single", "!sleep 3000"))
    };
    eventually(
        "single's container is busy",
        Duration::from_secs(60),
        || {
            let status = function_status(addr, "single")?;
            (status["containers"]["busy"] == 1)
                .then_some(())
                .ok_or(status.to_string())
        },
    );
    let queued = {
        let addr = addr.to_owned();
        thread::spawn(move || invoke(&addr, "single", "queued"))
    };
    eventually("a call of single waits", Duration::from_secs(30), || {
        let status = function_status(addr, "single")?;
        (status["waiting"] == 1)
            .then_some(())
            .ok_or(status.to_string())
    });
    let metrics = http(addr, "GET", "/metrics", b"").expect("GET /metrics");
    assert_eq!(metrics.status, 200);

    let refused = call_fails(addr, "single", "refused", 503, "busy");
    assert!(
        refused.header("retry-after").is_some(),
        "busy has Retry-After"
    );

    let occupied = occupy.join().expect("the occupying call");
    assert_eq!((occupied.status, occupied.text().as_str()), (200, "slept"));
    let queued = queued.join().expect("the queued call");
    assert_eq!((queued.status, queued.text().as_str()), (200, "queued"));
    metrics.text()
}

/// `promtool check metrics` on a scrape: no complaint at all.
fn promtool_check(metrics: &str) {
    assert!(
        metrics.contains("hotpool_calls_total"),
        "the scrape has calls: {metrics}"
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {}\n{complaints}",
        output.status
    );
}

// ---------------------------------------------------------------------------
// Prometheus.

fn repo_file(path: &str) -> PathBuf {
    support::repo_root().join(path)
}

/// `dashboards/prometheus.yml`, scraping `target` every second.
fn prometheus_config(target: &str) -> String {
    let shipped = std::fs::read_to_string(repo_file("dashboards/prometheus.yml")).unwrap();
    for needed in ["\"127.0.0.1:8080\"", "scrape_interval: 5s"] {
        assert!(
            shipped.contains(needed),
            "dashboards/prometheus.yml no longer has {needed}"
        );
    }
    shipped
        .replace("\"127.0.0.1:8080\"", &format!("\"{target}\""))
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
}

fn start_prometheus(dir: &Path, target: &str) -> (Running, String) {
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, prometheus_config(target)).unwrap();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let (mut prometheus, _) = Running::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn"),
    );
    let waited = Instant::now();
    loop {
        if let Some(status) = prometheus.exited() {
            panic!("prometheus exited: {status}\n{}", prometheus.log());
        }
        match http(&addr, "GET", "/-/ready", b"") {
            Ok(reply) if reply.status == 200 => break,
            _ if waited.elapsed() > Duration::from_secs(60) => {
                panic!("prometheus was not ready within 60 s\n{}", prometheus.log())
            }
            _ => thread::sleep(Duration::from_millis(200)),
        }
    }
    (prometheus, addr)
}

/// A sample of an instant query: its labels and its value.
type Sample = (BTreeMap<String, String>, f64);

/// Evaluates `expr` now; `Err` if Prometheus rejects it.
fn query(prometheus: &str, expr: &str) -> Result<Vec<Sample>, String> {
    let target = format!("/api/v1/query?query={}", percent_encode(expr));
    let reply = http(prometheus, "GET", &target, b"").map_err(|e| e.to_string())?;
    let json: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("status {}: {e}: {}", reply.status, reply.text()))?;
    if reply.status != 200 || json["status"] != "success" {
        return Err(format!(
            "status {}: {}: {}",
            reply.status, json["errorType"], json["error"]
        ));
    }
    let data = &json["data"];
    if data["resultType"] != "vector" {
        return Err(format!("a {} rather than a vector", data["resultType"]));
    }
    Ok(data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|sample| {
            let labels = sample["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = sample["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect())
}

/// A counter by (function, outcome).
type Calls = BTreeMap<(String, String), f64>;

/// `hotpool_calls_total` as hotpool reports it now.
fn hotpool_calls(addr: &str) -> Calls {
    hotpool_counter(addr, "hotpool_calls_total")
}

/// Counter `name`, labelled by function and outcome, as hotpool reports it now.
fn hotpool_counter(addr: &str, name: &str) -> Calls {
    let page = http(addr, "GET", "/metrics", b"")
        .expect("GET /metrics")
        .text();
    let prefix = format!("{name}{{");
    page.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let (labels, value) = rest.split_once("} ").expect("a sample line");
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("no {name} in {labels}"))
                    .to_owned()
            };
            let value: f64 = value.trim().parse().expect("a sample value");
            ((label("function"), label("outcome")), value)
        })
        .collect()
}

/// `hotpool_calls_total` as Prometheus has it now.
fn prometheus_calls(prometheus: &str) -> Result<Calls, String> {
    Ok(query(prometheus, "hotpool_calls_total")?
        .into_iter()
        .map(|(labels, value)| {
            let function = labels.get("function").cloned().unwrap_or_default();
            let outcome = labels.get("outcome").cloned().unwrap_or_default();
            ((function, outcome), value)
        })
        .collect())
}

fn outcomes(calls: &Calls) -> BTreeMap<&str, f64> {
    let mut totals = BTreeMap::new();
    for ((_, outcome), value) in calls {
        *totals.entry(outcome.as_str()).or_default() += value;
    }
    totals
}

/// Waits until Prometheus has scraped exactly what hotpool reports now, and
/// checks that it holds every outcome; returns it.
fn scraped_now(addr: &str, prometheus: &str) -> Calls {
    let expected = hotpool_calls(addr);
    let totals = outcomes(&expected);
    let missing: Vec<&str> = OUTCOMES
        .into_iter()
        .filter(|o| !totals.contains_key(o))
        .collect();
    assert!(missing.is_empty(), "no {missing:?} calls in {expected:?}");
    eventually(
        "Prometheus has scraped every outcome series as hotpool reports it",
        Duration::from_secs(60),
        || {
            let scraped = prometheus_calls(prometheus)?;
            (scraped == expected)
                .then_some(())
                .ok_or(format!("Prometheus has {scraped:?}, hotpool {expected:?}"))
        },
    );
    expected
}

// ---------------------------------------------------------------------------
// The dashboards' queries.

struct PanelQuery {
    dashboard: String,
    panel: String,
    ref_id: String,
    expr: String,
}

impl PanelQuery {
    fn name(&self) -> String {
        format!("{} / {} / {}", self.dashboard, self.panel, self.ref_id)
    }
}

/// A panel expression as Grafana would send it: `$function` is `function`, or
/// "All" in a multi-value regex matcher; `$__rate_interval` is [`RATE_INTERVAL`].
fn instantiate(expr: &str, function: &str) -> String {
    let mut out = expr.to_owned();
    for variable in ["${function}", "$function"] {
        out = out.replace(
            &format!("=~\"{variable}\""),
            &format!("=~\"{ALL_FUNCTIONS}\""),
        );
        out = out.replace(variable, function);
    }
    for variable in ["${__rate_interval}", "$__rate_interval"] {
        out = out.replace(variable, RATE_INTERVAL);
    }
    assert!(
        !out.contains('$'),
        "a variable this test does not know in {expr}"
    );
    out
}

fn panel_queries() -> Vec<PanelQuery> {
    fn walk(dashboard: &str, panels: &Value, out: &mut Vec<PanelQuery>) {
        for panel in panels.as_array().into_iter().flatten() {
            walk(dashboard, &panel["panels"], out);
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                out.push(PanelQuery {
                    dashboard: dashboard.to_owned(),
                    panel: panel["title"].as_str().unwrap_or("<untitled>").to_owned(),
                    ref_id: target["refId"].as_str().unwrap_or("?").to_owned(),
                    expr: instantiate(expr, DASHBOARD_FUNCTION),
                });
            }
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_file("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut queries = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let dashboard: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        walk(&name, &dashboard["panels"], &mut queries);
    }
    queries
}

/// Why a query's answer does not count as data, if it does not.
fn lacks_data(samples: &[Sample]) -> Option<String> {
    if samples.is_empty() {
        Some("empty result".into())
    } else if samples.iter().all(|(_, v)| !v.is_finite()) {
        Some(format!("no finite value: {samples:?}"))
    } else {
        None
    }
}

/// The ids of containers labelled as the pool's, whatever their state.
fn pool_containers(pool: &str) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let docker = support::driver().await;
        let filters = HashMap::from([("label", vec![format!("{POOL_LABEL}={pool}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        docker
            .docker()
            .list_containers(Some(options))
            .await
            .expect("list containers")
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    })
}

#[test]
fn the_shipped_prometheus_config_is_valid() {
    let output = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo_file("dashboards/prometheus.yml"))
        .output()
        .expect("run promtool (Debian's prometheus package)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let pool = format!("test-dashboards-{}-{nanos}", std::process::id());
    let (mut server, addr) = take_over_warm_containers(dir.path(), &pool);
    let (mut prometheus, prom) = start_prometheus(dir.path(), &addr);

    // Round one creates every series; Prometheus scrapes them before round two
    // moves them, so rates and quantiles see real increases.
    promtool_check(&drive(&addr, 1));
    let first = scraped_now(&addr, &prom);
    promtool_check(&drive(&addr, 2));
    let second = scraped_now(&addr, &prom);
    let (before, after) = (outcomes(&first), outcomes(&second));
    for outcome in OUTCOMES {
        assert!(
            after[outcome] > before[outcome],
            "round two added no {outcome} call: {before:?} -> {after:?}"
        );
    }
    assert!(
        !pool_containers(&pool).is_empty(),
        "the pool has hot containers"
    );

    // Every panel query: valid, and with data.
    let queries = panel_queries();
    assert!(queries.len() > 20, "only {} queries found", queries.len());
    let mut rejected = Vec::new();
    let mut waiting: Vec<&PanelQuery> = Vec::new();
    for q in &queries {
        match query(&prom, &q.expr) {
            Err(e) => rejected.push(format!("{}: {e}\n      {}", q.name(), q.expr)),
            Ok(_) => waiting.push(q),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut empty = Vec::new();
    loop {
        empty.clear();
        waiting.retain(|q| match query(&prom, &q.expr) {
            Ok(samples) => match lacks_data(&samples) {
                Some(why) => {
                    empty.push(format!("{}: {why}\n      {}", q.name(), q.expr));
                    true
                }
                None => false,
            },
            Err(e) => {
                empty.push(format!("{}: {e}\n      {}", q.name(), q.expr));
                true
            }
        });
        if waiting.is_empty() || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        rejected.is_empty() && empty.is_empty(),
        "dashboard queries Prometheus rejected:\n  {}\n\
         dashboard queries without data (function {DASHBOARD_FUNCTION:?}, \
         $__rate_interval {RATE_INTERVAL}):\n  {}",
        rejected.join("\n  "),
        empty.join("\n  ")
    );
    // What the server found at its start, as Prometheus has it.
    let found: BTreeMap<String, f64> = query(
        &prom,
        "sum by (function, outcome) (hotpool_adopted_containers_total)",
    )
    .expect("query the leftovers")
    .into_iter()
    .map(|(labels, value)| {
        (
            format!("{}/{}", labels["function"], labels["outcome"]),
            value,
        )
    })
    .collect();
    assert_eq!(
        found,
        BTreeMap::from([
            ("http/spec_changed".to_owned(), 1.0),
            ("line/adopted".to_owned(), 1.0)
        ])
    );

    // Shut both down; hotpool removes every container it started.
    prometheus.stop(Duration::from_secs(30));
    let status = server.stop(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "hotpool serve did not exit cleanly on SIGTERM: {status:?}\n{}",
        server.log()
    );
    let left = pool_containers(&pool);
    assert!(left.is_empty(), "containers left behind: {left:?}");
}
