//! The containerd driver against a real containerd: the image pulled from a
//! real registry, cold calls and every way they end, the hot shape of the
//! pipes, a task created first and started later (the warm tier), the
//! container's lock-down seen from inside, shim groups, hot containers taken
//! over by a new driver after their owner is gone, and nothing left behind in
//! hotpool's namespace.

mod support;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use hotpool::driver::containerd::{ContainerdCookie, ContainerdDriver, ContainerdOptions};
use hotpool::driver::{AdoptRefusal, Cookie, Driver, IO_LABEL, RunResult, Task, Transport};
use hotpool::error::{CallError, ErrorKind};
use hotpool::pool::POOL_LABEL;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio_util::sync::CancellationToken;

use support::SharedBuf;
use support::containerd::{PoolGuard, TestImage, driver, driver_with, leftovers, options};

const MIB: u64 = 1 << 20;

/// A task of the test function, labelled as a pool of its own so that its
/// guard can remove its container if the test fails half-way.
fn task(image: &TestImage, args: &[&str]) -> Task {
    let mut task = Task::new(
        hotpool::driver::new_id(),
        "containerd-test",
        image.name.clone(),
    );
    task.labels.insert(
        POOL_LABEL.to_owned(),
        format!("containerd-test-{}", task.id),
    );
    task.command = args.iter().map(|a| a.to_string()).collect();
    task.memory = 64 * MIB;
    task.timeout = Some(Duration::from_secs(60));
    task
}

fn guard(task: &Task) -> PoolGuard {
    PoolGuard(task.labels[POOL_LABEL].clone())
}

struct Outcome {
    result: RunResult,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs one cold call to the end and checks that closing left nothing.
async fn cold(driver: &ContainerdDriver, mut task: Task, input: Vec<u8>) -> Outcome {
    let stdout = SharedBuf::default();
    let stderr = SharedBuf::default();
    task.input = Some(Box::new(Cursor::new(input)));
    task.stdout = Some(Box::new(stdout.clone()));
    task.stderr = Box::new(stderr.clone());
    let (task_id, pool) = (task.id.clone(), task.labels[POOL_LABEL].clone());
    let _guard = guard(&task);
    let mut cookie = driver.prepare(task).await.expect("prepare");
    let running = cookie.run().await.expect("run");
    assert!(running.stdin.is_none() && running.stdout.is_none());
    let result = cookie.wait(&CancellationToken::new()).await;
    cookie.close().await;
    assert_nothing_left(&pool, &[cookie.container_id()]).await;
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

async fn assert_nothing_left(pool: &str, ids: &[&str]) {
    assert_eq!(
        leftovers(POOL_LABEL, pool, ids).await,
        Default::default(),
        "containerd still holds something of pool {pool}"
    );
}

/// A started hot container: its cookie, and its pipes as lines.
struct Hot {
    cookie: ContainerdCookie,
    stdin: hotpool::driver::BoxWrite,
    stdout: Lines<BufReader<hotpool::driver::BoxRead>>,
    _guard: PoolGuard,
}

impl Hot {
    async fn start(driver: &ContainerdDriver, task: Task) -> Hot {
        let guard = guard(&task);
        let mut cookie = driver.prepare(task).await.expect("prepare");
        let running = cookie.run().await.expect("run");
        Hot {
            cookie,
            stdin: running.stdin.expect("stdin handed out"),
            stdout: BufReader::new(running.stdout.expect("stdout handed out")).lines(),
            _guard: guard,
        }
    }

    /// Sends one line; yields the answer line.
    async fn call(&mut self, line: &str) -> String {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        self.stdout
            .next_line()
            .await
            .unwrap()
            .expect("an answer line")
    }
}

#[tokio::test]
async fn a_cold_call_round_trips_a_mebibyte() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let payload: Vec<u8> = (0..MIB as usize).map(|i| (i * 7 + i / 251) as u8).collect();
    let outcome = cold(&driver, task(&image, &["echo"]), payload.clone()).await;
    assert_eq!(outcome.result, Ok(()));
    assert!(outcome.stdout == payload, "the payload came back changed");
}

#[tokio::test]
async fn a_hot_container_answers_line_after_line() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let mut hot = Hot::start(&driver, task(&image, &["line"])).await;
    for request in ["first", "second", "third"] {
        assert_eq!(hot.call(request).await, request);
    }
    // Closing stdin ends the function: the container exits cleanly.
    hot.stdin.shutdown().await.unwrap();
    assert_eq!(hot.cookie.wait(&CancellationToken::new()).await, Ok(()));
    hot.cookie.close().await;
}

#[tokio::test]
async fn a_task_created_first_holds_only_runc_init_and_answers_once_started() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let task = task(&image, &["line"]);
    let pool = task.labels[POOL_LABEL].clone();
    let guard = guard(&task);
    let mut cookie = driver.prepare(task).await.expect("prepare");
    assert_eq!(cookie.footprint(), None, "no task yet, no footprint");
    cookie.create_task().await.expect("create the task");
    let created = cookie
        .footprint()
        .expect("a created task's cgroup is readable");
    assert_eq!(created.processes, 1, "runc's init alone: {created:?}");
    assert!(
        created.rss_bytes.is_some_and(|rss| rss > 0),
        "runc's init is resident: {created:?}"
    );
    let again = cookie.create_task().await.expect_err("a second create");
    assert!(again.to_string().contains("created before"), "{again}");

    let running = cookie.run().await.expect("start the created task");
    let mut hot = Hot {
        stdin: running.stdin.expect("stdin handed out"),
        stdout: BufReader::new(running.stdout.expect("stdout handed out")).lines(),
        cookie,
        _guard: guard,
    };
    assert_eq!(hot.call("warm").await, "warm");
    let started = hot.cookie.footprint().expect("a started task's cgroup");
    assert_eq!(
        started.processes, 2,
        "hotpool-init and the function: {started:?}"
    );
    hot.cookie.close().await;
    assert_nothing_left(&pool, &[hot.cookie.container_id()]).await;
}

#[tokio::test]
async fn a_task_only_created_is_removed_when_closed_or_dropped() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    for close in [true, false] {
        let task = task(&image, &["line"]);
        let pool = task.labels[POOL_LABEL].clone();
        let _guard = guard(&task);
        let mut cookie = driver.prepare(task).await.expect("prepare");
        cookie.create_task().await.expect("create the task");
        let id = cookie.container_id().to_owned();
        assert_eq!(
            leftovers(POOL_LABEL, &pool, &[&id]).await.tasks,
            std::slice::from_ref(&id),
            "the task exists, created"
        );
        if close {
            cookie.close().await;
        } else {
            // Dropped, the cookie removes its container in the background.
            drop(cookie);
        }
        let mut left = leftovers(POOL_LABEL, &pool, &[&id]).await;
        for _ in 0..300 {
            if left == Default::default() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = leftovers(POOL_LABEL, &pool, &[&id]).await;
        }
        let how = if close { "closed" } else { "dropped" };
        assert_eq!(left, Default::default(), "{how} while only created");
    }
}

#[tokio::test]
async fn an_exit_code_comes_with_the_stderr_tail() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let outcome = cold(
        &driver,
        task(&image, &["exit", "3", "cannot open the frobnicator"]),
        Vec::new(),
    )
    .await;
    match outcome.result {
        Err(CallError::Exited { code, stderr_tail }) => {
            assert_eq!(code, 3);
            assert_eq!(stderr_tail, "cannot open the frobnicator\n");
        }
        other => panic!("expected exited, got {other:?}"),
    }
    assert_eq!(outcome.stderr, "cannot open the frobnicator\n");
}

#[tokio::test]
async fn running_out_of_memory_is_oom() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let mut task = task(&image, &["oom"]);
    task.memory = 32 * MIB;
    let outcome = cold(&driver, task, Vec::new()).await;
    assert_eq!(
        outcome.result,
        Err(CallError::Oom {
            limit_bytes: 32 * MIB
        })
    );
}

#[tokio::test]
async fn a_self_sigkill_is_not_oom() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let outcome = cold(&driver, task(&image, &["kill-self"]), Vec::new()).await;
    match outcome.result {
        Err(CallError::Exited { code: 137, .. }) => {}
        other => panic!("expected exited with 137, got {other:?}"),
    }
}

#[tokio::test]
async fn a_timeout_kills_the_container() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let mut task = task(&image, &["sleep", "300"]);
    task.timeout = Some(Duration::from_millis(500));
    let outcome = cold(&driver, task, Vec::new()).await;
    assert_eq!(
        outcome.result,
        Err(CallError::Timeout {
            timeout: Duration::from_millis(500)
        })
    );
}

#[tokio::test]
async fn the_container_is_locked_down_inside() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let mut task = task(&image, &["line"]);
    task.tmp_size = 2 * MIB;
    let mut hot = Hot::start(&driver, task).await;
    assert_eq!(hot.call("!id").await, "1000:1000");
    let status = hot.call("!read /proc/self/status").await;
    for line in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(status.contains(line), "{line:?} in {status}");
    }
    let refused = hot.call("!refused").await;
    for call in [
        "mount",
        "unshare",
        "keyctl",
        "bpf",
        "perf_event_open",
        "ptrace",
    ] {
        assert!(
            refused.contains(&format!("{call}: Operation not permitted")),
            "{call} must be refused: {refused}"
        );
    }
    assert!(
        hot.call("!write-root")
            .await
            .contains("Read-only file system"),
        "the root is read-only"
    );
    assert_eq!(hot.call("!write-tmp 1048576").await, "wrote 1048576: ok");
    let full = hot.call("!write-tmp 4194304").await;
    assert!(full.contains("No space left on device"), "{full}");
    let interfaces = hot.call("!read /proc/net/dev").await;
    let names: Vec<&str> = interfaces
        .split(" | ")
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.trim()))
        .collect();
    assert_eq!(names, vec!["lo"], "no network but loopback: {interfaces}");
    assert_eq!(hot.call("!nofile").await, "1024 1024");
    assert_eq!(hot.call("!cpu-quota").await, "100000 100000");
    let timers = hot.call("!read /proc/timer_list").await;
    assert!(timers.is_empty(), "/proc/timer_list is masked: {timers}");
    hot.stdin.shutdown().await.unwrap();
    assert_eq!(hot.cookie.wait(&CancellationToken::new()).await, Ok(()));
    hot.cookie.close().await;
}

#[tokio::test]
async fn two_containers_share_a_shim_and_groups_are_bounded() {
    let image = TestImage::shared().await;
    let mut grouped = options(&image);
    grouped.group_size = 2;
    let driver = driver_with(grouped).await;
    let mut hots = Vec::new();
    for _ in 0..3 {
        hots.push(Hot::start(&driver, task(&image, &["line"])).await);
    }
    let mut shims = Vec::new();
    for hot in &mut hots {
        // The function's parent is hotpool-init, PID 1 of the container, whose
        // parent is the shim.
        let answer = hot.call("!read /proc/self/status").await;
        assert!(answer.contains("PPid:\t1"), "{answer}");
        shims.push(shim_of(&hot.cookie));
    }
    assert_eq!(shims[0], shims[1], "the first two share one shim");
    assert_ne!(shims[1], shims[2], "a group holds two at most");
    for mut hot in hots {
        hot.stdin.shutdown().await.unwrap();
        assert_eq!(hot.cookie.wait(&CancellationToken::new()).await, Ok(()));
        hot.cookie.close().await;
    }
}

/// A pool's teardown of a full shim group: every function exits as its stdin
/// closes while its container is killed, all at once. Each kill is done and
/// each container removed: asked of containerd 1.6's shim, such kills stalled
/// its exit handling (each exit waits behind the kill holding the task's lock,
/// then a second in the shim's reaper), and kills failed at their deadline.
#[tokio::test]
async fn a_whole_shim_group_is_killed_at_once_without_a_failed_kill() {
    const CONTAINERS: usize = 48;
    let image = TestImage::shared().await;
    let driver = driver_with(options(&image)).await;
    let pool = format!("containerd-test-group-{}", hotpool::driver::new_id());
    let in_pool = |mut task: Task| {
        task.labels.insert(POOL_LABEL.to_owned(), pool.clone());
        task
    };
    let mut hots: Vec<Hot> = futures_util::stream::iter(0..CONTAINERS)
        .map(|_| Hot::start(&driver, in_pool(task(&image, &["line"]))))
        .buffer_unordered(8)
        .collect()
        .await;
    let shims: std::collections::BTreeSet<u32> =
        hots.iter().map(|hot| shim_of(&hot.cookie)).collect();
    // Started eight at a time, they spread over a few groups of 64.
    assert!(
        shims.len() * 8 <= CONTAINERS,
        "a shim serves eight or more: {shims:?}"
    );
    let kills = join_all(hots.iter_mut().map(|hot| async {
        let _ = hot.stdin.shutdown().await;
        hot.cookie.kill().await
    }))
    .await;
    assert_eq!(kills, vec![Ok(()); CONTAINERS], "every kill is done");
    join_all(hots.iter().map(|hot| hot.cookie.close())).await;
    let ids: Vec<&str> = hots.iter().map(|hot| hot.cookie.container_id()).collect();
    assert_nothing_left(&pool, &ids).await;
}

/// The pid of the shim serving a running container: the parent of its init,
/// found on the host as the process whose cgroup is the container's.
fn shim_of(cookie: &ContainerdCookie) -> u32 {
    let id = cookie.container_id();
    let procs = format!("/sys/fs/cgroup/pids/hotpool/{id}/cgroup.procs");
    let procs = std::fs::read_to_string(&procs)
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/hotpool/{id}/cgroup.procs")))
        .unwrap_or_else(|e| panic!("the processes of {id}: {e}"));
    let pids: Vec<u32> = procs
        .lines()
        .filter_map(|pid| pid.trim().parse().ok())
        .collect();
    // The container's init is the process whose parent is outside it (not the
    // lowest pid: pids wrap around, and a child may have a lower one).
    pids.iter()
        .map(|&pid| parent_of(pid))
        .find(|parent| !pids.contains(parent))
        .expect("a process in the container whose parent is outside it")
}

/// The parent of process `pid`.
fn parent_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|ppid| ppid.trim().parse().ok())
        .expect("a parent")
}

#[tokio::test]
async fn remove_labelled_leaves_nothing_of_the_label() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let pool = format!("containerd-leftovers-{}", hotpool::driver::new_id());
    let _guard = PoolGuard(pool.clone());
    let labelled = |args: &[&str]| {
        let mut task = task(&image, args);
        task.labels.insert(POOL_LABEL.to_owned(), pool.clone());
        task
    };
    // One running, one prepared only, as a crash would leave them.
    let mut running = driver.prepare(labelled(&["sleep", "300"])).await.unwrap();
    let _pipes = running.run().await.unwrap();
    let prepared = driver.prepare(labelled(&["echo"])).await.unwrap();
    let ids = [
        running.container_id().to_owned(),
        prepared.container_id().to_owned(),
    ];
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(leftovers(POOL_LABEL, &pool, &ids).await.containers.len(), 2);
    assert_eq!(driver.remove_labelled(POOL_LABEL, &pool).await, Ok(2));
    assert_nothing_left(&pool, &ids).await;
    // The cookies find their containers gone: closing is still fine.
    running.close().await;
    prepared.close().await;
}

/// Starts a hot container of `task` on a driver of its own, has it answer one
/// line, marks it between calls (`idle`) or not, then loses it as a crash of
/// its owner would: hotpool's ends of its pipes go, and the cookie is never
/// closed nor dropped (nor its driver's runtime directory, which it holds).
async fn abandon(image: &TestImage, mut task: Task, idle: bool) {
    // The init keeps the function, and the pipes open, while no owner is there.
    task.orphan_timeout = Some(Duration::from_secs(120));
    let driver = driver(image).await;
    let mut cookie = driver.prepare(task).await.expect("prepare");
    let running = cookie.run().await.expect("run");
    let mark = running.mark.expect("a direct container has a mark");
    let mut stdin = running.stdin.expect("stdin handed out");
    let mut stdout = BufReader::new(running.stdout.expect("stdout handed out")).lines();
    mark.busy();
    stdin.write_all(b"before\n").await.unwrap();
    stdin.flush().await.unwrap();
    assert_eq!(stdout.next_line().await.unwrap().as_deref(), Some("before"));
    if idle {
        mark.idle();
    }
    std::mem::forget(cookie);
}

/// The task a new owner adopts container `task_id` of `pool` for.
fn adopting(image: &TestImage, task_id: &str, pool: &str) -> Task {
    let mut task = task(image, &["line"]);
    task.id = task_id.to_owned();
    task.labels.insert(POOL_LABEL.to_owned(), pool.to_owned());
    task
}

#[tokio::test]
async fn a_hot_container_left_between_calls_is_taken_over_by_a_new_driver() {
    let image = TestImage::shared().await;
    let task = task(&image, &["line"]);
    let (task_id, pool) = (task.id.clone(), task.labels[POOL_LABEL].clone());
    let guard = guard(&task);
    abandon(&image, task, true).await;

    let driver = driver(&image).await;
    let found = driver
        .leftovers(POOL_LABEL, &pool)
        .await
        .expect("leftovers");
    assert_eq!(found.len(), 1, "{found:?}");
    let leftover = &found[0];
    assert_eq!(leftover.task_id, task_id);
    let id = leftover.engine_id.clone();
    let mut cookie = driver
        .adopt(leftover, adopting(&image, &task_id, &pool))
        .await
        .expect("a container between calls is taken over");
    let running = cookie.run().await.expect("run hands out the pipes");
    assert!(running.mark.expect("a mark").is_idle());
    let mut hot = Hot {
        stdin: running.stdin.expect("stdin handed out"),
        stdout: BufReader::new(running.stdout.expect("stdout handed out")).lines(),
        cookie,
        _guard: guard,
    };
    assert_eq!(hot.call("after").await, "after");
    assert!(hot.cookie.cpu_time().is_some(), "its cgroup's counters");
    assert!(hot.cookie.memory_bytes().is_some_and(|bytes| bytes > 0));
    // The pipes stay where the container's label says, for a later owner.
    let io = std::path::PathBuf::from(&leftover.labels[IO_LABEL]);
    assert!(io.join("stdin").exists());

    hot.cookie.kill().await.expect("kill");
    match hot.cookie.wait(&CancellationToken::new()).await {
        Err(CallError::Exited { code: 137, .. }) => {}
        other => panic!("expected exited with 137, got {other:?}"),
    }
    hot.cookie.close().await;
    assert_eq!(driver.leftovers(POOL_LABEL, &pool).await, Ok(Vec::new()));
    assert_nothing_left(&pool, &[&id]).await;
    assert_eq!(
        support::direct_dirs_of(&task_id),
        Vec::<std::path::PathBuf>::new(),
        "close left the container's pipes behind"
    );
}

#[tokio::test]
async fn a_container_left_in_a_call_is_refused_and_removed_with_what_a_prepare_left() {
    let image = TestImage::shared().await;
    let task = task(&image, &["line"]);
    let (task_id, pool) = (task.id.clone(), task.labels[POOL_LABEL].clone());
    let _guard = guard(&task);
    abandon(&image, task, false).await;
    // And a snapshot with the pool's label that no container holds, as a
    // prepare that died half-way leaves one.
    let half_made = format!("hotpool-test-half-made-{task_id}");
    for args in [
        vec!["snapshots", "prepare", &half_made],
        vec![
            "snapshots",
            "label",
            &half_made,
            &format!("{POOL_LABEL}={pool}"),
        ],
    ] {
        let ctr = std::process::Command::new("ctr")
            .args(["--address", support::containerd::SOCKET])
            .args(["--namespace", support::containerd::NAMESPACE])
            .args(args)
            .output()
            .expect("run ctr");
        assert!(
            ctr.status.success(),
            "{}",
            String::from_utf8_lossy(&ctr.stderr)
        );
    }

    let driver = driver(&image).await;
    let found = driver
        .leftovers(POOL_LABEL, &pool)
        .await
        .expect("leftovers");
    assert_eq!(found.len(), 1, "{found:?}");
    let id = found[0].engine_id.clone();
    assert_eq!(
        leftovers(POOL_LABEL, &pool, &[&id]).await.snapshots,
        std::slice::from_ref(&id),
        "the half-made snapshot went, the container's stayed"
    );
    let refused = driver
        .adopt(&found[0], adopting(&image, &task_id, &pool))
        .await
        .err()
        .expect("a container in a call is refused");
    assert!(refused.to_string().contains("in a call"), "{refused}");
    assert_eq!(refused.refusal, AdoptRefusal::InCall, "{refused}");
    driver.remove_leftover(&found[0]).await.expect("removed");
    assert_nothing_left(&pool, &[&id]).await;
    assert_eq!(
        support::direct_dirs_of(&task_id),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test]
async fn the_namespaces_of_docker_and_the_kubelet_are_refused() {
    for namespace in ["moby", "k8s.io"] {
        let mut options = ContainerdOptions::default();
        options.namespace = namespace.to_owned();
        let refused = ContainerdDriver::connect(options).await.err();
        let message = refused.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("namespace of its own"),
            "{namespace}: {message}"
        );
    }
}

#[tokio::test]
async fn attach_and_named_networks_and_user_names_are_refused() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    assert!(!driver.traits().attach);
    let mut attach = task(&image, &["echo"]);
    attach.transport = Transport::Attach;
    let mut network = task(&image, &["echo"]);
    network.network = Some("bridge".to_owned());
    let mut named = task(&image, &["echo"]);
    named.user = "nobody".to_owned();
    for (task, words) in [
        (attach, "no attach transport"),
        (network, "no network but loopback"),
        (named, "numeric uid"),
    ] {
        let refused = driver.prepare(task).await.err().expect("refused");
        assert_eq!(refused.kind(), ErrorKind::EngineError);
        assert!(refused.to_string().contains(words), "{refused}");
    }
}

/// Prepares `image` and returns the error kind, or `None` when it worked.
async fn prepare_kind(driver: &ContainerdDriver, image: &str) -> Option<ErrorKind> {
    let mut task = Task::new(hotpool::driver::new_id(), "pull-test", image);
    let pool = format!("containerd-pull-{}", task.id);
    task.labels.insert(POOL_LABEL.to_owned(), pool.clone());
    let _guard = PoolGuard(pool);
    match driver.prepare(task).await {
        Ok(cookie) => {
            cookie.close().await;
            None
        }
        Err(e) => Some(e.kind()),
    }
}

#[tokio::test]
async fn pull_errors_have_their_kinds_and_prepares_share_a_pull() {
    // An image of its own: the pull is what is tested.
    let image = Arc::new(TestImage::push("hotpool-testfn-containerd-pull").await);
    let with_config = |dir: &std::path::Path| {
        let mut options = ContainerdOptions::default();
        options.docker_config_dir = Some(dir.to_owned());
        options
    };
    let no_credentials = tempfile::tempdir().unwrap();
    let anonymous = driver_with(with_config(no_credentials.path())).await;
    assert_eq!(
        prepare_kind(&anonymous, &image.name).await,
        Some(ErrorKind::ImageUnauthorized)
    );
    let wrong_config = image
        .registry()
        .docker_config(support::registry::USER, "not-the-password");
    let wrong = driver_with(with_config(wrong_config.path())).await;
    assert_eq!(
        prepare_kind(&wrong, &image.name).await,
        Some(ErrorKind::ImageUnauthorized)
    );
    let right = driver(&image).await;
    let missing = format!("{}/no-such-repository:v1", image.registry().addr);
    assert_eq!(
        prepare_kind(&right, &missing).await,
        Some(ErrorKind::ImageNotFound)
    );
    let unreachable = format!("127.0.0.1:{}/nothing:v1", support::free_port());
    assert_eq!(
        prepare_kind(&right, &unreachable).await,
        Some(ErrorKind::PullFailed)
    );
    let pulls_before = right.statistics().image_pulls;
    let prepares = (0..4).map(|_| prepare_kind(&right, &image.name));
    let kinds = futures_util::future::join_all(prepares).await;
    assert_eq!(kinds, vec![None; 4], "the right password pulls");
    assert_eq!(
        right.statistics().image_pulls,
        pulls_before + 1,
        "one pull for four prepares"
    );
    let pulls_before = right.statistics().image_pulls;
    assert_eq!(prepare_kind(&right, &image.name).await, None);
    assert_eq!(
        right.statistics().image_pulls,
        pulls_before,
        "a present image is not pulled again"
    );
}

#[tokio::test]
async fn the_init_passes_sigterm_on_to_the_function() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let mut hot = Hot::start(&driver, task(&image, &["line"])).await;
    assert_eq!(hot.call("up?").await, "up?");
    // PID 1 of a container gets no signal it has no handler for: without
    // hotpool-init passing it on, the function would never see it.
    let killed = std::process::Command::new("ctr")
        .args(["--address", support::containerd::SOCKET])
        .args(["--namespace", support::containerd::NAMESPACE])
        .args([
            "tasks",
            "kill",
            "--signal",
            "SIGTERM",
            hot.cookie.container_id(),
        ])
        .status()
        .expect("run ctr");
    assert!(killed.success());
    // The bound is a margin for a loaded host, not a speed.
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        hot.cookie.wait(&CancellationToken::new()),
    )
    .await
    .expect("the function ended on SIGTERM");
    match ended {
        Err(CallError::Exited { code: 143, .. }) => {}
        other => panic!("expected exited with 143 (SIGTERM), got {other:?}"),
    }
    hot.cookie.close().await;
}

#[tokio::test]
async fn a_dead_shim_fails_every_call_of_its_group_and_leaves_nothing() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let pool = format!("containerd-shim-death-{}", hotpool::driver::new_id());
    let _guard = PoolGuard(pool.clone());
    let mut hots = Vec::new();
    for _ in 0..2 {
        let mut task = task(&image, &["line"]);
        task.labels.insert(POOL_LABEL.to_owned(), pool.clone());
        let mut hot = Hot::start(&driver, task).await;
        assert_eq!(hot.call("up?").await, "up?");
        hots.push(hot);
    }
    let shim = shim_of(&hots[0].cookie);
    assert_eq!(shim, shim_of(&hots[1].cookie), "one group, one shim");
    // SAFETY: kill has no memory-safety preconditions; the shim is this test's.
    assert_eq!(unsafe { libc::kill(shim as i32, libc::SIGKILL) }, 0);
    let ids: Vec<String> = hots
        .iter()
        .map(|hot| hot.cookie.container_id().to_owned())
        .collect();
    for hot in hots {
        // The bound is a margin for a loaded host, not a speed.
        let ended = tokio::time::timeout(
            Duration::from_secs(30),
            hot.cookie.wait(&CancellationToken::new()),
        )
        .await
        .expect("the death of the shim is seen");
        match ended {
            Err(CallError::Exited { code: 137, .. }) => {}
            other => panic!("expected exited with 137, got {other:?}"),
        }
        hot.cookie.close().await;
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_nothing_left(&pool, &ids).await;
}

per_engine!(both_engines_type_an_exit_alike);
/// The same task ends the same way on either engine.
async fn both_engines_type_an_exit_alike<D: Driver>(engine: support::OnEngine<D>) {
    let mut task = Task::new(
        hotpool::driver::new_id(),
        "engines-test",
        engine.image.clone(),
    );
    let pool = format!("engines-test-{}", task.id);
    task.labels.insert(POOL_LABEL.to_owned(), pool.clone());
    task.command = vec!["exit".into(), "5".into(), "five".into()];
    task.input = Some(Box::new(Cursor::new(Vec::new())));
    task.stdout = Some(Box::new(tokio::io::sink()));
    let _guard = (engine.guard)(pool);
    let mut cookie = engine.driver.prepare(task).await.expect("prepare");
    cookie.run().await.expect("run");
    let ended = cookie.wait(&CancellationToken::new()).await;
    cookie.close().await;
    assert_eq!(
        ended,
        Err(CallError::Exited {
            code: 5,
            stderr_tail: "five\n".into()
        })
    );
}

#[tokio::test]
async fn a_pool_on_containerd_serves_cold_then_hot_and_removes_everything() {
    use hotpool::pool::{FunctionSpec, Pool, Request, Start};
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let name = format!("containerd-pool-{}", hotpool::driver::new_id());
    let _guard = PoolGuard(name.clone());
    let pool = Pool::builder(driver)
        .name(&name)
        .build()
        .await
        .expect("a pool");
    let mut spec = FunctionSpec::new("echo", image.name.clone());
    spec.cmd = vec!["line".to_owned()];
    spec.memory = 64 * MIB;
    let echo = pool.register(spec);
    let first = echo.call(Request::new("one")).await.expect("a cold call");
    let second = echo.call(Request::new("two")).await.expect("a hot call");
    assert_eq!((&first.body[..], first.start), (&b"one"[..], Start::Cold));
    assert_eq!((&second.body[..], second.start), (&b"two"[..], Start::Hot));
    let dead = echo.call(Request::new("!exit 3")).await.err();
    assert_eq!(dead.map(|e| e.kind()), Some(ErrorKind::Exited));
    pool.shutdown().await;
    assert_nothing_left(&name, &[]).await;
}

#[tokio::test]
async fn a_pool_name_has_one_owner_on_containerd() {
    let driver = driver_with(ContainerdOptions::default()).await;
    let name = format!("containerd-claim-{}", hotpool::driver::new_id());
    let held = driver.claim_pool(&name).await.expect("the first claim");
    match driver.claim_pool(&name).await {
        Err(hotpool::driver::ClaimError::Owned { .. }) => {}
        other => panic!("a second claim must be refused: {other:?}"),
    }
    drop(held);
    drop(
        driver
            .claim_pool(&name)
            .await
            .expect("claimed again once let go"),
    );
}

#[tokio::test]
async fn a_task_that_wants_stats_gets_a_sample_a_second_from_the_counters() {
    let image = TestImage::shared().await;
    let driver = driver(&image).await;
    let samples: Arc<std::sync::Mutex<Vec<hotpool::stats::Stat>>> = Arc::default();
    let sink = samples.clone();
    let mut task = task(&image, &["spin", "3"]);
    task.stats = Some(Arc::new(move |stat| sink.lock().unwrap().push(stat)));
    let outcome = cold(&driver, task, Vec::new()).await;
    assert_eq!(outcome.result, Ok(()));
    let samples = samples.lock().unwrap().clone();
    assert!(samples.len() >= 2, "a sample a second: {samples:?}");
    assert!(
        samples.iter().any(|s| s
            .metrics
            .get(hotpool::stats::names::CPU_RATIO)
            .is_some_and(|ratio| *ratio > 0.1)),
        "the spin shows: {samples:?}"
    );
    assert!(
        samples.iter().any(|s| s
            .metrics
            .get(hotpool::stats::names::MEMORY_BYTES)
            .is_some_and(|bytes| *bytes > (8 * MIB) as f64)),
        "the 32 MiB held show: {samples:?}"
    );
}
