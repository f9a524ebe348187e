//! The `hotpool` command: `run` (one cold call), `serve` (the pool over HTTP),
//! `bench` (the pool against the engine's floor). A crate of its own on top of the
//! `hotpool` library (whose `server` module is the HTTP API): the config, the
//! logging and the CLI live here.

mod cli;
mod config;
mod exporter;
mod log_queue;
mod units;

use std::io::IsTerminal;
use std::time::Duration;

use clap::Parser;

/// How long the exit waits for queued log records to reach stderr.
const LOG_DRAIN: Duration = Duration::from_secs(2);

fn main() {
    let command = cli::Command::parse();
    let log = log_queue::LogQueue::start();
    tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(colours_wanted())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOTPOOL_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(command.default_log_level())
            }),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    let code = runtime.block_on(command.execute());
    log.drain(LOG_DRAIN);
    // Reading a terminal's stdin cannot be cancelled; do not wait for it.
    std::process::exit(code);
}

/// Colour codes only on a terminal, and not with `NO_COLOR` set (no-color.org).
fn colours_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
