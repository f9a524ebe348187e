//! What a function is: its spec, the format it speaks, and the key pools use.
//!
//! Pools are keyed by the hash of the whole spec: change any field and new calls
//! go to new containers while the old ones drain.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::str::FromStr;
use std::time::Duration;

/// How requests and responses travel over a container's stdin and stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// One container per call: the body on stdin, stdin closed, stdout until exit.
    Cold,
    /// Hot: one request line in, one response line out.
    Line,
    /// Hot: HTTP/1.1 messages with Content-Length bodies over stdin/stdout.
    Http,
}

impl Format {
    /// The name used in config: `cold`, `line`, `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Cold => "cold",
            Format::Line => "line",
            Format::Http => "http",
        }
    }

    /// Whether containers of this format serve many calls.
    pub fn is_hot(self) -> bool {
        self != Format::Cold
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "cold" => Ok(Format::Cold),
            "line" => Ok(Format::Line),
            "http" => Ok(Format::Http),
            other => Err(format!("{other:?} is not a format: use cold, line or http")),
        }
    }
}

/// Everything that defines a function. Two specs that differ in any field are two
/// pools.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionSpec {
    /// The function's name (what `/invoke/{name}` uses).
    pub name: String,
    /// The image its containers run.
    pub image: String,
    /// Command and arguments; empty runs the image's default.
    pub cmd: Vec<String>,
    /// How calls travel over the pipes.
    pub format: Format,
    /// Memory limit of each container, in bytes (swap disabled).
    pub memory: u64,
    /// How long one call may run.
    pub timeout: Duration,
    /// How long a hot container may sit idle before it is removed.
    pub idle_timeout: Duration,
    /// The most containers (hot or cold) the function runs at once.
    pub max_concurrency: usize,
    /// The most calls that may wait for a busy container (calls waiting for a
    /// container being started for them do not count); more get `busy` at once.
    pub max_queue: usize,
    /// How long a call may wait for a container before it gets `busy`.
    pub queue_timeout: Duration,
    /// Environment variables of its containers.
    pub env: BTreeMap<String, String>,
    /// Network mode; `None`: no network.
    pub network: Option<String>,
    /// The most stderr bytes one call may log; more is dropped with one record saying how much.
    pub log_per_call: u64,
    /// The most stderr bytes per second a container may log (a token bucket); more is dropped.
    pub log_rate: u64,
}

impl FunctionSpec {
    /// A spec with the defaults: `line` format, 128 MiB, 30 s timeout, 60 s idle
    /// timeout, 4 containers, 100 queued calls waiting at most 10 s, no network.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            image: image.into(),
            cmd: Vec::new(),
            format: Format::Line,
            memory: 128 << 20,
            timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_concurrency: 4,
            max_queue: 100,
            queue_timeout: Duration::from_secs(10),
            env: BTreeMap::new(),
            network: None,
            log_per_call: 1 << 20,
            log_rate: 256 << 10,
        }
    }

    /// The key of this exact spec.
    pub fn key(&self) -> FunctionKey {
        let mut hasher = DefaultHasher::new();
        self.hash(&mut hasher);
        FunctionKey(hasher.finish())
    }
}

/// The hash of a whole [`FunctionSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey(pub u64);

impl fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_field_changes_the_key() {
        let base = FunctionSpec::new("echo", "img");
        let mut env = base.clone();
        env.env.insert("A".into(), "1".into());
        let mut memory = base.clone();
        memory.memory += 1;
        let mut format = base.clone();
        format.format = Format::Http;
        assert_eq!(base.key(), base.clone().key());
        for changed in [env, memory, format] {
            assert_ne!(base.key(), changed.key());
        }
    }

    #[test]
    fn formats_parse() {
        assert_eq!("http".parse(), Ok(Format::Http));
        assert!(
            "grpc"
                .parse::<Format>()
                .unwrap_err()
                .contains("cold, line or http")
        );
    }
}
