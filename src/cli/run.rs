//! `hotpool run`: one cold call, like `docker run -i --rm`.
//!
//! stdin goes to the container's stdin, its stdout to stdout and its stderr to
//! stderr. On failure exactly one JSON line `{"error":{...}}` goes to stderr and the
//! exit status says what happened: the container's own code for `exited`, 137 for
//! `oom`, 124 for `timeout`, 130 for `cancelled`, 125 when the engine or the image
//! failed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use hotpool::driver::docker::{DockerDriver, DockerOptions};
use hotpool::driver::{Cookie, Driver, RunResult, Task};
use hotpool::error::CallError;
use hotpool::image::parse_image;
use hotpool::stats::{CallStats, Stat};
use hotpool::units::{parse_bytes, parse_duration};

/// The most points `--stats-json` keeps, as fn did.
const STATS_MAX_POINTS: usize = 240;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Memory limit, swap disabled (e.g. 64m, 1g); 0 for none.
    #[arg(long, default_value = "128m", value_parser = parse_bytes)]
    memory: u64,
    /// Kill the container after this long (e.g. 5s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Environment variable for the container, KEY=VALUE; repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Write the decimated, averaged stats of the call to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Network to join (a Docker network mode); none by default.
    #[arg(long)]
    network: Option<String>,
    /// Image to run.
    image: String,
    /// Command and arguments; the image's default when empty.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Runs the call; returns the exit status.
pub(crate) async fn run(args: RunArgs) -> i32 {
    let driver = match DockerDriver::connect(DockerOptions::default()).await {
        Ok(driver) => driver,
        Err(error) => return report(&error),
    };
    let samples: Arc<Mutex<Vec<Stat>>> = Arc::default();
    let function = parse_image(&args.image).repository;
    let mut task = Task::new(hotpool::id::new_id(), function, args.image.clone());
    task.command = args.command;
    task.env = args.env.into_iter().collect();
    task.memory = args.memory;
    task.timeout = Some(args.timeout);
    task.network = args.network;
    task.input = Some(Box::new(tokio::io::stdin()));
    task.stdout = Some(Box::new(tokio::io::stdout()));
    task.stderr = Box::new(std::io::stderr());
    if args.stats_json.is_some() {
        let samples = samples.clone();
        task.stats = Some(Arc::new(move |stat| {
            samples.lock().unwrap_or_else(|e| e.into_inner()).push(stat)
        }));
    }

    let result = match driver.prepare(task).await {
        Ok(mut cookie) => {
            let cancel = CancellationToken::new();
            let on_interrupt = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    on_interrupt.cancel();
                }
            });
            let result = match cookie.run().await {
                Ok(_) => cookie.wait(&cancel).await,
                Err(error) => RunResult::failed(error),
            };
            cookie.close().await;
            result
        }
        Err(error) => RunResult::failed(error),
    };

    if let Some(path) = &args.stats_json {
        let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
        let summary = CallStats::new(STATS_MAX_POINTS, samples, None);
        let json = serde_json::to_vec_pretty(&summary).expect("stats serialize");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("hotpool: cannot write {}: {e}", path.display());
        }
    }
    match result.error {
        None => 0,
        Some(error) => report(&error),
    }
}

/// Prints the error as one JSON line on stderr; returns the exit status for it.
fn report(error: &CallError) -> i32 {
    eprintln!("{}", error.to_json());
    match error {
        CallError::Exited { code, .. } => i32::try_from(*code)
            .ok()
            .filter(|c| (1..=255).contains(c))
            .unwrap_or(1),
        CallError::Oom { .. } => 137,
        CallError::Timeout { .. } => 124,
        CallError::Cancelled => 130,
        _ => 125,
    }
}
