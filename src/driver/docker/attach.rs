//! A container's attach streams: stdout as a reader, stderr through a tap.
//!
//! The driver attaches twice: once for stdin and stdout, read by whoever runs the
//! call ([`StdoutReader`], nothing buffered beyond the frame being read), and once
//! for stderr alone, drained all the time by [`pump_stderr`] into the
//! [`StderrTap`] (see `driver/linux/stderr.rs`), which passes it to the task's
//! sink and keeps a tail for `exited` errors. So stderr flows while a hot
//! container sits idle, and a log line is written when it is, not when the next
//! call reads stdout.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bollard::container::LogOutput;
use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, ReadBuf};

pub(crate) use crate::driver::linux::stderr::{self, StderrTap};

/// The attach stream as bollard gives it.
pub(crate) type Frames =
    Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Passes every stderr frame of `frames` to `tap` until the stream ends (the
/// container stopped).
pub(crate) async fn pump_stderr(frames: Frames, tap: Arc<StderrTap>) {
    let stderr = frames.filter_map(|frame| {
        std::future::ready(match frame {
            Ok(LogOutput::StdErr { message }) => Some(Ok(message)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    });
    stderr::pump(Box::pin(stderr), tap).await;
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
    use std::io::Write;
    use std::sync::Mutex;

    use super::*;
    use tokio::io::AsyncReadExt;

    /// A sink that keeps what it gets.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
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
}
