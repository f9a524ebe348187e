//! A hot call whose response body streams: the relay of its chunks from the
//! container to the caller, under the limits a stream has.
//!
//! Once an `http` function answers with a chunked head, the call's container
//! stays checked out to a [`Relay`], which runs as a task of its own: it reads
//! the body a piece at a time ([`crate::format::chunked`]) and hands each
//! piece to the caller's [`BodyStream`] through a queue of
//! [`QUEUED_PIECES`] pieces, so at most that many pieces of 64 KiB wait in
//! hotpool for a slow caller: a full queue stops the reading, and the pipe's
//! own buffer then stops the function (back-pressure, never unbounded memory).
//!
//! A stream is cut, and its container evicted, when the function writes more
//! than the call's stream limit (`protocol_error`), is silent for longer than
//! the idle timeout between pieces (`timeout`), runs past the call's timeout
//! (`timeout`, whether the function or the caller is slow), breaks the chunked
//! framing or dies (its verdict), or when the caller drops the [`BodyStream`]
//! (`cancelled`). The caller then reads the error in place of the stream's end,
//! so a cut stream never looks whole. A stream that ends cleanly gives its
//! container back, as a whole response does, and the call is counted once,
//! with its outcome, when the relay ends.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::call_end::{CallCount, LogEnd, death_verdict, usage_since};
use super::call_logs::CallState;
use super::checked_out::CheckedOut;
use super::container::EvictionReason;
use super::function::FunctionPool;
use super::response::{Response, Start};
use super::sampler::sample_counters;
use super::scheduler::{InFlight, Inner};
use super::upload::{Pump, PumpError};
use crate::driver::{BoxWrite, Driver};
use crate::error::CallError;
use crate::format::chunked::Chunks;
use crate::format::{FrameError, StreamHead};
use crate::stats::CallStats;

/// The most pieces of a stream that wait in hotpool for its caller.
pub const QUEUED_PIECES: usize = 4;

/// What a call returns when its response may stream.
#[derive(Debug)]
#[non_exhaustive]
pub enum Answer {
    /// The whole response.
    Whole(Response),
    /// A response whose body streams.
    Streaming(StreamingResponse),
}

/// A response whose body is still coming from the function.
#[derive(Debug)]
#[non_exhaustive]
pub struct StreamingResponse {
    /// The call's id (`Hotpool-Call-Id`).
    pub call_id: String,
    /// Whether the call met a running container.
    pub start: Start,
    /// The function's status.
    pub status: u16,
    /// The function's headers, without framing ones.
    pub headers: Vec<(String, String)>,
    /// The body, a piece at a time.
    pub body: BodyStream,
}

impl StreamingResponse {
    /// The whole response: the body read to its end, with the call's stats.
    pub async fn collect(mut self) -> Result<Response, CallError> {
        let mut body = BytesMut::new();
        while let Some(piece) = self.body.next_piece().await {
            body.extend_from_slice(&piece?);
        }
        Ok(Response {
            call_id: self.call_id,
            start: self.start,
            status: self.status,
            headers: self.headers,
            body: body.freeze(),
            stats: self.body.stats(),
        })
    }
}

/// How a relay ended: with the call's stats, or why it was cut.
type Ending = Option<Result<Option<CallStats>, CallError>>;

/// The body of a streaming response: its pieces as they come, then `None` at
/// a clean end, or an error if the stream was cut. Dropping it cuts the stream
/// (the call is `cancelled`).
///
/// A stream is cut, and its container evicted, past the call's stream limit
/// (`protocol_error`), after a silence longer than
/// [`super::PoolConfig::stream_idle_timeout`] (`timeout`), past the call's
/// timeout (`timeout`), on broken chunked framing or the function's death.
#[derive(Debug)]
pub struct BodyStream {
    pieces: mpsc::Receiver<Bytes>,
    ending: Arc<Mutex<Ending>>,
    stats: Option<CallStats>,
    ended: bool,
}

impl BodyStream {
    /// The next piece, `None` at the end, or why the stream was cut.
    pub async fn next_piece(&mut self) -> Option<Result<Bytes, CallError>> {
        std::future::poll_fn(|cx| self.poll_piece(cx)).await
    }

    /// The call's stats, once the stream ended cleanly (where the driver has
    /// them).
    pub fn stats(&self) -> Option<CallStats> {
        self.stats.clone()
    }

    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, CallError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.pieces.poll_recv(cx) {
            Poll::Ready(Some(piece)) => Poll::Ready(Some(Ok(piece))),
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.ended = true;
                let ending = self.ending.lock().unwrap_or_else(|e| e.into_inner()).take();
                match ending {
                    Some(Ok(stats)) => {
                        self.stats = stats;
                        Poll::Ready(None)
                    }
                    Some(Err(error)) => Poll::Ready(Some(Err(error))),
                    None => Poll::Ready(Some(Err(CallError::Cancelled))),
                }
            }
        }
    }
}

impl Stream for BodyStream {
    type Item = Result<Bytes, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_piece(cx)
    }
}

/// The rest of a hot call whose response head said its body streams: the
/// container, checked out until the stream ends, and what the call's end
/// records.
pub(crate) struct Relay<D: Driver> {
    pub(crate) inner: Arc<Inner<D>>,
    pub(crate) pool: Arc<FunctionPool<D>>,
    pub(crate) checked: CheckedOut<D>,
    pub(crate) log_end: LogEnd<'static>,
    pub(crate) call_key: u64,
    pub(crate) cpu_before: Option<Duration>,
    pub(crate) call_started: Instant,
    pub(crate) timeout: Duration,
    pub(crate) start: Start,
    /// The request's body, still streaming in: it holds the container's stdin.
    pub(crate) upload: Option<Pump>,
}

impl<D: Driver> Relay<D> {
    /// Starts relaying the body of the call whose response began with `head`,
    /// at most `limit` bytes, as a task of the pool; `count` and `in_flight`
    /// end with it.
    pub(crate) fn spawn(
        self,
        call_id: String,
        head: StreamHead,
        count: CallCount<'static, D>,
        in_flight: InFlight<D>,
        started: Instant,
        limit: usize,
    ) -> StreamingResponse {
        let (sender, pieces) = mpsc::channel(QUEUED_PIECES);
        let ending = Arc::new(Mutex::new(None));
        let (tracker, start) = (self.inner.tracker.clone(), self.start);
        let ends = (count, in_flight, started, limit);
        let run = self.run(call_id.clone(), sender, ending.clone(), ends);
        tracker.spawn(run);
        StreamingResponse {
            call_id,
            start,
            status: head.status,
            headers: head.headers,
            body: BodyStream {
                pieces,
                ending,
                stats: None,
                ended: false,
            },
        }
    }

    async fn run(
        mut self,
        call_id: String,
        sender: mpsc::Sender<Bytes>,
        ending: Arc<Mutex<Ending>>,
        (mut count, in_flight, started, limit): (
            CallCount<'static, D>,
            InFlight<D>,
            Instant,
            usize,
        ),
    ) {
        let relayed = self.relay(&sender, limit).await;
        let container = self.checked.slot().container.clone();
        let sampled = container.call_tag.end();
        let end = match relayed {
            Ok(stdin) => {
                let slot = self.checked.slot();
                if let Some(stdin) = stdin {
                    slot.pipes.stdin = stdin;
                }
                let usage = usage_since(
                    &container.cookie,
                    &mut slot.readings,
                    self.cpu_before,
                    self.call_started,
                );
                slot.pipes.stdout.release();
                slot.pipes.mark_idle();
                self.log_end.now(CallState::Succeeded);
                self.checked.check_in();
                let stats = self
                    .inner
                    .collector
                    .finish(container.stats_key, self.call_key, usage, sampled)
                    .await;
                self.pool.metrics.used(&stats);
                self.pool
                    .metrics
                    .succeeded(self.start, started.elapsed().as_secs_f64());
                count.outcome = "success";
                Ok((!stats.is_empty()).then_some(stats))
            }
            Err(error) => {
                tracing::info!(function = %self.pool.name, %call_id, kind = error.kind().as_str(), error = %error, "stream cut");
                self.checked.evict(EvictionReason::of_death(&error));
                count.outcome = error.kind().as_str();
                Err(error)
            }
        };
        *ending.lock().unwrap_or_else(|e| e.into_inner()) = Some(end);
        drop((sender, count, in_flight));
    }

    /// Relays the body, at most `limit` bytes, to `sender` until its clean end
    /// (with the container's stdin, if an upload held it), or why it was cut.
    async fn relay(
        &mut self,
        sender: &mpsc::Sender<Bytes>,
        limit: usize,
    ) -> Result<Option<BoxWrite>, CallError> {
        let deadline = self.call_started + self.timeout;
        let idle_timeout = self.inner.config.stream_idle_timeout;
        let container = self.checked.slot().container.clone();
        let sampling = sample_counters(
            &container.cookie,
            self.cpu_before,
            self.call_started,
            || {
                self.inner
                    .collector
                    .sink(container.stats_key, container.call_tag.clone())
            },
        );
        tokio::pin!(sampling);
        let timed_out = || CallError::Timeout {
            timeout: self.timeout,
        };
        let stdout = &mut self.checked.slot().pipes.stdout;
        let mut upload = self.upload.take();
        let mut stdin = None;
        let mut chunks = Chunks::new();
        let mut relayed = 0usize;
        let closed = |container| death_verdict(container, self.timeout, self.call_started);
        loop {
            // One read per piece, kept across the upload's end: a read
            // dropped half-way would lose the bytes it took.
            let read = tokio::time::timeout(idle_timeout, chunks.next(stdout));
            tokio::pin!(read);
            let read = loop {
                tokio::select! {
                    biased;
                    read = &mut read => break read,
                    (pipe, pumped) = async { upload.as_mut().expect("a pump").await }, if upload.is_some() => {
                        upload = None;
                        stdin = Some(pipe);
                        match pumped {
                            Ok(()) => {}
                            Err(PumpError::Body(error)) => return Err(error),
                            Err(PumpError::Pipe(_)) => return Err(closed(&container).await),
                        }
                    }
                    () = container.died().cancelled() => break Ok(Err(FrameError::Closed)),
                    () = sender.closed() => return Err(CallError::Cancelled),
                    () = tokio::time::sleep_until(deadline) => return Err(timed_out()),
                    never = &mut sampling => match never {},
                }
            };
            let piece = match read {
                Ok(Ok(Some(piece))) => piece,
                Ok(Ok(None)) => break,
                Ok(Err(FrameError::Protocol(detail))) => {
                    return Err(CallError::ProtocolError { detail });
                }
                Ok(Err(FrameError::Closed | FrameError::Io(_))) => {
                    return Err(closed(&container).await);
                }
                Err(_silent) => return Err(CallError::StreamStalled { idle_timeout }),
            };
            relayed += piece.len();
            if relayed > limit {
                return Err(CallError::ProtocolError {
                    detail: format!(
                        "the function's streamed response passed its limit of {limit} bytes"
                    ),
                });
            }
            tokio::select! {
                sent = sender.send(piece) => sent.map_err(|_| CallError::Cancelled)?,
                () = tokio::time::sleep_until(deadline) => return Err(timed_out()),
            }
        }
        // The answer is whole; the request may still be coming in.
        let Some(pump) = upload else {
            return Ok(stdin);
        };
        tokio::select! {
            (pipe, pumped) = pump => match pumped {
                Ok(()) => Ok(Some(pipe)),
                Err(PumpError::Body(error)) => Err(error),
                Err(PumpError::Pipe(_)) => Err(closed(&container).await),
            },
            () = sender.closed() => Err(CallError::Cancelled),
            () = tokio::time::sleep_until(deadline) => Err(timed_out()),
        }
    }
}
