//! Hostile functions across a planned hand-over (`hotpool serve --take-over`)
//! on Docker: what a caller and the next server see when a warm container
//! misbehaves between its release and its adoption.
//!
//! - A function that exits as its owner lets it go is not taken over (counted
//!   `ended`), and its next calls start a container and answer.
//! - A function that writes unasked while idle, as it is let go (http and
//!   line) or later (http), is refused at adoption (`wrote_while_idle`) or
//!   evicted, and no caller gets its bytes as a body.
//! - A next server whose memory budget is smaller than the warm containers
//!   need takes over what fits, removes the rest (`over_budget`), serves, and
//!   stops with nothing left.

mod support;

use std::path::PathBuf;

use support::server::{KilledServerFiles, PATIENCE, Server, error_of, eventually, function};
use support::takeover::{adopted_by, containers_of_function, refused_by, warm_up};
use support::{PoolGuard, runtime_dirs_of_process};

/// No prewarm and no idle timeout: what runs is what the calls started.
const KEEP: &str = "keep_alive = \"fixed:10m\"";

/// A first server of pool `server-test-<test>-<pid>` with `functions`, that
/// exits once it has handed over; with guards that remove its containers
/// and its files if the test fails.
fn first_server(test: &str, functions: &[String]) -> (Server, PoolGuard, KilledServerFiles) {
    let first = Server::start_with_args(test, functions, &[]);
    let guard = PoolGuard(first.pool.clone());
    let files = KilledServerFiles {
        pool: first.pool.clone(),
        pid: first.pid(),
    };
    (first, guard, files)
}

/// Starts `hotpool serve --take-over` on `first`'s config file as it is now,
/// and waits until `first` has handed over and exited 0 and the next server
/// answers.
fn hand_over(first: &mut Server) -> Server {
    let mut next = first.take_over();
    let status = first.wait_within(PATIENCE);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the owner hands over and exits 0; stdout:\n{}\nstderr:\n{}",
        first.stdout.text(),
        first.stderr.text()
    );
    assert!(
        first.stdout.text().contains("handed over"),
        "{}",
        first.stdout.text()
    );
    next.wait_until_healthy();
    next
}

/// The one container of `function` in `server`'s pool.
fn only_container(server: &Server, function: &str) -> String {
    let ids = containers_of_function(&server.pool, function);
    assert_eq!(ids.len(), 1, "one container of {function}: {ids:?}");
    ids[0].clone()
}

/// Whether `refused` (of [`refused_by`]) holds container `id` (short, as
/// `docker ps` gives it) with `outcome`.
fn refused_as(refused: &[(String, String)], id: &str, outcome: &str) -> bool {
    refused
        .iter()
        .any(|(engine_id, counted)| engine_id.starts_with(id) && counted == outcome)
}

#[test]
fn a_function_that_exits_as_its_owner_lets_it_go_is_not_taken_over_and_answers_cold() {
    let functions = [
        function("quitter", "line", "line", KEEP),
        function("echo", "line", "line", KEEP),
    ];
    let (mut first, _guard, _files) = first_server("hostile-exit", &functions);
    let answer = first.invoke("quitter", b"!exit-unowned");
    assert_eq!(
        (answer.status, answer.text()),
        (200, "watching".to_owned()),
        "{answer}"
    );
    let quitter = only_container(&first, "quitter");
    // Owned, it lives on and serves.
    let answer = first.invoke("quitter", b"still");
    assert_eq!((answer.status, answer.text()), (200, "still".to_owned()));
    assert_eq!(answer.header("hotpool-start"), Some("hot"), "{answer}");
    assert_eq!(first.invoke("echo", b"warm").status, 200);
    let echo = only_container(&first, "echo");

    let next = hand_over(&mut first);
    assert_eq!(adopted_by(&next), 1, "{}", next.stderr.text());
    let refused = refused_by(&next);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused_as(&refused, &quitter, "ended"),
        "the container whose function exited is counted ended: {}",
        next.stderr.text()
    );
    assert!(
        !containers_of_function(&next.pool, "quitter").contains(&quitter),
        "and removed"
    );
    let metrics = next.get("/metrics").text();
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|line| {
            line.starts_with("hotpool_adopted_containers_total{")
                && line.contains("function=\"quitter\"")
        })
        .collect();
    assert_eq!(
        counted.len(),
        1,
        "one outcome of quitter's leftover: {counted:?}"
    );
    assert!(
        counted[0].contains("outcome=\"ended\"") && counted[0].ends_with(" 1"),
        "{counted:?}"
    );

    for n in 0..3 {
        let body = format!("after-{n}");
        let answer = next.invoke("quitter", body.as_bytes());
        assert_eq!((answer.status, answer.text()), (200, body), "{answer}");
        let start = if n == 0 { "cold" } else { "hot" };
        assert_eq!(answer.header("hotpool-start"), Some(start), "{answer}");
    }
    let answer = next.invoke("echo", b"after");
    assert_eq!((answer.status, answer.text()), (200, "after".to_owned()));
    assert_eq!(answer.header("hotpool-start"), Some("hot"), "{answer}");
    assert_eq!(
        containers_of_function(&next.pool, "echo"),
        [echo],
        "the well-behaved function's container is taken over"
    );
    next.stop();
}

#[test]
fn a_function_writing_while_idle_across_a_take_over_is_refused_or_evicted_and_no_caller_gets_its_bytes()
 {
    let functions = [
        function("web", "http", "http", KEEP),
        function("liner", "line", "line", KEEP),
        function("late", "http", "http", KEEP),
        function("echo", "line", "line", KEEP),
    ];
    let (mut first, _guard, _files) = first_server("hostile-write", &functions);
    // Write their answer again as their owner lets them go: between the
    // release and the adoption. A line's bytes say nothing of whose they are.
    let mut let_go = Vec::new();
    for function in ["web", "liner"] {
        let answer = first.invoke(function, b"!late-unowned stale");
        assert_eq!((answer.status, answer.text()), (200, "stale".to_owned()));
        // Owned, it writes nothing unasked: the next call is its own, and hot.
        let answer = first.invoke(function, b"still");
        assert_eq!((answer.status, answer.text()), (200, "still".to_owned()));
        assert_eq!(answer.header("hotpool-start"), Some("hot"), "{answer}");
        let_go.push((function, only_container(&first, function)));
    }
    // Writes its answer again 1.5 s later: whichever server owns it then.
    let answer = first.invoke("late", b"!late 1500 stale");
    assert_eq!((answer.status, answer.text()), (200, "stale".to_owned()));
    let late = only_container(&first, "late");
    assert_eq!(first.invoke("echo", b"warm").status, 200);
    let echo = only_container(&first, "echo");

    let next = hand_over(&mut first);
    let adopted = adopted_by(&next);
    let refused = refused_by(&next);
    for (function, id) in &let_go {
        assert!(
            refused_as(&refused, id, "wrote_while_idle"),
            "{function}'s container, which wrote as it was let go, is refused: {refused:?}"
        );
    }
    assert_eq!(
        adopted as usize + refused.len(),
        4,
        "every leftover is counted once: {refused:?}"
    );
    assert_eq!(containers_of_function(&next.pool, "echo"), [echo]);

    let mut answers = Vec::new();
    for n in 0..20 {
        for function in ["web", "liner"] {
            let body = format!("after-{function}-{n}");
            answers.push((
                function,
                body.clone(),
                next.invoke(function, body.as_bytes()),
            ));
        }
    }
    // Calls until the container that wrote 1.5 s later is gone: refused as
    // it was taken over, or evicted after.
    let mut n = 0;
    eventually("the late writer's container is gone", || {
        let body = format!("after-late-{n}");
        n += 1;
        answers.push(("late", body.clone(), next.invoke("late", body.as_bytes())));
        !containers_of_function(&next.pool, "late").contains(&late)
    });
    for n in 0..5 {
        let body = format!("after-late-gone-{n}");
        answers.push(("late", body.clone(), next.invoke("late", body.as_bytes())));
    }

    let foreign: Vec<String> = answers
        .iter()
        .filter(|(_, body, answer)| answer.status == 200 && answer.text() != *body)
        .map(|(function, body, answer)| format!("{function}: {body} got {}", answer.text()))
        .collect();
    assert_eq!(foreign, Vec::<String>::new(), "no caller gets stray bytes");
    for (function, body, answer) in &answers {
        // A stray answer landing in a call of the late writer cuts that call.
        assert!(
            answer.status == 200
                || (*function == "late" && error_of(answer)["kind"] == "protocol_error"),
            "{function}: {body}: {answer}"
        );
    }
    for (function, id) in &let_go {
        assert!(
            !containers_of_function(&next.pool, function).contains(id),
            "the refused container of {function} is removed"
        );
    }
    next.stop();
}

#[test]
fn a_taker_with_a_smaller_memory_budget_takes_over_what_fits_and_removes_the_rest() {
    let extra = format!("{KEEP}\nmax_concurrency = 4\ntimeout = \"60s\"");
    let functions = [function("echo", "line", "line", &extra)];
    let (mut first, _guard, _files) = first_server("hostile-budget", &functions);
    // Four warm containers of 32 MiB.
    let warm = warm_up(&first, "echo", 4);
    let first_pid = first.pid();

    // The next server's budget holds two of them.
    let head = first.config_head();
    assert!(head.contains("memory_budget = \"1g\""), "{head}");
    let smaller = head.replace("memory_budget = \"1g\"", "memory_budget = \"64m\"");
    first.write_config(&format!("{smaller}{}", functions.join("\n")));
    let next = hand_over(&mut first);

    assert_eq!(adopted_by(&next), 2, "{}", next.stderr.text());
    let refused = refused_by(&next);
    assert_eq!(
        refused
            .iter()
            .map(|(_, outcome)| outcome.as_str())
            .collect::<Vec<_>>(),
        ["over_budget", "over_budget"],
        "{refused:?}"
    );
    let adopted = containers_of_function(&next.pool, "echo");
    assert_eq!(adopted.len(), 2, "only what fits is left: {adopted:?}");
    for id in &adopted {
        assert!(warm.contains(id), "{id} is one of the warm {warm:?}");
        assert!(
            !refused
                .iter()
                .any(|(engine_id, _)| engine_id.starts_with(id.as_str())),
            "{id} is both taken over and refused: {refused:?}"
        );
    }
    let status = next.get("/functions").json();
    assert_eq!(status["memory_budget_bytes"], 64 << 20, "{status}");
    assert_eq!(status["memory_reserved_bytes"], 64 << 20, "{status}");
    let dirs = runtime_dirs_of_process(first_pid);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let pipes = std::fs::read_dir(&dirs[0])
        .expect("the first server's directory")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name() != "lock")
        .count();
    assert_eq!(
        pipes, 2,
        "the pipes of the containers taken over stay; the removed ones' go"
    );

    for n in 0..6 {
        let body = format!("after-{n}");
        let answer = next.invoke("echo", body.as_bytes());
        assert_eq!((answer.status, answer.text()), (200, body), "{answer}");
        assert_eq!(answer.header("hotpool-start"), Some("hot"), "{answer}");
    }
    assert_eq!(
        containers_of_function(&next.pool, "echo"),
        adopted,
        "served by the containers taken over, none started"
    );
    next.stop();
    assert_eq!(
        runtime_dirs_of_process(first_pid),
        Vec::<PathBuf>::new(),
        "the first server's directory goes with the last of its containers"
    );
}
