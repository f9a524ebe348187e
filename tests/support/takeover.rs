//! Helpers of the take-over tests (`hotpool serve` after a crash, and
//! `hotpool serve --take-over`): which containers a pool and a function have,
//! how many a server took over as it started, and callers that keep calling
//! through a change of server and tally what failed or met a cold container;
//! and the two take-over scenarios, run on each engine ([`Engine`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::server::{
    KilledServerFiles, PATIENCE, Server, containers_of, docker_ps, eventually, function_of,
};
use super::{pool_locks_of, runtime_dirs_of_process, testfn_image};

/// An engine the take-over scenarios run `hotpool serve` on: the test
/// function's image as it names it, the `[pool]` lines (with the `[engine]`
/// table) and environment a server on it needs, and how the test sees the
/// containers of a pool there.
pub struct Engine {
    /// The test function's image.
    pub image: String,
    /// `[pool]` lines besides its name and budget; may end with more tables.
    pub pool_extra: String,
    /// The server's environment besides the test's.
    pub env: Vec<(String, String)>,
    /// The ids of the containers of a function (second) of a pool (first),
    /// whatever their state, sorted.
    pub containers_of_function: fn(&str, &str) -> Vec<String>,
    /// Fails the test if the engine still holds anything of a pool (first)
    /// whose server stopped; the second is every container id it had.
    pub holds_nothing_of: fn(&str, &[String]),
    /// Removes, when dropped, every container of a pool, however the test ends.
    pub guard: fn(String) -> Box<dyn std::any::Any>,
}

impl Engine {
    /// Docker, the test function built into it.
    pub fn docker() -> Engine {
        Engine {
            image: testfn_image().to_owned(),
            pool_extra: "shutdown_timeout = \"30s\"".to_owned(),
            env: Vec::new(),
            containers_of_function,
            holds_nothing_of: |pool, _| {
                assert_eq!(containers_of(pool), Vec::<String>::new(), "{pool}")
            },
            guard: |pool| Box::new(super::PoolGuard(pool)),
        }
    }

    /// A `[[function]]` table on the engine's test function image.
    pub fn function(&self, name: &str, cmd: &str, format: &str, extra: &str) -> String {
        function_of(&self.image, name, cmd, format, extra)
    }

    /// Starts a server of pool `server-test-<test>-<pid>` on the engine, with
    /// `functions` and `args` after `serve --config FILE`, its environment
    /// having `env` too, and waits until it is healthy.
    pub fn start(
        &self,
        test: &str,
        functions: &[String],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .chain(env.iter().copied())
            .collect();
        Server::start_with_env_args(test, ("", &self.pool_extra), functions, &env, args)
    }

    /// The containers of `function` in `pool`, sorted.
    pub fn containers_of_function(&self, pool: &str, function: &str) -> Vec<String> {
        (self.containers_of_function)(pool, function)
    }

    /// Stops `server` (exit 0) and fails unless the engine holds nothing of
    /// its pool, of which `seen` are containers the test saw.
    pub fn stop_leaving_nothing(&self, server: Server, seen: &[String]) {
        let pool = server.pool.clone();
        server.stop();
        (self.holds_nothing_of)(&pool, seen);
    }
}

/// [`containers_of`], sorted.
pub fn sorted_containers_of(pool: &str) -> Vec<String> {
    let mut ids = containers_of(pool);
    ids.sort();
    ids
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The ids of the containers of function `function` in pool `pool` on Docker.
pub fn containers_of_function(pool: &str, function: &str) -> Vec<String> {
    let mut ids = docker_ps(&[
        "-a",
        "--filter",
        &format!("label=hotpool.pool={pool}"),
        "--filter",
        &format!("label=hotpool.function={function}"),
    ]);
    ids.sort();
    ids
}

/// How many containers the server said it took over as it started.
pub fn adopted_by(server: &Server) -> u64 {
    eventually("the server says what it took over", || {
        server.stderr.text().contains("took over and removed")
    });
    let log = server.stderr.text();
    let line = log
        .lines()
        .find(|line| line.contains("took over and removed"))
        .unwrap_or_else(|| panic!("the server says what it took over: {log}"));
    let count = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("adopted="))
        .unwrap_or_else(|| panic!("{line}"));
    count.parse().unwrap_or_else(|_| panic!("{line}"))
}

/// Calls `function` with `body` until `stop`, counting the calls that end
/// (well or not) in `done`; the answers do not matter.
pub fn load(
    server: &Server,
    calls: [(&'static str, &'static str); 2],
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    let (addr, stop, done) = (server.addr, stop.clone(), done.clone());
    std::thread::spawn(move || {
        for round in 0.. {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let (function, body) = calls[round % 2];
            let _ = super::http::post(addr, &format!("/invoke/{function}"), body.as_bytes());
            done.fetch_add(1, Ordering::AcqRel);
        }
    })
}

/// A loader's tally: calls done (of each function), and those that failed,
/// or began after `since` and met no warm container (each as its body, the
/// answer and its call id).
pub struct Tally {
    pub done: [AtomicUsize; 2],
    pub failed: Mutex<Vec<String>>,
    pub since: Mutex<Instant>,
    pub cold: Mutex<Vec<String>>,
}

/// The functions the loaders call, in the order of [`Tally::done`].
pub const LOADED: [&str; 2] = ["echo", "web"];

impl Tally {
    pub fn new() -> Tally {
        Tally {
            done: Default::default(),
            failed: Mutex::default(),
            since: Mutex::new(Instant::now()),
            cold: Mutex::default(),
        }
    }

    pub fn done(&self) -> [usize; 2] {
        [0, 1].map(|i| self.done[i].load(Ordering::Acquire))
    }

    /// Counts cold calls from now on only.
    pub fn count_cold_from_now(&self) {
        *self.since.lock().unwrap() = Instant::now();
        self.cold.lock().unwrap().clear();
    }
}

/// Calls function `LOADED[which]` on `addr` one after another until `stop`.
pub fn keep_calling(
    addr: SocketAddr,
    which: usize,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> std::thread::JoinHandle<()> {
    let (stop, tally, function) = (stop.clone(), tally.clone(), LOADED[which]);
    std::thread::spawn(move || {
        for n in 0.. {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let body = format!("{function}-{n}");
            let began = Instant::now();
            match super::http::post(addr, &format!("/invoke/{function}"), body.as_bytes()) {
                Ok(answer) if answer.status == 200 && answer.text() == body => {
                    let counted = began >= *tally.since.lock().unwrap();
                    let start = answer.header("hotpool-start");
                    if counted && start != Some("hot") {
                        let call = answer.header("hotpool-call-id").unwrap_or("?");
                        tally
                            .cold
                            .lock()
                            .unwrap()
                            .push(format!("{body}: {answer} call_id={call}"));
                    }
                }
                Ok(answer) => tally
                    .failed
                    .lock()
                    .unwrap()
                    .push(format!("{body}: {answer}")),
                Err(error) => tally
                    .failed
                    .lock()
                    .unwrap()
                    .push(format!("{body}: {error}")),
            }
            tally.done[which].fetch_add(1, Ordering::AcqRel);
        }
    })
}

/// The test function's mode, and the format, of each loaded function.
pub fn name_cmd(name: &str) -> &'static str {
    if name == "echo" { "line" } else { "http" }
}

/// The containers a server said, as it started, it did not take over: each
/// one's engine id and the outcome it counted (`ended`, `over_budget`...).
pub fn refused_by(server: &Server) -> Vec<(String, String)> {
    adopted_by(server);
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .trim_matches('"')
            .to_owned()
    };
    server
        .stderr
        .text()
        .lines()
        .filter(|line| line.contains("not taking over a container"))
        .map(|line| (field(line, "container="), field(line, "outcome=")))
        .collect()
}

/// Makes `count` containers of line function `function` warm on `server`
/// (as many calls at once, each held 1.5 s) and returns their ids, sorted.
pub fn warm_up(server: &Server, function: &str, count: usize) -> Vec<String> {
    let calls: Vec<_> = (0..count)
        .map(|_| server.invoke_in_background(function, b"!sleep 1500"))
        .collect();
    server.wait_for_count(
        function,
        "/containers/busy",
        count as u64,
        &calls.iter().collect::<Vec<_>>(),
    );
    for call in calls {
        assert_eq!(call.join().status, 200);
    }
    let warm = containers_of_function(&server.pool, function);
    assert_eq!(warm.len(), count, "{count} warm containers");
    warm
}

/// The crash take-over on `engine`, pool named after `test`: a server with
/// an echo function (one container in a 30 s call, one idle), a web
/// function and a third function is killed outright; the next server, the
/// third function's spec changed, takes over the idle echo container and the
/// web one (which answer hot, the same containers) and removes the rest,
/// keeps the pipes of what it took over only, and leaves nothing of the
/// pool once stopped.
pub fn a_killed_owners_idle_containers_are_taken_over(engine: &Engine, test: &str) {
    let functions = [
        engine.function(
            "echo",
            "line",
            "line",
            "max_concurrency = 4\ntimeout = \"60s\"",
        ),
        engine.function("web", "http", "http", ""),
        engine.function("changed", "line", "line", ""),
    ];
    let mut first = engine.start(test, &functions, &[], &[]);
    let _guard = (engine.guard)(first.pool.clone());
    let pool = first.pool.clone();
    let of = |function| engine.containers_of_function(&pool, function);
    // 30 s is a margin for the kill and the next start, not a speed.
    let in_call = first.invoke_in_background("echo", b"!sleep 30000");
    first.wait_for_count("echo", "/containers/busy", 1, &[&in_call]);
    let busy = of("echo");
    assert_eq!(first.invoke("echo", b"warm").status, 200);
    let idle: Vec<String> = of("echo")
        .into_iter()
        .filter(|id| !busy.contains(id))
        .collect();
    assert_eq!(
        (busy.len(), idle.len()),
        (1, 1),
        "one echo container in a call, one idle"
    );
    assert_eq!(first.invoke("web", b"warm").status, 200);
    assert_eq!(first.invoke("changed", b"warm").status, 200);
    let (web, changed) = (of("web"), of("changed"));
    assert_eq!((web.len(), changed.len()), (1, 1), "{web:?} {changed:?}");
    let first_pid = first.pid();
    let _files = KilledServerFiles {
        pool: first.pool.clone(),
        pid: first_pid,
    };
    first.kill();

    let mut functions = functions.to_vec();
    functions[2] = engine.function("changed", "line", "line", "env = { NEW = \"1\" }");
    let mut next = first.launch_next(&functions);
    next.wait_until_healthy();
    assert_eq!(adopted_by(&next), 2, "{}", next.stderr.text());
    assert_eq!(
        of("echo"),
        idle,
        "the idle echo container is taken over, the one in a call removed"
    );
    assert_eq!(of("web"), web, "taken over");
    assert_eq!(
        of("changed"),
        Vec::<String>::new(),
        "a container of a spec that changed is removed"
    );
    let dirs = runtime_dirs_of_process(first_pid);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let mut pipes: Vec<String> = std::fs::read_dir(&dirs[0])
        .expect("the killed server's directory")
        .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|name| name != "lock")
        .collect();
    pipes.sort();
    assert_eq!(
        pipes
            .iter()
            .map(|name| name.split('-').next().unwrap())
            .collect::<Vec<_>>(),
        ["echo", "web"],
        "the pipes of the containers taken over stay where their containers have them; the rest go"
    );
    for (name, body) in [("echo", "after"), ("web", "after")] {
        let answer = next.invoke(name, body.as_bytes());
        assert_eq!(
            (answer.status, answer.text()),
            (200, body.to_owned()),
            "{answer}"
        );
        assert_eq!(
            answer.header("hotpool-start"),
            Some("hot"),
            "{name}: {answer}"
        );
    }
    assert_eq!(of("echo"), idle, "served by the same container");
    let locks = pool_locks_of(&next.pool);
    assert_eq!(locks.len(), 1, "{locks:?}");
    let record = std::fs::read_to_string(&locks[0]).expect("read the lock file");
    assert!(
        record.starts_with(&format!("pid {}\n", next.pid())),
        "the lock file the killed server left names the next one: {record}"
    );
    let next_pid = next.pid();
    let seen: Vec<String> = [busy, idle, web, changed].concat();
    engine.stop_leaving_nothing(next, &seen);
    assert_eq!(
        runtime_dirs_of_process(first_pid),
        Vec::<PathBuf>::new(),
        "the killed server's directory goes with the last of its containers"
    );
    assert_eq!(
        runtime_dirs_of_process(next_pid),
        Vec::<PathBuf>::new(),
        "the next server's directories go as it stops"
    );
}

/// The planned hand-over on `engine`, pool named after `test`: two callers
/// per function of [`LOADED`], one call at a time, through `serve
/// --take-over`; no call fails, none meets a cold container once the pool has
/// settled, the same containers serve before and after, and the server that
/// handed over exits 0 when stopped.
pub fn a_taker_gets_the_socket_and_the_idle_containers_and_no_call_fails(
    engine: &Engine,
    test: &str,
) {
    // A fixed keep-alive: no prewarm, so what starts is what calls ask for.
    let keep = "keep_alive = \"fixed:10m\"";
    let functions = LOADED.map(|name| engine.function(name, name_cmd(name), name_cmd(name), keep));
    // As the DaemonSet runs it: once it has handed over, it waits to be stopped.
    // Each call logged with its call id, to tell which server served a cold one.
    let log = [("HOTPOOL_LOG", "info,hotpool::server=debug")];
    let mut first = engine.start(test, &functions, &["--wait-after-handover"], &log);
    let _guard = (engine.guard)(first.pool.clone());
    // Two callers per function, each one call at a time.
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::new()));
    let callers: Vec<_> = [0, 0, 1, 1]
        .into_iter()
        .map(|which| keep_calling(first.addr, which, &stop, &tally))
        .collect();
    let containers = || LOADED.map(|name| engine.containers_of_function(&first.pool, name));
    // Settled: each function has its two callers' containers up, none
    // starting (the engine lists a container long before its start is done,
    // and a call may yet meet it cold), and served 10 calls that started none.
    let up = |name: &str| {
        let counts = &first.function_status(name)["containers"];
        (
            counts["idle"].as_u64(),
            counts["busy"].as_u64(),
            counts["starting"].as_u64(),
        )
    };
    let mut last = (containers(), tally.done());
    eventually("the pool settles", || {
        let now = (containers(), tally.done());
        if (0..2).any(|i| now.1[i] < last.1[i] + 10) {
            return false;
        }
        let same = now.0 == last.0
            && LOADED.iter().all(|name| match up(name) {
                (Some(idle), Some(busy), Some(0)) => idle + busy == 2,
                _ => false,
            });
        last = now;
        same
    });
    let warm = last.0;
    tally.count_cold_from_now();
    let before = tally.done();

    let mut next = first.take_over();
    eventually("the server that handed over waits to be stopped", || {
        first.stdout.text().contains("waiting for SIGTERM")
    });
    assert!(
        first.stdout.text().contains("handed over"),
        "{}",
        first.stdout.text()
    );
    next.wait_until_healthy();
    first.terminate();
    let status = first.wait_within(PATIENCE);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the server that handed over exits 0 when stopped; stdout:\n{}\nstderr:\n{}",
        first.stdout.text(),
        first.stderr.text()
    );
    let handed = tally.done();
    eventually(
        "20 more calls of each function through the next server",
        || {
            let done = tally.done();
            (0..2).all(|i| done[i] >= handed[i] + 20)
        },
    );
    stop.store(true, Ordering::Release);
    for caller in callers {
        caller.join().expect("a caller thread");
    }
    assert!(
        handed.iter().sum::<usize>() > before.iter().sum::<usize>(),
        "calls went on while the servers changed places"
    );
    assert_eq!(
        *tally.failed.lock().unwrap(),
        Vec::<String>::new(),
        "no call failed"
    );
    let cold = tally.cold.lock().unwrap().clone();
    let served_by = |server: &Server, which: &str| -> String {
        let log = server.stderr.text();
        cold.iter()
            .filter_map(|call| call.rsplit("call_id=").next())
            .flat_map(|id| log.lines().filter(move |line| line.contains(id)))
            .map(|line| format!("{which}: {line}\n"))
            .collect()
    };
    assert_eq!(
        cold,
        Vec::<String>::new(),
        "no call met a cold container; their lines in the servers' logs:\n{}{}\
         the next server's stderr:\n{}",
        served_by(&first, "first"),
        served_by(&next, "next"),
        next.stderr.text()
    );
    assert_eq!(adopted_by(&next), 4, "{}", next.stderr.text());
    assert_eq!(
        LOADED.map(|name| engine.containers_of_function(&next.pool, name)),
        warm,
        "the same containers serve, none started"
    );
    engine.stop_leaving_nothing(next, &warm.concat());
}
