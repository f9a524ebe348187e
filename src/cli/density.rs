//! `hotpool bench --idle-containers N`: what idle hot containers cost.
//!
//! One function's hot calls are timed with no other container held; then N hot
//! containers of a second function are started (`--concurrency` at a time: each
//! container up is held by a call until all are, so each wave must start its
//! own) and left idle; then, over a quiet window, the CPU the engine (`dockerd`,
//! its `containerd` and a shim per container; on containerd, the `containerd`
//! serving its socket and its shims, one per group of containers) and hotpool
//! spend while nothing happens is measured, and the first function's calls are timed again.
//! hotpool's resident memory before and after, over N, is its memory per hot
//! container.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

use hotpool::driver::{AnyDriver, Driver};
use hotpool::pool::{Function, FunctionSpec, KeepAlive, Pool, Request};

use super::engine_processes::{self, EngineProcesses};

/// Memory limit of each idle container: the least a real function gets.
pub(crate) const IDLE_MEMORY: u64 = 16 << 20;
/// How long each call that holds a container while others start lasts.
const HOLD: Duration = Duration::from_secs(1);
/// The quiet window over which idle CPU is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// How often the pool's status is looked at while containers start.
const POLL: Duration = Duration::from_millis(20);

/// The figures of one density run.
pub(crate) struct Density {
    pub(crate) idle_containers: usize,
    pub(crate) without: (Duration, Duration),
    pub(crate) with: (Duration, Duration),
    pub(crate) rss_kib_per_container: f64,
    /// The engine's whole CPU while idle: its daemons and its shims.
    pub(crate) engine_cpu_idle: f64,
    /// The shims' part of it.
    pub(crate) shim_cpu_idle: f64,
    pub(crate) hotpool_cpu_idle: f64,
    pub(crate) starts_per_s: f64,
}

impl Density {
    pub(crate) fn json(&self) -> serde_json::Value {
        let us = |d: Duration| d.as_micros() as u64;
        let round = |x: f64, places: i32| (x * 10f64.powi(places)).round() / 10f64.powi(places);
        json!({
            "idle_containers": self.idle_containers,
            "p50_us_without": us(self.without.0),
            "p50_us_with": us(self.with.0),
            "p99_us_without": us(self.without.1),
            "p99_us_with": us(self.with.1),
            "rss_kib_per_container": round(self.rss_kib_per_container, 1),
            "engine_cpu_idle": round(self.engine_cpu_idle, 4),
            "shim_cpu_idle": round(self.shim_cpu_idle, 4),
            "hotpool_cpu_idle": round(self.hotpool_cpu_idle, 4),
            "starts_per_s": round(self.starts_per_s, 2),
        })
    }

    pub(crate) fn print(&self) {
        let us = |d: Duration| d.as_micros();
        println!(
            "hotpool bench: {} idle hot containers of {} MiB",
            self.idle_containers,
            IDLE_MEMORY >> 20
        );
        println!(
            "hot call p50 {} µs without, {} µs with ({:.3}x); p99 {} µs without, {} µs with",
            us(self.without.0),
            us(self.with.0),
            self.with.0.as_secs_f64() / self.without.0.as_secs_f64().max(1e-9),
            us(self.without.1),
            us(self.with.1),
        );
        println!(
            "hotpool RSS per container {:.1} KiB; CPU while idle: engine {:.4} cores (its shims {:.4}), hotpool {:.4} cores; started {:.2} containers/s",
            self.rss_kib_per_container,
            self.engine_cpu_idle,
            self.shim_cpu_idle,
            self.hotpool_cpu_idle,
            self.starts_per_s
        );
    }
}

/// Measures `measured`'s hot calls without and with `count` idle containers of
/// `idle` (registered here), started `wave` at a time, on the engine serving
/// `socket` (`None`: its default). `time` times `calls` calls of a function,
/// yielding their p50 and p99.
pub(crate) async fn measure<T, Fut>(
    pool: &Pool<AnyDriver>,
    idle: FunctionSpec,
    count: usize,
    wave: usize,
    socket: Option<&Path>,
    time: T,
) -> Result<Density, String>
where
    T: Fn() -> Fut,
    Fut: Future<Output = Result<(Duration, Duration), String>>,
{
    // Both timed rounds come after an untimed one and a quiet window: without
    // those, the first is the slower one, idle containers or not.
    time().await?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let rss_without = resident_kib()?;
    let without = time().await?;
    let name = idle.name.clone();
    let idle = pool.register(idle);
    let started = Instant::now();
    start_idle(pool, &idle, &name, count, wave).await?;
    let starts_per_s = count as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let EngineProcesses { daemons, shims } =
        engine_processes::of(pool.driver().traits().name, socket);
    let (daemons_before, shims_before, hotpool_before, window) = (
        cpu_of(&daemons),
        cpu_of(&shims),
        super::samples::process_cpu_time(),
        Instant::now(),
    );
    tokio::time::sleep(IDLE_WINDOW).await;
    let seconds = window.elapsed().as_secs_f64();
    let shim_cpu_idle = cpu_of(&shims).saturating_sub(shims_before).as_secs_f64() / seconds;
    let engine_cpu_idle = cpu_of(&daemons)
        .saturating_sub(daemons_before)
        .as_secs_f64()
        / seconds
        + shim_cpu_idle;
    let hotpool_cpu_idle = super::samples::process_cpu_time()
        .saturating_sub(hotpool_before)
        .as_secs_f64()
        / seconds;
    let with = time().await?;
    let rss_with = resident_kib()?;
    Ok(Density {
        idle_containers: count,
        without,
        with,
        rss_kib_per_container: (rss_with as f64 - rss_without as f64) / count.max(1) as f64,
        engine_cpu_idle,
        shim_cpu_idle,
        hotpool_cpu_idle,
        starts_per_s,
    })
}

/// Starts `count` containers of `function`, `wave` at a time, and waits until
/// every one is idle. Each container up is held by a call, sent again as it
/// ends, until all are up: a new wave's calls find none idle and must start
/// their own.
async fn start_idle(
    pool: &Pool<AnyDriver>,
    function: &Function<AnyDriver>,
    name: &str,
    count: usize,
    wave: usize,
) -> Result<(), String> {
    let hold = || function.call(Request::new(format!("!sleep {}", HOLD.as_millis())));
    let mut calls = JoinSet::new();
    loop {
        let (up, starting, busy) = containers_of(pool, name);
        let all_up = up >= count;
        if all_up && starting == 0 && busy == 0 {
            break;
        }
        if !all_up && starting == 0 {
            for _ in 0..wave.min(count - up) {
                calls.spawn(hold());
            }
        }
        while let Some(done) = calls.try_join_next() {
            match done {
                Ok(Ok(_)) if !all_up => {
                    calls.spawn(hold());
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("a call holding an idle container failed: {e}")),
                Err(e) => return Err(format!("a call holding an idle container panicked: {e}")),
            }
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// `function`'s containers that are up (idle or busy), starting, and busy.
fn containers_of(pool: &Pool<AnyDriver>, name: &str) -> (usize, usize, usize) {
    pool.status()
        .functions
        .iter()
        .filter(|f| f.name == name)
        .fold((0, 0, 0), |(up, starting, busy), f| {
            (up + f.idle + f.busy, starting + f.starting, busy + f.busy)
        })
}

/// The spec of the function whose containers stay idle: `hot`'s image and
/// command, [`IDLE_MEMORY`] each, kept for an hour.
pub(crate) fn idle_spec(hot: &FunctionSpec, count: usize) -> FunctionSpec {
    let mut idle = hot.clone();
    idle.name = format!("{}-idle", hot.name);
    idle.memory = IDLE_MEMORY;
    idle.max_concurrency = count;
    idle.max_queue = count;
    idle.keep_alive = KeepAlive::fixed(Duration::from_secs(3600));
    idle
}

/// This process's resident memory, in KiB.
fn resident_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".to_owned())
}

/// The CPU time (user and system) the processes `pids` have used.
fn cpu_of(pids: &[u32]) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command (which may hold spaces) end with ')'.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        })
        .sum();
    Duration::from_secs_f64(ticks as f64 / ticks_per_s)
}
