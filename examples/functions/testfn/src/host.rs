//! Hot-mode commands that probe what the host lets a function do, so tests can
//! check its containment from the inside:
//!
//! ```text
//! !write-tmp BYTES  write BYTES into a file in /tmp: "wrote N: ok" or "wrote N: <error>"
//! !write-root       write a file in /: "ok" or the error
//! !files N          create N empty files in /tmp: "created N: ok" or "created N: <error>"
//! !id               the process's "uid:gid"
//! !nofile           the open-file limit, "soft hard"
//! !cpu-quota        the cgroup's CPU quota and period in microseconds, "50000 100000"
//! !getenv NAME      the variable's value, or "<unset>"
//! !tamper           try to replace the direct transport's stdout pipe and to
//!                   overwrite its init: "unlink: <outcome>; init: <outcome>"
//! !read PATH        the file's text, its lines joined by " | ", or the error
//! !refused          try system calls a contained function must not make (mount,
//!                   unshare, keyctl, bpf, perf_event_open, ptrace) and say how
//!                   each ended: "mount: <outcome>; unshare: <outcome>; ..."
//! ```
//!
//! What a command writes it removes again before answering, so the container stays
//! usable for the next call.

use std::fs::{self, File};
use std::io::{self, Write};

/// Whether `name` is one of these commands.
pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "write-tmp"
            | "write-root"
            | "files"
            | "id"
            | "nofile"
            | "cpu-quota"
            | "getenv"
            | "tamper"
            | "read"
            | "refused"
    )
}

/// Runs the command `name` with its argument text `rest`; returns the answer.
pub fn run(name: &str, rest: &str) -> Vec<u8> {
    let rest = rest.trim();
    let answer = match name {
        "write-tmp" => write_tmp(rest.parse().unwrap_or(0)),
        "write-root" => match write_file("/hotpool-write-root", b"x") {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        },
        "files" => files(rest.parse().unwrap_or(0)),
        // SAFETY: getuid and getgid have no preconditions.
        "id" => unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) },
        "nofile" => nofile(),
        "tamper" => {
            let outcome = |result: io::Result<()>| match result {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.to_string(),
            };
            let unlink = outcome(fs::remove_file("/.hotpool/io/stdout"));
            let init = outcome(
                fs::OpenOptions::new()
                    .write(true)
                    .open("/.hotpool/init")
                    .map(drop),
            );
            format!("unlink: {unlink}; init: {init}")
        }
        "cpu-quota" => cpu_quota(),
        "getenv" => std::env::var(rest).unwrap_or_else(|_| "<unset>".to_owned()),
        "read" => match fs::read_to_string(rest) {
            Ok(text) => text.lines().map(str::trim).collect::<Vec<_>>().join(" | "),
            Err(e) => e.to_string(),
        },
        "refused" => refused(),
        other => format!("unknown host command {other:?}"),
    };
    answer.into_bytes()
}

/// Writes `bytes` into /tmp in 64 KiB chunks, stopping at the first error.
fn write_tmp(bytes: u64) -> String {
    const PATH: &str = "/tmp/hotpool-write-tmp";
    let chunk = vec![0x5a_u8; 64 << 10];
    let mut written = 0u64;
    let outcome = File::create(PATH).and_then(|mut file| {
        while written < bytes {
            let len = chunk
                .len()
                .min(usize::try_from(bytes - written).unwrap_or(usize::MAX));
            match file.write(&chunk[..len])? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => written += n as u64,
            }
        }
        file.flush()
    });
    let _ = fs::remove_file(PATH);
    format!("wrote {written}: {}", describe(outcome))
}

/// Creates `count` empty files in /tmp, stopping at the first error.
fn files(count: u64) -> String {
    let path = |index: u64| format!("/tmp/hotpool-file-{index}");
    let mut created = 0u64;
    let mut outcome = Ok(());
    while created < count {
        if let Err(e) = File::create(path(created)) {
            outcome = Err(e);
            break;
        }
        created += 1;
    }
    for index in 0..created {
        let _ = fs::remove_file(path(index));
    }
    format!("created {created}: {}", describe(outcome))
}

fn write_file(path: &str, data: &[u8]) -> io::Result<()> {
    fs::write(path, data)?;
    fs::remove_file(path)
}

fn describe(outcome: io::Result<()>) -> String {
    match outcome {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    }
}

fn nofile() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return io::Error::last_os_error().to_string();
    }
    format!("{} {}", limit.rlim_cur, limit.rlim_max)
}

/// The quota and period from cgroup v2's `cpu.max`, else v1's CFS files.
fn cpu_quota() -> String {
    if let Ok(max) = fs::read_to_string("/sys/fs/cgroup/cpu.max") {
        return max.trim().to_owned();
    }
    let read = |file: &str| {
        fs::read_to_string(format!("/sys/fs/cgroup/cpu/{file}"))
            .map(|text| text.trim().to_owned())
            .unwrap_or_else(|e| e.to_string())
    };
    format!("{} {}", read("cpu.cfs_quota_us"), read("cpu.cfs_period_us"))
}

/// Tries each system call a contained function must not make; says how each
/// ended ("ok", or the error).
fn refused() -> String {
    /// "ok", or the error of a call that returned -1.
    fn outcome(result: libc::c_long) -> String {
        if result < 0 {
            io::Error::last_os_error().to_string()
        } else {
            "ok".to_owned()
        }
    }
    let null = std::ptr::null::<u8>();
    // SAFETY: each call gets valid C strings or null pointers; whatever
    // succeeds is undone by the container's end.
    let calls = unsafe {
        [
            (
                "mount",
                outcome(libc::syscall(
                    libc::SYS_mount,
                    c"none".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    null,
                )),
            ),
            (
                "unshare",
                outcome(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)),
            ),
            // KEYCTL_GET_KEYRING_ID of the session keyring.
            ("keyctl", outcome(libc::syscall(libc::SYS_keyctl, 0, -3, 0))),
            ("bpf", outcome(libc::syscall(libc::SYS_bpf, 0, null, 0))),
            (
                "perf_event_open",
                outcome(libc::syscall(libc::SYS_perf_event_open, null, 0, -1, -1, 0)),
            ),
            (
                "ptrace",
                outcome(libc::syscall(
                    libc::SYS_ptrace,
                    libc::PTRACE_TRACEME,
                    0,
                    0,
                    0,
                )),
            ),
        ]
    };
    calls
        .iter()
        .map(|(name, outcome)| format!("{name}: {outcome}"))
        .collect::<Vec<_>>()
        .join("; ")
}
