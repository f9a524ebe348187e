//! `hotpool bench`: what the pool costs over the engine's own floor, in one run.
//!
//! Four modes, measured side by side in alternating rounds so that drift on a
//! shared machine hits them alike:
//!
//! - `floor_hot`: raw round trips through the engine's attach pipes to plain
//!   containers of the image (bollard, no pool);
//! - `hot`: calls through the pool to hot containers;
//! - `cold`: calls through the pool in the `cold` format (a container per call);
//! - `floor_cold`: create + attach + start + write + wait + remove by hand.
//!
//! It prints p50, p99 and calls per second for each, and the ratios hot/floor_hot
//! and cold/floor_cold; `--json` prints one JSON object instead.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bytes::{Buf, BytesMut};
use clap::Args;
use futures_util::future::try_join_all;
use futures_util::{Stream, StreamExt};
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use hotpool::driver::Driver;
use hotpool::driver::docker::{DockerDriver, DockerOptions, LABEL};
use hotpool::pool::{Format, Function, FunctionSpec, KeepAlive, POOL_LABEL, Pool, Request};

/// The pool name of the bench's containers (pool and floor alike).
const BENCH_POOL: &str = "bench";
/// Memory limit of every bench container.
const MEMORY: i64 = 64 << 20;
/// Hot calls per mode in one round: rounds alternate the modes, so short ones
/// spread the machine's noise evenly over them.
const HOT_CALLS_PER_ROUND: usize = 50;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
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
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Command and arguments of the hot containers; the image's default when empty.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_hot_format(text: &str) -> Result<Format, String> {
    match text.parse()? {
        Format::Cold => {
            Err("bench measures a hot format (line or http); cold is measured too".into())
        }
        hot => Ok(hot),
    }
}

/// Latencies of one mode and the time its calls took.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Samples {
    fn percentile(&self, p: usize) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }

    fn calls_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "p50_us": self.percentile(50).as_micros(),
            "p99_us": self.percentile(99).as_micros(),
            "calls_per_s": (self.calls_per_s() * 10.0).round() / 10.0,
        })
    }
}

/// Runs the bench; returns the exit status.
pub(crate) async fn bench(args: BenchArgs) -> i32 {
    if args.concurrency == 0 || args.calls == 0 {
        eprintln!("hotpool bench: --calls and --concurrency must be at least 1");
        return 2;
    }
    match run(&args).await {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("hotpool bench: {message}");
            1
        }
    }
}

async fn run(args: &BenchArgs) -> Result<(), String> {
    let driver = DockerDriver::connect(DockerOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let docker = driver.docker().clone();
    let pool = Pool::builder(driver.clone())
        .name(BENCH_POOL)
        .memory_budget(MEMORY as u64 * (2 * args.concurrency as u64 + 2))
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let result = measure(args, &docker, &pool).await;
    pool.shutdown().await;
    let leftovers = driver.remove_labelled(POOL_LABEL, BENCH_POOL).await;
    let modes = result?;
    leftovers.map_err(|e| e.to_string())?;
    report(args, &modes);
    Ok(())
}

async fn measure(
    args: &BenchArgs,
    docker: &Docker,
    pool: &Pool<DockerDriver>,
) -> Result<HashMap<&'static str, Samples>, String> {
    let body = vec![b'x'; args.payload];
    let hot = spec(args, args.format, args.command.clone());
    let cold_cmd = args
        .cold_cmd
        .clone()
        .unwrap_or_else(|| args.command.clone());
    let cold = spec(args, Format::Cold, cold_cmd.clone());
    let request = floor_request(args.format, &body);
    let (hot, cold) = (pool.register(hot), pool.register(cold));

    // Warm up: the pool's containers and the floor's, and the image's pages.
    let mut raw =
        try_join_all((0..args.concurrency).map(|_| RawContainer::start(docker, args))).await?;
    let warm = (0..args.concurrency).map(|_| hot.call(Request::new(body.clone())));
    try_join_all(warm)
        .await
        .map_err(|e| format!("a hot call failed: {e}"))?;
    for container in &mut raw {
        container.round_trip(&request, args.format).await?;
    }

    let mut modes: HashMap<&'static str, Samples> = HashMap::new();
    let rounds = args.calls.div_ceil(HOT_CALLS_PER_ROUND);
    for round in 0..rounds {
        let hot_calls = share(args.calls, round, rounds);
        let cold_calls = share(args.cold_calls, round, rounds);
        timed(modes.entry("floor_hot").or_default(), async {
            let per_worker = split(hot_calls, raw.len());
            let (request, format) = (&request, args.format);
            let workers = raw
                .iter_mut()
                .zip(per_worker)
                .map(|(container, calls)| async move {
                    let mut latencies = Vec::with_capacity(calls);
                    for _ in 0..calls {
                        let start = Instant::now();
                        container.round_trip(request, format).await?;
                        latencies.push(start.elapsed());
                    }
                    Ok::<_, String>(latencies)
                });
            try_join_all(workers).await
        })
        .await?;
        timed(
            modes.entry("hot").or_default(),
            workers(args.concurrency, hot_calls, || through_pool(&hot, &body)),
        )
        .await?;
        timed(
            modes.entry("cold").or_default(),
            workers(args.concurrency, cold_calls, || through_pool(&cold, &body)),
        )
        .await?;
        timed(
            modes.entry("floor_cold").or_default(),
            workers(args.concurrency, cold_calls, || {
                raw_cold_call(docker, args, &cold_cmd, &body)
            }),
        )
        .await?;
    }
    for container in raw {
        container.remove(docker).await;
    }
    Ok(modes)
}

/// One call through the pool.
async fn through_pool(function: &Function<DockerDriver>, body: &[u8]) -> Result<(), String> {
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
    let per_worker = split(calls, concurrency);
    try_join_all(per_worker.into_iter().map(|calls| {
        let call = &call;
        async move {
            let mut latencies = Vec::with_capacity(calls);
            for _ in 0..calls {
                let start = Instant::now();
                call().await?;
                latencies.push(start.elapsed());
            }
            Ok(latencies)
        }
    }))
    .await
}

/// Adds one mode's round to its samples.
async fn timed(
    samples: &mut Samples,
    round: impl Future<Output = Result<Vec<Vec<Duration>>, String>>,
) -> Result<(), String> {
    let start = Instant::now();
    let latencies = round.await?;
    samples.elapsed += start.elapsed();
    samples.latencies.extend(latencies.into_iter().flatten());
    Ok(())
}

fn spec(args: &BenchArgs, format: Format, cmd: Vec<String>) -> FunctionSpec {
    let mut spec = FunctionSpec::new(format!("bench-{format}"), args.image.clone());
    spec.format = format;
    spec.cmd = cmd;
    spec.memory = MEMORY as u64;
    spec.max_concurrency = args.concurrency;
    spec.max_queue = args.concurrency * 4;
    spec.queue_timeout = Duration::from_secs(60);
    spec.timeout = Duration::from_secs(60);
    spec.keep_alive = KeepAlive::fixed(Duration::from_secs(600));
    spec
}

/// The bytes the pool would write for one call.
fn floor_request(format: Format, body: &[u8]) -> Vec<u8> {
    let mut request = match format {
        Format::Http => format!(
            "POST / HTTP/1.1\r\nHost: hotpool\r\nContent-Length: {}\r\nHotpool-Call-Id: 0123456789abcdef\r\nHotpool-Deadline: {}\r\n\r\n",
            body.len(),
            humantime::format_rfc3339_millis(SystemTime::now())
        )
        .into_bytes(),
        _ => Vec::new(),
    };
    request.extend_from_slice(body);
    if format == Format::Line {
        request.push(b'\n');
    }
    request
}

fn container_config(args: &BenchArgs, cmd: &[String]) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(args.image.clone()),
        cmd: (!cmd.is_empty()).then(|| cmd.to_vec()),
        labels: Some(HashMap::from([
            (LABEL.to_owned(), "1".to_owned()),
            (POOL_LABEL.to_owned(), BENCH_POOL.to_owned()),
            ("hotpool.function".to_owned(), "bench-floor".to_owned()),
        ])),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        host_config: Some(HostConfig {
            memory: Some(MEMORY),
            memory_swap: Some(MEMORY),
            network_mode: Some("none".into()),
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

type Frames =
    std::pin::Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// A plain container spoken to through the raw attach stream.
struct RawContainer {
    id: String,
    input: std::pin::Pin<Box<dyn AsyncWrite + Send>>,
    output: Frames,
    received: BytesMut,
}

impl RawContainer {
    async fn start(docker: &Docker, args: &BenchArgs) -> Result<RawContainer, String> {
        let (id, attached) = create_attached(docker, args, &args.command).await?;
        Ok(RawContainer {
            id,
            input: attached.input,
            output: attached.output,
            received: BytesMut::new(),
        })
    }

    /// Writes one request and reads frames until one whole response is in.
    async fn round_trip(&mut self, request: &[u8], format: Format) -> Result<(), String> {
        self.input
            .write_all(request)
            .await
            .map_err(|e| e.to_string())?;
        self.input.flush().await.map_err(|e| e.to_string())?;
        loop {
            if let Some(length) = complete_response(&self.received, format)? {
                self.received.advance(length);
                return Ok(());
            }
            match self.output.next().await {
                Some(Ok(LogOutput::StdOut { message })) => {
                    self.received.extend_from_slice(&message)
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("the attach stream failed: {e}")),
                None => return Err("the floor container's stdout ended".into()),
            }
        }
    }

    async fn remove(self, docker: &Docker) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(&self.id, Some(options)).await;
    }
}

/// The length of the first whole response in `received`, if there is one.
fn complete_response(received: &[u8], format: Format) -> Result<Option<usize>, String> {
    if format == Format::Line {
        return Ok(received.iter().position(|b| *b == b'\n').map(|end| end + 1));
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(received) {
        Ok(httparse::Status::Complete(head)) => {
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .ok_or("the floor response has no Content-Length")?;
            Ok((received.len() >= head + length).then_some(head + length))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("the floor response is not HTTP: {e}")),
    }
}

/// Creates a plain container running `cmd`, attaches to all its pipes and starts
/// it: what the driver does, by hand.
async fn create_attached(
    docker: &Docker,
    args: &BenchArgs,
    cmd: &[String],
) -> Result<(String, AttachContainerResults), String> {
    let engine = |e: bollard::errors::Error| format!("the engine failed: {e}");
    let created = docker
        .create_container(None, container_config(args, cmd))
        .await
        .map_err(engine)?;
    let attach = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .build();
    let attached = docker
        .attach_container(&created.id, Some(attach))
        .await
        .map_err(engine)?;
    docker
        .start_container(&created.id, None)
        .await
        .map_err(engine)?;
    Ok((created.id, attached))
}

/// One cold call by hand: create, attach, start, write, read to EOF, wait, remove.
async fn raw_cold_call(
    docker: &Docker,
    args: &BenchArgs,
    cmd: &[String],
    body: &[u8],
) -> Result<(), String> {
    let engine = |e: bollard::errors::Error| format!("the engine failed: {e}");
    let (id, mut attached) = create_attached(docker, args, cmd).await?;
    let mut input = body.to_vec();
    input.push(b'\n');
    attached
        .input
        .write_all(&input)
        .await
        .map_err(|e| e.to_string())?;
    attached.input.shutdown().await.map_err(|e| e.to_string())?;
    while let Some(frame) = attached.output.next().await {
        frame.map_err(engine)?;
    }
    let wait = WaitContainerOptionsBuilder::default()
        .condition("not-running")
        .build();
    let _ = docker.wait_container(&id, Some(wait)).next().await;
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    docker
        .remove_container(&id, Some(options))
        .await
        .map_err(engine)
}

fn report(args: &BenchArgs, modes: &HashMap<&'static str, Samples>) {
    let order = ["floor_hot", "hot", "cold", "floor_cold"];
    if args.json {
        let object: serde_json::Map<String, serde_json::Value> = order
            .iter()
            .map(|m| (m.to_string(), modes[m].json()))
            .collect();
        println!("{}", serde_json::Value::Object(object));
        return;
    }
    println!(
        "hotpool bench: {}, format {}, {} hot and {} cold calls per mode, concurrency {}, payload {} B",
        args.image, args.format, args.calls, args.cold_calls, args.concurrency, args.payload
    );
    println!(
        "{:<12} {:>12} {:>12} {:>12}",
        "mode", "p50", "p99", "calls/s"
    );
    for mode in order {
        let samples = &modes[mode];
        println!(
            "{mode:<12} {:>9} µs {:>9} µs {:>12.1}",
            samples.percentile(50).as_micros(),
            samples.percentile(99).as_micros(),
            samples.calls_per_s()
        );
    }
    let ratio = |a: &str, b: &str| {
        modes[a].percentile(50).as_secs_f64() / modes[b].percentile(50).as_secs_f64()
    };
    println!(
        "ratios: hot/floor_hot p50 {:.3} (target <= 1.15 at concurrency 1), hot/floor_hot throughput {:.3} (target >= 0.85 at concurrency 4), cold/floor_cold p50 {:.3} (target <= 1.10)",
        ratio("hot", "floor_hot"),
        modes["hot"].calls_per_s() / modes["floor_hot"].calls_per_s(),
        ratio("cold", "floor_cold"),
    );
}
