//! A pool on the real engine for tests: named after the test and the process,
//! guarded so that a test that fails half-way still removes its containers, with
//! the usual spec of the test function and ways to look at the engine's view.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use hotpool::driver::Transport;
use hotpool::driver::docker::DockerDriver;
use hotpool::pool::{Format, FunctionSpec, POOL_LABEL, Pool};

use super::{PoolGuard, driver, testfn_image};

const MIB: u64 = 1 << 20;

/// A pool named `<name>-<pid>` that removes its containers when dropped.
pub struct TestPool {
    pool: Pool<DockerDriver>,
    _guard: PoolGuard,
}

impl std::ops::Deref for TestPool {
    type Target = Pool<DockerDriver>;
    fn deref(&self) -> &Pool<DockerDriver> {
        &self.pool
    }
}

/// Runs `test` with a pool, and shuts the pool down (removing its containers)
/// whether or not the test panicked.
pub async fn with_pool(name: &str, test: impl AsyncFnOnce(&Pool<DockerDriver>)) {
    let pool = test_pool(name, 1 << 30).await;
    let outcome = AssertUnwindSafe(test(&pool)).catch_unwind().await;
    shut(&pool).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A [`TestPool`] with this memory budget and a 10 s shutdown timeout.
pub async fn test_pool(name: &str, budget: u64) -> TestPool {
    // The pid keeps two test runs on one engine from removing each other's containers.
    let name = format!("{name}-{}", std::process::id());
    let pool = Pool::builder(driver().await)
        .name(name.clone())
        .memory_budget(budget)
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("pool");
    TestPool {
        pool,
        _guard: PoolGuard(name),
    }
}

/// The test function speaking `format` (`cold` echoes), 32 MiB, a 20 s timeout.
pub fn spec(name: &str, format: Format) -> FunctionSpec {
    let mut spec = FunctionSpec::new(name, testfn_image());
    spec.format = format;
    spec.cmd = vec![format.as_str().replace("cold", "echo")];
    spec.memory = 32 * MIB;
    spec.timeout = Duration::from_secs(20);
    spec.queue_timeout = Duration::from_secs(60);
    spec
}

/// [`spec`] over `transport`.
pub fn spec_on(transport: Transport, name: &str, format: Format) -> FunctionSpec {
    let mut spec = spec(name, format);
    spec.transport = transport;
    spec
}

/// The ids of the pool's containers on the engine: running ones only if
/// `running`, else whatever their state.
pub async fn containers_of(pool: &Pool<DockerDriver>, running: bool) -> HashSet<String> {
    let filters = HashMap::from([(
        "label",
        vec![format!("{POOL_LABEL}={}", pool.config().name)],
    )]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(!running)
        .filters(&filters)
        .build();
    let listed = pool
        .driver()
        .docker()
        .list_containers(Some(options))
        .await
        .expect("list containers");
    listed.into_iter().filter_map(|c| c.id).collect()
}

/// Polls a real condition (the engine's or the pool's view) until it holds.
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Shuts the pool down, then checks that none of its containers is left.
pub async fn shut(pool: &Pool<DockerDriver>) {
    pool.shutdown().await;
    assert!(
        containers_of(pool, false).await.is_empty(),
        "shutdown left containers"
    );
}
