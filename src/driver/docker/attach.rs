//! A container's attach streams: stdout as a reader, stderr through a tap.
//!
//! The driver attaches twice: once for stdin and stdout, read by whoever runs the
//! call ([`StdoutReader`], nothing buffered beyond the frame being read), and once
//! for stderr alone, drained all the time by [`pump_stderr`] into the
//! [`StderrTap`], which passes it to the task's sink and keeps a tail for `exited`
//! errors. So stderr flows while a hot container sits idle, and a log line is
//! written when it is, not when the next call reads stdout. The sink is flushed
//! once stderr has been quiet for [`QUIET`] and when it ends (a function log then
//! says what it dropped), not after every write.

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bollard::container::LogOutput;
use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, ReadBuf};

/// How many trailing stderr bytes an `exited` error carries.
pub(crate) const STDERR_TAIL_BYTES: usize = 4096;

/// How long stderr stays quiet before the sink is flushed.
const QUIET: Duration = Duration::from_secs(1);

/// The attach stream as bollard gives it.
pub(crate) type Frames =
    Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Passes stderr to the task's sink and remembers its last bytes. The sink and
/// the tail have locks of their own: reading the tail never waits for the sink.
pub(crate) struct StderrTap {
    sink: Mutex<Box<dyn Write + Send>>,
    tail: Mutex<VecDeque<u8>>,
}

impl StderrTap {
    pub(crate) fn new(sink: Box<dyn Write + Send>) -> StderrTap {
        StderrTap {
            sink: Mutex::new(sink),
            tail: Mutex::new(VecDeque::new()),
        }
    }

    fn write(&self, bytes: &[u8]) {
        // A failing log sink must not fail the call.
        let _ = self
            .sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(bytes);
        let keep = &bytes[bytes.len().saturating_sub(STDERR_TAIL_BYTES)..];
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let overflow = (tail.len() + keep.len()).saturating_sub(STDERR_TAIL_BYTES);
        tail.drain(..overflow);
        tail.extend(keep);
    }

    fn flush(&self) {
        let _ = self.sink.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }

    /// The last [`STDERR_TAIL_BYTES`] of stderr, lossily decoded.
    pub(crate) fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let (front, back) = tail.as_slices();
        String::from_utf8_lossy(&[front, back].concat()).into_owned()
    }
}

/// Passes every stderr frame of `frames` to `tap` until the stream ends (the
/// container stopped), flushing the tap when stderr goes quiet and at the end.
pub(crate) async fn pump_stderr(mut frames: Frames, tap: Arc<StderrTap>) {
    let mut unflushed = false;
    loop {
        let next = if unflushed {
            match tokio::time::timeout(QUIET, frames.next()).await {
                Ok(next) => next,
                Err(_quiet) => {
                    tap.flush();
                    unflushed = false;
                    continue;
                }
            }
        } else {
            frames.next().await
        };
        match next {
            Some(Ok(LogOutput::StdErr { message })) => {
                tap.write(&message);
                unflushed = true;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    tap.flush();
}

/// The stdout bytes of an attach stream.
pub(crate) struct StdoutReader {
    frames: Frames,
    pending: Bytes,
}

impl StdoutReader {
    pub(crate) fn new(frames: Frames) -> StdoutReader {
        StdoutReader {
            frames,
            pending: Bytes::new(),
        }
    }
}

impl AsyncRead for StdoutReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.frames.as_mut().poll_next(cx)) {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    self.pending = message
                }
                Some(Ok(LogOutput::StdErr { .. } | LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A sink that keeps what it gets and counts its flushes.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>, Arc<Mutex<usize>>);

    impl Shared {
        fn flushes(&self) -> usize {
            *self.1.lock().unwrap()
        }
    }

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            *self.1.lock().unwrap() += 1;
            Ok(())
        }
    }

    fn frames() -> Frames {
        Box::pin(futures_util::stream::iter(vec![
            Ok(LogOutput::StdOut {
                message: Bytes::from_static(b"hel"),
            }),
            Ok(LogOutput::StdErr {
                message: Bytes::from_static(b"warn\n"),
            }),
            Ok(LogOutput::StdOut {
                message: Bytes::from_static(b"lo\0\xff"),
            }),
        ]))
    }

    #[tokio::test]
    async fn the_reader_yields_stdout_only() {
        let mut out = Vec::new();
        StdoutReader::new(frames())
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, b"hello\0\xff");
    }

    #[tokio::test]
    async fn the_pump_passes_stderr_to_the_sink_and_the_tail() {
        let log = Shared::default();
        let tap = Arc::new(StderrTap::new(Box::new(log.clone())));
        pump_stderr(frames(), tap.clone()).await;
        assert_eq!(*log.0.lock().unwrap(), b"warn\n");
        assert_eq!(tap.tail(), "warn\n");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pump_flushes_the_sink_when_stderr_goes_quiet_and_at_the_end() {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let frames: Frames = Box::pin(futures_util::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|frame| (Ok(frame), receiver)) },
        ));
        let sink = Shared::default();
        let pump = tokio::spawn(pump_stderr(
            frames,
            Arc::new(StderrTap::new(Box::new(sink.clone()))),
        ));
        let line = || LogOutput::StdErr {
            message: Bytes::from_static(b"line\n"),
        };
        sender.send(line()).unwrap();
        tokio::time::sleep(QUIET / 2).await;
        sender.send(line()).unwrap();
        tokio::time::sleep(QUIET / 2).await;
        assert_eq!(sink.flushes(), 0, "stderr is not quiet yet");
        tokio::time::sleep(QUIET).await;
        assert_eq!(sink.flushes(), 1);
        tokio::time::sleep(QUIET * 10).await;
        assert_eq!(sink.flushes(), 1, "nothing new, no flush");
        drop(sender);
        pump.await.unwrap();
        assert_eq!(sink.flushes(), 2);
        assert_eq!(*sink.0.lock().unwrap(), b"line\nline\n");
    }

    #[test]
    fn the_tail_keeps_only_the_last_bytes() {
        let tap = StderrTap::new(Box::new(std::io::sink()));
        tap.write(&vec![b'a'; STDERR_TAIL_BYTES]);
        tap.write(b"the end");
        let tail = tap.tail();
        assert_eq!(tail.len(), STDERR_TAIL_BYTES);
        assert!(tail.ends_with("the end"));
        tap.write(&vec![b'z'; 3 * STDERR_TAIL_BYTES]);
        assert_eq!(tap.tail(), "z".repeat(STDERR_TAIL_BYTES));
    }
}
