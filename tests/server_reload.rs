//! `hotpool serve` reloads its config on SIGHUP, on the real engine: changed
//! limits (a keep-alive policy among them) keep the running containers, a changed
//! container spec replaces them, removed functions go, new ones appear, a bad
//! config keeps the running one, and the log says what a reload did: each
//! `[server]` or `[pool]` key waiting for a restart, or that nothing changed. A
//! warm floor (`min_idle`) raised starts containers; lowered, they go by their
//! keep-alive.

mod support;

use support::server::{Server, docker_ps, error_of, eventually, function};

/// The ids of function `name`'s containers in `pool`, running or not.
fn containers(pool: &str, name: &str) -> Vec<String> {
    docker_ps(&[
        "-a",
        "--filter",
        &format!("label=hotpool.pool={pool}"),
        "--filter",
        &format!("label=hotpool.function={name}"),
    ])
}

#[test]
fn sighup_changes_limits_in_place_replaces_removes_and_adds_functions() {
    let server = Server::start(
        "reload",
        "",
        &[
            function("keep", "line", "line", "timeout = \"30s\""),
            function("swap", "line", "line", ""),
            function("gone", "line", "line", ""),
        ],
    );
    for name in ["keep", "swap", "gone"] {
        assert_eq!(server.invoke(name, b"warm").status, 200);
    }
    let keep_before = containers(&server.pool, "keep");
    let swap_before = containers(&server.pool, "swap");
    assert_eq!((keep_before.len(), swap_before.len()), (1, 1));

    server.rewrite_config(
        &[
            function("keep", "line", "line", "timeout = \"2s\""),
            function("swap", "line", "line", "env = { VERSION = \"2\" }"),
            function("fresh", "line", "line", ""),
        ]
        .join("\n"),
    );
    server.hang_up();
    eventually("the reload adds fresh", || {
        server.get("/functions").text().contains("\"fresh\"")
    });

    let keep = server.invoke("keep", b"again");
    assert_eq!(keep.status, 200);
    assert_eq!(
        keep.header("hotpool-start"),
        Some("hot"),
        "the container stayed"
    );
    assert_eq!(containers(&server.pool, "keep"), keep_before);
    assert_eq!(server.function_status("keep")["timeout_ms"], 2000);
    let slow = server.invoke("keep", b"!sleep 10000");
    assert_eq!(slow.status, 504, "the new timeout applies: {}", slow.text());

    let swap = server.invoke("swap", b"new");
    assert_eq!(
        swap.header("hotpool-start"),
        Some("cold"),
        "a new container"
    );
    eventually("the old container of swap is removed", || {
        let now = containers(&server.pool, "swap");
        now.len() == 1 && now != swap_before
    });

    let gone = server.invoke("gone", b"x");
    assert_eq!(gone.status, 404);
    assert_eq!(error_of(&gone)["kind"], "unknown_function");
    eventually("gone's container is removed", || {
        containers(&server.pool, "gone").is_empty()
    });
    assert_eq!(server.invoke("fresh", b"hi").text(), "hi");
    assert!(
        server.stderr.text().contains("config reloaded"),
        "{}",
        server.stderr.text()
    );
    server.stop();
}

#[test]
fn a_bad_config_on_sighup_keeps_the_running_one_and_names_the_key() {
    let server = Server::start("reload-bad", "", &[function("echo", "line", "line", "")]);
    assert_eq!(server.invoke("echo", b"warm").status, 200);
    server.rewrite_config(&function("echo", "line", "line", "timeout = \"soon\""));
    server.hang_up();
    eventually("the failed reload is logged", || {
        server.stderr.text().contains("config not reloaded")
    });
    let logged = server.stderr.text();
    let line = logged
        .lines()
        .find(|line| line.contains("config not reloaded"))
        .expect("one line says so");
    assert!(
        line.contains(r#"function "echo" (function[0]).timeout: "soon" is not a duration"#),
        "{line}"
    );
    let after = server.invoke("echo", b"still");
    assert_eq!((after.status, after.text()), (200, "still".to_owned()));
    assert_eq!(after.header("hotpool-start"), Some("hot"));
    server.stop();
}

/// The lines of `log` that contain `text`.
fn lines_with<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines().filter(|line| line.contains(text)).collect()
}

#[test]
fn sighup_names_each_key_waiting_for_a_restart_and_says_when_nothing_changed() {
    let server = Server::start_with(
        "reload-messages",
        "max_connections = 100",
        "shutdown_timeout = \"30s\"\nkeep_alive = \"fixed:10m\"",
        &[function("echo", "line", "line", "")],
    );
    let functions = function("echo", "line", "line", "");

    server.rewrite_config(&functions);
    server.hang_up();
    eventually("the reload says the config is unchanged", || {
        server.stderr.text().contains("config unchanged")
    });
    let log = server.stderr.text();
    assert!(!log.contains("config reloaded"), "{log}");
    assert!(!log.contains("next start"), "{log}");

    // Two keys read at start only, and [pool] keep_alive, which is every
    // function's and reloads.
    let head = server
        .config_head()
        .replace("max_connections = 100", "max_connections = 200")
        .replace("shutdown_timeout = \"30s\"", "shutdown_timeout = \"20s\"")
        .replace("keep_alive = \"fixed:10m\"", "keep_alive = \"fixed:20m\"");
    assert_ne!(head, server.config_head());
    server.write_config(&format!("{head}{functions}"));
    server.hang_up();
    eventually("the reload is logged", || {
        server.stderr.text().contains("config reloaded")
    });
    let log = server.stderr.text();
    assert_eq!(
        lines_with(&log, "at the next start").len(),
        2,
        "one line per key:\n{log}"
    );
    for key in ["server.max_connections", "pool.shutdown_timeout"] {
        assert_eq!(
            lines_with(
                &log,
                &format!("{key} changed; it takes effect at the next start")
            )
            .len(),
            1,
            "{log}"
        );
    }
    assert!(
        !log.contains("pool.keep_alive"),
        "keep_alive reloads: {log}"
    );
    let reloaded = lines_with(&log, "config reloaded");
    assert_eq!(reloaded.len(), 1, "{log}");
    assert!(
        reloaded[0].contains("limits_changed=echo"),
        "{}",
        reloaded[0]
    );
    for empty in ["added=", "replaced=", "removed="] {
        assert!(!reloaded[0].contains(empty), "{}", reloaded[0]);
    }
    assert_eq!(server.function_status("echo")["keep_alive"], "fixed:20m");

    // A syntax error: the place and the reason, no key.
    server.write_config(&format!("{head}[[function]]\nname = \"echo\nimage = 1\n"));
    server.hang_up();
    eventually("the failed reload is logged", || {
        server.stderr.text().contains("config not reloaded")
    });
    let log = server.stderr.text();
    let failed = lines_with(&log, "config not reloaded");
    assert_eq!(failed.len(), 1, "{log}");
    let line = head.lines().count() + 2;
    assert!(
        failed[0].contains(&format!("the running one stays: line {line}, column ")),
        "{}",
        failed[0]
    );
    assert!(!failed[0].contains("key="), "{}", failed[0]);
    server.stop();
}

/// `hotpool_evictions_total{function="<name>",reason="<reason>"}` on `/metrics`.
fn evictions(server: &Server, name: &str, reason: &str) -> f64 {
    let wanted = format!("hotpool_evictions_total{{function=\"{name}\",reason=\"{reason}\"}} ");
    server
        .get("/metrics")
        .text()
        .lines()
        .find_map(|line| line.strip_prefix(&wanted))
        .map_or(0.0, |value| value.trim().parse().expect("a sample value"))
}

#[test]
fn sighup_applies_a_changed_keep_alive_to_the_running_containers() {
    let server = Server::start(
        "reload-keep-alive",
        "",
        &[function(
            "idle",
            "line",
            "line",
            "keep_alive = \"fixed:10m\"",
        )],
    );
    assert_eq!(server.invoke("idle", b"warm").status, 200);
    let before = containers(&server.pool, "idle");
    assert_eq!(before.len(), 1);

    server.rewrite_config(&function(
        "idle",
        "line",
        "line",
        "keep_alive = \"fixed:2h\"",
    ));
    server.hang_up();
    eventually("the reload applies fixed:2h", || {
        server.function_status("idle")["keep_alive"] == "fixed:2h"
    });
    let status = server.function_status("idle");
    assert!(
        status["idle_deadline_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 10 * 60 * 1000),
        "the idle container is kept past the old 10 minutes: {status}"
    );
    let again = server.invoke("idle", b"again");
    assert_eq!(
        again.header("hotpool-start"),
        Some("hot"),
        "the container stayed: {again}"
    );
    assert_eq!(containers(&server.pool, "idle"), before);

    server.rewrite_config(&function(
        "idle",
        "line",
        "line",
        "keep_alive = \"fixed:1s\"",
    ));
    server.hang_up();
    eventually("the idle container goes after its new keep-alive", || {
        containers(&server.pool, "idle").is_empty()
    });
    assert_eq!(
        evictions(&server, "idle", "idle_timeout"),
        1.0,
        "removed by its keep-alive, not replaced"
    );
    assert_eq!(evictions(&server, "idle", "replaced"), 0.0);
    server.stop();
}

#[test]
fn sighup_raises_and_lowers_a_warm_floor_in_place() {
    let server = Server::start(
        "reload-floor",
        "",
        &[function(
            "floor",
            "line",
            "line",
            "keep_alive = \"fixed:1s\"",
        )],
    );
    assert!(containers(&server.pool, "floor").is_empty(), "no floor yet");
    server.rewrite_config(&function(
        "floor",
        "line",
        "line",
        "keep_alive = \"fixed:1s\"\nmin_idle = 2",
    ));
    server.hang_up();
    eventually("the raised floor starts two containers", || {
        server.function_status("floor")["containers"]["idle"] == 2
    });
    assert_eq!(server.function_status("floor")["min_idle"], 2);
    // Held past their one-second keep-alive.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let held = containers(&server.pool, "floor");
    assert_eq!(held.len(), 2);
    let call = server.invoke("floor", b"hot");
    assert_eq!(call.header("hotpool-start"), Some("hot"), "{call}");

    server.rewrite_config(&function(
        "floor",
        "line",
        "line",
        "keep_alive = \"fixed:1s\"",
    ));
    server.hang_up();
    eventually(
        "the lowered floor lets its containers go by keep-alive",
        || containers(&server.pool, "floor").is_empty(),
    );
    assert_eq!(server.function_status("floor")["min_idle"], 0);
    assert!(
        evictions(&server, "floor", "idle_timeout") >= 2.0,
        "removed by their keep-alive, not replaced"
    );
    assert_eq!(evictions(&server, "floor", "replaced"), 0.0);
    server.stop();
}
