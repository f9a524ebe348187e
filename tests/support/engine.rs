//! Either engine as a test sees it from outside hotpool: the containers of a
//! pool as the engine lists them, what an operator (or a crash) does to one of
//! them (kill, remove, pause), a container planted with a pool's label, and
//! what the engine holds of a container's confinement, in one shape for Docker
//! and containerd.
//!
//! Docker is asked through its API; containerd through its API to list and
//! read, and through `ctr` (as an operator would) to act.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use containerd_client::services::v1::{
    GetContainerRequest, ListContainersRequest, ListTasksRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use hotpool::driver::containerd::ContainerdDriver;
use hotpool::driver::docker::DockerDriver;
use hotpool::driver::{Driver, PoolLock};
use hotpool::pool::POOL_LABEL;

use super::OnEngine;
use super::containerd::{NAMESPACE, SOCKET, remove_from_containerd, request};

/// What the engine holds of a container's confinement.
#[derive(Debug)]
pub struct Confinement {
    /// The CFS quota and period, in microseconds, if the CPU is limited.
    pub cpu_quota: Option<(i64, u64)>,
    pub read_only_root: bool,
    /// The `nofile` limits, soft and hard.
    pub nofile: Vec<(u64, u64)>,
    /// The mount options of the tmpfs at `/tmp`, comma-separated.
    pub tmp_options: String,
    /// `uid:gid`.
    pub user: String,
    pub memory: i64,
    /// Memory and swap together.
    pub memory_and_swap: i64,
    pub pids_limit: i64,
    /// Whether the container has a network namespace of its own with nothing in it.
    pub no_network: bool,
}

/// A driver whose engine a test can look at and act on from outside.
pub trait TestEngine: Driver<Claim = PoolLock> {
    /// This engine's driver and the test-function image on it.
    fn on_engine() -> impl Future<Output = OnEngine<Self>> + Send;

    /// The ids of pool `pool`'s containers: running (or paused) ones only if
    /// `running`, else whatever their state.
    fn containers(&self, pool: &str, running: bool)
    -> impl Future<Output = HashSet<String>> + Send;

    /// SIGKILLs container `id`'s processes.
    fn kill(&self, id: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// Removes container `id`, running or not, as `docker rm -f` does.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// Freezes container `id`'s processes.
    fn pause(&self, id: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// Thaws them.
    fn resume(&self, id: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// Creates (and does not start) a container of `image` labelled as pool
    /// `pool`'s, which no pool started; returns its id.
    fn plant(&self, pool: &str, image: &str) -> impl Future<Output = String> + Send;

    /// What the engine holds of container `id`'s confinement.
    fn confinement(&self, id: &str) -> impl Future<Output = Confinement> + Send;
}

impl TestEngine for DockerDriver {
    async fn on_engine() -> OnEngine<DockerDriver> {
        super::on_docker().await
    }

    async fn containers(&self, pool: &str, running: bool) -> HashSet<String> {
        let filters = HashMap::from([("label", vec![format!("{POOL_LABEL}={pool}")])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(!running)
            .filters(&filters)
            .build();
        let listed = self
            .docker()
            .list_containers(Some(options))
            .await
            .expect("list containers");
        listed.into_iter().filter_map(|c| c.id).collect()
    }

    async fn kill(&self, id: &str) -> Result<(), String> {
        let options = bollard::query_parameters::KillContainerOptionsBuilder::default()
            .signal("KILL")
            .build();
        let killed = self.docker().kill_container(id, Some(options)).await;
        killed.map_err(|e| e.to_string())
    }

    async fn remove(&self, id: &str) -> Result<(), String> {
        let options = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
            .force(true)
            .build();
        let removed = self.docker().remove_container(id, Some(options)).await;
        removed.map_err(|e| e.to_string())
    }

    async fn pause(&self, id: &str) -> Result<(), String> {
        let paused = self.docker().pause_container(id).await;
        paused.map_err(|e| e.to_string())
    }

    async fn resume(&self, id: &str) -> Result<(), String> {
        let resumed = self.docker().unpause_container(id).await;
        resumed.map_err(|e| e.to_string())
    }

    async fn plant(&self, pool: &str, image: &str) -> String {
        let labels = HashMap::from([
            ("hotpool".to_owned(), "1".to_owned()),
            (POOL_LABEL.to_owned(), pool.to_owned()),
        ]);
        let body = bollard::models::ContainerCreateBody {
            image: Some(image.to_owned()),
            labels: Some(labels),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = None::<bollard::query_parameters::CreateContainerOptions>;
        let created = self.docker().create_container(options, body).await;
        created.expect("create a stray container").id
    }

    async fn confinement(&self, id: &str) -> Confinement {
        let inspected = self
            .docker()
            .inspect_container(id, None)
            .await
            .expect("inspect the container");
        let host = inspected.host_config.expect("host config");
        const PERIOD: u64 = 100_000;
        let cpu_quota = host
            .nano_cpus
            .filter(|nano| *nano > 0)
            .map(|nano| (nano * PERIOD as i64 / 1_000_000_000, PERIOD));
        let nofile = host
            .ulimits
            .unwrap_or_default()
            .into_iter()
            .filter(|u| u.name.as_deref() == Some("nofile"))
            .map(|u| (u.soft.unwrap_or(-1) as u64, u.hard.unwrap_or(-1) as u64))
            .collect();
        Confinement {
            cpu_quota,
            read_only_root: host.readonly_rootfs == Some(true),
            nofile,
            tmp_options: host
                .tmpfs
                .unwrap_or_default()
                .remove("/tmp")
                .expect("a tmpfs at /tmp"),
            user: inspected.config.and_then(|c| c.user).unwrap_or_default(),
            memory: host.memory.unwrap_or(0),
            memory_and_swap: host.memory_swap.unwrap_or(0),
            pids_limit: host.pids_limit.unwrap_or(0),
            no_network: host.network_mode.as_deref() == Some("none"),
        }
    }
}

impl TestEngine for ContainerdDriver {
    async fn on_engine() -> OnEngine<ContainerdDriver> {
        super::on_containerd().await
    }

    async fn containers(&self, pool: &str, running: bool) -> HashSet<String> {
        let client = containerd_client::Client::from(
            containerd_client::connect(SOCKET)
                .await
                .expect("containerd answers"),
        );
        let filter = format!("labels.\"{POOL_LABEL}\"==\"{pool}\"");
        let containers = client
            .containers()
            .list(request(ListContainersRequest {
                filters: vec![filter],
            }))
            .await
            .expect("list containers")
            .into_inner()
            .containers
            .into_iter()
            .map(|container| container.id);
        if !running {
            return containers.collect();
        }
        let live = [TaskStatus::Running, TaskStatus::Paused, TaskStatus::Pausing];
        let tasks: HashSet<String> = client
            .tasks()
            .list(request(ListTasksRequest::default()))
            .await
            .expect("list tasks")
            .into_inner()
            .tasks
            .into_iter()
            .filter(|task| live.iter().any(|status| *status as i32 == task.status))
            // A task's id is its container's (`container_id` is left empty).
            .map(|task| task.id)
            .collect();
        containers.filter(|id| tasks.contains(id)).collect()
    }

    async fn kill(&self, id: &str) -> Result<(), String> {
        ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", id]).await
    }

    async fn remove(&self, id: &str) -> Result<(), String> {
        ctr(&["tasks", "delete", "--force", id]).await?;
        ctr(&["containers", "delete", id]).await
    }

    async fn pause(&self, id: &str) -> Result<(), String> {
        ctr(&["tasks", "pause", id]).await
    }

    async fn resume(&self, id: &str) -> Result<(), String> {
        ctr(&["tasks", "resume", id]).await
    }

    async fn plant(&self, pool: &str, image: &str) -> String {
        let id = format!("stray-{}", hotpool::driver::new_id());
        let labels = ["hotpool=1".to_owned(), format!("{POOL_LABEL}={pool}")];
        let args = ["containers", "create", "--label", &labels[0], "--label"];
        let args: Vec<&str> = args.into_iter().chain([&*labels[1], image, &id]).collect();
        ctr(&args).await.expect("create a stray container");
        id
    }

    async fn confinement(&self, id: &str) -> Confinement {
        let client = containerd_client::Client::from(
            containerd_client::connect(SOCKET)
                .await
                .expect("containerd answers"),
        );
        let container = client
            .containers()
            .get(request(GetContainerRequest { id: id.to_owned() }))
            .await
            .expect("get the container")
            .into_inner()
            .container
            .expect("a container");
        let spec: serde_json::Value =
            serde_json::from_slice(&container.spec.expect("a spec").value).expect("a JSON spec");
        let resources = &spec["linux"]["resources"];
        let cpu = &resources["cpu"];
        let cpu_quota = cpu["quota"]
            .as_i64()
            .map(|quota| (quota, cpu["period"].as_u64().unwrap_or(0)));
        let nofile = spec["process"]["rlimits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|limit| limit["type"] == "RLIMIT_NOFILE")
            .map(|limit| {
                let (soft, hard) = (limit["soft"].as_u64(), limit["hard"].as_u64());
                (soft.unwrap_or(0), hard.unwrap_or(0))
            })
            .collect();
        let tmp = spec["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|mount| mount["destination"] == "/tmp" && mount["type"] == "tmpfs")
            .expect("a tmpfs at /tmp");
        let tmp_options: Vec<&str> = tmp["options"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|option| option.as_str())
            .collect();
        let user = &spec["process"]["user"];
        let network = spec["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|namespace| namespace["type"] == "network");
        Confinement {
            cpu_quota,
            read_only_root: spec["root"]["readonly"] == true,
            nofile,
            tmp_options: tmp_options.join(","),
            user: format!("{}:{}", user["uid"], user["gid"]),
            memory: resources["memory"]["limit"].as_i64().unwrap_or(0),
            memory_and_swap: resources["memory"]["swap"].as_i64().unwrap_or(0),
            pids_limit: resources["pids"]["limit"].as_i64().unwrap_or(0),
            no_network: network.is_some_and(|namespace| namespace.get("path").is_none()),
        }
    }
}

/// Runs `ctr` in hotpool's namespace; its error output if it fails.
async fn ctr(args: &[&str]) -> Result<(), String> {
    let output = tokio::process::Command::new("ctr")
        .args(["--address", SOCKET, "--namespace", NAMESPACE])
        .args(args)
        .output()
        .await
        .map_err(|e| format!("running ctr: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ctr {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A function image other than the test function's, as an engine reaches it.
pub struct EngineImage {
    /// The image, as the driver names it.
    pub name: String,
    /// Whether it was pulled into containerd (and goes from it when dropped).
    in_containerd: bool,
}

impl Drop for EngineImage {
    fn drop(&mut self) {
        if self.in_containerd {
            remove_from_containerd(&self.name);
        }
    }
}

impl<D> OnEngine<D> {
    /// The example http function's image: Docker's own build, or that build
    /// pushed to the registry containerd pulls the test function from.
    pub async fn hello_image(&self) -> EngineImage {
        let docker_image = super::hello_image();
        let Some(test_image) = &self._image else {
            return EngineImage {
                name: docker_image.to_owned(),
                in_containerd: false,
            };
        };
        let docker = super::driver().await;
        let registry = test_image.registry();
        let name = "hotpool-hello-containerd";
        EngineImage {
            name: registry
                .push_as(docker.docker(), docker_image, name, "v1")
                .await,
            in_containerd: true,
        }
    }
}
