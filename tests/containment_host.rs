//! Containment of the host's resources on the real engines, Docker and
//! containerd: what a function can do to the disk, the CPU, its user, its file
//! descriptors and the kernel by default and with its spec's settings, seen from
//! inside (the test function's host commands) and from the engine (its record of
//! the container). No CPU-share figure is asserted: only the quota the engine
//! and the cgroup hold.

mod support;

use std::time::Duration;

use hotpool::CallError;
use hotpool::driver::Transport;
use hotpool::driver::docker::DockerDriver;
use hotpool::pool::{FunctionSpec, Lifecycle};

use support::OnEngine;
use support::engine::{Confinement, TestEngine};
use support::pool::{TestPool, container_named, shut, test_pool};

const MIB: u64 = 1 << 20;

/// A pool for one test, its name carrying the pid.
async fn new_pool<D: TestEngine>(engine: OnEngine<D>, name: &str) -> TestPool<D> {
    test_pool(engine, name, 1 << 30).await
}

/// The body of a successful call, as text.
async fn ask<D: TestEngine>(pool: &TestPool<D>, spec: &FunctionSpec, body: &str) -> String {
    try_ask(pool, spec, body)
        .await
        .unwrap_or_else(|e| panic!("{body:?} failed: {e}"))
}

async fn try_ask<D: TestEngine>(
    pool: &TestPool<D>,
    spec: &FunctionSpec,
    body: &str,
) -> Result<String, CallError> {
    support::pool::call_text(pool, spec, body).await
}

/// What the engine holds of the confinement of a hot container of `spec`.
async fn confinement<D: TestEngine>(pool: &TestPool<D>, spec: &FunctionSpec) -> Confinement {
    let hostname = ask(pool, spec, "!whoami").await;
    let id = container_named(pool, &hostname).await;
    pool.driver().confinement(&id).await
}

/// A hot line function of the test image with the default containment.
fn line_spec<D: TestEngine>(pool: &TestPool<D>, transport: Transport, name: &str) -> FunctionSpec {
    let mut spec = FunctionSpec::new(name, &pool.engine.image);
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

per_engine_transport!(writing_past_the_tmp_size_fails_with_enospc_and_the_function_lives_on);
async fn writing_past_the_tmp_size_fails_with_enospc_and_the_function_lives_on<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    let pool = new_pool(engine, &format!("containment-tmp-{transport}")).await;
    let default = line_spec(&pool, transport, "tmp-default");
    let (written, outcome) =
        count_and_outcome(&ask(&pool, &default, &format!("!write-tmp {}", 96 * MIB)).await);
    assert!(
        outcome.contains("os error 28"),
        "ENOSPC expected: {outcome}"
    );
    assert!(
        (32 * MIB..=64 * MIB).contains(&written),
        "the default /tmp holds 64 MiB; wrote {written}"
    );

    let mut small = line_spec(&pool, transport, "tmp-small");
    small.tmp_size = 4 * MIB;
    let (written, outcome) =
        count_and_outcome(&ask(&pool, &small, &format!("!write-tmp {}", 16 * MIB)).await);
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
        ask(&pool, &small, &format!("!write-tmp {}", 2 * MIB)).await,
        format!("wrote {}: ok", 2 * MIB)
    );
    shut(&pool).await;
}

per_engine_transport!(tmp_holds_a_bounded_number_of_files);
async fn tmp_holds_a_bounded_number_of_files<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    let pool = new_pool(engine, &format!("containment-files-{transport}")).await;
    let spec = line_spec(&pool, transport, "files");
    let (created, outcome) = count_and_outcome(&ask(&pool, &spec, "!files 20000").await);
    assert!(
        outcome.contains("os error 28"),
        "ENOSPC expected: {outcome}"
    );
    assert!(
        (1000..=4096).contains(&created),
        "64 MiB of /tmp has 4096 inodes; created {created}"
    );
    assert_eq!(ask(&pool, &spec, "!files 100").await, "created 100: ok");
    shut(&pool).await;
}

per_engine_transport!(the_root_filesystem_is_read_only_unless_the_function_opts_out);
async fn the_root_filesystem_is_read_only_unless_the_function_opts_out<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    let pool = new_pool(engine, &format!("containment-root-{transport}")).await;
    let default = line_spec(&pool, transport, "root-default");
    let answer = ask(&pool, &default, "!write-root").await;
    assert!(answer.contains("os error 30"), "EROFS expected: {answer}");

    let mut writable = line_spec(&pool, transport, "root-writable");
    writable.read_only = false;
    let answer = ask(&pool, &writable, "!write-root").await;
    assert!(
        answer.contains("os error 13"),
        "a writable root is still not writable for uid 1000: {answer}"
    );

    let mut writable_as_root = writable.clone();
    writable_as_root.user = "0".into();
    assert_eq!(ask(&pool, &writable_as_root, "!write-root").await, "ok");
    shut(&pool).await;
}

per_engine_transport!(functions_run_as_1000_by_default_or_as_the_chosen_user);
async fn functions_run_as_1000_by_default_or_as_the_chosen_user<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    let pool = new_pool(engine, &format!("containment-user-{transport}")).await;
    assert_eq!(
        ask(&pool, &line_spec(&pool, transport, "user-default"), "!id").await,
        "1000:1000"
    );
    // A uid alone runs with its own number as gid on both engines, never in the
    // root group (Docker alone would take 0 from an image without /etc/passwd).
    for (user, id) in [("4321:99", "4321:99"), ("0", "0:0"), ("7", "7:7")] {
        let mut spec = line_spec(&pool, transport, "user-chosen");
        spec.user = user.into();
        assert_eq!(ask(&pool, &spec, "!id").await, id, "user {user}");
        // No supplementary group but the gid itself (Docker lists it, containerd not).
        let status = ask(&pool, &spec, "!read /proc/self/status").await;
        let groups = status
            .split(" | ")
            .find_map(|line| line.strip_prefix("Groups:"))
            .unwrap_or_else(|| panic!("no Groups line: {status}"));
        let gid = id.split_once(':').unwrap().1;
        assert!(
            groups.split_whitespace().all(|group| group == gid),
            "user {user}: groups {groups:?}"
        );
    }
    shut(&pool).await;
}

per_engine_transport!(the_engine_and_the_cgroup_hold_the_cpu_quota_ulimit_and_limits);
async fn the_engine_and_the_cgroup_hold_the_cpu_quota_ulimit_and_limits<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    let pool = new_pool(engine, &format!("containment-inspect-{transport}")).await;
    let mut spec = line_spec(&pool, transport, "inspect");
    spec.cpus = "0.5".parse().unwrap();
    let held = confinement(&pool, &spec).await;
    assert_eq!(held.cpu_quota, Some((50_000, 100_000)), "{held:?}");
    assert!(held.read_only_root, "{held:?}");
    assert_eq!(held.nofile, [(1024, 1024)], "{held:?}");
    assert!(
        held.tmp_options.contains("size=67108864") && held.tmp_options.contains("nr_inodes=4096"),
        "{held:?}"
    );
    assert_eq!(held.user, "1000:1000");
    assert_eq!(held.memory, spec.memory as i64, "{held:?}");
    assert_eq!(held.memory_and_swap, held.memory, "no swap: {held:?}");
    assert!(held.pids_limit > 0, "{held:?}");
    assert!(held.no_network, "{held:?}");

    assert_eq!(ask(&pool, &spec, "!nofile").await, "1024 1024");
    assert_eq!(ask(&pool, &spec, "!cpu-quota").await, "50000 100000");
    let default = line_spec(&pool, transport, "inspect-default");
    assert_eq!(ask(&pool, &default, "!cpu-quota").await, "100000 100000");
    shut(&pool).await;
}

// Docker alone: containerd has no log driver (hotpool reads stderr itself there).
#[tokio::test]
async fn dockers_log_driver_is_off() {
    let pool = new_pool(support::on_docker().await, "containment-log-driver").await;
    let spec = line_spec(&pool, Transport::Direct, "log-driver");
    let hostname = ask(&pool, &spec, "!whoami").await;
    let id = container_named(&pool, &hostname).await;
    let inspected = DockerDriver::docker(pool.driver())
        .inspect_container(&id, None)
        .await
        .expect("inspect the container");
    let log_driver = inspected.host_config.and_then(|host| host.log_config?.typ);
    assert_eq!(log_driver.as_deref(), Some("none"));
    shut(&pool).await;
}

per_engine!(the_function_has_no_privilege_and_meets_a_closed_kernel);
/// No capability, no new privileges, a seccomp filter that refuses what lets a
/// function reach past its container, masked kernel files, no network.
async fn the_function_has_no_privilege_and_meets_a_closed_kernel<D: TestEngine>(
    engine: OnEngine<D>,
) {
    let pool = new_pool(engine, "containment-kernel").await;
    let spec = line_spec(&pool, Transport::Direct, "kernel");
    let status = ask(&pool, &spec, "!read /proc/self/status").await;
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
    // containerd's profile refuses ptrace too (tests/driver_containerd.rs);
    // Docker's default one allows it.
    let refused = ask(&pool, &spec, "!refused").await;
    for call in ["mount", "unshare", "keyctl", "bpf", "perf_event_open"] {
        assert!(
            refused.contains(&format!("{call}: Operation not permitted")),
            "{call} must be refused: {refused}"
        );
    }
    let timers = ask(&pool, &spec, "!read /proc/timer_list").await;
    assert!(timers.is_empty(), "/proc/timer_list is masked: {timers}");
    let interfaces = ask(&pool, &spec, "!read /proc/net/dev").await;
    let names: Vec<&str> = interfaces
        .split(" | ")
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.trim()))
        .collect();
    assert_eq!(names, vec!["lo"], "no network but loopback: {interfaces}");
    shut(&pool).await;
}

per_engine_transport!(stderr_reaches_the_caller);
async fn stderr_reaches_the_caller<D: TestEngine>(engine: OnEngine<D>, transport: Transport) {
    let pool = new_pool(engine, &format!("containment-stderr-{transport}")).await;
    let spec = line_spec(&pool, transport, "stderr");
    assert_eq!(ask(&pool, &spec, "!stderr logged").await, "logged");
    match try_ask(&pool, &spec, "!exit 3").await {
        Err(CallError::Exited { code, stderr_tail }) => {
            assert_eq!(code, 3);
            assert!(stderr_tail.contains("exiting with 3"), "{stderr_tail:?}");
        }
        other => panic!("expected exited, got {other:?}"),
    }
    shut(&pool).await;
}

per_engine_transport!(cold_containers_are_contained_too);
async fn cold_containers_are_contained_too<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    let pool = new_pool(engine, &format!("containment-cold-{transport}")).await;
    let mut spec = line_spec(&pool, transport, "cold");
    spec.lifecycle = Lifecycle::Cold;
    spec.tmp_size = 2 * MIB;
    // The line mode answers the one request of a cold call, then sees EOF and exits.
    assert_eq!(ask(&pool, &spec, "!id").await, "1000:1000\n");
    let answer = ask(&pool, &spec, "!write-root").await;
    assert!(answer.contains("os error 30"), "EROFS expected: {answer}");
    let answer = ask(&pool, &spec, &format!("!write-tmp {}", 4 * MIB)).await;
    let (written, outcome) = count_and_outcome(answer.trim_end());
    assert!(
        outcome.contains("os error 28") && written <= 2 * MIB,
        "{answer}"
    );
    shut(&pool).await;
}

per_engine!(the_direct_transports_pipes_and_init_cannot_be_tampered_with);
/// The direct transport's pipes and init are in the container; the function can
/// use its pipes but neither replace them nor change the init.
async fn the_direct_transports_pipes_and_init_cannot_be_tampered_with<D: TestEngine>(
    engine: OnEngine<D>,
) {
    let pool = new_pool(engine, "containment-tamper").await;
    let spec = line_spec(&pool, Transport::Direct, "tamper");
    let answer = ask(&pool, &spec, "!tamper").await;
    let (unlink, init) = answer.split_once("; ").expect("two outcomes");
    assert_eq!(
        unlink, "unlink: Permission denied (os error 13)",
        "{answer}"
    );
    // Not the function's file, and mounted read-only besides.
    assert!(init.starts_with("init: ") && init != "init: ok", "{answer}");
    assert_eq!(ask(&pool, &spec, "still here").await, "still here");
    shut(&pool).await;
}
