//! `--engine`, `--engine-socket` and `--engine-group-size`: the engine a
//! command drives, as `[engine]` chooses it for `hotpool serve`.

use std::path::PathBuf;

use clap::Args;
use hotpool::driver::{EngineChoice, EngineKind};

/// Which container engine to drive.
#[derive(Debug, Args)]
pub(crate) struct EngineArgs {
    /// The container engine: docker or containerd. Absent: Docker where it
    /// answers, else containerd (Docker alone where --engine-socket or
    /// DOCKER_HOST names it).
    #[arg(long, value_name = "KIND")]
    engine: Option<EngineKind>,
    /// The engine's API socket; absent: the engine's default (docker:
    /// DOCKER_HOST, else /var/run/docker.sock; containerd:
    /// /run/containerd/containerd.sock).
    #[arg(long, value_name = "PATH")]
    engine_socket: Option<PathBuf>,
    /// containerd only: the most containers one shim process serves (default
    /// 64).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    engine_group_size: Option<u16>,
}

impl EngineArgs {
    /// The engine these flags name.
    pub(crate) fn choice(&self) -> EngineChoice {
        let mut choice = EngineChoice::default();
        choice.kind = self.engine;
        choice.socket.clone_from(&self.engine_socket);
        choice.group_size = self.engine_group_size.map(usize::from);
        choice
    }
}
