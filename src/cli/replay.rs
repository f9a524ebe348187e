//! `hotpool replay`: a day of a real trace (Azure Functions 2019 schema) through
//! the pool's scheduling core and policies on a virtual clock
//! ([`hotpool::replay`]). Progress on stderr when it is a terminal; a table on
//! stdout, or with `--json` one JSON object. A slice of the trace
//! (`--functions`, `--minutes`, `--speed`) can also be written as a
//! `hotpool serve` config and sent to that server ([`super::replay_live`]).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use hotpool::replay::{self, Arrivals, Options, Policy, Progress, Report, Trace};

use super::replay_live;
use crate::units;

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The trace: PREFIX_inv.csv, PREFIX_run.csv and PREFIX_mem.csv.
    prefix: PathBuf,
    /// Every function's policy: fixed:DURATION, histogram, adaptive (the default),
    /// or lru / greedy-dual (idle containers go only for the memory budget).
    #[arg(long)]
    policy: Option<Policy>,
    /// The most memory live containers may hold (64m, 16g); none by default.
    #[arg(long, value_parser = units::parse_bytes)]
    memory_budget: Option<u64>,
    /// How long a container takes to start (default 250ms).
    #[arg(long, value_parser = units::parse_duration)]
    cold_start: Option<Duration>,
    /// Seeds arrival times and durations (default 1).
    #[arg(long)]
    seed: Option<u64>,
    /// How each minute's calls spread over it: uniform (the default) or equidistant.
    #[arg(long)]
    arrivals: Option<Arrivals>,
    /// The most containers starting at once; more wait for a slot, and their
    /// calls with them (default 16, the pool's own limit; 0: any number).
    #[arg(long)]
    start_slots: Option<usize>,
    /// What one start costs the engine in CPU time, for `engine_start_s`
    /// (default 105ms, measured for Docker on the development machine).
    #[arg(long, value_parser = units::parse_duration)]
    engine_start_cost: Option<Duration>,
    /// Every function's warm floor: idle or starting containers kept at all
    /// times, counted in idle GB-s and starts (default 0).
    #[arg(long)]
    min_idle: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Replay only this many functions: the busiest in the minutes among those
    /// whose calls there keep less than one container busy on average.
    #[arg(long)]
    functions: Option<usize>,
    /// Replay only minutes START..END of the day (from 0; END not included).
    #[arg(long, value_parser = replay::parse_minutes)]
    minutes: Option<Range<usize>>,
    /// Run time this many times faster: arrival times and call durations are
    /// divided by it (default 1).
    #[arg(long, value_parser = parse_speed)]
    speed: Option<f64>,
    /// Write the `hotpool serve` config of the slice to this file, and exit.
    #[arg(long)]
    write_config: Option<PathBuf>,
    /// With --write-config: the server's address (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// With --write-config: the pool's name (default replay-live).
    #[arg(long)]
    pool: Option<String>,
    /// With --write-config: the test function's image (default hotpool-testfn:dev).
    #[arg(long)]
    image: Option<String>,
    /// With --write-config: each container holds its trace memory divided by
    /// this, and so does the memory budget (default 16).
    #[arg(long, value_parser = parse_speed)]
    memory_scale: Option<f64>,
    /// Send the slice as calls to the server at this URL (started with the
    /// config --write-config wrote, fresh) and set what it measured beside the
    /// simulation; the simulation's cold start is the server's mean container
    /// start (its wait for a start turn included, so any number start at once
    /// unless --start-slots is given) unless --cold-start is given.
    #[arg(long)]
    live: Option<String>,
}

/// A factor more than zero.
fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(factor) if factor.is_finite() && factor > 0.0 => Ok(factor),
        _ => Err(format!("{text:?} is not a number more than 0")),
    }
}

impl ReplayArgs {
    fn options(&self) -> Options {
        let mut options = Options::default();
        options.policy = self.policy.unwrap_or(options.policy);
        options.memory_budget = self.memory_budget;
        options.cold_start = self.cold_start.unwrap_or(options.cold_start);
        options.seed = self.seed.unwrap_or(options.seed);
        options.arrivals = self.arrivals.unwrap_or(options.arrivals);
        options.start_slots = match self.start_slots {
            Some(0) => None,
            Some(slots) => Some(slots),
            None => options.start_slots,
        };
        options.engine_start_cost = self.engine_start_cost.unwrap_or(options.engine_start_cost);
        options.min_idle = self.min_idle.unwrap_or(options.min_idle);
        options.speed = self.speed.unwrap_or(options.speed);
        options
    }

    /// The trace, or the slice of it asked for.
    fn trace(&self) -> Result<Trace, String> {
        let trace = Trace::load(&self.prefix).map_err(|e| e.to_string())?;
        if self.functions.is_none() && self.minutes.is_none() {
            return Ok(trace);
        }
        let minutes = self.minutes.clone().unwrap_or(0..trace.minutes());
        trace
            .slice(self.functions, minutes)
            .map_err(|e| e.to_string())
    }

    /// Where and how the server of `--write-config` runs.
    fn serve_setup(&self) -> replay::live::ServeSetup {
        let mut setup = replay::live::ServeSetup::default();
        setup.listen = self.listen.unwrap_or(setup.listen);
        setup.pool = self.pool.clone().unwrap_or(setup.pool);
        setup.image = self.image.clone().unwrap_or(setup.image);
        setup.memory_scale = self.memory_scale.unwrap_or(setup.memory_scale);
        setup
    }
}

/// Runs the replay; returns the exit status.
pub(crate) async fn replay(args: ReplayArgs) -> i32 {
    let done = if let Some(path) = &args.write_config {
        args.trace()
            .and_then(|trace| {
                replay_live::write_config(path, &trace, &args.options(), &args.serve_setup())
            })
            .map(|()| 0)
    } else if let Some(url) = &args.live {
        let given = replay_live::Given {
            cold_start: args.cold_start.is_some(),
            start_slots: args.start_slots.is_some(),
        };
        match args.trace() {
            Ok(trace) => replay_live::compare(url, trace, args.options(), given, args.json).await,
            Err(message) => Err(message),
        }
    } else {
        let work = tokio::task::spawn_blocking(move || run(&args));
        work.await.expect("the replay does not panic").map(|()| 0)
    };
    match done {
        Ok(status) => status,
        Err(message) => {
            eprintln!("hotpool replay: {message}");
            1
        }
    }
}

fn run(args: &ReplayArgs) -> Result<(), String> {
    let wall = Instant::now();
    let options = args.options();
    let trace = args.trace()?;
    let terminal = std::io::stderr().is_terminal();
    let mut report = replay::simulate(&trace, &options, |progress| {
        if terminal {
            show_progress(progress);
        }
    })
    .map_err(|e| e.to_string())?;
    report.wall_s = wall.elapsed().as_secs_f64();
    if args.json {
        let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print_table(args, &options, &trace, &report);
    }
    Ok(())
}

/// One line on stderr, rewritten in place; cleared after the last minute.
fn show_progress(progress: Progress) {
    let mut stderr = std::io::stderr().lock();
    if progress.minute == progress.minutes {
        let _ = write!(stderr, "\r\x1b[2K");
    } else {
        let _ = write!(
            stderr,
            "\rreplaying minute {}/{}, {} calls",
            progress.minute, progress.minutes, progress.invocations
        );
    }
    let _ = stderr.flush();
}

fn print_table(args: &ReplayArgs, options: &Options, trace: &Trace, report: &Report) {
    let budget = options
        .memory_budget
        .map_or_else(|| "none".to_owned(), units::show_bytes);
    println!(
        "hotpool replay {}: {} functions, {} minutes at speed {}, policy {}, memory budget {budget}, cold start {}, {} starts at once, seed {}, {} arrivals",
        args.prefix.display(),
        trace.function_count(),
        trace.minutes(),
        options.speed,
        options.policy,
        humantime::format_duration(options.cold_start),
        options
            .start_slots
            .map_or_else(|| "any number of".to_owned(), |slots| slots.to_string()),
        options.seed,
        options.arrivals,
    );
    let percent = |part: u64| 100.0 * part as f64 / report.invocations.max(1) as f64;
    let rows = [
        ("invocations", report.invocations.to_string()),
        (
            "cold starts",
            format!("{} ({:.2}%)", report.cold_starts, 100.0 * report.cold_ratio),
        ),
        (
            "warm after a wait",
            format!(
                "{} ({:.2}%): handed a container another call freed while they waited for a start",
                report.warm_after_wait,
                percent(report.warm_after_wait),
            ),
        ),
        (
            "container starts",
            format!(
                "{} ({:.2}% of calls: the cold ratio of a simulator that counts a cold call per start)",
                report.container_starts,
                percent(report.container_starts),
            ),
        ),
        (
            "starts per second",
            format!(
                "peak {}, p99 {:.0}; {:.0} s waited for a start slot ({:.0} s by calls for a container); {:.0} engine CPU-s",
                report.peak_starts_per_s,
                report.p99_starts_per_s,
                report.start_wait_s,
                report.call_wait_s,
                report.engine_start_s
            ),
        ),
        (
            "waits for memory",
            format!(
                "{} starts, the longest {:.1} s",
                report.memory_waits, report.longest_memory_wait_s
            ),
        ),
        ("idle GB-s", format!("{:.0}", report.idle_gb_s)),
        ("total GB-s", format!("{:.0}", report.total_gb_s)),
        (
            "p75 function cold",
            format!("{:.2}%", report.p75_function_cold_pct),
        ),
        (
            "prewarms",
            format!(
                "{} used, {} wasted",
                report.prewarms_used, report.prewarms_wasted
            ),
        ),
        ("wall", format!("{:.2} s", report.wall_s)),
    ];
    for (name, value) in rows {
        println!("{name:<18} {value}");
    }
}
