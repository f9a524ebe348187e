//! `hotpool-init`: starts a function inside its container with hotpool's pipes
//! as its stdin, stdout and stderr, and reports how it ended.
//!
//! hotpool bind-mounts this program (built static, so it runs in images `FROM
//! scratch`) and a directory of named pipes into each container of a `direct`
//! function, and makes it the container's command: under Docker's own init on
//! Docker, as PID 1 itself on containerd. So it does an init's work too: it
//! reaps every child that ends (orphans are handed to PID 1), and passes
//! SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on to the function
//! (PID 1 gets no signal it has no handler for).
//!
//! ```text
//! hotpool-init IO_DIR PROGRAM [ARGS...]
//! ```
//!
//! It opens `IO_DIR/stdin` for reading and `IO_DIR/stdout`, `IO_DIR/stderr`
//! and `IO_DIR/status` for writing, says `ready` on `status`, starts `PROGRAM`
//! (looked up on `PATH`)
//! with the first three as its stdin, stdout and stderr, and keeps neither stdin
//! nor stdout open itself: the function's bytes go straight between it and
//! hotpool. When
//! the function ends, one line goes to `IO_DIR/status` at once, `exit CODE` or
//! `signal NUMBER`, and hotpool-init exits likewise (128 + the signal). A
//! program that cannot be started is reported on stderr and as `exit 127`.
//!
//! It uses nothing but the standard library (and the C library's `signal`,
//! `kill` and `waitpid`, declared here), so the driver can build it with
//! `rustc` alone (see `build.rs`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn kill(pid: i32, signum: i32) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
}

/// The signals passed on to the function: SIGHUP, SIGINT, SIGQUIT, SIGUSR1,
/// SIGUSR2, SIGTERM.
const FORWARDED: [i32; 6] = [1, 2, 3, 10, 12, 15];
/// `errno` when a call was interrupted by a signal.
const EINTR: i32 = 4;

/// The function's pid, once it runs.
static FUNCTION: AtomicI32 = AtomicI32::new(0);
/// A signal that came before the function ran, to pass on once it does.
static PENDING: AtomicI32 = AtomicI32::new(0);

/// Passes a signal on to the function (only async-signal-safe work here).
extern "C" fn forward(signum: i32) {
    let pid = FUNCTION.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe and touches no memory of ours.
        unsafe { kill(pid, signum) };
    } else {
        PENDING.store(signum, Ordering::SeqCst);
    }
}

/// Waits for the process `pid` to end, reaping every other child that ends
/// meanwhile.
fn reap_until(pid: i32) -> Result<ExitStatus, String> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid place for waitpid to write to.
        let reaped = unsafe { waitpid(-1, &mut status, 0) };
        if reaped == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        if reaped < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(EINTR) {
                return Err(format!("waiting for the function: {error}"));
            }
        }
    }
}

/// The exit code of a program that could not be started, as shells use it.
const CANNOT_RUN: u8 = 127;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(io), Some(program)) = (args.next(), args.next()) else {
        eprintln!("usage: hotpool-init IO_DIR PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let io = Path::new(&io);
    let open = |name: &str, write: bool| {
        OpenOptions::new()
            .read(!write)
            .write(write)
            .open(io.join(name))
            .map_err(|e| format!("hotpool-init: cannot open {}: {e}", io.join(name).display()))
    };
    let pipes = (|| {
        Ok::<_, String>((
            open("stdin", false)?,
            open("stdout", true)?,
            open("stderr", true)?,
            open("status", true)?,
        ))
    })();
    let (stdin, stdout, mut stderr, mut status) = match pipes {
        Ok(pipes) => pipes,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(CANNOT_RUN);
        }
    };
    // hotpool waits for this before it takes its own ends one-way.
    if writeln!(status, "ready").is_err() {
        return ExitCode::from(CANNOT_RUN);
    }
    let stderr_for_child = match stderr.try_clone() {
        Ok(file) => file,
        Err(e) => {
            eprintln!("hotpool-init: cannot share stderr: {e}");
            return ExitCode::from(CANNOT_RUN);
        }
    };
    for signum in FORWARDED {
        // SAFETY: `forward` is an `extern "C" fn(i32)`, as a handler must be.
        unsafe { signal(signum, forward as extern "C" fn(i32) as usize) };
    }
    let spawned = Command::new(&program)
        .args(args)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr_for_child))
        .spawn();
    // The command, and with it this process's ends of stdin and stdout, is gone
    // here: only the function holds them.
    let ended = match spawned {
        Ok(child) => {
            let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
            FUNCTION.store(pid, Ordering::SeqCst);
            let early = PENDING.swap(0, Ordering::SeqCst);
            if early != 0 {
                // SAFETY: kill touches no memory of ours.
                unsafe { kill(pid, early) };
            }
            reap_until(pid)
        }
        Err(e) => Err(format!("cannot start {}: {e}", program.to_string_lossy())),
    };
    match ended {
        Ok(ended) => match (ended.code(), ended.signal()) {
            (Some(code), _) => report(&mut status, "exit", code, code),
            (None, Some(signal)) => report(&mut status, "signal", signal, 128 + signal),
            (None, None) => report(&mut status, "exit", 1, 1),
        },
        Err(message) => {
            let _ = writeln!(stderr, "hotpool-init: {message}");
            drop(stderr);
            report(
                &mut status,
                "exit",
                i32::from(CANNOT_RUN),
                i32::from(CANNOT_RUN),
            )
        }
    }
}

/// Writes `how value` to the status pipe and gives the code to exit with.
fn report(status: &mut File, how: &str, value: i32, code: i32) -> ExitCode {
    // hotpool may be gone; the exit code still says it.
    let _ = writeln!(status, "{how} {value}");
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}
