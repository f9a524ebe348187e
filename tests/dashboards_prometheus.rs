//! The shipped dashboards against real parts: the real `hotpool serve` on the real
//! engine, having taken the pool over from another (`--take-over`, so that it
//! counts containers taken over and removed), driven through every call outcome,
//! scraped by a real Prometheus (Debian's
//! `prometheus`, configured from `dashboards/prometheus.yml`). Its `/metrics` must
//! pass `promtool check metrics`, and every query of every dashboard panel must
//! come back from Prometheus with data.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::http::{self, HttpResponse};
use support::server::{Captured, Server, containers_of, eventually_within, wait_for_exit};
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
// hotpool serve and its load.

/// The `[[function]]` tables of the test's servers; `http_env` is the `http`
/// function's environment (a TOML inline table), part of its container spec.
fn functions(image: &str, http_env: &str) -> String {
    format!(
        r#"[[function]]
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

/// Calls and expects status 200 with `answer` as the body; returns `Hotpool-Start`.
fn call_ok(server: &Server, function: &str, body: &str, answer: &str) -> String {
    let reply = server.invoke(function, body.as_bytes());
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, answer),
        "{function} {body:?}"
    );
    reply.header("hotpool-start").unwrap_or_default().to_owned()
}

/// Calls and expects the error `kind` with `status`.
fn call_fails(
    server: &Server,
    function: &str,
    body: &str,
    status: u16,
    kind: &str,
) -> HttpResponse {
    let reply = server.invoke(function, body.as_bytes());
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

/// Starts a server of pool `pool` on a port of its choosing that warms a
/// container of `line` and one of `http`, and a second one that takes the
/// pool over from it (`--take-over`) with `http`'s container spec changed:
/// it takes `line`'s container over and removes `http`'s, and counts both.
/// Returns the second, which listens on the first one's socket.
fn take_over_warm_containers(pool: &str) -> Server {
    let image = testfn_image();
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let tables = functions(image, "{}");
    let mut first = Server::launch(pool, any_port, "", "shutdown_timeout = \"20s\"", &[tables]);
    first.addr = first.announced_addr();
    first.wait_until_healthy();
    for function in ["line", "http"] {
        assert_eq!(call_ok(&first, function, "warm", "warm"), "cold");
    }
    first.rewrite_config(&functions(image, r#"{ CHANGED = "1" }"#));
    let mut next = first.take_over();
    assert_eq!(
        next.announced_addr(),
        first.addr,
        "the next server listens on the first's socket"
    );
    next.wait_until_healthy();
    let status = first.wait_within(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "the first server exits: {status:?}\nstdout:\n{}\nstderr:\n{}",
        first.stdout.text(),
        first.stderr.text()
    );
    let found = hotpool_counter(&next, "hotpool_adopted_containers_total");
    let wanted = [(("http", "spec_changed"), 1.0), (("line", "adopted"), 1.0)]
        .map(|((function, outcome), count)| ((function.to_owned(), outcome.to_owned()), count));
    assert_eq!(found, BTreeMap::from(wanted), "{}", next.stderr.text());
    next
}

/// Every outcome once or more, hot and cold successes, and a CPU-heavy call.
/// Returns a `/metrics` page scraped while calls were in flight.
fn drive(server: &Server, round: u32) -> String {
    for i in 0..3 {
        let body = format!("cold {round}.{i}");
        let start = call_ok(server, "cold", &body, &body);
        assert_eq!(start, "cold", "a cold-format call starts a container");
    }
    for i in 0..3 {
        let body = format!("http {round}.{i}");
        call_ok(server, "http", &body, &body);
    }

    for i in 0..3 {
        let body = format!("line {round}.{i}");
        let start = call_ok(server, "line", &body, &body);
        if i > 0 {
            assert_eq!(start, "hot", "{body}: the container is reused");
        }
    }
    // A call that burns a core, so per-call CPU has a real value.
    assert_eq!(call_ok(server, "line", "!spin 1500", "spun"), "hot");
    for (command, status, kind) in [
        ("!oom", 502, "oom"),
        ("!exit 3", 502, "exited"),
        ("!sleep 5000", 504, "timeout"),
        ("!garbage", 502, "protocol_error"),
    ] {
        call_fails(server, "line", command, status, kind);
        let after = format!("after {kind}");
        let start = call_ok(server, "line", &after, &after);
        assert_eq!(start, "cold", "{kind} evicted the only container");
        let again = format!("again after {kind}");
        assert_eq!(call_ok(server, "line", &again, &again), "hot");
    }
    busy(server)
}

/// Occupies `single`'s one container and its one queue place; the next call is
/// busy. Returns `/metrics` as scraped meanwhile.
fn busy(server: &Server) -> String {
    let occupy = server.invoke_in_background("single", b"!sleep 3000");
    server.wait_for_count("single", "/containers/busy", 1, &[&occupy]);
    let queued = server.invoke_in_background("single", b"queued");
    server.wait_for_count("single", "/waiting", 1, &[&occupy, &queued]);
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);

    let refused = call_fails(server, "single", "refused", 503, "busy");
    assert!(
        refused.header("retry-after").is_some(),
        "busy has Retry-After"
    );

    let occupied = occupy.join();
    assert_eq!((occupied.status, occupied.text().as_str()), (200, "slept"));
    let queued = queued.join();
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
fn prometheus_config(target: SocketAddr) -> String {
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

/// A running Prometheus, stopped (SIGTERM, then SIGKILL) when dropped, its
/// output shown then if the test failed.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    output: Captured,
}

impl Prometheus {
    /// Starts Prometheus on a free port with its TSDB in `dir`, scraping
    /// `target` as [`prometheus_config`] says, and waits until it is ready.
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, prometheus_config(target)).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start prometheus: {e} (scripts/prerequisites installs what tests need)"
                )
            });
        let output = Captured::default();
        output.drain(child.stdout.take().unwrap());
        output.drain(child.stderr.take().unwrap());
        let mut prometheus = Prometheus {
            child,
            addr,
            output,
        };
        eventually_within("prometheus is ready", Duration::from_secs(60), || {
            if let Some(status) = prometheus.child.try_wait().expect("try_wait") {
                panic!("prometheus exited: {status}\n{}", prometheus.output.text());
            }
            match http::get(addr, "/-/ready") {
                Ok(reply) if reply.status == 200 => Ok(()),
                Ok(reply) => Err(format!("{reply}\n{}", prometheus.output.text())),
                Err(e) => Err(format!("{e}\n{}", prometheus.output.text())),
            }
        });
        prometheus
    }

    /// SIGTERM, then up to 30 s to exit, else SIGKILL.
    fn stop(&mut self) {
        if self.child.try_wait().expect("try_wait").is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if wait_for_exit(&mut self.child, Duration::from_secs(30)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("--- prometheus output ---\n{}", self.output.text());
        }
    }
}

/// A sample of an instant query: its labels and its value.
type Sample = (BTreeMap<String, String>, f64);

/// Evaluates `expr` now; `Err` if Prometheus rejects it.
fn query(prometheus: &Prometheus, expr: &str) -> Result<Vec<Sample>, String> {
    let target = format!("/api/v1/query?query={}", percent_encode(expr));
    let reply = http::get(prometheus.addr, &target).map_err(|e| e.to_string())?;
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
fn hotpool_calls(server: &Server) -> Calls {
    hotpool_counter(server, "hotpool_calls_total")
}

/// Counter `name`, labelled by function and outcome, as hotpool reports it now.
fn hotpool_counter(server: &Server, name: &str) -> Calls {
    let page = server.get("/metrics").text();
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
fn prometheus_calls(prometheus: &Prometheus) -> Result<Calls, String> {
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
fn scraped_now(server: &Server, prometheus: &Prometheus) -> Calls {
    let expected = hotpool_calls(server);
    let totals = outcomes(&expected);
    let missing: Vec<&str> = OUTCOMES
        .into_iter()
        .filter(|o| !totals.contains_key(o))
        .collect();
    assert!(missing.is_empty(), "no {missing:?} calls in {expected:?}");
    eventually_within(
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
    let server = take_over_warm_containers(&pool);
    let mut prometheus = Prometheus::start(dir.path(), server.addr);

    // Round one creates every series; Prometheus scrapes them before round two
    // moves them, so rates and quantiles see real increases.
    promtool_check(&drive(&server, 1));
    let first = scraped_now(&server, &prometheus);
    promtool_check(&drive(&server, 2));
    let second = scraped_now(&server, &prometheus);
    let (before, after) = (outcomes(&first), outcomes(&second));
    for outcome in OUTCOMES {
        assert!(
            after[outcome] > before[outcome],
            "round two added no {outcome} call: {before:?} -> {after:?}"
        );
    }
    assert!(
        !containers_of(&pool).is_empty(),
        "the pool has hot containers"
    );

    // Every panel query: valid, and with data.
    let queries = panel_queries();
    assert!(queries.len() > 20, "only {} queries found", queries.len());
    let mut rejected = Vec::new();
    let mut waiting: Vec<&PanelQuery> = Vec::new();
    for q in &queries {
        match query(&prometheus, &q.expr) {
            Err(e) => rejected.push(format!("{}: {e}\n      {}", q.name(), q.expr)),
            Ok(_) => waiting.push(q),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut empty = Vec::new();
    loop {
        empty.clear();
        waiting.retain(|q| match query(&prometheus, &q.expr) {
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
        &prometheus,
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

    // Shut both down; hotpool exits 0 and removes every container it started.
    prometheus.stop();
    server.stop();
}
