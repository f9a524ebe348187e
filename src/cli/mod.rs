//! Command-line interface: parses arguments and dispatches to a subcommand.

mod bench;
mod density;
mod engine;
mod engine_processes;
mod floor;
mod handover;
mod reload;
mod replay;
mod replay_live;
mod run;
mod samples;
mod serve;
mod warm;

use clap::{Parser, Subcommand};

/// hotpool: a hot-container pool scheduler.
#[derive(Debug, Parser)]
#[command(name = "hotpool", version, about)]
pub(crate) struct Command {
    #[command(subcommand)]
    subcommand: Subcommands,
}

#[derive(Debug, Subcommand)]
enum Subcommands {
    /// Run one cold call: stdin to the container, its stdout and stderr back.
    Run(run::RunArgs),
    /// Serve functions from hot containers over HTTP.
    Serve(serve::ServeArgs),
    /// Measure the pool against the engine's own floor, hot and cold.
    Bench(bench::BenchArgs),
    /// Replay a day of a real trace through the scheduling core on a virtual clock.
    Replay(replay::ReplayArgs),
}

impl Command {
    /// The log level without `HOTPOOL_LOG`: a server logs its calls' failures and
    /// its functions' stderr (`info`); a one-shot command only what went wrong.
    pub(crate) fn default_log_level(&self) -> &'static str {
        match self.subcommand {
            Subcommands::Serve(_) => "info",
            Subcommands::Run(_) | Subcommands::Bench(_) | Subcommands::Replay(_) => "warn",
        }
    }

    /// Runs the subcommand; returns the process exit code.
    pub(crate) async fn execute(self) -> i32 {
        match self.subcommand {
            Subcommands::Run(args) => run::run(args).await,
            Subcommands::Serve(args) => serve::serve(args).await,
            Subcommands::Bench(args) => bench::bench(args).await,
            Subcommands::Replay(args) => replay::replay(args).await,
        }
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn stop_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate.recv() => {},
    }
}
