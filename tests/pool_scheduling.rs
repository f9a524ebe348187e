//! The pool's scheduling rules, how registering a function again changes
//! them, that a pool name has one owner, and what a pool hands over to the
//! next owner of its name and what that one takes over, fast and
//! deterministic: the in-process driver and tokio's paused clock.
//! The same rules are tried on the real engine in `pool_engine.rs`.

use std::time::Duration;

use futures_util::future::join_all;
use hotpool::driver::in_process::{InProcessDriver, MISSING_IMAGE};
use hotpool::driver::{ClaimError, Driver};
use hotpool::pool::{
    BuildError, Format, FunctionSpec, KeepAlive, Lifecycle, Pool, PoolBuilder, REMOVALS_AT_ONCE,
    Request, STARTS_AT_ONCE, Start, TIMEOUT_MARGIN,
};
use hotpool::{CallError, ErrorKind};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

const MIB: u64 = 1 << 20;
/// How long the in-process driver takes to start a container.
const START: Duration = Duration::from_millis(200);

async fn pool(budget: u64) -> (Pool<InProcessDriver>, InProcessDriver) {
    let driver = InProcessDriver::new(START);
    (pool_on(driver.clone(), budget).await, driver)
}

async fn pool_on(driver: InProcessDriver, budget: u64) -> Pool<InProcessDriver> {
    Pool::builder(driver)
        .name("scheduling-test")
        .memory_budget(budget)
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("pool")
}

fn spec(name: &str) -> FunctionSpec {
    let mut spec = FunctionSpec::new(name, "echo-image");
    spec.cmd = vec!["line".into()];
    spec.memory = 64 * MIB;
    spec.timeout = Duration::from_secs(5);
    spec.keep_alive = KeepAlive::fixed(Duration::from_secs(60));
    spec
}

async fn call(
    pool: &Pool<InProcessDriver>,
    spec: &FunctionSpec,
    body: &str,
) -> Result<String, CallError> {
    let response = pool
        .register(spec.clone())
        .call(Request::new(body.to_owned()))
        .await?;
    Ok(String::from_utf8(response.body.to_vec()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn sequential_calls_reuse_one_container() {
    let (pool, driver) = pool(GIB).await;
    let echo = spec("echo");
    let first = pool
        .register(echo.clone())
        .call(Request::new("call 0"))
        .await
        .unwrap();
    assert_eq!(
        (first.start, &first.body[..]),
        (Start::Cold, &b"call 0"[..])
    );
    for i in 1..100 {
        let response = pool
            .register(echo.clone())
            .call(Request::new(format!("call {i}")))
            .await
            .unwrap();
        assert_eq!(response.start, Start::Hot, "call {i}");
        assert_eq!(response.body, format!("call {i}"));
    }
    assert_eq!(driver.statistics().created, 1);
    pool.shutdown().await;
    assert_eq!(driver.statistics().closed, 1);
}

const GIB: u64 = 1 << 30;

#[tokio::test(start_paused = true)]
async fn concurrency_is_capped_and_every_container_is_reused() {
    let (pool, driver) = pool(GIB).await;
    let mut echo = spec("echo");
    echo.max_concurrency = 4;
    let callers = (0..16).map(|caller| {
        let (pool, echo) = (pool.clone(), echo.clone());
        async move {
            let mut starts = Vec::new();
            for i in 0..10 {
                let body = format!("{caller}-{i}");
                let response = pool
                    .register(echo.clone())
                    .call(Request::new(body.clone()))
                    .await
                    .unwrap();
                assert_eq!(response.body, body);
                assert!(pool.status().functions[0].busy <= 4);
                starts.push(response.start);
            }
            starts
        }
    });
    let starts: Vec<Start> = join_all(callers).await.into_iter().flatten().collect();
    assert_eq!(
        driver.statistics().created,
        4,
        "exactly max_concurrency containers"
    );
    assert_eq!(
        starts.iter().filter(|s| **s == Start::Cold).count(),
        4,
        "each container's first call"
    );
    assert_eq!(
        pool.status().functions[0].idle,
        4,
        "all four came back to the stack"
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_removes_a_bounded_number_of_containers_at_once() {
    let driver = InProcessDriver::new(START).with_close_delay(Duration::from_millis(100));
    let pool = with_40_idle(Pool::builder(driver.clone())).await;
    pool.shutdown().await;
    let statistics = driver.statistics();
    assert_eq!(statistics.closed, 40);
    assert_eq!(
        statistics.most_closing, REMOVALS_AT_ONCE,
        "removed in parallel, but never more at once than the bound"
    );
}

#[tokio::test(start_paused = true)]
async fn the_newest_idle_is_reused_so_extras_age_out() {
    let (pool, driver) = pool(GIB).await;
    let mut echo = spec("echo");
    echo.keep_alive = KeepAlive::fixed(Duration::from_secs(30));
    // A burst of two makes two containers.
    join_all([call(&pool, &echo, "a"), call(&pool, &echo, "b")]).await;
    assert_eq!(driver.statistics().created, 2);
    // Then one call every 10 s keeps only the newest busy; the other ages out.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        call(&pool, &echo, "steady").await.unwrap();
    }
    let stats = driver.statistics();
    assert_eq!((stats.created, stats.closed), (2, 1));
    assert_eq!(pool.status().functions[0].idle, 1);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_busy_at_once() {
    let (pool, _driver) = pool(GIB).await;
    let mut slow = spec("slow");
    slow.max_concurrency = 1;
    slow.max_queue = 2;
    slow.queue_timeout = Duration::from_secs(60);
    slow.timeout = Duration::from_secs(60);
    let occupant = tokio::spawn({
        let (pool, slow) = (pool.clone(), slow.clone());
        async move { call(&pool, &slow, "!sleep 20000").await }
    });
    // The occupant has its container before the others queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.status().functions[0].busy, 1);
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let (pool, slow) = (pool.clone(), slow.clone());
            tokio::spawn(async move { call(&pool, &slow, "queued").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.status().functions[0].waiting, 2);
    let refused = call(&pool, &slow, "one too many").await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Busy);
    assert_eq!(occupant.await.unwrap().unwrap(), "slept");
    for waiter in queued {
        assert_eq!(waiter.await.unwrap().unwrap(), "queued");
    }
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn waiting_past_the_queue_timeout_is_busy() {
    let (pool, _driver) = pool(GIB).await;
    let mut slow = spec("slow");
    slow.max_concurrency = 1;
    slow.queue_timeout = Duration::from_secs(2);
    slow.timeout = Duration::from_secs(60);
    let occupant = tokio::spawn({
        let (pool, slow) = (pool.clone(), slow.clone());
        async move { call(&pool, &slow, "!sleep 30000").await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = tokio::time::Instant::now();
    let error = call(&pool, &slow, "late").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Busy);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "busy exactly at the queue timeout"
    );
    occupant.await.unwrap().unwrap();
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_start_failure_reaches_every_waiting_call() {
    let (pool, driver) = pool(GIB).await;
    let mut broken = spec("broken");
    broken.image = MISSING_IMAGE.into();
    broken.max_concurrency = 2;
    let results =
        join_all((0..5).map(|i| call(&pool, &broken, if i % 2 == 0 { "x" } else { "y" }))).await;
    for result in results {
        assert_eq!(result.unwrap_err().kind(), ErrorKind::ImageNotFound);
    }
    assert_eq!(driver.statistics().created, 0);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_death_in_a_call_gives_its_reason_and_the_next_call_a_new_container() {
    let (pool, driver) = pool(GIB).await;
    let echo = spec("echo");
    for (request, expected) in [
        (
            "!oom",
            CallError::Oom {
                limit_bytes: 64 * MIB,
            },
        ),
        (
            "!exit 3",
            CallError::Exited {
                code: 3,
                stderr_tail: "exiting with 3\n".into(),
            },
        ),
    ] {
        assert_eq!(call(&pool, &echo, request).await.unwrap_err(), expected);
        assert_eq!(call(&pool, &echo, "after").await.unwrap(), "after");
    }
    let stats = driver.statistics();
    assert_eq!(
        (stats.created, stats.closed),
        (3, 2),
        "each death evicted its container"
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn broken_framing_is_a_protocol_error_and_evicts() {
    let (pool, driver) = pool(GIB).await;
    let echo = spec("echo");
    let error = call(&pool, &echo, "!garbage").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ProtocolError);
    assert_eq!(call(&pool, &echo, "fine").await.unwrap(), "fine");
    assert_eq!(driver.statistics().created, 2);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_timeout_kills_the_container() {
    let (pool, driver) = pool(GIB).await;
    let mut echo = spec("echo");
    echo.timeout = Duration::from_secs(1);
    let error = call(&pool, &echo, "!sleep 5000").await.unwrap_err();
    assert_eq!(
        error,
        CallError::Timeout {
            timeout: Duration::from_secs(1)
        }
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        driver.statistics().closed,
        1,
        "the timed-out container is gone"
    );
    assert_eq!(pool.status().functions[0].idle, 0);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_function_that_closes_stdout_is_answered_within_the_timeout_margin() {
    let (pool, driver) = pool(GIB).await;
    let mut echo = spec("echo");
    echo.timeout = Duration::from_secs(3);
    call(&pool, &echo, "warm").await.unwrap();
    // Still running at the deadline: it can no longer answer, and the call ends
    // then, with the protocol error rather than a timeout.
    let started = tokio::time::Instant::now();
    let error = call(&pool, &echo, "!close-stdout").await.unwrap_err();
    assert_eq!(started.elapsed(), echo.timeout, "on tokio's paused clock");
    assert!(
        matches!(&error, CallError::ProtocolError { detail } if detail.contains("kept running")),
        "{error:?}"
    );
    // With a timeout shorter than the margin, the engine still gets the margin
    // to say how the container ended, and not a moment more.
    echo.timeout = Duration::from_millis(200);
    call(&pool, &echo, "warm").await.unwrap();
    let started = tokio::time::Instant::now();
    let error = call(&pool, &echo, "!close-stdout").await.unwrap_err();
    assert_eq!(started.elapsed(), TIMEOUT_MARGIN, "on tokio's paused clock");
    assert!(
        matches!(error, CallError::ProtocolError { .. }),
        "{error:?}"
    );
    echo.timeout = Duration::from_secs(3);
    // Dying within the margin: the caller gets the real reason.
    let error = call(&pool, &echo, "!close-stdout-exit 300 4")
        .await
        .unwrap_err();
    assert!(
        matches!(error, CallError::Exited { code: 4, .. }),
        "{error:?}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        driver.statistics().closed,
        3,
        "all three containers are gone"
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_container_killed_while_idle_never_reaches_a_call() {
    let (pool, driver) = pool(GIB).await;
    let echo = spec("echo");
    call(&pool, &echo, "warm").await.unwrap();
    driver.kill_all();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        pool.status().functions[0].idle,
        0,
        "the dead container left the stack"
    );
    for i in 0..5 {
        assert_eq!(
            call(&pool, &echo, &format!("{i}")).await.unwrap(),
            format!("{i}")
        );
    }
    assert_eq!(driver.statistics().created, 2);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idle_containers_leave_after_the_idle_timeout() {
    let (pool, driver) = pool(GIB).await;
    let mut echo = spec("echo");
    echo.keep_alive = KeepAlive::fixed(Duration::from_secs(5));
    call(&pool, &echo, "once").await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(driver.statistics().closed, 0, "not yet");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(driver.statistics().closed, 1);
    assert_eq!(pool.status().functions[0].idle, 0);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn memory_pressure_evicts_the_least_recently_used_idle_of_another_function() {
    // Room for three 64 MiB containers.
    let (pool, driver) = pool(192 * MIB).await;
    let (a, b) = (spec("a"), spec("b"));
    join_all([call(&pool, &a, "1"), call(&pool, &a, "2")]).await;
    call(&pool, &b, "b").await.unwrap();
    assert_eq!(pool.status().memory_reserved, 192 * MIB);
    // A second concurrent call of b needs a fourth container: one of a's goes.
    let (long, short) = tokio::join!(call(&pool, &b, "!sleep 1000"), call(&pool, &b, "b2"));
    assert_eq!(
        (long.unwrap(), short.unwrap()),
        ("slept".to_string(), "b2".to_string())
    );
    let status = pool.status();
    let idle = |name: &str| {
        status
            .functions
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .idle
    };
    assert_eq!((idle("a"), idle("b")), (1, 2));
    assert_eq!(status.memory_reserved, 192 * MIB);
    assert_eq!(driver.statistics().closed, 1);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_spec_gets_new_containers_and_the_old_drain() {
    let (pool, driver) = pool(GIB).await;
    let old = spec("echo");
    let mut new = old.clone();
    new.env.insert("VERSION".into(), "2".into());
    call(&pool, &old, "v1").await.unwrap();
    let response = pool
        .register(new.clone())
        .call(Request::new("v2"))
        .await
        .unwrap();
    assert_eq!(
        response.start,
        Start::Cold,
        "a new spec gets a new container"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = driver.statistics();
    assert_eq!(
        (stats.created, stats.closed),
        (2, 1),
        "the old container drained"
    );
    let status = pool.status();
    assert_eq!(
        status.functions.len(),
        1,
        "the drained pool is gone: {status:?}"
    );
    assert_eq!(status.functions[0].key, new.key());
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_mid_call_costs_only_its_container() {
    let (pool, driver) = pool(GIB).await;
    let echo = spec("echo");
    call(&pool, &echo, "warm").await.unwrap();
    let abandoned =
        tokio::time::timeout(Duration::from_secs(1), call(&pool, &echo, "!sleep 10000")).await;
    assert!(abandoned.is_err(), "the caller gave up");
    assert_eq!(call(&pool, &echo, "next").await.unwrap(), "next");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = driver.statistics();
    assert_eq!(
        (stats.created, stats.closed),
        (2, 1),
        "the abandoned container was evicted"
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cold_calls_get_a_container_each_and_answer_before_its_removal() {
    const REMOVAL: Duration = Duration::from_secs(3);
    let driver = InProcessDriver::new(START).with_close_delay(REMOVAL);
    let pool = pool_on(driver.clone(), GIB).await;
    let mut cold = spec("cold");
    cold.lifecycle = Lifecycle::Cold;
    cold.cmd = vec!["echo".into()];
    cold.max_concurrency = 1;
    let function = pool.register(cold.clone());
    let mut answered = Vec::new();
    for i in 0..3 {
        let response = function
            .call(Request::new(format!("body {i}")))
            .await
            .unwrap();
        answered.push(tokio::time::Instant::now());
        assert_eq!(
            (response.start, response.body),
            (Start::Cold, format!("body {i}").into())
        );
        assert_eq!(
            pool.status().memory_reserved,
            cold.memory,
            "the container's memory stays reserved until it is removed"
        );
        if i == 0 {
            assert_eq!(
                driver.statistics().closed,
                0,
                "the first call is answered before its container is removed"
            );
        }
    }
    for pair in answered.windows(2) {
        assert!(
            pair[1] - pair[0] >= REMOVAL,
            "with one cold call at a time, a call waits for the last one's removal"
        );
    }
    // A shutdown waits for the removals under way.
    pool.shutdown().await;
    let stats = driver.statistics();
    assert_eq!((stats.created, stats.closed), (3, 3));
    assert_eq!(pool.status().memory_reserved, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_calls_finish_then_removes_everything() {
    let (pool, driver) = pool(GIB).await;
    let echo = spec("echo");
    join_all((0..3).map(|i| call(&pool, &echo, if i == 0 { "a" } else { "b" }))).await;
    let running = tokio::spawn({
        let (pool, echo) = (pool.clone(), echo.clone());
        async move { call(&pool, &echo, "!sleep 2000").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shutdown = tokio::spawn({
        let pool = pool.clone();
        async move { pool.shutdown().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        call(&pool, &echo, "late").await.unwrap_err().kind(),
        ErrorKind::Busy
    );
    assert_eq!(
        running.await.unwrap().unwrap(),
        "slept",
        "the call in flight finished"
    );
    shutdown.await.unwrap();
    let stats = driver.statistics();
    assert_eq!(stats.created, stats.closed, "every container was removed");
    assert_eq!(pool.status().memory_reserved, 0);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_gives_up_on_a_wedged_engine_and_says_what_it_left() {
    let (pool, driver) = pool(GIB).await;
    let echo = spec("echo");
    join_all([call(&pool, &echo, "a"), call(&pool, &echo, "b")]).await;
    let created = driver.statistics().created;
    assert_eq!(created, 2);
    // One call runs past the shutdown timeout: cutting it needs the engine too.
    let running = tokio::spawn({
        let (pool, echo) = (pool.clone(), echo.clone());
        async move { call(&pool, &echo, "!sleep 600000").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    driver.wedge(true);

    let started = tokio::time::Instant::now();
    let leftovers = pool.shutdown().await;
    let bound = pool.config().shutdown_timeout + driver.removal_deadline();
    assert!(
        started.elapsed() <= bound,
        "shutdown took {:?}, past the shutdown timeout plus the removal deadline ({bound:?})",
        started.elapsed()
    );
    assert_eq!(leftovers.containers.len(), created, "{leftovers:?}");
    assert!(leftovers.unswept, "the final sweep never ran");
    assert_eq!(driver.statistics().closed, 0);

    // The removals go on in the background once the engine answers again.
    driver.wedge(false);
    assert!(running.await.unwrap().is_err(), "the call was cut");
    while driver.statistics().closed < created {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn many_calls_at_once_start_containers_a_few_at_a_time() {
    let (pool, driver) = pool(GIB).await;
    let mut echo = spec("echo");
    echo.memory = 16 * MIB;
    echo.max_concurrency = 100;
    echo.max_queue = 100;
    let function = pool.register(echo);
    let calls = (0..100).map(|_| function.call(Request::new("!sleep 2000")));
    let answers = join_all(calls).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let statistics = driver.statistics();
    assert_eq!(
        statistics.most_preparing, STARTS_AT_ONCE,
        "a hundred starts asked at once go {STARTS_AT_ONCE} at a time"
    );
    assert!(statistics.created > STARTS_AT_ONCE, "{statistics:?}");
    pool.shutdown().await;
}

/// The pool `builder` builds, holding 40 idle containers of one function.
async fn with_40_idle(builder: PoolBuilder<InProcessDriver>) -> Pool<InProcessDriver> {
    let pool = builder
        .name("scheduling-test")
        .memory_budget(GIB)
        .build()
        .await
        .expect("pool");
    let mut echo = spec("echo");
    echo.memory = 16 * MIB;
    echo.max_concurrency = 40;
    let function = pool.register(echo);
    // Each call holds its container while the others start, a few at a time.
    let calls = (0..40).map(|_| function.call(Request::new("!sleep 2000")));
    assert!(join_all(calls).await.iter().all(Result::is_ok));
    assert_eq!(pool.status().functions[0].idle, 40);
    pool
}

#[tokio::test(start_paused = true)]
async fn a_slow_engine_that_keeps_removing_is_waited_for() {
    let driver = InProcessDriver::new(START).with_close_delay(Duration::from_secs(2));
    let pool = with_40_idle(Pool::builder(driver.clone())).await;

    let started = tokio::time::Instant::now();
    let leftovers = pool.shutdown().await;
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(driver.statistics().closed, 40);
    assert!(
        started.elapsed() > driver.removal_deadline(),
        "40 removals of 2 s, {REMOVALS_AT_ONCE} at once, outlast the removal deadline: \
         the teardown waited while they went on"
    );
}

#[tokio::test(start_paused = true)]
async fn a_removal_past_the_removal_timeout_leaves_the_rest_and_names_them() {
    const REMOVAL_TIMEOUT: Duration = Duration::from_secs(3);
    let driver = InProcessDriver::new(START).with_close_delay(Duration::from_secs(2));
    let pool = with_40_idle(Pool::builder(driver.clone()).removal_timeout(REMOVAL_TIMEOUT)).await;

    let started = tokio::time::Instant::now();
    let leftovers = pool.shutdown().await;
    assert!(
        started.elapsed() <= REMOVAL_TIMEOUT + Duration::from_millis(100),
        "no call ran: the stop took the removal timeout at most, not {:?}",
        started.elapsed()
    );
    // 16 at once, 2 s each: one round of removals fits in 3 s, not three.
    let removed = driver.statistics().closed;
    assert_eq!(
        removed, REMOVALS_AT_ONCE,
        "one round of removals ended in time"
    );
    assert_eq!(leftovers.containers.len(), 40 - removed, "{leftovers:?}");
    assert!(leftovers.unswept, "the final sweep did not run");
}

#[tokio::test(start_paused = true)]
async fn with_no_queue_a_call_still_gets_a_container_started_for_it() {
    let (pool, driver) = pool(GIB).await;
    let mut solo = spec("solo");
    solo.max_concurrency = 1;
    solo.max_queue = 0;
    assert_eq!(call(&pool, &solo, "first").await.unwrap(), "first");
    let occupant = tokio::spawn({
        let (pool, solo) = (pool.clone(), solo.clone());
        async move { call(&pool, &solo, "!sleep 3000").await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        call(&pool, &solo, "second").await.unwrap_err().kind(),
        ErrorKind::Busy
    );
    assert_eq!(occupant.await.unwrap().unwrap(), "slept");
    assert_eq!(driver.statistics().created, 1);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_waiting_costs_no_container() {
    let (pool, driver) = pool(GIB).await;
    let mut solo = spec("solo");
    solo.max_concurrency = 1;
    let occupant = tokio::spawn({
        let (pool, solo) = (pool.clone(), solo.clone());
        async move { call(&pool, &solo, "!sleep 2000").await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), call(&pool, &solo, "impatient")).await;
    assert!(gave_up.is_err(), "the caller gave up while waiting");
    assert_eq!(occupant.await.unwrap().unwrap(), "slept");
    let next = pool
        .register(solo.clone())
        .call(Request::new("next"))
        .await
        .unwrap();
    assert_eq!((next.start, next.body), (Start::Hot, "next".into()));
    let stats = driver.statistics();
    assert_eq!((stats.created, stats.closed), (1, 0));
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_longest_durations_neither_panic_nor_stop_the_reaper() {
    let (pool, _driver) = pool(GIB).await;
    let mut forever = spec("forever");
    forever.timeout = Duration::MAX;
    forever.queue_timeout = Duration::MAX;
    forever.keep_alive = KeepAlive::fixed(Duration::MAX);
    let mut brief = spec("brief");
    brief.keep_alive = KeepAlive::fixed(Duration::from_secs(1));
    assert_eq!(call(&pool, &forever, "a").await.unwrap(), "a");
    assert_eq!(call(&pool, &brief, "b").await.unwrap(), "b");
    // The reaper runs past the endless idle timeout and still removes the
    // container whose timeout is short.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = pool.status();
    let idle = |name: &str| {
        status
            .functions
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .idle
    };
    assert_eq!((idle("forever"), idle("brief")), (1, 0), "{status:?}");
    pool.shutdown().await;
}

// Functions registered by name: limits change in place, a new container spec
// drains the old version, a removed function drains and goes.

fn body(result: Result<hotpool::pool::Response, CallError>) -> String {
    String::from_utf8(result.expect("the call succeeds").body.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn changed_limits_keep_the_running_containers() {
    let (pool, driver) = pool(GIB).await;
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
    let (pool, _driver) = pool(GIB).await;
    let mut echo = spec("echo");
    echo.timeout = Duration::from_secs(60);
    let handle = pool.register(echo.clone());
    assert_eq!(body(handle.call(Request::new("warm")).await), "warm");
    echo.timeout = Duration::from_secs(1);
    pool.register(echo);
    let slow = handle.call(Request::new("!sleep 5000")).await;
    assert_eq!(slow.unwrap_err().kind(), ErrorKind::Timeout);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shorter_keep_alive_removes_containers_already_idle() {
    let (pool, driver) = pool(GIB).await;
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
    let (pool, driver) = pool(GIB).await;
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
    assert_eq!(body(waited), "waited");
    assert_eq!(driver.statistics().created, 2);
    long.abort();
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn two_versions_of_one_name_do_not_throw_each_other_away_per_call() {
    let (pool, driver) = pool(GIB).await;
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
    let (pool, driver) = pool(GIB).await;
    let mut v1 = spec("echo");
    v1.max_concurrency = 1;
    v1.timeout = Duration::from_secs(60);
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
    assert_eq!(body(moved), "moved");
    let status = pool.status();
    assert_eq!(status.functions.len(), 2, "{status:?}");
    assert!(status.functions.iter().any(|f| f.draining && f.busy == 1));
    assert_eq!(body(long.await.unwrap()), "slept");
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
    let (pool, driver) = pool(GIB).await;
    let mut v1 = spec("echo");
    v1.timeout = Duration::from_secs(60);
    let mut v2 = v1.clone();
    v2.cmd = vec!["line".into(), "--v2".into()];
    let handle = pool.register(v1.clone());
    let long = tokio::spawn(handle.call(Request::new("!sleep 5000")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    pool.register(v2);
    pool.register(v1);
    assert_eq!(body(long.await.unwrap()), "slept");
    let after = handle.call(Request::new("again")).await.unwrap();
    assert_eq!(after.start, Start::Hot, "v1's container was kept");
    assert_eq!(driver.statistics().created, 1);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_function_is_unknown_and_its_containers_go() {
    let (pool, driver) = pool(GIB).await;
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

#[tokio::test(start_paused = true)]
async fn a_pool_name_has_one_owner_on_a_driver_and_the_first_keeps_its_containers() {
    let (first, driver) = pool(GIB).await;
    let echo = first.register(spec("echo"));
    echo.call(Request::new("warm")).await.unwrap();
    let refused = Pool::builder(driver.clone())
        .name("scheduling-test")
        .build()
        .await;
    match refused {
        Err(BuildError::Claim(error @ ClaimError::Owned { .. })) => assert_eq!(
            error.to_string(),
            format!(
                "pool \"scheduling-test\" on this engine is owned by a running hotpool (pid {})",
                std::process::id()
            )
        ),
        Err(other) => panic!("refused otherwise: {other}"),
        Ok(_) => panic!("a second pool of one name was built"),
    }
    let hot = echo.call(Request::new("again")).await.unwrap();
    assert_eq!(hot.start, Start::Hot, "the first pool's container stayed");
    assert_eq!(driver.statistics().closed, 0);

    // Other names on the same driver, and the same name on another driver, are free.
    let other = Pool::builder(driver.clone()).name("other").build().await;
    let elsewhere = Pool::builder(InProcessDriver::new(START))
        .name("scheduling-test")
        .build()
        .await;
    for pool in [
        other.expect("another name"),
        elsewhere.expect("another driver"),
    ] {
        pool.shutdown().await;
    }

    first.shutdown().await;
    drop((first, echo));
    let next = Pool::builder(driver).name("scheduling-test").build().await;
    next.expect("the name is free once its pool is gone")
        .shutdown()
        .await;
}

/// A pool of the tests' name on `driver`, built with `specs` as its
/// functions: it takes over what the last owner of the name let go. Returns
/// once the removals its build began are done.
async fn next_pool(
    driver: &InProcessDriver,
    budget: u64,
    specs: &[FunctionSpec],
) -> Pool<InProcessDriver> {
    let pool = Pool::builder(driver.clone())
        .name("scheduling-test")
        .memory_budget(budget)
        .shutdown_timeout(Duration::from_secs(5))
        .functions(specs.iter().cloned())
        .build()
        .await
        .expect("the next pool");
    tokio::time::sleep(Duration::from_millis(1)).await;
    pool
}

/// `hotpool_adopted_containers_total` as this test's pools count it: a
/// recorder of the test's thread alone (a paused-clock test runs on one).
struct Adoptions {
    handle: PrometheusHandle,
    _guard: metrics::LocalRecorderGuard<'static>,
}

impl Adoptions {
    fn record() -> Adoptions {
        let recorder: &'static PrometheusRecorder =
            Box::leak(Box::new(PrometheusBuilder::new().build_recorder()));
        Adoptions {
            handle: recorder.handle(),
            _guard: metrics::set_default_local_recorder(recorder),
        }
    }

    /// Every (function, outcome) counted, with its count.
    fn counted(&self) -> Vec<(String, String, u64)> {
        let mut counted: Vec<_> = (self.handle.render().lines())
            .filter_map(|line| line.strip_prefix("hotpool_adopted_containers_total{"))
            .map(|rest| {
                let (labels, value) = rest.split_once("} ").expect(rest);
                let label = |name: &str| {
                    (labels.split(','))
                        .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                        .and_then(|value| value.strip_suffix('"'))
                        .expect(labels)
                        .to_owned()
                };
                let value = value.parse().expect(value);
                (label("function"), label("outcome"), value)
            })
            .collect();
        counted.sort();
        counted
    }
}

/// `(function, outcome, count)` as [`Adoptions::counted`] has them.
fn counts(expected: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    let mut counts: Vec<_> = (expected.iter())
        .map(|&(function, outcome, count)| (function.to_owned(), outcome.to_owned(), count))
        .collect();
    counts.sort();
    counts
}

/// The in-process function answering HTTP.
fn http_spec(name: &str) -> FunctionSpec {
    let mut spec = spec(name);
    spec.lifecycle = Format::Http.into();
    spec.cmd = vec!["http".into()];
    spec
}

/// `count` calls of `spec` at once, so that as many containers serve them.
async fn calls_at_once(pool: &Pool<InProcessDriver>, spec: &FunctionSpec, count: usize) {
    let calls = (0..count).map(|i| call(pool, spec, if i == 0 { "!sleep 10" } else { "x" }));
    for answer in join_all(calls).await {
        answer.unwrap();
    }
}

/// (idle, busy) containers of each function, by name.
fn idle_and_busy(pool: &Pool<InProcessDriver>) -> Vec<(String, usize, usize)> {
    pool.status()
        .functions
        .into_iter()
        .map(|f| (f.name, f.idle, f.busy))
        .collect()
}

/// Calls `spec` through `pool`: how it started, and its answer.
async fn started_and_answer(
    pool: &Pool<InProcessDriver>,
    spec: &FunctionSpec,
    body: &str,
) -> (Start, String) {
    let response = pool
        .register(spec.clone())
        .call(Request::new(body.to_owned()))
        .await
        .unwrap();
    (
        response.start,
        String::from_utf8(response.body.to_vec()).unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_pool_handed_over_has_its_idle_containers_served_hot_by_the_next() {
    let adoptions = Adoptions::record();
    let (first, driver) = pool(GIB).await;
    let (mut line, http) = (spec("line"), http_spec("http"));
    line.max_concurrency = 2;
    calls_at_once(&first, &line, 2).await;
    assert_eq!(
        call(&first, &http, "first body").await.unwrap(),
        "first body"
    );
    assert_eq!(driver.statistics().created, 3);

    assert!(first.hand_over().await.is_empty());
    drop(first);
    let stats = driver.statistics();
    assert_eq!(
        (stats.released, stats.closed),
        (3, 0),
        "let go, not removed"
    );

    let next = next_pool(&driver, GIB, &[line.clone(), http.clone()]).await;
    let stats = driver.statistics();
    assert_eq!((stats.adopted, stats.closed), (3, 0));
    assert_eq!(
        adoptions.counted(),
        counts(&[("http", "adopted", 1), ("line", "adopted", 2)])
    );
    assert_eq!(
        idle_and_busy(&next),
        [("http".into(), 1, 0), ("line".into(), 2, 0)]
    );
    assert_eq!(
        started_and_answer(&next, &http, "second body").await,
        (Start::Hot, "second body".into())
    );
    let both = join_all([
        started_and_answer(&next, &line, "!sleep 10"),
        started_and_answer(&next, &line, "b"),
    ])
    .await;
    assert_eq!(
        both,
        [(Start::Hot, "slept".into()), (Start::Hot, "b".into())]
    );
    assert_eq!(driver.statistics().created, 3, "the next pool started none");

    next.shutdown().await;
    assert_eq!(driver.statistics().closed, 3);
}

#[tokio::test(start_paused = true)]
async fn a_container_in_a_call_at_the_hand_over_deadline_is_removed_not_handed_over() {
    let (first, driver) = pool(GIB).await;
    let mut echo = spec("echo");
    echo.max_concurrency = 2;
    calls_at_once(&first, &echo, 2).await;
    let cut = tokio::spawn({
        let (first, echo) = (first.clone(), echo.clone());
        async move { call(&first, &echo, "!sleep 60000").await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(idle_and_busy(&first), [("echo".into(), 1, 1)]);

    // The shutdown timeout (5 s) passes with the call still in its container.
    assert!(first.hand_over().await.is_empty());
    assert!(cut.await.unwrap().is_err(), "the call was cut");
    drop(first);
    let stats = driver.statistics();
    assert_eq!((stats.released, stats.closed), (1, 1));

    let next = next_pool(&driver, GIB, std::slice::from_ref(&echo)).await;
    let stats = driver.statistics();
    assert_eq!((stats.adopted, stats.closed), (1, 1), "only the idle one");
    assert_eq!(idle_and_busy(&next), [("echo".into(), 1, 0)]);
    next.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_container_let_go_in_a_call_is_removed_not_taken_over() {
    use hotpool::driver::{Cookie, Task};
    use hotpool::pool::POOL_LABEL;
    use tokio::io::AsyncWriteExt;

    let adoptions = Adoptions::record();
    let (first, driver) = pool(GIB).await;
    let echo = spec("echo");
    call(&first, &echo, "warm").await.unwrap();
    first.hand_over().await;
    drop(first);

    // An owner took it over, wrote a request and let it go before the answer.
    let left = driver
        .leftovers(POOL_LABEL, "scheduling-test")
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    let mut task = Task::new(left[0].task_id.clone(), "echo", "echo-image");
    task.command = vec!["line".into()];
    let mut owner = driver.adopt(&left[0], task).await.unwrap();
    let running = owner.run().await.unwrap();
    running.mark.as_ref().unwrap().busy();
    let mut stdin = running.stdin.unwrap();
    stdin.write_all(b"!sleep 1000\n").await.unwrap();
    assert!(owner.release().await);
    drop((owner, running.stdout, stdin));
    assert_eq!(driver.statistics().adopted, 1);

    let next = next_pool(&driver, GIB, std::slice::from_ref(&echo)).await;
    let stats = driver.statistics();
    assert_eq!((stats.adopted, stats.closed), (1, 1), "refused and removed");
    assert_eq!(adoptions.counted(), counts(&[("echo", "in_call", 1)]));
    assert!(next.status().functions[0].idle == 0);
    assert_eq!(
        started_and_answer(&next, &echo, "after").await,
        (Start::Cold, "after".into())
    );
    assert_eq!(driver.statistics().created, 2);
    next.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_container_that_ends_while_let_go_is_removed_not_taken_over() {
    let adoptions = Adoptions::record();
    let (first, driver) = pool(GIB).await;
    let echo = spec("echo");
    call(&first, &echo, "warm").await.unwrap();
    first.hand_over().await;
    drop(first);
    driver.kill_all();

    let next = next_pool(&driver, GIB, std::slice::from_ref(&echo)).await;
    let stats = driver.statistics();
    assert_eq!((stats.adopted, stats.closed), (0, 1));
    assert_eq!(adoptions.counted(), counts(&[("echo", "ended", 1)]));
    let (start, _) = started_and_answer(&next, &echo, "after").await;
    assert_eq!(start, Start::Cold);
    next.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn containers_of_a_changed_spec_or_of_no_configured_function_are_removed() {
    let adoptions = Adoptions::record();
    let (first, driver) = pool(GIB).await;
    let (kept, env, memory, gone) = (spec("kept"), spec("env"), spec("memory"), spec("gone"));
    let cold = spec("cold");
    for spec in [&kept, &env, &memory, &gone, &cold] {
        call(&first, spec, "warm").await.unwrap();
    }
    first.hand_over().await;
    drop(first);
    assert_eq!(driver.statistics().released, 5);

    let mut new_env = env.clone();
    new_env.env.insert("GREETING".into(), "hello".into());
    let mut new_memory = memory.clone();
    new_memory.memory *= 2;
    let mut now_cold = cold.clone();
    now_cold.lifecycle = Lifecycle::Cold;
    let next = next_pool(
        &driver,
        GIB,
        &[kept.clone(), new_env.clone(), new_memory.clone(), now_cold],
    )
    .await;
    let stats = driver.statistics();
    assert_eq!((stats.adopted, stats.closed), (1, 4));
    assert_eq!(
        adoptions.counted(),
        counts(&[
            ("kept", "adopted", 1),
            ("env", "spec_changed", 1),
            ("memory", "spec_changed", 1),
            ("cold", "spec_changed", 1),
            ("gone", "not_configured", 1),
        ])
    );
    for (spec, start) in [
        (&kept, Start::Hot),
        (&new_env, Start::Cold),
        (&new_memory, Start::Cold),
    ] {
        let answer = started_and_answer(&next, spec, "call").await;
        assert_eq!(answer, (start, "call".into()), "{}", spec.name);
    }
    next.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn adoption_stays_within_each_function_s_concurrency_and_the_memory_budget() {
    let adoptions = Adoptions::record();
    let (first, driver) = pool(GIB).await;
    let (mut a, b, c) = (spec("a"), spec("b"), spec("c"));
    a.max_concurrency = 3;
    calls_at_once(&first, &a, 3).await;
    call(&first, &b, "warm").await.unwrap();
    call(&first, &c, "warm").await.unwrap();
    first.hand_over().await;
    drop(first);
    assert_eq!(driver.statistics().released, 5);

    // Room for two containers of `a` and one more.
    a.max_concurrency = 2;
    let next = next_pool(&driver, 3 * 64 * MIB, &[a.clone(), b.clone(), c.clone()]).await;
    let stats = driver.statistics();
    assert_eq!(
        (stats.adopted, stats.closed),
        (3, 2),
        "two refused, not adopted"
    );
    assert_eq!(
        adoptions.counted(),
        counts(&[
            ("a", "adopted", 2),
            ("a", "over_concurrency", 1),
            ("b", "adopted", 1),
            ("c", "over_budget", 1),
        ])
    );
    assert_eq!(
        idle_and_busy(&next),
        [("a".into(), 2, 0), ("b".into(), 1, 0), ("c".into(), 0, 0)]
    );
    assert_eq!(next.status().memory_reserved, 3 * 64 * MIB);
    next.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_leaves_nothing_for_the_next_pool_to_take_over() {
    let (first, driver) = pool(GIB).await;
    let (line, http) = (spec("line"), http_spec("http"));
    call(&first, &line, "warm").await.unwrap();
    call(&first, &http, "warm").await.unwrap();
    assert!(first.shutdown().await.is_empty());
    drop(first);
    let left = driver
        .leftovers(hotpool::pool::POOL_LABEL, "scheduling-test")
        .await
        .unwrap();
    assert_eq!(left, []);
    assert_eq!(driver.left_policies("scheduling-test"), None, "nor learned");
    let stats = driver.statistics();
    assert_eq!((stats.created, stats.closed, stats.released), (2, 2, 0));

    let next = next_pool(&driver, GIB, &[line.clone(), http.clone()]).await;
    assert_eq!(driver.statistics().adopted, 0);
    let (start, _) = started_and_answer(&next, &line, "after").await;
    assert_eq!(start, Start::Cold);
    next.shutdown().await;
}

/// A function on the adaptive keep-alive.
fn adaptive_spec(name: &str) -> FunctionSpec {
    let mut spec = spec(name);
    spec.keep_alive = KeepAlive::ADAPTIVE;
    spec
}

/// Calls `spec` twenty times, two seconds apart: its adaptive policy learns
/// that its container is taken again after two seconds idle, and lets an idle
/// one go soon after that, not after the ten minutes it starts with.
async fn teach(pool: &Pool<InProcessDriver>, spec: &FunctionSpec) {
    for i in 0..20 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        call(pool, spec, &format!("call {i}")).await.unwrap();
    }
}

/// The idle containers of `pool`'s only function two seconds from now and
/// ten seconds from now.
async fn idle_after_2_and_10_s(pool: &Pool<InProcessDriver>) -> [usize; 2] {
    let idle = || pool.status().functions[0].idle;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_2 = idle();
    tokio::time::sleep(Duration::from_secs(8)).await;
    [at_2, idle()]
}

/// A pool on a new driver that learned `taught`'s calls and handed over: the
/// driver, and what it left.
async fn taught_and_handed_over(taught: &FunctionSpec) -> (InProcessDriver, Vec<u8>) {
    let (first, driver) = pool(GIB).await;
    teach(&first, taught).await;
    call(&first, &spec("fixed"), "warm").await.unwrap();
    first.hand_over().await;
    drop(first);
    let left = driver
        .left_policies("scheduling-test")
        .expect("learned policies left");
    (driver, left)
}

#[tokio::test(start_paused = true)]
async fn the_next_pool_s_keep_alive_starts_from_what_the_handed_over_one_learned() {
    let adaptive = adaptive_spec("adaptive");
    // What the pool itself does with an idle container, once it learned.
    let (learned, _) = pool(GIB).await;
    teach(&learned, &adaptive).await;
    let kept_by_the_first = idle_after_2_and_10_s(&learned).await;
    assert_eq!(kept_by_the_first, [1, 0], "kept past 2 s, gone by 10 s");
    learned.shutdown().await;

    let (driver, left) = taught_and_handed_over(&adaptive).await;
    let left: serde_json::Value = serde_json::from_slice(&left).unwrap();
    let functions = &left["functions"];
    assert_eq!(functions["adaptive"]["keep_alive"], "adaptive");
    assert_eq!(functions["adaptive"]["learned"]["policy"], "adaptive");
    assert!(
        functions.get("fixed").is_none(),
        "a fixed one learns nothing"
    );

    let next = next_pool(&driver, GIB, std::slice::from_ref(&adaptive)).await;
    assert_eq!(driver.statistics().adopted, 1);
    assert_eq!(driver.left_policies("scheduling-test"), None, "taken");
    assert_eq!(idle_after_2_and_10_s(&next).await, kept_by_the_first);
    next.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_keep_alive_starts_afresh_after_a_hand_over() {
    let adaptive = adaptive_spec("adaptive");
    let (driver, _) = taught_and_handed_over(&adaptive).await;
    let mut changed = adaptive.clone();
    changed.keep_alive = "adaptive:2999".parse().unwrap();
    let next = next_pool(&driver, GIB, std::slice::from_ref(&changed)).await;
    assert_eq!(driver.statistics().adopted, 1, "the same container spec");
    assert_eq!(driver.left_policies("scheduling-test"), None, "taken");
    assert_eq!(
        idle_after_2_and_10_s(&next).await,
        [1, 1],
        "a fresh policy keeps an idle container ten minutes"
    );
    next.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn learned_policies_that_cannot_be_read_are_ignored_and_the_pool_is_built() {
    let adaptive = adaptive_spec("adaptive");
    let (driver, left) = taught_and_handed_over(&adaptive).await;
    let too_large = vec![b' '; hotpool::driver::MAX_POLICIES_BYTES as usize + 1];
    let cut_short = left[..left.len() / 2].to_vec();
    let mut wrong_bins: serde_json::Value = serde_json::from_slice(&left).unwrap();
    wrong_bins["functions"]["adaptive"]["learned"]["pooled"]["reused"] = serde_json::json!([1.0]);
    let wrong_bins = serde_json::to_vec(&wrong_bins).unwrap();
    for broken in [too_large, cut_short, b"\xff\x00".to_vec(), wrong_bins] {
        driver.set_left_policies("scheduling-test", broken);
        let next = next_pool(&driver, GIB, std::slice::from_ref(&adaptive)).await;
        assert_eq!(driver.left_policies("scheduling-test"), None, "taken");
        assert_eq!(idle_and_busy(&next), [("adaptive".into(), 1, 0)]);
        assert_eq!(
            idle_after_2_and_10_s(&next).await,
            [1, 1],
            "the policy starts afresh"
        );
        // Handed over again, with nothing learned since: a fresh policy's.
        next.hand_over().await;
    }
}

/// `spec("echo")` with a warm floor of `min_idle`.
fn floored(name: &str, min_idle: usize) -> FunctionSpec {
    let mut spec = spec(name);
    spec.min_idle = min_idle;
    spec
}

/// The (idle, starting) containers of function `name`.
fn idle_and_starting(pool: &Pool<InProcessDriver>, name: &str) -> (usize, usize) {
    let status = pool.status();
    let function = status
        .functions
        .iter()
        .find(|f| f.name == name && !f.draining)
        .expect(name);
    (function.idle, function.starting)
}

/// The value of the series `series` (name and labels as rendered) in
/// `handle`'s text, if it is there.
fn series(handle: &PrometheusHandle, series: &str) -> Option<f64> {
    handle.render().lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.parse().expect(line))
    })
}

#[tokio::test(start_paused = true)]
async fn a_warm_floor_is_filled_at_build_and_its_first_call_is_hot() {
    let driver = InProcessDriver::new(START);
    let pool = Pool::builder(driver.clone())
        .name("scheduling-test")
        .memory_budget(GIB)
        .functions([floored("echo", 2)])
        .build()
        .await
        .expect("pool");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(idle_and_starting(&pool, "echo"), (2, 0));
    assert_eq!(driver.statistics().created, 2, "no call asked");
    assert_eq!(pool.status().functions[0].min_idle, 2);
    let (start, answer) = started_and_answer(&pool, &floored("echo", 2), "first").await;
    assert_eq!((start, answer.as_str()), (Start::Hot, "first"));
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_call_that_takes_a_floor_container_starts_another_and_keep_alive_stops_at_the_floor() {
    let (pool, driver) = pool(GIB).await;
    let echo = floored("echo", 2);
    pool.register(echo.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(driver.statistics().created, 2);
    let long = tokio::spawn({
        let (pool, echo) = (pool.clone(), echo.clone());
        async move { call(&pool, &echo, "!sleep 3000").await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(idle_and_starting(&pool, "echo"), (2, 0), "one more started");
    assert_eq!(driver.statistics().created, 3);
    assert_eq!(long.await.unwrap().unwrap(), "slept");
    assert_eq!(idle_and_starting(&pool, "echo"), (3, 0));
    // The keep-alive (60 s) lets the surplus go, and no more: the floor holds
    // the other two however long they sit idle.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(idle_and_starting(&pool, "echo"), (2, 0));
    assert_eq!(
        (driver.statistics().created, driver.statistics().closed),
        (3, 1)
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_floor_container_that_dies_is_replaced() {
    let (pool, driver) = pool(GIB).await;
    pool.register(floored("echo", 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(idle_and_starting(&pool, "echo"), (1, 0));
    driver.kill_all();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(idle_and_starting(&pool, "echo"), (1, 0));
    assert_eq!(driver.statistics().created, 2, "a new one started");
    let (start, _) = started_and_answer(&pool, &floored("echo", 1), "x").await;
    assert_eq!(start, Start::Hot);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_memory_budget_wins_over_the_floor_which_evicts_nobody_and_says_it_is_short() {
    let metrics = Adoptions::record();
    // Room for three 64 MiB containers; one is another function's, idle.
    let (pool, driver) = pool(192 * MIB).await;
    call(&pool, &spec("other"), "x").await.unwrap();
    pool.register(floored("echo", 3));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(idle_and_starting(&pool, "echo"), (2, 0), "what fits");
    assert_eq!(idle_and_starting(&pool, "other"), (1, 0), "not evicted");
    assert_eq!(driver.statistics().created, 3);
    let short = r#"hotpool_min_idle_short{function="echo"}"#;
    assert_eq!(series(&metrics.handle, short), Some(1.0));
    // Once the other function's container goes, the floor is met.
    pool.remove("other");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(idle_and_starting(&pool, "echo"), (3, 0));
    assert_eq!(series(&metrics.handle, short), Some(0.0));
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_raises_the_floor_at_once_and_a_lowered_one_lets_go_by_keep_alive() {
    let (pool, driver) = pool(GIB).await;
    pool.register(floored("echo", 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(idle_and_starting(&pool, "echo"), (1, 0));
    pool.register(floored("echo", 3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(idle_and_starting(&pool, "echo"), (3, 0));
    assert_eq!(pool.status().functions.len(), 1, "one version, in place");
    // Held by the floor well past their keep-alive (60 s).
    tokio::time::sleep(Duration::from_secs(300)).await;
    pool.register(floored("echo", 1));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        idle_and_starting(&pool, "echo"),
        (3, 0),
        "nothing goes at once"
    );
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(
        idle_and_starting(&pool, "echo"),
        (1, 0),
        "a keep-alive after the reload"
    );
    assert_eq!(
        (driver.statistics().created, driver.statistics().closed),
        (3, 2)
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_floor_whose_starts_fail_waits_longer_after_each_failure() {
    let metrics = Adoptions::record();
    let (pool, driver) = pool(GIB).await;
    let mut broken = floored("broken", 1);
    broken.image = MISSING_IMAGE.into();
    pool.register(broken);
    let failed = || {
        let series_name =
            r#"hotpool_container_starts_total{function="broken",result="image_not_found"}"#;
        series(&metrics.handle, series_name).unwrap_or(0.0)
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Tried at 0, 1, 3 and 7 s: pauses of 1, 2 and 4 s.
    assert_eq!(failed(), 4.0);
    tokio::time::sleep(Duration::from_secs(290)).await;
    // Then 15, 31, 63, 127 and every 60 s after: 187, 247.
    assert_eq!(failed(), 10.0, "it keeps trying, slowly");
    assert_eq!(driver.statistics().created, 0);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_pool_built_over_a_handed_over_floor_takes_it_over_and_starts_none() {
    let (first, driver) = pool(GIB).await;
    let echo = floored("echo", 2);
    first.register(echo.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(driver.statistics().created, 2);
    assert!(first.hand_over().await.is_empty());
    drop(first);
    // The floor fills once the take-over is done, with what it took over.
    let next = next_pool(&driver, GIB, std::slice::from_ref(&echo)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = driver.statistics();
    assert_eq!((stats.adopted, stats.created, stats.closed), (2, 2, 0));
    assert_eq!(idle_and_starting(&next, "echo"), (2, 0));
    next.shutdown().await;
}

/// The spells of a timer that fans out: three calls of 5 s at once, a minute
/// apart, of 1 GiB containers whose cold start is worth 20 GB-s, so keeping
/// one through the 55 s gap costs almost three cold starts and starting it
/// again a third of one. Once the spells are known to come like clockwork,
/// the containers go as the function becomes idle, three start a second
/// before the next spell is due, and its calls are all served hot.
#[tokio::test(start_paused = true)]
async fn a_timers_fan_out_is_let_go_between_spells_and_started_again_before_it_is_due() {
    let (pool, driver) = pool(16 * GIB).await;
    let mut timer = spec("timer");
    timer.memory = GIB;
    timer.timeout = Duration::from_secs(10);
    timer.keep_alive = "adaptive:20".parse().unwrap();
    let period = Duration::from_secs(60);
    let first = tokio::time::Instant::now();
    let status = || pool.status().functions[0].clone();
    let function = pool.register(timer);
    let mut starts_per_spell = Vec::new();
    for spell in 0..12u32 {
        tokio::time::sleep_until(first + period * spell).await;
        let calls = (0..3).map(|_| function.call(Request::new("!sleep 5000")));
        let answers = join_all(calls).await;
        let starts: Vec<Start> = answers
            .into_iter()
            .map(|a| a.expect("a spell's call").start)
            .collect();
        starts_per_spell.push(starts);
        if spell >= 9 {
            // The clockwork is known (nine spells began a minute apart).
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                status().idle,
                0,
                "let go as the function became idle (spell {spell})"
            );
            tokio::time::sleep_until(first + period * (spell + 1) - Duration::from_millis(500))
                .await;
            let up = status();
            assert_eq!(
                up.idle + up.starting,
                3,
                "started again before the next spell: {up:?}"
            );
        }
    }
    for (spell, starts) in starts_per_spell.iter().enumerate().skip(10) {
        assert_eq!(
            starts,
            &[Start::Hot; 3],
            "spell {spell}: {starts_per_spell:?}"
        );
    }
    assert!(
        driver.statistics().created >= 3 * 10,
        "a start per container per spell"
    );
    pool.shutdown().await;
}
