//! The test function: one static binary whose behaviour is chosen by its arguments.
//!
//! hotpool's integration tests and its demo build this binary statically, put it in
//! an image `FROM scratch` and run it through the real engine. Each mode exercises one
//! thing a function can do to the pool: answer, fail, run out of memory, hang, talk on
//! stderr, kill itself, or break the framing of a hot format.
//!
//! Cold modes (one request on stdin until EOF, the response on stdout until exit):
//!
//! ```text
//! echo             copy stdin to stdout
//! exit N [MSG]     write MSG (default "exiting with N") to stderr, exit with code N
//! oom              allocate and touch memory until the kernel kills the process
//! sleep SECS       sleep, then echo
//! stderr MSG       write MSG to stderr, then echo
//! kill-self        send SIGKILL to itself
//! spin SECS        burn one CPU and hold 32 MiB for SECS seconds, then echo
//! flood            write to stdout without end
//! close-stdout     close stdout and sleep ten minutes
//! fork-echo        start a child that holds the pipes (see `late-writer`), then echo
//! ```
//!
//! Children (started by the `fork` commands, holding their parent's stdin, stdout
//! and stderr):
//!
//! ```text
//! linger           sleep ten minutes, reading and writing nothing
//! late-writer      from one second on, write `late` lines to stdout without end
//! ```
//!
//! Hot modes (many requests over one stdin/stdout):
//!
//! ```text
//! line             one request line in, one response line out
//! http             HTTP/1.1 requests in, HTTP/1.1 responses out (Content-Length
//!                  bodies, the request's Hotpool-Call-Id echoed, and also as
//!                  X-Echo-Call-Id)
//! ```
//!
//! A hot mode followed by `--hold MIB` first touches MIB MiB and holds them for
//! the container's life, as a function of that size does (`hotpool replay`'s
//! live mode gives each container its trace function's memory so).
//!
//! In hot modes a request whose body starts with `!` is a command instead of data:
//! `!exit N`, `!oom`, `!kill-self`, `!sleep MS`, `!stderr MSG` (then echo MSG),
//! `!garbage` (write bytes that break the framing), `!spin MS`, `!whoami` (answer
//! the container's hostname, which the engine sets to its id), `!flood` (write to
//! stdout without end), `!late MS MSG` (answer MSG, then the same answer again MS
//! milliseconds later, unasked), `!late-unowned MSG` (answer MSG, then the
//! same answer again, unasked, once no owner holds the direct transport's owner
//! pipe: as its owner lets it go), `!exit-unowned` (answer `watching`, then
//! exit with code 3 once no owner holds the owner pipe), `!fork` (start a `linger` child, then answer
//! `forked`), `!fork-exit N` (start a `linger` child, then exit with code N),
//! `!fork-late-exit N` (start a `late-writer` child, then exit with code N),
//! `!close-stdout` (close stdout and sleep, never answering), `!close-stdout-exit
//! MS N` (close stdout, then exit with code N MS milliseconds later),
//! `!close-all` (close stdin, stdout and stderr and sleep), `!status-flood` and
//! `!status-lie` (write endless bytes, or a false `exit 0`, to the direct
//! transport's status pipe), `!owner-grab` (try to open the direct transport's
//! owner pipe for writing, as its owner does: answer `grabbed` or the error). `http` only: `!upgrade` (answer `101 Switching
//! Protocols`), `!hop-by-hop` (answer with hop-by-hop headers besides `X-Kept`),
//! and streams with a chunked body (`Content-Type: text/event-stream`):
//! `!stream N MS [SIZE]` (N chunks, `data: I` events or SIZE bytes each, each
//! after MS milliseconds), `!stream-forever` (64 KiB chunks without end),
//! `!stream-stall` (one chunk, then silence), `!stream-stall-header` (a chunk's
//! size line, then silence), `!stream-lie` (a chunk longer
//! than its size says), `!stream-twice` (a whole stream, then a second
//! response in the same write). A chunked request (a body streamed in) is read
//! a chunk at a time and answered with its length and FNV-1a hash, `bytes=N
//! fnv=HEX`, or with `X-Echo-Stream` in the request, streamed back chunk by
//! chunk as it is read; with `X-Upload: ignore` answered at once and never
//! read, with `X-Upload: exit` met by an exit with code 5.
//! Anything else is echoed.

mod host;

mod logs;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("echo");
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match mode {
        "echo" => echo(),
        "exit" => {
            let code: i32 = arg(1).parse().unwrap_or(1);
            let message = args
                .get(2)
                .cloned()
                .unwrap_or(format!("exiting with {code}"));
            eprintln!("{message}");
            std::process::exit(code);
        }
        "oom" => oom(),
        "sleep" => {
            std::thread::sleep(Duration::from_secs_f64(arg(1).parse().unwrap_or(1.0)));
            echo();
        }
        "stderr" => {
            eprintln!("{}", arg(1));
            echo();
        }
        "kill-self" => kill_self(),
        "spin" => {
            spin(Duration::from_secs_f64(arg(1).parse().unwrap_or(1.0)));
            echo();
        }
        "flood" => flood(),
        "close-stdout" => close_and_sleep(&[1]),
        "fork-echo" => {
            child("late-writer");
            echo();
        }
        "linger" => std::thread::sleep(TEN_MINUTES),
        "late-writer" => {
            std::thread::sleep(Duration::from_secs(1));
            while io::stdout().write_all(b"late\n").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        "line" | "http" => {
            let held = match (arg(1), arg(2).parse::<usize>()) {
                ("--hold", Ok(mib)) => vec![0x5au8; mib << 20],
                ("", _) => Vec::new(),
                _ => {
                    eprintln!("hotpool-testfn: {mode} takes no argument but --hold MIB");
                    std::process::exit(64);
                }
            };
            if mode == "line" {
                serve_lines();
            } else {
                serve_http();
            }
            drop(std::hint::black_box(held));
        }
        other => {
            eprintln!("hotpool-testfn: unknown mode {other:?}");
            std::process::exit(64);
        }
    }
}

fn echo() {
    let mut out = io::stdout().lock();
    io::copy(&mut io::stdin().lock(), &mut out).expect("copy stdin to stdout");
    out.flush().expect("flush stdout");
}

/// Touches 1 MiB pages until the memory limit kills the process.
fn oom() -> ! {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![0x5a; 1 << 20]);
    }
}

fn kill_self() -> ! {
    // SAFETY: getpid and kill have no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL cannot be caught")
}

/// Burns CPU for `how_long` while holding 32 MiB, so the engine's stats show both.
fn spin(how_long: Duration) {
    let held = vec![1u8; 32 << 20];
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < how_long {
        for &b in held.iter().step_by(4096) {
            x = x.wrapping_mul(31).wrapping_add(u64::from(b));
        }
    }
    std::hint::black_box(x);
}

/// Writes to stdout without end, until the pipe breaks.
fn flood() -> ! {
    let chunk = vec![b'x'; 64 << 10];
    let mut out = io::stdout().lock();
    while out.write_all(&chunk).is_ok() {}
    std::process::exit(1)
}

/// Writes `bytes` to stdout and flushes, holding the lock so that answers written
/// by two threads never interleave.
fn write_out(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    out.write_all(bytes).expect("write");
    out.flush().expect("flush");
}

/// When a command that answers twice answers again.
enum Again {
    After(Duration),
    /// Once no owner holds the container ([`when_unowned`]).
    Unowned,
}

/// `late MS MSG` or `late-unowned MSG`: when, and the answer of a command that
/// answers twice.
fn late_answer(command: &[u8]) -> Option<(Again, Vec<u8>)> {
    if let Some(answer) = command.strip_prefix(b"late-unowned ") {
        return Some((Again::Unowned, answer.to_vec()));
    }
    let text = std::str::from_utf8(command.strip_prefix(b"late ")?).ok()?;
    let (ms, answer) = text.split_once(' ').unwrap_or((text, ""));
    Some((
        Again::After(Duration::from_millis(ms.parse().ok()?)),
        answer.as_bytes().to_vec(),
    ))
}

/// Writes `message` again `when` it says, from another thread, as if a call
/// were still answering while the next one runs. Gives `answer`, or why the
/// owner pipe cannot be watched.
fn answer_again_later(when: Again, message: Vec<u8>, answer: Vec<u8>) -> Vec<u8> {
    match when {
        Again::After(delay) => {
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                write_out(&message);
            });
            answer
        }
        Again::Unowned => match when_unowned(move || write_out(&message)) {
            Ok(()) => answer,
            Err(e) => e.to_string().into_bytes(),
        },
    }
}

/// Runs `then` on a thread of its own once no owner holds the direct
/// transport's owner pipe (it is looked at every millisecond: an owner lets
/// go and the next one takes over within milliseconds).
fn when_unowned(then: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let mut owner = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/.hotpool/io/owner")?;
    std::thread::spawn(move || {
        let mut bytes = [0u8; 64];
        loop {
            match owner.read(&mut bytes) {
                // End-of-file: no writer, so no owner, holds it.
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        then();
    });
    Ok(())
}

/// Runs a hot-mode command (the body after `!`); returns the bytes to answer with.
fn command(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let (name, rest) = text.split_once(' ').unwrap_or((&text, ""));
    match name {
        "exit" => {
            let code = rest.trim().parse().unwrap_or(1);
            eprintln!("exiting with {code}");
            std::process::exit(code);
        }
        "oom" => oom(),
        "kill-self" => kill_self(),
        "flood" => flood(),
        "fork" => {
            child("linger");
            b"forked".to_vec()
        }
        "fork-exit" => {
            child("linger");
            std::process::exit(rest.trim().parse().unwrap_or(1));
        }
        "fork-late-exit" => {
            child("late-writer");
            std::process::exit(rest.trim().parse().unwrap_or(1));
        }
        "status-flood" => {
            // The direct transport's status pipe, written without end.
            match std::fs::OpenOptions::new()
                .write(true)
                .open("/.hotpool/io/status")
            {
                Ok(mut status) => loop {
                    if status.write_all(&[b'x'; 4096]).is_err() {
                        break b"the status pipe closed".to_vec();
                    }
                },
                Err(e) => e.to_string().into_bytes(),
            }
        }
        "owner-grab" => {
            // Posing as the container's owner would keep it alive for ever.
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open("/.hotpool/io/owner")
            {
                Ok(_) => b"grabbed".to_vec(),
                Err(e) => e.to_string().into_bytes(),
            }
        }
        "status-lie" => {
            // Claims on the status pipe that the function exited cleanly.
            match std::fs::OpenOptions::new()
                .write(true)
                .open("/.hotpool/io/status")
            {
                Ok(mut status) => {
                    let _ = status.write_all(b"exit 0\n");
                    b"lied".to_vec()
                }
                Err(e) => e.to_string().into_bytes(),
            }
        }
        "exit-unowned" => match when_unowned(|| std::process::exit(3)) {
            Ok(()) => b"watching".to_vec(),
            Err(e) => e.to_string().into_bytes(),
        },
        "close-stdout" => close_and_sleep(&[1]),
        "close-stdout-exit" => {
            let (ms, code) = rest.split_once(' ').unwrap_or((rest, ""));
            close(&[1]);
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            std::process::exit(code.trim().parse().unwrap_or(1));
        }
        "close-all" => close_and_sleep(&[0, 1, 2]),
        "sleep" => {
            std::thread::sleep(Duration::from_millis(rest.trim().parse().unwrap_or(1000)));
            b"slept".to_vec()
        }
        "spin" => {
            spin(Duration::from_millis(rest.trim().parse().unwrap_or(1000)));
            b"spun".to_vec()
        }
        "stderr" => {
            eprintln!("{rest}");
            rest.as_bytes().to_vec()
        }
        name if host::handles(name) => host::run(name, rest),
        // The kernel's host name: Docker also writes it to `/etc/hostname`,
        // containerd (hotpool writing the spec) sets it alone.
        "whoami" => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .as_bytes()
            .to_vec(),
        name if logs::handles(name) => logs::run(name, rest),
        _ => body.to_vec(),
    }
}

/// How long a function that stops answering sleeps: longer than any test waits.
const TEN_MINUTES: Duration = Duration::from_secs(600);

/// Starts this program again in the child mode `mode`, holding this process's
/// stdin, stdout and stderr.
#[expect(
    clippy::zombie_processes,
    reason = "the child is meant to outlive its parent's answer; the container's init reaps it"
)]
fn child(mode: &str) {
    std::process::Command::new("/proc/self/exe")
        .arg(mode)
        .spawn()
        .expect("start a child");
}

/// Closes this process's file descriptors `fds` (0 stdin, 1 stdout, 2 stderr).
fn close(fds: &[i32]) {
    for &fd in fds {
        // SAFETY: closing our own standard descriptors; nothing else of this
        // process uses them any more.
        unsafe { libc::close(fd) };
    }
}

/// Closes `fds`, then sleeps ten minutes without answering.
fn close_and_sleep(fds: &[i32]) -> ! {
    close(fds);
    std::thread::sleep(TEN_MINUTES);
    std::process::exit(0)
}

fn serve_lines() {
    let mut input = BufReader::new(io::stdin().lock());
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).expect("read stdin") == 0 {
            return;
        }
        let request = line.strip_suffix(b"\n").unwrap_or(&line);
        let mut response = match request.strip_prefix(b"!") {
            Some(b"garbage") => {
                write_out(b"first line\nsecond line\n");
                continue;
            }
            Some(body) => match late_answer(body) {
                Some((when, answer)) => {
                    answer_again_later(when, [&answer[..], b"\n"].concat(), answer)
                }
                None => command(body),
            },
            None => request.to_vec(),
        };
        response.push(b'\n');
        write_out(&response);
    }
}

fn serve_http() {
    let mut input = BufReader::new(io::stdin().lock());
    let mut head = Vec::new();
    loop {
        head.clear();
        // Read the request head up to the blank line.
        loop {
            let before = head.len();
            if input.read_until(b'\n', &mut head).expect("read stdin") == 0 {
                return;
            }
            if head[before..] == *b"\r\n" && before > 0 {
                break;
            }
        }
        let head_text = String::from_utf8_lossy(&head).into_owned();
        let header = |name: &str| {
            head_text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let content_length = header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let call_id = header("hotpool-call-id").unwrap_or_default();
        if header("transfer-encoding").is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
        {
            match header("x-upload").as_deref() {
                // Answers at once and never reads the body.
                Some("ignore") => {
                    write_out(&http_response(&call_id, "200 OK", "", b"ignored"));
                    std::thread::sleep(Duration::from_secs(600));
                }
                Some("exit") => {
                    eprintln!("exiting mid-upload");
                    std::process::exit(5);
                }
                _ => take_upload(&mut input, &call_id, header("x-echo-stream").is_some()),
            }
            continue;
        }
        let mut body = vec![0; content_length];
        input.read_exact(&mut body).expect("read body");
        let (status, headers, response) = match body.strip_prefix(b"!") {
            Some(b"garbage") => {
                write_out(b"this is not HTTP\r\n\r\n");
                continue;
            }
            Some(streaming) if streaming.starts_with(b"stream") => {
                stream(&call_id, &String::from_utf8_lossy(streaming));
                continue;
            }
            Some(b"upgrade") => (
                "101 Switching Protocols",
                "Upgrade: websocket\r\nConnection: Upgrade\r\n",
                Vec::new(),
            ),
            Some(b"hop-by-hop") => (
                "200 OK",
                "Connection: close, X-Private\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\n\
                 Trailer: X-Sum\r\nProxy-Authenticate: Basic\r\nX-Private: secret\r\n\
                 X-Kept: yes\r\n",
                b"hop-by-hop".to_vec(),
            ),
            Some(command_body) => match late_answer(command_body) {
                Some((when, answer)) => {
                    let again = http_response(&call_id, "200 OK", "", &answer);
                    ("200 OK", "", answer_again_later(when, again, answer))
                }
                None => ("200 OK", "", command(command_body)),
            },
            None => ("200 OK", "", body),
        };
        write_out(&http_response(&call_id, status, headers, &response));
    }
}

/// Reads a chunked request body from `input` as it comes, holding one chunk at
/// a time, and answers call `call_id` with its length and FNV-1a hash
/// (`bytes=N fnv=HEX`), or, with `echo`, streams each chunk back as it is read.
fn take_upload(input: &mut impl BufRead, call_id: &str, echo: bool) {
    if echo {
        write_out(
            format!(
                "HTTP/1.1 200 OK\r\nHotpool-Call-Id: {call_id}\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    let (mut bytes, mut hash) = (0u64, 0xcbf2_9ce4_8422_2325u64);
    loop {
        let mut size_line = String::new();
        input.read_line(&mut size_line).expect("a chunk size line");
        let size = usize::from_str_radix(size_line.trim_end(), 16).expect("a chunk size");
        let mut chunk = vec![0; size + 2];
        input.read_exact(&mut chunk).expect("a chunk");
        chunk.truncate(size);
        if size == 0 {
            break;
        }
        bytes += size as u64;
        for byte in &chunk {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
        }
        if echo {
            write_out(&[format!("{size:x}\r\n").as_bytes(), &chunk, b"\r\n"].concat());
        }
    }
    if echo {
        write_out(b"0\r\n\r\n");
    } else {
        let answer = format!("bytes={bytes} fnv={hash:016x}");
        write_out(&http_response(call_id, "200 OK", "", answer.as_bytes()));
    }
}

/// Answers call `call_id` with a chunked body, as streaming command `command`
/// says (the `!stream` commands of the module's doc).
fn stream(call_id: &str, command: &str) {
    let words: Vec<&str> = command.split_whitespace().collect();
    let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    write_out(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
             Hotpool-Call-Id: {call_id}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    );
    let chunk = |data: &[u8]| [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat();
    match words[0] {
        "stream" => {
            let (count, pause) = (number(1).unwrap_or(1), number(2).unwrap_or(0));
            for i in 1..=count {
                let data = match number(3) {
                    Some(size) => vec![b'a' + (i % 26) as u8; size as usize],
                    None => format!("data: {i}\n\n").into_bytes(),
                };
                std::thread::sleep(Duration::from_millis(pause));
                write_out(&chunk(&data));
            }
            write_out(b"0\r\n\r\n");
        }
        "stream-forever" => {
            let data = chunk(&[b'f'; 64 << 10]);
            loop {
                write_out(&data);
            }
        }
        "stream-stall" => {
            write_out(&chunk(b"first\n"));
            std::thread::sleep(Duration::from_secs(600));
        }
        "stream-stall-header" => {
            write_out(b"10\r\n");
            std::thread::sleep(Duration::from_secs(600));
        }
        "stream-lie" => write_out(b"3\r\nhello\r\n0\r\n\r\n"),
        "stream-twice" => {
            let second = http_response(call_id, "200 OK", "", b"second");
            write_out(&[&chunk(b"first")[..], b"0\r\n\r\n", &second].concat());
        }
        other => panic!("no streaming command {other}"),
    }
}

/// A whole response message to call `call_id`; `headers` are extra header lines.
fn http_response(call_id: &str, status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n\
         Hotpool-Call-Id: {call_id}\r\nX-Echo-Call-Id: {call_id}\r\n{headers}\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}
