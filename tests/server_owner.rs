//! One `hotpool serve` per pool name on the real engine: a second server with
//! the same `[pool] name` exits 2 at once, naming the first, and touches none
//! of its containers (nor its call in flight); a port in use exits 1, as
//! untouched; the next server of a pool whose owner was killed outright takes
//! over its idle hot containers and removes the rest, and with no next server
//! they end themselves after the pool's `orphan_timeout`. A server taking
//! over (`--take-over`) gets the socket, the idle containers, and what the
//! keep-alive policies learned.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::server::PATIENCE;
use support::server::{
    KilledServerFiles, Server, docker_ps, error_of, eventually, function, ids_listed_by,
};
use support::takeover::{
    self, Engine, adopted_by, containers_of_function, load, loopback, sorted_containers_of, warm_up,
};
use support::{PoolGuard, free_port, pool_locks_of, runtime_dirs_of_process};

/// The ids of the running containers labelled `hotpool.pool=<pool>`.
fn running_containers_of(pool: &str) -> Vec<String> {
    docker_ps(&["--filter", &format!("label=hotpool.pool={pool}")])
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
            "hotpool: pool \"{}\" on this engine is owned by a running hotpool (pid {}) \
             (`hotpool serve --take-over` takes it over)",
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
fn the_next_server_takes_over_the_idle_containers_a_killed_owner_left_and_removes_the_rest() {
    takeover::a_killed_owners_idle_containers_are_taken_over(&Engine::docker(), "owner-killed");
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

#[test]
fn no_byte_written_for_a_call_before_a_kill_reaches_a_caller_after_it() {
    let functions = [
        function("web", "http", "http", "max_concurrency = 6"),
        function("echo", "line", "line", "max_concurrency = 6"),
    ];
    let mut first = Server::start("owner-load", "", &functions);
    let _guard = PoolGuard(first.pool.clone());
    let _files = KilledServerFiles {
        pool: first.pool.clone(),
        pid: first.pid(),
    };
    // Calls that leave bytes behind: http answers written again, unasked,
    // up to 1.5 s later (while idle), and line calls that answer up to 2.5 s
    // after they began, so after the next server is up; and plain calls
    // between them, so some containers are idle when the kill comes.
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let loaders: Vec<_> = [
        [("web", "!late 1500 stale"), ("echo", "!sleep 2500")],
        [("web", "stale"), ("echo", "!sleep 1200")],
        [("web", "!late 800 stale"), ("echo", "stale")],
        [("web", "stale"), ("echo", "!sleep 1800")],
        [("web", "stale"), ("echo", "stale")],
        [("web", "stale"), ("echo", "stale")],
    ]
    .into_iter()
    .map(|calls| load(&first, calls, &stop, &done))
    .collect();
    eventually("60 calls are done under load", || {
        done.load(Ordering::Acquire) >= 60
    });
    first.kill();
    stop.store(true, Ordering::Release);
    for loader in loaders {
        loader.join().expect("a loader thread");
    }

    let mut next = Server::launch(&first.pool, loopback(free_port()), "", "", &functions);
    next.wait_until_healthy();
    let adopted = adopted_by(&next);
    let answers: Vec<(String, support::http::HttpResponse)> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..4)
            .map(|caller| {
                let next = &next;
                scope.spawn(move || {
                    (0..60)
                        .map(|n| {
                            let function = ["web", "echo"][n % 2];
                            let body = format!("after-{caller}-{n}");
                            (body.clone(), next.invoke(function, body.as_bytes()))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        callers
            .into_iter()
            .flat_map(|caller| caller.join().expect("a caller thread"))
            .collect()
    });
    let foreign: Vec<String> = answers
        .iter()
        .filter(|(body, answer)| answer.status == 200 && answer.text() != *body)
        .map(|(body, answer)| format!("{body} got {}", answer.text()))
        .collect();
    assert_eq!(
        foreign,
        Vec::<String>::new(),
        "{adopted} containers taken over"
    );
    for (body, answer) in &answers {
        assert!(
            answer.status == 200 || error_of(answer)["kind"] == "protocol_error",
            "{body}: {answer}"
        );
    }
    next.stop();
}

#[test]
fn a_server_taking_over_gets_the_socket_and_the_idle_containers_and_no_call_fails() {
    takeover::a_taker_gets_the_socket_and_the_idle_containers_and_no_call_fails(
        &Engine::docker(),
        "takeover",
    );
}

#[test]
fn of_servers_taking_over_at_once_one_takes_every_idle_container_and_the_others_touch_nothing() {
    let keep = "keep_alive = \"fixed:10m\"\nmax_concurrency = 4\ntimeout = \"60s\"";
    let functions = [function("echo", "line", "line", keep)];
    let mut first = Server::start_with_args("takers", &functions, &[]);
    let _guard = PoolGuard(first.pool.clone());
    // Three warm containers.
    let warm = warm_up(&first, "echo", 3);

    // Takers 10 ms apart, from before the owner hands over until after it
    // has gone: some ask the owner, some come while the pool has no owner
    // between two servers, some find the next one.
    let mut takers: Vec<Server> = Vec::new();
    let mut gone: Option<Instant> = None;
    while takers.len() < 40 && gone.is_none_or(|gone| gone.elapsed() < Duration::from_millis(300)) {
        takers.push(first.take_over());
        std::thread::sleep(Duration::from_millis(10));
        if gone.is_none() && first.wait_within(Duration::ZERO).is_some() {
            gone = Some(Instant::now());
        }
    }
    let status = first.wait_within(PATIENCE);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the owner hands over and exits 0; stderr:\n{}",
        first.stderr.text()
    );
    eventually("all takers but one exit", || {
        takers
            .iter_mut()
            .map(|taker| taker.wait_within(Duration::ZERO).is_none())
            .filter(|&running| running)
            .count()
            == 1
    });
    let survivor = takers
        .iter_mut()
        .position(|taker| taker.wait_within(Duration::ZERO).is_none())
        .expect("one taker serves");
    let mut survivor = takers.swap_remove(survivor);
    for mut taker in takers {
        let code = taker.wait_within(Duration::ZERO).and_then(|s| s.code());
        let log = format!(
            "stdout:\n{}\nstderr:\n{}",
            taker.stdout.text(),
            taker.stderr.text()
        );
        match code {
            // It handed the pool on to a later taker.
            Some(0) => assert!(log.contains("handed over"), "{log}"),
            // It lost, and touched nothing.
            Some(2) => assert!(!log.contains("took over and removed"), "{log}"),
            _ => panic!("a taker exited {code:?}; {log}"),
        }
    }
    survivor.wait_until_healthy();
    assert_eq!(adopted_by(&survivor), 3, "{}", survivor.stderr.text());
    assert_eq!(
        containers_of_function(&survivor.pool, "echo"),
        warm,
        "the same containers serve, none started or removed"
    );
    let answer = survivor.invoke("echo", b"after");
    assert_eq!((answer.status, answer.text().as_str()), (200, "after"));
    assert_eq!(answer.header("hotpool-start"), Some("hot"), "{answer}");
    survivor.stop();
}

#[test]
fn a_server_taking_over_keeps_what_the_keep_alive_policy_learned() {
    let functions = [function(
        "echo",
        "line",
        "line",
        "keep_alive = \"adaptive\"",
    )];
    let mut first = Server::start_with_args("takeover-policy", &functions, &[]);
    let _guard = PoolGuard(first.pool.clone());
    // One call after another, each taking the container the last one left
    // at once: the policy learns to let an idle one go after a second, not
    // after the ten minutes it starts with.
    for i in 0..20 {
        let answer = first.invoke("echo", format!("call {i}").as_bytes());
        assert_eq!(answer.status, 200, "call {i}");
    }
    let [lock] = &pool_locks_of(&first.pool)[..] else {
        panic!("one lock of {}", first.pool);
    };
    let policies = PathBuf::from(format!("{}.policy", lock.display()));

    let mut next = first.take_over();
    next.wait_until_healthy();
    let status = first.wait_within(PATIENCE);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "stderr:\n{}",
        first.stderr.text()
    );
    // Logged once it is built, having restored the policies.
    adopted_by(&next);
    assert!(!policies.exists(), "the next server took the file");
    let log = next.stderr.text();
    let restored = log
        .lines()
        .find(|line| line.contains("restored what the keep-alive policies"));
    assert!(
        restored.is_some_and(|line| line.contains(" functions=1")),
        "{log}"
    );
    assert_eq!(next.invoke("echo", b"after").status, 200);
    // A fresh policy would keep it ten minutes, past the patience.
    eventually("the idle container goes as the policy learned", || {
        containers_of_function(&next.pool, "echo").is_empty()
    });
    next.stop();
}
