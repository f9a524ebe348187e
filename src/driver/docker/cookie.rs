//! One prepared container: start it attached, wait for it, kill it, remove it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bollard::errors::Error as EngineError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, KillContainerOptionsBuilder, StatsOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, copy};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::attach::{StderrTap, StdoutReader, pump_stderr};
use super::cgroup::CgroupCounters;
use super::{Engine, engine_stats, timed};
use crate::driver::{BoxRead, BoxWrite, Cookie, RunResult, Running, StatSink, Task};
use crate::error::CallError;

/// How long `wait` lets the output streams run dry after the exit.
const STREAM_DRAIN: Duration = Duration::from_secs(5);

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
    /// Whether the task asked for counters.
    counters_wanted: bool,
    /// The container's cgroup counters, once open.
    counters: Option<CgroupCounters>,
    /// Copies stdout into the task's sink, when the task brought one.
    output: Mutex<Option<JoinHandle<()>>>,
    /// Drains stderr into the tap; ends when the container stops.
    stderr_pump: Mutex<Option<JoinHandle<()>>>,
    /// Tasks that must stop when the cookie closes: the stdin feeder, the stats reader.
    helpers: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl DockerCookie {
    pub(super) fn new(engine: Arc<Engine>, id: String, task: Task) -> DockerCookie {
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
            counters_wanted: task.counters,
            counters: None,
            output: Mutex::new(None),
            stderr_pump: Mutex::new(None),
            helpers: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// The engine's id of the container.
    pub fn container_id(&self) -> &str {
        &self.id
    }

    fn keep_helper(&self, task: JoinHandle<()>) {
        self.helpers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Finds the container's init process and opens its cgroup counters.
    async fn open_counters(&self) -> Option<CgroupCounters> {
        let info = timed(
            "inspect",
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
    async fn exit_code(&self) -> Result<i64, CallError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = self.engine.docker.wait_container(&self.id, Some(options));
        match wait.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(EngineError::DockerContainerWaitError { code, .. })) => Ok(code),
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
        for pump in [&self.output, &self.stderr_pump] {
            let pump = pump.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(pump) = pump {
                let _ = tokio::time::timeout(STREAM_DRAIN, pump).await;
            }
        }
    }

    /// Turns an exit code into a result, asking the engine whether it was an OOM kill.
    ///
    /// The wait has returned, so the container did exit with `code`: if the engine
    /// cannot be asked any more (the container was removed from outside, `docker rm
    /// -f`), that is what the caller learns, never an engine error.
    async fn judge_exit(&self, code: i64) -> RunResult {
        if code == 0 {
            return Ok(());
        }
        let inspected = timed(
            "inspect",
            self.engine.docker.inspect_container(&self.id, None),
        )
        .await;
        let oom_killed = match inspected {
            Ok(info) => info.state.and_then(|s| s.oom_killed) == Some(true),
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(e) => {
                tracing::warn!(container = %self.id, error = %e, code, "could not ask the engine whether an exit was an OOM kill");
                false
            }
        };
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
}

impl Cookie for DockerCookie {
    async fn run(&mut self) -> Result<Running, CallError> {
        let engine_error = |what: &str, e: EngineError| CallError::engine(format!("{what}: {e}"));
        let pipes = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdin(true)
            .stdout(true)
            .build();
        let attached = timed(
            "attach",
            self.engine.docker.attach_container(&self.id, Some(pipes)),
        )
        .await
        .map_err(|e| engine_error("attaching to the container", e))?;
        let stderr_only = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stderr(true)
            .build();
        let stderr = timed(
            "attach",
            self.engine
                .docker
                .attach_container(&self.id, Some(stderr_only)),
        )
        .await
        .map_err(|e| engine_error("attaching to the container's stderr", e))?;
        *self
            .stderr_pump
            .get_mut()
            .unwrap_or_else(|e| e.into_inner()) = Some(tokio::spawn(pump_stderr(
            stderr.output,
            self.stderr.clone(),
        )));
        timed("start", self.engine.docker.start_container(&self.id, None))
            .await
            .map_err(|e| engine_error("starting the container", e))?;
        self.started = Some(Instant::now());
        if self.counters_wanted {
            self.counters = self.open_counters().await;
        }

        let mut stdin = Box::new(attached.input) as BoxWrite;
        let mut stdout = StdoutReader::new(attached.output);
        let mut running = Running {
            stdin: None,
            stdout: None,
        };
        let plumbing = self.plumbing.get_mut().unwrap_or_else(|e| e.into_inner());
        let (input, stdout_sink, stats_sink) = (
            plumbing.input.take(),
            plumbing.stdout.take(),
            plumbing.stats.take(),
        );
        match input {
            Some(mut input) => self.keep_helper(tokio::spawn(async move {
                // The function may exit without reading everything: not our error.
                let _ = copy(&mut input, &mut stdin).await;
                let _ = stdin.shutdown().await;
            })),
            None => running.stdin = Some(stdin),
        }
        match stdout_sink {
            Some(mut sink) => {
                let output = tokio::spawn(async move {
                    let _ = copy(&mut stdout, &mut sink).await;
                    let _ = sink.flush().await;
                });
                *self.output.lock().unwrap_or_else(|e| e.into_inner()) = Some(output);
            }
            None => running.stdout = Some(Box::new(stdout)),
        }
        if let Some(sink) = stats_sink {
            let docker = self.engine.docker.clone();
            let id = self.id.clone();
            self.keep_helper(tokio::spawn(async move {
                let options = StatsOptionsBuilder::default().stream(true).build();
                let mut samples = docker.stats(&id, Some(options));
                while let Some(Ok(sample)) = samples.next().await {
                    if let Some(stat) = engine_stats::to_stat(&sample, SystemTime::now()) {
                        sink(stat);
                    }
                }
            }));
        }
        Ok(running)
    }

    async fn wait(&self, cancel: &CancellationToken) -> RunResult {
        let deadline = deadline(self.started, self.timeout);
        let exit = self.exit_code();
        tokio::pin!(exit);
        let interrupted = tokio::select! {
            code = &mut exit => {
                return match code {
                    Ok(code) => {
                        self.drain_output().await;
                        self.judge_exit(code).await
                    }
                    Err(e) => Err(e),
                };
            }
            () = sleep_until_deadline(deadline) => CallError::Timeout {
                timeout: self.timeout.unwrap_or_default(),
            },
            () = cancel.cancelled() => CallError::Cancelled,
        };
        self.kill().await?;
        let _ = exit.await;
        self.drain_output().await;
        Err(interrupted)
    }

    async fn kill(&self) -> Result<(), CallError> {
        let options = KillContainerOptionsBuilder::default()
            .signal("KILL")
            .build();
        match timed(
            "kill",
            self.engine.docker.kill_container(&self.id, Some(options)),
        )
        .await
        {
            Ok(()) => Ok(()),
            // 404: gone; 409: not running any more. Either way it is dead.
            Err(EngineError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
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
        let helpers = std::mem::take(&mut *self.helpers.lock().unwrap_or_else(|e| e.into_inner()));
        for helper in helpers {
            helper.abort();
        }
        if let Some(pump) = self
            .stderr_pump
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            pump.abort();
        }
        if let Err(e) = self.engine.remove_container(&self.id).await {
            tracing::warn!(container = %self.id, error = %e, "could not remove a container");
        }
    }
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
        for helper in self
            .helpers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            helper.abort();
        }
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
