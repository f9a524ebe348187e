//! One prepared container: start it with its pipes (attached, or direct), wait
//! for it, kill it, remove it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::driver::wiring::Copiers;
use bollard::errors::Error as EngineError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, KillContainerOptionsBuilder, StatsOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use bollard::container::LogOutput;
use tokio::io::BufReader;
use tokio::net::unix::pipe;
use tokio_util::io::ReaderStream;

use super::attach::{Frames, StderrTap, StdoutReader, pump_stderr};
use super::deadlines::Op;
use super::{Engine, Failure, engine_stats, whole_seconds};
use crate::driver::linux::cgroup::CgroupCounters;
use crate::driver::linux::direct::{self, Direct, Ended, IoDir};
use crate::driver::{
    BoxRead, BoxWrite, Cookie, EngineCallError, RunResult, Running, StatSink, Task,
};
use crate::error::CallError;

/// How long `wait` lets the output streams run dry after the exit.
const STREAM_DRAIN: Duration = Duration::from_secs(5);
/// The pauses before asking the engine again whether a SIGKILL was an OOM kill.
const OOM_EVENT_PAUSES: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(300),
];
/// How long a direct container's init has to open its pipes once started.
const INIT_READY: Duration = Duration::from_secs(30);

/// A direct container's pipes: the directory, hotpool's ends until `run`
/// takes them, then the status pipe its verdict comes on.
struct DirectPipes {
    dir: Mutex<Option<IoDir>>,
    opening: Option<Opening>,
    status: tokio::sync::Mutex<Option<BufReader<pipe::Receiver>>>,
}

/// hotpool's ends of a direct container's pipes before `run`.
enum Opening {
    /// The first ends of a container to start: one-way once its init is ready.
    Early(direct::Ends),
    /// The one-way ends of a running container taken over from an earlier owner.
    TakenOver(direct::OneWay),
}

/// The task's own pipes and sinks, until `run` takes them.
struct Plumbing {
    input: Option<BoxRead>,
    stdout: Option<BoxWrite>,
    stats: Option<StatSink>,
}

/// A created container of a [`super::DockerDriver`].
pub struct DockerCookie {
    engine: Arc<Engine>,
    id: String,
    memory: u64,
    timeout: Option<Duration>,
    /// What the task brought for `run` to wire up (in a mutex only to be `Sync`).
    plumbing: Mutex<Plumbing>,
    stderr: Arc<StderrTap>,
    started: Option<Instant>,
    /// Whether the caller samples the counters itself (the task's `counters`).
    caller_samples_counters: bool,
    /// The container's cgroup counters, once open.
    counters: Option<CgroupCounters>,
    /// The tasks copying its bytes.
    copiers: Copiers,
    /// The pipes of a direct task.
    direct: Option<DirectPipes>,
    closed: AtomicBool,
    /// Let go for a next owner: `wait` returns.
    released: CancellationToken,
}

impl DockerCookie {
    pub(super) fn new(
        engine: Arc<Engine>,
        id: String,
        task: Task,
        direct: Option<Direct>,
    ) -> DockerCookie {
        DockerCookie {
            engine,
            id,
            memory: task.memory,
            timeout: task.timeout,
            plumbing: Mutex::new(Plumbing {
                input: task.input,
                stdout: task.stdout,
                stats: task.stats,
            }),
            stderr: Arc::new(StderrTap::new(task.stderr)),
            started: None,
            caller_samples_counters: task.counters,
            counters: None,
            copiers: Copiers::default(),
            direct: direct.map(|direct| DirectPipes {
                dir: Mutex::new(Some(direct.dir)),
                opening: Some(Opening::Early(direct.early)),
                status: tokio::sync::Mutex::new(None),
            }),
            closed: AtomicBool::new(false),
            released: CancellationToken::new(),
        }
    }

    /// The cookie of running container `id`, its init's PID `pid`, taken over
    /// for `task` with its pipes `taken`: `run` hands them out, starting nothing.
    pub(super) fn adopted(
        engine: Arc<Engine>,
        id: String,
        task: Task,
        taken: (IoDir, direct::OneWay),
        pid: i64,
    ) -> DockerCookie {
        let (dir, one_way) = taken;
        let mut cookie = DockerCookie::new(engine, id, task, None);
        cookie.started = Some(Instant::now());
        cookie.counters = CgroupCounters::open(pid);
        cookie.direct = Some(DirectPipes {
            dir: Mutex::new(Some(dir)),
            opening: Some(Opening::TakenOver(one_way)),
            status: tokio::sync::Mutex::new(None),
        });
        cookie
    }

    /// The engine's id of the container.
    pub fn container_id(&self) -> &str {
        &self.id
    }

    /// Finds the container's init process and opens its cgroup counters.
    async fn open_counters(&self) -> Option<CgroupCounters> {
        let info = self
            .engine
            .timed(
                Op::Inspect,
                self.engine.docker.inspect_container(&self.id, None),
            )
            .await
            .ok()?;
        let pid = info.state?.pid.filter(|pid| *pid > 0)?;
        let counters = CgroupCounters::open(pid);
        if counters.is_none() {
            tracing::debug!(container = %self.id, "no cgroup counters here: per-call stats come from engine samples only");
        }
        counters
    }

    /// Waits for the engine to report the exit; yields the exit code.
    ///
    /// The engine sends the head of its answer at once and the body at the
    /// exit: the wait's deadline is a client timeout of its own, which bounds
    /// the head alone. Only a wait past it is counted in the metric (the rest
    /// would time the container's life, not the engine).
    async fn exit_code(&self) -> Result<i64, CallError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let deadline = self.engine.deadlines.of(Op::Wait);
        let waiter = self
            .engine
            .docker
            .clone()
            .with_timeout(whole_seconds(deadline));
        let asked = std::time::Instant::now();
        let mut wait = waiter.wait_container(&self.id, Some(options));
        match wait.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(EngineError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(EngineError::RequestTimeoutError)) => {
                let no_answer = Failure::NoAnswer {
                    engine: super::ENGINE,
                    op: Op::Wait.as_str(),
                    deadline,
                };
                crate::driver::record_engine_call(
                    super::ENGINE,
                    Op::Wait.as_str(),
                    no_answer.outcome(),
                    asked.elapsed(),
                );
                Err(CallError::engine(format!(
                    "waiting for container {}: {no_answer}",
                    self.id
                )))
            }
            Some(Err(e)) => Err(CallError::engine(format!(
                "waiting for container {}: {e}",
                self.id
            ))),
            None => Err(CallError::engine(format!(
                "the engine ended the wait for {}",
                self.id
            ))),
        }
    }

    /// Waits until all of stdout has reached the task's sink and all of stderr the
    /// tap (the streams end once the container has stopped).
    async fn drain_output(&self) {
        self.copiers.drain(STREAM_DRAIN).await;
    }

    /// Turns an exit code into a result, asking the engine whether it was an OOM kill.
    ///
    /// The wait has returned, so the container did exit with `code`: if the engine
    /// cannot be asked any more (the container was removed from outside, `docker rm
    /// -f`), that is what the caller learns, never an engine error.
    async fn judge_exit(&self, code: i64) -> RunResult {
        const SIGKILLED: i64 = 128 + 9;
        if code == 0 {
            return Ok(());
        }
        // The cgroup's own count, where it is still open and readable, says
        // first. The engine learns of an OOM kill from its own event, which may
        // come after the exit's: a SIGKILL is asked about again for a moment.
        let counted = self.counters.as_ref().and_then(CgroupCounters::oom_kills);
        let mut oom_killed =
            counted.is_some_and(|kills| kills > 0) || self.engine_says_oom_killed(code).await;
        for pause in OOM_EVENT_PAUSES.iter().filter(|_| code == SIGKILLED) {
            if oom_killed {
                break;
            }
            tokio::time::sleep(*pause).await;
            oom_killed = self.engine_says_oom_killed(code).await;
        }
        if oom_killed {
            Err(CallError::Oom {
                limit_bytes: self.memory,
            })
        } else {
            Err(CallError::Exited {
                code,
                stderr_tail: self.stderr.tail(),
            })
        }
    }

    /// Whether the engine says the container, which exited with `code`, was
    /// OOM-killed (no, if it cannot say).
    async fn engine_says_oom_killed(&self, code: i64) -> bool {
        let inspected = self
            .engine
            .timed(
                Op::Inspect,
                self.engine.docker.inspect_container(&self.id, None),
            )
            .await;
        match inspected {
            Ok(info) => info.state.and_then(|s| s.oom_killed) == Some(true),
            Err(EngineCallError::Failed(EngineError::DockerResponseServerError {
                status_code: 404,
                ..
            })) => false,
            Err(e) => {
                tracing::warn!(container = %self.id, error = %e, code, "could not ask the engine whether an exit was an OOM kill");
                false
            }
        }
    }

    /// Attaches to the container's pipes and starts it.
    async fn start_attached(&mut self) -> Result<(BoxWrite, BoxRead), CallError> {
        let engine_error = |what: &str, e: Failure| CallError::engine(format!("{what}: {e}"));
        let pipes = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdin(true)
            .stdout(true)
            .build();
        let attached = self
            .engine
            .timed(
                Op::Attach,
                self.engine.docker.attach_container(&self.id, Some(pipes)),
            )
            .await
            .map_err(|e| engine_error("attaching to the container", e))?;
        let stderr_only = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stderr(true)
            .build();
        let stderr = self
            .engine
            .timed(
                Op::Attach,
                self.engine
                    .docker
                    .attach_container(&self.id, Some(stderr_only)),
            )
            .await
            .map_err(|e| engine_error("attaching to the container's stderr", e))?;
        self.copiers.pump_stderr(tokio::spawn(pump_stderr(
            stderr.output,
            self.stderr.clone(),
        )));
        self.engine
            .timed(
                Op::Start,
                self.engine.docker.start_container(&self.id, None),
            )
            .await
            .map_err(|e| engine_error("starting the container", e))?;
        self.started = Some(Instant::now());
        // Every container gets its counters where they open: an OOM kill's
        // verdict reads them first.
        self.counters = self.open_counters().await;
        let stdout = Box::new(StdoutReader::new(attached.output)) as BoxRead;
        Ok((Box::new(attached.input), stdout))
    }

    /// Starts a direct container (or takes over a running one) and takes
    /// hotpool's one-way ends.
    async fn start_direct(&mut self) -> Result<(BoxWrite, BoxRead), CallError> {
        let opening = self
            .direct
            .as_mut()
            .and_then(|pipes| pipes.opening.take())
            .ok_or_else(|| CallError::engine("the container was started before"))?;
        let one_way = match opening {
            Opening::Early(early) => self.start_and_open(early).await?,
            Opening::TakenOver(one_way) => one_way,
        };
        if let Some(pipes) = self.direct.as_mut() {
            *pipes.status.get_mut() = Some(one_way.status);
            let dir = pipes.dir.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Some(dir) = dir.as_mut() {
                dir.own(one_way.owner);
            }
        }
        let stderr: Frames = Box::pin(ReaderStream::new(one_way.stderr).map(|chunk| {
            chunk
                .map(|message| LogOutput::StdErr { message })
                .map_err(|err| EngineError::IOError { err })
        }));
        self.copiers
            .pump_stderr(tokio::spawn(pump_stderr(stderr, self.stderr.clone())));
        Ok((Box::new(one_way.stdin), Box::new(one_way.stdout)))
    }

    /// Starts a direct container, waits for its init to open the pipes, and
    /// opens hotpool's one-way ends from `early`.
    async fn start_and_open(&mut self, early: direct::Ends) -> Result<direct::OneWay, CallError> {
        let engine_error = |what: &str, e: Failure| CallError::engine(format!("{what}: {e}"));
        self.engine
            .timed(
                Op::Start,
                self.engine.docker.start_container(&self.id, None),
            )
            .await
            .map_err(|e| engine_error("starting the container", e))?;
        self.started = Some(Instant::now());
        // Every container gets its counters where they open: an OOM kill's
        // verdict reads them first.
        self.counters = self.open_counters().await;
        tokio::select! {
            ready = early.ready() => ready.map_err(|e| {
                CallError::engine(format!("hotpool-init in container {}: {e}", self.id))
            })?,
            code = self.exit_code() => {
                self.judge_exit(code?).await?;
                return Err(CallError::engine(format!(
                    "container {} ended before hotpool-init opened its pipes", self.id
                )));
            }
            () = tokio::time::sleep(INIT_READY) => {
                return Err(CallError::engine(format!(
                    "hotpool-init in container {} did not open its pipes in {INIT_READY:?}",
                    self.id
                )));
            }
        }
        early
            .one_way()
            .map_err(|e| CallError::engine(format!("opening the pipes of {}: {e}", self.id)))
    }

    /// What the init of a direct container reports; `None` for an attached one,
    /// or if the container went down whole before it could say.
    async fn direct_verdict(&self) -> Option<Ended> {
        let mut status = self.direct.as_ref()?.status.lock().await;
        direct::verdict(status.as_mut()?).await
    }

    /// Turns a direct container's verdict into a result. A SIGKILL is an OOM
    /// kill if the cgroup counted one; where it cannot be read, the engine says.
    async fn judge_direct(&self, ended: Ended) -> RunResult {
        const SIGKILL: i64 = 9;
        match ended {
            Ended::Exit(0) => Ok(()),
            Ended::Signal(SIGKILL) => {
                match self.counters.as_ref().and_then(CgroupCounters::oom_kills) {
                    Some(0) => Err(CallError::Exited {
                        code: ended.code(),
                        stderr_tail: self.stderr.tail(),
                    }),
                    Some(_) => Err(CallError::Oom {
                        limit_bytes: self.memory,
                    }),
                    None => self.judge_exit(ended.code()).await,
                }
            }
            _ => Err(CallError::Exited {
                code: ended.code(),
                stderr_tail: self.stderr.tail(),
            }),
        }
    }
}

impl Cookie for DockerCookie {
    async fn run(&mut self) -> Result<Running, CallError> {
        let (stdin, stdout) = if self.direct.is_some() {
            self.start_direct().await?
        } else {
            self.start_attached().await?
        };
        let plumbing = self.plumbing.get_mut().unwrap_or_else(|e| e.into_inner());
        let (input, stdout_sink, stats_sink) = (
            plumbing.input.take(),
            plumbing.stdout.take(),
            plumbing.stats.take(),
        );
        let mut running = self.copiers.wire(stdin, stdout, input, stdout_sink);
        running.mark = self.direct.as_mut().and_then(|pipes| {
            let dir = pipes.dir.get_mut().unwrap_or_else(|e| e.into_inner());
            dir.as_ref().map(IoDir::mark)
        });
        // The engine's stream only where the caller cannot sample the counters.
        let counters_read = self.caller_samples_counters && self.counters.is_some();
        if let Some(sink) = stats_sink.filter(|_| !counters_read) {
            let engine = self.engine.clone();
            let id = self.id.clone();
            self.copiers.keep(tokio::spawn(async move {
                let options = StatsOptionsBuilder::default().stream(true).build();
                let mut samples = engine.docker.stats(&id, Some(options));
                // The engine sends a sample at once: the deadline covers the
                // connection and that first sample, not the stream.
                let mut sample = engine
                    .timed(Op::Stats, async { samples.next().await.transpose() })
                    .await
                    .ok()
                    .flatten();
                while let Some(current) = sample.take() {
                    if let Some(stat) = engine_stats::to_stat(&current, SystemTime::now()) {
                        sink(stat);
                    }
                    sample = samples.next().await.and_then(Result::ok);
                }
            }));
        }
        Ok(running)
    }

    async fn wait(&self, cancel: &CancellationToken) -> RunResult {
        let deadline = deadline(self.started, self.timeout);
        // A direct container's init says how its function ended; the engine is
        // asked (one request held open until the exit) only where it cannot:
        // an attached container, or one that went down whole.
        let ended = async {
            match self.direct_verdict().await {
                Some(ended) => Ok(Ending::Reported(ended)),
                None => self.exit_code().await.map(Ending::Exited),
            }
        };
        tokio::pin!(ended);
        let interrupted = tokio::select! {
            ending = &mut ended => {
                let ending = ending?;
                self.drain_output().await;
                return match ending {
                    Ending::Reported(ended) => self.judge_direct(ended).await,
                    Ending::Exited(code) => self.judge_exit(code).await,
                };
            }
            () = sleep_until_deadline(deadline) => CallError::Timeout {
                timeout: self.timeout.unwrap_or_default(),
            },
            () = cancel.cancelled() => CallError::Cancelled,
            () = self.released.cancelled() => {
                return Err(CallError::engine("let go for a next owner"));
            }
        };
        self.kill().await?;
        let _ = ended.await;
        self.drain_output().await;
        Err(interrupted)
    }

    async fn kill(&self) -> Result<(), CallError> {
        let options = KillContainerOptionsBuilder::default()
            .signal("KILL")
            .build();
        match self
            .engine
            .timed(
                Op::Kill,
                self.engine.docker.kill_container(&self.id, Some(options)),
            )
            .await
        {
            Ok(()) => Ok(()),
            // 404: gone; 409: not running any more. Either way it is dead.
            Err(EngineCallError::Failed(EngineError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            })) => Ok(()),
            Err(e) => Err(CallError::engine(format!(
                "killing container {}: {e}",
                self.id
            ))),
        }
    }

    fn cpu_time(&self) -> Option<Duration> {
        self.counters.as_ref()?.cpu_time()
    }

    fn memory_bytes(&self) -> Option<u64> {
        self.counters.as_ref()?.memory_bytes()
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.copiers.abort();
        if let Err(e) = self.engine.remove_container(&self.id).await {
            tracing::warn!(container = %self.id, error = %e, "could not remove a container");
        }
        if let Some(pipes) = &self.direct {
            drop(pipes.dir.lock().unwrap_or_else(|e| e.into_inner()).take());
        }
    }
    async fn release(&self) -> bool {
        let Some(pipes) = self.direct.as_ref().filter(|_| self.started.is_some()) else {
            self.close().await;
            return false;
        };
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.released.cancel();
        self.copiers.abort();
        // Taken once `wait` has let go of it.
        drop(pipes.status.lock().await.take());
        let dir = pipes.dir.lock().unwrap_or_else(|e| e.into_inner()).take();
        dir.is_some_and(|dir| {
            dir.release();
            true
        })
    }
}

/// How a container ended: as its init reported, or the exit code the engine gave.
enum Ending {
    Reported(Ended),
    Exited(i64),
}

/// When a task started at `started` times out; `None` without a timeout, or when
/// the timeout is too long to add up (it never comes).
fn deadline(started: Option<Instant>, timeout: Option<Duration>) -> Option<Instant> {
    started?.checked_add(timeout?)
}

async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Drop for DockerCookie {
    /// A cookie dropped without `close` (a panic, a cancelled caller) still removes
    /// its container, if a runtime is there to do it.
    fn drop(&mut self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.copiers.abort();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let engine = self.engine.clone();
            let id = std::mem::take(&mut self.id);
            runtime.spawn(async move {
                let _ = engine.remove_container(&id).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_too_long_to_add_up_is_no_deadline() {
        let now = Instant::now();
        assert_eq!(deadline(Some(now), Some(Duration::MAX)), None);
        assert_eq!(
            deadline(Some(now), Some(Duration::from_secs(5))),
            Some(now + Duration::from_secs(5))
        );
        assert_eq!(deadline(Some(now), None), None);
        assert_eq!(deadline(None, Some(Duration::from_secs(5))), None);
    }
}
