//! A function's stderr as hotpool log records, within limits a function cannot talk
//! its way past.
//!
//! stderr is cut into lines; each line is one record (target `hotpool::function`)
//! tagged with the function and the call, its control characters escaped so that
//! it stays one line and cannot steer a terminal. A line longer than
//! [`MAX_RECORD_BYTES`] is logged up to there, marked `truncated`, and the rest of
//! it is skipped, so a function writing without newlines costs bounded memory and
//! each byte is looked at once. A call may log `log_per_call` bytes of its spec, a
//! container `log_rate` bytes a second (a token bucket); the rest is dropped,
//! counted in `hotpool_function_log_dropped_bytes_total`, and said in one warning
//! record, "N bytes of stderr dropped", when logging resumes, the call changes,
//! stderr goes quiet (the driver flushes the log then), or the container is gone.
//! Each record of a call, those warnings included, also joins that call's entry in
//! the pool's [`CallLogs`], where it can be read back by the call's id; the
//! call's first record opens the entry, knowing how the call ended if it has
//! ([`CurrentCall`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::call_logs::{CallLogs, CallState};

/// The longest record: a longer line is cut here and the rest of it dropped.
pub(crate) const MAX_RECORD_BYTES: usize = 16 * 1024;

/// How long drops may go unsaid while a function keeps writing and nothing passes.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Why stderr bytes were not logged; the `reason` label of the dropped-bytes metric.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The call had logged its `log_per_call` bytes.
    PerCall,
    /// The container was over its `log_rate`.
    Rate,
    /// Past [`MAX_RECORD_BYTES`] in one line.
    TooLong,
}

impl Cut {
    const ALL: [Cut; 3] = [Cut::PerCall, Cut::Rate, Cut::TooLong];

    fn label(self) -> &'static str {
        match self {
            Cut::PerCall => "per_call",
            Cut::Rate => "rate",
            Cut::TooLong => "too_long",
        }
    }
}

/// The bytes a container may log: `rate` a second, in bursts of up to one
/// second's worth.
struct RateLimit {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    /// Refusing until half a burst has come back.
    throttled: bool,
}

impl RateLimit {
    fn new(rate: u64, now: Instant) -> RateLimit {
        RateLimit {
            rate: rate as f64,
            tokens: rate as f64,
            refilled: now,
            throttled: false,
        }
    }

    /// Whether a record of `cost` bytes may pass at `now`. Once it refuses, it
    /// refuses until half a burst has come back, so a steady flood passes and drops
    /// in stretches, each said once, rather than one record in two.
    fn admit(&mut self, cost: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.throttled && self.tokens < self.rate / 2.0 {
            return false;
        }
        self.throttled = self.tokens < cost as f64;
        if !self.throttled {
            self.tokens -= cost as f64;
        }
        !self.throttled
    }
}

/// A function's log limits, shared by its containers' logs so that a change
/// applies to running containers.
#[derive(Debug)]
pub(crate) struct LogLimits {
    per_call: AtomicU64,
    rate: AtomicU64,
}

impl LogLimits {
    pub(crate) fn new(per_call: u64, rate: u64) -> Arc<LogLimits> {
        Arc::new(LogLimits {
            per_call: AtomicU64::new(per_call),
            rate: AtomicU64::new(rate),
        })
    }

    pub(crate) fn set(&self, per_call: u64, rate: u64) {
        self.per_call.store(per_call, Ordering::Relaxed);
        self.rate.store(rate, Ordering::Relaxed);
    }
}

/// The call in a container now, as the pool sets it and the container's
/// stderr log reads it: its id (kept after the call has ended, as stderr may
/// come late), how it ended once it has, whether its log has an entry in the
/// store, and the call before it, with how it ended.
#[derive(Debug, Default)]
pub(crate) struct CurrentCall {
    id: Option<String>,
    ended: Option<CallState>,
    kept: bool,
    previous: Option<(String, CallState)>,
}

impl CurrentCall {
    /// The call `id`, running.
    pub(crate) fn of(id: &str) -> CurrentCall {
        CurrentCall {
            id: Some(id.to_owned()),
            ..CurrentCall::default()
        }
    }

    /// How call `id` stands, if it is this one or the one before.
    fn state_of(&self, id: &str) -> Option<CallState> {
        if self.id.as_deref() == Some(id) {
            return Some(self.ended.unwrap_or(CallState::Running));
        }
        match &self.previous {
            Some((previous, ended)) if previous == id => Some(*ended),
            _ => None,
        }
    }
}

/// Call `id` begins in the container whose call `current` is.
pub(crate) fn begin_call(current: &Mutex<CurrentCall>, id: &str) {
    let mut current = lock(current);
    let previous = current.id.take().zip(current.ended);
    *current = CurrentCall {
        previous,
        ..CurrentCall::of(id)
    };
}

/// Call `id`, the one in `current`, ended at `state`: its log's entry, if it
/// has one, learns so (a call that logged nothing costs the store nothing).
pub(crate) fn end_call(current: &Mutex<CurrentCall>, id: &str, logs: &CallLogs, state: CallState) {
    let kept = {
        let mut current = lock(current);
        if current.id.as_deref() != Some(id) {
            return;
        }
        current.ended = Some(state);
        current.kept
    };
    if kept {
        logs.end(id, state);
    }
}

fn lock(current: &Mutex<CurrentCall>) -> std::sync::MutexGuard<'_, CurrentCall> {
    current.lock().unwrap_or_else(|e| e.into_inner())
}

/// A container's stderr, as log records tagged with the function and the call.
pub(crate) struct StderrLog {
    function: Arc<str>,
    /// The call in the container now (set by the pool).
    current_call: Arc<Mutex<CurrentCall>>,
    /// The call the records are tagged with and the budget counts for.
    call: Option<String>,
    /// Whether `call`'s log has an entry in the store yet.
    call_kept: bool,
    /// Bytes logged for `call`.
    call_bytes: u64,
    limits: Arc<LogLimits>,
    per_call: u64,
    rate: RateLimit,
    /// The line read so far, at most [`MAX_RECORD_BYTES`].
    partial: Vec<u8>,
    /// Skipping the rest of a line that was cut.
    skipping: bool,
    /// Bytes dropped and not said yet, by [`Cut`], and when the first of them was.
    unsaid: [u64; 3],
    unsaid_since: Option<Instant>,
    dropped: [metrics::Counter; 3],
    /// The escaped text of the record being logged (kept to reuse its allocation).
    text: String,
    /// Where each call's records are kept to be read back.
    kept: Arc<CallLogs>,
}

impl StderrLog {
    pub(crate) fn new(
        function: Arc<str>,
        current_call: Arc<Mutex<CurrentCall>>,
        limits: Arc<LogLimits>,
        kept: Arc<CallLogs>,
    ) -> StderrLog {
        let dropped = Cut::ALL.map(|cut| {
            metrics::counter!(
                crate::metrics::FUNCTION_LOG_DROPPED_BYTES_TOTAL,
                "function" => function.clone(),
                "reason" => cut.label()
            )
        });
        // Registered at 0, so a dashboard shows the function before anything drops.
        for counter in &dropped {
            counter.increment(0);
        }
        StderrLog {
            function,
            current_call,
            call: None,
            call_kept: false,
            call_bytes: 0,
            per_call: limits.per_call.load(Ordering::Relaxed),
            rate: RateLimit::new(limits.rate.load(Ordering::Relaxed), Instant::now()),
            limits,
            partial: Vec::new(),
            skipping: false,
            unsaid: [0; 3],
            unsaid_since: None,
            dropped,
            text: String::new(),
            kept,
        }
    }

    /// Takes stderr bytes written at `now`.
    fn feed(&mut self, mut bytes: &[u8], now: Instant) {
        self.per_call = self.limits.per_call.load(Ordering::Relaxed);
        self.rate.rate = self.limits.rate.load(Ordering::Relaxed) as f64;
        self.follow_call();
        while !bytes.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                Some(end) => {
                    self.take(&bytes[..end], true, now);
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.take(bytes, false, now);
                    bytes = &[];
                }
            }
        }
    }

    /// Tags what follows with the call in the container now; a new call gets a new
    /// budget, and what the last one dropped is said first.
    fn follow_call(&mut self) {
        let current = lock(&self.current_call);
        if current.id != self.call {
            let next = current.id.clone();
            drop(current);
            self.say_dropped();
            self.call = next;
            self.call_kept = false;
            self.call_bytes = 0;
        }
    }

    /// Keeps `text` in the log of the call it is tagged with, opening the
    /// call's entry with its first record.
    fn keep(&mut self, text: &str) {
        let Some(call) = &self.call else {
            return;
        };
        if !self.call_kept {
            // Under the call's lock: an end that does not see `kept` set has
            // set `ended` for the entry to open with.
            let mut current = lock(&self.current_call);
            // A call two calls back has ended, how is no longer known: its
            // entry counts as succeeded, the first to go.
            let state = current.state_of(call).unwrap_or(CallState::Succeeded);
            if current.id.as_deref() == Some(call.as_str()) {
                current.kept = true;
            }
            self.kept.open(call, state);
            drop(current);
            self.call_kept = true;
        }
        self.kept.append(call, text);
    }

    /// Adds `piece`, the bytes of one line up to its newline (`ends_line`) or up to
    /// the end of what was written, to the line being read.
    fn take(&mut self, piece: &[u8], ends_line: bool, now: Instant) {
        if self.skipping {
            self.discard(Cut::TooLong, piece.len() as u64, now);
            self.skipping = !ends_line;
            return;
        }
        let room = MAX_RECORD_BYTES - self.partial.len();
        if piece.len() > room {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&piece[..room]);
            self.offer(&line, true, now);
            self.discard(Cut::TooLong, (piece.len() - room) as u64, now);
            self.skipping = !ends_line;
            line.clear();
            self.partial = line;
        } else if !ends_line {
            self.partial.extend_from_slice(piece);
        } else if self.partial.is_empty() {
            self.offer(piece, false, now);
        } else {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(piece);
            self.offer(&line, false, now);
            line.clear();
            self.partial = line;
        }
    }

    /// Logs `line` if the call's budget and the rate allow; drops it otherwise. A
    /// record costs its bytes and one for its newline (or its cut).
    fn offer(&mut self, line: &[u8], truncated: bool, now: Instant) {
        let cost = line.len() as u64 + 1;
        if self.call_bytes.saturating_add(cost) > self.per_call {
            // The rest of the call is dropped, however short.
            self.call_bytes = self.per_call;
            return self.discard(Cut::PerCall, cost, now);
        }
        if !self.rate.admit(cost, now) {
            return self.discard(Cut::Rate, cost, now);
        }
        self.call_bytes += cost;
        self.say_dropped();
        self.log(line, truncated);
    }

    /// Counts `bytes` dropped for `cut`; says them if drops have gone unsaid too long.
    fn discard(&mut self, cut: Cut, bytes: u64, now: Instant) {
        self.unsaid[cut as usize] += bytes;
        self.dropped[cut as usize].increment(bytes);
        let since = *self.unsaid_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= REPORT_EVERY {
            self.say_dropped();
        }
    }

    /// Logs one warning with the bytes dropped since the last one, if any.
    fn say_dropped(&mut self) {
        let [per_call, rate, too_long] = std::mem::take(&mut self.unsaid);
        self.unsaid_since = None;
        let total = per_call + rate + too_long;
        if total == 0 {
            return;
        }
        let message = format!(
            "{total} bytes of stderr dropped (log_per_call {} bytes, log_rate {} bytes/s, lines cut at {MAX_RECORD_BYTES} bytes)",
            self.per_call, self.rate.rate,
        );
        tracing::warn!(
            target: "hotpool::function",
            function = %self.function,
            call_id = %self.call.as_deref().unwrap_or("-"),
            dropped_bytes = total,
            over_call_budget = per_call,
            over_rate = rate,
            lines_too_long = too_long,
            "{message}",
        );
        self.keep(&format!("hotpool: {message}"));
    }

    fn log(&mut self, line: &[u8], truncated: bool) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.text.clear();
        escape_into(&mut self.text, line);
        let call_id = self.call.as_deref().unwrap_or("-");
        if truncated {
            tracing::info!(target: "hotpool::function", function = %self.function, %call_id, truncated, "{}", self.text);
        } else {
            tracing::info!(target: "hotpool::function", function = %self.function, %call_id, "{}", self.text);
        }
        let text = std::mem::take(&mut self.text);
        self.keep(&text);
        self.text = text;
    }
}

impl std::io::Write for StderrLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.feed(bytes, Instant::now());
        Ok(bytes.len())
    }

    /// Says what was dropped; a line without its newline yet stays unlogged.
    fn flush(&mut self) -> std::io::Result<()> {
        self.say_dropped();
        Ok(())
    }
}

impl Drop for StderrLog {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.offer(&rest, false, Instant::now());
        }
        self.say_dropped();
    }
}

/// Appends `bytes` as text: control characters (and bidi overrides) escaped as
/// `\t`, `\r`, `\x1b` or `\u{9b}`, bytes that are not UTF-8 as `\xff`.
fn escape_into(text: &mut String, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\t' => text.push_str("\\t"),
                '\r' => text.push_str("\\r"),
                c if c.is_ascii_control() => {
                    let _ = write!(text, "\\x{:02x}", u32::from(c));
                }
                c if c.is_control() || is_bidi_control(c) => {
                    let _ = write!(text, "\\u{{{:x}}}", u32::from(c));
                }
                c => text.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(text, "\\x{byte:02x}");
        }
    }
}

/// Characters that reorder the text around them on display.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Log output captured from a test's own subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A log of function `f` with these limits, in call `call-1`, and the instant
    /// its rate limit starts from.
    fn stderr_log(per_call: u64, rate: u64) -> (StderrLog, Arc<Mutex<CurrentCall>>, Instant) {
        let call = Arc::new(Mutex::new(CurrentCall::of("call-1")));
        let kept = Arc::new(CallLogs::new(1 << 20, 100));
        let log = StderrLog::new(
            "f".into(),
            call.clone(),
            LogLimits::new(per_call, rate),
            kept,
        );
        let start = log.rate.refilled;
        (log, call, start)
    }

    /// The records `run` logs, one line each, without timestamps or colours.
    fn records(run: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    fn dropped_records(records: &[String]) -> Vec<&String> {
        records
            .iter()
            .filter(|r| r.contains("bytes of stderr dropped"))
            .collect()
    }

    /// `n` lines of 100 bytes each, newline included.
    fn lines(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("line {i:094}\n").into_bytes())
            .collect()
    }

    #[test]
    fn lines_are_records_tagged_with_function_and_call() {
        let out = records(|| {
            let (mut log, call, start) = stderr_log(1 << 20, 1 << 20);
            log.feed(b"first\nsec", start);
            log.feed(b"ond\r\n", start);
            begin_call(&call, "call-2");
            log.feed(b"third\nunfinished", start);
        });
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(out[0].contains("hotpool::function: first function=f call_id=call-1"));
        assert!(out[1].contains(": second function=f call_id=call-1"));
        assert!(out[2].contains(": third function=f call_id=call-2"));
        // What had no newline is logged when the container's stderr ends.
        assert!(out[3].contains(": unfinished function=f call_id=call-2"));
        assert!(dropped_records(&out).is_empty());
    }

    #[test]
    fn control_characters_and_bad_utf8_are_escaped() {
        let mut text = String::new();
        escape_into(
            &mut text,
            "red \x1b[31mR\x1b[0m a\rb\tc\0 \u{9b}2J \u{202e}txt é".as_bytes(),
        );
        text.push_str(" | ");
        escape_into(&mut text, b"bad \xff\xfe end");
        assert_eq!(
            text,
            "red \\x1b[31mR\\x1b[0m a\\rb\\tc\\x00 \\u{9b}2J \\u{202e}txt é | bad \\xff\\xfe end"
        );
        let out = records(|| {
            let (mut log, _, start) = stderr_log(1 << 20, 1 << 20);
            log.feed(b"\x1b[2Jcleared\rover\n", start);
        });
        assert_eq!(out.len(), 1);
        assert!(out[0].contains(": \\x1b[2Jcleared\\rover "), "{out:?}");
        assert!(!out[0].contains(['\x1b', '\r']));
    }

    #[test]
    fn a_call_logs_at_most_its_budget_then_one_dropped_record() {
        let out = records(|| {
            let (mut log, call, start) = stderr_log(1000, 1 << 20);
            // 30 lines of 100 bytes: 10 fit the budget of 1000, 20 are dropped.
            for chunk in lines(30).chunks(333) {
                log.feed(chunk, start);
            }
            log.flush().unwrap();
            // The next call has a budget of its own.
            begin_call(&call, "call-2");
            log.feed(&lines(1), start);
        });
        let logged: Vec<_> = out.iter().filter(|r| r.contains(": line ")).collect();
        assert_eq!(logged.len(), 11, "{out:?}");
        assert!(logged[..10].iter().all(|r| r.contains("call_id=call-1")));
        assert!(logged[10].contains("call_id=call-2"));
        let dropped = dropped_records(&out);
        assert_eq!(dropped.len(), 1, "{out:?}");
        assert!(dropped[0].contains("WARN"));
        assert!(dropped[0].contains("2000 bytes of stderr dropped"));
        assert!(dropped[0].contains("call_id=call-1 dropped_bytes=2000 over_call_budget=2000"));
    }

    #[test]
    fn a_new_call_says_what_the_last_one_dropped_first() {
        let out = records(|| {
            let (mut log, call, start) = stderr_log(100, 1 << 20);
            log.feed(&lines(3), start);
            begin_call(&call, "call-2");
            log.feed(&lines(1), start);
        });
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out[0].contains(": line ") && out[0].contains("call_id=call-1"));
        assert!(
            out[1].contains("200 bytes of stderr dropped") && out[1].contains("call_id=call-1")
        );
        assert!(out[2].contains(": line ") && out[2].contains("call_id=call-2"));
    }

    #[test]
    fn the_rate_limit_drops_until_half_a_burst_is_back() {
        let out = records(|| {
            let (mut log, _, start) = stderr_log(1 << 20, 1000);
            // A burst of 1000 bytes passes, the rest of the flood is dropped.
            log.feed(&lines(25), start);
            // 400 bytes back: still dropping.
            log.feed(&lines(5), start + Duration::from_millis(400));
            // 600 bytes back: what was dropped is said, 6 lines pass, 4 are dropped.
            log.feed(&lines(10), start + Duration::from_millis(600));
        });
        let logged: Vec<_> = out.iter().filter(|r| r.contains(": line ")).collect();
        assert_eq!(logged.len(), 16, "{out:?}");
        assert!(out[10].contains("2000 bytes of stderr dropped"), "{out:?}");
        assert!(out[10].contains("over_rate=2000"));
        // The last 4 are said when the container is gone.
        let dropped = dropped_records(&out);
        assert_eq!(dropped.len(), 2, "{out:?}");
        assert!(dropped[1].contains("400 bytes of stderr dropped"));
    }

    #[test]
    fn a_line_without_newline_is_cut_at_the_record_limit() {
        let (out, partial_len) = {
            let mut partial_len = 0;
            let out = records(|| {
                let (mut log, _, start) = stderr_log(1 << 20, 1 << 20);
                // 100 KB without a newline, a few bytes at a time.
                for _ in 0..10_000 {
                    log.feed(b"0123456789", start);
                    partial_len = partial_len.max(log.partial.len());
                }
                log.feed(b"tail\nnext line\n", start);
                log.flush().unwrap();
            });
            (out, partial_len)
        };
        assert!(partial_len <= MAX_RECORD_BYTES);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out[0].contains(" truncated=true"));
        assert!(out[0].contains(&"0123456789".repeat(MAX_RECORD_BYTES / 10)));
        // The rest of the line, up to its newline, is dropped and said before the next.
        let skipped = 100_000 + "tail".len() - MAX_RECORD_BYTES;
        assert!(
            out[1].contains(&format!("{skipped} bytes of stderr dropped")),
            "{out:?}"
        );
        assert!(out[1].contains(&format!("lines_too_long={skipped}")));
        assert!(out[2].contains(": next line "));
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_whole() {
        let out = records(|| {
            let (mut log, _, start) = stderr_log(1 << 20, 1 << 20);
            let mut line = vec![b'x'; MAX_RECORD_BYTES];
            line.push(b'\n');
            log.feed(&line, start);
        });
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(!out[0].contains("truncated"));
    }

    #[test]
    fn each_call_keeps_its_records_and_drop_notices_to_be_read_back() {
        let (mut log, call, start) = stderr_log(250, 1 << 20);
        let kept = log.kept.clone();
        records(|| {
            log.feed(b"one \x1b[2J\n", start);
            // Over the budget of 250: two lines kept, the rest dropped and said.
            log.feed(&lines(4), start);
            end_call(&call, "call-1", &kept, CallState::Failed);
            begin_call(&call, "call-2");
            log.feed(b"two\n", start);
            // Not kept: no call in the container.
            *call.lock().unwrap() = CurrentCall::default();
            log.feed(b"between calls\n", start);
            // Quiet: no entry.
            begin_call(&call, "call-3");
            end_call(&call, "call-3", &kept, CallState::Succeeded);
        });
        let first = kept.get("call-1").unwrap().text;
        let lines: Vec<_> = first.lines().collect();
        assert_eq!(lines.len(), 4, "{first}");
        assert_eq!(lines[0], "one \\x1b[2J");
        assert!(lines[1].starts_with("line 0") && lines[2].starts_with("line 0"));
        assert!(
            lines[3].starts_with("hotpool: 200 bytes of stderr dropped (log_per_call 250 bytes"),
            "{first}"
        );
        assert_eq!(kept.get("call-1").unwrap().state, CallState::Failed);
        let second = kept.get("call-2").unwrap();
        assert_eq!(
            (second.text.as_str(), second.state),
            ("two\n", CallState::Running)
        );
        assert!(
            kept.get("call-3").is_none(),
            "a call that wrote nothing has no entry"
        );
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn a_record_that_comes_after_its_call_ended_opens_the_entry_knowing_how() {
        let (mut log, call, start) = stderr_log(1 << 20, 1 << 20);
        let kept = log.kept.clone();
        end_call(&call, "call-1", &kept, CallState::Failed);
        // Another call's end changes nothing of this one.
        end_call(&call, "call-0", &kept, CallState::Succeeded);
        records(|| log.feed(b"late\n", start));
        assert_eq!(kept.get("call-1").unwrap().state, CallState::Failed);
        // The next call began before the last lines of this one were read.
        records(|| log.feed(b"first of two\n", start));
        begin_call(&call, "call-2");
        records(|| {
            log.feed(b"two\n", start);
            end_call(&call, "call-2", &kept, CallState::Succeeded);
        });
        assert_eq!(kept.get("call-2").unwrap().state, CallState::Succeeded);
        // A record of call-1 read only now, once call-2 began: still call-1's.
        let mut lagging = StderrLog::new(
            "f".into(),
            call.clone(),
            LogLimits::new(1 << 20, 1 << 20),
            kept.clone(),
        );
        lagging.call = Some("call-1".to_owned());
        lagging.keep("lagging");
        assert_eq!(
            kept.get("call-1").unwrap().text,
            "late\nfirst of two\nlagging\n"
        );
    }

    #[test]
    fn drops_are_said_every_so_often_while_a_flood_goes_on() {
        let out = records(|| {
            let (mut log, _, start) = stderr_log(100, 1 << 20);
            log.feed(&lines(2), start);
            log.feed(&lines(2), start + REPORT_EVERY);
            log.feed(&lines(2), start + REPORT_EVERY + Duration::from_secs(1));
            // Dropped when the container is gone: said then.
        });
        let dropped = dropped_records(&out);
        assert_eq!(dropped.len(), 2, "{out:?}");
        assert!(dropped[0].contains("200 bytes of stderr dropped"));
        assert!(dropped[1].contains("300 bytes of stderr dropped"));
    }
}
