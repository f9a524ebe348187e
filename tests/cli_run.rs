//! `hotpool run` as a user runs it: the real binary, the real engine, a real
//! registry; one JSON error line and a telling exit status for every failure.
//! What runs a container runs on Docker and on containerd (`--engine`).

mod support;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use hotpool::driver::EngineKind;
use support::cli_engine::Engine;
use support::containerd::TestImage;
use support::registry::{PASSWORD, USER, remove_image};
use support::{driver, testfn_image};

/// `hotpool run` with `args`, on whichever engine it picks.
fn hotpool_run(args: &[&str], stdin: &[u8], configure: impl FnOnce(&mut Command)) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hotpool"));
    command.arg("run").args(args);
    configure(&mut command);
    run_with_input(command, stdin)
}

/// `hotpool run` with `args` on `engine`.
fn hotpool_run_on(
    engine: &Engine,
    args: &[&str],
    stdin: &[u8],
    configure: impl FnOnce(&mut Command),
) -> Output {
    hotpool_run(&[], stdin, |command| {
        engine.configure(command);
        command.args(args);
        configure(command);
    })
}

/// Runs `command` with `stdin` as its input; its output.
fn run_with_input(mut command: Command, stdin: &[u8]) -> Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start hotpool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("hotpool ran")
}

/// The single JSON line on stderr (after whatever the container wrote there).
fn error_line(output: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last stderr line is not JSON ({e}): {stderr}"))
}

fn kind(output: &Output) -> String {
    error_line(output)["error"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

per_engine_binary!(success_passes_stdout_through);
fn success_passes_stdout_through(engine: Engine) {
    let output = hotpool_run_on(
        &engine,
        &[&engine.image, "echo"],
        b"hello \x00 world",
        |_| {},
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(output.stdout, b"hello \x00 world");
    assert!(output.stderr.is_empty());
}

/// Forwards connections on a loopback port to the engine's unix socket, so the
/// engine looks remote (`DOCKER_HOST=tcp://...`) while it is the same one.
fn engine_over_tcp() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let engine = std::os::unix::net::UnixStream::connect("/var/run/docker.sock")
                .expect("the engine's socket");
            let (mut from_client, mut to_engine) =
                (client.try_clone().unwrap(), engine.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut from_client, &mut to_engine));
            let (mut from_engine, mut to_client) = (engine, client);
            std::thread::spawn(move || std::io::copy(&mut from_engine, &mut to_client));
        }
    });
    port
}

/// Docker only: a remote engine over TCP, and the attach transport, are Docker's.
#[test]
fn a_remote_engine_gets_the_attach_transport_and_says_so_once() {
    let port = engine_over_tcp();
    let output = hotpool_run(&[testfn_image(), "echo"], b"over tcp", |command| {
        command
            .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
            .env("HOTPOOL_LOG", "info")
            .env("NO_COLOR", "1");
    });
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(output.stdout, b"over tcp");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("functions use the attach transport").count(),
        1,
        "{stderr}"
    );
}

/// A hotpool that is not root (a user of the docker group, as with rootless
/// setups) cannot give a container's pipes to the function's user, so it opens
/// them to all: the direct transport still works, and the pipes' directory stays
/// hotpool's, out of the function's reach. Docker only: containerd's socket is
/// root's alone, so a hotpool that is not root cannot drive it.
#[test]
fn a_hotpool_that_is_not_root_opens_the_pipes_to_the_function() {
    // SAFETY: geteuid has no preconditions.
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let engine = std::fs::metadata("/var/run/docker.sock")
            .expect("the engine's socket at /var/run/docker.sock");
        let mut command = Command::new("setpriv");
        command
            .arg("--reuid=65534")
            .arg(format!("--regid={}", engine.gid()))
            .arg("--clear-groups")
            .arg(env!("CARGO_BIN_EXE_hotpool"))
            // Its runtime directory is then its own, in the temporary directory.
            .env_remove("XDG_RUNTIME_DIR");
        command
    } else {
        Command::new(env!("CARGO_BIN_EXE_hotpool"))
    };
    command.args(["run", "--transport", "direct", "--user", "1000:1000"]);
    command.args([testfn_image(), "line"]);
    let output = run_with_input(command, b"!id\n!tamper\n");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(answers.len(), 2, "{stdout}");
    assert_eq!(answers[0], "1000:1000", "the function runs as its own user");
    assert!(
        answers[1].starts_with("unlink: Permission denied"),
        "the function reached its pipes but cannot replace them: {stdout}"
    );
}

per_engine_binary!(exited_gives_the_code_and_json);
fn exited_gives_the_code_and_json(engine: Engine) {
    let output = hotpool_run_on(
        &engine,
        &[&engine.image, "exit", "7", "it broke"],
        b"",
        |_| {},
    );
    assert_eq!(output.status.code(), Some(7));
    let line = error_line(&output);
    assert_eq!(line["error"]["kind"], "exited");
    assert_eq!(line["error"]["exit_code"], 7);
    assert!(
        String::from_utf8_lossy(&output.stderr).starts_with("it broke\n"),
        "the container's stderr comes first"
    );
}

per_engine_binary!(oom_timeout_and_sigkill);
fn oom_timeout_and_sigkill(engine: Engine) {
    let image = engine.image.as_str();
    let run = |args: &[&str]| hotpool_run_on(&engine, args, b"", |_| {});
    let oom = run(&["--memory", "32m", image, "oom"]);
    assert_eq!((oom.status.code(), kind(&oom).as_str()), (Some(137), "oom"));

    let killed = run(&[image, "kill-self"]);
    assert_eq!(
        (killed.status.code(), kind(&killed).as_str()),
        (Some(137), "exited")
    );

    let slow = run(&["--timeout", "300ms", image, "sleep", "60"]);
    assert_eq!(
        (slow.status.code(), kind(&slow).as_str()),
        (Some(124), "timeout")
    );
}

per_engine_binary!(env_and_flags_after_the_image_reach_the_container);
fn env_and_flags_after_the_image_reach_the_container(engine: Engine) {
    // `-n` after the image belongs to the container's command, as with docker run.
    let output = hotpool_run_on(
        &engine,
        &["--env", "A=1", &engine.image, "stderr", "-n"],
        b"x",
        |_| {},
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(output.stdout, b"x");
    assert_eq!(output.stderr, b"-n\n");
}

per_engine_binary!(stats_json_is_written);
fn stats_json_is_written(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.json");
    let output = hotpool_run_on(
        &engine,
        &[
            "--stats-json",
            path.to_str().unwrap(),
            &engine.image,
            "spin",
            "2",
        ],
        b"",
        |_| {},
    );
    assert_eq!(output.status.code(), Some(0));
    let stats: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(stats["sample_count"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stats["average"]["metrics"]["memory_bytes"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{stats}"
    );
}

#[test]
fn bad_flags_are_named() {
    let output = hotpool_run(&["--memory", "lots", "x"], b"", |_| {});
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--memory") && stderr.contains("not a size"),
        "{stderr}"
    );

    let output = hotpool_run(&["--env", "=x", "x"], b"", |_| {});
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a variable name"));
}

#[test]
fn bad_containment_flags_are_named_before_any_container_runs() {
    for (flag, value, reason) in [
        ("--cpus", "0", "less than 0.01"),
        ("--cpus", "lots", "not a number of CPUs"),
        ("--user", "a b", "is not a user"),
        ("--tmp-size", "512k", "less than the minimum, 1m"),
        ("--timeout", "10000000000000000000s", "more than 24h"),
    ] {
        // An unreachable engine: a bad flag must be caught before it is needed.
        let output = hotpool_run(&[&format!("{flag}={value}"), "x"], b"", |c| {
            c.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
        });
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(reason),
            "{flag} {value}: {stderr}"
        );
    }
}

per_engine_binary!(memory_under_the_engines_minimum_is_refused_before_any_container_runs);
fn memory_under_the_engines_minimum_is_refused_before_any_container_runs(engine: Engine) {
    let args = ["--memory", "64", &engine.image, "echo"];
    let output = hotpool_run_on(&engine, &args, b"hi", |_| {});
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let refusal = format!(
        "--memory: 64 bytes is under the {} engine's minimum of 6 MiB",
        engine.name()
    );
    assert!(stderr.contains(&refusal), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing ran");
}

#[test]
fn containerd_refuses_the_attach_transport_and_user_names_clearly() {
    let engine = Engine::containerd();
    let attach = hotpool_run_on(
        &engine,
        &["--transport", "attach", &engine.image, "echo"],
        b"hi",
        |_| {},
    );
    let stderr = String::from_utf8_lossy(&attach.stderr);
    assert_eq!(attach.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "hotpool: --transport: the containerd engine has no attach transport: use direct"
    );
    assert!(attach.stdout.is_empty(), "nothing ran");

    let named = hotpool_run_on(
        &engine,
        &["--user", "nobody", &engine.image, "echo"],
        b"hi",
        |_| {},
    );
    assert_eq!(named.status.code(), Some(125), "{named:?}");
    let error = &error_line(&named)["error"];
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"nobody\" is a name") && m.contains("numeric")),
        "{error}"
    );
    assert!(named.stdout.is_empty(), "nothing ran");
}

/// The answers of the test function's line mode on `engine` to `requests`,
/// one per line.
fn answers(
    engine: &Engine,
    flags: &[&str],
    requests: &[&str],
    configure: impl FnOnce(&mut Command),
) -> Vec<String> {
    let mut args = flags.to_vec();
    args.extend([engine.image.as_str(), "line"]);
    let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
    let output = hotpool_run_on(engine, &args, input.as_bytes(), configure);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

per_engine_binary!(the_container_is_contained_by_default);
fn the_container_is_contained_by_default(engine: Engine) {
    let answers = answers(
        &engine,
        &[],
        &[
            "!id",
            "!write-root",
            "!nofile",
            "!cpu-quota",
            "!write-tmp 1048576",
        ],
        |_| {},
    );
    assert_eq!(answers[0], "1000:1000");
    assert!(
        answers[1].contains("os error 30"),
        "read-only root: {answers:?}"
    );
    assert_eq!(answers[2], "1024 1024");
    assert_eq!(answers[3], "100000 100000", "one CPU");
    assert_eq!(answers[4], "wrote 1048576: ok", "/tmp is writable");
}

per_engine_binary!(containment_flags_reach_the_container);
fn containment_flags_reach_the_container(engine: Engine) {
    let answers_of = |flags: &[&str], requests: &[&str]| answers(&engine, flags, requests, |_| {});
    let chosen = answers_of(
        &["--cpus", "0.5", "--user", "123:456", "--tmp-size", "2m"],
        &["!id", "!cpu-quota", "!write-tmp 4194304"],
    );
    assert_eq!(chosen[..2], ["123:456", "50000 100000"]);
    let written: u64 = chosen[2]
        .strip_prefix("wrote ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{chosen:?}"));
    assert!(
        written <= 2 << 20 && chosen[2].contains("os error 28"),
        "a 2 MiB /tmp: {chosen:?}"
    );

    let writable = answers_of(&["--read-only=false", "--user", "0"], &["!write-root"]);
    assert_eq!(writable, ["ok"]);
    let read_only = answers_of(&["--read-only", "--user", "0"], &["!write-root"]);
    assert!(read_only[0].contains("os error 30"), "{read_only:?}");
}

per_engine_binary!(env_comes_from_flags_files_and_hotpools_own_environment);
fn env_comes_from_flags_files_and_hotpools_own_environment(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    std::fs::write(
        &file,
        "# comment\n\nFROM_FILE=file value\nOVERRIDDEN=file\n  SECRET\nEMPTY=\n",
    )
    .unwrap();
    let answers = answers(
        &engine,
        &[
            "--env-file",
            file.to_str().unwrap(),
            "-e",
            "OVERRIDDEN=flag",
            "-e",
            "TOKEN",
            "-e",
            "NOT_SET_ANYWHERE",
        ],
        &[
            "!getenv FROM_FILE",
            "!getenv OVERRIDDEN",
            "!getenv SECRET",
            "!getenv TOKEN",
            "!getenv NOT_SET_ANYWHERE",
            "!getenv EMPTY",
        ],
        |c| {
            c.env("SECRET", "from hotpool's env")
                .env("TOKEN", "t0ken")
                .env_remove("NOT_SET_ANYWHERE");
        },
    );
    assert_eq!(
        answers,
        [
            "file value",
            "flag",
            "from hotpool's env",
            "t0ken",
            "<unset>",
            ""
        ]
    );
}

#[test]
fn a_bad_env_file_is_named_without_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    std::fs::write(&file, "GOOD=1\nBAD NAME=supersecret\n").unwrap();
    let missing = dir.path().join("missing");
    for (path, reason) in [(&file, "line 2"), (&missing, "No such file")] {
        let output = hotpool_run(
            &["--env-file", path.to_str().unwrap(), testfn_image(), "echo"],
            b"",
            |_| {},
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--env-file") && stderr.contains(reason),
            "{stderr}"
        );
        assert!(!stderr.contains("supersecret"), "{stderr}");
    }
}

#[test]
fn an_unreachable_engine_is_engine_error() {
    let output = hotpool_run(&["x"], b"", |c| {
        c.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    });
    assert_eq!(output.status.code(), Some(125));
    let line = error_line(&output);
    assert_eq!(line["error"]["kind"], "engine_error");
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains("docker info")
    );

    let socket = "/nonexistent/containerd.sock";
    let output = hotpool_run(
        &["--engine", "containerd", "--engine-socket", socket, "x"],
        b"",
        |_| {},
    );
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    let line = error_line(&output);
    assert_eq!(line["error"]["kind"], "engine_error");
    assert!(
        line["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(socket)),
        "{line}"
    );
}

/// Each engine pulls from a registry of the test's own, the image in no
/// engine's store before: a run without credentials must pull and be refused.
mod pull_errors_from_a_real_registry {
    use hotpool::driver::EngineKind;

    #[tokio::test]
    async fn docker() {
        super::pull_errors_from_a_real_registry(EngineKind::Docker).await
    }

    #[tokio::test]
    async fn containerd() {
        super::pull_errors_from_a_real_registry(EngineKind::Containerd).await
    }
}

async fn pull_errors_from_a_real_registry(engine_kind: EngineKind) {
    let pushed = std::sync::Arc::new(TestImage::push("testfn-cli").await);
    let registry = pushed.registry();
    let image = pushed.name.clone();
    let engine = match engine_kind {
        EngineKind::Docker => Engine::docker(),
        _ => Engine::containerd_with(pushed.clone()),
    };
    let missing = format!("{}/missing:v1", registry.addr);
    let empty = tempfile::tempdir().unwrap();
    let right = registry.docker_config(USER, PASSWORD);
    let run_with = |config: &tempfile::TempDir, image: &str| {
        let (config, image) = (config.path().to_owned(), image.to_owned());
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    hotpool_run_on(&engine, &[&image, "echo"], b"pulled", |c| {
                        c.env("DOCKER_CONFIG", &config);
                    })
                })
                .join()
                .unwrap()
        })
    };

    let anonymous = run_with(&empty, &image);
    assert_eq!(
        (anonymous.status.code(), kind(&anonymous).as_str()),
        (Some(125), "image_unauthorized")
    );
    let not_found = run_with(&right, &missing);
    assert_eq!(
        (not_found.status.code(), kind(&not_found).as_str()),
        (Some(125), "image_not_found")
    );
    let pulled = run_with(&right, &image);
    assert_eq!(pulled.status.code(), Some(0), "{pulled:?}");
    assert_eq!(pulled.stdout, b"pulled");

    // containerd's copy goes with the last holder of `pushed`.
    remove_image(driver().await.docker(), &image).await;
}
