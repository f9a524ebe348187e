//! `hotpool serve` under test: the real binary on a free loopback port with a
//! config written by the test, its output captured, and helpers to call it, stop
//! it and check that none of its containers is left.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hotpool::driver::Transport;
use serde_json::Value;

use super::http::{self, HttpResponse};
use super::testfn_image;

/// How long a server may take to answer `/healthz`, or to exit after SIGTERM.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A `[[function]]` table on the test-function image, with 32 MiB of memory;
/// `extra` is more TOML lines of the table.
pub fn function(name: &str, cmd: &str, format: &str, extra: &str) -> String {
    function_of(testfn_image(), name, cmd, format, extra)
}

/// [`function`] on `image`, the test function as another engine names it.
pub fn function_of(image: &str, name: &str, cmd: &str, format: &str, extra: &str) -> String {
    format!(
        "[[function]]\nname = \"{name}\"\nimage = \"{image}\"\ncmd = [\"{cmd}\"]\n\
         format = \"{format}\"\nmemory = \"32m\"\n{extra}\n"
    )
}

/// Output of a child process, collected by a thread so its pipe never fills.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn drain(&self, from: impl Read + Send + 'static) -> JoinHandle<()> {
        self.drain_paced(from, Duration::ZERO)
    }

    /// [`Captured::drain`], sleeping `pause` after each read of 4 KiB at most:
    /// a reader slower than the writer leaves the pipe full.
    pub fn drain_paced(
        &self,
        mut from: impl Read + Send + 'static,
        pause: Duration,
    ) -> JoinHandle<()> {
        let into = self.0.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = from.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                into.lock().unwrap().extend_from_slice(&buffer[..n]);
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Polls `condition` until it holds, failing with `what` after [`PATIENCE`].
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    eventually_within(what, PATIENCE, || {
        condition().then_some(()).ok_or_else(String::new)
    })
}

/// Polls `check` until it gives a value and returns it, failing with `what`
/// and the last complaint `check` made (if not empty) after `within`.
pub fn eventually_within<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                let last = if last.is_empty() {
                    last
                } else {
                    format!("; last: {last}")
                };
                panic!("timed out waiting until {what}{last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The ids of the containers labelled `hotpool.pool=<pool>`, whatever their state.
pub fn containers_of(pool: &str) -> Vec<String> {
    docker_ps(&["-a", "--filter", &format!("label=hotpool.pool={pool}")])
}

/// The ids `docker ps -q` lists with `args` (filters, `-a`), sorted.
pub fn docker_ps(args: &[&str]) -> Vec<String> {
    ids_listed_by(Command::new("docker").args(["ps", "-q"]).args(args))
}

/// The words `command` prints (ids, one to a line), sorted; fails the test if
/// it fails.
pub fn ids_listed_by(command: &mut Command) -> Vec<String> {
    let output = command.output().expect("run a listing command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

/// Waits for `child` to exit, up to `patience`; `None` if it is still running.
pub fn wait_for_exit(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the server") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A config file of pool `pool` listening on `addr`, with `[server]` and
/// `[pool]` lines `extras` and the `functions` tables: its directory, its
/// path, and its `[server]` and `[pool]` tables.
fn config_file(
    pool: &str,
    addr: SocketAddr,
    (server_extra, pool_extra): (&str, &str),
    functions: &[String],
) -> (tempfile::TempDir, PathBuf, String) {
    let head = format!(
        "[server]\nlisten = \"{addr}\"\n{server_extra}\n\n\
         [pool]\nname = \"{pool}\"\nmemory_budget = \"1g\"\n{pool_extra}\n\n"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hotpool.toml");
    std::fs::write(&path, format!("{head}{}", functions.join("\n"))).expect("write the config");
    (dir, path, head)
}

/// How the test runs a server's process besides its config file and
/// arguments: its environment, and how fast it reads its stderr.
#[derive(Clone, Default)]
pub struct Launch {
    /// Variables set besides the harness's `HOTPOOL_LOG=info` and
    /// `NO_COLOR=1`, which they override.
    pub env: Vec<(String, String)>,
    /// Variables removed from the environment after that: the harness's, the
    /// test's own or `env`'s.
    pub unset: Vec<String>,
    /// The pause of the test's reader of the server's stderr after each read
    /// ([`Captured::drain_paced`]): zero takes it as fast as it comes.
    pub stderr_pause: Duration,
}

impl Launch {
    /// `env` besides the harness's environment, stderr read as it comes.
    pub fn with_env(env: &[(&str, &str)]) -> Launch {
        Launch {
            env: env
                .iter()
                .map(|&(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
            ..Launch::default()
        }
    }
}

/// A running `hotpool serve`. Dropping it sends SIGTERM and waits for the exit;
/// [`Server::stop`] does the same and asserts a clean exit with no container left.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pool: String,
    pub stdout: Captured,
    pub stderr: Captured,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
    /// The config file, and its `[server]` and `[pool]` tables.
    config: (PathBuf, String),
    /// The `[server]` and `[pool]` lines besides the defaults, and how it was
    /// launched, for the servers that come after it.
    extras: (String, String),
    launch: Launch,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server whose pool is `server-test-<test>-<pid>`, with `[server]`
    /// lines `server_extra` and the `functions` tables, and waits until `/healthz`
    /// answers.
    pub fn start(test: &str, server_extra: &str, functions: &[String]) -> Server {
        Server::start_with(test, server_extra, "shutdown_timeout = \"30s\"", functions)
    }

    /// [`Server::start`] with every function on `transport` (the pool's name
    /// says which).
    pub fn start_on(
        transport: Transport,
        test: &str,
        server_extra: &str,
        functions: &[String],
    ) -> Server {
        Server::start_with_on(
            transport,
            test,
            server_extra,
            "shutdown_timeout = \"30s\"",
            functions,
        )
    }

    /// [`Server::start_with`] with every function on `transport`.
    pub fn start_with_on(
        transport: Transport,
        test: &str,
        server_extra: &str,
        pool_extra: &str,
        functions: &[String],
    ) -> Server {
        Server::start_with(
            &format!("{test}-{transport}"),
            server_extra,
            &format!("{pool_extra}\ntransport = \"{transport}\""),
            functions,
        )
    }

    /// [`Server::start`] with `[pool]` lines `pool_extra` besides its name and budget.
    pub fn start_with(
        test: &str,
        server_extra: &str,
        pool_extra: &str,
        functions: &[String],
    ) -> Server {
        Server::start_with_env(test, server_extra, pool_extra, functions, &[])
    }

    /// [`Server::start_with`], the server's environment having `env` too.
    pub fn start_with_env(
        test: &str,
        server_extra: &str,
        pool_extra: &str,
        functions: &[String],
        env: &[(&str, &str)],
    ) -> Server {
        Server::start_with_env_args(test, (server_extra, pool_extra), functions, env, &[])
    }

    /// [`Server::start_with_env`] with `args` after `serve --config FILE`.
    pub fn start_with_env_args(
        test: &str,
        extras: (&str, &str),
        functions: &[String],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        Server::start_launched(test, extras, functions, Launch::with_env(env), args)
    }

    /// [`Server::start_with_env_args`], the process launched as `launch` says.
    pub fn start_launched(
        test: &str,
        extras: (&str, &str),
        functions: &[String],
        launch: Launch,
        args: &[&str],
    ) -> Server {
        let pool = format!("server-test-{test}-{}", std::process::id());
        let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let config = config_file(&pool, addr, extras, functions);
        let mut server = Server::spawn(config, addr, &pool, (extras, launch), args);
        server.wait_until_healthy();
        server
    }

    /// Starts a server of pool `pool` listening on `addr`, its config as
    /// [`Server::start_with`] writes it, and does not wait for it: it may
    /// well exit at once.
    pub fn launch(
        pool: &str,
        addr: SocketAddr,
        server_extra: &str,
        pool_extra: &str,
        functions: &[String],
    ) -> Server {
        Server::launch_with_env(pool, addr, (server_extra, pool_extra), functions, &[])
    }

    /// [`Server::launch`], the server's environment having `env` too.
    pub fn launch_with_env(
        pool: &str,
        addr: SocketAddr,
        (server_extra, pool_extra): (&str, &str),
        functions: &[String],
        env: &[(&str, &str)],
    ) -> Server {
        let extras = (server_extra, pool_extra);
        let config = config_file(pool, addr, extras, functions);
        Server::spawn(config, addr, pool, (extras, Launch::with_env(env)), &[])
    }

    /// Starts a server on the config file `path` (in `dir`, which it keeps),
    /// written for pool `pool` listening on `addr`, and waits until
    /// `/healthz` answers.
    pub fn start_from_file(
        dir: tempfile::TempDir,
        path: PathBuf,
        pool: &str,
        addr: SocketAddr,
    ) -> Server {
        let config = (dir, path, String::new());
        let mut server = Server::spawn(config, addr, pool, (("", ""), Launch::default()), &[]);
        server.wait_until_healthy();
        server
    }

    /// [`Server::start`] with `args` after `serve --config FILE`.
    pub fn start_with_args(test: &str, functions: &[String], args: &[&str]) -> Server {
        let extras = ("", "shutdown_timeout = \"30s\"");
        Server::start_with_env_args(test, extras, functions, &[], args)
    }

    /// Starts the next server of this one's pool on a free port, with the
    /// same `[server]` and `[pool]` lines and launch but `functions`, and
    /// does not wait for it.
    pub fn launch_next(&self, functions: &[String]) -> Server {
        let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let extras = (self.extras.0.as_str(), self.extras.1.as_str());
        let config = config_file(&self.pool, addr, extras, functions);
        Server::spawn(config, addr, &self.pool, (extras, self.launch.clone()), &[])
    }

    /// Starts `hotpool serve --take-over` on a copy of this server's config
    /// file as it is now, and does not wait for it.
    pub fn take_over(&self) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hotpool.toml");
        std::fs::copy(&self.config.0, &path).expect("copy the config");
        let head = self.config.1.clone();
        let extras = (self.extras.0.as_str(), self.extras.1.as_str());
        Server::spawn(
            (dir, path, head),
            self.addr,
            &self.pool,
            (extras, self.launch.clone()),
            &["--take-over"],
        )
    }

    /// Starts `hotpool serve` on config file `path` (in `dir`, with `head`
    /// its `[server]` and `[pool]` tables, written with `extras`), launched as
    /// `launch` says, with `args` after it.
    fn spawn(
        (dir, path, head): (tempfile::TempDir, PathBuf, String),
        addr: SocketAddr,
        pool: &str,
        (extras, launch): ((&str, &str), Launch),
        args: &[&str],
    ) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hotpool"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .args(args)
            .env("HOTPOOL_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(launch.env.iter().map(|(key, value)| (key, value)));
        for name in &launch.unset {
            command.env_remove(name);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hotpool serve");
        let (stdout, stderr) = (Captured::default(), Captured::default());
        let readers = vec![
            stdout.drain(child.stdout.take().unwrap()),
            stderr.drain_paced(child.stderr.take().unwrap(), launch.stderr_pause),
        ];
        Server {
            child,
            addr,
            pool: pool.to_owned(),
            stdout,
            stderr,
            readers,
            exited: None,
            config: (path, head),
            extras: (extras.0.to_owned(), extras.1.to_owned()),
            launch,
            _dir: dir,
        }
    }

    /// Rewrites the config file: the same `[server]` and `[pool]`, then `rest`.
    pub fn rewrite_config(&self, rest: &str) {
        self.write_config(&format!("{}{rest}", self.config_head()));
    }

    /// The config file's `[server]` and `[pool]` tables as the server started with.
    pub fn config_head(&self) -> &str {
        &self.config.1
    }

    /// Rewrites the whole config file with `text`.
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config.0, text).expect("rewrite the config");
    }

    /// Sends SIGHUP: the server reloads its config.
    pub fn hang_up(&self) {
        // SAFETY: kill only sends a signal to the server's process.
        let sent = unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(sent, 0, "send SIGHUP to the server");
    }

    pub fn wait_until_healthy(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                panic!(
                    "hotpool serve exited ({status}) before answering /healthz; stderr:\n{}",
                    self.stderr.text()
                );
            }
            if let Ok(response) = http::get(self.addr, "/healthz") {
                assert_eq!(response.status, 200, "/healthz: {response}");
                assert_eq!(response.json()["status"], "ok", "/healthz: {response}");
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "hotpool serve did not answer /healthz on {}; stderr:\n{}",
                    self.addr,
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the server says on stdout where it listens (`hotpool
    /// serving ... on http://ADDR (pid N)`) and returns that address: the
    /// port of a server told to listen on port 0, or of the socket it took
    /// over.
    pub fn announced_addr(&mut self) -> SocketAddr {
        eventually_within("hotpool serve says where it listens", PATIENCE, || {
            let stdout = self.stdout.text();
            let announced = stdout
                .lines()
                .find_map(|line| line.split_once(" on http://"))
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok());
            if let Some(addr) = announced {
                return Ok(addr);
            }
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                panic!(
                    "hotpool serve exited ({status}) before saying where it listens; \
                     stdout:\n{stdout}\nstderr:\n{}",
                    self.stderr.text()
                );
            }
            Err(format!(
                "stdout:\n{stdout}\nstderr:\n{}",
                self.stderr.text()
            ))
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `POST /invoke/<function>`.
    pub fn invoke(&self, function: &str, body: &[u8]) -> HttpResponse {
        let path = format!("/invoke/{function}");
        http::post(self.addr, &path, body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}; server stderr:\n{}", self.stderr.text()))
    }

    /// `GET path`, which must answer.
    pub fn get(&self, path: &str) -> HttpResponse {
        http::get(self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}; server stderr:\n{}", self.stderr.text()))
    }

    /// The sum of the samples of `metric` on `/metrics` whose labels hold every
    /// one of `labels` (`name="value"`); 0 with none.
    pub fn metric(&self, metric: &str, labels: &[&str]) -> f64 {
        let scraped = self.get("/metrics");
        assert_eq!(scraped.status, 200, "{scraped}");
        metric_sum(&scraped.text(), metric, labels)
    }

    /// The entry of `name` in `GET /functions`.
    pub fn function_status(&self, name: &str) -> Value {
        let listed = self.get("/functions").json();
        listed["functions"]
            .as_array()
            .expect("functions is an array")
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in /functions: {listed}"))
            .clone()
    }

    /// An invocation on a thread of its own, to run alongside the test.
    pub fn invoke_in_background(&self, function: &str, body: &[u8]) -> Background {
        let (addr, path, body) = (self.addr, format!("/invoke/{function}"), body.to_vec());
        let answer = Arc::new(Mutex::new(None));
        let handle = std::thread::spawn({
            let answer = answer.clone();
            move || {
                let response =
                    http::post(addr, &path, &body).unwrap_or_else(|e| panic!("POST {path}: {e}"));
                *answer.lock().unwrap() = Some(response.to_string());
                response
            }
        });
        Background {
            handle,
            answer,
            stderr: self.stderr.clone(),
        }
    }

    /// Polls `/functions` until `function`'s `count` (a pointer into its entry,
    /// like `/containers/busy`) is `n`, while every call of `running` is still in
    /// flight.
    pub fn wait_for_count(&self, function: &str, count: &str, n: u64, running: &[&Background]) {
        eventually(&format!("{function}{count} is {n}"), || {
            for call in running {
                call.assert_running();
            }
            self.function_status(function).pointer(count) == Some(&Value::from(n))
        });
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Kills the server with SIGKILL, as a crash would end it, and waits for it:
    /// its containers are left behind. Only for a server with a few containers,
    /// never one removing many.
    pub fn kill(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL the server");
        let status = self.wait().expect("a killed server exits");
        assert_eq!(status.code(), None, "killed by a signal: {status}");
        status
    }

    /// Waits for the exit that a SIGTERM started; `None` if it did not come.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        self.wait_within(PATIENCE)
    }

    /// [`Server::wait`], up to `patience`.
    pub fn wait_within(&mut self, patience: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_for_exit(&mut self.child, patience);
        }
        if self.exited.is_some() {
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
        self.exited
    }

    /// SIGTERM, then asserts exit status 0 and that no container of the pool is
    /// left.
    pub fn stop(mut self) {
        self.terminate();
        let status = self.wait();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "hotpool serve did not exit 0 after SIGTERM ({status:?}); stdout:\n{}\nstderr:\n{}",
            self.stdout.text(),
            self.stderr.text()
        );
        assert_eq!(
            containers_of(&self.pool),
            Vec::<String>::new(),
            "containers of pool {} are left after shutdown; stderr:\n{}",
            self.pool,
            self.stderr.text()
        );
    }
}

impl Drop for Server {
    /// The path of a test that failed early: stop the server, and if it does not
    /// go, kill it and remove its containers, without panicking again.
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if self.wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let left = containers_of(&self.pool);
            if !left.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&left)
                    .status();
            }
        }
    }
}

/// A call running on a thread of its own.
pub struct Background {
    handle: JoinHandle<HttpResponse>,
    answer: Arc<Mutex<Option<String>>>,
    stderr: Captured,
}

impl Background {
    /// Fails the test if the call already got its answer.
    pub fn assert_running(&self) {
        if let Some(answer) = self.answer.lock().unwrap().as_ref() {
            panic!(
                "a call meant to be in flight already ended: {answer}; server stderr:\n{}",
                self.stderr.text()
            );
        }
        assert!(!self.handle.is_finished(), "the call's thread panicked");
    }

    /// The call's answer.
    pub fn join(self) -> HttpResponse {
        self.handle.join().expect("the background call")
    }
}

/// The sum of the samples of `metric` in the Prometheus text `page` whose
/// labels hold every one of `labels` (`name="value"`); 0 with none.
pub fn metric_sum(page: &str, metric: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(metric)
                && labels.iter().all(|label| series.contains(label))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// The error object of a JSON error response, after checking that its
/// `call_id` matches the `Hotpool-Call-Id` header when there is one.
pub fn error_of(response: &HttpResponse) -> Value {
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{response}"
    );
    let json = response.json();
    let error = json["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{response}"
    );
    let call_id = error["call_id"].as_str().expect("call_id is a string");
    assert!(!call_id.is_empty(), "{response}");
    if let Some(header) = response.header("hotpool-call-id") {
        assert_eq!(call_id, header, "{response}");
    }
    error
}

/// What a server killed outright leaves that only the next server of its
/// pool would remove, removed when dropped: its pipe directories, its pool
/// lock file and its hand-over socket (its containers are a pool guard's).
pub struct KilledServerFiles {
    pub pool: String,
    pub pid: u32,
}

impl Drop for KilledServerFiles {
    fn drop(&mut self) {
        for dir in super::runtime_dirs_of_process(self.pid) {
            let _ = std::fs::remove_dir_all(dir);
        }
        for lock in super::pool_locks_of(&self.pool) {
            let _ = std::fs::remove_file(hotpool::driver::handover_path(&lock));
            let _ = std::fs::remove_file(lock);
        }
    }
}
