//! A container's stderr on its way to the task's sink: the [`StderrTap`] passes
//! it on and keeps its last bytes for `exited` errors, and [`pump`] drains a
//! stream of it (the engine's attach stream, or a direct container's pipe) into
//! the tap all the time, so stderr flows while a hot container sits idle and a
//! log line is written when it is. The sink is flushed once stderr has been
//! quiet for [`QUIET`] and when it ends (a function log then says what it
//! dropped), not after every write.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// How many trailing stderr bytes an `exited` error carries.
pub(crate) const STDERR_TAIL_BYTES: usize = 4096;

/// How long stderr stays quiet before the sink is flushed.
const QUIET: Duration = Duration::from_secs(1);

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

/// Passes every chunk of `chunks` to `tap` until the stream ends or fails
/// (the container stopped), flushing the tap when stderr goes quiet and at the
/// end.
pub(crate) async fn pump<E>(
    mut chunks: impl Stream<Item = Result<Bytes, E>> + Unpin,
    tap: Arc<StderrTap>,
) {
    let mut unflushed = false;
    loop {
        let next = if unflushed {
            match tokio::time::timeout(QUIET, chunks.next()).await {
                Ok(next) => next,
                Err(_quiet) => {
                    tap.flush();
                    unflushed = false;
                    continue;
                }
            }
        } else {
            chunks.next().await
        };
        match next {
            Some(Ok(chunk)) => {
                tap.write(&chunk);
                unflushed = true;
            }
            Some(Err(_)) | None => break,
        }
    }
    tap.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test(start_paused = true)]
    async fn the_pump_flushes_the_sink_when_stderr_goes_quiet_and_at_the_end() {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let chunks = Box::pin(futures_util::stream::unfold(
            receiver,
            |mut receiver| async move {
                receiver
                    .recv()
                    .await
                    .map(|chunk| (Ok::<Bytes, std::io::Error>(chunk), receiver))
            },
        ));
        let sink = Shared::default();
        let pump = tokio::spawn(pump(
            chunks,
            Arc::new(StderrTap::new(Box::new(sink.clone()))),
        ));
        let line = || Bytes::from_static(b"line\n");
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
