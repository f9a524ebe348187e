//! One call: through a hot container's pipes, framed by the function's format
//! ([`Framing`]), or in a container of its own (cold).
//!
//! Every call is counted in `hotpool_calls_total` once, with its outcome, or as
//! `cancelled` when its caller dropped it. A cold function's output is buffered up
//! to the pool's response limit; the container is killed as soon as it writes more,
//! and removed after the answer, not before it.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::call_logs::{CallLogs, CallState};
use super::collector::CallTag;
use super::container::{EvictionReason, HotContainer, Pipes, StderrLog};
use super::function::{ColdRefusal, FunctionPool};
use super::function_log::{CurrentCall, begin_call, end_call};
use super::readings::Readings;
use super::sampler::sample_counters;
use super::scheduler::{Inner, busy, record_start};
use super::spec::Lifecycle;
use super::stream::{Answer, Relay};
use super::upload::{self, Pump, PumpError, RequestBody};
use crate::driver::{Cookie, Driver};
use crate::error::{CallError, ErrorKind};
use crate::format::{
    Format, FrameError, Framing, FunctionResponse, Http, Reply, Request, StreamHead,
};
use crate::stats::{CallStats, Usage};

/// How long past its timeout a hot call may be answered, at most.
///
/// A call whose container closed stdout waits for the engine to say why until
/// the call's deadline, and at least this long: a function that dies (exits, is
/// OOM-killed) is reported within moments of its stdout closing, and the caller
/// gets that reason. A container still running then closed its stdout but kept
/// running: it can no longer answer, and the caller gets `protocol_error`.
/// Stdout is only ever seen closed before the call's deadline, so every answer
/// comes within the timeout plus this.
pub const TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Whether a call found its container running, or waited for one to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Start {
    /// Served by a container that was already running.
    Hot,
    /// Served by a container started for it (every `cold` call).
    Cold,
}

impl Start {
    /// `hot` or `cold`, as in the `Hotpool-Start` header and the `start` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Start::Hot => "hot",
            Start::Cold => "cold",
        }
    }
}

/// What a call returns.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Response {
    /// The call's id (`Hotpool-Call-Id`).
    pub call_id: String,
    /// Whether the call met a running container.
    pub start: Start,
    /// The function's status: its own for `http`, 200 for `line` and `cold`.
    pub status: u16,
    /// The function's headers (`http` only).
    pub headers: Vec<(String, String)>,
    /// The function's output.
    pub body: Bytes,
    /// What the call used: the engine's samples taken while it ran (decimated and
    /// averaged) and the container's counters; `None` where the driver has neither.
    pub stats: Option<CallStats>,
}

impl<D: Driver> Inner<D> {
    /// Runs one call of function `name` and records it in the metrics; a
    /// chunked response streams, carrying at most `stream_limit` body bytes
    /// (a whole one is at most the pool's `max_response_bytes`). With
    /// `upload`, the request's body streams in from it, chunked, at most
    /// `stream_limit` bytes too (`http` functions only).
    pub(crate) async fn call(
        &self,
        name: &str,
        request: Request,
        stream_limit: usize,
        upload: Option<RequestBody>,
    ) -> Result<Answer, CallError> {
        let Some(in_flight) = self.enter() else {
            return Err(busy("the pool is shutting down"));
        };
        let pool = self.current(name)?;
        let mut count = CallCount {
            pool: Cow::Borrowed(&pool),
            outcome: ErrorKind::Cancelled.as_str(),
        };
        let started = Instant::now();
        let result = match (pool.lifecycle(), upload) {
            (Lifecycle::Hot(Format::Http), Some(upload)) => {
                let upload = Some((upload, stream_limit));
                let hot = self.call_hot(pool.clone(), Format::Http, &request, started, upload);
                hot.await
            }
            (lifecycle, Some(_)) => Err(CallError::RequestBody {
                detail: format!(
                    "{name} is a {} function: only http functions take a streamed request body",
                    lifecycle.as_str()
                ),
            }),
            (Lifecycle::Hot(format), None) => {
                self.call_hot(pool.clone(), format, &request, started, None)
                    .await
            }
            (Lifecycle::Cold, None) => self
                .call_cold(&pool, &request, started)
                .await
                .map(Hot::Whole),
        };
        match result {
            Ok(Hot::Whole(response)) => {
                count.outcome = "success";
                pool.metrics
                    .succeeded(response.start, started.elapsed().as_secs_f64());
                Ok(Answer::Whole(response))
            }
            Ok(Hot::Streaming(head, relay)) => Ok(Answer::Streaming(relay.spawn(
                request.id,
                head,
                count.into_owned(),
                in_flight,
                started,
                stream_limit,
            ))),
            Err(error) => {
                count.outcome = error.kind().as_str();
                Err(error)
            }
        }
    }

    async fn call_hot(
        &self,
        pool: Arc<FunctionPool<D>>,
        format: Format,
        request: &Request,
        started: Instant,
        upload: Option<(RequestBody, usize)>,
    ) -> Result<Hot<D>, CallError> {
        let (pool, limits, mut checked) = self.checkout(pool).await?;
        record_queue(&pool, started);
        let slot = checked.begin_call();
        slot.calls += 1;
        let start = if std::mem::replace(&mut slot.fresh, false) {
            Start::Cold
        } else {
            Start::Hot
        };
        let container = slot.container.clone();
        // Kept after the call: stderr the function wrote during it may arrive late.
        begin_call(&container.current_call, &request.id);
        let mut log_end = LogEnd::new(&container.current_call, &self.call_logs, &request.id);
        let call_key = self.collector.next_id();
        container.call_tag.begin(call_key);
        let call_started = Instant::now();
        let cpu_before = slot
            .readings
            .cpu_at_start(call_started, || container.cookie.cpu_time());
        let timeout = limits.timeout;
        let max = self.config.max_response_bytes;
        let sampling = sample_counters(&container.cookie, cpu_before, call_started, || {
            self.collector
                .sink(container.stats_key, container.call_tag.clone())
        });
        slot.pipes.mark_busy();
        let exchange = async {
            tokio::select! {
                biased;
                answer = exchange(format, &mut slot.pipes, request, timeout, max, upload) => answer,
                () = container.died().cancelled() => Err(PumpError::Pipe(FrameError::Closed)),
                never = sampling => match never {},
            }
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        match outcome {
            Ok(Ok((Reply::Whole(answer), _))) => {
                let sampled = container.call_tag.end();
                let usage = usage_since(
                    &container.cookie,
                    &mut slot.readings,
                    cpu_before,
                    call_started,
                );
                slot.pipes.stdout.release();
                slot.pipes.mark_idle();
                log_end.now(CallState::Succeeded);
                checked.check_in();
                let stats = self
                    .collector
                    .finish(container.stats_key, call_key, usage, sampled)
                    .await;
                pool.metrics.used(&stats);
                Ok(Hot::Whole(respond(request, start, answer, stats)))
            }
            Ok(Ok((Reply::Chunked(head), upload))) => Ok(Hot::Streaming(
                head,
                Relay {
                    inner: self.arc(),
                    pool,
                    checked,
                    log_end: log_end.into_owned(),
                    call_key,
                    cpu_before,
                    call_started,
                    timeout,
                    start,
                    upload,
                },
            )),
            Ok(Err(PumpError::Body(error))) => {
                container.call_tag.end();
                checked.evict(EvictionReason::Cancelled);
                Err(error)
            }
            Ok(Err(PumpError::Pipe(FrameError::Protocol(detail)))) => {
                container.call_tag.end();
                checked.evict(EvictionReason::ProtocolError);
                Err(CallError::ProtocolError { detail })
            }
            Ok(Err(PumpError::Pipe(FrameError::Closed | FrameError::Io(_)))) => {
                container.call_tag.end();
                let error = death_verdict(&container, timeout, call_started).await;
                checked.evict(EvictionReason::of_death(&error));
                Err(error)
            }
            Err(_) => {
                container.call_tag.end();
                checked.evict(EvictionReason::Timeout);
                Err(CallError::Timeout { timeout })
            }
        }
    }

    async fn call_cold(
        &self,
        pool: &Arc<FunctionPool<D>>,
        request: &Request,
        started: Instant,
    ) -> Result<Response, CallError> {
        let limits = pool.limits();
        let slot = match pool.cold_slot(limits.max_queue, limits.queue_timeout).await {
            Ok(slot) => slot,
            Err(ColdRefusal::QueueFull) => {
                return Err(busy(format!(
                    "{} calls of {} are already waiting",
                    limits.max_queue, pool.name
                )));
            }
            Err(ColdRefusal::TimedOut) => {
                return Err(busy(format!(
                    "no slot for {} came free within {}",
                    pool.name,
                    humantime::format_duration(limits.queue_timeout)
                )));
            }
        };
        pool.publish(&mut pool.lock());
        let memory = self.reserve(pool).await?;
        record_queue(pool, started);

        // Cancelled by shutdown's abort, or by the output crossing the limit.
        let stop = self.abort.child_token();
        let output = ResponseBuffer::new(self.config.max_response_bytes, stop.clone());
        let stats_key = self.collector.next_id();
        let call_tag = Arc::new(CallTag::default());
        call_tag.begin(stats_key);
        let mut task = self.task(pool, &request.id);
        let id = task.id.clone();
        task.stats = Some(self.collector.sink(stats_key, call_tag.clone()));
        task.timeout = Some(limits.timeout);
        task.input = Some(Box::new(std::io::Cursor::new(request.body.clone())));
        task.stdout = Some(Box::new(output.clone()));
        let current_call = Arc::new(Mutex::new(CurrentCall::of(&request.id)));
        task.stderr = Box::new(StderrLog::new(
            pool.name.clone(),
            current_call.clone(),
            pool.log_limits.clone(),
            self.call_logs.clone(),
        ));
        let mut log_end = LogEnd::new(&current_call, &self.call_logs, &request.id);
        let Some(turn) = self.start_turn(&pool.name).await else {
            return Err(busy("the pool is shutting down"));
        };
        let starting = Instant::now();
        let mut cookie = match self.prepare(task).await {
            Ok(cookie) => cookie,
            Err(error) => {
                record_start(&pool.name, starting, Some(&error));
                return Err(error);
            }
        };
        let ran = cookie.run().await;
        drop(turn);
        record_start(&pool.name, starting, ran.as_ref().err());
        let result = match ran {
            Ok(_) => cookie.wait(&stop).await,
            Err(error) => Err(error),
        };
        // The caller has its answer once the function has ended: the
        // container's removal goes on meanwhile, and holds the call's slot and
        // memory until it is done (a shutdown waits for it).
        let (removals, function) = (self.removals.clone(), pool.clone());
        self.tracker.spawn(async move {
            removals.close(&id, &cookie).await;
            drop((slot, memory));
            function.publish(&mut function.lock());
        });
        let sampled = call_tag.end();
        let stats = self
            .collector
            .finish(stats_key, stats_key, None, sampled)
            .await;
        pool.metrics.used(&stats);
        let output = output
            .into_body()
            .map_err(|detail| CallError::ProtocolError { detail });
        let body = match (result, output) {
            // Killed for writing past the limit: the limit is the reason.
            (Err(CallError::Cancelled), Err(too_large)) => return Err(too_large),
            (Err(error), _) => return Err(error),
            (Ok(()), output) => output?,
        };
        log_end.now(CallState::Succeeded);
        Ok(Response {
            call_id: request.id.clone(),
            start: Start::Cold,
            status: 200,
            headers: Vec::new(),
            body,
            stats: (!stats.is_empty()).then_some(stats),
        })
    }
}

/// How a hot call went: answered whole, or with a head whose body streams.
enum Hot<D: Driver> {
    Whole(Response),
    Streaming(StreamHead, Relay<D>),
}

/// One call over a hot container's pipes: its request, then its response (up
/// to the body, if that streams). With `upload` (a body and its limit), the
/// request's body streams in while the response is read; if the response
/// streams before the body is all in, the [`Pump`] writing it comes back too.
async fn exchange(
    format: Format,
    pipes: &mut Pipes,
    request: &Request,
    timeout: Duration,
    max_response: usize,
    upload: Option<(RequestBody, usize)>,
) -> Result<(Reply, Option<Pump>), PumpError> {
    let Some((body, limit)) = upload else {
        format
            .write_request(&mut pipes.stdin, request, timeout)
            .await
            .map_err(PumpError::Pipe)?;
        let reply = format.read_reply(&mut pipes.stdout, request, max_response);
        return Ok((reply.await.map_err(PumpError::Pipe)?, None));
    };
    Http.write_streamed_head(&mut pipes.stdin, request, timeout)
        .await
        .map_err(PumpError::Pipe)?;
    let stdin = std::mem::replace(&mut pipes.stdin, Box::new(tokio::io::sink()));
    let mut pump = upload::pump(stdin, body, limit);
    let read = format.read_reply(&mut pipes.stdout, request, max_response);
    tokio::pin!(read);
    let reply = tokio::select! {
        reply = &mut read => reply.map_err(PumpError::Pipe)?,
        (stdin, pumped) = &mut pump => {
            pipes.stdin = stdin;
            pumped?;
            return Ok((read.await.map_err(PumpError::Pipe)?, None));
        }
    };
    if let Reply::Chunked(_) = reply {
        return Ok((reply, Some(pump)));
    }
    let (stdin, pumped) = pump.await;
    pipes.stdin = stdin;
    pumped?;
    Ok((reply, None))
}

/// Why a call's container closed its stdout at `call_started` + some time,
/// with `timeout` the call's: the engine's verdict on its death, awaited until
/// the call's deadline and at least [`TIMEOUT_MARGIN`], or a protocol error if
/// it runs on.
pub(super) async fn death_verdict<D: Driver>(
    container: &HotContainer<D>,
    timeout: Duration,
    call_started: Instant,
) -> CallError {
    let until_deadline = timeout.saturating_sub(call_started.elapsed());
    let grace = until_deadline.max(TIMEOUT_MARGIN);
    container
        .death(grace)
        .await
        .unwrap_or_else(|| CallError::ProtocolError {
            detail: "the function closed its stdout but kept running".into(),
        })
}

fn respond(
    request: &Request,
    start: Start,
    answer: FunctionResponse,
    stats: CallStats,
) -> Response {
    Response {
        call_id: request.id.clone(),
        start,
        status: answer.status,
        headers: answer.headers,
        body: answer.body,
        stats: (!stats.is_empty()).then_some(stats),
    }
}

/// What a call that started at `started` used: CPU time since `cpu_before`,
/// over its wall time, and memory now.
pub(super) fn usage_since(
    cookie: &impl Cookie,
    readings: &mut Readings,
    cpu_before: Option<Duration>,
    started: Instant,
) -> Option<Usage> {
    let now = Instant::now();
    let cpu = readings.cpu_at_end(now, || cookie.cpu_time())?;
    let cpu = cpu.saturating_sub(cpu_before?).as_secs_f64();
    Some(Usage {
        cpu_ratio: cpu
            / now
                .saturating_duration_since(started)
                .as_secs_f64()
                .max(1e-9),
        cpu_seconds: cpu,
        memory_bytes: readings.memory(now, || cookie.memory_bytes())?,
    })
}

fn record_queue<D: Driver>(pool: &FunctionPool<D>, started: Instant) {
    pool.metrics.queued(started.elapsed().as_secs_f64());
}

/// Tells the log of a call how the call ended, before its container goes to
/// another call ([`LogEnd::now`]) or as it is dropped: as failed, unless said
/// otherwise (a caller that went away is a call that failed). It borrows
/// what it needs while the call does, and owns it once a stream outlives the
/// call's frame ([`LogEnd::into_owned`]).
pub(crate) struct LogEnd<'a> {
    current: Cow<'a, Arc<Mutex<CurrentCall>>>,
    logs: Cow<'a, Arc<CallLogs>>,
    id: Cow<'a, str>,
    said: bool,
}

impl<'a> LogEnd<'a> {
    fn new(current: &'a Arc<Mutex<CurrentCall>>, logs: &'a Arc<CallLogs>, id: &'a str) -> Self {
        LogEnd {
            current: Cow::Borrowed(current),
            logs: Cow::Borrowed(logs),
            id: Cow::Borrowed(id),
            said: false,
        }
    }

    /// The same, owning what it borrowed.
    fn into_owned(mut self) -> LogEnd<'static> {
        let owned = LogEnd {
            current: Cow::Owned(self.current.as_ref().clone()),
            logs: Cow::Owned(self.logs.as_ref().clone()),
            id: Cow::Owned(self.id.to_string()),
            said: self.said,
        };
        // Said by the owned one.
        self.said = true;
        owned
    }

    /// The call ended at `state`.
    pub(super) fn now(&mut self, state: CallState) {
        self.said = true;
        end_call(&self.current, &self.id, &self.logs, state);
    }
}

impl Drop for LogEnd<'_> {
    fn drop(&mut self) {
        if !self.said {
            end_call(&self.current, &self.id, &self.logs, CallState::Failed);
        }
    }
}

/// Counts one call in `hotpool_calls_total` when dropped: with its outcome, or as
/// `cancelled` if the caller dropped the call before it had one. Borrows its
/// function's pool, or owns it once a stream outlives the call's frame.
pub(crate) struct CallCount<'a, D: Driver> {
    pool: Cow<'a, Arc<FunctionPool<D>>>,
    pub(super) outcome: &'static str,
}

impl<D: Driver> CallCount<'_, D> {
    /// The same, owning its pool.
    fn into_owned(mut self) -> CallCount<'static, D> {
        let owned = CallCount {
            pool: Cow::Owned(self.pool.as_ref().clone()),
            outcome: self.outcome,
        };
        // Counted by the owned one.
        self.outcome = "";
        owned
    }
}

impl<D: Driver> Drop for CallCount<'_, D> {
    fn drop(&mut self) {
        if !self.outcome.is_empty() {
            self.pool.metrics.count_call(self.outcome);
        }
    }
}

/// Collects a cold container's stdout, up to a limit; past it, keeps nothing more
/// and cancels `overflow` so the call can kill the container at once.
#[derive(Clone)]
struct ResponseBuffer {
    state: Arc<Mutex<(Vec<u8>, bool)>>,
    limit: usize,
    overflow: CancellationToken,
}

impl ResponseBuffer {
    fn new(limit: usize, overflow: CancellationToken) -> ResponseBuffer {
        ResponseBuffer {
            state: Arc::default(),
            limit,
            overflow,
        }
    }

    /// The output, or why it is not a response.
    fn into_body(self) -> Result<Bytes, String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.1 {
            return Err(format!("the response was larger than {} bytes", self.limit));
        }
        Ok(Bytes::from(std::mem::take(&mut state.0)))
    }
}

impl AsyncWrite for ResponseBuffer {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.1 || state.0.len() + bytes.len() > self.limit {
            state.1 = true;
            self.overflow.cancel();
        } else {
            state.0.extend_from_slice(bytes);
        }
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
