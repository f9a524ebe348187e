//! Containment of the host's resources on the real engine: what a function can do
//! to the disk, the CPU, its user and its file descriptors by default and with its
//! spec's settings, seen from inside (the test function's host commands) and from
//! the engine (`docker inspect`). No CPU-share figure is asserted: only the quota
//! the engine and the cgroup hold.

mod support;

use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use hotpool::CallError;
use hotpool::driver::docker::DockerDriver;
use hotpool::pool::{Format, FunctionSpec, POOL_LABEL, Pool, Request};

use hotpool::driver::Transport;
use support::{driver, testfn_image};

const MIB: u64 = 1 << 20;

/// A pool for one test, its name carrying the pid; if the test panics, dropping the
/// guard removes whatever containers the pool left.
struct TestPool {
    pool: Pool<DockerDriver>,
}

impl TestPool {
    async fn new(name: &str) -> TestPool {
        let pool = Pool::builder(driver().await)
            .name(format!("{name}-{}", std::process::id()))
            .memory_budget(1 << 30)
            .shutdown_timeout(Duration::from_secs(10))
            .build()
            .await
            .expect("pool");
        TestPool { pool }
    }

    /// The body of a successful call, as text.
    async fn ask(&self, spec: &FunctionSpec, body: &str) -> String {
        self.try_ask(spec, body)
            .await
            .unwrap_or_else(|e| panic!("{body:?} failed: {e}"))
    }

    async fn try_ask(&self, spec: &FunctionSpec, body: &str) -> Result<String, CallError> {
        let response = self
            .pool
            .register(spec.clone())
            .call(Request::new(body.to_owned()))
            .await?;
        Ok(String::from_utf8_lossy(&response.body).into_owned())
    }

    /// What the engine says about a hot container of `spec`.
    async fn inspect(&self, spec: &FunctionSpec) -> ContainerInspectResponse {
        let hostname = self.ask(spec, "!whoami").await;
        self.pool
            .driver()
            .docker()
            .inspect_container(&hostname, None)
            .await
            .expect("inspect the container")
    }

    /// Shuts the pool down and checks that none of its containers is left.
    async fn shut(self) {
        self.pool.shutdown().await;
        assert_eq!(remove_containers(&self.pool.config().name).await, 0);
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let name = self.pool.config().name.clone();
            // A runtime of its own: the test's may be unwinding.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .expect("runtime")
                    .block_on(remove_containers(&name))
            })
            .join();
        }
    }
}

/// Removes the containers of the pool `name`; returns how many there were.
async fn remove_containers(name: &str) -> usize {
    use hotpool::driver::Driver;
    driver()
        .await
        .remove_labelled(POOL_LABEL, name)
        .await
        .expect("remove containers")
}

/// A hot line function of the test image with the default containment.
fn line_spec(transport: Transport, name: &str) -> FunctionSpec {
    let mut spec = FunctionSpec::new(name, testfn_image());
    spec.transport = transport;
    spec.cmd = vec!["line".into()];
    spec.timeout = Duration::from_secs(60);
    spec.queue_timeout = Duration::from_secs(60);
    spec
}

/// `"wrote N: outcome"` or `"created N: outcome"` as `(N, outcome)`.
fn count_and_outcome(answer: &str) -> (u64, String) {
    let (head, outcome) = answer
        .split_once(": ")
        .unwrap_or_else(|| panic!("unexpected answer {answer:?}"));
    let count = head.rsplit(' ').next().unwrap().parse().unwrap();
    (count, outcome.to_owned())
}

per_transport!(writing_past_the_tmp_size_fails_with_enospc_and_the_function_lives_on);
async fn writing_past_the_tmp_size_fails_with_enospc_and_the_function_lives_on(
    transport: Transport,
) {
    let pool = TestPool::new(&format!("containment-tmp-{transport}")).await;
    let default = line_spec(transport, "tmp-default");
    let (written, outcome) = count_and_outcome(
        &pool
            .ask(&default, &format!("!write-tmp {}", 96 * MIB))
            .await,
    );
    assert!(
        outcome.contains("os error 28"),
        "ENOSPC expected: {outcome}"
    );
    assert!(
        (32 * MIB..=64 * MIB).contains(&written),
        "the default /tmp holds 64 MiB; wrote {written}"
    );

    let mut small = line_spec(transport, "tmp-small");
    small.tmp_size = 4 * MIB;
    let (written, outcome) =
        count_and_outcome(&pool.ask(&small, &format!("!write-tmp {}", 16 * MIB)).await);
    assert!(
        outcome.contains("os error 28"),
        "ENOSPC expected: {outcome}"
    );
    assert!(
        (MIB..=4 * MIB).contains(&written),
        "a 4 MiB /tmp; wrote {written}"
    );
    // The function got an error, not a kill: it answers the next call, and the
    // space it freed is there again.
    assert_eq!(
        pool.ask(&small, &format!("!write-tmp {}", 2 * MIB)).await,
        format!("wrote {}: ok", 2 * MIB)
    );
    pool.shut().await;
}

per_transport!(tmp_holds_a_bounded_number_of_files);
async fn tmp_holds_a_bounded_number_of_files(transport: Transport) {
    let pool = TestPool::new(&format!("containment-files-{transport}")).await;
    let spec = line_spec(transport, "files");
    let (created, outcome) = count_and_outcome(&pool.ask(&spec, "!files 20000").await);
    assert!(
        outcome.contains("os error 28"),
        "ENOSPC expected: {outcome}"
    );
    assert!(
        (1000..=4096).contains(&created),
        "64 MiB of /tmp has 4096 inodes; created {created}"
    );
    assert_eq!(pool.ask(&spec, "!files 100").await, "created 100: ok");
    pool.shut().await;
}

per_transport!(the_root_filesystem_is_read_only_unless_the_function_opts_out);
async fn the_root_filesystem_is_read_only_unless_the_function_opts_out(transport: Transport) {
    let pool = TestPool::new(&format!("containment-root-{transport}")).await;
    let default = line_spec(transport, "root-default");
    let answer = pool.ask(&default, "!write-root").await;
    assert!(answer.contains("os error 30"), "EROFS expected: {answer}");

    let mut writable = line_spec(transport, "root-writable");
    writable.read_only = false;
    let answer = pool.ask(&writable, "!write-root").await;
    assert!(
        answer.contains("os error 13"),
        "a writable root is still not writable for uid 1000: {answer}"
    );

    let mut writable_as_root = writable.clone();
    writable_as_root.user = "0".into();
    assert_eq!(pool.ask(&writable_as_root, "!write-root").await, "ok");
    pool.shut().await;
}

per_transport!(functions_run_as_1000_by_default_or_as_the_chosen_user);
async fn functions_run_as_1000_by_default_or_as_the_chosen_user(transport: Transport) {
    let pool = TestPool::new(&format!("containment-user-{transport}")).await;
    assert_eq!(
        pool.ask(&line_spec(transport, "user-default"), "!id").await,
        "1000:1000"
    );
    for (user, id) in [("4321:99", "4321:99"), ("0", "0:0"), ("7", "7:0")] {
        let mut spec = line_spec(transport, "user-chosen");
        spec.user = user.into();
        assert_eq!(pool.ask(&spec, "!id").await, id, "user {user}");
    }
    pool.shut().await;
}

per_transport!(the_engine_and_the_cgroup_hold_the_cpu_quota_ulimit_and_log_driver);
async fn the_engine_and_the_cgroup_hold_the_cpu_quota_ulimit_and_log_driver(transport: Transport) {
    let pool = TestPool::new(&format!("containment-inspect-{transport}")).await;
    let mut spec = line_spec(transport, "inspect");
    spec.cpus = "0.5".parse().unwrap();
    let inspected = pool.inspect(&spec).await;
    let host = inspected.host_config.expect("host config");
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.readonly_rootfs, Some(true));
    let log_driver = host.log_config.and_then(|log| log.typ);
    assert_eq!(log_driver.as_deref(), Some("none"));
    let nofile: Vec<_> = host
        .ulimits
        .unwrap_or_default()
        .into_iter()
        .filter(|u| u.name.as_deref() == Some("nofile"))
        .map(|u| (u.soft, u.hard))
        .collect();
    assert_eq!(nofile, [(Some(1024), Some(1024))]);
    let tmpfs = host.tmpfs.unwrap_or_default();
    let tmp = tmpfs.get("/tmp").expect("a tmpfs at /tmp");
    assert!(
        tmp.contains("size=67108864") && tmp.contains("nr_inodes=4096"),
        "{tmp}"
    );
    let user = inspected.config.and_then(|config| config.user);
    assert_eq!(user.as_deref(), Some("1000:1000"));

    assert_eq!(pool.ask(&spec, "!nofile").await, "1024 1024");
    assert_eq!(pool.ask(&spec, "!cpu-quota").await, "50000 100000");
    let default = line_spec(transport, "inspect-default");
    assert_eq!(pool.ask(&default, "!cpu-quota").await, "100000 100000");
    pool.shut().await;
}

per_transport!(stderr_reaches_the_caller_with_the_engine_log_driver_off);
async fn stderr_reaches_the_caller_with_the_engine_log_driver_off(transport: Transport) {
    let pool = TestPool::new(&format!("containment-stderr-{transport}")).await;
    let spec = line_spec(transport, "stderr");
    assert_eq!(pool.ask(&spec, "!stderr logged").await, "logged");
    match pool.try_ask(&spec, "!exit 3").await {
        Err(CallError::Exited { code, stderr_tail }) => {
            assert_eq!(code, 3);
            assert!(stderr_tail.contains("exiting with 3"), "{stderr_tail:?}");
        }
        other => panic!("expected exited, got {other:?}"),
    }
    pool.shut().await;
}

per_transport!(cold_containers_are_contained_too);
async fn cold_containers_are_contained_too(transport: Transport) {
    let pool = TestPool::new(&format!("containment-cold-{transport}")).await;
    let mut spec = line_spec(transport, "cold");
    spec.format = Format::Cold;
    spec.tmp_size = 2 * MIB;
    // The line mode answers the one request of a cold call, then sees EOF and exits.
    assert_eq!(pool.ask(&spec, "!id").await, "1000:1000\n");
    let answer = pool.ask(&spec, "!write-root").await;
    assert!(answer.contains("os error 30"), "EROFS expected: {answer}");
    let answer = pool.ask(&spec, &format!("!write-tmp {}", 4 * MIB)).await;
    let (written, outcome) = count_and_outcome(answer.trim_end());
    assert!(
        outcome.contains("os error 28") && written <= 2 * MIB,
        "{answer}"
    );
    pool.shut().await;
}

/// The direct transport's pipes and init are in the container; the function can
/// use its pipes but neither replace them nor change the init.
#[tokio::test]
async fn the_direct_transports_pipes_and_init_cannot_be_tampered_with() {
    let pool = TestPool::new("containment-tamper").await;
    let spec = line_spec(Transport::Direct, "tamper");
    let answer = pool.ask(&spec, "!tamper").await;
    let (unlink, init) = answer.split_once("; ").expect("two outcomes");
    assert_eq!(
        unlink, "unlink: Permission denied (os error 13)",
        "{answer}"
    );
    // Not the function's file, and mounted read-only besides.
    assert!(init.starts_with("init: ") && init != "init: ok", "{answer}");
    assert_eq!(pool.ask(&spec, "still here").await, "still here");
    pool.shut().await;
}
