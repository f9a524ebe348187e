//! The containerd driver in tests: a real containerd (at the Kubernetes node
//! default socket, as `scripts/prerequisites` starts it), the test-function
//! image pulled into it from a real registry, a guard that removes a test's
//! containers however it ends, and a count of what a test left behind in
//! hotpool's namespace.
//!
//! Images reach containerd the way they do in production: built with Docker
//! (as every test image is), pushed to the loopback registry of
//! [`super::registry`], and pulled by the driver itself. The image is shared
//! by the tests of a process that run at the same time and removed from
//! containerd (record, content and snapshots) when the last of them is done.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Weak};

use containerd_client::services::v1::snapshots::ListSnapshotsRequest;
use containerd_client::services::v1::{ListContainersRequest, ListRequest, ListTasksRequest};
use containerd_client::tonic::Request;
use hotpool::driver::Driver;
use hotpool::driver::containerd::{ContainerdDriver, ContainerdOptions};
use tempfile::TempDir;

use super::registry::{PASSWORD, Registry, USER};
use super::takeover::Engine;

/// Where the tests find containerd.
pub const SOCKET: &str = "/run/containerd/containerd.sock";
/// hotpool's namespace, where the driver works by default.
pub const NAMESPACE: &str = "hotpool";

/// Connects to containerd, or fails the test saying how to get one.
pub async fn driver_with(options: ContainerdOptions) -> ContainerdDriver {
    match ContainerdDriver::connect(options).await {
        Ok(driver) => driver,
        Err(e) => panic!(
            "these tests need containerd answering at {SOCKET} and could not reach it: {e}\n\
             start it with `scripts/prerequisites --engine` (Debian's containerd with \
             deploy/containerd/config.toml) and run again"
        ),
    }
}

/// A driver with default options that may pull `image`.
pub async fn driver(image: &TestImage) -> ContainerdDriver {
    driver_with(options(image)).await
}

/// Default options, with the credentials of `image`'s registry.
pub fn options(image: &TestImage) -> ContainerdOptions {
    let mut options = ContainerdOptions::default();
    options.docker_config_dir = Some(image.docker_config().to_owned());
    options
}

/// The test-function image in a registry, to be pulled into containerd.
pub struct TestImage {
    /// The image reference, `127.0.0.1:<port>/hotpool-testfn-containerd:v1`.
    pub name: String,
    config: TempDir,
    registry: Registry,
}

impl TestImage {
    /// The image the tests running now share; pushed anew once none is.
    pub async fn shared() -> Arc<TestImage> {
        static SHARED: tokio::sync::Mutex<Weak<TestImage>> =
            tokio::sync::Mutex::const_new(Weak::new());
        let mut shared = SHARED.lock().await;
        if let Some(image) = shared.upgrade() {
            return image;
        }
        let image = Arc::new(TestImage::push("hotpool-testfn-containerd").await);
        *shared = Arc::downgrade(&image);
        image
    }

    /// Starts a registry of its own and pushes the test function to it as
    /// `name`; nothing is in containerd yet.
    pub async fn push(name: &str) -> TestImage {
        let registry = Registry::start();
        let docker = super::driver().await;
        let name = registry.push(docker.docker(), name).await;
        let config = registry.docker_config(USER, PASSWORD);
        TestImage {
            name,
            config,
            registry,
        }
    }

    /// A Docker config directory with the registry's right credentials.
    pub fn docker_config(&self) -> &Path {
        self.config.path()
    }

    /// The registry it is in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Drop for TestImage {
    /// Removes the image from containerd, waiting for containerd to collect
    /// its content and snapshots (Docker's tag went after the push).
    fn drop(&mut self) {
        remove_from_containerd(&self.name);
    }
}

/// Removes image `name` from hotpool's namespace and waits for the collector.
pub fn remove_from_containerd(name: &str) {
    let _ = Command::new("ctr")
        .args(["--address", SOCKET, "--namespace", NAMESPACE])
        .args(["images", "rm", "--sync", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Removes, when dropped, everything of containerd labelled `hotpool.pool=<name>`
/// (through the driver's own `remove_labelled`): a test that fails half-way
/// still leaves nothing behind.
pub struct PoolGuard(pub String);

impl Drop for PoolGuard {
    fn drop(&mut self) {
        remove_pool(SOCKET, &self.0);
    }
}

/// Removes everything labelled `hotpool.pool=<pool>` from the containerd at
/// `socket`, through the driver's own `remove_labelled`; says so if it could not.
fn remove_pool(socket: &'static str, pool: &str) {
    let label = pool.to_owned();
    // A runtime of its own: the test's may be shutting down.
    let removed = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let mut options = ContainerdOptions::default();
                options.socket = socket.into();
                let driver = ContainerdDriver::connect(options).await?;
                driver
                    .remove_labelled(hotpool::pool::POOL_LABEL, &label)
                    .await
            })
    })
    .join();
    if let Ok(Err(e)) = removed {
        eprintln!("the guard of pool {pool} could not clean up: {e}");
    }
}

/// containerd as the take-over scenarios run `hotpool serve` on: `[engine]
/// kind = "containerd"`, `image` pulled by the server with its registry's
/// credentials.
pub fn engine(image: &TestImage) -> Engine {
    let credentials = image.docker_config().to_str().unwrap().to_owned();
    Engine {
        image: image.name.clone(),
        pool_extra: "shutdown_timeout = \"30s\"\n\n[engine]\nkind = \"containerd\"".to_owned(),
        env: vec![("DOCKER_CONFIG".to_owned(), credentials)],
        containers_of_function,
        holds_nothing_of: |pool, ids| {
            let (label, ids) = (pool.to_owned(), ids.to_vec());
            let left = block_on(async move {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                leftovers(hotpool::pool::POOL_LABEL, &label, &ids).await
            });
            assert_eq!(
                left,
                Leftovers::default(),
                "containerd holds nothing of {pool}"
            );
        },
        guard: |pool| Box::new(PoolGuard(pool)),
    }
}

/// The ids of the containers of function `function` in pool `pool` in
/// hotpool's namespace, sorted.
pub fn containers_of_function(pool: &str, function: &str) -> Vec<String> {
    let filter = format!(
        "labels.\"{}\"==\"{pool}\",labels.\"{}\"==\"{function}\"",
        hotpool::pool::POOL_LABEL,
        hotpool::driver::FUNCTION_LABEL
    );
    super::server::ids_listed_by(
        Command::new("ctr")
            .args(["--address", SOCKET, "--namespace", NAMESPACE])
            .args(["containers", "ls", "--quiet", &filter]),
    )
}

/// Runs `future` to its end on a runtime of its own, on a thread of its own
/// (the caller may be in a runtime).
fn block_on<T: Send + 'static>(future: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(future)
    })
    .join()
    .expect("the runtime's thread")
}

/// What containerd still holds of a test, in hotpool's namespace.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Containers labelled as asked.
    pub containers: Vec<String>,
    /// Tasks of the containers named.
    pub tasks: Vec<String>,
    /// Snapshots labelled as asked.
    pub snapshots: Vec<String>,
    /// Leases labelled as asked.
    pub leases: Vec<String>,
}

/// `message` as a request in hotpool's namespace.
pub fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", NAMESPACE.parse().unwrap());
    request
}

/// The containers, snapshots and leases labelled `key=value`, and the tasks of
/// containers `ids`, that containerd has in hotpool's namespace.
pub async fn leftovers(key: &str, value: &str, ids: &[&str]) -> Leftovers {
    let channel = containerd_client::connect(SOCKET)
        .await
        .expect("containerd answers");
    let client = containerd_client::Client::from(channel);
    let filter = format!("labels.\"{key}\"==\"{value}\"");
    let containers = client
        .containers()
        .list(request(ListContainersRequest {
            filters: vec![filter.clone()],
        }))
        .await
        .expect("list containers")
        .into_inner()
        .containers
        .into_iter()
        .map(|container| container.id)
        .collect();
    let tasks = client
        .tasks()
        .list(request(ListTasksRequest::default()))
        .await
        .expect("list tasks")
        .into_inner()
        .tasks
        .into_iter()
        // A task's id is its container's (containerd 1.6 leaves
        // `container_id` empty in this list).
        .map(|task| task.id)
        .filter(|id| ids.contains(&id.as_str()))
        .collect();
    let mut listed = client
        .snapshots()
        .list(request(ListSnapshotsRequest {
            snapshotter: "overlayfs".to_owned(),
            filters: vec![filter.clone()],
        }))
        .await
        .expect("list snapshots")
        .into_inner();
    let mut snapshots = Vec::new();
    while let Some(page) = listed.message().await.expect("list snapshots") {
        snapshots.extend(page.info.into_iter().map(|info| info.name));
    }
    let leases = client
        .leases()
        .list(request(ListRequest {
            filters: vec![filter],
        }))
        .await
        .expect("list leases")
        .into_inner()
        .leases
        .into_iter()
        .map(|lease| lease.id)
        .collect();
    Leftovers {
        containers,
        tasks,
        snapshots,
        leases,
    }
}

/// A containerd that `scripts/containerd-extra` runs beside the host's, one
/// with a Transfer service: where it answers and what the tests need of it.
pub struct ExtraContainerd {
    /// Its version as the script takes it: `1.7`, `2.1`.
    pub version: &'static str,
    /// Its socket.
    pub socket: &'static str,
    /// Its own `ctr`.
    pub ctr: &'static str,
    /// The test CA it trusts (`ca.pem`, `ca.key`), which the script makes.
    pub ca: &'static str,
}

/// containerd 1.7 (Debian trixie's): its Transfer service speaks HTTPS only.
pub const CONTAINERD_17: ExtraContainerd = ExtraContainerd {
    version: "1.7",
    socket: "/run/hotpool-containerd17/containerd.sock",
    ctr: "/opt/hotpool-containerd-1.7/usr/bin/ctr",
    ca: "/var/lib/hotpool-containerd17-ca",
};

/// containerd 2.1 (Debian sid's): its Transfer service speaks plain HTTP too.
pub const CONTAINERD_21: ExtraContainerd = ExtraContainerd {
    version: "2.1",
    socket: "/run/hotpool-containerd21/containerd.sock",
    ctr: "/opt/hotpool-containerd-2.1/usr/bin/ctr",
    ca: "/var/lib/hotpool-containerd21-ca",
};

impl ExtraContainerd {
    /// A driver of this daemon with `options` (its socket set here), or
    /// `None` when it does not answer outside CI; under `CI=true` that fails
    /// the test.
    pub async fn driver(&self, mut options: ContainerdOptions) -> Option<ContainerdDriver> {
        options.socket = self.socket.into();
        let answering = ContainerdDriver::connect(options).await;
        let missing = match answering {
            Ok(driver) if Path::new(self.ca).join("ca.key").exists() => return Some(driver),
            Ok(_) => format!("its test CA is missing from {}", self.ca),
            Err(e) => e.to_string(),
        };
        let advice = format!(
            "these tests need containerd {version} at {socket} ({missing}); start it with \
             `scripts/containerd-extra {version}` (Debian's containerd, pinned) and run again",
            version = self.version,
            socket = self.socket,
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{advice}");
        }
        eprintln!("SKIPPED: {advice}");
        None
    }

    /// Its `ctr` in hotpool's namespace, with `args`: the output.
    pub fn ctr(&self, args: &[&str]) -> String {
        let output = Command::new(self.ctr)
            .args(["--address", self.socket, "--namespace", NAMESPACE])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("containerd {}'s ctr runs: {e}", self.version));
        assert!(
            output.status.success(),
            "ctr {args:?} of containerd {}: {}",
            self.version,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// Removes, when dropped, image `image` from hotpool's namespace of `daemon`
/// (waiting for the collector) and every container labelled
/// `hotpool.pool=<pool>` there: a test that fails half-way leaves nothing.
pub struct ExtraGuard {
    /// The daemon.
    pub daemon: &'static ExtraContainerd,
    /// The image's full name.
    pub image: String,
    /// The pool the test's containers are labelled with.
    pub pool: String,
}

impl Drop for ExtraGuard {
    fn drop(&mut self) {
        remove_pool(self.daemon.socket, &self.pool);
        let _ = Command::new(self.daemon.ctr)
            .args(["--address", self.daemon.socket, "--namespace", NAMESPACE])
            .args(["images", "rm", "--sync", &self.image])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
