//! The container image of hotpool (the top-level `Dockerfile`), built by
//! `scripts/hotpool-image` and run the way the README says: the engine's
//! socket, the runtime directory at its host path, the host's PIDs and cgroups,
//! host networking on a loopback address. A function is called through it, hot,
//! with per-call counters and an OOM verdict that only the host's cgroups give;
//! SIGTERM then leaves no container and no pipe directory behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::server::{containers_of, eventually};
use support::{PoolGuard, free_port, http, repo_root, testfn_image};

/// Where hotpool keeps its runtime directory as root, in the image as on the host.
const RUNTIME_DIR: &str = "/run/hotpool";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker (the engine's client)")
}

fn inspect(container: &str, format: &str) -> String {
    let output = docker(&["inspect", "--format", format, container]);
    assert!(
        output.status.success(),
        "docker inspect {container}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn logs(container: &str) -> String {
    let output = docker(&["logs", container]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Removes the hotpool container when dropped, whatever happened.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

#[test]
fn the_image_serves_calls_and_leaves_nothing_after_sigterm() {
    let tag = format!(
        "hotpool:{}",
        std::env::var("HOTPOOL_TEST_TAG").unwrap_or_else(|_| "test".to_owned())
    );
    // The dev profile: what is tested is the image, and it builds in a third
    // of the time.
    let built = Command::new(repo_root().join("scripts/hotpool-image"))
        .arg(&tag)
        .env("HOTPOOL_IMAGE_PROFILE", "dev")
        .output()
        .expect("run scripts/hotpool-image");
    assert!(
        built.status.success(),
        "scripts/hotpool-image failed: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    let pool = format!("deploy-image-{}", std::process::id());
    let name = format!("hotpool-deploy-image-{}", std::process::id());
    let _pool_guard = PoolGuard(pool.clone());
    let _guard = ContainerGuard(name.clone());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().expect("a directory");
    let config = dir.path().join("hotpool.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\n\n[pool]\nname = \"{pool}\"\n\
             shutdown_timeout = \"30s\"\n\n[[function]]\nname = \"echo\"\n\
             image = \"{}\"\ncmd = [\"line\"]\nformat = \"line\"\nmemory = \"32m\"\n",
            testfn_image()
        ),
    )
    .expect("write the config");

    // The README's `docker run` line, labelled so a failed test's leftovers
    // are found, on a loopback address of the host's network.
    let config_mount = format!("{}:/etc/hotpool/hotpool.toml:ro", config.display());
    let runtime_mount = format!("{RUNTIME_DIR}:{RUNTIME_DIR}");
    let started = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "hotpool=1",
        "--network",
        "host",
        "--pid",
        "host",
        "--cgroupns",
        "host",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &runtime_mount,
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        "-v",
        &config_mount,
        &tag,
    ]);
    assert!(
        started.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    eventually("hotpool in its container answers /healthz", || {
        assert_eq!(
            inspect(&name, "{{.State.Running}}"),
            "true",
            "the container stopped: {}",
            logs(&name)
        );
        http::get(addr, "/healthz").is_ok_and(|r| r.status == 200)
    });

    let invoke = |body: &str| {
        http::post(addr, "/invoke/echo", body.as_bytes())
            .unwrap_or_else(|e| panic!("POST /invoke/echo: {e}; logs:\n{}", logs(&name)))
    };
    let cold = invoke("first");
    assert_eq!(cold.status, 200, "{cold}");
    assert_eq!(cold.text(), "first");
    assert_eq!(cold.header("hotpool-start"), Some("cold"), "{cold}");
    let hot = invoke("second");
    assert_eq!(hot.status, 200, "{hot}");
    assert_eq!(hot.text(), "second");
    assert_eq!(hot.header("hotpool-start"), Some("hot"), "{hot}");
    // CPU time comes only from the container's cgroup counters, found through
    // the host's /proc and /sys/fs/cgroup.
    let stats = hot.header("hotpool-stats").expect("the call's stats");
    assert!(stats.contains("cpu_ratio="), "{stats}");

    // The hotpool process, by its host PID, keeps the pipes of its hot
    // container under the shared runtime directory.
    let pid = inspect(&name, "{{.State.Pid}}");
    let own = support::process_dirs_in(Path::new(RUNTIME_DIR), &pid);
    assert_eq!(own.len(), 1, "{own:?}");
    let pipes = std::fs::read_dir(&own[0])
        .expect("its directory")
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .count();
    assert_eq!(pipes, 1, "the hot container's pipe directory");

    // Without the host's cgroups this engine calls it `exited` (137).
    let oom = invoke("!oom");
    assert_eq!(oom.status, 502, "{oom}");
    assert_eq!(oom.json()["error"]["kind"], "oom", "{oom}");

    let stopped = docker(&["stop", "--time", "60", &name]);
    assert!(
        stopped.status.success(),
        "docker stop: {}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let output = logs(&name);
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "0", "{output}");
    assert!(output.contains("every container removed"), "{output}");
    assert_eq!(containers_of(&pool), Vec::<String>::new(), "{output}");
    assert_eq!(
        support::process_dirs_in(Path::new(RUNTIME_DIR), &pid),
        Vec::<PathBuf>::new(),
        "{output}"
    );
}
