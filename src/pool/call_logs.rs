//! The stderr of recent calls, kept in memory so that one call's log can be read
//! back by its id ([`super::Pool::call_log`], `GET /calls/{id}/log`).
//!
//! A call's entry opens with the first record its container's stderr log
//! ([`super::function_log`]) logs under it: each record, escaped as in hotpool's
//! own log, and its "N bytes of stderr dropped" notices. So a call that writes
//! nothing to stderr costs the store nothing (and has no log to read back), and
//! neither does a call refused before it ran. The call's end tells the entry how
//! it ended, if it has one; a record that comes after the call ended (stderr is
//! read apart from stdout, so the last ones may) opens it knowing already.
//!
//! The store is bounded twice: by bytes, each entry counted at
//! [`ENTRY_OVERHEAD`] plus its id and the capacity of its text (not just the
//! bytes of its lines), and by entries. When either is full, entries go oldest
//! call first, those of calls that succeeded before any other: a failed call's
//! log (or one still running) is kept in preference. A line that would not fit
//! even once every other entry is gone is dropped, and the entry says that its
//! log was cut.
//!
//! A [`CallLogFollower`] reads one call's log as it grows: what is there, then
//! each record as it comes, until the call has ended (and [`FOLLOW_LINGER`]
//! more, for its last lines), its log is cut or its entry is dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// What each entry costs besides its id and its text: its slot in the map of ids
/// (with the spare room the map keeps), its place in the eviction order, the
/// entry itself and the allocation of its id, rounded up.
pub const ENTRY_OVERHEAD: u64 = 256;

/// The first capacity of an entry's text.
const FIRST_CAPACITY: usize = 256;

/// How long a follower waits for late lines once the call has ended: stderr is
/// read apart from the answer, so its last lines may come a moment after it.
pub const FOLLOW_LINGER: Duration = Duration::from_millis(250);

/// What a call's log says after its text when lines of it did not fit.
const CUT_NOTICE: &str = "hotpool: the rest of this call's log did not fit the call log store\n";

/// Where a call whose log is kept stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallState {
    /// The call has not ended yet.
    Running,
    /// The call answered.
    Succeeded,
    /// The call failed (its caller gets an error), or its caller went away.
    Failed,
}

impl CallState {
    /// `running`, `succeeded` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Running => "running",
            CallState::Succeeded => "succeeded",
            CallState::Failed => "failed",
        }
    }

    /// The eviction class: entries of class 0 go before those of class 1.
    fn class(self) -> usize {
        match self {
            CallState::Succeeded => 0,
            CallState::Running | CallState::Failed => 1,
        }
    }
}

/// One call's log as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallLog {
    /// The call's stderr records, one line each (newline-ended), escaped as in
    /// hotpool's log; empty for a call that wrote nothing (yet).
    pub text: String,
    /// Whether the call still runs, or how it ended.
    pub state: CallState,
    /// Lines of it did not fit the store and were dropped, as were all after
    /// them; `text` ends saying so.
    pub cut: bool,
}

/// The store of recent calls' logs. One per pool; cheap to share behind an `Arc`.
pub struct CallLogs {
    max_bytes: u64,
    max_entries: usize,
    store: Mutex<Store>,
    /// Wakes followers: a log grew, a call ended, an entry went.
    changed: Notify,
    bytes: metrics::Gauge,
    /// Entries dropped to make room, by the call's state then: succeeded,
    /// failed, running.
    evicted: [metrics::Counter; 3],
}

impl std::fmt::Debug for CallLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = self.lock();
        f.debug_struct("CallLogs")
            .field("max_bytes", &self.max_bytes)
            .field("max_entries", &self.max_entries)
            .field("bytes", &store.bytes)
            .field("entries", &store.entries.len())
            .finish()
    }
}

#[derive(Default)]
struct Store {
    entries: HashMap<Arc<str>, Entry>,
    /// The ids of each eviction class, oldest call first.
    order: [BTreeMap<u64, Arc<str>>; 2],
    /// The next entry's place in the order.
    next: u64,
    /// What the entries cost, counted as [`CallLogs`] says.
    bytes: u64,
}

struct Entry {
    seq: u64,
    state: CallState,
    text: String,
    /// Lines were dropped for want of room.
    cut: bool,
}

impl Entry {
    fn cost(&self, id: &str) -> u64 {
        ENTRY_OVERHEAD + id.len() as u64 + self.text.capacity() as u64
    }
}

impl CallLogs {
    /// A store of at most `max_bytes` (entries counted with their overhead) and
    /// `max_entries` calls' logs; either 0 keeps nothing.
    pub fn new(max_bytes: u64, max_entries: usize) -> CallLogs {
        let evicted = [CallState::Succeeded, CallState::Failed, CallState::Running].map(|state| {
            metrics::counter!(crate::metrics::CALL_LOGS_EVICTED_TOTAL, "state" => state.as_str())
        });
        for counter in &evicted {
            counter.increment(0);
        }
        let logs = CallLogs {
            max_bytes,
            max_entries,
            store: Mutex::default(),
            changed: Notify::new(),
            bytes: metrics::gauge!(crate::metrics::CALL_LOGS_BYTES),
            evicted,
        };
        logs.publish(&logs.lock());
        logs
    }

    /// The log of call `id`, while it is kept.
    pub fn get(&self, id: &str) -> Option<CallLog> {
        self.get_from(id, 0)
    }

    /// The log of call `id` from byte `from` of its text on (the length of
    /// what an earlier read gave: a log only grows), while it is kept.
    pub fn get_from(&self, id: &str, from: usize) -> Option<CallLog> {
        let store = self.lock();
        let entry = store.entries.get(id)?;
        let mut text = entry.text.get(from..).unwrap_or_default().to_owned();
        if entry.cut {
            text.push_str(CUT_NOTICE);
        }
        Some(CallLog {
            text,
            state: entry.state,
            cut: entry.cut,
        })
    }

    /// A follower of the log of call `id`, if it is kept.
    pub fn follow(self: &Arc<Self>, id: &str) -> Option<CallLogFollower> {
        self.lock()
            .entries
            .contains_key(id)
            .then(|| CallLogFollower {
                logs: self.clone(),
                id: id.to_owned(),
                from: 0,
                ended: None,
                done: false,
            })
    }

    /// Bytes the entries cost now, overhead included; never above the store's
    /// `max_bytes`.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// How many calls' logs are kept now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no call's log is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens the entry of call `id`, which stands at `state`, making room for
    /// it; one already open is kept as it is.
    pub(crate) fn open(&self, id: &str, state: CallState) {
        let mut store = self.lock();
        if store.entries.contains_key(id) {
            return;
        }
        let cost = ENTRY_OVERHEAD + id.len() as u64;
        if !self.make_room(&mut store, cost, 1, None) {
            return;
        }
        let id: Arc<str> = id.into();
        let seq = store.next;
        store.next += 1;
        store.order[state.class()].insert(seq, id.clone());
        store.entries.insert(
            id,
            Entry {
                seq,
                state,
                text: String::new(),
                cut: false,
            },
        );
        store.bytes += cost;
        self.publish(&store);
    }

    /// Appends one record, `line` (without its newline), to the log of call `id`,
    /// if it is kept; makes room by dropping other entries, or drops the line if
    /// even that is not enough.
    pub(crate) fn append(&self, id: &str, line: &str) {
        let mut store = self.lock();
        let Some(entry) = store.entries.get(id) else {
            return;
        };
        if entry.cut {
            return;
        }
        let (len, capacity) = (entry.text.len(), entry.text.capacity());
        let needed = len + line.len() + 1;
        if needed > capacity {
            // Grow by half at least, as a String would, or to just what is needed
            // if there is no room for more.
            let roomy = needed.max(capacity + capacity / 2).max(FIRST_CAPACITY);
            let target = [roomy, needed].into_iter().find(|&target| {
                self.make_room(&mut store, (target - capacity) as u64, 0, Some(id))
            });
            let entry = store.entries.get_mut(id).expect("the entry is kept");
            let Some(target) = target else {
                entry.cut = true;
                self.changed.notify_waiters();
                return;
            };
            entry.text.reserve_exact(target - len);
            let grown = entry.text.capacity() - capacity;
            store.bytes += grown as u64;
        }
        let entry = store.entries.get_mut(id).expect("the entry is kept");
        entry.text.push_str(line);
        entry.text.push('\n');
        // The allocator may have given more than asked: never keep more than allowed.
        self.make_room(&mut store, 0, 0, Some(id));
        self.publish(&store);
        self.changed.notify_waiters();
    }

    /// Call `id` ended, at `state`: its entry, if it has one, learns so.
    pub(crate) fn end(&self, id: &str, state: CallState) {
        let mut store = self.lock();
        let Some(entry) = store.entries.get_mut(id) else {
            return;
        };
        // What it wrote is all it will write, or nearly: give back the spare room.
        let before = entry.text.capacity();
        entry.text.shrink_to_fit();
        let after = entry.text.capacity();
        let seq = entry.seq;
        let old = entry.state;
        store.bytes -= (before - after) as u64;
        store.set_state(id, seq, old, state);
        self.publish(&store);
        self.changed.notify_waiters();
    }

    /// Drops entries, other than `keep`, until `bytes` more bytes and `entries`
    /// more entries fit; says whether they do.
    fn make_room(&self, store: &mut Store, bytes: u64, entries: usize, keep: Option<&str>) -> bool {
        if bytes > self.max_bytes || entries > self.max_entries {
            return false;
        }
        while store.bytes + bytes > self.max_bytes
            || store.entries.len() + entries > self.max_entries
        {
            let victim = store
                .order
                .iter()
                .flat_map(|class| class.values().take(2))
                .find(|id| Some(&***id) != keep)
                .cloned();
            let Some(victim) = victim else {
                return false;
            };
            if let Some(state) = store.remove(&victim) {
                let index = match state {
                    CallState::Succeeded => 0,
                    CallState::Failed => 1,
                    CallState::Running => 2,
                };
                self.evicted[index].increment(1);
                self.changed.notify_waiters();
            }
        }
        true
    }

    fn publish(&self, store: &Store) {
        self.bytes.set(store.bytes as f64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store {
    /// Removes the entry of `id`; its state, if it was kept.
    fn remove(&mut self, id: &str) -> Option<CallState> {
        let (id, entry) = self.entries.remove_entry(id)?;
        self.order[entry.state.class()].remove(&entry.seq);
        self.bytes -= entry.cost(&id);
        Some(entry.state)
    }

    /// Moves the entry of `id` (at `seq`, in state `old`) to state `new`.
    fn set_state(&mut self, id: &str, seq: u64, old: CallState, new: CallState) {
        if old.class() != new.class()
            && let Some(id) = self.order[old.class()].remove(&seq)
        {
            self.order[new.class()].insert(seq, id);
        }
        if let Some(entry) = self.entries.get_mut(id) {
            entry.state = new;
        }
    }
}

/// Reads one call's log as it grows ([`CallLogs::follow`]).
pub struct CallLogFollower {
    logs: Arc<CallLogs>,
    id: String,
    /// The bytes of its text given so far.
    from: usize,
    /// When it was first seen ended, plus [`FOLLOW_LINGER`].
    ended: Option<Instant>,
    done: bool,
}

impl CallLogFollower {
    /// The text the log gained since the last chunk: at once if there is
    /// some, else as soon as there is. `None` once the call has ended and
    /// [`FOLLOW_LINGER`] passed with nothing new, or the log was cut (its last
    /// chunk says so) or dropped from the store.
    pub async fn next(&mut self) -> Option<String> {
        while !self.done {
            // Listen before reading: a line in between would otherwise be missed.
            let changed = self.logs.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let Some(log) = self.logs.get_from(&self.id, self.from) else {
                break;
            };
            self.from += log.text.len();
            if log.cut {
                self.done = true;
                return Some(log.text);
            }
            if !log.text.is_empty() {
                return Some(log.text);
            }
            if log.state == CallState::Running {
                changed.await;
                continue;
            }
            let linger = *self
                .ended
                .get_or_insert_with(|| Instant::now() + FOLLOW_LINGER);
            if tokio::time::timeout_at(linger, changed).await.is_err() {
                break;
            }
        }
        self.done = true;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: CallState = CallState::Succeeded;
    const FAILED: CallState = CallState::Failed;

    /// A store whose entries cost exactly `ENTRY_OVERHEAD + 1 + text capacity`
    /// (one-letter ids), with room for `entries` empty ones.
    fn store(entries: u64) -> CallLogs {
        CallLogs::new(entries * (ENTRY_OVERHEAD + 1), 1000)
    }

    fn text(logs: &CallLogs, id: &str) -> Option<String> {
        logs.get(id).map(|log| log.text)
    }

    #[test]
    fn a_call_logs_lines_and_its_outcome() {
        let logs = CallLogs::new(1 << 20, 100);
        logs.open("a", CallState::Running);
        assert_eq!(logs.get("a").unwrap().state, CallState::Running);
        assert_eq!(text(&logs, "a").unwrap(), "");
        logs.append("a", "first");
        logs.append("a", "second");
        logs.end("a", OK);
        // A late line still joins it.
        logs.append("a", "late");
        let log = logs.get("a").unwrap();
        assert_eq!(log.text, "first\nsecond\nlate\n");
        assert_eq!(log.state, CallState::Succeeded);
        logs.open("b", CallState::Running);
        logs.end("b", FAILED);
        assert_eq!(logs.get("b").unwrap().state, CallState::Failed);
        assert_eq!(logs.len(), 2);
    }

    #[test]
    fn an_unknown_call_has_no_log_and_its_lines_are_dropped() {
        let logs = CallLogs::new(1 << 20, 100);
        logs.append("nobody", "line");
        assert!(logs.get("nobody").is_none());
        assert!(logs.is_empty());
        assert_eq!(logs.bytes(), 0);
    }

    #[test]
    fn the_oldest_call_goes_first() {
        let logs = store(3);
        for id in ["a", "b", "c"] {
            logs.open(id, CallState::Running);
            logs.end(id, OK);
        }
        logs.open("d", CallState::Running);
        assert!(logs.get("a").is_none(), "the oldest went");
        for id in ["b", "c", "d"] {
            assert!(logs.get(id).is_some(), "{id} is kept");
        }
        assert_eq!(logs.bytes(), 3 * (ENTRY_OVERHEAD + 1));
    }

    #[test]
    fn a_failed_or_running_call_is_kept_before_one_that_succeeded() {
        // One-letter ids: f failed, r running, s succeeded, then n and l.
        let logs = store(3);
        logs.open("f", CallState::Running);
        logs.end("f", FAILED);
        logs.open("r", CallState::Running);
        logs.open("s", CallState::Running);
        logs.end("s", OK);
        // Full: the one that succeeded goes, though it is the newest.
        logs.open("n", CallState::Running);
        assert!(logs.get("s").is_none());
        assert!(logs.get("f").is_some() && logs.get("r").is_some());
        // With no success left, the oldest of the others goes.
        logs.open("l", CallState::Running);
        assert!(logs.get("f").is_none());
        assert!(logs.get("r").is_some() && logs.get("n").is_some());
        logs.end("n", FAILED);
        assert_eq!(logs.get("n").unwrap().state, CallState::Failed);
    }

    #[test]
    fn an_entry_opened_after_its_call_ended_knows_how_and_a_second_open_changes_nothing() {
        let logs = CallLogs::new(1 << 20, 100);
        logs.open("late", CallState::Failed);
        logs.append("late", "after the answer");
        logs.open("late", CallState::Running);
        let log = logs.get("late").unwrap();
        assert_eq!(
            (log.text.as_str(), log.state),
            ("after the answer\n", CallState::Failed)
        );
        assert_eq!(logs.len(), 1);
    }

    #[test]
    fn the_bytes_never_pass_the_bound_and_count_every_entry() {
        let max = 64 * 1024;
        let logs = CallLogs::new(max, 10_000);
        let line = "x".repeat(99);
        for call in 0..500 {
            let id = format!("call-{call:04}");
            logs.open(&id, CallState::Running);
            for _ in 0..20 {
                logs.append(&id, &line);
                assert!(logs.bytes() <= max, "{} > {max}", logs.bytes());
            }
            logs.end(&id, OK);
        }
        let store = logs.lock();
        let counted: u64 = store.entries.iter().map(|(id, e)| e.cost(id)).sum();
        assert_eq!(store.bytes, counted);
        // 2000 bytes of text, their overhead and id: about 28 of 500 kept.
        assert!(
            (20..=32).contains(&store.entries.len()),
            "{}",
            store.entries.len()
        );
        assert!(store.entries.contains_key("call-0499"));
    }

    #[test]
    fn the_number_of_entries_is_bounded_too() {
        let logs = CallLogs::new(1 << 20, 2);
        for id in ["a", "b", "c"] {
            logs.open(id, CallState::Running);
        }
        assert_eq!(logs.len(), 2);
        assert!(logs.get("a").is_none());
    }

    #[test]
    fn a_log_too_large_for_the_store_is_cut_and_says_so() {
        let logs = CallLogs::new(2 * 1024, 100);
        logs.open("old", CallState::Running);
        logs.open("big", CallState::Running);
        let line = "y".repeat(499);
        for _ in 0..10 {
            logs.append("big", &line);
        }
        assert!(logs.bytes() <= 2 * 1024);
        // The other entry went first; then the lines that did not fit.
        assert!(logs.get("old").is_none());
        let text = text(&logs, "big").unwrap();
        assert!(text.starts_with(&format!("{line}\n{line}\n")), "{text}");
        assert!(text.ends_with(CUT_NOTICE), "{text}");
        assert!(text.len() < 2 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_gets_each_line_as_it_comes_until_the_call_has_ended() {
        let logs = Arc::new(CallLogs::new(1 << 20, 100));
        assert!(
            logs.follow("a").is_none(),
            "an unknown call has nothing to follow"
        );
        logs.open("a", CallState::Running);
        logs.append("a", "before");
        let mut follower = logs.follow("a").unwrap();
        assert_eq!(follower.next().await.as_deref(), Some("before\n"));
        let writer = {
            let logs = logs.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                logs.append("a", "during");
                tokio::time::sleep(Duration::from_secs(1)).await;
                logs.end("a", OK);
                tokio::time::sleep(FOLLOW_LINGER / 2).await;
                logs.append("a", "late");
            })
        };
        assert_eq!(follower.next().await.as_deref(), Some("during\n"));
        assert_eq!(follower.next().await.as_deref(), Some("late\n"));
        // Ended, and nothing more within the linger.
        assert_eq!(follower.next().await, None);
        assert_eq!(follower.next().await, None);
        writer.await.unwrap();
        assert_eq!(logs.get("a").unwrap().text, "before\nduring\nlate\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_ends_when_its_log_is_cut_or_dropped() {
        // Room for one entry with 256 bytes of text and a little more.
        let logs = Arc::new(CallLogs::new(ENTRY_OVERHEAD + 1 + 256 + 40, 100));
        logs.open("a", CallState::Running);
        let mut follower = logs.follow("a").unwrap();
        logs.append("a", &"x".repeat(99));
        assert_eq!(follower.next().await.map(|t| t.len()), Some(100));
        // The third line of 100 bytes does not fit.
        logs.append("a", &"y".repeat(99));
        logs.append("a", &"z".repeat(99));
        let rest = follower.next().await.unwrap();
        assert!(rest.starts_with(&"y".repeat(99)), "{rest}");
        assert!(rest.ends_with(CUT_NOTICE), "{rest}");
        assert_eq!(follower.next().await, None);

        let logs = Arc::new(store(2));
        logs.open("b", CallState::Running);
        let mut dropped = logs.follow("b").unwrap();
        let evicting = {
            let logs = logs.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                // Room for two: "b", the oldest, goes, though it still runs.
                logs.open("c", CallState::Running);
                logs.open("d", CallState::Running);
            })
        };
        let ended = tokio::time::timeout(Duration::from_secs(10), dropped.next()).await;
        assert_eq!(ended, Ok(None), "the follower ends when its log goes");
        evicting.await.unwrap();
        assert!(logs.get("b").is_none());
    }

    #[test]
    fn a_store_of_no_bytes_keeps_nothing() {
        let logs = CallLogs::new(0, 100);
        logs.open("a", CallState::Running);
        logs.append("a", "line");
        assert!(logs.get("a").is_none());
        assert_eq!(logs.bytes(), 0);
    }
}
