//! One call: through a hot container's pipes, framed by the function's format
//! ([`Framing`]), or in a container of its own (cold).
//!
//! Every call is counted in `hotpool_calls_total` once, with its outcome, or as
//! `cancelled` when its caller dropped it. A cold function's output is buffered up
//! to the pool's response limit; the container is killed as soon as it writes more,
//! and removed after the answer, not before it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::call_end::{CallCount, LogEnd, death_verdict, usage_since};
use super::call_logs::CallState;
use super::collector::CallTag;
use super::container::{EvictionReason, Pipes, StderrLog};
use super::function::{ColdRefusal, FunctionPool};
use super::function_log::{CurrentCall, begin_call};
use super::response::{Response, Start};
use super::sampler::sample_counters;
use super::scheduler::{Inner, busy, record_start};
use super::spec::Lifecycle;
use super::stream::{Answer, Relay};
use super::upload::{self, Pump, PumpError, RequestBody};
use crate::driver::{Cookie, Driver};
use crate::error::CallError;
use crate::format::{
    Format, FrameError, Framing, FunctionResponse, Http, Reply, Request, StreamHead,
};
use crate::stats::CallStats;

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
        let mut count = CallCount::new(&pool);
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

fn record_queue<D: Driver>(pool: &FunctionPool<D>, started: Instant) {
    pool.metrics.queued(started.elapsed().as_secs_f64());
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
