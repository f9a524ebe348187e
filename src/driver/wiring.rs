//! How a started container's stdin and stdout meet its task, the same for every
//! driver: fed from the task's own input and drained into its own sink (a cold
//! call, like `docker run -i`), or handed out in [`Running`] for the caller to
//! keep writing calls into (a hot container).

use tokio::io::{AsyncWriteExt, copy};
use tokio::task::JoinHandle;

use super::{BoxRead, BoxWrite, Running};

/// A container's pipes, wired: what the caller gets, and the tasks that copy
/// for it.
pub(crate) struct Wired {
    /// The pipes the task did not claim.
    pub(crate) running: Running,
    /// Copies the task's input into stdin, then closes it.
    pub(crate) feeder: Option<JoinHandle<()>>,
    /// Copies stdout into the task's sink; done once all of it is there.
    pub(crate) output: Option<JoinHandle<()>>,
}

/// Wires `stdin` and `stdout` to the task's `input` and `sink` where it brought
/// them, and hands out the rest.
pub(crate) fn wire(
    mut stdin: BoxWrite,
    mut stdout: BoxRead,
    input: Option<BoxRead>,
    sink: Option<BoxWrite>,
) -> Wired {
    let mut wired = Wired {
        running: Running {
            stdin: None,
            stdout: None,
        },
        feeder: None,
        output: None,
    };
    match input {
        Some(mut input) => {
            wired.feeder = Some(tokio::spawn(async move {
                // The function may exit without reading everything: not our error.
                let _ = copy(&mut input, &mut stdin).await;
                let _ = stdin.shutdown().await;
            }));
        }
        None => wired.running.stdin = Some(stdin),
    }
    match sink {
        Some(mut sink) => {
            wired.output = Some(tokio::spawn(async move {
                let _ = copy(&mut stdout, &mut sink).await;
                let _ = sink.flush().await;
            }));
        }
        None => wired.running.stdout = Some(stdout),
    }
    wired
}
