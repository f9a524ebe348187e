//! The Kubernetes manifests of `deploy/kubernetes/`, checked offline, no cluster:
//! every resource against the API's schemas (`kubernetes-validate --strict`,
//! from PyPI, which scripts/prerequisites installs), the pieces against each
//! other (the DaemonSet's grace period against hotpool's shutdown timeout, its
//! probes and mounts, the headless Service's selector), HAProxy's config
//! against the shipped `deploy/haproxy/haproxy.cfg` and `haproxy -c`, and the
//! ConfigMap's `hotpool.toml` in a real `hotpool serve`.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hotpool::driver::docker::Deadlines;
use serde_json::Value;

use support::http;
use support::server::{PATIENCE, eventually, wait_for_exit};
use support::{PoolGuard, free_port, repo_root};

fn manifests() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests())
        .expect("deploy/kubernetes")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn python(args: &[&str], files: &[PathBuf]) -> Output {
    Command::new("python3")
        .args(args)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("run python3 (needed for kubernetes-validate): {e}"))
}

fn validate(files: &[PathBuf]) -> Output {
    let output = python(&["-m", "kubernetes_validate", "--strict"], files);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named kubernetes_validate"),
        "kubernetes-validate is missing: scripts/prerequisites installs it (pip)"
    );
    output
}

/// Every resource of every manifest, as JSON (read by PyYAML, which
/// kubernetes-validate brings).
fn resources() -> Vec<Value> {
    let output = python(
        &[
            "-c",
            "import json, sys, yaml\n\
             docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
             print(json.dumps(docs))",
        ],
        &manifest_files(),
    );
    assert!(
        output.status.success(),
        "reading the manifests: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the manifests as JSON")
}

fn resource<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

#[test]
fn every_resource_passes_the_schemas_and_a_broken_one_does_not() {
    let files = manifest_files();
    let output = validate(&files);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    let passed = report.matches(" passed for resource ").count();
    assert_eq!(
        passed,
        resources().len(),
        "every resource is checked: {report}"
    );

    // The same DaemonSet with one field misspelt: strict validation refuses it.
    let dir = tempfile::tempdir().expect("a directory");
    let broken = dir.path().join("broken.yaml");
    let daemonset =
        std::fs::read_to_string(manifests().join("hotpool-daemonset.yaml")).expect("the DaemonSet");
    assert!(daemonset.contains("terminationGracePeriodSeconds:"));
    std::fs::write(
        &broken,
        daemonset.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:"),
    )
    .expect("write the broken copy");
    let output = validate(&[broken]);
    assert!(
        !output.status.success(),
        "a misspelt field passed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The `hotpool.toml` of the ConfigMap.
fn hotpool_toml(all: &[Value]) -> String {
    text(resource(all, "ConfigMap", "hotpool"), "/data/hotpool.toml").to_owned()
}

#[test]
fn the_daemonset_drains_within_its_grace_period_and_mounts_what_hotpool_needs() {
    let all = resources();
    let config: toml::Table = hotpool_toml(&all).parse().expect("hotpool.toml is TOML");
    let shutdown = humantime::parse_duration(
        config["pool"]["shutdown_timeout"]
            .as_str()
            .expect("[pool] shutdown_timeout"),
    )
    .expect("a duration");
    let listen: std::net::SocketAddr = config["server"]["listen"]
        .as_str()
        .expect("[server] listen")
        .parse()
        .expect("an address");

    let daemonset = resource(&all, "DaemonSet", "hotpool");
    let pod = &daemonset["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    // Calls in flight get shutdown_timeout, then the containers are removed:
    // an engine that does not answer gets the removal deadlines, then the
    // stop says what it left.
    let wedged = Deadlines::default().removal();
    assert!(
        Duration::from_secs(grace) >= shutdown + wedged + Duration::from_secs(5),
        "grace {grace}s against shutdown_timeout {shutdown:?} and {wedged:?} for a wedged engine"
    );
    assert_eq!(pod["hostPID"], true, "cgroups and runtime dirs by host PID");

    let container = &pod["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], listen.port());
    assert_eq!(container["ports"][0]["name"], "http");
    // Ready while the engine answers; alive while the server does.
    for (probe, path) in [("readinessProbe", "/healthz"), ("livenessProbe", "/livez")] {
        assert_eq!(text(container, &format!("/{probe}/httpGet/path")), path);
        assert_eq!(text(container, &format!("/{probe}/httpGet/port")), "http");
    }
    let config_mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == "config")
        .expect("the config mount");
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("an argument"))
        .collect();
    assert_eq!(
        args,
        [
            "serve",
            "--config",
            &format!("{}/hotpool.toml", text(config_mount, "/mountPath"))
        ]
    );

    // Each host path at the same path inside: the direct transport bind-mounts
    // the runtime directory's entries into function containers by host path.
    let host_path = |volume: &str| {
        let volumes = pod["volumes"].as_array().expect("volumes");
        let found = volumes
            .iter()
            .find(|v| v["name"] == volume)
            .unwrap_or_else(|| panic!("no volume {volume}"));
        text(found, "/hostPath/path").to_owned()
    };
    for (volume, path) in [
        ("docker-socket", "/var/run/docker.sock"),
        ("runtime", "/run/hotpool"),
        ("cgroup", "/sys/fs/cgroup"),
    ] {
        assert_eq!(host_path(volume), path);
        let mount = container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("{volume} is not mounted"));
        assert_eq!(text(mount, "/mountPath"), path);
    }

    // The headless Service selects the DaemonSet's pods, on its port.
    let service = resource(&all, "Service", "hotpool-nodes");
    assert_eq!(service["spec"]["clusterIP"], "None");
    let labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().expect("a selector") {
        assert_eq!(&labels[key], value, "the Service selects the pods by {key}");
    }
    assert_eq!(service["spec"]["ports"][0]["port"], listen.port());
}

#[test]
fn haproxy_on_kubernetes_is_the_shipped_config_with_its_nodes_from_dns() {
    let all = resources();
    let on_kubernetes = text(resource(&all, "ConfigMap", "haproxy"), "/data/haproxy.cfg");
    let shipped = std::fs::read_to_string(repo_root().join("deploy/haproxy/haproxy.cfg"))
        .expect("the shipped config");

    // Line by line the same, but for the node list (and what follows the
    // shipped config: the resolvers).
    let nodes = |config: &str| -> Vec<String> {
        let start = config.find("# nodes:").expect("a node list");
        let end = config.find("# end of nodes").expect("the node list's end");
        config[start..end]
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let outside_nodes = |config: &str| -> Vec<String> {
        let start = config.find("# nodes:").expect("a node list");
        let end = config.find("# end of nodes").expect("the node list's end");
        config[..start]
            .lines()
            .chain(config[end..].lines())
            .map(str::to_owned)
            .collect()
    };
    let kept = outside_nodes(&shipped);
    let kubernetes = outside_nodes(on_kubernetes);
    assert_eq!(
        kubernetes[..kept.len()],
        kept[..],
        "the shipped config, in order"
    );
    let added: Vec<&str> = kubernetes[kept.len()..]
        .iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert_eq!(added.first(), Some(&"resolvers kubernetes"), "{added:?}");

    // The nodes: the headless Service's name and port, through those resolvers.
    let service = resource(&all, "Service", "hotpool-nodes");
    let dns = format!(
        "{}.{}.svc.cluster.local:{}",
        text(service, "/metadata/name"),
        text(service, "/metadata/namespace"),
        service["spec"]["ports"][0]["port"]
    );
    let template = nodes(on_kubernetes);
    assert_eq!(template.len(), 1, "{template:?}");
    let words: Vec<&str> = template[0].split_whitespace().collect();
    assert_eq!(words[0], "server-template", "{template:?}");
    assert_eq!(words[3], dns, "{template:?}");
    assert!(
        words.windows(2).any(|w| w == ["resolvers", "kubernetes"]),
        "{template:?}"
    );

    // HAProxy accepts it (no resolution at check time: init-addr none).
    let dir = tempfile::tempdir().expect("a directory");
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, on_kubernetes).expect("write the config");
    let checked = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .expect("run haproxy -c (Debian's haproxy; scripts/prerequisites installs it)");
    assert!(
        checked.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let deployment = resource(&all, "Deployment", "haproxy");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(text(container, "/readinessProbe/httpGet/path"), "/healthz");
    assert!(on_kubernetes.contains("monitor-uri /healthz"));
}

#[test]
fn the_configmaps_hotpool_toml_runs_in_hotpool_serve() {
    let all = resources();
    let pool = format!("deploy-kubernetes-{}", std::process::id());
    let _guard = PoolGuard(pool.clone());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut config: toml::Table = hotpool_toml(&all).parse().expect("hotpool.toml is TOML");
    // On loopback and in a pool of its own; everything else as shipped.
    config["server"]
        .as_table_mut()
        .expect("[server]")
        .insert("listen".into(), addr.to_string().into());
    config["pool"]
        .as_table_mut()
        .expect("[pool]")
        .insert("name".into(), pool.clone().into());
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("hotpool.toml");
    std::fs::write(&path, config.to_string()).expect("write the config");

    let mut server = Command::new(env!("CARGO_BIN_EXE_hotpool"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hotpool serve");
    let healthy = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually("the server answers /healthz", || {
            http::get(addr, "/healthz").is_ok_and(|r| r.status == 200)
        });
        let alive = http::get(addr, "/livez").expect("/livez");
        assert_eq!(alive.status, 200, "the liveness probe's path: {alive}");
        let listed = http::get(addr, "/functions").expect("/functions").json();
        let names: Vec<&str> = listed["functions"]
            .as_array()
            .expect("functions")
            .iter()
            .map(|f| f["name"].as_str().expect("a name"))
            .collect();
        let configured: Vec<&str> = config["function"]
            .as_array()
            .expect("[[function]] tables")
            .iter()
            .map(|f| f["name"].as_str().expect("a name"))
            .collect();
        assert_eq!(names, configured);
    }));
    // SAFETY: kill only sends a signal to the server's process.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
    let exited = wait_for_exit(&mut server, PATIENCE);
    if exited.is_none() {
        let _ = server.kill();
        let _ = server.wait();
    }
    if let Err(panic) = healthy {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(exited.and_then(|s| s.code()), Some(0), "exit after SIGTERM");
}
