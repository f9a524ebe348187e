//! The README's first commands, run as written: the `curl` lines a newcomer
//! pastes after `scripts/serve`, against `hotpool serve` with the functions of
//! `examples/hotpool.toml`.
//!
//! Only the address (a free port instead of 8080), the pool's name and the image
//! tags (the test images) differ from what a newcomer runs. A line's comment says
//! what it shows: a status first (`# 502 oom: ...`) is the status it must answer;
//! `Hotpool-Start: cold, then hot` means the line, run twice, answers `cold` and
//! then `hot`; any other line must succeed.

mod support;

use std::process::Command;

use support::server::Server;
use support::{hello_image, repo_root, testfn_image};

/// The `curl` lines of the README's first `sh` block that has any.
fn readme_curl_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let block = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("curl "))
        .expect("a sh block with curl lines in the README");
    block
        .lines()
        .filter(|line| line.starts_with("curl "))
        .map(str::to_owned)
        .collect()
}

/// The `[[function]]` tables of `examples/hotpool.toml`, on the test images.
fn example_functions() -> String {
    let example = std::fs::read_to_string(repo_root().join("examples/hotpool.toml"))
        .expect("read examples/hotpool.toml");
    let first = example
        .find("\n[[function]]")
        .expect("examples/hotpool.toml has functions");
    example[first..]
        .replace("hotpool-testfn:dev", testfn_image())
        .replace("hotpool-hello-http:dev", hello_image())
}

/// Runs one README line with `sh`, against `addr`; its status (with `-i`) or
/// 200 for a quiet line that succeeded, its whole output, and its start header.
fn run(line: &str, addr: &str) -> (u16, String, Option<String>) {
    let command = line.replace("127.0.0.1:8080", addr);
    let output = Command::new("sh")
        .args(["-c", &command])
        .output()
        .expect("run sh (curl must be installed: scripts/prerequisites)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`{command}` failed: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = if line.contains(" -i ") {
        text.lines()
            .next()
            .and_then(|status_line| status_line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("`{command}` printed no status line:\n{text}"))
    } else {
        assert!(!text.is_empty(), "`{command}` printed nothing");
        200
    };
    let start = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("hotpool-start: ")
                .or(l.strip_prefix("Hotpool-Start: "))
        })
        .map(|value| value.trim().to_owned());
    (status, text, start)
}

#[test]
fn every_curl_line_of_the_readme_answers_as_its_comment_says() {
    let lines = readme_curl_lines();
    assert!(
        lines.len() >= 7,
        "the README shows its first calls: {lines:?}"
    );
    let server = Server::start_with(
        "readme",
        "",
        "shutdown_timeout = \"30s\"",
        &[example_functions()],
    );
    let addr = server.addr.to_string();
    for line in &lines {
        let comment = line.split_once('#').map_or("", |(_, c)| c.trim());
        let expected: u16 = comment
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|code| code.parse().ok())
            .unwrap_or(200);
        let (status, text, start) = run(line, &addr);
        assert_eq!(status, expected, "`{line}` answered:\n{text}");
        if comment.contains("Hotpool-Start: cold, then hot") {
            assert_eq!(start.as_deref(), Some("cold"), "`{line}` first:\n{text}");
            let (status, text, start) = run(line, &addr);
            assert_eq!(status, 200, "`{line}` again:\n{text}");
            assert_eq!(start.as_deref(), Some("hot"), "`{line}` again:\n{text}");
        }
    }
    server.stop();
}
