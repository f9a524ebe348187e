//! Shared helpers of the integration tests: the real engine, the test-function
//! image built from this repository's own sources, and a real registry on loopback.
//!
//! Nothing here is a mock: a test that needs the engine fails with a message that
//! says how to start it, under CI and outside it alike.

#![allow(dead_code, unreachable_pub)]

pub mod cli_engine;
pub mod cluster;
pub mod containerd;
pub mod engine;
pub mod http;
pub mod pool;
pub mod prepare;
pub mod registry;
pub mod server;
pub mod takeover;
pub mod token_front;
pub mod wedge;

use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::TryStreamExt;
use hotpool::driver::docker::{DockerDriver, DockerOptions};
use tokio::io::AsyncWrite;

/// The test images' tag: `dev`, or `$HOTPOOL_TEST_TAG` so that two checkouts
/// testing at once on one engine do not overwrite each other's images.
fn image_tag(repository: &str) -> &'static str {
    let tag = std::env::var("HOTPOOL_TEST_TAG").unwrap_or_else(|_| "dev".to_owned());
    format!("{repository}:{tag}").leak()
}

/// Runs a test once per transport: `per_transport!(name);` beside
/// `async fn name(transport: Transport)` makes the tests `name::attach` and
/// `name::direct`; `per_transport!(sync name)` does the same for a plain `fn`.
#[macro_export]
macro_rules! per_transport {
    (sync $name:ident) => {
        mod $name {
            #[test]
            fn attach() {
                super::$name(hotpool::driver::Transport::Attach)
            }

            #[test]
            fn direct() {
                super::$name(hotpool::driver::Transport::Direct)
            }
        }
    };
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn attach() {
                super::$name(hotpool::driver::Transport::Attach).await
            }

            #[tokio::test]
            async fn direct() {
                super::$name(hotpool::driver::Transport::Direct).await
            }
        }
    };
}

/// Runs a test once per engine: `per_engine!(name);` beside
/// `async fn name<D: Driver>(engine: OnEngine<D>)` makes the tests
/// `name::docker` and `name::containerd`, each given a driver of its engine
/// and the test-function image as that engine reaches it.
#[macro_export]
macro_rules! per_engine {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn docker() {
                super::$name($crate::support::on_docker().await).await
            }

            #[tokio::test]
            async fn containerd() {
                super::$name($crate::support::on_containerd().await).await
            }
        }
    };
}

/// Runs a test once per engine and transport: `per_engine_transport!(name);`
/// beside `async fn name<D: TestEngine>(engine: OnEngine<D>, transport: Transport)`
/// makes the tests `name::docker::attach`, `name::docker::direct` and
/// `name::containerd::direct`. containerd has no attach transport (its driver's
/// traits say so, and a pool refuses such a function there): direct alone.
#[macro_export]
macro_rules! per_engine_transport {
    ($name:ident) => {
        mod $name {
            mod docker {
                #[tokio::test]
                async fn attach() {
                    let engine = $crate::support::on_docker().await;
                    super::super::$name(engine, hotpool::driver::Transport::Attach).await
                }

                #[tokio::test]
                async fn direct() {
                    let engine = $crate::support::on_docker().await;
                    super::super::$name(engine, hotpool::driver::Transport::Direct).await
                }
            }

            mod containerd {
                #[tokio::test]
                async fn direct() {
                    let engine = $crate::support::on_containerd().await;
                    assert!(!hotpool::driver::Driver::traits(&engine.driver).attach);
                    super::super::$name(engine, hotpool::driver::Transport::Direct).await
                }
            }
        }
    };
}

/// A driver of one engine, the test-function image on it, and what removes a
/// test's containers there.
pub struct OnEngine<D> {
    pub driver: D,
    /// The test-function image, as the driver names it.
    pub image: String,
    /// Makes a guard that removes every container labelled `hotpool.pool=<pool>`
    /// when dropped.
    pub guard: fn(String) -> Box<dyn std::any::Any + Send>,
    /// Keeps containerd's image while the test runs.
    _image: Option<Arc<containerd::TestImage>>,
}

/// The Docker driver and the test-function image built into Docker.
pub async fn on_docker() -> OnEngine<DockerDriver> {
    OnEngine {
        driver: driver().await,
        image: testfn_image().to_owned(),
        guard: |pool| Box::new(PoolGuard(pool)),
        _image: None,
    }
}

/// The containerd driver and the test-function image pulled from a registry.
pub async fn on_containerd() -> OnEngine<hotpool::driver::containerd::ContainerdDriver> {
    let image = containerd::TestImage::shared().await;
    OnEngine {
        driver: containerd::driver(&image).await,
        image: image.name.clone(),
        guard: |pool| Box::new(containerd::PoolGuard(pool)),
        _image: Some(image),
    }
}

/// The pipe directories of the task `task_id` that the direct transport left
/// under the default runtime directory (by this process's drivers).
pub fn direct_dirs_of(task_id: &str) -> Vec<PathBuf> {
    runtime_dirs_of_process(std::process::id())
        .into_iter()
        .map(|dir| dir.join(task_id))
        .filter(|dir| dir.exists())
        .collect()
}

/// The directories (`PID.N`) that the drivers of process `pid` keep under the
/// default runtime directory.
pub fn runtime_dirs_of_process(pid: u32) -> Vec<PathBuf> {
    process_dirs_in(&runtime_root(), pid)
}

/// The lock files of pool `pool` (`pools/ENGINE/POOL.lock`) in the default
/// runtime directory, on any engine.
pub fn pool_locks_of(pool: &str) -> Vec<PathBuf> {
    let Ok(engines) = std::fs::read_dir(runtime_root().join("pools")) else {
        return Vec::new();
    };
    engines
        .filter_map(|engine| Some(engine.ok()?.path().join(format!("{pool}.lock"))))
        .filter(|lock| lock.exists())
        .collect()
}

/// The default runtime directory, as the driver picks it.
pub fn runtime_root() -> PathBuf {
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join("hotpool"),
        None if uid == 0 => PathBuf::from("/run/hotpool"),
        None => std::env::temp_dir().join(format!("hotpool-{uid}")),
    }
}

/// The directories (`PID.N`) of hotpool process `pid` in runtime directory `root`.
pub fn process_dirs_in(root: &std::path::Path, pid: impl std::fmt::Display) -> Vec<PathBuf> {
    let prefix = format!("{pid}.");
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect()
}

/// Connects to the real engine, or fails the test saying how to get one.
pub async fn driver_with(options: DockerOptions) -> DockerDriver {
    match DockerDriver::connect(options).await {
        Ok(driver) => driver,
        Err(e) => panic!(
            "these tests need a running Docker engine and could not reach one: {e}\n\
             start it (`sudo service docker start`, or install Debian's docker.io) and run again"
        ),
    }
}

/// [`driver_with`] default options.
pub async fn driver() -> DockerDriver {
    driver_with(DockerOptions::default()).await
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the static test-function binary and the `FROM scratch` image around it
/// (once per test process), returning the image tag.
pub fn testfn_image() -> &'static str {
    static BUILT: OnceLock<&str> = OnceLock::new();
    BUILT.get_or_init(|| function_image("hotpool-testfn", image_tag("hotpool-testfn")))
}

/// Likewise for the example http-format function.
pub fn hello_image() -> &'static str {
    static BUILT: OnceLock<&str> = OnceLock::new();
    BUILT.get_or_init(|| function_image("hotpool-hello-http", image_tag("hotpool-hello-http")))
}

/// Builds the workspace package `package` statically and the image `tag` that
/// runs it.
fn function_image(package: &'static str, tag: &'static str) -> &'static str {
    let binary = build_static(package);
    // A runtime of its own: the engine client must not outlive the test's runtime.
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(build_image(binary, package, tag))
    })
    .join()
    .expect("image build thread");
    tag
}

fn build_static(package: &str) -> PathBuf {
    let root = repo_root();
    let target_dir = root.join("target/functions");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            package,
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&root)
        .status()
        .expect("run cargo to build a function");
    assert!(status.success(), "building the static {package} failed");
    target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(package)
}

async fn build_image(binary: PathBuf, name: &str, tag: &str) {
    let mut context = tar::Builder::new(Vec::new());
    let dockerfile = format!("FROM scratch\nCOPY {name} /{name}\nENTRYPOINT [\"/{name}\"]\n");
    append(&mut context, "Dockerfile", dockerfile.as_bytes(), 0o644);
    append(
        &mut context,
        name,
        &std::fs::read(&binary).expect("read binary"),
        0o755,
    );
    build(context.into_inner().expect("tar"), tag).await;
}

/// Builds `tag` in Docker: the test-function image and one more layer, a file
/// of fresh bytes, that no engine has yet (so a pull of it must fetch a layer,
/// whatever else was pulled before). The caller removes the tag.
pub async fn fresh_layer_image(tag: &str) {
    let base = testfn_image();
    let mut context = tar::Builder::new(Vec::new());
    let dockerfile = format!("FROM {base}\nCOPY fresh /fresh\n");
    append(&mut context, "Dockerfile", dockerfile.as_bytes(), 0o644);
    let fresh = hotpool::driver::new_id();
    append(&mut context, "fresh", fresh.as_bytes(), 0o644);
    build(context.into_inner().expect("tar"), tag).await;
}

/// Builds `tag` from the tar `context` in Docker.
async fn build(context: Vec<u8>, tag: &str) {
    let docker = Docker::connect_with_local_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("the Docker engine answers");
    let options = BuildImageOptionsBuilder::default().t(tag).rm(true).build();
    docker
        .build_image(options, None, Some(bollard::body_full(context.into())))
        .try_for_each(|_| async { Ok(()) })
        .await
        .unwrap_or_else(|e| panic!("build the image {tag}: {e}"));
}

fn append(context: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8], mode: u32) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_cksum();
    context
        .append_data(&mut header, name, data)
        .expect("tar entry");
}

/// Bytes written by a driver, readable by the test afterwards.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsyncWrite for SharedBuf {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Write::write(self.get_mut(), buf))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Whether the engine still has a container with this id.
pub async fn container_exists(docker: &Docker, id: &str) -> bool {
    match docker.inspect_container(id, None).await {
        Ok(_) => true,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => false,
        Err(e) => panic!("inspecting {id}: {e}"),
    }
}

/// Removes, when dropped, every container labelled `hotpool.pool=<name>`: a test
/// that fails half-way (a panic) still leaves nothing behind. After a clean
/// shutdown it finds nothing to do.
pub struct PoolGuard(pub String);

impl Drop for PoolGuard {
    fn drop(&mut self) {
        remove_pool_containers(&self.0);
    }
}

/// The ids of the containers labelled `hotpool.pool=<pool>`, running or not
/// (none if `docker` cannot be run).
pub fn pool_containers(pool: &str) -> Vec<String> {
    let listed = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=hotpool.pool={pool}"),
        ])
        .output();
    listed.map_or_else(
        |_| Vec::new(),
        |listed| {
            String::from_utf8_lossy(&listed.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        },
    )
}

/// `docker rm -f` of every container labelled `hotpool.pool=<pool>`; returns how
/// many there were.
pub fn remove_pool_containers(pool: &str) -> usize {
    let ids = pool_containers(pool);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    ids.len()
}
