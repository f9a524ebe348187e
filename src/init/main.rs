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
//! hotpool-init [--orphan-after SECONDS] IO_DIR PROGRAM [ARGS...]
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
//! With `--orphan-after`, given to hot containers, the function outlives its
//! owner for that long: hotpool holds the writing end of `IO_DIR/owner` while it
//! owns the container, and this program watches the reading end. It keeps a
//! writing end of `stdin` and reading ends of `stdout` and `stderr` itself, so
//! a function whose owner is gone neither reads end-of-file nor dies writing:
//! it waits, warm, for an owner (one that writes blocks once a pipe is full). Once the container has had none for SECONDS, the
//! function is killed (SIGKILL) and the container ends, reported as `signal
//! 9`, so a container whose hotpool is gone for good does not live for ever.
//! The owner pipe is hotpool's, readable by all and writable by hotpool alone:
//! the function cannot pose as its owner.
//!
//! It uses nothing but the standard library (and the C library's `signal`,
//! `kill`, `waitpid` and `poll`, declared here), so the driver can build it with
//! `rustc` alone (see `build.rs`).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn kill(pid: i32, signum: i32) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn poll(fds: *mut PollFd, count: u64, timeout_ms: i32) -> i32;
}

/// `struct pollfd`.
#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

/// `POLLIN`.
const POLLIN: i16 = 1;
/// `O_NONBLOCK` on Linux.
const O_NONBLOCK: i32 = 0o4000;
/// `SIGKILL`.
const SIGKILL: i32 = 9;

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

/// How long the owner pipe is waited on before it is looked at anyway: an
/// owner that went before it ever reopened its end leaves no hang-up to see.
const OWNER_LOOK_EVERY: Duration = Duration::from_secs(60);
/// How often a container with no owner looks for one.
const ORPHAN_LOOK_EVERY: Duration = Duration::from_secs(1);

/// Whether a writer holds the FIFO whose non-blocking reading end is `owner`:
/// a read with no writer left gives end-of-file, with one it would block.
/// Bytes in it (only an owner can write them) are read away.
fn owned(owner: &mut File) -> bool {
    let mut bytes = [0u8; 64];
    match owner.read(&mut bytes) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted,
    }
}

/// Waits until `owner` may have changed: data, a hang-up, or `timeout`.
fn wait_on(owner: &File, timeout: Duration) {
    let mut fds = PollFd {
        fd: owner.as_raw_fd(),
        events: POLLIN,
        revents: 0,
    };
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fds` is one valid pollfd for the call to fill in.
    unsafe { poll(&mut fds, 1, timeout_ms) };
}

/// Watches the owner pipe; once no owner has held it for `after`, kills the
/// function. Blocks in `poll` while an owner holds it: an owned container
/// costs no wake-ups but one a minute.
fn watch_owner(mut owner: File, after: Duration) {
    let mut alone_since: Option<Instant> = None;
    loop {
        if owned(&mut owner) {
            alone_since = None;
            wait_on(&owner, OWNER_LOOK_EVERY);
            continue;
        }
        let since = *alone_since.get_or_insert_with(Instant::now);
        let alone = since.elapsed();
        if alone >= after {
            let pid = FUNCTION.load(Ordering::SeqCst);
            if pid > 0 {
                // SAFETY: kill touches no memory of ours.
                unsafe { kill(pid, SIGKILL) };
            }
            return;
        }
        std::thread::sleep(ORPHAN_LOOK_EVERY.min(after - alone));
    }
}

/// The command line: the orphan timeout, if given, the pipe directory, and the
/// function's program and arguments.
struct Args {
    orphan_after: Option<Duration>,
    io: std::ffi::OsString,
    program: std::ffi::OsString,
    rest: Vec<std::ffi::OsString>,
}

fn parse_args(mut args: impl Iterator<Item = std::ffi::OsString>) -> Option<Args> {
    let mut first = args.next()?;
    let mut orphan_after = None;
    if first == "--orphan-after" {
        let seconds: u64 = args.next()?.to_str()?.parse().ok()?;
        orphan_after = Some(Duration::from_secs(seconds));
        first = args.next()?;
    }
    Some(Args {
        orphan_after,
        io: first,
        program: args.next()?,
        rest: args.collect(),
    })
}

fn main() -> ExitCode {
    let Some(Args {
        orphan_after,
        io,
        program,
        rest: args,
    }) = parse_args(std::env::args_os().skip(1))
    else {
        eprintln!("usage: hotpool-init [--orphan-after SECONDS] IO_DIR PROGRAM [ARGS...]");
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
    // Opened before `ready`: hotpool's one-way ends, opened after it, are
    // then the owner's and its pipes' writers this program sees go.
    let orphan_watch =
        match orphan_after.map(|after| hold_for_orphan(io).map(|owner| (owner, after))) {
            None => None,
            Some(Ok(watch)) => Some(watch),
            Some(Err(message)) => {
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
            if let Some(((owner, held), after)) = orphan_watch {
                std::thread::spawn(move || {
                    // Held until the function is killed, or this program ends.
                    let _held = held;
                    watch_owner(owner, after);
                });
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

/// Opens, for a function that may outlive its owner, the owner pipe's reading
/// end and the ends this program holds so that the function sees no owner go:
/// a writing end of stdin and reading ends of stdout and stderr. All
/// non-blocking (the function's own ends are open: nothing waits) and closed
/// on exec.
fn hold_for_orphan(io: &Path) -> Result<(File, [File; 3]), String> {
    let open = |name: &str, write: bool| {
        OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(O_NONBLOCK)
            .open(io.join(name))
            .map_err(|e| format!("hotpool-init: cannot open {}: {e}", io.join(name).display()))
    };
    Ok((
        open("owner", false)?,
        [
            open("stdin", true)?,
            open("stdout", false)?,
            open("stderr", false)?,
        ],
    ))
}

/// Writes `how value` to the status pipe and gives the code to exit with.
fn report(status: &mut File, how: &str, value: i32, code: i32) -> ExitCode {
    // hotpool may be gone; the exit code still says it.
    let _ = writeln!(status, "{how} {value}");
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}
