//! The Docker driver against the real engine: cold calls, every way they end,
//! the hot shape of the pipes, stats, and the container's lock-down; each on
//! both transports.

mod support;

use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotpool::driver::docker::DockerDriver;
use hotpool::driver::{Cookie, Driver, RunResult, Task, Transport};
use hotpool::error::CallError;
use hotpool::stats::{CallStats, Stat, names};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use hotpool::pool::POOL_LABEL;
use support::{PoolGuard, SharedBuf, container_exists, driver, testfn_image};

const MIB: u64 = 1 << 20;

struct Outcome {
    result: RunResult,
    stdout: Vec<u8>,
    stderr: String,
}

/// A task of the test function, labelled as a pool of its own so that
/// [`guard`] can remove its container if the test fails half-way.
fn task(transport: Transport, args: &[&str]) -> Task {
    let mut task = Task::new(hotpool::driver::new_id(), "driver-test", testfn_image());
    task.labels
        .insert(POOL_LABEL.to_owned(), format!("driver-test-{}", task.id));
    task.transport = transport;
    task.command = args.iter().map(|a| a.to_string()).collect();
    task.memory = 64 * MIB;
    task.timeout = Some(Duration::from_secs(60));
    task
}

/// Removes the container of `task` when dropped, however the test ends.
fn guard(task: &Task) -> PoolGuard {
    PoolGuard(task.labels[POOL_LABEL].clone())
}

/// Runs one cold call to the end and checks that closing removed the container.
async fn cold(
    driver: &DockerDriver,
    mut task: Task,
    input: Vec<u8>,
    cancel: CancellationToken,
) -> Outcome {
    let stdout = SharedBuf::default();
    let stderr = SharedBuf::default();
    task.input = Some(Box::new(Cursor::new(input)));
    task.stdout = Some(Box::new(stdout.clone()));
    task.stderr = Box::new(stderr.clone());
    let task_id = task.id.clone();
    let _guard = guard(&task);
    let mut cookie = driver.prepare(task).await.expect("prepare");
    let running = cookie.run().await.expect("run");
    assert!(
        running.stdin.is_none() && running.stdout.is_none(),
        "the task claimed both pipes"
    );
    let result = cookie.wait(&cancel).await;
    cookie.close().await;
    assert!(
        !container_exists(driver.docker(), cookie.container_id()).await,
        "close left the container behind"
    );
    assert_eq!(
        support::direct_dirs_of(&task_id),
        Vec::<std::path::PathBuf>::new(),
        "close left the container's pipes behind"
    );
    Outcome {
        result,
        stdout: stdout.bytes(),
        stderr: stderr.text(),
    }
}

per_transport!(ten_mib_of_binary_round_trips);
async fn ten_mib_of_binary_round_trips(transport: Transport) {
    let driver = driver().await;
    let payload: Vec<u8> = (0..10 * MIB as usize)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let outcome = cold(
        &driver,
        task(transport, &["echo"]),
        payload.clone(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(outcome.stdout.len(), payload.len());
    assert!(outcome.stdout == payload, "the payload came back changed");
}

per_transport!(exit_code_comes_with_the_stderr_tail);
async fn exit_code_comes_with_the_stderr_tail(transport: Transport) {
    let driver = driver().await;
    let outcome = cold(
        &driver,
        task(transport, &["exit", "3", "cannot open the frobnicator"]),
        Vec::new(),
        CancellationToken::new(),
    )
    .await;
    match outcome.result.clone().err() {
        Some(CallError::Exited { code, stderr_tail }) => {
            assert_eq!(code, 3);
            assert_eq!(stderr_tail, "cannot open the frobnicator\n");
        }
        other => panic!("expected exited, got {other:?}"),
    }
    assert_eq!(
        outcome.stderr, "cannot open the frobnicator\n",
        "stderr reached the task's sink"
    );
}

per_transport!(running_out_of_memory_is_oom);
async fn running_out_of_memory_is_oom(transport: Transport) {
    let driver = driver().await;
    let mut task = task(transport, &["oom"]);
    task.memory = 32 * MIB;
    let outcome = cold(&driver, task, Vec::new(), CancellationToken::new()).await;
    assert_eq!(
        outcome.result.clone().err(),
        Some(CallError::Oom {
            limit_bytes: 32 * MIB
        })
    );
}

per_transport!(a_self_sigkill_is_not_oom);
async fn a_self_sigkill_is_not_oom(transport: Transport) {
    let driver = driver().await;
    let outcome = cold(
        &driver,
        task(transport, &["kill-self"]),
        Vec::new(),
        CancellationToken::new(),
    )
    .await;
    match outcome.result.clone().err() {
        Some(CallError::Exited { code: 137, .. }) => {}
        other => panic!("expected exited with 137, got {other:?}"),
    }
}

per_transport!(a_timeout_kills_the_container);
async fn a_timeout_kills_the_container(transport: Transport) {
    let driver = driver().await;
    let mut task = task(transport, &["sleep", "300"]);
    task.timeout = Some(Duration::from_millis(500));
    let outcome = cold(&driver, task, Vec::new(), CancellationToken::new()).await;
    assert_eq!(
        outcome.result.clone().err(),
        Some(CallError::Timeout {
            timeout: Duration::from_millis(500)
        })
    );
}

per_transport!(cancelling_kills_the_container);
async fn cancelling_kills_the_container(transport: Transport) {
    let driver = driver().await;
    let cancel = CancellationToken::new();
    let mut task = task(transport, &["sleep", "300"]);
    let started = Arc::new(tokio::sync::Notify::new());
    let on_start = started.clone();
    // The first stats sample proves the container runs; then the caller goes away.
    task.stats = Some(Arc::new(move |_| on_start.notify_one()));
    let canceller = cancel.clone();
    tokio::spawn(async move {
        started.notified().await;
        canceller.cancel();
    });
    let outcome = cold(&driver, task, Vec::new(), cancel).await;
    assert_eq!(outcome.result.clone().err(), Some(CallError::Cancelled));
}

per_transport!(unclaimed_pipes_are_handed_out_for_hot_use);
async fn unclaimed_pipes_are_handed_out_for_hot_use(transport: Transport) {
    let driver = driver().await;
    let task = task(transport, &["line"]);
    let _guard = guard(&task);
    let mut cookie = driver.prepare(task).await.expect("prepare");
    let running = cookie.run().await.expect("run");
    let mut stdin = running.stdin.expect("stdin handed out");
    let mut stdout = BufReader::new(running.stdout.expect("stdout handed out"));
    for request in ["first", "second", "third"] {
        stdin
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        assert_eq!(line, format!("{request}\n"));
    }
    // Closing stdin ends the function: the container exits cleanly.
    stdin.shutdown().await.unwrap();
    assert_eq!(cookie.wait(&CancellationToken::new()).await, Ok(()));
    cookie.close().await;
    assert!(!container_exists(driver.docker(), cookie.container_id()).await);
}

per_transport!(a_three_second_task_yields_stats_and_a_summary);
async fn a_three_second_task_yields_stats_and_a_summary(transport: Transport) {
    let driver = driver().await;
    let samples: Arc<Mutex<Vec<Stat>>> = Arc::default();
    let sink = samples.clone();
    let mut task = task(transport, &["spin", "3"]);
    task.stats = Some(Arc::new(move |stat| sink.lock().unwrap().push(stat)));
    let outcome = cold(&driver, task, Vec::new(), CancellationToken::new()).await;
    assert_eq!(outcome.result, Ok(()));
    let samples = samples.lock().unwrap().clone();
    assert!(
        samples.len() >= 2,
        "expected a sample a second, got {}",
        samples.len()
    );
    let summary = CallStats::new(2, samples.clone(), None);
    assert_eq!(summary.sample_count, samples.len());
    assert!(summary.samples.len() <= 2 && !summary.samples.is_empty());
    let average = summary.average.expect("an average");
    // The function holds 32 MiB and keeps a core busy.
    assert!(
        average.metrics[names::MEMORY_BYTES] > 8.0 * MIB as f64,
        "{average:?}"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.metrics.get(names::CPU_RATIO).is_some_and(|r| *r > 0.1)),
        "{samples:?}"
    );
}

per_transport!(a_task_whose_counters_are_read_gets_no_engine_samples);
/// The engine follows no stats stream for a task whose counters hotpool reads:
/// sampling them is the caller's, so a hot container costs the engine nothing
/// between calls.
async fn a_task_whose_counters_are_read_gets_no_engine_samples(transport: Transport) {
    let driver = driver().await;
    let samples: Arc<Mutex<Vec<Stat>>> = Arc::default();
    let sink = samples.clone();
    let mut task = task(transport, &["spin", "3"]);
    task.counters = true;
    task.stats = Some(Arc::new(move |stat| sink.lock().unwrap().push(stat)));
    let _guard = guard(&task);
    let mut cookie = driver.prepare(task).await.expect("prepare");
    let running = cookie.run().await.expect("run");
    // The function spins, then echoes its stdin, which ends here.
    let mut stdin = running.stdin.expect("stdin");
    stdin.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cpu = cookie
        .cpu_time()
        .expect("the counters are readable on this host");
    assert!(
        cpu > Duration::from_millis(100),
        "the counters see the spin: {cpu:?}"
    );
    assert_eq!(cookie.wait(&CancellationToken::new()).await, Ok(()));
    cookie.close().await;
    assert!(
        samples.lock().unwrap().is_empty(),
        "three seconds of a followed container would have brought engine samples"
    );
}

per_transport!(every_container_opens_its_counters_for_the_oom_verdict);
/// A task that does not sample the counters still gets them opened: an OOM
/// kill's verdict reads the cgroup's own count before the engine's flag.
async fn every_container_opens_its_counters_for_the_oom_verdict(transport: Transport) {
    let driver = driver().await;
    let task = task(transport, &["sleep", "30"]);
    assert!(!task.counters);
    let _guard = guard(&task);
    let mut cookie = driver.prepare(task).await.expect("prepare");
    let _running = cookie.run().await.expect("run");
    let memory = cookie.memory_bytes();
    cookie.close().await;
    assert!(
        memory.is_some_and(|bytes| bytes > 0),
        "the counters of a running container are readable on this host: {memory:?}"
    );
}

per_transport!(no_network_is_loopback_alone);
async fn no_network_is_loopback_alone(transport: Transport) {
    let driver = driver().await;
    let outcome = cold(
        &driver,
        task(transport, &["line"]),
        b"!read /proc/net/dev\n".to_vec(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.result, Ok(()), "{}", outcome.stderr);
    let interfaces = String::from_utf8_lossy(&outcome.stdout);
    let names: Vec<&str> = interfaces
        .split(" | ")
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.trim()))
        .collect();
    assert_eq!(
        names,
        vec!["lo"],
        "its own network namespace, loopback alone: {interfaces}"
    );
}

per_transport!(containers_are_labelled_and_locked_down);
async fn containers_are_labelled_and_locked_down(transport: Transport) {
    let driver = driver().await;
    let mut task = task(transport, &["echo"]);
    task.function = "locked".into();
    task.env.insert("GREETING".into(), "hi".into());
    let _guard = guard(&task);
    let cookie = driver.prepare(task).await.expect("prepare");
    let info = driver
        .docker()
        .inspect_container(cookie.container_id(), None)
        .await
        .unwrap();
    cookie.close().await;
    let config = info.config.unwrap();
    let labels = config.labels.unwrap();
    assert_eq!(labels["hotpool"], "1");
    assert_eq!(labels["hotpool.function"], "locked");
    assert!(config.env.unwrap().contains(&"GREETING=hi".to_string()));
    assert_eq!(
        config.network_disabled,
        Some(true),
        "no network: dockerd keeps the container out of libnetwork"
    );
    assert!(
        info.network_settings
            .and_then(|settings| settings.sandbox_id)
            .unwrap_or_default()
            .is_empty(),
        "no libnetwork sandbox"
    );
    let host = info.host_config.unwrap();
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_string()])
    );
    assert_eq!(host.memory, Some(64 * MIB as i64));
    assert_eq!(host.memory_swap, Some(64 * MIB as i64), "swap disabled");
    assert!(host.pids_limit.is_some_and(|p| p > 0));
    assert_eq!(host.init, Some(true), "Docker's init stays PID 1");
    if transport == Transport::Direct {
        let binds = host.binds.unwrap_or_default();
        assert!(
            binds
                .iter()
                .any(|bind| bind.ends_with(":/.hotpool/init:ro")),
            "the init program is mounted read-only: {binds:?}"
        );
    }
}
