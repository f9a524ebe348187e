//! One prepared container on containerd.
//!
//! Not written yet: preparing a task fails with an engine error naming what
//! is missing. The type is here so that code choosing an engine at run time
//! can be written against [`super::ContainerdDriver`] now.

use std::sync::Arc;

use super::Engine;
use crate::driver::{Cookie, RunResult, Running, Task};
use crate::error::CallError;
use tokio_util::sync::CancellationToken;

/// A created container of a [`super::ContainerdDriver`].
pub struct ContainerdCookie {
    _engine: Arc<Engine>,
}

impl ContainerdCookie {
    pub(super) async fn prepare(_engine: Arc<Engine>, task: Task) -> Result<Self, CallError> {
        Err(CallError::engine(format!(
            "the containerd driver cannot run {} yet: it prepares no containers so far",
            task.image
        )))
    }
}

impl Cookie for ContainerdCookie {
    async fn run(&mut self) -> Result<Running, CallError> {
        Err(CallError::engine(
            "the containerd driver runs no containers so far",
        ))
    }

    async fn wait(&self, _cancel: &CancellationToken) -> RunResult {
        Err(CallError::engine(
            "the containerd driver runs no containers so far",
        ))
    }

    async fn kill(&self) -> Result<(), CallError> {
        Ok(())
    }

    async fn close(&self) {}
}
