//! The Kubernetes manifests of `deploy/kubernetes/`, checked offline, no cluster:
//! every resource against the API's schemas (`kubernetes-validate --strict`,
//! from PyPI, which scripts/prerequisites installs), the pieces against each
//! other (the DaemonSet's grace period against hotpool's shutdown timeout, its
//! probes and mounts, the headless Service's selector), HAProxy's config
//! against the shipped `deploy/haproxy/haproxy.cfg` and `haproxy -c`, and the
//! ConfigMaps' `hotpool.toml` in a real `hotpool serve`: the default one on
//! containerd, serving its function pulled from a registry, the Docker
//! variant's on Docker. Both DaemonSets, on containerd by default and on Docker
//! where a node is labelled so, are checked alike, and never both on one node.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hotpool::driver::docker::Deadlines;
use hotpool::pool::POOL_LABEL;
use serde_json::Value;

use support::registry::{PASSWORD, Registry, USER};
use support::server::{PATIENCE, eventually, wait_for_exit};
use support::{PoolGuard, containerd, free_port, hello_image, http, pool_containers, repo_root};

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

/// The `hotpool.toml` of ConfigMap `name`.
fn hotpool_toml(all: &[Value], name: &str) -> toml::Table {
    text(resource(all, "ConfigMap", name), "/data/hotpool.toml")
        .parse()
        .unwrap_or_else(|e| panic!("the hotpool.toml of ConfigMap {name} is not TOML: {e}"))
}

/// One way to run hotpool on the nodes: a DaemonSet, its ConfigMap, and the
/// engine it mounts.
struct Variant {
    daemonset: &'static str,
    configmap: &'static str,
    engine: &'static str,
    socket_volume: &'static str,
    socket: &'static str,
}

/// On containerd (a stock node) by default; on Docker where a node is labelled so.
const VARIANTS: [Variant; 2] = [
    Variant {
        daemonset: "hotpool",
        configmap: "hotpool",
        engine: "containerd",
        socket_volume: "containerd-socket",
        socket: "/run/containerd/containerd.sock",
    },
    Variant {
        daemonset: "hotpool-docker",
        configmap: "hotpool-docker",
        engine: "docker",
        socket_volume: "docker-socket",
        socket: "/var/run/docker.sock",
    },
];

#[test]
fn each_daemonset_drains_within_its_grace_period_and_mounts_what_hotpool_needs() {
    let all = resources();
    for variant in &VARIANTS {
        check_daemonset(&all, variant);
    }
}

fn check_daemonset(all: &[Value], variant: &Variant) {
    let name = variant.daemonset;
    let config = hotpool_toml(all, variant.configmap);
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
    assert_eq!(
        config["engine"]["kind"].as_str(),
        Some(variant.engine),
        "{name}"
    );
    assert_eq!(
        config["engine"]["socket"].as_str(),
        Some(variant.socket),
        "{name}"
    );

    let daemonset = resource(all, "DaemonSet", name);
    let pod = &daemonset["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    // Calls in flight get shutdown_timeout, then the containers are removed
    // for removal_timeout at most (an engine that does not answer is given up
    // on after the removal deadlines, if sooner); then the stop says what it
    // left.
    let removal = humantime::parse_duration(
        config["pool"]["removal_timeout"]
            .as_str()
            .expect("[pool] removal_timeout"),
    )
    .expect("a duration");
    let removing = removal.min(Deadlines::default().removal());
    assert!(
        Duration::from_secs(grace) >= shutdown + removing + Duration::from_secs(5),
        "{name}: grace {grace}s against shutdown_timeout {shutdown:?} and {removing:?} of removals"
    );
    assert_eq!(
        pod["hostPID"], true,
        "{name}: cgroups and runtime dirs by host PID"
    );

    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["runAsUser"], 0,
        "{name}: the engine's socket is root's"
    );
    // An update takes over on each node: the new pod beside the old one, on
    // the node's network (the listening socket is handed over), with no
    // declared port to keep it off the node.
    assert_eq!(pod["hostNetwork"], true, "{name}");
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet", "{name}");
    let rolling = &daemonset["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(
        (&rolling["maxSurge"], &rolling["maxUnavailable"]),
        (&Value::from(1), &Value::from(0)),
        "{name}"
    );
    assert!(container.get("ports").is_none(), "{name}: a host port");
    // Ready while the engine answers; alive while the server does.
    for (probe, path) in [("readinessProbe", "/healthz"), ("livenessProbe", "/livez")] {
        assert_eq!(text(container, &format!("/{probe}/httpGet/path")), path);
        assert_eq!(
            container[probe]["httpGet"]["port"],
            listen.port(),
            "{name}: {probe}"
        );
    }
    let mount_of = |volume: &str| {
        container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("{name}: {volume} is not mounted"))
    };
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
            &format!("{}/hotpool.toml", text(mount_of("config"), "/mountPath")),
            "--take-over",
            "--wait-after-handover",
        ]
    );

    let volume_of = |volume: &str| {
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == volume)
            .unwrap_or_else(|| panic!("{name}: no volume {volume}"))
    };
    assert_eq!(
        text(volume_of("config"), "/configMap/name"),
        variant.configmap,
        "{name} mounts its own ConfigMap"
    );
    // Each host path at the same path inside: the engine bind-mounts the
    // runtime directory's entries into function containers by host path.
    for (volume, path) in [
        (variant.socket_volume, variant.socket),
        ("runtime", "/run/hotpool"),
        ("cgroup", "/sys/fs/cgroup"),
    ] {
        assert_eq!(text(volume_of(volume), "/hostPath/path"), path, "{name}");
        assert_eq!(text(mount_of(volume), "/mountPath"), path, "{name}");
    }
    // Only the socket of its own engine.
    let volumes = pod["volumes"].as_array().expect("volumes");
    assert_eq!(
        volumes
            .iter()
            .filter(|v| v["hostPath"]["type"] == "Socket")
            .count(),
        1,
        "{name}: {volumes:?}"
    );

    // Its selector picks its own pods; the headless Service picks them too,
    // on its port.
    let labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    let selector = daemonset["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    for (key, value) in selector {
        assert_eq!(&labels[key], value, "{name} selects its pods by {key}");
    }
    let service = resource(all, "Service", "hotpool-nodes");
    assert_eq!(service["spec"]["clusterIP"], "None");
    for (key, value) in service["spec"]["selector"].as_object().expect("a selector") {
        assert_eq!(
            &labels[key], value,
            "the Service selects {name}'s pods by {key}"
        );
    }
    assert_eq!(service["spec"]["ports"][0]["port"], listen.port());
    assert_eq!(service["spec"]["ports"][0]["targetPort"], listen.port());
}

/// Whether a pod of `daemonset` may run on a node labelled `node` (its
/// nodeSelector and required node affinity; the operators the manifests use).
fn schedules(daemonset: &Value, node: &serde_json::Map<String, Value>) -> bool {
    let pod = &daemonset["spec"]["template"]["spec"];
    let selected = pod["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(key, value)| node.get(key) == Some(value));
    let terms = pod
        .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    let term_matches = |term: &Value| {
        term["matchExpressions"]
            .as_array()
            .expect("matchExpressions")
            .iter()
            .all(|expression| {
                let label = node.get(text(expression, "/key"));
                let values = expression["values"].as_array();
                match text(expression, "/operator") {
                    "In" => label.is_some_and(|l| values.expect("values").contains(l)),
                    "NotIn" => label.is_none_or(|l| !values.expect("values").contains(l)),
                    "Exists" => label.is_some(),
                    "DoesNotExist" => label.is_none(),
                    other => panic!("operator {other} is not modelled here"),
                }
            })
    };
    selected && terms.is_none_or(|terms| terms.iter().any(term_matches))
}

#[test]
fn every_node_gets_one_hotpool_on_containerd_unless_labelled_for_docker() {
    let all = resources();
    let [on_containerd, on_docker] =
        VARIANTS.map(|variant| resource(&all, "DaemonSet", variant.daemonset));
    let node = |labels: Value| labels.as_object().expect("labels").clone();
    let stock = node(serde_json::json!({"kubernetes.io/os": "linux"}));
    let docker =
        node(serde_json::json!({"kubernetes.io/os": "linux", "hotpool.dev/docker": "true"}));
    let not_docker = node(serde_json::json!({"hotpool.dev/docker": "false"}));
    for (labels, containerd_expected) in [(&stock, true), (&not_docker, true), (&docker, false)] {
        assert_eq!(
            schedules(on_containerd, labels),
            containerd_expected,
            "containerd on {labels:?}"
        );
        assert_eq!(
            schedules(on_docker, labels),
            !containerd_expected,
            "Docker on {labels:?}"
        );
    }

    // Neither DaemonSet selects the other's pods.
    let selects = |daemonset: &Value, pods_of: &Value| {
        let labels = &pods_of["spec"]["template"]["metadata"]["labels"];
        daemonset["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels")
            .iter()
            .all(|(key, value)| &labels[key] == value)
    };
    assert!(!selects(on_containerd, on_docker));
    assert!(!selects(on_docker, on_containerd));

    // The two configs differ in their engine only.
    let [mut containerd_config, mut docker_config] =
        VARIANTS.map(|variant| hotpool_toml(&all, variant.configmap));
    containerd_config.remove("engine");
    docker_config.remove("engine");
    assert_eq!(containerd_config, docker_config);
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

/// Runs `hotpool serve` on `config` (a ConfigMap's `hotpool.toml`) on loopback
/// and in pool `pool`, everything else as shipped, with the registry
/// credentials in `docker_config` where given; checks the probes' paths and
/// the function list, then `more`, then stops it with SIGTERM: exit 0.
fn serve(
    mut config: toml::Table,
    pool: &str,
    docker_config: Option<&Path>,
    more: impl FnOnce(SocketAddr),
) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config["server"]
        .as_table_mut()
        .expect("[server]")
        .insert("listen".into(), addr.to_string().into());
    config["pool"]
        .as_table_mut()
        .expect("[pool]")
        .insert("name".into(), pool.into());
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("hotpool.toml");
    std::fs::write(&path, config.to_string()).expect("write the config");

    let mut command = Command::new(env!("CARGO_BIN_EXE_hotpool"));
    command
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(docker_config) = docker_config {
        command.env("DOCKER_CONFIG", docker_config);
    }
    let mut server = command.spawn().expect("start hotpool serve");
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
        more(addr);
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

/// An image pulled into containerd, removed from it when dropped.
struct Pulled(String);

impl Drop for Pulled {
    fn drop(&mut self) {
        containerd::remove_from_containerd(&self.0);
    }
}

#[test]
fn the_containerd_configmap_serves_its_function_from_a_registry_on_containerd() {
    let all = resources();
    let mut config = hotpool_toml(&all, "hotpool");
    assert_eq!(config["engine"]["kind"].as_str(), Some("containerd"));
    assert_eq!(
        config["engine"]["socket"].as_str(),
        Some(containerd::SOCKET),
        "the node default, where the tests' containerd answers"
    );

    // The example image is a registry reference: the same repository and tag
    // in a registry of the test's own stand for the operator's registry.
    let function = &mut config["function"][0];
    let image = function["image"].as_str().expect("an image").to_owned();
    let (_registry, reference) = image
        .split_once('/')
        .filter(|(host, _)| host.contains('.') || host.contains(':'))
        .unwrap_or_else(|| panic!("{image} names no registry: hotpool pulls every image from one"));
    let (repository, tag) = reference.rsplit_once(':').expect("a tag");
    let source = hello_image();
    let registry = Registry::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let pushed = runtime.block_on(async {
        let docker = support::driver().await;
        registry
            .push_as(docker.docker(), source, repository, tag)
            .await
    });
    let _pulled = Pulled(pushed.clone());
    function
        .as_table_mut()
        .expect("[[function]]")
        .insert("image".into(), pushed.into());
    let credentials = registry.docker_config(USER, PASSWORD);

    let pool = format!("deploy-kubernetes-containerd-{}", std::process::id());
    let _guard = containerd::PoolGuard(pool.clone());
    serve(config, &pool, Some(credentials.path()), |addr| {
        let answer = http::post(addr, "/invoke/hello", b"kubernetes").expect("/invoke/hello");
        assert_eq!(answer.status, 200, "{answer}");
        assert!(
            answer.text().contains("\"greeting\":\"hello, kubernetes\""),
            "{answer}"
        );
        let metrics = http::get(addr, "/metrics").expect("/metrics").text();
        assert!(
            metrics.contains("hotpool_engine_api_seconds_count{engine=\"containerd\""),
            "served through containerd"
        );
    });
    let left = runtime.block_on(containerd::leftovers(POOL_LABEL, &pool, &[]));
    assert_eq!(
        left,
        Default::default(),
        "containerd holds nothing of {pool}"
    );
}

#[test]
fn the_docker_configmap_runs_in_hotpool_serve_on_docker() {
    let all = resources();
    let config = hotpool_toml(&all, "hotpool-docker");
    assert_eq!(config["engine"]["kind"].as_str(), Some("docker"));
    let pool = format!("deploy-kubernetes-docker-{}", std::process::id());
    let _guard = PoolGuard(pool.clone());
    serve(config, &pool, None, |addr| {
        let metrics = http::get(addr, "/metrics").expect("/metrics").text();
        assert!(
            metrics.contains("hotpool_engine_api_seconds_count{engine=\"docker\""),
            "driving Docker"
        );
    });
    assert_eq!(pool_containers(&pool), Vec::<String>::new());
}
