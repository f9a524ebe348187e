//! An in-process driver: each "container" is a tokio task speaking over in-memory
//! pipes. It exists for fast, deterministic tests of the pool's scheduling (it
//! works under tokio's paused clock) and for benchmarks of dispatch; it is not a
//! sandbox.
//!
//! A task's command picks the behaviour, as the test function's modes do:
//! `["line"]` answers each request line with the same line, `["http"]` answers
//! each HTTP request with a 200 carrying its body and its `Hotpool-Call-Id`,
//! `["echo"]` copies stdin to stdout until EOF and exits. An `http` request
//! `!stream N`, `!stream-forever` or `!stream-stall` is answered with a
//! chunked stream ([`InProcessStatistics::streamed`] counts its bytes). In `line` mode a
//! request starting with `!` is a command: `!exit N`, `!oom`, `!kill-self`,
//! `!garbage` (two lines for one request), `!sleep MS`, `!close-stdout` (close
//! stdout and run on, never answering), `!close-stdout-exit MS N` (close
//! stdout, then exit with code N MS milliseconds later). The image `missing`
//! cannot be prepared (`image_not_found`).
//!
//! Its "engine" is the driver: a pool name is claimed on one driver and its
//! clones, so tests that each make their own driver can all use the default
//! pool name at once. [`InProcessDriver::wedge`] makes that engine stop
//! answering, as a deadlocked one does.
//!
//! The engine lists its containers by label until they are removed, as a real
//! one does, whether a cookie owns them or not: a hot container let go
//! ([`Cookie::release`]), or whose cookie was dropped (its owner died), runs
//! on with its pipes and its between-calls mark, and a clone of the driver
//! (the next owner) can take it over ([`Driver::adopt`]) if it is marked idle.
//! The driver holds hotpool's ends of a hot container's pipes besides its
//! owner, as a real container's init does: an owner letting go of them closes
//! nothing. A container let go does not end itself (there is no orphan
//! timeout here).
//!
//! What a pool's keep-alive policies learned, left to the next owner of its
//! name as it hands over ([`PoolClaim`]), the driver keeps in memory by pool
//! name, where a test can look at it or put other bytes in its place
//! ([`InProcessDriver::left_policies`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream,
    ReadBuf, copy, duplex,
};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    AdoptError, AdoptRefusal, BoxRead, BoxWrite, CallMark, ClaimError, Cookie, Driver,
    EngineTraits, Leftover, MAX_POLICIES_BYTES, PoolClaim, PoolOwner, RunResult, Running,
    TASK_LABEL, Task,
};
use super::{FUNCTION_LABEL, LABEL};
use crate::error::CallError;

/// The image name that fails to prepare.
pub const MISSING_IMAGE: &str = "missing";

/// Where a function's end is recorded.
type ExitSender = Arc<watch::Sender<Option<RunResult>>>;

/// Counts of what an [`InProcessDriver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InProcessStatistics {
    /// Containers prepared.
    pub created: usize,
    /// Containers removed (closed, or removed as leftovers), each once.
    pub closed: usize,
    /// The most containers being closed at once.
    pub most_closing: usize,
    /// The most containers being prepared at once.
    pub most_preparing: usize,
    /// Containers let go for a next owner ([`Cookie::release`]).
    pub released: usize,
    /// Containers taken over ([`Driver::adopt`]).
    pub adopted: usize,
    /// Bytes of streamed bodies `http` functions wrote (`!stream` commands).
    pub streamed: usize,
}

struct Shared {
    start_delay: Duration,
    close_delay: Duration,
    created: AtomicUsize,
    closed: AtomicUsize,
    closing: AtomicUsize,
    most_closing: AtomicUsize,
    preparing: AtomicUsize,
    most_preparing: AtomicUsize,
    released: AtomicUsize,
    adopted: AtomicUsize,
    streamed: Arc<AtomicUsize>,
    /// Every container prepared and not removed, by its engine id.
    containers: Mutex<BTreeMap<String, Arc<Container>>>,
    /// The pool names claimed on this driver.
    claimed: Mutex<HashSet<String>>,
    /// What pools left to the next owner of their name, by name.
    left_policies: Mutex<HashMap<String, Vec<u8>>>,
    /// Whether the engine answers no more ([`InProcessDriver::wedge`]).
    wedged: watch::Sender<bool>,
}

impl Shared {
    /// Returns once the engine answers (at once, unless it is wedged).
    async fn answering(&self) {
        let mut wedged = self.wedged.subscribe();
        let _ = wedged.wait_for(|wedged| !wedged).await;
    }

    /// Kills and removes `container`, taking the close delay; counts it
    /// closed unless it was gone already.
    async fn remove(&self, container: &Container) {
        self.answering().await;
        let closing = self.closing.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_closing.fetch_max(closing, Ordering::SeqCst);
        if !self.close_delay.is_zero() {
            tokio::time::sleep(self.close_delay).await;
        }
        self.closing.fetch_sub(1, Ordering::SeqCst);
        container.kill();
        if lock(&self.containers)
            .remove(&container.engine_id)
            .is_some()
        {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A container as the engine knows it, from its prepare to its removal.
struct Container {
    engine_id: String,
    task_id: String,
    /// The task's labels, with `hotpool=1`, `hotpool.function` and the task's id.
    labels: BTreeMap<String, String>,
    exit: ExitSender,
    /// The function, once it runs.
    function: Mutex<Option<AbortHandle>>,
    /// Where its owner notes whether it is between calls.
    mark: CallMark,
    /// hotpool's ends of a hot container's stdin and stdout, once handed out.
    ends: Mutex<Option<(End, End)>>,
    /// A cookie holds it: it was neither let go nor left by a dropped cookie.
    owned: AtomicBool,
}

impl Container {
    fn kill(&self) {
        if let Some(function) = lock(&self.function).as_ref() {
            function.abort();
        }
        set_exit(&self.exit, exited(137, ""));
    }

    fn ended(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

/// hotpool's end of a hot container's pipe, held by the container as well as
/// by its owner: dropping the owner's handle closes nothing.
#[derive(Clone)]
struct End(Arc<Mutex<DuplexStream>>);

impl End {
    fn new(stream: DuplexStream) -> End {
        End(Arc::new(Mutex::new(stream)))
    }
}

impl AsyncRead for End {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.0)).poll_read(cx, buf)
    }
}

impl AsyncWrite for End {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *lock(&self.0)).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.0)).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.0)).poll_shutdown(cx)
    }
}

/// Runs tasks as tokio tasks in this process. Cheap to clone; clones share
/// one engine.
#[derive(Clone)]
pub struct InProcessDriver {
    shared: Arc<Shared>,
}

impl InProcessDriver {
    /// A driver whose containers take `start_delay` to prepare (on tokio's clock).
    pub fn new(start_delay: Duration) -> InProcessDriver {
        InProcessDriver {
            shared: Arc::new(Shared {
                start_delay,
                close_delay: Duration::ZERO,
                created: AtomicUsize::new(0),
                closed: AtomicUsize::new(0),
                closing: AtomicUsize::new(0),
                most_closing: AtomicUsize::new(0),
                preparing: AtomicUsize::new(0),
                most_preparing: AtomicUsize::new(0),
                released: AtomicUsize::new(0),
                adopted: AtomicUsize::new(0),
                streamed: Arc::default(),
                containers: Mutex::new(BTreeMap::new()),
                claimed: Mutex::new(HashSet::new()),
                left_policies: Mutex::default(),
                wedged: watch::channel(false).0,
            }),
        }
    }

    /// The same driver, whose containers take `close_delay` to close (on
    /// tokio's clock), as an engine takes time to remove them.
    pub fn with_close_delay(self, close_delay: Duration) -> InProcessDriver {
        let shared = Arc::into_inner(self.shared).expect("set before the driver is shared");
        InProcessDriver {
            shared: Arc::new(Shared {
                close_delay,
                ..shared
            }),
        }
    }

    /// Kills every running function from outside, as `docker kill` would: each
    /// exits with 137 and its stdout ends.
    pub fn kill_all(&self) {
        for container in lock(&self.shared.containers).values() {
            if lock(&container.function).is_some() {
                container.kill();
            }
        }
    }

    /// The learned policies a pool of name `pool` left to its next owner, not
    /// taken yet.
    pub fn left_policies(&self, pool: &str) -> Option<Vec<u8>> {
        lock(&self.shared.left_policies).get(pool).cloned()
    }

    /// Puts `policies` where a pool of name `pool` leaves its learned policies
    /// to the next owner, as a broken or hostile file would be.
    pub fn set_left_policies(&self, pool: &str, policies: Vec<u8>) {
        lock(&self.shared.left_policies).insert(pool.to_owned(), policies);
    }

    /// Makes the engine stop answering (`true`), as a deadlocked one does:
    /// prepares, kills and closes wait until it answers again (`false`), and
    /// pings fail. Functions already running go on.
    pub fn wedge(&self, wedged: bool) {
        self.shared.wedged.send_replace(wedged);
    }

    /// What the driver has done so far.
    pub fn statistics(&self) -> InProcessStatistics {
        let shared = &self.shared;
        InProcessStatistics {
            created: shared.created.load(Ordering::SeqCst),
            closed: shared.closed.load(Ordering::SeqCst),
            most_closing: shared.most_closing.load(Ordering::SeqCst),
            most_preparing: shared.most_preparing.load(Ordering::SeqCst),
            released: shared.released.load(Ordering::SeqCst),
            adopted: shared.adopted.load(Ordering::SeqCst),
            streamed: shared.streamed.load(Ordering::SeqCst),
        }
    }

    /// The cookie of `container` for `task`; `adopted`: taken over, its
    /// `run` hands out the pipes it kept.
    fn cookie(&self, container: Arc<Container>, task: Task, adopted: bool) -> InProcessCookie {
        InProcessCookie {
            shared: self.shared.clone(),
            container,
            mode: task.command.first().cloned().unwrap_or_default(),
            memory: task.memory,
            timeout: task.timeout,
            plumbing: Mutex::new((task.input, task.stdout)),
            output: Mutex::new(None),
            started: None,
            adopted,
            closed: AtomicBool::new(false),
            released: CancellationToken::new(),
        }
    }
}

/// A pool name claimed on an [`InProcessDriver`]; free again when dropped.
pub struct InProcessClaim {
    shared: Arc<Shared>,
    pool: String,
}

impl PoolClaim for InProcessClaim {
    fn leave_policies(&self, policies: &[u8]) -> io::Result<()> {
        lock(&self.shared.left_policies).insert(self.pool.clone(), policies.to_vec());
        Ok(())
    }

    fn take_policies(&self) -> io::Result<Option<Vec<u8>>> {
        match lock(&self.shared.left_policies).remove(&self.pool) {
            Some(policies) if policies.len() as u64 > MAX_POLICIES_BYTES => Err(io::Error::other(
                format!("larger than {MAX_POLICIES_BYTES} bytes"),
            )),
            left => Ok(left),
        }
    }
}

impl Drop for InProcessClaim {
    fn drop(&mut self) {
        lock(&self.shared.claimed).remove(&self.pool);
    }
}

impl Driver for InProcessDriver {
    type Cookie = InProcessCookie;
    type Claim = InProcessClaim;

    fn traits(&self) -> EngineTraits {
        EngineTraits {
            name: "in-process",
            min_memory: 0,
            attach: true,
        }
    }

    async fn claim_pool(&self, pool: &str) -> Result<InProcessClaim, ClaimError> {
        let mut claimed = lock(&self.shared.claimed);
        if !claimed.insert(pool.to_owned()) {
            return Err(ClaimError::Owned {
                pool: pool.to_owned(),
                owner: PoolOwner::this_process(),
            });
        }
        Ok(InProcessClaim {
            shared: self.shared.clone(),
            pool: pool.to_owned(),
        })
    }

    async fn prepare(&self, mut task: Task) -> Result<InProcessCookie, CallError> {
        self.shared.answering().await;
        let preparing = self.shared.preparing.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared
            .most_preparing
            .fetch_max(preparing, Ordering::SeqCst);
        tokio::time::sleep(self.shared.start_delay).await;
        self.shared.preparing.fetch_sub(1, Ordering::SeqCst);
        if task.image == MISSING_IMAGE {
            return Err(CallError::ImageNotFound {
                image: task.image,
                message: "no such image in this process".into(),
            });
        }
        let number = self.shared.created.fetch_add(1, Ordering::SeqCst) + 1;
        let mut labels = std::mem::take(&mut task.labels);
        labels.extend([
            (LABEL.to_owned(), "1".to_owned()),
            (FUNCTION_LABEL.to_owned(), task.function.clone()),
            (TASK_LABEL.to_owned(), task.id.clone()),
        ]);
        let container = Arc::new(Container {
            // Zero-padded: the engine lists its containers in creation order.
            engine_id: format!("in-process-{number:06}"),
            task_id: task.id.clone(),
            labels,
            exit: Arc::new(watch::channel(None).0),
            function: Mutex::new(None),
            mark: CallMark::in_memory(),
            ends: Mutex::new(None),
            owned: AtomicBool::new(true),
        });
        lock(&self.shared.containers).insert(container.engine_id.clone(), container.clone());
        Ok(self.cookie(container, task, false))
    }

    async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, CallError> {
        let leftovers = self.leftovers(key, value).await?;
        for leftover in &leftovers {
            self.remove_leftover(leftover).await?;
        }
        Ok(leftovers.len())
    }

    async fn ping(&self) -> Result<(), CallError> {
        if *self.shared.wedged.borrow() {
            return Err(CallError::engine("the in-process engine is wedged"));
        }
        Ok(())
    }

    /// A close takes the close delay; a second more is a stall.
    fn removal_deadline(&self) -> Duration {
        self.shared.close_delay + Duration::from_secs(1)
    }

    /// Every container labelled `key=value`, as an engine lists them: owned
    /// ones too (only the pool's claim keeps a live owner's from here).
    async fn leftovers(&self, key: &str, value: &str) -> Result<Vec<Leftover>, CallError> {
        self.shared.answering().await;
        Ok(lock(&self.shared.containers)
            .values()
            .filter(|container| container.labels.get(key).map(String::as_str) == Some(value))
            .map(|container| {
                Leftover::new(
                    &container.task_id,
                    &container.engine_id,
                    container.labels.clone(),
                )
            })
            .collect())
    }

    /// Takes over a running hot container that no cookie owns and whose
    /// mark says it is between calls.
    async fn adopt(&self, leftover: &Leftover, task: Task) -> Result<InProcessCookie, AdoptError> {
        self.shared.answering().await;
        let refused = |refusal, why: &str| AdoptError::new(refusal, &leftover.engine_id, why);
        let container = lock(&self.shared.containers)
            .get(&leftover.engine_id)
            .cloned()
            .ok_or_else(|| refused(AdoptRefusal::Ended, "no such container"))?;
        if container.ended() {
            return Err(refused(AdoptRefusal::Ended, "it has ended"));
        }
        if lock(&container.ends).is_none() {
            return Err(refused(
                AdoptRefusal::Unproven,
                "it is no running hot container",
            ));
        }
        if !container.mark.is_idle() {
            return Err(refused(AdoptRefusal::InCall, "it was left in a call"));
        }
        if container.owned.swap(true, Ordering::SeqCst) {
            return Err(refused(AdoptRefusal::Unproven, "its owner still holds it"));
        }
        self.shared.adopted.fetch_add(1, Ordering::SeqCst);
        Ok(self.cookie(container, task, true))
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> Result<(), CallError> {
        let container = lock(&self.shared.containers)
            .get(&leftover.engine_id)
            .cloned();
        match container {
            Some(container) => self.shared.remove(&container).await,
            None => self.shared.answering().await,
        }
        Ok(())
    }
}

/// A prepared in-process container, or one taken over.
pub struct InProcessCookie {
    shared: Arc<Shared>,
    container: Arc<Container>,
    mode: String,
    memory: u64,
    timeout: Option<Duration>,
    plumbing: Mutex<(Option<BoxRead>, Option<BoxWrite>)>,
    output: Mutex<Option<JoinHandle<()>>>,
    started: Option<Instant>,
    /// Taken over: `run` hands out the container's pipes, starting nothing.
    adopted: bool,
    /// Closed or let go: the cookie touches the container no more.
    closed: AtomicBool,
    /// Let go for a next owner: `wait` returns.
    released: CancellationToken,
}

/// Records how the function ended, unless something already did.
fn set_exit(exit: &watch::Sender<Option<RunResult>>, result: RunResult) {
    exit.send_if_modified(|current| {
        if current.is_some() {
            return false;
        }
        *current = Some(result);
        true
    });
}

fn exited(code: i64, stderr_tail: &str) -> RunResult {
    Err(CallError::Exited {
        code,
        stderr_tail: stderr_tail.into(),
    })
}

async fn serve_lines(stdin: DuplexStream, mut stdout: DuplexStream, memory: u64, exit: ExitSender) {
    let mut lines = BufReader::new(stdin);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return set_exit(&exit, Ok(())),
            Ok(_) => {}
        }
        let request = line.trim_end_matches('\n');
        let reply = match request.split_once(' ').unwrap_or((request, "")) {
            ("!exit", code) => {
                let code = code.parse().unwrap_or(1);
                return set_exit(&exit, exited(code, &format!("exiting with {code}\n")));
            }
            ("!oom", _) => {
                return set_exit(
                    &exit,
                    Err(CallError::Oom {
                        limit_bytes: memory,
                    }),
                );
            }
            ("!kill-self", _) => return set_exit(&exit, exited(137, "")),
            ("!close-stdout", _) => {
                drop(stdout);
                return std::future::pending().await;
            }
            ("!close-stdout-exit", rest) => {
                let (ms, code) = rest.split_once(' ').unwrap_or((rest, ""));
                drop(stdout);
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
                return set_exit(&exit, exited(code.parse().unwrap_or(1), ""));
            }
            ("!garbage", _) => "first line\nsecond line\n".to_owned(),
            ("!sleep", ms) => {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
                "slept\n".to_owned()
            }
            _ => line.clone(),
        };
        if stdout.write_all(reply.as_bytes()).await.is_err() {
            return set_exit(&exit, Ok(()));
        }
    }
}

async fn serve_echo(mut stdin: DuplexStream, mut stdout: DuplexStream, exit: ExitSender) {
    let _ = copy(&mut stdin, &mut stdout).await;
    let _ = stdout.shutdown().await;
    set_exit(&exit, Ok(()));
}

/// Answers each HTTP request with a 200 carrying its body and its call id, or
/// with a stream for a `!stream` command, counting its bytes in `streamed`.
async fn serve_http(
    stdin: DuplexStream,
    mut stdout: DuplexStream,
    streamed: Arc<AtomicUsize>,
    exit: ExitSender,
) {
    let mut requests = BufReader::new(stdin);
    let mut line = String::new();
    loop {
        let (mut length, mut call_id) = (0, String::new());
        loop {
            line.clear();
            match requests.read_line(&mut line).await {
                Ok(0) | Err(_) => return set_exit(&exit, Ok(())),
                Ok(_) => {}
            }
            let Some((name, value)) = line.trim_end().split_once(':') else {
                // The request line, or the blank line that ends the head.
                if line.trim_end().is_empty() {
                    break;
                }
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("hotpool-call-id") {
                call_id = value.trim().to_owned();
            }
        }
        let mut body = vec![0; length];
        if requests.read_exact(&mut body).await.is_err() {
            return set_exit(&exit, Ok(()));
        }
        let written = match body.strip_prefix(b"!") {
            Some(command) if command.starts_with(b"stream") => {
                stream(&mut stdout, &call_id, command, &streamed).await
            }
            _ => {
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\nHotpool-Call-Id: {call_id}\r\nContent-Length: {length}\r\n\r\n"
                )
                .into_bytes();
                answer.extend(body);
                stdout.write_all(&answer).await
            }
        };
        if written.is_err() {
            return set_exit(&exit, Ok(()));
        }
    }
}

/// Answers call `call_id` with a chunked body: `stream N` sends N `data: I`
/// events, `stream-forever` 16 KiB chunks without end, `stream-stall` one
/// chunk and then nothing; counts the body's bytes in `streamed`.
async fn stream(
    stdout: &mut DuplexStream,
    call_id: &str,
    command: &[u8],
    streamed: &AtomicUsize,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nHotpool-Call-Id: {call_id}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stdout.write_all(head.as_bytes()).await?;
    let command = String::from_utf8_lossy(command);
    let mut send = async |data: &[u8]| {
        let chunk = [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat();
        stdout.write_all(&chunk).await?;
        streamed.fetch_add(data.len(), Ordering::SeqCst);
        io::Result::Ok(())
    };
    match command.split_whitespace().collect::<Vec<_>>()[..] {
        ["stream-forever"] => loop {
            send(&[b'f'; 16 << 10]).await?;
        },
        ["stream-stall"] => {
            send(b"first\n").await?;
            std::future::pending().await
        }
        ["stream", count] => {
            for i in 1..=count.parse().unwrap_or(1) {
                send(format!("data: {i}\n\n").as_bytes()).await?;
            }
            stdout.write_all(b"0\r\n\r\n").await
        }
        _ => stdout.write_all(b"not a stream command\r\n\r\n").await,
    }
}

impl Cookie for InProcessCookie {
    async fn run(&mut self) -> Result<Running, CallError> {
        self.started = Some(Instant::now());
        let mark = Some(self.container.mark.clone());
        if self.adopted {
            let (stdin, stdout) = lock(&self.container.ends)
                .clone()
                .ok_or_else(|| CallError::engine("the container kept no pipes"))?;
            return Ok(Running {
                stdin: Some(Box::new(stdin)),
                stdout: Some(Box::new(stdout)),
                mark,
            });
        }
        let (container_stdin, mut caller_stdin) = duplex(64 * 1024);
        let (container_stdout, mut caller_stdout) = duplex(64 * 1024);
        let exit = self.container.exit.clone();
        let function = match self.mode.as_str() {
            "line" => tokio::spawn(serve_lines(
                container_stdin,
                container_stdout,
                self.memory,
                exit,
            )),
            "http" => tokio::spawn(serve_http(
                container_stdin,
                container_stdout,
                self.shared.streamed.clone(),
                exit,
            )),
            "echo" => tokio::spawn(serve_echo(container_stdin, container_stdout, exit)),
            other => {
                let message = format!("unknown mode {other:?}\n");
                tokio::spawn(async move { set_exit(&exit, exited(64, &message)) })
            }
        };
        *lock(&self.container.function) = Some(function.abort_handle());
        let (input, sink) = std::mem::take(&mut *lock(&self.plumbing));
        if input.is_none() && sink.is_none() {
            // Hot: the container holds hotpool's ends too, as its init would.
            let ends = (End::new(caller_stdin), End::new(caller_stdout));
            *lock(&self.container.ends) = Some(ends.clone());
            return Ok(Running {
                stdin: Some(Box::new(ends.0)),
                stdout: Some(Box::new(ends.1)),
                mark,
            });
        }
        let mut running = Running {
            stdin: None,
            stdout: None,
            mark,
        };
        match input {
            Some(mut input) => {
                tokio::spawn(async move {
                    let _ = copy(&mut input, &mut caller_stdin).await;
                    let _ = caller_stdin.shutdown().await;
                });
            }
            None => running.stdin = Some(Box::new(caller_stdin)),
        }
        match sink {
            Some(mut sink) => {
                let output = tokio::spawn(async move {
                    let _ = copy(&mut caller_stdout, &mut sink).await;
                    let _ = sink.flush().await;
                });
                *lock(&self.output) = Some(output);
            }
            None => running.stdout = Some(Box::new(caller_stdout)),
        }
        Ok(running)
    }

    async fn wait(&self, cancel: &CancellationToken) -> RunResult {
        let mut exit = self.container.exit.subscribe();
        // A timeout too long to add is no deadline.
        let deadline = self
            .timeout
            .zip(self.started)
            .and_then(|(t, s)| s.checked_add(t));
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let ended = async {
            match exit.wait_for(Option::is_some).await {
                Ok(result) => result.clone(),
                Err(_) => None,
            }
        };
        let interrupted = tokio::select! {
            result = ended => {
                let output = lock(&self.output).take();
                if let Some(output) = output {
                    let _ = output.await;
                }
                return result.unwrap_or_else(|| Err(CallError::engine("the function vanished")));
            }
            () = sleep => CallError::Timeout { timeout: self.timeout.unwrap_or_default() },
            () = cancel.cancelled() => CallError::Cancelled,
            () = self.released.cancelled() => {
                return Err(CallError::engine("let go for a next owner"));
            }
        };
        let _ = self.kill().await;
        Err(interrupted)
    }

    /// Kills the function, unless the container was let go.
    async fn kill(&self) -> Result<(), CallError> {
        self.shared.answering().await;
        if !self.released.is_cancelled() {
            self.container.kill();
        }
        Ok(())
    }

    async fn close(&self) {
        self.shared.answering().await;
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.shared.remove(&self.container).await;
        }
    }

    /// Lets a running hot container go, its pipes and mark kept with it;
    /// closes any other.
    async fn release(&self) -> bool {
        let hot = lock(&self.container.ends).is_some() && !self.container.ended();
        if !hot {
            self.close().await;
            return false;
        }
        if self.closed.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.container.owned.store(false, Ordering::SeqCst);
        self.released.cancel();
        self.shared.released.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// A cookie dropped unclosed leaves its container running without an owner,
/// as an owner that dies does.
impl Drop for InProcessCookie {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::SeqCst) {
            self.container.owned.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn task(mode: &str) -> Task {
        let mut task = Task::new("t", "f", "img");
        task.command = vec![mode.into()];
        task.memory = 1 << 20;
        task
    }

    #[tokio::test(start_paused = true)]
    async fn line_mode_echoes_and_dies_on_command() {
        let driver = InProcessDriver::new(Duration::from_millis(100));
        let mut cookie = driver.prepare(task("line")).await.unwrap();
        let running = cookie.run().await.unwrap();
        let mut stdin = running.stdin.unwrap();
        let mut stdout = BufReader::new(running.stdout.unwrap());
        stdin.write_all(b"hi\n").await.unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        assert_eq!(line, "hi\n");
        stdin.write_all(b"!oom\n").await.unwrap();
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "stdout ends when the function dies");
        let result = cookie.wait(&CancellationToken::new()).await;
        assert_eq!(
            result.err(),
            Some(CallError::Oom {
                limit_bytes: 1 << 20
            })
        );
        cookie.close().await;
        assert_eq!(
            driver.statistics(),
            InProcessStatistics {
                created: 1,
                closed: 1,
                most_closing: 1,
                most_preparing: 1,
                released: 0,
                adopted: 0,
                streamed: 0,
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cold_echo_and_timeout() {
        let driver = InProcessDriver::new(Duration::ZERO);
        let mut echo = task("echo");
        echo.input = Some(Box::new(std::io::Cursor::new(b"payload".to_vec())));
        let (sink, mut read_back) = duplex(1024);
        echo.stdout = Some(Box::new(sink));
        let mut cookie = driver.prepare(echo).await.unwrap();
        cookie.run().await.unwrap();
        assert_eq!(cookie.wait(&CancellationToken::new()).await, Ok(()));
        let mut out = Vec::new();
        read_back.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"payload");

        let mut slow = task("line");
        slow.timeout = Some(Duration::from_secs(2));
        let mut cookie = driver.prepare(slow).await.unwrap();
        let _running = cookie.run().await.unwrap();
        let result = cookie.wait(&CancellationToken::new()).await;
        assert_eq!(
            result.err(),
            Some(CallError::Timeout {
                timeout: Duration::from_secs(2)
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_name_is_claimed_once_on_a_driver_and_its_clones() {
        let driver = InProcessDriver::new(Duration::ZERO);
        let claim = driver.claim_pool("hotpool").await.unwrap();
        let refused = driver.clone().claim_pool("hotpool").await;
        assert!(
            matches!(refused, Err(ClaimError::Owned { .. })),
            "a clone shares the claims"
        );
        let _other_name = driver.claim_pool("other").await.unwrap();
        let elsewhere = InProcessDriver::new(Duration::ZERO);
        let _other_driver = elsewhere.claim_pool("hotpool").await.unwrap();
        drop(claim);
        driver.claim_pool("hotpool").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_wedged_engine_answers_nothing_until_it_is_unwedged() {
        let driver = InProcessDriver::new(Duration::ZERO);
        let cookie = driver.prepare(task("line")).await.unwrap();
        driver.wedge(true);
        assert_eq!(
            driver.ping().await.map_err(|e| e.kind()),
            Err(crate::ErrorKind::EngineError)
        );
        let closing = tokio::time::timeout(Duration::from_secs(60), cookie.close()).await;
        assert!(closing.is_err(), "a close waits while the engine is wedged");
        driver.wedge(false);
        assert_eq!(driver.ping().await, Ok(()));
        cookie.close().await;
        assert_eq!(driver.statistics().closed, 1);
    }

    /// Writes `request` as a line and reads the answer line.
    async fn exchange(running: &mut (BoxWrite, BufReader<BoxRead>), request: &str) -> String {
        running.0.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        running.1.read_line(&mut answer).await.unwrap();
        answer
    }

    fn pipes(running: Running) -> (BoxWrite, BufReader<BoxRead>) {
        (
            running.stdin.unwrap(),
            BufReader::new(running.stdout.unwrap()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_hot_container_let_go_runs_on_for_a_clone_to_take_over() {
        let driver = InProcessDriver::new(Duration::ZERO);
        let mut hot = task("line");
        hot.labels.insert("hotpool.pool".into(), "p".into());
        let mut cookie = driver.prepare(hot).await.unwrap();
        let mut first = pipes(cookie.run().await.unwrap());
        assert_eq!(exchange(&mut first, "a\n").await, "a\n");
        assert!(cookie.release().await);
        let ended = cookie.wait(&CancellationToken::new()).await;
        assert_eq!(ended, Err(CallError::engine("let go for a next owner")));
        drop((cookie, first));

        let next = driver.clone();
        let left = next.leftovers("hotpool.pool", "p").await.unwrap();
        let labels = [
            ("hotpool", "1"),
            ("hotpool.function", "f"),
            ("hotpool.pool", "p"),
            ("hotpool.task", "t"),
        ];
        let labels = labels.map(|(k, v)| (k.to_owned(), v.to_owned())).into();
        assert_eq!(left, [Leftover::new("t", "in-process-000001", labels)]);
        assert_eq!(next.leftovers("hotpool.pool", "other").await.unwrap(), []);
        let mut adopted = next.adopt(&left[0], task("line")).await.unwrap();
        let running = adopted.run().await.unwrap();
        assert!(running.mark.as_ref().unwrap().is_idle());
        let mut second = pipes(running);
        assert_eq!(
            exchange(&mut second, "b\n").await,
            "b\n",
            "the same function"
        );
        let stats = driver.statistics();
        assert_eq!((stats.created, stats.released, stats.adopted), (1, 1, 1));
        assert_eq!(stats.closed, 0);
        adopted.close().await;
        assert_eq!(driver.statistics().closed, 1);
        assert_eq!(next.leftovers("hotpool.pool", "p").await.unwrap(), []);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_running_ownerless_container_marked_idle_is_taken_over() {
        let driver = InProcessDriver::new(Duration::ZERO);
        let mut cookies = Vec::new();
        let mut marks = Vec::new();
        for _ in 0..4 {
            let mut cookie = driver.prepare(task("line")).await.unwrap();
            marks.push(cookie.run().await.unwrap().mark.unwrap());
            cookies.push(cookie);
        }
        let left = driver.leftovers("hotpool", "1").await.unwrap();
        assert_eq!(left.len(), 4, "owned ones are listed too");
        let refused = |n: usize, refusal: AdoptRefusal, why: &str| {
            let leftover = &left[n];
            let driver = driver.clone();
            let why = why.to_owned();
            async move {
                let error = driver.adopt(leftover, task("line")).await.err().unwrap();
                assert!(error.to_string().contains(&why), "{error}");
                assert_eq!(error.refusal, refusal, "{error}");
            }
        };
        let owned = "its owner still holds it";
        refused(0, AdoptRefusal::Unproven, owned).await;
        marks[1].busy();
        assert!(cookies[1].release().await);
        refused(1, AdoptRefusal::InCall, "it was left in a call").await;
        cookies[2].kill().await.unwrap();
        assert!(!cookies[2].release().await, "an ended one is closed");
        refused(2, AdoptRefusal::Ended, "no such container").await;
        // An owner that dies leaves its containers to the next.
        drop(cookies.pop());
        let _next_owner = driver.adopt(&left[3], task("line")).await.unwrap();
        refused(3, AdoptRefusal::Unproven, owned).await;

        // Removing a leftover under its owner ends its owner's wait.
        driver.remove_leftover(&left[0]).await.unwrap();
        let ended = cookies[0].wait(&CancellationToken::new()).await;
        assert_eq!(
            ended.err().map(|e| e.kind()),
            Some(crate::ErrorKind::Exited)
        );
        cookies[0].close().await;
        let stats = driver.statistics();
        assert_eq!((stats.closed, stats.released, stats.adopted), (2, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_missing_image_fails_to_prepare() {
        let driver = InProcessDriver::new(Duration::ZERO);
        let error = driver
            .prepare(Task::new("t", "f", MISSING_IMAGE))
            .await
            .err()
            .unwrap();
        assert_eq!(error.kind(), crate::ErrorKind::ImageNotFound);
        assert_eq!(driver.statistics().created, 0);
    }
}
