//! hotpool's own log output: a bounded queue in front of stderr.
//!
//! Records are formatted where they happen and queued; one thread writes them to
//! stderr. A slow or stuck reader of stderr (a full pipe) then stalls that thread
//! only, never a runtime worker: once [`MAX_QUEUED_BYTES`] wait, more records are
//! dropped, counted in `hotpool_log_dropped_total`, and the thread says how many
//! after the next records it writes. Each record is queued as one line: control
//! characters inside it (a function's text in an error's message, say) are escaped.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tracing_subscriber::fmt::MakeWriter;

/// The most bytes of records that may wait for stderr.
const MAX_QUEUED_BYTES: usize = 1 << 20;

/// The most bytes the writer thread puts in one write.
const MAX_BATCH_BYTES: usize = 64 << 10;

/// The sending side of the queue; a `MakeWriter` for `tracing_subscriber::fmt`.
#[derive(Clone)]
pub(crate) struct LogQueue {
    sender: Sender<Vec<u8>>,
    counts: Arc<Counts>,
    capacity: usize,
}

#[derive(Default)]
struct Counts {
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    /// Records dropped and not yet said.
    dropped: AtomicU64,
    /// The writer thread is writing a batch or a notice.
    writing: AtomicBool,
}

impl LogQueue {
    /// A queue in front of this process's stderr, and its writer thread.
    pub(crate) fn start() -> LogQueue {
        LogQueue::to(std::io::stderr(), MAX_QUEUED_BYTES)
    }

    /// A queue of `capacity` bytes in front of `output`, and its writer thread.
    fn to(output: impl Write + Send + 'static, capacity: usize) -> LogQueue {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let counts = Arc::new(Counts::default());
        let writer_counts = counts.clone();
        std::thread::Builder::new()
            .name("hotpool-log".into())
            .spawn(move || write_out(&receiver, &writer_counts, output))
            .expect("start the log writer thread");
        LogQueue {
            sender,
            counts,
            capacity,
        }
    }

    /// Queues `record`, or drops and counts it if the queue is full. Never blocks.
    fn push(&self, record: &[u8]) {
        let line = one_line(record);
        let size = line.len();
        let before = self.counts.queued.fetch_add(size, Ordering::AcqRel);
        if before + size > self.capacity {
            self.counts.queued.fetch_sub(size, Ordering::AcqRel);
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(hotpool::metrics::LOG_DROPPED_TOTAL).increment(1);
        } else if self.sender.send(line).is_err() {
            self.counts.queued.fetch_sub(size, Ordering::AcqRel);
        }
    }

    /// Waits until every queued record is written and every drop said, at most
    /// `patience`.
    pub(crate) fn drain(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        let busy = |counts: &Counts| {
            counts.dropped.load(Ordering::Acquire) > 0
                || counts.writing.load(Ordering::Acquire)
                || counts.queued.load(Ordering::Acquire) > 0
        };
        while busy(&self.counts) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = &'a LogQueue;

    fn make_writer(&'a self) -> &'a LogQueue {
        self
    }
}

/// `tracing_subscriber::fmt` writes each record with one `write_all`.
impl Write for &LogQueue {
    fn write(&mut self, record: &[u8]) -> std::io::Result<usize> {
        self.push(record);
        Ok(record.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `record` as one line: control characters before its final newline escaped
/// (`\n`, `\r`, `\t`, `\x1b`), so that no text in a record can end it, forge the
/// next one, or steer a terminal.
fn one_line(record: &[u8]) -> Vec<u8> {
    let (text, end) = match record.strip_suffix(b"\n") {
        Some(text) => (text, &b"\n"[..]),
        None => (record, &b""[..]),
    };
    if !text.iter().any(u8::is_ascii_control) {
        return record.to_vec();
    }
    let mut line = Vec::with_capacity(record.len() + 16);
    for &byte in text {
        match byte {
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            b'\t' => line.extend_from_slice(b"\\t"),
            byte if byte.is_ascii_control() => {
                let _ = write!(line, "\\x{byte:02x}");
            }
            byte => line.push(byte),
        }
    }
    line.extend_from_slice(end);
    line
}

/// How long the writer waits for more records before it says drops on their own.
const NOTICE_DELAY: Duration = Duration::from_millis(10);

/// The writer thread: writes queued records to `output` in batches, then says how
/// many were dropped since the last batch; drops with no record after them are
/// said on their own.
fn write_out(receiver: &Receiver<Vec<u8>>, counts: &Counts, mut output: impl Write) {
    let mut batch = Vec::with_capacity(MAX_BATCH_BYTES);
    loop {
        let wait = if counts.dropped.load(Ordering::Acquire) > 0 {
            NOTICE_DELAY
        } else {
            Duration::from_secs(3600)
        };
        let first = match receiver.recv_timeout(wait) {
            Ok(first) => Some(first),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        counts.writing.store(true, Ordering::Release);
        batch.clear();
        if let Some(first) = first {
            batch.extend_from_slice(&first);
            while batch.len() < MAX_BATCH_BYTES {
                let Ok(record) = receiver.try_recv() else {
                    break;
                };
                batch.extend_from_slice(&record);
            }
        }
        let written = batch.len();
        let dropped = counts.dropped.swap(0, Ordering::AcqRel);
        if dropped > 0 {
            let _ = writeln!(
                batch,
                "hotpool: {dropped} log records dropped: stderr was not keeping up"
            );
        }
        // Nowhere to report a failing stderr; the records are gone either way.
        if !batch.is_empty() {
            let _ = output.write_all(&batch).and_then(|()| output.flush());
        }
        counts.queued.fetch_sub(written, Ordering::AcqRel);
        counts.writing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// An output that blocks every write until it is opened, like a pipe nobody
    /// reads; what it lets through is kept.
    #[derive(Clone, Default)]
    struct Gate(Arc<GateState>);

    #[derive(Default)]
    struct GateState {
        /// Whether it is open, and what it let through.
        passed: Mutex<(bool, Vec<u8>)>,
        opened: Condvar,
    }

    impl Gate {
        fn open(&self) {
            self.0.passed.lock().unwrap().0 = true;
            self.0.opened.notify_all();
        }

        fn text(&self) -> String {
            String::from_utf8(self.0.passed.lock().unwrap().1.clone()).unwrap()
        }
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let passed = self.0.passed.lock().unwrap();
            let mut passed = self.0.opened.wait_while(passed, |p| !p.0).unwrap();
            passed.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_are_written_in_order() {
        let output = Gate::default();
        output.open();
        let queue = LogQueue::to(output.clone(), 1 << 20);
        let mut writer = queue.make_writer();
        for i in 0..100 {
            writeln!(writer, "record {i}").unwrap();
        }
        queue.drain(Duration::from_secs(60));
        let expected: String = (0..100).map(|i| format!("record {i}\n")).collect();
        assert_eq!(output.text(), expected);
    }

    #[test]
    fn a_record_is_queued_as_one_line_without_control_characters() {
        assert_eq!(one_line(b"plain record\n"), b"plain record\n");
        assert_eq!(
            one_line(b"error: stderr: a\r\nforged INFO line\x1b[2J\tend\n"),
            b"error: stderr: a\\r\\nforged INFO line\\x1b[2J\\tend\n"
        );
        assert_eq!(one_line(b"no newline\x07"), b"no newline\\x07");
        assert_eq!(one_line("é ü\n".as_bytes()), "é ü\n".as_bytes());
    }

    #[test]
    fn a_stuck_output_never_blocks_a_writer_and_drops_are_said() {
        let output = Gate::default();
        let queue = LogQueue::to(output.clone(), 90);
        // 50 records of 9 bytes against a capacity of 90 and an output that
        // takes nothing: the writes must all return.
        let (done, finished) = std::sync::mpsc::channel();
        let writing = queue.clone();
        std::thread::spawn(move || {
            for i in 0..50 {
                writing.push(format!("record {i:02}").as_bytes());
            }
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("writes to the queue returned while stderr was stuck");
        output.open();
        queue.drain(Duration::from_secs(60));
        // 10 records fit in 90 bytes; the other 40 were dropped and said, in one
        // notice or more (the writer may count some before the gate opens).
        let text = output.text();
        let notice = " log records dropped: stderr was not keeping up\n";
        let mut records = String::new();
        let mut said = 0;
        for piece in text.split_inclusive(notice) {
            match piece.strip_suffix(notice) {
                Some(before) => {
                    let (kept, count) =
                        before.split_at(before.rfind("hotpool: ").expect("a notice"));
                    records.push_str(kept);
                    said += count["hotpool: ".len()..].parse::<u32>().expect("a count");
                }
                None => records.push_str(piece),
            }
        }
        let kept: String = (0..10).map(|i| format!("record {i:02}")).collect();
        assert_eq!((records, said), (kept, 40), "{text}");
    }
}
