//! `hotpool serve` on containerd, chosen by `[engine] kind = "containerd"`: the
//! image pulled by hotpool from a real registry into its own namespace, a line
//! function served cold then hot over the direct transport, a death typed, the
//! engine's health in `/healthz`, and nothing left in containerd after a stop.

mod support;

use hotpool::pool::POOL_LABEL;

use support::containerd::{PoolGuard, TestImage, leftovers};
use support::server::{Server, error_of};

#[test]
fn serve_on_containerd_pulls_serves_hot_and_leaves_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let image = runtime.block_on(TestImage::push("hotpool-testfn-serve"));
    // The only test of this process: the server it starts reads the registry's
    // credentials from here.
    // SAFETY: no other thread of this test process reads the environment now.
    unsafe { std::env::set_var("DOCKER_CONFIG", image.docker_config()) };
    let function = format!(
        "[[function]]\nname = \"echo\"\nimage = \"{}\"\ncmd = [\"line\"]\nformat = \"line\"\nmemory = \"32m\"\n",
        image.name
    );
    let server = Server::start_with(
        "containerd",
        "",
        "shutdown_timeout = \"30s\"\n\n[engine]\nkind = \"containerd\"",
        &[function],
    );
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

    let pool = server.pool.clone();
    server.stop();
    let left = runtime.block_on(leftovers(POOL_LABEL, &pool, &[]));
    assert_eq!(
        left,
        Default::default(),
        "containerd holds nothing of {pool}"
    );
}
