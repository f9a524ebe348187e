//! One `hotpool serve` per pool name on the real engine: a second server with
//! the same `[pool] name` exits 2 at once, naming the first, and touches none
//! of its containers (nor its call in flight); a port in use exits 1, as
//! untouched; the containers of an owner killed outright go when the next
//! server of the pool starts, and end themselves after the pool's
//! `orphan_timeout` if none does.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use support::server::{
    KilledServerFiles, Server, containers_of, docker_ps, eventually, function, ids_listed_by,
};
use support::{PoolGuard, free_port, pool_locks_of, runtime_dirs_of_process};

/// The ids of the running containers labelled `hotpool.pool=<pool>`.
fn running_containers_of(pool: &str) -> Vec<String> {
    docker_ps(&["--filter", &format!("label=hotpool.pool={pool}")])
}

/// [`containers_of`], sorted.
fn sorted_containers_of(pool: &str) -> Vec<String> {
    let mut ids = containers_of(pool);
    ids.sort();
    ids
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_second_server_of_one_pool_exits_2_naming_the_first_and_touches_nothing() {
    let functions = [function("slow", "line", "line", "timeout = \"60s\"")];
    let first = Server::start("owner", "", &functions);
    support::server::eventually("the server prints its address and pid", || {
        first
            .stdout
            .text()
            .contains(&format!(" on http://{} (pid {})", first.addr, first.pid()))
    });
    // 20 s is a margin for the other servers to come and go, not a speed.
    let long = first.invoke_in_background("slow", b"!sleep 20000");
    first.wait_for_count("slow", "/containers/busy", 1, &[&long]);
    let before = sorted_containers_of(&first.pool);
    assert_eq!(before.len(), 1, "the long call's container");
    let pipe_dirs = runtime_dirs_of_process(first.pid());
    assert_eq!(pipe_dirs.len(), 1, "the first server's pipe directories");
    let locks = pool_locks_of(&first.pool);
    assert_eq!(locks.len(), 1, "the pool's lock file: {locks:?}");
    let record = std::fs::read_to_string(&locks[0]).expect("read the lock file");
    assert!(
        record.starts_with(&format!("pid {}\n", first.pid())),
        "{record}"
    );

    let mut second = Server::launch(&first.pool, loopback(free_port()), "", "", &functions);
    let status = second.wait();
    let stderr = second.stderr.text();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "a second owner of the pool; stderr:\n{stderr}"
    );
    assert_eq!(
        stderr.trim_end(),
        format!(
            "hotpool: pool \"{}\" on this engine is owned by a running hotpool (pid {})",
            first.pool,
            first.pid()
        ),
        "one line naming the pool and its owner"
    );
    assert_eq!(second.stdout.text(), "", "it never served");

    // The first server's port: refused before the pool is even claimed.
    let mut third = Server::launch(&first.pool, first.addr, "", "", &functions);
    let status = third.wait();
    let stderr = third.stderr.text();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {}", first.addr)),
        "{stderr}"
    );

    long.assert_running();
    assert_eq!(
        sorted_containers_of(&first.pool),
        before,
        "the first server's containers are the same"
    );
    assert_eq!(
        running_containers_of(&first.pool),
        before,
        "and still running"
    );
    assert!(
        pipe_dirs.iter().all(|dir| dir.exists()),
        "the first server's pipe directories stay"
    );
    let answer = long.join();
    assert_eq!(answer.status, 200, "the call in flight: {answer}");
    assert_eq!(answer.text(), "slept");
    let pool = first.pool.clone();
    first.stop();
    assert_eq!(
        pool_locks_of(&pool),
        Vec::<PathBuf>::new(),
        "the server removes its lock file as it exits"
    );
}

#[test]
fn the_containers_of_a_killed_owner_go_when_the_next_server_of_its_pool_starts() {
    let functions = [function("echo", "line", "line", "")];
    let mut first = Server::start("owner-killed", "", &functions);
    let _guard = PoolGuard(first.pool.clone());
    assert_eq!(first.invoke("echo", b"warm").status, 200);
    let left = sorted_containers_of(&first.pool);
    assert_eq!(left.len(), 1, "one idle container");
    let first_pid = first.pid();
    assert_eq!(runtime_dirs_of_process(first_pid).len(), 1);

    first.kill();
    assert_eq!(
        sorted_containers_of(&first.pool),
        left,
        "a killed server leaves its container"
    );

    let mut next = Server::launch(&first.pool, loopback(free_port()), "", "", &functions);
    next.wait_until_healthy();
    let now = containers_of(&next.pool);
    assert!(
        left.iter().all(|id| !now.contains(id)),
        "the killed server's container is removed: {now:?}"
    );
    assert!(
        next.stderr
            .text()
            .contains("removed containers left by an earlier run"),
        "{}",
        next.stderr.text()
    );
    assert_eq!(
        runtime_dirs_of_process(first_pid),
        Vec::<PathBuf>::new(),
        "the killed server's pipe directories are removed"
    );
    let locks = pool_locks_of(&next.pool);
    assert_eq!(locks.len(), 1, "{locks:?}");
    let record = std::fs::read_to_string(&locks[0]).expect("read the lock file");
    assert!(
        record.starts_with(&format!("pid {}\n", next.pid())),
        "the lock file the killed server left names the next one: {record}"
    );
    let answer = next.invoke("echo", b"again");
    assert_eq!(answer.status, 200, "{answer}");
    next.stop();
}

#[test]
fn a_hot_container_whose_owner_was_killed_ends_itself_after_the_orphan_timeout() {
    let functions = [function("echo", "line", "line", "")];
    let mut server = Server::start_with(
        "orphan",
        "",
        "shutdown_timeout = \"30s\"\norphan_timeout = \"2s\"",
        &functions,
    );
    let _guard = PoolGuard(server.pool.clone());
    assert_eq!(server.invoke("echo", b"warm").status, 200);
    let ids = sorted_containers_of(&server.pool);
    assert_eq!(ids.len(), 1, "one idle container");

    let _files = KilledServerFiles {
        pool: server.pool.clone(),
        pid: server.pid(),
    };
    server.kill();
    eventually("the orphaned container ends itself", || {
        running_containers_of(&server.pool).is_empty()
    });
    let code = ids_listed_by(Command::new("docker").args([
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &ids[0],
    ]));
    assert_eq!(
        code,
        ["137"],
        "its init killed the function for want of an owner; it did not end on its stdin closing"
    );
}
