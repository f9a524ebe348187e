//! `hotpool bench`: what the pool costs over the engine's own floor, in one run.
//!
//! Four modes, measured side by side in alternating rounds so that drift on a
//! shared machine hits them alike:
//!
//! - `floor_hot`: round trips over the pipes of hot containers, no pool;
//! - `hot`: calls through the pool to hot containers;
//! - `cold`: calls through the pool to a cold function (`format = "cold"`: a
//!   container per call);
//! - `floor_cold`: a container per call, run to its end, no pool.
//!
//! With `--transport direct`, four more: `floor_direct` and `direct`, the same
//! as `floor_hot` and `hot` over the direct transport's pipes; and
//! `exited_attach` and `exited_direct`, calls whose function exits on reading
//! them (`--exit-body`), answered with the typed `exited` error: their latency
//! less a hot call's is how long the death verdict takes.
//!
//! These four use the engine's attach streams; on an engine without them
//! (containerd) only the direct modes run, and `cold` and `floor_cold` feed their
//! containers over the direct transport's pipes. There the bench also measures
//! the warm tier (`warm.rs`): a created task's start against a cold start, and
//! what a created task holds. The floors' containers are the
//! pool's (`floor.rs`): the same driver task
//! ([`FunctionSpec::task`], hardening included) run by the same [`AnyDriver`],
//! and their calls are framed by the pool's own format code. What the pool adds
//! over them (scheduling, the check for unsolicited output, per-call stats) is
//! what the ratios measure.
//!
//! It prints p50, p99, calls per second and hotpool's CPU time per call for
//! each, and the ratios hot/floor_hot and cold/floor_cold (and the direct ones),
//! each beside its target where the target applies: at the concurrency it is set
//! for, and with calls enough per mode to hold a p50 against it ([`TARGETS`]);
//! on a VM whose idle vCPUs halt at once, a note that the direct modes' round
//! trips wait on the host there; `--json` prints one JSON object instead.
//!
//! Its containers carry the pool name `--pool`, which the bench claims on the
//! engine before it removes anything labelled with it, and holds until its
//! last sweep is done: a second bench with the same `--pool` exits 2 at once,
//! naming the first, and touches none of its containers.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::future::try_join_all;

use super::density;
use super::floor::{FloorContainer, floor_cold_call};
use super::samples::{Samples, timed};
use super::warm::Warm;
use crate::units::MAX_TIMEOUT;
use hotpool::driver::{AnyDriver, ClaimError, Driver, Transport};
use hotpool::error::CallError;
use hotpool::pool::{
    BuildError, Format, Function, FunctionSpec, KeepAlive, Lifecycle, POOL_LABEL, Pool, Request,
};

/// Memory limit of every bench container.
const MEMORY: u64 = 64 << 20;
/// Hot calls per mode in one round: rounds alternate the modes, so short ones
/// spread the machine's noise evenly over them.
const HOT_CALLS_PER_ROUND: usize = 50;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    engine: super::engine::EngineArgs,
    /// The image to run.
    #[arg(long)]
    image: String,
    /// The hot format to measure: line or http.
    #[arg(long, default_value = "line", value_parser = parse_hot_format)]
    format: Format,
    /// Hot calls per mode.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Cold calls per mode.
    #[arg(long, default_value_t = 40)]
    cold_calls: usize,
    /// Calls in flight at once (and hot containers).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Request body size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Command of the cold containers; the hot command by default.
    #[arg(long, num_args = 1.., value_name = "ARG")]
    cold_cmd: Option<Vec<String>>,
    /// Also measure the direct transport (`direct`), beside the engine's
    /// attach streams (an engine without them is measured direct alone).
    #[arg(long, default_value = "attach")]
    transport: Transport,
    /// The body that makes the function exit, for the `exited` modes.
    #[arg(long, default_value = "!exit 3")]
    exit_body: String,
    /// Instead of the modes: the hot calls of one function without and with
    /// this many idle hot containers of another held (started `--concurrency`
    /// at a time), and what those cost while idle.
    #[arg(long, value_name = "N")]
    idle_containers: Option<usize>,
    /// The pool name its containers are labelled with (`hotpool.pool`), owned
    /// by one bench (or server) at a time: two benches at once need two names.
    #[arg(long, default_value = "bench")]
    pool: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Command and arguments of the hot containers; the image's default when empty.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_hot_format(text: &str) -> Result<Format, String> {
    match text.parse()? {
        Lifecycle::Hot(format) => Ok(format),
        Lifecycle::Cold => {
            Err("bench measures a hot format (line or http); cold is measured too".into())
        }
    }
}

/// Runs the bench; returns the exit status: 2 for bad arguments or a pool
/// name another process owns.
pub(crate) async fn bench(args: BenchArgs) -> i32 {
    if args.concurrency == 0 || args.calls == 0 {
        eprintln!("hotpool bench: --calls and --concurrency must be at least 1");
        return 2;
    }
    let driver = match AnyDriver::connect(&args.engine.choice()).await {
        Ok(driver) => driver,
        Err(error) => {
            eprintln!("hotpool bench: {error}");
            return 1;
        }
    };
    let idle = args.idle_containers.unwrap_or(0) as u64;
    let built = Pool::builder(driver)
        .name(&args.pool)
        .memory_budget(MEMORY * (4 * args.concurrency as u64 + 4) + density::IDLE_MEMORY * idle)
        // A bench leaves nothing: its stop removes every container, however
        // long a thousand take.
        .removal_timeout(MAX_TIMEOUT)
        .build()
        .await;
    let pool = match built {
        Ok(pool) => pool,
        Err(error @ BuildError::Claim(ClaimError::Owned { .. })) => {
            eprintln!("hotpool bench: {error}");
            return 2;
        }
        Err(error) => {
            eprintln!("hotpool bench: {error}");
            return 1;
        }
    };
    match run(&args, &pool).await {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("hotpool bench: {message}");
            1
        }
    }
}

/// Measures on `pool`, then removes every container labelled with its name:
/// its own, and the floors' it did not start. The pool, and its claim of the
/// name, outlive that last sweep.
async fn run(args: &BenchArgs, pool: &Pool<AnyDriver>) -> Result<(), String> {
    let measuring = async {
        match args.idle_containers {
            Some(count) => measure_density(args, pool, count).await.map(Ok),
            None => measure(args, pool).await.map(Err),
        }
    };
    // Interrupted, the bench still removes every container it started.
    let result = tokio::select! {
        result = measuring => result,
        () = super::stop_signal() => Err("interrupted; its containers are removed".to_owned()),
    };
    pool.shutdown().await;
    let leftovers = pool.driver().remove_labelled(POOL_LABEL, &args.pool).await;
    let measured = result?;
    leftovers.map_err(|e| e.to_string())?;
    match measured {
        Ok(density) if args.json => println!("{}", density.json()),
        Ok(density) => density.print(),
        Err((modes, warm)) => report(args, &modes, &warm),
    }
    Ok(())
}

/// The hot calls of one function (at concurrency 1) without and with
/// `count` idle containers of another.
async fn measure_density(
    args: &BenchArgs,
    pool: &Pool<AnyDriver>,
    count: usize,
) -> Result<density::Density, String> {
    let body = vec![b'x'; args.payload];
    let transport = transport_on(pool, args.transport);
    let hot = spec(args, args.format.into(), args.command.clone(), transport);
    let function = pool.register(hot.clone());
    through_pool(&function, &body).await?;
    let time = || async {
        let mut samples = Samples::default();
        timed(
            &mut samples,
            workers(1, args.calls, || through_pool(&function, &body)),
        )
        .await?;
        Ok(samples.p50_p99())
    };
    let idle = density::idle_spec(&hot, count);
    let socket = args.engine.choice().socket;
    density::measure(pool, idle, count, args.concurrency, socket.as_deref(), time).await
}

/// The modes' samples, and the warm tier's figures.
async fn measure(
    args: &BenchArgs,
    pool: &Pool<AnyDriver>,
) -> Result<(HashMap<&'static str, Samples>, Warm), String> {
    let body = vec![b'x'; args.payload];
    let max_response = pool.config().max_response_bytes;
    // An engine without attach streams (containerd) has the direct modes alone.
    let attach = pool.driver().traits().attach;
    let direct = args.transport == Transport::Direct || !attach;
    let hot = spec(
        args,
        args.format.into(),
        args.command.clone(),
        Transport::Attach,
    );
    let cold = spec(
        args,
        Lifecycle::Cold,
        args.cold_cmd
            .clone()
            .unwrap_or_else(|| args.command.clone()),
        transport_on(pool, Transport::Attach),
    );
    let request = Request::new(body.clone());
    let mut hot_direct = hot.clone();
    hot_direct.name = format!("{}-direct", hot.name);
    hot_direct.transport = Transport::Direct;

    // Warm up: the pool's containers and the floor's, and the image's pages. On
    // an error, the floor's containers go with their cookies and the label sweep.
    let floor_specs = [("floor_hot", attach.then_some(&hot))]
        .into_iter()
        .chain([("floor_direct", direct.then_some(&hot_direct))]);
    let mut floors = Vec::new();
    for (mode, spec) in floor_specs {
        let Some(spec) = spec else { continue };
        let containers = try_join_all(
            (0..args.concurrency).map(|_| FloorContainer::start(pool, spec, max_response)),
        )
        .await?;
        floors.push((mode, containers));
    }
    let hot_function = attach.then(|| pool.register(hot.clone()));
    let cold_function = pool.register(cold.clone());
    let direct_function = direct.then(|| pool.register(hot_direct.clone()));
    for function in hot_function.iter().chain(&direct_function) {
        let warm = (0..args.concurrency).map(|_| function.call(Request::new(body.clone())));
        try_join_all(warm)
            .await
            .map_err(|e| format!("a hot call failed: {e}"))?;
    }
    for container in floors.iter_mut().flat_map(|(_, containers)| containers) {
        container.round_trip(&request).await?;
    }
    let exiting: Vec<(&'static str, Function<AnyDriver>)> = if direct {
        [("exited_attach", &hot), ("exited_direct", &hot_direct)]
            .into_iter()
            .filter(|(mode, _)| attach || *mode == "exited_direct")
            .map(|(mode, spec)| {
                let mut exiting = spec.clone();
                exiting.name = format!("{}-exits", spec.name);
                exiting.max_concurrency = 1;
                (mode, pool.register(exiting))
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut modes: HashMap<&'static str, Samples> = HashMap::new();
    let mut warm = Warm::new(pool, args.cold_calls);
    let rounds = args.calls.div_ceil(HOT_CALLS_PER_ROUND);
    for round in 0..rounds {
        let hot_calls = share(args.calls, round, rounds);
        let cold_calls = share(args.cold_calls, round, rounds);
        for (mode, floor) in &mut floors {
            timed(
                modes.entry(mode).or_default(),
                floor_round(floor, hot_calls, &request),
            )
            .await?;
        }
        let pool_modes = [
            ("hot", hot_function.as_ref()),
            ("direct", direct_function.as_ref()),
        ];
        for (mode, function) in pool_modes {
            let Some(function) = function else { continue };
            timed(
                modes.entry(mode).or_default(),
                workers(args.concurrency, hot_calls, || {
                    through_pool(function, &body)
                }),
            )
            .await?;
        }
        for (mode, function) in &exiting {
            timed(
                modes.entry(mode).or_default(),
                exit_calls(function, cold_calls, &body, args.exit_body.as_bytes()),
            )
            .await?;
        }
        // Each cold call comes once the last one's container is removed, as
        // calls spaced apart do (floor_cold's calls wait for that anyway).
        timed(
            modes.entry("cold").or_default(),
            workers_settling(
                args.concurrency,
                cold_calls,
                || through_pool(&cold_function, &body),
                || removed(pool, &cold_function),
            ),
        )
        .await?;
        timed(
            modes.entry("floor_cold").or_default(),
            workers(args.concurrency, cold_calls, || {
                floor_cold_call(pool, &cold, &body)
            }),
        )
        .await?;
        // The warm tier is containerd's, whose hot containers are direct ones.
        if let Some((_, idle)) = floors.iter().find(|(mode, _)| *mode == "floor_direct") {
            warm.round(pool, &hot_direct, cold_calls, &request, idle)
                .await?;
        }
    }
    for container in floors.into_iter().flat_map(|(_, containers)| containers) {
        container.close().await;
    }
    Ok((modes, warm))
}

/// `calls` round trips spread over the floor's containers.
async fn floor_round(
    floor: &mut [FloorContainer],
    calls: usize,
    request: &Request,
) -> Result<Vec<Vec<Duration>>, String> {
    let per_worker = split(calls, floor.len());
    let workers = floor
        .iter_mut()
        .zip(per_worker)
        .map(|(container, calls)| async move {
            let mut latencies = Vec::with_capacity(calls);
            for _ in 0..calls {
                let start = Instant::now();
                container.round_trip(request).await?;
                latencies.push(start.elapsed());
            }
            Ok::<_, String>(latencies)
        });
    try_join_all(workers).await
}

/// `calls` calls that make the function exit, each to a container that one
/// untimed call started; their latencies until the `exited` answer.
async fn exit_calls(
    function: &Function<AnyDriver>,
    calls: usize,
    body: &[u8],
    exit_body: &[u8],
) -> Result<Vec<Vec<Duration>>, String> {
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        through_pool(function, body).await?;
        let start = Instant::now();
        match function.call(Request::new(exit_body.to_vec())).await {
            Err(CallError::Exited { .. }) => latencies.push(start.elapsed()),
            Ok(_) => {
                return Err(format!(
                    "the function answered {:?} instead of exiting: give --exit-body",
                    String::from_utf8_lossy(exit_body)
                ));
            }
            Err(e) => return Err(format!("an exiting call failed otherwise: {e}")),
        }
    }
    Ok(vec![latencies])
}

/// One call through the pool.
async fn through_pool(function: &Function<AnyDriver>, body: &[u8]) -> Result<(), String> {
    let request = Request::new(body.to_vec());
    match function.call(request).await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("a {} call failed: {e}", function.name())),
    }
}

/// The calls of round `round` when `total` are split over `rounds`.
fn share(total: usize, round: usize, rounds: usize) -> usize {
    total / rounds + usize::from(round < total % rounds)
}

/// `total` split over `workers`.
fn split(total: usize, workers: usize) -> Vec<usize> {
    (0..workers)
        .map(|w| total / workers + usize::from(w < total % workers))
        .collect()
}

/// Runs `calls` calls made by `call`, `concurrency` at a time; their latencies.
async fn workers<F, Fut>(
    concurrency: usize,
    calls: usize,
    call: F,
) -> Result<Vec<Vec<Duration>>, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    workers_settling(concurrency, calls, call, || async {}).await
}

/// As [`workers`], each worker awaiting `settle`, untimed, after each call.
async fn workers_settling<F, Fut, S, SettleFut>(
    concurrency: usize,
    calls: usize,
    call: F,
    settle: S,
) -> Result<Vec<Vec<Duration>>, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
    S: Fn() -> SettleFut,
    SettleFut: Future<Output = ()>,
{
    let per_worker = split(calls, concurrency);
    try_join_all(per_worker.into_iter().map(|calls| {
        let (call, settle) = (&call, &settle);
        async move {
            let mut latencies = Vec::with_capacity(calls);
            for _ in 0..calls {
                let start = Instant::now();
                call().await?;
                latencies.push(start.elapsed());
                settle().await;
            }
            Ok(latencies)
        }
    }))
    .await
}

/// Waits until `function` has no container (a minute at most: a removal has
/// deadlines of its own): its cold calls' containers are removed after their
/// answers, and a call that comes meanwhile waits for a slot or shares the
/// engine with the removal.
async fn removed(pool: &Pool<AnyDriver>, function: &Function<AnyDriver>) {
    const PATIENCE: Duration = Duration::from_secs(60);
    let containers = || {
        pool.status()
            .functions
            .iter()
            .filter(|status| status.name == function.name())
            .map(|status| status.busy + status.idle + status.starting)
            .sum::<usize>()
    };
    let since = Instant::now();
    while containers() > 0 && since.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `wanted`, or the direct transport where the pool's engine has no attach
/// streams (containerd).
fn transport_on(pool: &Pool<AnyDriver>, wanted: Transport) -> Transport {
    if pool.driver().traits().attach {
        wanted
    } else {
        Transport::Direct
    }
}

fn spec(
    args: &BenchArgs,
    lifecycle: Lifecycle,
    cmd: Vec<String>,
    transport: Transport,
) -> FunctionSpec {
    let mut spec = FunctionSpec::new(format!("bench-{lifecycle}"), args.image.clone());
    spec.lifecycle = lifecycle;
    spec.cmd = cmd;
    spec.memory = MEMORY;
    spec.max_concurrency = args.concurrency;
    spec.max_queue = args.concurrency * 4;
    spec.queue_timeout = Duration::from_secs(60);
    spec.timeout = Duration::from_secs(60);
    spec.keep_alive = KeepAlive::fixed(Duration::from_secs(600));
    spec.transport = transport;
    spec
}

/// What a ratio compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// The p50 latencies, mode over baseline: lower is better.
    P50,
    /// The calls a second, mode over baseline: higher is better.
    Throughput,
}

/// A ratio the bench prints, and the target it is held against.
struct Target {
    /// The mode and its baseline.
    of: (&'static str, &'static str),
    measure: Measure,
    /// `<= 1.15` or `>= 2`.
    bound: &'static str,
    /// The concurrency the target is set for; `None`: any.
    concurrency: Option<usize>,
    /// The fewest calls per mode that make the ratio worth holding against the
    /// target: with fewer, one slow call moves a p50 by more than the margin.
    min_calls: usize,
}

/// The project's targets (README, Benchmarks).
const TARGETS: [Target; 6] = [
    Target {
        of: ("hot", "floor_hot"),
        measure: Measure::P50,
        bound: "<= 1.15",
        concurrency: Some(1),
        min_calls: 1000,
    },
    Target {
        of: ("hot", "floor_hot"),
        measure: Measure::Throughput,
        bound: ">= 0.85",
        concurrency: Some(4),
        min_calls: 1000,
    },
    Target {
        of: ("cold", "floor_cold"),
        measure: Measure::P50,
        bound: "<= 1.10",
        concurrency: None,
        min_calls: 20,
    },
    Target {
        of: ("direct", "floor_direct"),
        measure: Measure::P50,
        bound: "<= 1.2",
        concurrency: Some(1),
        min_calls: 1000,
    },
    Target {
        of: ("direct", "floor_hot"),
        measure: Measure::P50,
        bound: "<= 0.5",
        concurrency: None,
        min_calls: 1000,
    },
    Target {
        of: ("direct", "hot"),
        measure: Measure::Throughput,
        bound: ">= 2",
        concurrency: Some(4),
        min_calls: 1000,
    },
];

impl Target {
    /// One line of the report: the ratio, and its target where one applies to
    /// this run (its concurrency, and calls enough to hold the ratio against it).
    fn line(&self, value: Option<f64>, calls: Option<usize>, concurrency: usize) -> String {
        let measure = match self.measure {
            Measure::P50 => "p50",
            Measure::Throughput => "throughput",
        };
        let name = format!("{}/{} {measure}", self.of.0, self.of.1);
        let Some(value) = value else {
            return format!("{name:<28} n/a");
        };
        let verdict = match (self.concurrency, calls) {
            (Some(wanted), _) if wanted != concurrency => {
                format!("(no target at concurrency {concurrency}; its target is at {wanted})")
            }
            (_, Some(calls)) if calls < self.min_calls => format!(
                "(target {}, but {calls} calls per mode are too few to hold against it: {} or more)",
                self.bound, self.min_calls
            ),
            _ => format!("(target {})", self.bound),
        };
        format!("{name:<28} {value:.3} {verdict}")
    }
}

fn report(args: &BenchArgs, modes: &HashMap<&'static str, Samples>, warm: &Warm) {
    let all = [
        "floor_hot",
        "hot",
        "floor_direct",
        "direct",
        "cold",
        "floor_cold",
        "exited_attach",
        "exited_direct",
    ];
    // A mode that made no calls (`--cold-calls 0`) is left out.
    let order: Vec<&str> = all
        .into_iter()
        .filter(|m| modes.get(m).is_some_and(|s| !s.latencies.is_empty()))
        .collect();
    if args.json {
        let mut object: serde_json::Map<String, serde_json::Value> = order
            .iter()
            .map(|m| (m.to_string(), modes[m].json()))
            .collect();
        object.insert("warm".to_owned(), warm.json());
        println!("{}", serde_json::Value::Object(object));
        return;
    }
    println!(
        "hotpool bench: {}, format {}, {} hot and {} cold calls per mode, concurrency {}, payload {} B",
        args.image, args.format, args.calls, args.cold_calls, args.concurrency, args.payload
    );
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>14}",
        "mode", "p50", "p99", "calls/s", "cpu/call"
    );
    for &mode in &order {
        let samples = &modes[mode];
        println!(
            "{mode:<12} {:>9} µs {:>9} µs {:>12.1} {:>11.1} µs",
            samples.percentile(50).as_micros(),
            samples.percentile(99).as_micros(),
            samples.calls_per_s(),
            samples.cpu_us_per_call()
        );
    }
    let measured = |mode: &str| order.contains(&mode).then(|| &modes[mode]);
    let p50 = |s: &Samples| s.percentile(50).as_secs_f64();
    println!("ratios:");
    for target in TARGETS {
        if target.of.0 == "direct" && measured("direct").is_none() {
            continue;
        }
        let value = measured(target.of.0)
            .zip(measured(target.of.1))
            .map(|(a, b)| match target.measure {
                Measure::P50 => p50(a) / p50(b),
                Measure::Throughput => a.calls_per_s() / b.calls_per_s(),
            });
        let calls = [target.of.0, target.of.1]
            .iter()
            .filter_map(|mode| measured(mode).map(|s| s.latencies.len()))
            .min();
        println!("  {}", target.line(value, calls, args.concurrency));
    }
    if measured("direct").is_some()
        && let Some(note) = halting_vcpus_note(Path::new("/sys"))
    {
        println!("{note}");
    }
    let verdict = |exited: &str, hot: &str| {
        measured(exited)
            .zip(measured(hot))
            .map(|(exited, hot)| (p50(exited) - p50(hot)) * 1e6)
    };
    if let (Some(attach), Some(direct)) = (
        verdict("exited_attach", "hot"),
        verdict("exited_direct", "direct"),
    ) {
        println!(
            "the exited verdict, p50 from the exit to the answer (an exiting call less a hot call): attach {attach:.0} µs, direct {direct:.0} µs",
        );
    }
    warm.print();
}

/// A note for a virtual machine whose idle vCPUs halt at once: the
/// `haltpoll` cpuidle driver with guest halt polling off
/// (`guest_halt_poll_ns` 0). There a function blocked between two calls lets
/// its vCPU halt, and the next request waits for the host to wake it: tens of
/// microseconds that come and go with the machine's load and with how long
/// the caller took between calls, so the direct modes' microsecond round trips
/// measure the host more than hotpool. `None` elsewhere (`sys` is sysfs).
fn halting_vcpus_note(sys: &Path) -> Option<String> {
    let read = |path: &str| std::fs::read_to_string(sys.join(path)).ok();
    let driver = read("devices/system/cpu/cpuidle/current_driver")?;
    let poll_ns = read("module/haltpoll/parameters/guest_halt_poll_ns")?;
    (driver.trim() == "haltpoll" && poll_ns.trim() == "0").then(|| {
        "note: this VM's idle vCPUs halt at once (cpuidle haltpoll, guest_halt_poll_ns 0): \
         the direct round trips above wait for the host to wake a vCPU, which the \
         pool's few microseconds between calls can turn into tens; to measure \
         hotpool rather than that, run with guest halt polling on \
         (echo 200000 > /sys/module/haltpoll/parameters/guest_halt_poll_ns, as root)"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_on_halting_vcpus_shows_only_where_they_halt_at_once() {
        let sys = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = sys.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        assert_eq!(halting_vcpus_note(sys.path()), None, "no cpuidle at all");
        write("devices/system/cpu/cpuidle/current_driver", "haltpoll\n");
        assert_eq!(halting_vcpus_note(sys.path()), None, "no haltpoll module");
        write("module/haltpoll/parameters/guest_halt_poll_ns", "0\n");
        let note = halting_vcpus_note(sys.path()).expect("haltpoll, polling off");
        assert!(note.contains("guest_halt_poll_ns"), "{note}");
        write("module/haltpoll/parameters/guest_halt_poll_ns", "200000\n");
        assert_eq!(halting_vcpus_note(sys.path()), None, "polling on");
        write("module/haltpoll/parameters/guest_halt_poll_ns", "0\n");
        write("devices/system/cpu/cpuidle/current_driver", "acpi_idle\n");
        assert_eq!(halting_vcpus_note(sys.path()), None, "bare metal's driver");
    }

    fn target(of: (&'static str, &'static str)) -> &'static Target {
        TARGETS
            .iter()
            .find(|t| t.of == of && t.measure == Measure::P50)
            .unwrap()
    }

    #[test]
    fn a_target_shows_at_its_own_concurrency_with_calls_enough() {
        let line = target(("hot", "floor_hot")).line(Some(1.083), Some(2000), 1);
        assert!(line.ends_with("1.083 (target <= 1.15)"), "{line}");
    }

    #[test]
    fn no_target_at_another_concurrency() {
        let line = target(("hot", "floor_hot")).line(Some(1.3), Some(2000), 4);
        assert!(line.contains("1.300"), "{line}");
        assert!(!line.contains("target <="), "{line}");
        assert!(line.contains("no target at concurrency 4"), "{line}");
    }

    #[test]
    fn a_small_sample_says_it_is_too_small() {
        let line = target(("hot", "floor_hot")).line(Some(1.5), Some(40), 1);
        assert!(line.contains("40 calls per mode are too few"), "{line}");
        let cold = target(("cold", "floor_cold")).line(Some(1.01), Some(40), 8);
        assert!(
            cold.ends_with("(target <= 1.10)"),
            "any concurrency: {cold}"
        );
    }

    #[test]
    fn a_ratio_without_both_modes_is_n_a() {
        let line = target(("cold", "floor_cold")).line(None, None, 1);
        assert!(line.ends_with(" n/a"), "{line}");
    }
}
