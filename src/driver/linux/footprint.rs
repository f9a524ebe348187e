//! What a container holds while it waits: its processes, their memory, and
//! its cgroup's memory, read from `/proc` and the cgroup's own files.
//!
//! A process's resident memory counts the pages it shares (a binary's text, a
//! library) in full; its proportional share (PSS, from `smaps_rollup`) divides
//! each shared page among the processes that map it, so PSS added up over
//! many containers is what they cost together; its anonymous pages (heap,
//! stacks) are its own, what one more such process costs at least, however
//! many others map the same binary. The cgroup's memory
//! (`memory.current` on v2, `memory.usage_in_bytes` on v1) also counts the
//! kernel memory and page cache charged to the container.

use std::path::Path;

use super::cgroup;

/// What one container holds, as read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Footprint {
    /// The processes in its cgroup.
    pub processes: usize,
    /// Their resident memory added up, in bytes; `None` where some process's
    /// `smaps_rollup` could not be read.
    pub rss_bytes: Option<u64>,
    /// Their proportional share of memory added up, in bytes; `None` likewise.
    pub pss_bytes: Option<u64>,
    /// Their anonymous memory added up, in bytes; `None` likewise.
    pub anonymous_bytes: Option<u64>,
    /// What the cgroup charges, in bytes; `None` where it cannot be read.
    pub cgroup_memory_bytes: Option<u64>,
}

impl Footprint {
    /// The footprint of the cgroup that process `pid` belongs to; `None`
    /// where that cgroup or its process list cannot be read.
    pub(crate) fn of_cgroup_of(pid: u32) -> Option<Footprint> {
        let (dir, unified) = cgroup::memory_dir(pid)?;
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        let pids: Vec<&str> = procs.split_whitespace().collect();
        let (mut rss, mut pss, mut anonymous) = (Some(0), Some(0), Some(0));
        for pid in &pids {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok();
            let field = |name| rollup.as_deref().and_then(|text| kib_field(text, name));
            let add = |sum: Option<u64>, kib: Option<u64>| sum.zip(kib).map(|(s, k)| s + k * 1024);
            rss = add(rss, field("Rss:"));
            pss = add(pss, field("Pss:"));
            anonymous = add(anonymous, field("Anonymous:"));
        }
        let usage = if unified {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        Some(Footprint {
            processes: pids.len(),
            rss_bytes: rss,
            pss_bytes: pss,
            anonymous_bytes: anonymous,
            cgroup_memory_bytes: read_number(&dir.join(usage)),
        })
    }
}

/// The kibibytes of line `name` (`Rss:`, `Pss:`) of a `smaps_rollup` text.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_pss_from_a_smaps_rollup_text() {
        let text = "55d0c0a00000-7ffd5b9fe000 ---p 00000000 00:00 0    [rollup]\n\
                    Rss:                2264 kB\nPss:                 871 kB\n\
                    Pss_Anon:            512 kB\nAnonymous:           640 kB\n";
        assert_eq!(kib_field(text, "Rss:"), Some(2264));
        assert_eq!(kib_field(text, "Pss:"), Some(871));
        assert_eq!(kib_field(text, "Anonymous:"), Some(640));
        assert_eq!(kib_field(text, "Swap:"), None);
    }

    #[test]
    fn this_process_is_in_the_footprint_of_its_own_cgroup() {
        // Where the host shows this process's cgroup, it lists this process
        // at least, and its memory is more than nothing.
        if let Some(footprint) = Footprint::of_cgroup_of(std::process::id()) {
            assert!(footprint.processes >= 1, "{footprint:?}");
            if let Some(rss) = footprint.rss_bytes {
                assert!(rss > 0, "{footprint:?}");
            }
        }
    }
}
