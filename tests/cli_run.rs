//! `hotpool run` as a user runs it: the real binary, the real engine, a real
//! registry; one JSON error line and a telling exit status for every failure.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use support::registry::{PASSWORD, Registry, USER, remove_image};
use support::{driver, testfn_image};

fn hotpool_run(args: &[&str], stdin: &[u8], configure: impl FnOnce(&mut Command)) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hotpool"));
    command
        .arg("run")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    configure(&mut command);
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

#[test]
fn success_passes_stdout_through() {
    let image = testfn_image();
    let output = hotpool_run(&[image, "echo"], b"hello \x00 world", |_| {});
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(output.stdout, b"hello \x00 world");
    assert!(output.stderr.is_empty());
}

#[test]
fn exited_gives_the_code_and_json() {
    let output = hotpool_run(&[testfn_image(), "exit", "7", "it broke"], b"", |_| {});
    assert_eq!(output.status.code(), Some(7));
    let line = error_line(&output);
    assert_eq!(line["error"]["kind"], "exited");
    assert_eq!(line["error"]["exit_code"], 7);
    assert!(
        String::from_utf8_lossy(&output.stderr).starts_with("it broke\n"),
        "the container's stderr comes first"
    );
}

#[test]
fn oom_timeout_and_sigkill() {
    let image = testfn_image();
    let oom = hotpool_run(&["--memory", "32m", image, "oom"], b"", |_| {});
    assert_eq!((oom.status.code(), kind(&oom).as_str()), (Some(137), "oom"));

    let killed = hotpool_run(&[image, "kill-self"], b"", |_| {});
    assert_eq!(
        (killed.status.code(), kind(&killed).as_str()),
        (Some(137), "exited")
    );

    let slow = hotpool_run(&["--timeout", "300ms", image, "sleep", "60"], b"", |_| {});
    assert_eq!(
        (slow.status.code(), kind(&slow).as_str()),
        (Some(124), "timeout")
    );
}

#[test]
fn env_and_flags_after_the_image_reach_the_container() {
    // `-n` after the image belongs to the container's command, as with docker run.
    let output = hotpool_run(
        &["--env", "A=1", testfn_image(), "stderr", "-n"],
        b"x",
        |_| {},
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(output.stdout, b"x");
    assert_eq!(output.stderr, b"-n\n");
}

#[test]
fn stats_json_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.json");
    let output = hotpool_run(
        &[
            "--stats-json",
            path.to_str().unwrap(),
            testfn_image(),
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

    let output = hotpool_run(&["--env", "NOEQUALS", "x"], b"", |_| {});
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not KEY=VALUE"));
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
}

#[tokio::test]
async fn pull_errors_from_a_real_registry() {
    let registry = Registry::start();
    let plain = driver().await;
    let image = registry.push(plain.docker(), "testfn-cli").await;
    let missing = format!("{}/missing:v1", registry.addr);
    let empty = tempfile::tempdir().unwrap();
    let right = registry.docker_config(USER, PASSWORD);
    let run_with = |config: &tempfile::TempDir, image: &str| {
        let (config, image) = (config.path().to_owned(), image.to_owned());
        std::thread::spawn(move || {
            hotpool_run(&[&image, "echo"], b"pulled", |c| {
                c.env("DOCKER_CONFIG", &config);
            })
        })
        .join()
        .unwrap()
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

    remove_image(plain.docker(), &image).await;
}
