//! A container's cgroup counters, read straight from the kernel's files.
//!
//! The engine samples stats about once a second, too coarse for calls of a few
//! milliseconds. Where the engine runs on this host, the container's cgroup is
//! found from `/proc/<pid>/cgroup` of its init process, and its CPU time is read
//! at the start and end of every call and its memory at the end: the files stay
//! open and each read is one `pread` (about a microsecond). cgroup v1
//! (`cpuacct.usage`, `memory.usage_in_bytes`) and v2 (`cpu.stat`,
//! `memory.current`) are both understood. Where the engine runs elsewhere (a remote
//! `DOCKER_HOST`, a VM as with Docker Desktop), there are no counters.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The open counter files of one container.
pub(crate) struct CgroupCounters {
    cpu: File,
    /// cgroup v2 reports CPU in `cpu.stat` (`usage_usec`); v1 in nanoseconds alone.
    cpu_stat: bool,
    memory: File,
    /// `memory.events` (v2) or `memory.oom_control` (v1): both count OOM kills
    /// on an `oom_kill` line (v1 since Linux 4.13).
    oom: Option<File>,
}

impl CgroupCounters {
    /// Opens the counters of the process `pid`'s cgroup; `None` where they cannot
    /// be found or read.
    pub(crate) fn open(pid: i64) -> Option<CgroupCounters> {
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let (cpu_path, memory_path, unified) = locate(&membership)?;
        let open = |dir: &Path, file: &str| File::open(dir.join(file)).ok();
        if unified {
            Some(CgroupCounters {
                cpu: open(&cpu_path, "cpu.stat")?,
                cpu_stat: true,
                memory: open(&memory_path, "memory.current")?,
                oom: open(&memory_path, "memory.events"),
            })
        } else {
            Some(CgroupCounters {
                cpu: open(&cpu_path, "cpuacct.usage")?,
                cpu_stat: false,
                memory: open(&memory_path, "memory.usage_in_bytes")?,
                oom: open(&memory_path, "memory.oom_control"),
            })
        }
    }

    /// CPU time the cgroup has used.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        let text = read_all(&self.cpu)?;
        if self.cpu_stat {
            let micros = text
                .lines()
                .find_map(|line| line.strip_prefix("usage_usec "))?
                .trim()
                .parse()
                .ok()?;
            Some(Duration::from_micros(micros))
        } else {
            Some(Duration::from_nanos(text.trim().parse().ok()?))
        }
    }

    /// Memory the cgroup uses now, in bytes.
    pub(crate) fn memory_bytes(&self) -> Option<u64> {
        read_all(&self.memory)?.trim().parse().ok()
    }

    /// How many processes of the cgroup the kernel killed for memory, where
    /// the kernel counts them.
    pub(crate) fn oom_kills(&self) -> Option<u64> {
        oom_kills(&read_all(self.oom.as_ref()?)?)
    }
}

/// The directory of process `pid`'s memory controller, and whether it is
/// cgroup v2; `None` where it cannot be read.
pub(crate) fn memory_dir(pid: u32) -> Option<(PathBuf, bool)> {
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (_, memory, unified) = locate(&membership)?;
    Some((memory, unified))
}

/// The directories of the CPU and memory controllers from a `/proc/<pid>/cgroup`
/// text, and whether they are cgroup v2.
fn locate(membership: &str) -> Option<(PathBuf, PathBuf, bool)> {
    let root = Path::new(CGROUP_ROOT);
    let mut cpu = None;
    let mut memory = None;
    let mut unified = None;
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            unified = Some(root.join(relative));
        }
        for controller in controllers.split(',') {
            match controller {
                "cpuacct" => cpu = Some(root.join(controllers).join(relative)),
                "memory" => memory = Some(root.join(controllers).join(relative)),
                _ => {}
            }
        }
    }
    match (cpu, memory, unified) {
        (Some(cpu), Some(memory), _) => Some((cpu, memory, false)),
        (_, _, Some(unified)) => Some((unified.clone(), unified, true)),
        _ => None,
    }
}

/// The `oom_kill` count of a `memory.events` or `memory.oom_control` text.
fn oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))?
        .trim()
        .parse()
        .ok()
}

fn read_all(file: &File) -> Option<String> {
    let mut buffer = [0u8; 512];
    let length = file.read_at(&mut buffer, 0).ok()?;
    String::from_utf8(buffer[..length].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_v1_and_v2_texts() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n";
        assert_eq!(oom_kills(v1), Some(2));
        assert_eq!(oom_kills(v2), Some(1));
        assert_eq!(
            oom_kills("oom_kill_disable 0\nunder_oom 0\n"),
            None,
            "before 4.13"
        );
    }

    #[test]
    fn finds_v1_controllers() {
        let text = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/docker/abc\n";
        let (cpu, memory, unified) = locate(text).unwrap();
        assert_eq!(cpu, Path::new("/sys/fs/cgroup/cpu,cpuacct/docker/abc"));
        assert_eq!(memory, Path::new("/sys/fs/cgroup/memory/docker/abc"));
        assert!(!unified);
    }

    #[test]
    fn finds_the_v2_unified_hierarchy() {
        let (cpu, memory, unified) = locate("0::/system.slice/docker-abc.scope\n").unwrap();
        assert_eq!(
            cpu,
            Path::new("/sys/fs/cgroup/system.slice/docker-abc.scope")
        );
        assert_eq!(cpu, memory);
        assert!(unified);
    }

    #[test]
    fn reads_this_process_counters_where_the_host_has_them() {
        // Whatever cgroup this test runs in, opening must not panic; where the
        // counters exist they read as numbers.
        if let Some(counters) = CgroupCounters::open(i64::from(std::process::id())) {
            assert!(counters.memory_bytes().expect("readable memory") > 0);
            assert!(counters.cpu_time().is_some());
        }
    }
}
