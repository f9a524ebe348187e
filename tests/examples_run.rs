//! The examples, run as a user runs them: the embedding example against the real
//! engine, and the http-format example function through it.

mod support;

use std::process::Command;

#[test]
fn the_embedding_example_calls_the_http_example_function_hot() {
    support::hello_image();
    let output = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", "embed"])
        .current_dir(support::repo_root())
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("200 ")).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("200 cold {\"greeting\":\"hello, Ada\""),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("200 hot {\"greeting\":\"hello, Grace\""),
        "{stdout}"
    );
    assert!(
        lines[2].contains("\"calls_served\":3"),
        "one container served all three: {stdout}"
    );
    assert!(stdout.contains("stats: cpu_ratio="), "{stdout}");
    assert!(stdout.contains("containers of hello: 1 idle"), "{stdout}");
}
