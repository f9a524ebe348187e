//! A pool on a real engine for tests: named after the test and the process,
//! guarded so that a test that fails half-way still removes its containers, with
//! the usual spec of the test function and ways to look at the engine's view.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use hotpool::driver::Transport;
use hotpool::pool::{FunctionSpec, Lifecycle, Pool};

use super::OnEngine;
use super::engine::TestEngine;

const MIB: u64 = 1 << 20;

/// A pool named `<name>-<pid>` on one engine that removes its containers when
/// dropped.
pub struct TestPool<D: TestEngine> {
    pool: Pool<D>,
    // Before the engine: its containers go before the image they run.
    _guard: Box<dyn std::any::Any + Send>,
    /// The engine, and the test-function image on it.
    pub engine: OnEngine<D>,
}

impl<D: TestEngine> std::ops::Deref for TestPool<D> {
    type Target = Pool<D>;
    fn deref(&self) -> &Pool<D> {
        &self.pool
    }
}

impl<D: TestEngine> TestPool<D> {
    /// The test function hot in a format (its command) or cold (it echoes)
    /// over `transport`, 32 MiB, a 20 s timeout.
    pub fn spec(
        &self,
        transport: Transport,
        name: &str,
        lifecycle: impl Into<Lifecycle>,
    ) -> FunctionSpec {
        spec_of(&self.engine.image, transport, name, lifecycle)
    }
}

/// Runs `test` with a pool on `engine`, and shuts the pool down (removing its
/// containers) whether or not the test panicked.
pub async fn with_pool<D: TestEngine>(
    engine: OnEngine<D>,
    name: &str,
    test: impl AsyncFnOnce(&TestPool<D>),
) {
    let pool = test_pool(engine, name, 1 << 30).await;
    let outcome = AssertUnwindSafe(test(&pool)).catch_unwind().await;
    shut(&pool).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A [`TestPool`] on `engine` with this memory budget and a 10 s shutdown timeout.
pub async fn test_pool<D: TestEngine>(engine: OnEngine<D>, name: &str, budget: u64) -> TestPool<D> {
    // The pid keeps two test runs on one engine from removing each other's containers.
    let name = format!("{name}-{}", std::process::id());
    let guard = (engine.guard)(name.clone());
    let pool = Pool::builder(engine.driver.clone())
        .name(name)
        .memory_budget(budget)
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("pool");
    TestPool {
        pool,
        _guard: guard,
        engine,
    }
}

/// The test function of `image` hot in a format (its command) or cold (it
/// echoes) over `transport`, 32 MiB, a 20 s timeout.
pub fn spec_of(
    image: &str,
    transport: Transport,
    name: &str,
    lifecycle: impl Into<Lifecycle>,
) -> FunctionSpec {
    let mut spec = FunctionSpec::new(name, image);
    spec.lifecycle = lifecycle.into();
    spec.cmd = vec![spec.lifecycle.as_str().replace("cold", "echo")];
    spec.memory = 32 * MIB;
    spec.timeout = Duration::from_secs(20);
    spec.queue_timeout = Duration::from_secs(60);
    spec.transport = transport;
    spec
}

/// The ids of the pool's containers on the engine: running ones only if
/// `running`, else whatever their state.
pub async fn containers_of<D: TestEngine>(pool: &Pool<D>, running: bool) -> HashSet<String> {
    pool.driver().containers(&pool.config().name, running).await
}

/// The id of the pool's container whose host name is `hostname` (what
/// `!whoami` answers: a prefix of the id on either engine).
pub async fn container_named<D: TestEngine>(pool: &Pool<D>, hostname: &str) -> String {
    let ids = containers_of(pool, false).await;
    let mut named = ids.iter().filter(|id| id.starts_with(hostname));
    match (named.next(), named.next()) {
        (Some(id), None) if !hostname.is_empty() => id.clone(),
        _ => panic!("no one container of {ids:?} is named {hostname:?}"),
    }
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
pub async fn shut<D: TestEngine>(pool: &Pool<D>) {
    pool.shutdown().await;
    assert!(
        containers_of(pool, false).await.is_empty(),
        "shutdown left containers"
    );
}

/// One call of `spec`'s function through `pool` with `body`; the response
/// body as text.
pub async fn call_text<D: TestEngine>(
    pool: &Pool<D>,
    spec: &FunctionSpec,
    body: &str,
) -> Result<String, hotpool::error::CallError> {
    let response = pool
        .register(spec.clone())
        .call(hotpool::pool::Request::new(body.to_owned()))
        .await?;
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}
