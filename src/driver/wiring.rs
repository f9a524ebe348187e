//! How a started container's stdin and stdout meet its task, the same for every
//! driver: fed from the task's own input and drained into its own sink (a cold
//! call, like `docker run -i`), or handed out in [`Running`] for the caller to
//! keep writing calls into (a hot container). [`Copiers`] holds the tasks that
//! copy a cookie's bytes, so that it can wait for them or end them.

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, copy};
use tokio::task::JoinHandle;

use super::{BoxRead, BoxWrite, Running};

/// The tasks copying one container's bytes: its stdin feeder and other helpers,
/// the drain of its stdout into the task's sink, and the pump of its stderr.
#[derive(Default)]
pub(crate) struct Copiers {
    helpers: Mutex<Vec<JoinHandle<()>>>,
    output: Mutex<Option<JoinHandle<()>>>,
    stderr: Mutex<Option<JoinHandle<()>>>,
}

impl Copiers {
    /// Keeps `task` to be ended with the others.
    pub(crate) fn keep(&self, task: JoinHandle<()>) {
        lock(&self.helpers).push(task);
    }

    /// The pump of the container's stderr.
    pub(crate) fn pump_stderr(&self, task: JoinHandle<()>) {
        *lock(&self.stderr) = Some(task);
    }

    /// Waits, at most `patience` each, until all of stdout has reached the
    /// task's sink and all of stderr its tap (the streams end once the
    /// container has stopped).
    pub(crate) async fn drain(&self, patience: Duration) {
        for copier in [&self.output, &self.stderr] {
            let copier = lock(copier).take();
            if let Some(copier) = copier {
                let _ = tokio::time::timeout(patience, copier).await;
            }
        }
    }

    /// Ends every copier now.
    pub(crate) fn abort(&self) {
        for helper in std::mem::take(&mut *lock(&self.helpers)) {
            helper.abort();
        }
        for copier in [&self.output, &self.stderr] {
            if let Some(copier) = lock(copier).take() {
                copier.abort();
            }
        }
    }

    /// Wires `stdin` and `stdout` to the task's `input` and `sink` where it
    /// brought them, copying under these copiers, and hands out the rest.
    pub(crate) fn wire(
        &self,
        mut stdin: BoxWrite,
        mut stdout: BoxRead,
        input: Option<BoxRead>,
        sink: Option<BoxWrite>,
    ) -> Running {
        let mut running = Running {
            stdin: None,
            stdout: None,
            mark: None,
        };
        match input {
            Some(mut input) => self.keep(tokio::spawn(async move {
                // The function may exit without reading everything: not our error.
                let _ = copy(&mut input, &mut stdin).await;
                let _ = stdin.shutdown().await;
            })),
            None => running.stdin = Some(stdin),
        }
        match sink {
            Some(mut sink) => {
                *lock(&self.output) = Some(tokio::spawn(async move {
                    let _ = copy(&mut stdout, &mut sink).await;
                    let _ = sink.flush().await;
                }));
            }
            None => running.stdout = Some(stdout),
        }
        running
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
