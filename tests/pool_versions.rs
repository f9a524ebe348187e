//! Functions registered by name: limits change in place, a new container spec
//! drains the old version, a removed function drains and goes. The in-process
//! driver and tokio's paused clock; `pool_docker.rs` checks the same on the
//! engine.

use std::time::Duration;

use hotpool::driver::in_process::InProcessDriver;
use hotpool::pool::{FunctionSpec, KeepAlive, Pool, Request, Start};
use hotpool::{CallError, ErrorKind};

const START: Duration = Duration::from_millis(200);

async fn pool() -> (Pool<InProcessDriver>, InProcessDriver) {
    let driver = InProcessDriver::new(START);
    let pool = Pool::builder(driver.clone())
        .name("versions-test")
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("pool");
    (pool, driver)
}

fn spec(name: &str) -> FunctionSpec {
    let mut spec = FunctionSpec::new(name, "echo-image");
    spec.cmd = vec!["line".into()];
    spec.memory = 64 << 20;
    spec
}

async fn body(result: Result<hotpool::pool::Response, CallError>) -> String {
    String::from_utf8(result.expect("the call succeeds").body.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn changed_limits_keep_the_running_containers() {
    let (pool, driver) = pool().await;
    let mut echo = spec("echo");
    let handle = pool.register(echo.clone());
    let first = handle.call(Request::new("a")).await.unwrap();
    assert_eq!(first.start, Start::Cold);
    echo.timeout = Duration::from_secs(1);
    echo.max_concurrency = 9;
    echo.max_queue = 3;
    echo.queue_timeout = Duration::from_secs(2);
    echo.keep_alive = KeepAlive::fixed(Duration::from_secs(600));
    echo.log_per_call = 10;
    echo.log_rate = 10;
    let again = pool.register(echo.clone());
    let second = again.call(Request::new("b")).await.unwrap();
    assert_eq!(second.start, Start::Hot, "the container stayed");
    assert_eq!(driver.statistics().created, 1);
    assert_eq!(pool.specs(), [echo], "the new limits are the function's");
    assert_eq!(pool.status().functions.len(), 1, "one version");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_timeout_applies_to_the_next_call_in_a_running_container() {
    let (pool, _driver) = pool().await;
    let mut echo = spec("echo");
    echo.timeout = Duration::from_secs(60);
    let handle = pool.register(echo.clone());
    assert_eq!(body(handle.call(Request::new("warm")).await).await, "warm");
    echo.timeout = Duration::from_secs(1);
    pool.register(echo);
    let slow = handle.call(Request::new("!sleep 5000")).await;
    assert_eq!(slow.unwrap_err().kind(), ErrorKind::Timeout);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shorter_keep_alive_removes_containers_already_idle() {
    let (pool, driver) = pool().await;
    let mut echo = spec("echo");
    echo.keep_alive = KeepAlive::fixed(Duration::from_secs(3600));
    pool.register(echo.clone())
        .call(Request::new("a"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(driver.statistics().closed, 0);
    echo.keep_alive = KeepAlive::fixed(Duration::from_secs(5));
    pool.register(echo);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(driver.statistics().closed, 1, "idle 10 s is past 5 s");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_raised_concurrency_starts_for_calls_already_waiting() {
    let (pool, driver) = pool().await;
    let mut echo = spec("echo");
    echo.max_concurrency = 1;
    echo.queue_timeout = Duration::from_secs(60);
    let handle = pool.register(echo.clone());
    let long = tokio::spawn(handle.call(Request::new("!sleep 30000")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = tokio::spawn(handle.call(Request::new("waited")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.status().functions[0].waiting, 1);
    echo.max_concurrency = 2;
    pool.register(echo);
    let waited = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served by a second container, not after the long call")
        .unwrap();
    assert_eq!(body(waited).await, "waited");
    assert_eq!(driver.statistics().created, 2);
    long.abort();
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn two_versions_of_one_name_do_not_throw_each_other_away_per_call() {
    let (pool, driver) = pool().await;
    let mut v1 = spec("echo");
    v1.env.insert("VERSION".into(), "1".into());
    let mut v2 = v1.clone();
    v2.env.insert("VERSION".into(), "2".into());
    // An embedder that registers once and calls many times, through any handle.
    let first = pool.register(v1);
    let second = pool.register(v2);
    for i in 0..20 {
        let handle = if i % 2 == 0 { &first } else { &second };
        handle.call(Request::new(format!("{i}"))).await.unwrap();
    }
    assert_eq!(
        driver.statistics().created,
        1,
        "both handles call the current version"
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_container_spec_drains_the_old_version_and_moves_its_waiters() {
    let (pool, driver) = pool().await;
    let mut v1 = spec("echo");
    v1.max_concurrency = 1;
    v1.queue_timeout = Duration::from_secs(60);
    let handle = pool.register(v1.clone());
    let long = tokio::spawn(handle.call(Request::new("!sleep 10000")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = tokio::spawn(handle.call(Request::new("moved")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut v2 = v1.clone();
    v2.env.insert("VERSION".into(), "2".into());
    pool.register(v2);
    let moved = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter went to the new version at once")
        .unwrap();
    assert_eq!(body(moved).await, "moved");
    let status = pool.status();
    assert_eq!(status.functions.len(), 2, "{status:?}");
    assert!(status.functions.iter().any(|f| f.draining && f.busy == 1));
    assert_eq!(body(long.await.unwrap()).await, "slept");
    // The old container went when its call ended, and its version with it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(driver.statistics().closed, 1);
    let status = pool.status();
    assert_eq!(status.functions.len(), 1, "{status:?}");
    assert!(!status.functions[0].draining);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn going_back_to_a_draining_version_takes_it_back() {
    let (pool, driver) = pool().await;
    let v1 = spec("echo");
    let mut v2 = v1.clone();
    v2.cmd = vec!["line".into(), "--v2".into()];
    let handle = pool.register(v1.clone());
    let long = tokio::spawn(handle.call(Request::new("!sleep 5000")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    pool.register(v2);
    pool.register(v1);
    assert_eq!(body(long.await.unwrap()).await, "slept");
    let after = handle.call(Request::new("again")).await.unwrap();
    assert_eq!(after.start, Start::Hot, "v1's container was kept");
    assert_eq!(driver.statistics().created, 1);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_function_is_unknown_and_its_containers_go() {
    let (pool, driver) = pool().await;
    let handle = pool.register(spec("echo"));
    handle.call(Request::new("a")).await.unwrap();
    assert!(pool.remove("echo"));
    assert!(!pool.remove("echo"), "removed once");
    let error = handle.call(Request::new("b")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::UnknownFunction);
    assert!(error.to_string().contains("echo"), "{error}");
    assert!(pool.function("echo").is_none() && handle.spec().is_none());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(driver.statistics().closed, 1);
    assert!(pool.status().functions.is_empty());
    pool.shutdown().await;
}
