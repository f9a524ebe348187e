//! An in-process driver: each "container" is a tokio task speaking over in-memory
//! pipes. It exists for fast, deterministic tests of the pool's scheduling (it
//! works under tokio's paused clock) and for benchmarks of dispatch; it is not a
//! sandbox.
//!
//! A task's command picks the behaviour, as the test function's modes do:
//! `["line"]` answers each request line with the same line, `["echo"]` copies stdin
//! to stdout until EOF and exits. In `line` mode a request starting with `!` is a
//! command: `!exit N`, `!oom`, `!kill-self`, `!garbage` (two lines for one request),
//! `!sleep MS`, `!close-stdout` (close stdout and run on, never answering),
//! `!close-stdout-exit MS N` (close stdout, then exit with code N MS
//! milliseconds later). The image `missing` cannot be prepared (`image_not_found`).
//!
//! Its "engine" is the driver: a pool name is claimed on one driver and its
//! clones, so tests that each make their own driver can all use the default
//! pool name at once. [`InProcessDriver::wedge`] makes that engine stop
//! answering, as a deadlocked one does.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, copy, duplex};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    BoxRead, BoxWrite, CallMark, ClaimError, Cookie, Driver, EngineTraits, PoolOwner, RunResult,
    Running, Task,
};
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
    /// Containers closed.
    pub closed: usize,
    /// The most containers being closed at once.
    pub most_closing: usize,
    /// The most containers being prepared at once.
    pub most_preparing: usize,
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
    /// How each running function ends, for [`InProcessDriver::kill_all`].
    running: Mutex<Vec<(ExitSender, tokio::task::AbortHandle)>>,
    /// The pool names claimed on this driver.
    claimed: Mutex<HashSet<String>>,
    /// Whether the engine answers no more ([`InProcessDriver::wedge`]).
    wedged: watch::Sender<bool>,
}

impl Shared {
    /// Returns once the engine answers (at once, unless it is wedged).
    async fn answering(&self) {
        let mut wedged = self.wedged.subscribe();
        let _ = wedged.wait_for(|wedged| !wedged).await;
    }
}

/// Runs tasks as tokio tasks in this process. Cheap to clone.
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
                running: Mutex::new(Vec::new()),
                claimed: Mutex::new(HashSet::new()),
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
        let running = std::mem::take(
            &mut *self
                .shared
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (exit, function) in running {
            function.abort();
            set_exit(&exit, exited(137, ""));
        }
    }

    /// Makes the engine stop answering (`true`), as a deadlocked one does:
    /// prepares, kills and closes wait until it answers again (`false`), and
    /// pings fail. Functions already running go on.
    pub fn wedge(&self, wedged: bool) {
        self.shared.wedged.send_replace(wedged);
    }

    /// What the driver has done so far.
    pub fn statistics(&self) -> InProcessStatistics {
        InProcessStatistics {
            created: self.shared.created.load(Ordering::SeqCst),
            closed: self.shared.closed.load(Ordering::SeqCst),
            most_closing: self.shared.most_closing.load(Ordering::SeqCst),
            most_preparing: self.shared.most_preparing.load(Ordering::SeqCst),
        }
    }
}

/// A pool name claimed on an [`InProcessDriver`]; free again when dropped.
pub struct InProcessClaim {
    shared: Arc<Shared>,
    pool: String,
}

impl Drop for InProcessClaim {
    fn drop(&mut self) {
        self.shared
            .claimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pool);
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
        let mut claimed = self
            .shared
            .claimed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
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

    async fn prepare(&self, task: Task) -> Result<InProcessCookie, CallError> {
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
        self.shared.created.fetch_add(1, Ordering::SeqCst);
        let (exit, _) = watch::channel(None);
        Ok(InProcessCookie {
            shared: self.shared.clone(),
            mode: task.command.first().cloned().unwrap_or_default(),
            memory: task.memory,
            timeout: task.timeout,
            plumbing: Mutex::new((task.input, task.stdout)),
            exit: Arc::new(exit),
            function: Mutex::new(None),
            output: Mutex::new(None),
            started: None,
            closed: AtomicBool::new(false),
        })
    }

    async fn remove_labelled(&self, _key: &str, _value: &str) -> Result<usize, CallError> {
        self.shared.answering().await;
        // Nothing outlives this process.
        Ok(0)
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
}

/// A prepared in-process container.
pub struct InProcessCookie {
    shared: Arc<Shared>,
    mode: String,
    memory: u64,
    timeout: Option<Duration>,
    plumbing: Mutex<(Option<BoxRead>, Option<BoxWrite>)>,
    exit: Arc<watch::Sender<Option<RunResult>>>,
    function: Mutex<Option<JoinHandle<()>>>,
    output: Mutex<Option<JoinHandle<()>>>,
    started: Option<Instant>,
    closed: AtomicBool,
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

async fn serve_lines(
    stdin: DuplexStream,
    mut stdout: DuplexStream,
    memory: u64,
    exit: Arc<watch::Sender<Option<RunResult>>>,
) {
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

async fn serve_echo(
    mut stdin: DuplexStream,
    mut stdout: DuplexStream,
    exit: Arc<watch::Sender<Option<RunResult>>>,
) {
    let _ = copy(&mut stdin, &mut stdout).await;
    let _ = stdout.shutdown().await;
    set_exit(&exit, Ok(()));
}

impl Cookie for InProcessCookie {
    async fn run(&mut self) -> Result<Running, CallError> {
        let (container_stdin, mut caller_stdin) = duplex(64 * 1024);
        let (container_stdout, mut caller_stdout) = duplex(64 * 1024);
        let exit = self.exit.clone();
        let function = match self.mode.as_str() {
            "line" => tokio::spawn(serve_lines(
                container_stdin,
                container_stdout,
                self.memory,
                exit,
            )),
            "echo" => tokio::spawn(serve_echo(container_stdin, container_stdout, exit)),
            other => {
                let message = format!("unknown mode {other:?}\n");
                tokio::spawn(async move { set_exit(&exit, exited(64, &message)) })
            }
        };
        self.shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.exit.clone(), function.abort_handle()));
        *self.function.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(function);
        self.started = Some(Instant::now());
        let (input, sink) =
            std::mem::take(self.plumbing.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut running = Running {
            stdin: None,
            stdout: None,
            mark: Some(CallMark::in_memory()),
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
                *self.output.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(output);
            }
            None => running.stdout = Some(Box::new(caller_stdout)),
        }
        Ok(running)
    }

    async fn wait(&self, cancel: &CancellationToken) -> RunResult {
        let mut exit = self.exit.subscribe();
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
                let output = self.output.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(output) = output {
                    let _ = output.await;
                }
                return result.unwrap_or_else(|| Err(CallError::engine("the function vanished")));
            }
            () = sleep => CallError::Timeout { timeout: self.timeout.unwrap_or_default() },
            () = cancel.cancelled() => CallError::Cancelled,
        };
        let _ = self.kill().await;
        Err(interrupted)
    }

    async fn kill(&self) -> Result<(), CallError> {
        self.shared.answering().await;
        if let Some(function) = self
            .function
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            function.abort();
        }
        set_exit(&self.exit, exited(137, ""));
        Ok(())
    }

    async fn close(&self) {
        self.shared.answering().await;
        if !self.closed.swap(true, Ordering::SeqCst) {
            let closing = self.shared.closing.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared
                .most_closing
                .fetch_max(closing, Ordering::SeqCst);
            if !self.shared.close_delay.is_zero() {
                tokio::time::sleep(self.shared.close_delay).await;
            }
            self.shared.closing.fetch_sub(1, Ordering::SeqCst);
            let _ = self.kill().await;
            self.shared
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(exit, _)| exit.borrow().is_none());
            self.shared.closed.fetch_add(1, Ordering::SeqCst);
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
