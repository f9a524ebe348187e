//! The engine chosen at run time: one [`Driver`] over every real engine, so the
//! server and the command line pick Docker or containerd from a config key or a
//! flag, and the pool and its callers stay the same code.
//!
//! [`EngineChoice`] says which engine and where; [`AnyDriver::connect`] connects
//! to it. With no kind named, Docker is chosen where its socket answers, as
//! hotpool always did.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::docker::{DockerCookie, DockerDriver, DockerOptions};
use super::{ClaimError, Cookie, Driver, EngineTraits, PoolLock, RunResult, Running, Task};
use crate::error::CallError;

/// A container engine hotpool can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EngineKind {
    /// dockerd, through its HTTP API.
    Docker,
}

impl EngineKind {
    /// `docker`, as configs, flags and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Docker => super::docker::ENGINE,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(text: &str) -> Result<EngineKind, String> {
        match text {
            "docker" => Ok(EngineKind::Docker),
            other => Err(format!("{other:?} is not an engine: use docker")),
        }
    }
}

/// Which engine to drive, and where it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineChoice {
    /// The engine; `None`: Docker where its socket answers.
    pub kind: Option<EngineKind>,
    /// Its API socket; `None`: the engine's default (Docker: `DOCKER_HOST`, else
    /// `/var/run/docker.sock`).
    pub socket: Option<PathBuf>,
}

/// A driver of whichever engine was chosen. Cheap to clone.
#[derive(Clone)]
pub enum AnyDriver {
    /// Docker.
    Docker(DockerDriver),
}

/// A prepared task of an [`AnyDriver`].
pub enum AnyCookie {
    /// A Docker container.
    Docker(DockerCookie),
}

impl AnyDriver {
    /// Connects to the engine `choice` names, and checks it answers.
    pub async fn connect(choice: &EngineChoice) -> Result<AnyDriver, CallError> {
        match choice.kind.unwrap_or(EngineKind::Docker) {
            EngineKind::Docker => {
                let mut options = DockerOptions::default();
                options.socket.clone_from(&choice.socket);
                Ok(AnyDriver::Docker(DockerDriver::connect(options).await?))
            }
        }
    }

    /// Installs the direct transport's init program and runtime directory now,
    /// rather than at the first start, so that a problem shows at once.
    pub async fn install_runtime(&self) -> Result<PathBuf, CallError> {
        match self {
            AnyDriver::Docker(driver) => driver.install_runtime().await,
        }
    }
}

impl Driver for AnyDriver {
    type Cookie = AnyCookie;
    type Claim = PoolLock;

    fn traits(&self) -> EngineTraits {
        match self {
            AnyDriver::Docker(driver) => driver.traits(),
        }
    }

    async fn prepare(&self, task: Task) -> Result<AnyCookie, CallError> {
        match self {
            AnyDriver::Docker(driver) => driver.prepare(task).await.map(AnyCookie::Docker),
        }
    }

    async fn claim_pool(&self, pool: &str) -> Result<PoolLock, ClaimError> {
        match self {
            AnyDriver::Docker(driver) => driver.claim_pool(pool).await,
        }
    }

    async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, CallError> {
        match self {
            AnyDriver::Docker(driver) => driver.remove_labelled(key, value).await,
        }
    }

    async fn ping(&self) -> Result<(), CallError> {
        match self {
            AnyDriver::Docker(driver) => driver.ping().await,
        }
    }

    fn removal_deadline(&self) -> Duration {
        match self {
            AnyDriver::Docker(driver) => driver.removal_deadline(),
        }
    }
}

impl Cookie for AnyCookie {
    async fn run(&mut self) -> Result<Running, CallError> {
        match self {
            AnyCookie::Docker(cookie) => cookie.run().await,
        }
    }

    async fn wait(&self, cancel: &CancellationToken) -> RunResult {
        match self {
            AnyCookie::Docker(cookie) => cookie.wait(cancel).await,
        }
    }

    async fn kill(&self) -> Result<(), CallError> {
        match self {
            AnyCookie::Docker(cookie) => cookie.kill().await,
        }
    }

    async fn close(&self) {
        match self {
            AnyCookie::Docker(cookie) => cookie.close().await,
        }
    }

    fn cpu_time(&self) -> Option<Duration> {
        match self {
            AnyCookie::Docker(cookie) => cookie.cpu_time(),
        }
    }

    fn memory_bytes(&self) -> Option<u64> {
        match self {
            AnyCookie::Docker(cookie) => cookie.memory_bytes(),
        }
    }
}
