//! The `hotpool` command: `run` (one cold call), `serve` (the pool over HTTP),
//! `bench` (the pool against the engine's floor).

mod cli;

use clap::Parser;

fn main() {
    let command = cli::Command::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOTPOOL_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(command.default_log_level())
            }),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    let code = runtime.block_on(command.execute());
    // Reading a terminal's stdin cannot be cancelled; do not wait for it.
    std::process::exit(code);
}
