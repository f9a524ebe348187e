//! Helpers of the take-over tests (`hotpool serve` after a crash, and
//! `hotpool serve --take-over`): which containers a pool and a function have,
//! how many a server took over as it started, and callers that keep calling
//! through a change of server and tally what failed or met a cold container.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::server::{Server, containers_of, docker_ps, eventually};

/// [`containers_of`], sorted.
pub fn sorted_containers_of(pool: &str) -> Vec<String> {
    let mut ids = containers_of(pool);
    ids.sort();
    ids
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The ids of the containers of function `function` in pool `pool`.
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
/// or began after `since` and met no warm container.
pub struct Tally {
    pub done: [AtomicUsize; 2],
    pub failed: Mutex<Vec<String>>,
    pub since: Mutex<Instant>,
    pub cold: AtomicUsize,
}

/// The functions the loaders call, in the order of [`Tally::done`].
pub const LOADED: [&str; 2] = ["echo", "web"];

impl Tally {
    pub fn new() -> Tally {
        Tally {
            done: Default::default(),
            failed: Mutex::default(),
            since: Mutex::new(Instant::now()),
            cold: AtomicUsize::new(0),
        }
    }

    pub fn done(&self) -> [usize; 2] {
        [0, 1].map(|i| self.done[i].load(Ordering::Acquire))
    }

    /// Counts cold calls from now on only.
    pub fn count_cold_from_now(&self) {
        *self.since.lock().unwrap() = Instant::now();
        self.cold.store(0, Ordering::Release);
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
                    if counted && answer.header("hotpool-start") != Some("hot") {
                        tally.cold.fetch_add(1, Ordering::AcqRel);
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
