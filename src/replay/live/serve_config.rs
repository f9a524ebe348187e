//! The `hotpool serve` config of a slice of a trace: one function per trace
//! function, on the test function (`hotpool-testfn`, http format), each call's
//! body `!sleep MS` with the call's sampled duration, each container holding
//! its trace function's memory divided by a scale so that a slice fits a
//! small machine; the replay's keep-alive and eviction, the direct transport,
//! and the memory budget scaled alike (none given: one no slice reaches).

use std::fmt::Write;
use std::net::SocketAddr;

use super::super::trace::Trace;
use super::super::{Options, Policy};

/// Bytes in a MiB.
const MIB: u64 = 1 << 20;
/// The least memory a generated container gets, in MiB: above the engines'
/// minimum (6 MiB for Docker) with room for the test function itself.
const MIN_CONTAINER_MIB: u64 = 8;
/// What the test function needs besides the memory it holds, in MiB.
const HEADROOM_MIB: u64 = 4;
/// The budget written when the replay has none: more than any slice holds.
const NO_BUDGET: &str = "1t";
/// A call's timeout beyond its function's longest duration.
const TIMEOUT_MARGIN_S: u64 = 60;
/// A keep-alive that never ends before the budget needs the memory (`lru`,
/// `greedy-dual`): the config's longest.
const NEVER: &str = "fixed:365days";

/// Where and how the generated server runs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServeSetup {
    /// The server's address (`[server] listen`).
    pub listen: SocketAddr,
    /// The pool's name (`[pool] name`): its containers' label.
    pub pool: String,
    /// The test function's image.
    pub image: String,
    /// Trace memory is divided by this for each container (and the budget).
    pub memory_scale: f64,
}

impl Default for ServeSetup {
    /// `127.0.0.1:8080`, pool `replay-live`, `hotpool-testfn:dev`, memory
    /// divided by 16 (20 functions of 1-3 GB fit a 24 GiB machine).
    fn default() -> Self {
        ServeSetup {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            pool: "replay-live".to_owned(),
            image: "hotpool-testfn:dev".to_owned(),
            memory_scale: 16.0,
        }
    }
}

/// The served name of the trace's function `index`: its place and the start
/// of its hash, `t03-1779fd33`.
pub fn function_name(trace: &Trace, index: usize) -> String {
    let hash: String = trace.functions[index]
        .name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    format!("t{index:02}-{hash}")
}

/// The memory limit of a container of a function of `memory` bytes, in MiB.
pub(crate) fn container_mib(memory: u64, scale: f64) -> u64 {
    ((memory as f64 / scale / MIB as f64).ceil() as u64).max(MIN_CONTAINER_MIB)
}

/// The config, as TOML.
pub fn serve_config(trace: &Trace, options: &Options, setup: &ServeSetup) -> String {
    let (keep_alive, eviction) = match options.policy {
        Policy::KeepAlive(keep_alive) => (keep_alive.to_string(), "lru".to_owned()),
        Policy::NeverRemove(eviction) => (NEVER.to_owned(), eviction.to_string()),
    };
    let budget = options.memory_budget.map_or_else(
        || NO_BUDGET.to_owned(),
        |bytes| {
            format!(
                "{}m",
                (bytes as f64 / setup.memory_scale / MIB as f64) as u64
            )
        },
    );
    let mut text = format!(
        "# Written by `hotpool replay --write-config`: {} functions over {} minutes of the\n\
         # trace at speed {}, memory divided by {}. Calls carry `!sleep MS`.\n\n\
         [server]\nlisten = \"{}\"\n\n\
         [pool]\nname = \"{}\"\nmemory_budget = \"{budget}\"\nkeep_alive = \"{keep_alive}\"\n\
         eviction = \"{eviction}\"\ntransport = \"direct\"\n",
        trace.function_count(),
        trace.minutes(),
        options.speed,
        setup.memory_scale,
        setup.listen,
        setup.pool,
    );
    for (index, function) in trace.functions.iter().enumerate() {
        let mib = container_mib(function.memory, setup.memory_scale);
        let hold = mib.saturating_sub(HEADROOM_MIB);
        let longest_s = (function.durations.longest_ms() / 1000.0 / options.speed).ceil() as u64;
        write!(
            text,
            "\n[[function]]\nname = \"{}\"\nimage = \"{}\"\ncmd = [\"http\", \"--hold\", \"{hold}\"]\n\
             format = \"http\"\nmemory = \"{mib}m\"\ntimeout = \"{}s\"\n\
             max_concurrency = 10000\nmax_queue = 100000\nqueue_timeout = \"10m\"\n",
            function_name(trace, index),
            setup.image,
            longest_s + TIMEOUT_MARGIN_S,
        )
        .expect("writing to a String");
    }
    text
}
