//! Streamed responses through `hotpool serve` on Docker and containerd: an
//! `http` function's chunked body reaches the client as the function writes it,
//! and each hostile stream (one that stalls after a chunk or a chunk's size
//! line, lies in a chunk size,
//! sends a second response, streams forever, or outlasts its timeout) is cut:
//! the client sees the stream end abnormally, never cleanly, the container is
//! evicted and the call counted with its kind. A client that reads one byte a
//! second holds one container and a bounded amount of hotpool's memory while
//! other calls are served; when it goes away the call counts as cancelled.
//! A chunked upload streams into the function past `max_body`, in full duplex
//! with a streamed answer, and one past `max_stream` is cut, as is one into a
//! function that never reads it or dies while it comes.
//! The real binary, testfn's `!stream` commands (`pool_streaming.rs` has the
//! same rules on the in-process driver under a paused clock).

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::cli_engine::Engine;
use support::server::{Server, eventually, function_of};

/// How long the client waits for any byte before it gives up.
const CLIENT_PATIENCE: Duration = Duration::from_secs(60);

/// A streamed answer being read, chunk by chunk.
struct Streamed {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
}

/// How a stream read to its end ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The terminating chunk came.
    Clean,
    /// The connection ended (or failed) before it: the stream was cut.
    Cut,
}

impl Streamed {
    /// Sends `body` to `/invoke/{function}` and reads the answer's head.
    fn call(addr: SocketAddr, function: &str, body: &str) -> Streamed {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(CLIENT_PATIENCE)).unwrap();
        write!(
            stream,
            "POST /invoke/{function} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        Streamed::answer_on(stream)
    }

    /// Sends a chunked request to `/invoke/{function}` with `header` lines,
    /// its body `pieces` written by a thread of its own (which ends with the
    /// body, or at the first failed write), and reads the answer's head.
    fn upload(
        addr: SocketAddr,
        function: &str,
        header: &str,
        pieces: impl Iterator<Item = Vec<u8>> + Send + 'static,
    ) -> (Streamed, std::thread::JoinHandle<io::Result<()>>) {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(CLIENT_PATIENCE)).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let head = format!(
            "POST /invoke/{function} HTTP/1.1\r\nHost: {addr}\r\n\
             Transfer-Encoding: chunked\r\n{header}\r\n"
        );
        let sending = std::thread::spawn(move || {
            writer.write_all(head.as_bytes())?;
            for piece in pieces {
                writer.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                writer.write_all(&piece)?;
                writer.write_all(b"\r\n")?;
            }
            writer.write_all(b"0\r\n\r\n")
        });
        (Streamed::answer_on(stream), sending)
    }

    /// Reads the head of the answer coming on `stream`.
    fn answer_on(stream: TcpStream) -> Streamed {
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("a status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status in {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a header line");
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        Streamed {
            reader,
            status,
            headers,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next chunk's data; `Ok(None)` at the terminating chunk, an error if
    /// the stream ended or broke before it.
    fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut size_line = String::new();
        if self.reader.read_line(&mut size_line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let size = usize::from_str_radix(size_line.trim_end(), 16)
            .map_err(|_| io::Error::other(format!("bad chunk size line {size_line:?}")))?;
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data)?;
        if !data.ends_with(b"\r\n") {
            return Err(io::Error::other("a chunk without its CRLF"));
        }
        data.truncate(size);
        if size == 0 {
            let mut end = String::new();
            self.reader.read_line(&mut end)?;
            return Ok(None);
        }
        Ok(Some(data))
    }

    /// Reads the rest: the body, and how the stream ended.
    fn read_to_end(&mut self) -> (Vec<u8>, End) {
        let mut body = Vec::new();
        loop {
            match self.next_chunk() {
                Ok(Some(data)) => body.extend_from_slice(&data),
                Ok(None) => return (body, End::Clean),
                Err(_) => return (body, End::Cut),
            }
        }
    }
}

/// A server on `engine` for `test` with `[server]` lines `server_extra`, of
/// the `http` function `streams` (with `function_extra`) and the `line`
/// function `echo`, and the guard that removes its pool's containers after it.
fn start(
    engine: &Engine,
    test: &str,
    server_extra: &str,
    function_extra: &str,
) -> (Box<dyn std::any::Any>, Server) {
    let pool = format!(
        "server-test-{test}-{}-{}",
        engine.name(),
        std::process::id()
    );
    let guard = engine.guard(&pool);
    let server = Server::start_with_env(
        &format!("{test}-{}", engine.name()),
        server_extra,
        &format!("shutdown_timeout = \"30s\"\n\n{}", engine.config_table()),
        &[
            function_of(&engine.image, "streams", "http", "http", function_extra),
            function_of(&engine.image, "echo", "line", "line", ""),
        ],
        &engine.env(),
    );
    assert_eq!(server.pool, pool);
    (guard, server)
}

fn stop(engine: &Engine, server: Server) {
    let pool = server.pool.clone();
    server.stop();
    assert_eq!(engine.containers_of(&pool), Vec::<String>::new());
}

/// The calls of `streams` counted with `outcome`.
fn outcomes(server: &Server, outcome: &str) -> f64 {
    server.metric(
        "hotpool_calls_total",
        &["function=\"streams\"", &format!("outcome=\"{outcome}\"")],
    )
}

/// The container answering `!whoami`.
fn whoami(server: &Server) -> String {
    let mut answer = Streamed::call(server.addr, "streams", "!whoami");
    assert_eq!(answer.status, 200);
    String::from_utf8(whole_body(&mut answer)).unwrap()
}

per_engine_binary!(a_stream_reaches_the_client_as_written_and_each_hostile_stream_is_cut);
fn a_stream_reaches_the_client_as_written_and_each_hostile_stream_is_cut(engine: Engine) {
    let (_guard, server) = start(
        &engine,
        "streams",
        "max_stream = \"1m\"\nstream_idle_timeout = \"2s\"",
        "timeout = \"6s\"",
    );

    // 100 events, 5 ms apart: all of them, in order, framed by hotpool.
    let container = whoami(&server);
    let mut events = Streamed::call(server.addr, "streams", "!stream 100 5");
    assert_eq!(events.status, 200);
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    assert_eq!(events.header("transfer-encoding"), Some("chunked"));
    assert_eq!(events.header("hotpool-start"), Some("hot"));
    assert!(events.header("hotpool-call-id").is_some());
    let (body, end) = events.read_to_end();
    assert_eq!(end, End::Clean);
    let expected: String = (1..=100).map(|i| format!("data: {i}\n\n")).collect();
    assert_eq!(String::from_utf8(body).unwrap(), expected);
    assert_eq!(
        whoami(&server),
        container,
        "a clean stream gives its container back"
    );
    assert_eq!(outcomes(&server, "success"), 3.0);

    // A chunk, then silence: the chunk reaches the client while the function
    // still runs (it sleeps ten minutes), then the idle timeout cuts it.
    let mut stalled = Streamed::call(server.addr, "streams", "!stream-stall");
    assert_eq!(
        stalled.next_chunk().unwrap().as_deref(),
        Some(&b"first\n"[..])
    );
    assert_eq!(stalled.read_to_end(), (Vec::new(), End::Cut));
    // A chunk's size line, then silence: nothing of it reaches the client.
    let mut header_only = Streamed::call(server.addr, "streams", "!stream-stall-header");
    assert_eq!(header_only.read_to_end(), (Vec::new(), End::Cut));
    eventually("both stalled streams counted as timeouts", || {
        outcomes(&server, "timeout") == 2.0
    });
    assert_ne!(
        whoami(&server),
        container,
        "the stalled container was evicted"
    );

    // A lying chunk size, a second response after the stream, and a stream
    // without end (past max_stream): each is cut as a protocol error.
    for (command, most) in [
        ("!stream-lie", 3),
        ("!stream-twice", 5),
        ("!stream-forever", 1 << 20),
    ] {
        let mut hostile = Streamed::call(server.addr, "streams", command);
        assert_eq!(hostile.status, 200, "{command}");
        let (body, end) = hostile.read_to_end();
        assert_eq!(end, End::Cut, "{command}");
        assert!(body.len() <= most, "{command}: {} bytes", body.len());
    }
    eventually("three streams counted as protocol errors", || {
        outcomes(&server, "protocol_error") == 3.0
    });

    // Events 100 ms apart, never silent for 2 s, for longer than the 6 s
    // timeout: cut at the timeout.
    let mut long = Streamed::call(server.addr, "streams", "!stream 1000 100");
    let (body, end) = long.read_to_end();
    assert_eq!(end, End::Cut);
    assert!(
        body.starts_with(b"data: 1\n\n"),
        "it streamed before the cut"
    );
    eventually("the long stream counted as a timeout", || {
        outcomes(&server, "timeout") == 3.0
    });

    // Uploads into a function that answers and never reads its body (the
    // pipe fills; the call's timeout ends it), and into one that dies as the
    // body comes: each is counted with its kind and its container evicted,
    // whatever the client, still sending, manages to read.
    let mut serving = whoami(&server);
    for (how, kind) in [("ignore", "timeout"), ("exit", "exited")] {
        let counted = outcomes(&server, kind);
        let (body, _) = pieces(8);
        let addr = server.addr;
        let header = format!("X-Upload: {how}\r\n");
        // The client's own fate is not the point (a reset may end its
        // thread): the server's count and the engine are.
        std::thread::spawn(move || drop(Streamed::upload(addr, "streams", &header, body)));
        eventually(&format!("an upload met by {how} counted as {kind}"), || {
            outcomes(&server, kind) == counted + 1.0
        });
        let next = whoami(&server);
        assert_ne!(next, serving, "{how}: the container was evicted");
        serving = next;
    }

    // Other functions were never touched.
    let echo = server.invoke("echo", b"still here");
    assert_eq!((echo.status, echo.text().as_str()), (200, "still here"));
    stop(&engine, server);
}

/// Reads a whole `Content-Length` body.
fn whole_body(answer: &mut Streamed) -> Vec<u8> {
    let length: usize = answer.header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0; length];
    answer.reader.read_exact(&mut body).unwrap();
    body
}

/// `count` pieces of 64 KiB, each of one byte value, and their FNV-1a hash.
fn pieces(count: usize) -> (impl Iterator<Item = Vec<u8>> + Send + 'static, u64) {
    let piece = |i: usize| vec![(i % 251) as u8; 64 << 10];
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..count {
        for byte in piece(i) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    ((0..count).map(piece), hash)
}

per_engine_binary!(a_chunked_upload_larger_than_max_body_streams_into_the_function_in_full_duplex);
fn a_chunked_upload_larger_than_max_body_streams_into_the_function_in_full_duplex(engine: Engine) {
    let (_guard, server) = start(
        &engine,
        "uploads",
        "max_body = \"1m\"\nmax_stream = \"20m\"",
        "timeout = \"60s\"",
    );
    let container = whoami(&server);
    let before = rss_bytes(server.pid());

    // 16 MiB, sixteen times max_body, into a function that holds a chunk at a
    // time: it counts and hashes every byte; hotpool never held it whole.
    let (body, hash) = pieces(256);
    let (mut counted, sending) = Streamed::upload(server.addr, "streams", "", body);
    assert_eq!(counted.status, 200);
    sending.join().unwrap().expect("the body was sent");
    let answer = String::from_utf8(whole_body(&mut counted)).unwrap();
    assert_eq!(answer, format!("bytes={} fnv={hash:016x}", 256 << 16));
    let grown = rss_bytes(server.pid()).saturating_sub(before);
    assert!(
        grown < 12 << 20,
        "hotpool grew by {grown} bytes over a 16 MiB upload"
    );
    assert_eq!(whoami(&server), container, "the container served on");

    // 8 MiB streamed back chunk by chunk as it goes in: only full duplex
    // gets through (the pipes hold 64 KiB each way).
    let (body, _) = pieces(128);
    let (mut echoed, sending) =
        Streamed::upload(server.addr, "streams", "X-Echo-Stream: 1\r\n", body);
    assert_eq!(echoed.status, 200);
    let (received, end) = echoed.read_to_end();
    assert_eq!(end, End::Clean);
    sending.join().unwrap().expect("the body was sent");
    let (sent, _) = pieces(128);
    assert_eq!(received, sent.flatten().collect::<Vec<u8>>());
    assert_eq!(whoami(&server), container, "the container served on");

    // Past max_stream: the call is cut and its container, half a request in
    // its stdin, evicted; the client gets 413 if it can still read.
    let (body, _) = pieces(24 * 16);
    let (refused, _sending) = Streamed::upload(server.addr, "streams", "", body);
    assert_ne!(refused.status, 200);
    eventually("the cut upload counted as cancelled", || {
        outcomes(&server, "cancelled") == 1.0
    });
    assert_ne!(whoami(&server), container, "the cut container was evicted");
    stop(&engine, server);
}

/// hotpool's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

per_engine_binary!(a_client_reading_a_byte_a_second_holds_one_container_and_bounded_memory);
fn a_client_reading_a_byte_a_second_holds_one_container_and_bounded_memory(engine: Engine) {
    let (_guard, server) = start(&engine, "slow-reader", "", "timeout = \"60s\"");
    assert!(!whoami(&server).is_empty());
    let before = rss_bytes(server.pid());

    // 256 MiB in 64 KiB chunks, read a byte a second.
    let mut slow = Streamed::call(server.addr, "streams", "!stream 4096 0 65536");
    assert_eq!(slow.status, 200);
    let mut byte = [0u8];
    for _ in 0..5 {
        slow.reader.read_exact(&mut byte).unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    let grown = rss_bytes(server.pid()).saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "hotpool grew by {grown} bytes while a client read slowly"
    );
    // Other calls are served meanwhile, the same function's by another container.
    let echo = server.invoke("echo", b"served");
    assert_eq!((echo.status, echo.text().as_str()), (200, "served"));
    let events = server.invoke("streams", b"!stream 3 0");
    assert_eq!(events.status, 200, "{events}");
    assert_eq!(events.text(), "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    assert_eq!(events.header("hotpool-start"), Some("cold"), "{events}");

    // The client goes away: the call is cancelled and its container evicted.
    drop(slow);
    eventually("the abandoned stream counted as cancelled", || {
        outcomes(&server, "cancelled") == 1.0
    });
    let functions = server.get("/functions").json();
    let streams = functions["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "streams")
        .unwrap()
        .clone();
    assert_eq!(streams["containers"]["busy"], 0, "{streams}");
    stop(&engine, server);
}
