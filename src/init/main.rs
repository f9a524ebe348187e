//! `hotpool-init`: starts a function inside its container with hotpool's pipes
//! as its stdin, stdout and stderr, and reports how it ended.
//!
//! hotpool bind-mounts this program (built static, so it runs in images `FROM
//! scratch`) and a directory of named pipes into each container of a `direct`
//! function, and makes it the container's command under Docker's own init:
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
//! It uses nothing but the standard library, so the driver can build it with
//! `rustc` alone (see `build.rs`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

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
    let spawned = Command::new(&program)
        .args(args)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr_for_child))
        .spawn();
    // The command, and with it this process's ends of stdin and stdout, is gone
    // here: only the function holds them.
    let ended = match spawned {
        Ok(mut child) => child
            .wait()
            .map_err(|e| format!("waiting for the function: {e}")),
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
