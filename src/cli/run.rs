//! `hotpool run`: one cold call, like `docker run -i --rm`.
//!
//! stdin goes to the container's stdin, its stdout to stdout and its stderr to
//! stderr. On failure exactly one JSON line `{"error":{...}}` goes to stderr and the
//! exit status says what happened: the container's own code for `exited`, 137 for
//! `oom`, 124 for `timeout`, 130 for `cancelled`, 125 when the engine or the image
//! failed, 2 for bad flags or an unreadable `--env-file`.
//!
//! The container gets the same containment as a pool's: one CPU, user
//! `1000:1000`, a read-only root and a 64 MiB `/tmp`, each changeable by a flag.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{ArgAction, Args};
use tokio_util::sync::CancellationToken;

use crate::units::{parse_bytes, parse_bytes_at_least, parse_timeout, parse_user};
use hotpool::driver::Cpus;
use hotpool::driver::MIN_TMP_SIZE;
use hotpool::driver::{AnyDriver, Cookie, DEFAULT_USER, Driver, Task, Transport};
use hotpool::error::CallError;
use hotpool::image::parse_image;
use hotpool::server::error::call_error_json;
use hotpool::stats::{CallStats, Stat};

/// The most points `--stats-json` keeps, as fn did.
const STATS_MAX_POINTS: usize = 240;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    engine: super::engine::EngineArgs,
    /// Memory limit, swap disabled (e.g. 64m, 1g; at least the engine's
    /// minimum, Docker's 6m); 0 for none.
    #[arg(long, default_value = "128m", value_parser = parse_memory)]
    memory: u64,
    /// Kill the container after this long (e.g. 5s, 500ms; at most 24h).
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    timeout: Duration,
    /// CPU quota in cores (e.g. 0.5, 2).
    #[arg(long, default_value = "1")]
    cpus: Cpus,
    /// The user to run as: uid[:gid] (a bare uid runs with gid = uid) or a name
    /// from the image.
    #[arg(long, default_value = DEFAULT_USER, value_parser = parse_user)]
    user: String,
    /// Size of the tmpfs at /tmp (at least 1m); it counts against --memory.
    #[arg(long, default_value = "64m", value_parser = parse_tmp_size)]
    tmp_size: u64,
    /// Whether the root filesystem is read-only; `--read-only=false` makes it
    /// writable.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    read_only: bool,
    /// Environment variable for the container: KEY=VALUE, or KEY to pass hotpool's
    /// own value (left out if unset); repeatable, and wins over --env-file.
    #[arg(long = "env", short = 'e', value_name = "KEY[=VALUE]", value_parser = parse_env)]
    env: Vec<EnvVar>,
    /// Read environment variables from FILE: a KEY=VALUE or KEY per line, `#`
    /// comments; repeatable.
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Write the decimated, averaged stats of the call to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Network to join (a Docker network mode); none by default.
    #[arg(long)]
    network: Option<String>,
    /// How stdin and stdout travel: `direct` (pipes shared with the container,
    /// where the engine runs on this host) or `attach` (the engine's streams).
    #[arg(long, default_value = "direct")]
    transport: Transport,
    /// Image to run.
    image: String,
    /// Command and arguments; the image's default when empty.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// A variable for the container: a name and its value, or `None` to take
/// hotpool's own (as `docker run -e KEY` does).
type EnvVar = (String, Option<String>);

/// Parses `KEY=VALUE` or `KEY`. Never echoes the value: it may be a secret.
fn parse_env(text: &str) -> Result<EnvVar, String> {
    let (name, value) = match text.split_once('=') {
        Some((name, value)) => (name, Some(value.to_owned())),
        None => (text, None),
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!(
            "{name:?} is not a variable name: use KEY=VALUE or KEY, without spaces"
        ));
    }
    Ok((name.to_owned(), value))
}

/// Reads an env file (docker's format): `KEY=VALUE` or `KEY` lines, blank lines
/// and `#` comments skipped, values taken as written. Errors name the line, never
/// its content.
fn read_env_file(path: &Path) -> Result<Vec<EnvVar>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    text.lines()
        .enumerate()
        .map(|(index, line)| (index, line.trim_start()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(index, line)| parse_env(line).map_err(|e| format!("line {}: {e}", index + 1)))
        .collect()
}

/// The container's environment: the env files in order, then the `--env` flags;
/// a later value wins, and a name without one takes hotpool's own, if set.
fn environment(args: &RunArgs) -> Result<BTreeMap<String, String>, String> {
    let mut variables = Vec::new();
    for path in &args.env_file {
        let read =
            read_env_file(path).map_err(|e| format!("--env-file {}: {e}", path.display()))?;
        variables.extend(read);
    }
    variables.extend(args.env.iter().cloned());
    Ok(variables
        .into_iter()
        .filter_map(|(name, value)| {
            let value = value.or_else(|| std::env::var(&name).ok())?;
            Some((name, value))
        })
        .collect())
}

/// A memory limit: 0 for none; the engine's minimum is checked once it is known.
fn parse_memory(text: &str) -> Result<u64, String> {
    parse_bytes(text)
}

fn parse_tmp_size(text: &str) -> Result<u64, String> {
    parse_bytes_at_least(text, MIN_TMP_SIZE)
}

/// Runs the call; returns the exit status.
pub(crate) async fn run(args: RunArgs) -> i32 {
    let env = match environment(&args) {
        Ok(env) => env,
        Err(error) => {
            eprintln!("hotpool: {error}");
            return 2;
        }
    };
    let driver = match AnyDriver::connect(&args.engine.choice()).await {
        Ok(driver) => driver,
        Err(error) => return report(&error),
    };
    let engine = driver.traits();
    let refused = [
        ("--memory", engine.refuses(args.memory, Transport::Direct)),
        ("--transport", engine.refuses(0, args.transport)),
    ];
    if let Some((flag, Some(reason))) = refused.into_iter().find(|(_, r)| r.is_some()) {
        eprintln!("hotpool: {flag}: {reason}");
        return 2;
    }
    let samples: Arc<Mutex<Vec<Stat>>> = Arc::default();
    let function = parse_image(&args.image).repository;
    let mut task = Task::new(hotpool::driver::new_id(), function, args.image.clone());
    task.command = args.command;
    task.env = env;
    task.memory = args.memory;
    task.timeout = Some(args.timeout);
    task.network = args.network;
    task.cpus = args.cpus;
    task.user = args.user;
    task.tmp_size = args.tmp_size;
    task.read_only = args.read_only;
    task.transport = args.transport;
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
                super::stop_signal().await;
                on_interrupt.cancel();
            });
            let result = match cookie.run().await {
                Ok(_) => cookie.wait(&cancel).await,
                Err(error) => Err(error),
            };
            cookie.close().await;
            result
        }
        Err(error) => Err(error),
    };

    if let Some(path) = &args.stats_json {
        let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
        let summary = CallStats::new(STATS_MAX_POINTS, samples, None);
        let json = serde_json::to_vec_pretty(&summary).expect("stats serialize");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("hotpool: cannot write {}: {e}", path.display());
        }
    }
    match result {
        Ok(()) => 0,
        Err(error) => report(&error),
    }
}

/// Prints the error as one JSON line on stderr; returns the exit status for it.
fn report(error: &CallError) -> i32 {
    eprintln!("{}", call_error_json(error));
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
