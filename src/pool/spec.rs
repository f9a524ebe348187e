//! What a function is: its spec, its lifecycle (hot in a format, or cold), and
//! what of it makes two containers interchangeable.
//!
//! A spec splits in two ([`FunctionSpec::split`]): the [`ContainerSpec`] (image,
//! command, environment, lifecycle, memory, ...) is hashed into the version's
//! [`FunctionKey`], and a change to it starts new containers while the old ones
//! drain; the [`Limits`] (timeouts, keep-alive, concurrency, warm floor, queue,
//! logs) apply to the running containers in place.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::str::FromStr;
use std::time::Duration;

use crate::driver::Cpus;
use crate::driver::{DEFAULT_TMP_SIZE, DEFAULT_USER, Task, Transport};
use crate::format::Format;

/// How a function's containers live: each serves many calls (hot) or one
/// (cold). The config names it by its `format`: `line` or `http` for a hot
/// function in that format, `cold` for a cold one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    /// Each container serves many calls, one at a time, framed over its stdin
    /// and stdout in this format.
    Hot(Format),
    /// One container per call, and no framing: the container's life frames
    /// the call. The body is its whole stdin, closed after it; its whole
    /// stdout, until it exits, is the response (status 200, no headers).
    Cold,
}

impl Lifecycle {
    /// The name used in config (its `format`): `cold`, `line` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Hot(format) => format.as_str(),
            Lifecycle::Cold => "cold",
        }
    }

    /// Whether its containers serve many calls.
    pub fn is_hot(self) -> bool {
        self != Lifecycle::Cold
    }
}

impl From<Format> for Lifecycle {
    /// A hot function's, in `format`.
    fn from(format: Format) -> Lifecycle {
        Lifecycle::Hot(format)
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lifecycle {
    type Err = String;

    /// Parses the config's `format`: `cold`, `line` or `http`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "cold" => Ok(Lifecycle::Cold),
            "line" => Ok(Lifecycle::Hot(Format::Line)),
            "http" => Ok(Lifecycle::Hot(Format::Http)),
            other => Err(format!("{other:?} is not a format: use cold, line or http")),
        }
    }
}

/// Everything that defines a function. Build one with [`FunctionSpec::new`] and set
/// the fields to change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionSpec {
    /// The function's name (what `/invoke/{name}` uses).
    pub name: String,
    /// The image its containers run.
    pub image: String,
    /// Command and arguments; empty runs the image's default.
    pub cmd: Vec<String>,
    /// Whether its containers serve many calls or one, and in which format
    /// hot calls travel over the pipes (the config's `format`).
    pub lifecycle: Lifecycle,
    /// Memory limit of each container, in bytes (swap disabled).
    pub memory: u64,
    /// How long one call may run.
    pub timeout: Duration,
    /// When an idle hot container goes (and whether one is started before a call
    /// asks).
    pub keep_alive: KeepAlive,
    /// Which idle container goes first when another needs its memory.
    pub eviction: Eviction,
    /// The most containers (hot or cold) the function runs at once.
    pub max_concurrency: usize,
    /// The warm floor: at least this many hot containers are kept idle or
    /// starting beyond what waiting calls take, within `max_concurrency` and
    /// as far as the memory budget holds them (0, the default: none).
    pub min_idle: usize,
    /// The most calls that may wait for a busy container (calls waiting for a
    /// container being started for them do not count); more get `busy` at once.
    pub max_queue: usize,
    /// How long a call may wait for a container before it gets `busy`.
    pub queue_timeout: Duration,
    /// Environment variables of its containers.
    pub env: BTreeMap<String, String>,
    /// Network mode; `None`: no network.
    pub network: Option<String>,
    /// CPU quota of each container.
    pub cpus: Cpus,
    /// The user its processes run as: `uid[:gid]` (a bare uid runs with gid =
    /// uid) or a name from the image.
    pub user: String,
    /// Size of the tmpfs at `/tmp`, in bytes (it counts against `memory`).
    pub tmp_size: u64,
    /// Whether the root filesystem is read-only, leaving `/tmp` the only place to
    /// write.
    pub read_only: bool,
    /// How call bytes reach its containers: the engine's attach streams, or
    /// pipes shared with the container (`direct`, the engine off the path).
    pub transport: Transport,
    /// The most stderr bytes one call may log; more is dropped with one record saying how much.
    pub log_per_call: u64,
    /// The most stderr bytes per second a container may log (a token bucket); more is dropped.
    pub log_rate: u64,
}

impl FunctionSpec {
    /// A spec with the defaults: hot in the `line` format, 128 MiB, 30 s timeout, 60 s idle
    /// timeout, 4 containers, 100 queued calls waiting at most 10 s, no network,
    /// one CPU, user `1000:1000`, a read-only root with a 64 MiB `/tmp`, and logs
    /// of at most 1 MiB per call and 256 KiB/s per container.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            image: image.into(),
            cmd: Vec::new(),
            lifecycle: Lifecycle::Hot(Format::Line),
            memory: 128 << 20,
            timeout: Duration::from_secs(30),
            keep_alive: KeepAlive::default(),
            eviction: Eviction::default(),
            max_concurrency: 4,
            min_idle: 0,
            max_queue: 100,
            queue_timeout: Duration::from_secs(10),
            env: BTreeMap::new(),
            network: None,
            cpus: Cpus::ONE,
            user: DEFAULT_USER.to_owned(),
            tmp_size: DEFAULT_TMP_SIZE,
            read_only: true,
            transport: Transport::Direct,
            log_per_call: 1 << 20,
            log_rate: 256 << 10,
        }
    }

    /// The key of its version: its name and its container spec. Equal keys,
    /// interchangeable containers.
    pub fn key(&self) -> FunctionKey {
        self.clone().split().1.key(&self.name)
    }

    /// The driver task for one of its containers, named `<name>-<id>`, with every
    /// setting the pool gives its own (the pool adds its label).
    pub fn task(&self, id: &str) -> Task {
        self.clone().split().1.task(&self.name, id)
    }

    /// Its name, what makes its containers (hashed into its key), and its limits.
    /// Every field is named here, so a new one must be sorted into one of the two.
    pub(crate) fn split(self) -> (String, ContainerSpec, Limits) {
        let FunctionSpec {
            name,
            image,
            cmd,
            lifecycle,
            memory,
            timeout,
            keep_alive,
            eviction,
            max_concurrency,
            min_idle,
            max_queue,
            queue_timeout,
            env,
            network,
            cpus,
            user,
            tmp_size,
            read_only,
            transport,
            log_per_call,
            log_rate,
        } = self;
        let container = ContainerSpec {
            image,
            cmd,
            lifecycle,
            memory,
            env,
            network,
            cpus,
            user,
            tmp_size,
            read_only,
            transport,
        };
        let limits = Limits {
            timeout,
            keep_alive,
            eviction,
            max_concurrency,
            min_idle,
            max_queue,
            queue_timeout,
            log_per_call,
            log_rate,
        };
        (name, container, limits)
    }
}

/// What makes a function's containers: two versions with equal container specs
/// share their containers.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ContainerSpec {
    pub(crate) image: String,
    pub(crate) cmd: Vec<String>,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) memory: u64,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) network: Option<String>,
    pub(crate) cpus: Cpus,
    pub(crate) user: String,
    pub(crate) tmp_size: u64,
    pub(crate) read_only: bool,
    pub(crate) transport: Transport,
}

/// Written as the derived `Debug` of the spec was while a cold function's
/// format was a third [`Format`] (`format: Line`, `Http` or `Cold`): the
/// fingerprint hashes this text, and containers of earlier builds keep theirs.
impl fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ContainerSpec {
            image,
            cmd,
            lifecycle,
            memory,
            env,
            network,
            cpus,
            user,
            tmp_size,
            read_only,
            transport,
        } = self;
        let format = match lifecycle {
            Lifecycle::Hot(Format::Line) => "Line",
            Lifecycle::Hot(Format::Http) => "Http",
            Lifecycle::Cold => "Cold",
        };
        f.debug_struct("ContainerSpec")
            .field("image", image)
            .field("cmd", cmd)
            .field("format", &format_args!("{format}"))
            .field("memory", memory)
            .field("env", env)
            .field("network", network)
            .field("cpus", cpus)
            .field("user", user)
            .field("tmp_size", tmp_size)
            .field("read_only", read_only)
            .field("transport", transport)
            .finish()
    }
}

impl ContainerSpec {
    /// The driver task for one container of function `name`, known to the driver
    /// as `id`: the same for hot containers, cold calls and the bench's floors.
    pub(crate) fn task(&self, name: &str, id: &str) -> Task {
        let mut task = Task::new(format!("{name}-{id}"), name, self.image.clone());
        task.command = self.cmd.clone();
        task.env = self.env.clone();
        task.memory = self.memory;
        task.network = self.network.clone();
        task.cpus = self.cpus;
        task.user = self.user.clone();
        task.tmp_size = self.tmp_size;
        task.read_only = self.read_only;
        task.transport = self.transport;
        task
    }

    /// A fingerprint of function `name`'s containers with this spec, stable
    /// across runs and builds of one layout of hotpool's containers: a new
    /// owner takes over only a container whose fingerprint it would give.
    pub(crate) fn fingerprint(&self, name: &str) -> String {
        use sha2::{Digest, Sha256};
        // Bumped when what runs in a container changes its meaning (the
        // init's protocol, the pipes): containers of an older layout are
        // never taken over.
        const LAYOUT: u32 = 1;
        let digest = Sha256::digest(format!("{LAYOUT}\n{name}\n{self:?}"));
        digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// The key of function `name`'s version with this container spec.
    pub(crate) fn key(&self, name: &str) -> FunctionKey {
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        self.hash(&mut hasher);
        FunctionKey(hasher.finish())
    }
}

/// What applies to a function's running containers without replacing them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) keep_alive: KeepAlive,
    pub(crate) eviction: Eviction,
    pub(crate) max_concurrency: usize,
    pub(crate) min_idle: usize,
    pub(crate) max_queue: usize,
    pub(crate) queue_timeout: Duration,
    pub(crate) log_per_call: u64,
    pub(crate) log_rate: u64,
}

/// The key of a function version (its name and container spec), shown by [`super::Pool::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey(u64);

/// The keep-alive policy of a function: when an idle container goes, and
/// whether one is started before a call asks (a prewarm). Written `fixed:10m`,
/// `histogram` or `adaptive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeepAlive {
    /// An idle container goes after this long idle (the default: 60 s).
    Fixed {
        /// How long a hot container may sit idle.
        idle_timeout: Duration,
    },
    /// The hybrid histogram policy of "Serverless in the Wild" (ATC 2020): from
    /// the histogram of the function's idle times, unload after a call, prewarm
    /// at the 5th percentile and keep until the 99th; a fixed 10 minutes while
    /// the histogram is not representative.
    Histogram,
    /// hotpool's own: learns when each idle container is likely to be used again
    /// and keeps it while that is worth its memory; starts containers ahead of
    /// a busy function's calls when its recent rates forecast more arrivals
    /// than returns; prewarms before calls that come at regular intervals once
    /// their container was let go. Written
    /// `adaptive`, or `adaptive:GB_S` with what one cold start is worth in idle
    /// memory (GB-seconds; default 3000).
    Adaptive {
        /// What one cold start is worth in idle memory, in thousandths of a
        /// GB-second.
        cold_start_mgb_s: u64,
    },
}

impl KeepAlive {
    /// [`KeepAlive::Adaptive`] with a cold start worth 3000 GB-seconds of idle
    /// memory (fifty minutes of a 1 GiB container).
    pub const ADAPTIVE: KeepAlive = KeepAlive::Adaptive {
        cold_start_mgb_s: 3_000_000,
    };

    /// [`KeepAlive::Fixed`] with `idle_timeout`.
    pub fn fixed(idle_timeout: Duration) -> KeepAlive {
        KeepAlive::Fixed { idle_timeout }
    }
}

impl fmt::Display for KeepAlive {
    /// `fixed:60s`, `histogram`, `adaptive`, `adaptive:0.5`: the policy, and its
    /// parameters after a colon.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAlive::Fixed { idle_timeout } => {
                write!(f, "fixed:{}", humantime::format_duration(*idle_timeout))
            }
            KeepAlive::Histogram => f.write_str("histogram"),
            KeepAlive::Adaptive { .. } if *self == KeepAlive::ADAPTIVE => f.write_str("adaptive"),
            KeepAlive::Adaptive { cold_start_mgb_s } => {
                let whole = cold_start_mgb_s / 1000;
                let thousandths = format!("{:03}", cold_start_mgb_s % 1000);
                match thousandths.trim_end_matches('0') {
                    "" => write!(f, "adaptive:{whole}"),
                    fraction => write!(f, "adaptive:{whole}.{fraction}"),
                }
            }
        }
    }
}

impl FromStr for KeepAlive {
    type Err = String;

    /// Parses what [`fmt::Display`] writes; the duration of `fixed:` as in
    /// `humantime` (`90s`, `10m`, `1h 30m`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "histogram" => Ok(KeepAlive::Histogram),
            "adaptive" => Ok(KeepAlive::ADAPTIVE),
            other if other.starts_with("adaptive:") => {
                let worth = &other["adaptive:".len()..];
                let gb_s: f64 = worth
                    .parse()
                    .ok()
                    .filter(|gb_s: &f64| gb_s.is_finite() && *gb_s >= 0.001 && *gb_s <= 1e9)
                    .ok_or_else(|| {
                        format!("{worth:?} is not a number of GB-seconds from 0.001 to 1e9")
                    })?;
                Ok(KeepAlive::Adaptive {
                    cold_start_mgb_s: (gb_s * 1000.0).round() as u64,
                })
            }
            other => match other.strip_prefix("fixed:") {
                Some(duration) => humantime::parse_duration(duration)
                    .map(KeepAlive::fixed)
                    .map_err(|e| format!("{duration:?} is not a duration: {e}")),
                None => Err(format!(
                    "{other:?} is not a keep-alive policy: use fixed:DURATION, histogram or adaptive"
                )),
            },
        }
    }
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive::fixed(Duration::from_secs(60))
    }
}

/// Which idle container goes first when another container needs its memory.
/// Written `lru` or `greedy-dual`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Eviction {
    /// The least recently used, over every function of the pool.
    #[default]
    LeastRecentlyUsed,
    /// GreedyDual: the one whose calls served, times its start cost, per byte, is
    /// lowest, aged by a clock (FaasCache, ASPLOS 2021).
    GreedyDual,
}

impl fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for Eviction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Eviction::LeastRecentlyUsed => "lru",
            Eviction::GreedyDual => "greedy-dual",
        })
    }
}

impl FromStr for Eviction {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "lru" => Ok(Eviction::LeastRecentlyUsed),
            "greedy-dual" => Ok(Eviction::GreedyDual),
            other => Err(format!(
                "{other:?} is not an eviction policy: use lru or greedy-dual"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_container_field_changes_the_key() {
        let base = FunctionSpec::new("echo", "img");
        let mut env = base.clone();
        env.env.insert("A".into(), "1".into());
        let mut memory = base.clone();
        memory.memory += 1;
        let mut format = base.clone();
        format.lifecycle = Format::Http.into();
        let mut cold = base.clone();
        cold.lifecycle = Lifecycle::Cold;
        let mut cpus = base.clone();
        cpus.cpus = "0.5".parse().unwrap();
        let mut user = base.clone();
        user.user = "0".into();
        let mut tmp_size = base.clone();
        tmp_size.tmp_size += 1;
        let mut read_only = base.clone();
        read_only.read_only = false;
        let mut transport = base.clone();
        transport.transport = Transport::Attach;
        assert_eq!(base.key(), base.clone().key());
        for changed in [
            env, memory, format, cold, cpus, user, tmp_size, read_only, transport,
        ] {
            assert_ne!(base.key(), changed.key());
        }
    }

    #[test]
    fn limits_leave_the_key_alone_and_the_name_does_not() {
        let base = FunctionSpec::new("echo", "img");
        let mut renamed = base.clone();
        renamed.name = "other".into();
        assert_ne!(base.key(), renamed.key());
        let mut limits = base.clone();
        limits.timeout = Duration::from_secs(1);
        limits.keep_alive = KeepAlive::fixed(Duration::from_secs(1));
        limits.max_concurrency = 99;
        limits.min_idle = 2;
        limits.max_queue = 0;
        limits.queue_timeout = Duration::from_secs(1);
        limits.log_per_call = 1;
        limits.log_rate = 1;
        assert_eq!(base.key(), limits.key());
    }

    #[test]
    fn policies_parse_what_they_display() {
        for text in [
            "fixed:10m",
            "fixed:1h 30m",
            "histogram",
            "adaptive",
            "adaptive:0.5",
        ] {
            let policy: KeepAlive = text.parse().unwrap();
            assert_eq!(policy.to_string().parse::<KeepAlive>(), Ok(policy));
        }
        assert_eq!(
            "fixed:90s".parse(),
            Ok(KeepAlive::fixed(Duration::from_secs(90)))
        );
        assert!(
            "fixed:soon"
                .parse::<KeepAlive>()
                .unwrap_err()
                .contains("duration")
        );
        assert!(
            "lazy"
                .parse::<KeepAlive>()
                .unwrap_err()
                .contains("adaptive")
        );
        for text in ["lru", "greedy-dual"] {
            assert_eq!(text.parse::<Eviction>().unwrap().to_string(), text);
        }
        assert!("fifo".parse::<Eviction>().is_err());
    }

    #[test]
    fn fingerprints_are_those_of_earlier_builds() {
        // Pinned: a new owner takes over a hot container only if its
        // fingerprint is the one the container's owner gave it.
        let mut echo = FunctionSpec::new("echo", "img");
        echo.cmd = vec!["line".into()];
        let (name, container, _) = echo.clone().split();
        assert_eq!(container.fingerprint(&name), "b0e610033dc4d365");
        echo.lifecycle = Format::Http.into();
        let (name, container, _) = echo.split();
        assert_eq!(container.fingerprint(&name), "2b5be29a63714403");
    }

    #[test]
    fn lifecycles_parse_from_the_format_they_display() {
        for lifecycle in [
            Lifecycle::Cold,
            Lifecycle::Hot(Format::Line),
            Lifecycle::Hot(Format::Http),
        ] {
            assert_eq!(lifecycle.to_string().parse(), Ok(lifecycle));
        }
        assert_eq!("http".parse(), Ok(Lifecycle::Hot(Format::Http)));
        assert_eq!("cold".parse(), Ok(Lifecycle::Cold));
        assert!(
            "grpc"
                .parse::<Lifecycle>()
                .unwrap_err()
                .contains("cold, line or http")
        );
    }
}
