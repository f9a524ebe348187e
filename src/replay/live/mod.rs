//! `hotpool replay --live`: a slice of a trace sent as real calls to a running
//! `hotpool serve` whose config [`serve_config`] wrote, measured from the
//! server's `/metrics`, to set beside the simulation of the same slice.
//!
//! The calls are the simulation's own (`replay::calls`): the same seed gives
//! the same arrival times and durations, each call's body `!sleep MS`. Counters
//! (calls, cold calls, starts, prewarms) are the growth of the server's over
//! the run. Memory is sampled: every [`SAMPLE_EVERY`] the live mode reads each
//! function's containers by state and counts each one as holding its trace
//! function's memory (not the scaled-down limit), so GB-s compare with the
//! simulation's; the samples cover the slice's span, as the simulation's
//! figures do. The server should be fresh: containers it already holds count.

mod scrape;
mod serve_config;

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use self::scrape::FunctionFigures;
use super::calls::{CallSource, MINUTE_NS, compress};
use super::sim::percentile;
use super::{Options, Report, Trace};

pub use serve_config::{ServeSetup, function_name, serve_config};

/// How often the live mode reads the server's containers.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

const BYTES_PER_GB: f64 = (1u64 << 30) as f64;
/// How long connecting to the server may take, for a call or a reading.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one reading of `/metrics` may take: a server that stalls fails
/// the run rather than hang it.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than its own duration a call may take before it is given
/// up as failed: the written config's 10-minute queue timeout, its call
/// timeout's minute, and a minute more.
const CALL_MARGIN: Duration = Duration::from_secs(12 * 60);

/// A live run that could not be carried out.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LiveError(String);

/// What a live run measured.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LiveReport {
    /// The figures the simulation reports, measured; `start_wait_s` is the
    /// starts' waits for a start turn, `peak_starts_per_s` and
    /// `p99_starts_per_s` are from the starts counter sampled every
    /// [`SAMPLE_EVERY`].
    pub report: Report,
    /// The mean container start, if any started.
    pub cold_start: Option<Duration>,
    /// Calls sent.
    pub sent: u64,
    /// Calls that did not answer 200.
    pub failed: u64,
    /// The first such answer: its status and body, or why none came.
    pub first_failure: Option<String>,
    /// The 99th percentile of how late calls were sent after their arrival
    /// time, in ms.
    pub send_lag_p99_ms: f64,
}

/// Sends `trace`'s calls under `options` (its seed, arrivals and speed) to
/// the server at `url` (`http://127.0.0.1:8080`) whose functions
/// [`serve_config`] named, and measures it.
pub async fn run(trace: &Trace, options: &Options, url: &str) -> Result<LiveReport, LiveError> {
    let wall = std::time::Instant::now();
    let url = url.trim_end_matches('/').to_owned();
    let names: Vec<String> = (0..trace.function_count())
        .map(|index| function_name(trace, index))
        .collect();
    let memory: Vec<u64> = trace.functions.iter().map(|f| f.memory).collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| LiveError(format!("an HTTP client: {e}")))?;
    let calls = CallSource::new(trace, options).all();
    let span = Duration::from_nanos(compress(trace.minutes() as u64 * MINUTE_NS, options.speed));

    let before = scrape(&client, &url, &names).await?;
    let base = Instant::now();
    let sampler = tokio::spawn(sample(
        client.clone(),
        url.clone(),
        names.clone(),
        memory,
        base,
        span,
    ));
    let mut answers = JoinSet::new();
    let mut lags = Vec::with_capacity(calls.len());
    for call in &calls {
        let due = base + Duration::from_nanos(call.at);
        tokio::time::sleep_until(due).await;
        lags.push(due.elapsed().as_secs_f64() * 1e3);
        let request = client
            .post(format!("{url}/invoke/{}", names[call.function as usize]))
            .timeout(Duration::from_nanos(call.duration) + CALL_MARGIN)
            .body(format!(
                "!sleep {}",
                (call.duration as f64 / 1e6).round() as u64
            ));
        answers.spawn(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
            }
        });
    }
    let mut failed = 0;
    let mut first_failure = None;
    while let Some(answer) = answers.join_next().await {
        if let Err(error) = answer.expect("a call's task does not panic") {
            failed += 1;
            first_failure.get_or_insert(error);
        }
    }
    let memory = sampler.await.expect("the sampler does not panic")?;
    let after = scrape(&client, &url, &names).await?;

    let grown: Vec<FunctionFigures> = after.iter().zip(&before).map(|(a, b)| a.since(b)).collect();
    let total = |field: fn(&FunctionFigures) -> f64| grown.iter().map(field).sum::<f64>();
    let (invocations, cold_starts) = (total(|f| f.calls) as u64, total(|f| f.cold) as u64);
    let container_starts = total(|f| f.starts) as u64;
    let mut cold_pct: Vec<f64> = grown
        .iter()
        .filter(|f| f.calls > 0.0)
        .map(|f| 100.0 * f.cold / f.calls)
        .collect();
    cold_pct.sort_by(f64::total_cmp);
    lags.sort_by(f64::total_cmp);
    let report = Report {
        invocations,
        cold_starts,
        cold_ratio: cold_starts as f64 / invocations.max(1) as f64,
        container_starts,
        idle_gb_s: memory.idle_gb_s,
        total_gb_s: memory.total_gb_s,
        p75_function_cold_pct: percentile(&cold_pct, 0.75),
        prewarms_used: total(|f| f.prewarms_used) as u64,
        prewarms_wasted: total(|f| f.prewarms_wasted) as u64,
        wall_s: wall.elapsed().as_secs_f64(),
        warm_after_wait: 0,
        memory_waits: 0,
        longest_memory_wait_s: 0.0,
        start_wait_s: total(|f| f.start_wait_seconds),
        call_wait_s: total(|f| f.call_wait_seconds),
        peak_starts_per_s: memory.peak_starts_per_s,
        p99_starts_per_s: memory.p99_starts_per_s,
        engine_start_s: container_starts as f64 * options.engine_start_cost.as_secs_f64(),
    };
    let start_seconds = total(|f| f.start_seconds);
    Ok(LiveReport {
        report,
        cold_start: (container_starts > 0)
            .then(|| Duration::from_secs_f64(start_seconds / container_starts as f64)),
        sent: calls.len() as u64,
        failed,
        first_failure,
        send_lag_p99_ms: percentile(&lags, 0.99),
    })
}

/// Each of `names`' figures, in their order (zero for one not yet seen).
async fn scrape(
    client: &reqwest::Client,
    url: &str,
    names: &[String],
) -> Result<Vec<FunctionFigures>, LiveError> {
    let failed = |e: reqwest::Error| LiveError(format!("reading {url}/metrics: {e}"));
    let response = client
        .get(format!("{url}/metrics"))
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(failed)?;
    let text = response.text().await.map_err(failed)?;
    let figures = scrape::parse(&text);
    Ok(names
        .iter()
        .map(|name| figures.get(name).copied().unwrap_or_default())
        .collect())
}

/// What the samples of containers gave.
struct Sampled {
    idle_gb_s: f64,
    total_gb_s: f64,
    peak_starts_per_s: u32,
    p99_starts_per_s: f64,
}

/// Reads the containers every [`SAMPLE_EVERY`] from `base` to `base + span`;
/// each reading stands for the time until the next.
async fn sample(
    client: reqwest::Client,
    url: String,
    names: Vec<String>,
    memory: Vec<u64>,
    base: Instant,
    span: Duration,
) -> Result<Sampled, LiveError> {
    let end = base + span;
    // (when, idle bytes, held bytes, starts so far)
    let mut readings: Vec<(Instant, f64, f64, f64)> = Vec::new();
    let mut next = base;
    loop {
        let figures = scrape(&client, &url, &names).await?;
        let at = Instant::now();
        let bytes = |count: fn(&FunctionFigures) -> f64| -> f64 {
            figures
                .iter()
                .zip(&memory)
                .map(|(f, &m)| count(f) * m as f64)
                .sum()
        };
        let starts = figures.iter().map(|f| f.starts).sum();
        readings.push((at, bytes(|f| f.idle), bytes(|f| f.live), starts));
        if at >= end {
            break;
        }
        next += SAMPLE_EVERY;
        tokio::time::sleep_until(next.min(end)).await;
    }
    let (mut idle, mut held) = (0.0, 0.0);
    for pair in readings.windows(2) {
        let (from, to) = (pair[0].0.min(end), pair[1].0.min(end));
        let seconds = to.saturating_duration_since(from).as_secs_f64();
        idle += pair[0].1 * seconds;
        held += pair[0].2 * seconds;
    }
    // Starts per second of the span: the counter's growth between the last
    // readings before each second's start and end.
    let seconds = span.as_secs_f64().ceil() as usize;
    let mut last_before: HashMap<usize, f64> = HashMap::new();
    for &(at, _, _, starts) in &readings {
        let second = (at.saturating_duration_since(base).as_secs_f64() as usize).min(seconds);
        last_before.insert(second, starts);
    }
    let first = readings.first().map_or(0.0, |r| r.3);
    let mut so_far = first;
    let mut per_second = Vec::with_capacity(seconds);
    for second in 0..seconds {
        let at_end = last_before.get(&second).copied().unwrap_or(so_far);
        per_second.push(at_end - so_far);
        so_far = at_end;
    }
    let peak = per_second.iter().copied().fold(0.0, f64::max);
    per_second.sort_by(f64::total_cmp);
    Ok(Sampled {
        idle_gb_s: idle / BYTES_PER_GB,
        total_gb_s: held / BYTES_PER_GB,
        peak_starts_per_s: peak as u32,
        p99_starts_per_s: percentile(&per_second, 0.99),
    })
}
