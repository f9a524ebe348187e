//! The engine chosen at run time: one [`Driver`] over every real engine, so the
//! server and the command line pick Docker or containerd from a config key or a
//! flag, and the pool and its callers stay the same code.
//!
//! [`EngineChoice`] says which engine and where; [`AnyDriver::connect`] connects
//! to it. With no kind named, Docker is chosen where it answers, as hotpool
//! always did, and containerd at its default socket where Docker does not
//! (unless a socket or `DOCKER_HOST` names Docker: then Docker or nothing).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::containerd::{ContainerdCookie, ContainerdDriver, ContainerdOptions};
use super::docker::{DockerCookie, DockerDriver, DockerOptions};
use super::{
    AdoptError, ClaimError, Cookie, Driver, EngineTraits, Leftover, PoolLock, RunResult, Running,
    Task,
};
use crate::error::CallError;

/// A container engine hotpool can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EngineKind {
    /// dockerd, through its HTTP API.
    Docker,
    /// containerd, through its gRPC API (what Kubernetes nodes run).
    Containerd,
}

impl EngineKind {
    /// `docker` or `containerd`, as configs, flags and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Docker => super::docker::ENGINE,
            EngineKind::Containerd => super::containerd::ENGINE,
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
            "containerd" => Ok(EngineKind::Containerd),
            other => Err(format!(
                "{other:?} is not an engine: use docker or containerd"
            )),
        }
    }
}

/// Which engine to drive, and where it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineChoice {
    /// The engine; `None`: Docker where it answers, else containerd.
    pub kind: Option<EngineKind>,
    /// Its API socket; `None`: the engine's default (Docker: `DOCKER_HOST`, else
    /// `/var/run/docker.sock`; containerd: `/run/containerd/containerd.sock`).
    pub socket: Option<PathBuf>,
    /// containerd's namespace for hotpool's containers and images; `None`:
    /// `hotpool`. Docker has none.
    pub namespace: Option<String>,
    /// containerd's snapshotter; `None`: `overlayfs`. Docker has none.
    pub snapshotter: Option<String>,
    /// The most containers one containerd shim serves; `None`: the driver's
    /// default ([`ContainerdOptions::group_size`]). Docker has no groups.
    pub group_size: Option<usize>,
}

/// A driver of whichever engine was chosen. Cheap to clone.
#[derive(Clone)]
pub enum AnyDriver {
    /// Docker.
    Docker(DockerDriver),
    /// containerd.
    Containerd(ContainerdDriver),
}

/// A prepared task of an [`AnyDriver`].
pub enum AnyCookie {
    /// A Docker container.
    Docker(DockerCookie),
    /// A containerd container and its task.
    Containerd(ContainerdCookie),
}

impl AnyDriver {
    /// Connects to the engine `choice` names, and checks it answers.
    pub async fn connect(choice: &EngineChoice) -> Result<AnyDriver, CallError> {
        match choice.kind {
            Some(EngineKind::Docker) => AnyDriver::docker(choice).await,
            Some(EngineKind::Containerd) => AnyDriver::containerd(choice).await,
            // Docker named by its socket or DOCKER_HOST: no other engine will do.
            None if choice.socket.is_some() || std::env::var_os("DOCKER_HOST").is_some() => {
                AnyDriver::docker(choice).await
            }
            None => match AnyDriver::docker(choice).await {
                Ok(docker) => Ok(docker),
                Err(docker) => AnyDriver::containerd(choice).await.map_err(|containerd| {
                    CallError::engine(format!(
                        "no engine answers; docker: {docker}; containerd: {containerd}"
                    ))
                }),
            },
        }
    }

    async fn docker(choice: &EngineChoice) -> Result<AnyDriver, CallError> {
        let mut options = DockerOptions::default();
        options.socket.clone_from(&choice.socket);
        Ok(AnyDriver::Docker(DockerDriver::connect(options).await?))
    }

    async fn containerd(choice: &EngineChoice) -> Result<AnyDriver, CallError> {
        let mut options = ContainerdOptions::default();
        if let Some(socket) = &choice.socket {
            options.socket.clone_from(socket);
        }
        if let Some(namespace) = &choice.namespace {
            options.namespace.clone_from(namespace);
        }
        if let Some(snapshotter) = &choice.snapshotter {
            options.snapshotter.clone_from(snapshotter);
        }
        if let Some(group_size) = choice.group_size {
            options.group_size = group_size;
        }
        Ok(AnyDriver::Containerd(
            ContainerdDriver::connect(options).await?,
        ))
    }

    /// Installs the direct transport's init program and runtime directory now,
    /// rather than at the first start, so that a problem shows at once.
    pub async fn install_runtime(&self) -> Result<PathBuf, CallError> {
        match self {
            AnyDriver::Docker(driver) => driver.install_runtime().await,
            AnyDriver::Containerd(driver) => driver.install_runtime().await,
        }
    }
}

impl Driver for AnyDriver {
    type Cookie = AnyCookie;
    type Claim = PoolLock;

    fn traits(&self) -> EngineTraits {
        match self {
            AnyDriver::Docker(driver) => driver.traits(),
            AnyDriver::Containerd(driver) => driver.traits(),
        }
    }

    async fn prepare(&self, task: Task) -> Result<AnyCookie, CallError> {
        match self {
            AnyDriver::Docker(driver) => driver.prepare(task).await.map(AnyCookie::Docker),
            AnyDriver::Containerd(driver) => driver.prepare(task).await.map(AnyCookie::Containerd),
        }
    }

    async fn claim_pool(&self, pool: &str) -> Result<PoolLock, ClaimError> {
        match self {
            AnyDriver::Docker(driver) => driver.claim_pool(pool).await,
            AnyDriver::Containerd(driver) => driver.claim_pool(pool).await,
        }
    }

    async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, CallError> {
        match self {
            AnyDriver::Docker(driver) => driver.remove_labelled(key, value).await,
            AnyDriver::Containerd(driver) => driver.remove_labelled(key, value).await,
        }
    }

    async fn ping(&self) -> Result<(), CallError> {
        match self {
            AnyDriver::Docker(driver) => driver.ping().await,
            AnyDriver::Containerd(driver) => driver.ping().await,
        }
    }

    fn removal_deadline(&self) -> Duration {
        match self {
            AnyDriver::Docker(driver) => driver.removal_deadline(),
            AnyDriver::Containerd(driver) => driver.removal_deadline(),
        }
    }

    async fn leftovers(&self, key: &str, value: &str) -> Result<Vec<Leftover>, CallError> {
        match self {
            AnyDriver::Docker(driver) => driver.leftovers(key, value).await,
            AnyDriver::Containerd(driver) => driver.leftovers(key, value).await,
        }
    }

    async fn adopt(&self, leftover: &Leftover, task: Task) -> Result<AnyCookie, AdoptError> {
        match self {
            AnyDriver::Docker(driver) => driver.adopt(leftover, task).await.map(AnyCookie::Docker),
            AnyDriver::Containerd(driver) => driver
                .adopt(leftover, task)
                .await
                .map(AnyCookie::Containerd),
        }
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> Result<(), CallError> {
        match self {
            AnyDriver::Docker(driver) => driver.remove_leftover(leftover).await,
            AnyDriver::Containerd(driver) => driver.remove_leftover(leftover).await,
        }
    }
}

impl Cookie for AnyCookie {
    async fn run(&mut self) -> Result<Running, CallError> {
        match self {
            AnyCookie::Docker(cookie) => cookie.run().await,
            AnyCookie::Containerd(cookie) => cookie.run().await,
        }
    }

    async fn wait(&self, cancel: &CancellationToken) -> RunResult {
        match self {
            AnyCookie::Docker(cookie) => cookie.wait(cancel).await,
            AnyCookie::Containerd(cookie) => cookie.wait(cancel).await,
        }
    }

    async fn kill(&self) -> Result<(), CallError> {
        match self {
            AnyCookie::Docker(cookie) => cookie.kill().await,
            AnyCookie::Containerd(cookie) => cookie.kill().await,
        }
    }

    async fn close(&self) {
        match self {
            AnyCookie::Docker(cookie) => cookie.close().await,
            AnyCookie::Containerd(cookie) => cookie.close().await,
        }
    }

    async fn release(&self) -> bool {
        match self {
            AnyCookie::Docker(cookie) => cookie.release().await,
            AnyCookie::Containerd(cookie) => cookie.release().await,
        }
    }

    fn cpu_time(&self) -> Option<Duration> {
        match self {
            AnyCookie::Docker(cookie) => cookie.cpu_time(),
            AnyCookie::Containerd(cookie) => cookie.cpu_time(),
        }
    }

    fn memory_bytes(&self) -> Option<u64> {
        match self {
            AnyCookie::Docker(cookie) => cookie.memory_bytes(),
            AnyCookie::Containerd(cookie) => cookie.memory_bytes(),
        }
    }
}
