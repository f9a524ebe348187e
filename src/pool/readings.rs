//! A hot container's last counter readings, shared by back-to-back calls.
//!
//! Each read of a cgroup counter is a system call through the kernel's
//! seq_file machinery: a profile of direct calls put three of them (CPU at the
//! start and end of a call, memory at its end) at a third of the pool's own
//! CPU per call. Calls that follow one another closely need fewer:
//! - a call's CPU at start is the previous call's reading at its end, when that
//!   was taken less than [`CPU_REUSE`] ago (the function waited for its next
//!   request in between, so at most that much CPU could move to this call);
//! - the memory at a call's end is read at most once per [`MEMORY_REUSE`]
//!   (memory moves slowly; the figure is an average over calls anyway).

use std::time::Duration;

use tokio::time::Instant;

/// How old a CPU reading may be to serve as the next call's start.
const CPU_REUSE: Duration = Duration::from_millis(1);
/// How old a memory reading may be to serve as a call's.
const MEMORY_REUSE: Duration = Duration::from_millis(100);

/// The last readings of one container's counters, with when they were taken.
#[derive(Default)]
pub(crate) struct Readings {
    cpu: Option<(Instant, Duration)>,
    memory: Option<(Instant, u64)>,
}

impl Readings {
    /// The CPU counter as a call starts at `now`: the last reading if it is
    /// recent enough, else `read`'s.
    pub(crate) fn cpu_at_start(
        &mut self,
        now: Instant,
        read: impl FnOnce() -> Option<Duration>,
    ) -> Option<Duration> {
        match self.cpu {
            Some((at, cpu)) if now.saturating_duration_since(at) < CPU_REUSE => Some(cpu),
            _ => read(),
        }
    }

    /// The CPU counter as a call ends at `now`, always read afresh; kept for
    /// the next call's start.
    pub(crate) fn cpu_at_end(
        &mut self,
        now: Instant,
        read: impl FnOnce() -> Option<Duration>,
    ) -> Option<Duration> {
        let cpu = read();
        self.cpu = cpu.map(|cpu| (now, cpu));
        cpu
    }

    /// The memory in use at `now`: the last reading if it is recent enough,
    /// else `read`'s, kept.
    pub(crate) fn memory(
        &mut self,
        now: Instant,
        read: impl FnOnce() -> Option<u64>,
    ) -> Option<u64> {
        if let Some((at, bytes)) = self.memory
            && now.saturating_duration_since(at) < MEMORY_REUSE
        {
            return Some(bytes);
        }
        let bytes = read();
        self.memory = bytes.map(|bytes| (now, bytes));
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn counting<'a, T: Copy + 'a>(
        reads: &'a Cell<u32>,
        value: T,
    ) -> impl FnOnce() -> Option<T> + 'a {
        move || {
            reads.set(reads.get() + 1);
            Some(value)
        }
    }

    #[test]
    fn a_call_right_after_another_starts_from_its_end_reading() {
        let reads = Cell::new(0);
        let mut readings = Readings::default();
        let t0 = Instant::now();
        let cpu = Duration::from_micros;
        assert_eq!(
            readings.cpu_at_start(t0, counting(&reads, cpu(10))),
            Some(cpu(10))
        );
        assert_eq!(
            readings.cpu_at_end(t0, counting(&reads, cpu(50))),
            Some(cpu(50))
        );
        assert_eq!(reads.get(), 2, "the first call reads at both ends");
        let soon = t0 + Duration::from_micros(200);
        assert_eq!(
            readings.cpu_at_start(soon, counting(&reads, cpu(99))),
            Some(cpu(50))
        );
        assert_eq!(reads.get(), 2, "the next call reuses the end reading");
        let later = t0 + CPU_REUSE * 2;
        assert_eq!(
            readings.cpu_at_start(later, counting(&reads, cpu(70))),
            Some(cpu(70))
        );
        assert_eq!(reads.get(), 3, "after a pause the counter is read again");
    }

    #[test]
    fn memory_is_read_at_most_once_per_interval() {
        let reads = Cell::new(0);
        let mut readings = Readings::default();
        let t0 = Instant::now();
        assert_eq!(readings.memory(t0, counting(&reads, 100)), Some(100));
        let soon = t0 + MEMORY_REUSE / 2;
        assert_eq!(readings.memory(soon, counting(&reads, 200)), Some(100));
        assert_eq!(reads.get(), 1);
        let later = t0 + MEMORY_REUSE;
        assert_eq!(readings.memory(later, counting(&reads, 300)), Some(300));
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn an_unreadable_counter_is_not_kept() {
        let mut readings = Readings::default();
        let t0 = Instant::now();
        assert_eq!(readings.cpu_at_end(t0, || None), None);
        assert_eq!(
            readings.cpu_at_start(t0, || Some(Duration::from_micros(5))),
            Some(Duration::from_micros(5))
        );
        assert_eq!(readings.memory(t0, || None), None);
        assert_eq!(readings.memory(t0, || Some(7)), Some(7));
    }
}
