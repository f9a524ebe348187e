//! containerd restarting under hot containers: the daemon (not its shims) is
//! stopped and started again while a hot container on the direct transport
//! serves. Calls go on while it is down (their bytes never pass through it);
//! once it is back, new containers start, and a container killed whole is
//! reported with its status (from the daemon's events, which the driver
//! subscribes to again, or from its task's state where an event was missed).
//! The daemon is one the tests own (`scripts/containerd-extra 2.1`), never
//! the host's.

mod support;

use std::process::Command;
use std::time::Duration;

use hotpool::driver::{Cookie, Driver, Running, Task};
use hotpool::error::CallError;
use hotpool::pool::POOL_LABEL;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio_util::sync::CancellationToken;

use support::containerd::{CONTAINERD_21, ExtraGuard, TestImage, options};

/// Runs `scripts/containerd-extra 2.1` with `args`, and asserts it succeeded.
fn containerd_extra(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/containerd-extra");
    let output = Command::new(script)
        .arg("2.1")
        .args(args)
        .output()
        .expect("run scripts/containerd-extra");
    assert!(
        output.status.success(),
        "containerd-extra 2.1 {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A hot container's pipes, as a line function uses them.
struct Hot {
    stdin: hotpool::driver::BoxWrite,
    stdout: Lines<BufReader<hotpool::driver::BoxRead>>,
}

impl Hot {
    fn new(running: Running) -> Hot {
        Hot {
            stdin: running.stdin.expect("stdin handed out"),
            stdout: BufReader::new(running.stdout.expect("stdout handed out")).lines(),
        }
    }

    async fn call(&mut self, line: &str) -> String {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line());
        answer.await.expect("an answer").unwrap().expect("a line")
    }
}

/// A hot line task of pool `pool` that outlives its owner for a minute.
fn hot_task(image: &TestImage, pool: &str) -> Task {
    let mut task = Task::new(
        hotpool::driver::new_id(),
        "restart-test",
        image.name.clone(),
    );
    task.labels.insert(POOL_LABEL.to_owned(), pool.to_owned());
    task.command = vec!["line".into()];
    task.memory = 64 << 20;
    task.orphan_timeout = Some(Duration::from_secs(60));
    task
}

/// Starts the daemon again when dropped, if the test stopped it and failed
/// before it started it.
struct Running21;

impl Drop for Running21 {
    fn drop(&mut self) {
        containerd_extra(&[]);
    }
}

#[tokio::test]
async fn a_restart_of_containerd_loses_no_hot_container_and_no_call() {
    let image = TestImage::shared().await;
    let Some(driver) = CONTAINERD_21.driver(options(&image)).await else {
        return;
    };
    let pool = format!("restart-test-{}", hotpool::driver::new_id());
    // Dropped after the daemon is up again: its containers and the image go.
    let _guard = ExtraGuard {
        daemon: &CONTAINERD_21,
        image: image.name.clone(),
        pool: pool.clone(),
    };
    let _running = Running21;
    let mut cookie = driver.prepare(hot_task(&image, &pool)).await.unwrap();
    let mut hot = Hot::new(cookie.run().await.unwrap());
    assert_eq!(hot.call("before").await, "before");

    containerd_extra(&["--stop"]);
    assert!(
        driver.ping().await.is_err(),
        "the daemon is down while the test says so"
    );
    assert_eq!(
        hot.call("while down").await,
        "while down",
        "served all the same"
    );
    containerd_extra(&[]);
    assert_eq!(hot.call("after").await, "after");

    // A new container starts and serves through the daemon that came back.
    let mut second = driver.prepare(hot_task(&image, &pool)).await.unwrap();
    let mut other = Hot::new(second.run().await.unwrap());
    assert_eq!(other.call("new").await, "new");

    // The first killed whole from outside (its init, PID 1 of its
    // namespace): no verdict from the init, so the driver must hear it from
    // the daemon that came back.
    let tasks = CONTAINERD_21.ctr(&["tasks", "ls"]);
    let pid = tasks
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (id, pid) = (fields.next()?, fields.next()?);
            (id == cookie.container_id()).then(|| pid.to_owned())
        })
        .unwrap_or_else(|| panic!("the first container's task is listed: {tasks}"));
    let killed = Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(killed.success());
    let ended = tokio::time::timeout(
        Duration::from_secs(60),
        cookie.wait(&CancellationToken::new()),
    )
    .await
    .expect("the driver hears of the exit");
    assert!(
        matches!(ended, Err(CallError::Exited { code: 137, .. })),
        "{ended:?}"
    );
    assert_eq!(
        other.call("still").await,
        "still",
        "the other one serves on"
    );
    cookie.close().await;
    second.close().await;
}
