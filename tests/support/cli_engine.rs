//! The engine a test of the `hotpool` binary drives, named as a user names it:
//! `--engine` for `hotpool run` and `hotpool bench`, `[engine] kind` for
//! `hotpool serve`. Each engine comes with the test-function image as it
//! reaches it (Docker's store, or a registry on loopback that containerd pulls
//! from, with its credentials) and with what lists and removes a pool's
//! containers there.

use std::any::Any;
use std::process::Command;
use std::sync::Arc;

use hotpool::driver::EngineKind;

use super::containerd::{NAMESPACE, SOCKET, TestImage};

/// Runs a test of the binary once per engine: `per_engine_binary!(name);`
/// beside `fn name(engine: Engine)` makes the tests `name::docker` and
/// `name::containerd`.
#[macro_export]
macro_rules! per_engine_binary {
    ($name:ident) => {
        mod $name {
            #[test]
            fn docker() {
                super::$name($crate::support::cli_engine::Engine::docker())
            }

            #[test]
            fn containerd() {
                super::$name($crate::support::cli_engine::Engine::containerd())
            }
        }
    };
}

/// Runs a test of the binary on each engine over each of its transports:
/// `per_engine_binary_transport!(name);` beside
/// `fn name(engine: Engine, transport: Transport)` makes the tests
/// `name::docker_attach`, `name::docker_direct` and `name::containerd` (over
/// direct, containerd's only transport).
#[macro_export]
macro_rules! per_engine_binary_transport {
    ($name:ident) => {
        mod $name {
            use hotpool::driver::Transport;
            use $crate::support::cli_engine::Engine;

            #[test]
            fn docker_attach() {
                super::$name(Engine::docker(), Transport::Attach)
            }

            #[test]
            fn docker_direct() {
                super::$name(Engine::docker(), Transport::Direct)
            }

            #[test]
            fn containerd() {
                super::$name(Engine::containerd(), Transport::Direct)
            }
        }
    };
}

/// An engine for the binary to drive, and the test-function image on it.
pub struct Engine {
    kind: EngineKind,
    /// The test-function image, as the binary names it on this engine.
    pub image: String,
    /// containerd's image and its registry, kept while the test runs.
    registry_image: Option<Arc<TestImage>>,
}

impl Engine {
    /// The Docker engine, the test-function image built into it.
    pub fn docker() -> Engine {
        Engine {
            kind: EngineKind::Docker,
            image: super::testfn_image().to_owned(),
            registry_image: None,
        }
    }

    /// containerd, the test-function image in a registry (shared with the
    /// tests of this process that run meanwhile); fails the test saying how to
    /// start containerd if it does not answer.
    pub fn containerd() -> Engine {
        // A runtime of its own: a test of the binary may have none, or be in one.
        let image = std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(async {
                    let image = TestImage::shared().await;
                    super::containerd::driver(&image).await;
                    image
                })
        })
        .join()
        .expect("containerd answers and the test image is in a registry");
        Engine::containerd_with(image)
    }

    /// containerd, `image` the test function in its own registry.
    pub fn containerd_with(image: Arc<TestImage>) -> Engine {
        Engine {
            kind: EngineKind::Containerd,
            image: image.name.clone(),
            registry_image: Some(image),
        }
    }

    /// `docker` or `containerd`.
    pub fn name(&self) -> &'static str {
        self.kind.as_str()
    }

    /// Makes `command` (`hotpool run` or `hotpool bench`, its subcommand given)
    /// drive this engine and reach the image's registry.
    pub fn configure(&self, command: &mut Command) {
        command.args(["--engine", self.name()]);
        command.envs(self.env());
    }

    /// The environment the binary needs on this engine: the registry's
    /// credentials for containerd.
    pub fn env(&self) -> Vec<(&'static str, &str)> {
        self.registry_image
            .iter()
            .map(|image| {
                let config = image.docker_config().to_str().expect("a UTF-8 path");
                ("DOCKER_CONFIG", config)
            })
            .collect()
    }

    /// The `[engine]` table of a `hotpool serve` config naming this engine.
    pub fn config_table(&self) -> String {
        format!("[engine]\nkind = \"{}\"\n", self.name())
    }

    /// The ids of the containers labelled `hotpool.pool=<pool>` on this engine,
    /// whatever their state.
    pub fn containers_of(&self, pool: &str) -> Vec<String> {
        match self.kind {
            EngineKind::Containerd => ctr_containers_of(pool),
            _ => super::server::containers_of(pool),
        }
    }

    /// A guard that removes, when dropped, every container of `pool` on this
    /// engine: a test that fails half-way leaves nothing behind.
    pub fn guard(&self, pool: &str) -> Box<dyn Any> {
        match self.kind {
            EngineKind::Containerd => Box::new(super::containerd::PoolGuard(pool.to_owned())),
            _ => Box::new(super::PoolGuard(pool.to_owned())),
        }
    }
}

/// The ids of containerd's containers labelled `hotpool.pool=<pool>` in
/// hotpool's namespace.
fn ctr_containers_of(pool: &str) -> Vec<String> {
    super::server::ids_listed_by(
        Command::new("ctr")
            .args(["--address", SOCKET, "--namespace", NAMESPACE])
            .args(["containers", "ls", "-q"])
            .arg(format!("labels.\"{}\"=={pool}", hotpool::pool::POOL_LABEL)),
    )
}
