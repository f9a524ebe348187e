//! `hotpool serve` on containerd, chosen by `[engine] kind = "containerd"`: the
//! image pulled by hotpool from a real registry into its own namespace, a line
//! function served cold then hot over the direct transport, a death typed, the
//! engine's health in `/healthz`, and nothing left in containerd after a stop;
//! a warm floor (`min_idle`) running before the first call;
//! `examples/hotpool-containerd.toml`'s functions served as the README's
//! containerd quick start serves them; and the take-overs of
//! `tests/server_owner.rs` (after a kill -9, and `serve --take-over`) on
//! containerd, the same scenarios from `support::takeover`.

mod support;

use hotpool::pool::POOL_LABEL;

use std::process::Command;

use support::containerd::{
    NAMESPACE, PoolGuard, SOCKET, TestImage, leftovers, remove_from_containerd,
};
use support::registry::{PASSWORD, Registry, USER};
use support::server::{KilledServerFiles, Server, error_of, eventually};
use support::takeover;
use support::{driver, hello_image, repo_root, testfn_image};

/// Where `scripts/registry` pushes the example images, as the example names it.
const QUICK_START_REGISTRY: &str = "127.0.0.1:5000";

#[test]
fn serve_on_containerd_pulls_serves_hot_and_leaves_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let image = runtime.block_on(TestImage::push("hotpool-testfn-serve"));
    let server = serve_echo(&image, "containerd", "");
    let _guard = PoolGuard(server.pool.clone());

    let first = server.invoke("echo", b"hello");
    assert_eq!(first.status, 200, "{first}");
    assert_eq!(first.body, b"hello");
    assert_eq!(first.header("hotpool-start"), Some("cold"), "{first}");
    let second = server.invoke("echo", b"again");
    assert_eq!(second.status, 200, "{second}");
    assert_eq!(second.header("hotpool-start"), Some("hot"), "{second}");

    let died = server.invoke("echo", b"!exit 3");
    assert_eq!(died.status, 502, "{died}");
    assert_eq!(error_of(&died)["kind"], "exited", "{died}");
    assert_eq!(error_of(&died)["exit_code"], 3, "{died}");

    let health = server.get("/healthz");
    assert_eq!(health.status, 200, "{health}");
    assert!(health.text().contains("\"engine\":\"ok\""), "{health}");
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("hotpool_engine_api_seconds_count{engine=\"containerd\""),
        "the engine's calls are timed under its name"
    );

    stop_leaving_nothing(server, &runtime);
}

#[test]
fn a_hot_container_whose_owner_was_killed_ends_itself_after_the_orphan_timeout() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let image = runtime.block_on(TestImage::push("hotpool-testfn-orphan"));
    let mut server = serve_echo(&image, "containerd-orphan", "orphan_timeout = \"2s\"");
    let _guard = PoolGuard(server.pool.clone());
    assert_eq!(server.invoke("echo", b"warm").status, 200);
    let label = format!("labels.\"{POOL_LABEL}\"=={}", server.pool);
    let ids = ctr(&["containers", "ls", "--quiet", &label]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "one idle container: {ids:?}");

    let _files = KilledServerFiles {
        pool: server.pool.clone(),
        pid: server.pid(),
    };
    server.kill();
    eventually("the orphaned container's task stops", || {
        ctr(&["tasks", "ls"])
            .lines()
            .any(|task| task.starts_with(ids[0]) && task.ends_with("STOPPED"))
    });
    // `ctr tasks delete` warns of a non-zero exit status, naming it.
    let deleted = Command::new("ctr")
        .args(["--address", SOCKET, "--namespace", NAMESPACE])
        .args(["tasks", "delete", ids[0]])
        .output()
        .expect("run ctr tasks delete");
    let said = String::from_utf8_lossy(&deleted.stderr);
    assert!(
        said.contains("exit code 137"),
        "its init killed the function for want of an owner; it did not end on its stdin closing: {said}"
    );
}

#[test]
fn a_warm_floor_on_containerd_runs_a_container_before_the_first_call_which_is_hot() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let image = runtime.block_on(TestImage::push("hotpool-testfn-floor"));
    let server = serve_echo(&image, "containerd-floor", "min_idle = 1");
    let _guard = PoolGuard(server.pool.clone());
    eventually("the floor's container runs, no call made", || {
        server.function_status("echo")["containers"]["idle"] == 1
    });
    assert_eq!(server.function_status("echo")["min_idle"], 1);
    let label = format!("labels.\"{POOL_LABEL}\"=={}", server.pool);
    let ids = ctr(&["containers", "ls", "--quiet", &label]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "one container, the floor's: {ids:?}");
    assert!(
        ctr(&["tasks", "ls"])
            .lines()
            .any(|task| task.starts_with(ids[0]) && task.ends_with("RUNNING")),
        "its task runs"
    );
    let first = server.invoke("echo", b"first");
    assert_eq!((first.status, first.text()), (200, "first".to_owned()));
    assert_eq!(first.header("hotpool-start"), Some("hot"), "{first}");
    // The call took the floor's container: another is started for the floor.
    eventually("the floor is refilled", || {
        server.function_status("echo")["containers"]["idle"] == 2
    });
    stop_leaving_nothing(server, &runtime);
}

/// `hotpool serve` on containerd, its `[pool]` having `pool_extra` too, with
/// one line function `echo` on `image`, whose registry's credentials it reads.
fn serve_echo(image: &TestImage, test: &str, pool_extra: &str) -> Server {
    let function = format!(
        "[[function]]\nname = \"echo\"\nimage = \"{}\"\ncmd = [\"line\"]\nformat = \"line\"\nmemory = \"32m\"\n",
        image.name
    );
    let credentials = image.docker_config().to_str().unwrap();
    Server::start_with_env(
        test,
        "",
        &format!("shutdown_timeout = \"30s\"\n{pool_extra}\n\n[engine]\nkind = \"containerd\""),
        &[function],
        &[("DOCKER_CONFIG", credentials)],
    )
}

/// What `ctr` prints with `args` in hotpool's namespace; fails the test if it fails.
fn ctr(args: &[&str]) -> String {
    let output = Command::new("ctr")
        .args(["--address", SOCKET, "--namespace", NAMESPACE])
        .args(args)
        .output()
        .expect("run ctr");
    assert!(output.status.success(), "ctr {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_containerd_example_serves_every_function() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The example's images, pushed under the example's names to a registry of
    // the test's own (not on port 5000, which a newcomer's registry may hold).
    let registry = Registry::start();
    // Dropped after the server: the images it pulled go from containerd.
    let _pulled = runtime.block_on(async {
        let docker = driver().await;
        let docker = docker.docker();
        Pulled(vec![
            registry
                .push_as(docker, testfn_image(), "hotpool-testfn", "dev")
                .await,
            registry
                .push_as(docker, hello_image(), "hotpool-hello-http", "dev")
                .await,
        ])
    });
    let credentials = registry.docker_config(USER, PASSWORD);
    let example = std::fs::read_to_string(repo_root().join("examples/hotpool-containerd.toml"))
        .expect("read examples/hotpool-containerd.toml")
        .replace(QUICK_START_REGISTRY, &registry.addr);
    let engine_start = example.find("[engine]").expect("an [engine] table");
    let functions_start = example.find("[[function]]").expect("functions");
    let engine = &example[engine_start..functions_start];
    assert!(
        engine.contains("kind = \"containerd\""),
        "the example names containerd: {engine}"
    );
    let server = Server::start_with_env(
        "containerd-example",
        "",
        &format!("shutdown_timeout = \"30s\"\n\n{engine}"),
        &[example[functions_start..].to_owned()],
        &[("DOCKER_CONFIG", credentials.path().to_str().unwrap())],
    );
    let _guard = PoolGuard(server.pool.clone());

    for (function, body, answer) in [
        ("echo", "hello", "hello"),
        ("echo", "again", "again"),
        ("echo-http", "hi", "hi"),
        ("echo-cold", "once", "once"),
        ("hello", "Ada", "Ada"),
    ] {
        let response = server.invoke(function, body.as_bytes());
        assert_eq!(response.status, 200, "{function}: {response}");
        assert!(
            response.text().contains(answer),
            "{function} answers {answer}: {response}"
        );
    }
    let hot = server.invoke("echo", b"hot");
    assert_eq!(hot.header("hotpool-start"), Some("hot"), "{hot}");
    let died = server.invoke("echo", b"!exit 3");
    assert_eq!(error_of(&died)["kind"], "exited", "{died}");

    stop_leaving_nothing(server, &runtime);
}

/// Images a test pulled into containerd, removed from it when dropped.
struct Pulled(Vec<String>);

impl Drop for Pulled {
    fn drop(&mut self) {
        for image in &self.0 {
            remove_from_containerd(image);
        }
    }
}

/// Stops `server` and fails unless containerd holds nothing of its pool.
fn stop_leaving_nothing(server: Server, runtime: &tokio::runtime::Runtime) {
    let pool = server.pool.clone();
    server.stop();
    let left = runtime.block_on(leftovers(POOL_LABEL, &pool, &[]));
    assert_eq!(
        left,
        Default::default(),
        "containerd holds nothing of {pool}"
    );
}

#[test]
fn the_next_server_takes_over_the_idle_containers_a_killed_owner_left_and_removes_the_rest() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let image = runtime.block_on(TestImage::push("hotpool-testfn-crash"));
    takeover::a_killed_owners_idle_containers_are_taken_over(
        &support::containerd::engine(&image),
        "containerd-killed",
    );
}

#[test]
fn a_server_taking_over_gets_the_socket_and_the_idle_containers_and_no_call_fails() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let image = runtime.block_on(TestImage::push("hotpool-testfn-handover"));
    takeover::a_taker_gets_the_socket_and_the_idle_containers_and_no_call_fails(
        &support::containerd::engine(&image),
        "containerd-takeover",
    );
}
