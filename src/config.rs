//! The TOML config of `hotpool serve`: where to listen, the pool's limits, and the
//! functions it serves.
//!
//! Reading takes two steps. serde reads the text into the tables as written
//! (`[server]`, `[pool]`, `[[function]]`; every key optional, unknown keys denied),
//! each value into a small type that checks it alone, bounds included: sizes
//! (`"64m"`) and durations (`"5s"`) are strings in [`crate::units`] syntax,
//! `Size<MIN, MAX>` and `Count<MIN, MAX>` carry their bounds. Then one validation
//! pass fills in the defaults and checks what one value cannot say alone: required
//! keys, memory within the budget, unique names, at least one function. Either way
//! the error names the key path (`server.listen`, `pool.memory_budget`,
//! `function "echo" (function[1]).memory`, the function by its name once it has a
//! valid one) and the reason, on one line; a misspelt key gets the nearest key
//! allowed there, if one is close. A TOML syntax error names no key but the line
//! and column. See `examples/hotpool.toml`, which shows every key.
//!
//! The defaults are the library's, `PoolConfig::default()` and
//! `FunctionSpec::new`, but for the pool's name, `serve` (`DEFAULT_POOL_NAME`
//! says why), and the keep-alive policy, `adaptive` (`DEFAULT_KEEP_ALIVE`); the
//! server's are [`ServerConfig::default`]. `[pool]`'s `keep_alive`, `eviction`,
//! `min_idle` and `transport` are not the pool's settings but every function's:
//! they are written into each spec (`min_idle` into each hot function's), so a
//! reload applies them like any other setting.
//!
//! Every value is bounded, so a config that loads never panics or fails later:
//! timeouts up to 24 h (an idle timeout, `fixed:` keep-alive included, up to 365
//! days), counts and request and response sizes within sane maxima. What
//! depends on the engine (its minimum memory, whether it can attach) is checked
//! once it is known: [`ServeConfig::check_engine`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::units::{
    MAX_TIMEOUT, bytes_at_least, duration_within, parse_bytes, parse_duration, parse_user,
    show_bytes,
};
use hotpool::driver::{Cpus, Transport};
use hotpool::driver::{EngineChoice, EngineKind, EngineTraits, MIN_TMP_SIZE};
use hotpool::pool::{Eviction, FunctionSpec, KeepAlive, Lifecycle, PoolConfig};

/// The pool's name when `[pool]` gives none, so its containers are labelled
/// `hotpool.pool=serve`. The one default that is not the library's
/// (`PoolConfig::default()` names a pool `hotpool`): a server and an embedder
/// on one engine, each with its default, do not remove each other's containers
/// as leftovers.
const DEFAULT_POOL_NAME: &str = "serve";
/// The keep-alive policy of a function that names none, when `[pool]` names
/// none either. Not the library's (`FunctionSpec::new` keeps a fixed 60 s): a
/// server learns each function's calls and keeps containers by what it learned.
const DEFAULT_KEEP_ALIVE: KeepAlive = KeepAlive::ADAPTIVE;
/// The longest a hot container may be kept idle: a year.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// The largest request body or response that may be allowed: 1 GiB.
const MAX_MESSAGE_SIZE: u64 = 1 << 30;
/// The most containers one function may run at once.
const MAX_CONCURRENCY: usize = 10_000;
/// The most calls that may wait for one function.
const MAX_QUEUE: usize = 1_000_000;
/// The largest streamed response that may be allowed: 1 TiB.
const MAX_STREAM_SIZE: u64 = 1 << 40;
/// The largest store of recent calls' logs that may be allowed: 16 GiB.
const MAX_CALL_LOGS: u64 = 16 << 30;
/// The most client connections the server may be allowed at once.
const MAX_CONNECTIONS: usize = 1_000_000;
/// The most stats points that may be kept per call.
const MAX_STATS_POINTS: usize = 100_000;

/// Everything `hotpool serve` reads from its config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The HTTP server (`[server]`).
    pub server: ServerConfig,
    /// The pool's settings (`[pool]`, and `server.max_response` as
    /// `max_response_bytes`, `server.call_logs` as `call_logs_bytes`).
    pub pool: PoolConfig,
    /// The container engine (`[engine]`): read at start only.
    pub engine: EngineChoice,
    /// The functions served (`[[function]]`), in the order written; at least one,
    /// with unique names.
    pub functions: Vec<FunctionSpec>,
}

/// The `[server]` table: the HTTP server's address and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The address to listen on (`listen`, default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// The largest request body accepted, in bytes (`max_body`, default `6m`, at
    /// most `1g`).
    pub max_body: u64,
    /// The largest response a function may return, in bytes (`max_response`,
    /// default the pool's `max_response_bytes`, `6m`; at most `1g`).
    pub max_response: u64,
    /// The most body bytes a streamed (chunked) response, or request into an
    /// `http` function, may carry (`max_stream`, default the pool's
    /// `max_stream_bytes`, `4g`; at most `1t`).
    pub max_stream: u64,
    /// The longest a streamed response may be silent between two pieces
    /// (`stream_idle_timeout`, default `30s`).
    pub stream_idle_timeout: Duration,
    /// The most bytes the logs of recent calls may hold for `GET /calls/{id}/log`
    /// (`call_logs`, default the pool's `call_logs_bytes`, `64m`; `0` keeps none;
    /// at most `16g`).
    pub call_logs: u64,
    /// How long a client may take to send a request head (`header_timeout`,
    /// default `10s`).
    pub header_timeout: Duration,
    /// How long a client may take to send a request body (`body_timeout`, default
    /// `30s`).
    pub body_timeout: Duration,
    /// The most client connections open at once (`max_connections`, default 512).
    pub max_connections: usize,
    /// A file of bearer tokens, one per line, that callers must present
    /// (`auth_tokens_file`; absent: no authentication).
    pub auth_tokens_file: Option<PathBuf>,
    /// Whether `/metrics` needs a token too (`metrics_auth`, default false; needs
    /// `auth_tokens_file`).
    pub metrics_auth: bool,
}

impl Default for ServerConfig {
    /// Listen on `127.0.0.1:8080`, bodies up to 6 MiB, responses and call logs up
    /// to the pool's defaults, 10 s for a request head and 30 s for its body, 512 connections, no
    /// authentication.
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body: 6 << 20,
            max_response: PoolConfig::default().max_response_bytes as u64,
            max_stream: PoolConfig::default().max_stream_bytes as u64,
            stream_idle_timeout: PoolConfig::default().stream_idle_timeout,
            call_logs: PoolConfig::default().call_logs_bytes,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
            auth_tokens_file: None,
            metrics_auth: false,
        }
    }
}

/// A config that cannot be used: the key path of the bad value and why.
///
/// Displays as `<key>: <reason>`, e.g.
/// `function "echo" (function[1]).memory: "12q" has an unknown unit "q": use b, k, m, g
/// or t`. Errors that are not about one key (TOML syntax, an unreadable file) have
/// no key and display as the reason alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    key: Option<String>,
    reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl ConfigError {
    /// An error about the value at `key`.
    fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: Some(key.into()),
            reason: reason.into(),
        }
    }

    /// An error about the file as a whole: its syntax, or reading it.
    fn whole(reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: None,
            reason: reason.into(),
        }
    }
}

/// How errors name `function[index]`: by its name too when it has a valid one,
/// `function "echo" (function[4])`, else by its index alone, `function[4]`.
fn function_path(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("function {name:?} (function[{index}])"),
        None => format!("function[{index}]"),
    }
}

impl ServeConfig {
    /// Parses and checks a config.
    pub fn from_toml(text: &str) -> Result<ServeConfig, ConfigError> {
        let document = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::whole(syntax_error(text, &e)))?;
        let file: ConfigFile =
            serde_path_to_error::deserialize(document).map_err(|e| read_error(text, e))?;
        file.validate()
    }

    /// Reads and parses the config file at `path`; an unreadable file is an error
    /// naming the path.
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = fs::read_to_string(path).map_err(|e| {
            ConfigError::whole(format!("cannot read config {}: {e}", path.display()))
        })?;
        ServeConfig::from_toml(&text)
    }

    /// The keys read at start only whose values differ in `new`, as key paths
    /// (`server.listen`, `pool.name`), in the order of the file. `[pool]`'s
    /// `keep_alive`, `eviction`, `min_idle` and `transport` are not among them:
    /// they are in every function's spec.
    pub fn start_only_changes(&self, new: &ServeConfig) -> Vec<&'static str> {
        // Every field of [server] named, so a new one cannot be forgotten here;
        // for [pool]'s, a test goes through every key the config accepts.
        let ServerConfig {
            listen,
            max_body,
            max_response,
            max_stream,
            stream_idle_timeout,
            call_logs,
            header_timeout,
            body_timeout,
            max_connections,
            auth_tokens_file,
            metrics_auth,
        } = &self.server;
        let (server, pool, new_pool) = (&new.server, &self.pool, &new.pool);
        [
            ("server.listen", *listen != server.listen),
            ("server.max_body", *max_body != server.max_body),
            ("server.max_response", *max_response != server.max_response),
            ("server.max_stream", *max_stream != server.max_stream),
            (
                "server.stream_idle_timeout",
                *stream_idle_timeout != server.stream_idle_timeout,
            ),
            ("server.call_logs", *call_logs != server.call_logs),
            (
                "server.header_timeout",
                *header_timeout != server.header_timeout,
            ),
            ("server.body_timeout", *body_timeout != server.body_timeout),
            (
                "server.max_connections",
                *max_connections != server.max_connections,
            ),
            (
                "server.auth_tokens_file",
                *auth_tokens_file != server.auth_tokens_file,
            ),
            ("server.metrics_auth", *metrics_auth != server.metrics_auth),
            ("pool.name", pool.name != new_pool.name),
            (
                "pool.memory_budget",
                pool.memory_budget != new_pool.memory_budget,
            ),
            (
                "pool.shutdown_timeout",
                pool.shutdown_timeout != new_pool.shutdown_timeout,
            ),
            (
                "pool.stats_max_points",
                pool.stats_max_points != new_pool.stats_max_points,
            ),
            (
                "pool.orphan_timeout",
                pool.orphan_timeout != new_pool.orphan_timeout,
            ),
            (
                "pool.removal_timeout",
                pool.removal_timeout != new_pool.removal_timeout,
            ),
            ("engine.kind", self.engine.kind != new.engine.kind),
            ("engine.socket", self.engine.socket != new.engine.socket),
            (
                "engine.namespace",
                self.engine.namespace != new.engine.namespace,
            ),
            (
                "engine.snapshotter",
                self.engine.snapshotter != new.engine.snapshotter,
            ),
            (
                "engine.group_size",
                self.engine.group_size != new.engine.group_size,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Checks every function against what the engine accepts (its minimum
    /// memory, its transports): the first one it refuses is the error, naming
    /// the key.
    pub fn check_engine(&self, engine: &EngineTraits) -> Result<(), ConfigError> {
        for (index, spec) in self.functions.iter().enumerate() {
            let function = function_path(index, Some(&spec.name));
            if let Some(reason) = engine.refuses(spec.memory, Transport::Direct) {
                return Err(ConfigError::new(format!("{function}.memory"), reason));
            }
            if let Some(reason) = engine.refuses(0, spec.transport) {
                return Err(ConfigError::new(format!("{function}.transport"), reason));
            }
        }
        Ok(())
    }

    /// Checks that every function's memory fits `budget`, the memory budget of a
    /// pool already running (a new `pool.memory_budget` waits for a restart).
    pub fn check_memory_within(&self, budget: u64) -> Result<(), ConfigError> {
        let Some((index, spec)) =
            (self.functions.iter().enumerate()).find(|(_, spec)| spec.memory > budget)
        else {
            return Ok(());
        };
        Err(ConfigError::new(
            format!("{}.memory", function_path(index, Some(&spec.name))),
            format!(
                "{} is more than the running pool's memory_budget ({}); a new \
                 pool.memory_budget takes effect at the next start",
                show_bytes(spec.memory),
                show_bytes(budget)
            ),
        ))
    }
}

/// A TOML syntax error on one line: `line L, column C: <reason>` (the caller
/// names the file).
fn syntax_error(text: &str, error: &toml::de::Error) -> String {
    let reason = error.message().lines().collect::<Vec<_>>().join("; ");
    let Some(span) = error.span() else {
        return reason;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    format!("line {line}, column {column}: {reason}")
}

/// A value serde could not read: its path, and the reason in the config's words.
/// serde says `invalid type: integer `64`, expected a string in quotes`; the
/// config says `expected a string in quotes, found integer 64`, in TOML's names
/// for what was found. An unknown field is an `unknown key` (the path names it),
/// with the nearest allowed key if one is close, and `invalid length` means an
/// array where a table belongs (serde's derived structs read arrays too, field by
/// field). A function in the path is named as [`function_path`] names it, its name
/// read from `text`.
fn read_error(text: &str, error: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let message = error.inner().message();
    let found_expected = |prefix: &str| {
        let rest = message.strip_prefix(prefix)?;
        rest.rsplit_once(", expected ")
    };
    let reason = if let Some(unknown) = unknown_key(message) {
        unknown
    } else if let Some((found, expected)) = found_expected("invalid type: ") {
        format!("expected {expected}, found {}", toml_name(found))
    } else if let Some((_, expected)) = found_expected("invalid length ") {
        format!("expected {expected}, found an array")
    } else {
        message.to_owned()
    };
    match key_path(text, error.path()) {
        Some(key) => ConfigError::new(key, reason),
        None => ConfigError::whole(reason),
    }
}

/// The key path of `path`, its function named by [`function_path`]; `None` for
/// the file itself.
fn key_path(text: &str, path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let shown = path.to_string();
    if shown == "." {
        return None;
    }
    let mut segments = path.iter();
    if let (Some(Segment::Map { key }), Some(Segment::Seq { index })) =
        (segments.next(), segments.next())
        && key == "function"
    {
        let in_function = shown.strip_prefix(&function_path(*index, None));
        if let (Some(name), Some(in_function)) = (function_name(text, *index), in_function) {
            return Some(format!(
                "{}{in_function}",
                function_path(*index, Some(&name))
            ));
        }
    }
    Some(shown)
}

/// The name of `function[index]` in `text`, if it has a valid one. Read from the
/// document as parsed, not as TOML values, which would reject the very numbers a
/// bad value may hold (an integer beyond i64).
fn function_name(text: &str, index: usize) -> Option<String> {
    let file = toml::de::DeTable::parse(text).ok()?;
    let function = file.get_ref().get("function")?.get_ref().get(index)?;
    let name = function.get_ref().get("name")?.get_ref().as_str()?;
    Name::try_from(Quoted(name.to_owned()))
        .ok()
        .map(|name| name.0)
}

/// serde's `unknown field `timout`, expected one of `name`, ...` as `unknown key`,
/// with ``did you mean `timeout`?`` when one of the keys allowed there (the ones
/// serde lists) is close; `None` for another message.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let suggestion = rest
        .rsplit_once("`, expected ")
        .and_then(|(typed, expected)| nearest_key(typed, &listed_keys(expected)));
    Some(match suggestion {
        Some(key) => format!("unknown key, did you mean `{key}`?"),
        None => "unknown key".to_owned(),
    })
}

/// The keys in serde's list of expected fields: `one of `a`, `b`, `c``,
/// `` `a` or `b` `` or `` `a` ``.
fn listed_keys(expected: &str) -> Vec<&str> {
    expected.split('`').skip(1).step_by(2).collect()
}

/// The key of `allowed` nearest to `typed`, ignoring case, if it is within a third
/// of `typed`'s length in edits (at least 1, at most 2); the first listed wins a tie.
fn nearest_key<'a>(typed: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let typed = typed.to_lowercase();
    let most = (typed.chars().count() / 3).clamp(1, 2);
    (allowed.iter())
        .map(|key| (edit_distance(&typed, key), *key))
        .filter(|(distance, _)| *distance <= most)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, key)| key)
}

/// The fewest one-character insertions, deletions, substitutions and swaps of
/// neighbours that turn `a` into `b` (the optimal string alignment distance).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // rows[i][j]: the distance between a[..i] and b[..j].
    let mut rows = vec![vec![0; b.len() + 1]; a.len() + 1];
    rows[0] = (0..=b.len()).collect();
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = rows[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut distance = substitution.min(rows[i - 1][j] + 1).min(rows[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                distance = distance.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = distance;
        }
    }
    rows[a.len()][b.len()]
}

/// What serde found, as TOML names it: `integer 64`, `float 1.5`, `string "x"`,
/// `a table`, `an array`.
fn toml_name(found: &str) -> String {
    match found {
        "map" => "a table".to_owned(),
        "sequence" => "an array".to_owned(),
        found if found.starts_with("string ") => found.to_owned(),
        scalar => scalar
            .replacen("floating point", "float", 1)
            .replace('`', ""),
    }
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    server: ServerTable,
    #[serde(default)]
    pool: PoolTable,
    #[serde(default)]
    engine: EngineTable,
    #[serde(default)]
    function: Functions,
}

/// `[server]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([server])")]
struct ServerTable {
    listen: Option<Listen>,
    max_body: Option<Size<1, MAX_MESSAGE_SIZE>>,
    max_response: Option<Size<1, MAX_MESSAGE_SIZE>>,
    max_stream: Option<Size<1, MAX_STREAM_SIZE>>,
    stream_idle_timeout: Option<Timeout>,
    call_logs: Option<Size<0, MAX_CALL_LOGS>>,
    header_timeout: Option<Timeout>,
    body_timeout: Option<Timeout>,
    max_connections: Option<Count<1, MAX_CONNECTIONS>>,
    auth_tokens_file: Option<NonEmpty>,
    metrics_auth: Option<Flag>,
}

/// `[pool]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([pool])")]
struct PoolTable {
    name: Option<Name>,
    memory_budget: Option<Size<1>>,
    shutdown_timeout: Option<GracePeriod>,
    stats_max_points: Option<Count<0, MAX_STATS_POINTS>>,
    orphan_timeout: Option<Timeout>,
    removal_timeout: Option<Timeout>,
    keep_alive: Option<KeepAlivePolicy>,
    eviction: Option<EvictionPolicy>,
    min_idle: Option<Count<0, MAX_CONCURRENCY>>,
    transport: Option<TransportName>,
}

/// `[engine]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([engine])")]
struct EngineTable {
    kind: Option<EngineName>,
    socket: Option<NonEmpty>,
    namespace: Option<NonEmpty>,
    snapshotter: Option<NonEmpty>,
    group_size: Option<Count<1, MAX_GROUP_SIZE>>,
}

/// The most containers `[engine] group_size` may put under one shim.
const MAX_GROUP_SIZE: usize = 1024;

impl EngineTable {
    /// The choice; containerd's own keys are refused for Docker.
    fn validate(self) -> Result<EngineChoice, ConfigError> {
        let mut choice = EngineChoice::default();
        choice.kind = self.kind.map(|EngineName(kind)| kind);
        choice.socket = self.socket.map(|NonEmpty(path)| PathBuf::from(path));
        choice.namespace = self.namespace.map(|NonEmpty(namespace)| namespace);
        choice.snapshotter = self.snapshotter.map(|NonEmpty(snapshotter)| snapshotter);
        choice.group_size = self.group_size.map(|Count(size)| size);
        if choice.kind != Some(EngineKind::Containerd) {
            let containerd_only = [
                ("engine.namespace", choice.namespace.is_some()),
                ("engine.snapshotter", choice.snapshotter.is_some()),
                ("engine.group_size", choice.group_size.is_some()),
            ];
            if let Some((key, _)) = containerd_only.iter().find(|(_, set)| *set) {
                return Err(ConfigError::new(
                    *key,
                    "is containerd's: set engine.kind = \"containerd\" with it",
                ));
            }
        }
        Ok(choice)
    }
}

/// One `[[function]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct FunctionTable {
    name: Option<Name>,
    image: Option<NonEmpty>,
    cmd: Option<Command>,
    format: Option<FormatName>,
    memory: Option<Size<1>>,
    timeout: Option<Timeout>,
    idle_timeout: Option<IdleTimeout>,
    keep_alive: Option<KeepAlivePolicy>,
    max_concurrency: Option<Count<1, MAX_CONCURRENCY>>,
    min_idle: Option<Count<0, MAX_CONCURRENCY>>,
    max_queue: Option<Count<0, MAX_QUEUE>>,
    queue_timeout: Option<Timeout>,
    env: Option<Env>,
    network: Option<NonEmpty>,
    cpus: Option<CpuQuota>,
    user: Option<User>,
    tmp_size: Option<Size<MIN_TMP_SIZE>>,
    read_only: Option<Flag>,
    transport: Option<TransportName>,
    log_per_call: Option<Size<1>>,
    log_rate: Option<Size<1>>,
}

impl ConfigFile {
    /// The validation pass: the defaults filled in, then what one value cannot
    /// say alone (required keys, memory within the budget, unique names, at least
    /// one function, the tokens `metrics_auth` needs).
    fn validate(self) -> Result<ServeConfig, ConfigError> {
        let server = self.server.validate()?;
        let (pool, defaults) = self.pool.validate(&server);
        if self.function.0.is_empty() {
            return Err(ConfigError::new(
                "function",
                "at least one [[function]] is required",
            ));
        }
        let functions = (self.function.0.into_iter().enumerate())
            .map(|(index, table)| table.validate(index, &defaults))
            .collect::<Result<Vec<_>, _>>()?;
        let mut first_index = HashMap::new();
        for (index, spec) in functions.iter().enumerate() {
            if let Some(first) = first_index.insert(spec.name.as_str(), index) {
                return Err(ConfigError::new(
                    format!("{}.name", function_path(index, Some(&spec.name))),
                    format!("{:?} is defined twice (also function[{first}])", spec.name),
                ));
            }
        }
        Ok(ServeConfig {
            server,
            pool,
            engine: self.engine.validate()?,
            functions,
        })
    }
}

impl ServerTable {
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let defaults = ServerConfig::default();
        let config = ServerConfig {
            listen: self.listen.map_or(defaults.listen, |listen| listen.0),
            max_body: self.max_body.map_or(defaults.max_body, |size| size.0),
            max_response: self
                .max_response
                .map_or(defaults.max_response, |size| size.0),
            max_stream: self.max_stream.map_or(defaults.max_stream, |size| size.0),
            stream_idle_timeout: self
                .stream_idle_timeout
                .map_or(defaults.stream_idle_timeout, |span| span.0),
            call_logs: self.call_logs.map_or(defaults.call_logs, |size| size.0),
            header_timeout: self
                .header_timeout
                .map_or(defaults.header_timeout, |span| span.0),
            body_timeout: self
                .body_timeout
                .map_or(defaults.body_timeout, |span| span.0),
            max_connections: self
                .max_connections
                .map_or(defaults.max_connections, |n| n.0),
            auth_tokens_file: (self.auth_tokens_file).map_or(defaults.auth_tokens_file, |path| {
                Some(PathBuf::from(path.0))
            }),
            metrics_auth: self
                .metrics_auth
                .map_or(defaults.metrics_auth, |flag| flag.0),
        };
        if config.metrics_auth && config.auth_tokens_file.is_none() {
            return Err(ConfigError::new(
                "server.metrics_auth",
                "needs server.auth_tokens_file, the tokens to check",
            ));
        }
        Ok(config)
    }
}

/// What `[pool]` gives every function.
struct FunctionDefaults {
    /// The most memory a function's container may have (`pool.memory_budget`).
    memory_budget: u64,
    /// The keep-alive of a function that sets neither `keep_alive` nor
    /// `idle_timeout` (`pool.keep_alive`).
    keep_alive: KeepAlive,
    /// Every function's eviction policy (`pool.eviction`).
    eviction: Eviction,
    /// The warm floor of a hot function that sets none (`pool.min_idle`).
    min_idle: Option<usize>,
    /// The transport of a function that sets none (`pool.transport`).
    transport: Transport,
}

impl PoolTable {
    /// The pool's settings, its largest response the server's, and what it
    /// gives every function.
    fn validate(self, server: &ServerConfig) -> (PoolConfig, FunctionDefaults) {
        let mut pool = PoolConfig::default();
        pool.name = self
            .name
            .map_or(DEFAULT_POOL_NAME.to_owned(), |name| name.0);
        pool.memory_budget = self.memory_budget.map_or(pool.memory_budget, |size| size.0);
        pool.shutdown_timeout = self
            .shutdown_timeout
            .map_or(pool.shutdown_timeout, |span| span.0);
        pool.stats_max_points = self.stats_max_points.map_or(pool.stats_max_points, |n| n.0);
        pool.orphan_timeout = self
            .orphan_timeout
            .map_or(pool.orphan_timeout, |span| span.0);
        pool.removal_timeout = self
            .removal_timeout
            .map_or(pool.removal_timeout, |span| span.0);
        pool.max_response_bytes = usize::try_from(server.max_response).unwrap_or(usize::MAX);
        pool.max_stream_bytes = usize::try_from(server.max_stream).unwrap_or(usize::MAX);
        pool.stream_idle_timeout = server.stream_idle_timeout;
        pool.call_logs_bytes = server.call_logs;
        let defaults = FunctionDefaults {
            memory_budget: pool.memory_budget,
            keep_alive: self
                .keep_alive
                .map_or(DEFAULT_KEEP_ALIVE, |policy| policy.0),
            eviction: self.eviction.map_or(Eviction::default(), |policy| policy.0),
            min_idle: self.min_idle.map(|n| n.0),
            transport: self.transport.map_or(Transport::default(), |name| name.0),
        };
        (pool, defaults)
    }
}

impl FunctionTable {
    /// The spec of `function[index]`, with `[pool]`'s `defaults`.
    fn validate(
        self,
        index: usize,
        defaults: &FunctionDefaults,
    ) -> Result<FunctionSpec, ConfigError> {
        let Some(Name(name)) = self.name else {
            return Err(ConfigError::new(
                format!("{}.name", function_path(index, None)),
                "is required",
            ));
        };
        let path = function_path(index, Some(&name));
        let error = |key: &str, reason: String| ConfigError::new(format!("{path}.{key}"), reason);
        let image = self
            .image
            .ok_or_else(|| error("image", "is required".to_owned()))?
            .0;
        let mut spec = FunctionSpec::new(name, image);
        spec.cmd = self.cmd.map_or(spec.cmd, |cmd| cmd.0);
        spec.lifecycle = self.format.map_or(spec.lifecycle, |format| format.0);
        spec.memory = self.memory.map_or(spec.memory, |size| size.0);
        spec.timeout = self.timeout.map_or(spec.timeout, |span| span.0);
        spec.keep_alive = match (self.keep_alive, self.idle_timeout) {
            (Some(_), Some(_)) => {
                return Err(error(
                    "keep_alive",
                    "is set together with idle_timeout, its shorthand (idle_timeout = \"60s\" \
                     is keep_alive = \"fixed:60s\"): keep one"
                        .to_owned(),
                ));
            }
            (Some(policy), None) => policy.0,
            (None, Some(span)) => KeepAlive::fixed(span.0),
            (None, None) => defaults.keep_alive,
        };
        spec.eviction = defaults.eviction;
        spec.max_concurrency = self.max_concurrency.map_or(spec.max_concurrency, |n| n.0);
        let own_min_idle = self.min_idle.is_some();
        spec.min_idle = match (self.min_idle, defaults.min_idle) {
            (Some(Count(0)), _) => 0,
            (Some(_), _) if !spec.lifecycle.is_hot() => {
                return Err(error(
                    "min_idle",
                    "a cold function keeps no idle containers: use format = \"line\" or \"http\""
                        .to_owned(),
                ));
            }
            (Some(Count(n)), _) => n,
            (None, Some(n)) if spec.lifecycle.is_hot() => n,
            (None, _) => 0,
        };
        if spec.min_idle > spec.max_concurrency {
            let from_pool = if !own_min_idle {
                " (pool.min_idle)"
            } else {
                ""
            };
            return Err(error(
                "min_idle",
                format!(
                    "{}{from_pool} is more than max_concurrency ({})",
                    spec.min_idle, spec.max_concurrency
                ),
            ));
        }
        spec.max_queue = self.max_queue.map_or(spec.max_queue, |n| n.0);
        spec.queue_timeout = self.queue_timeout.map_or(spec.queue_timeout, |span| span.0);
        spec.env = self.env.map_or(spec.env, |env| env.0);
        spec.network = self.network.map_or(spec.network, |network| Some(network.0));
        spec.cpus = self.cpus.map_or(spec.cpus, |cpus| cpus.0);
        spec.user = self.user.map_or(spec.user, |user| user.0);
        spec.tmp_size = self.tmp_size.map_or(spec.tmp_size, |size| size.0);
        spec.read_only = self.read_only.map_or(spec.read_only, |flag| flag.0);
        spec.transport = self
            .transport
            .map_or(defaults.transport, |transport| transport.0);
        spec.log_per_call = self.log_per_call.map_or(spec.log_per_call, |size| size.0);
        spec.log_rate = self.log_rate.map_or(spec.log_rate, |size| size.0);
        if spec.memory > defaults.memory_budget {
            return Err(error(
                "memory",
                format!(
                    "{} is more than pool.memory_budget ({})",
                    show_bytes(spec.memory),
                    show_bytes(defaults.memory_budget)
                ),
            ));
        }
        Ok(spec)
    }
}

/// A string value, read as written; the types below check what it says.
struct Quoted(String);

impl<'de> Deserialize<'de> for Quoted {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Quoted, D::Error> {
        struct Expect;
        impl Visitor<'_> for Expect {
            type Value = Quoted;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string in quotes")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Quoted, E> {
                Ok(Quoted(text.to_owned()))
            }
        }
        deserializer.deserialize_str(Expect)
    }
}

/// The name of a function or a pool: letters, digits, `.`, `_` and `-`.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct Name(String);

impl TryFrom<Quoted> for Name {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<Name, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !text.chars().all(allowed) {
            return Err(format!(
                "{text:?} may contain only letters, digits, '.', '_' and '-'"
            ));
        }
        NonEmpty::try_from(Quoted(text)).map(|text| Name(text.0))
    }
}

/// A string that is not empty: an image, a network, a path.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct NonEmpty(String);

impl TryFrom<Quoted> for NonEmpty {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<NonEmpty, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        Ok(NonEmpty(text))
    }
}

/// The address to listen on.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct Listen(SocketAddr);

impl TryFrom<Quoted> for Listen {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<Listen, String> {
        text.parse()
            .map(Listen)
            .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:8080"))
    }
}

/// `cold`, `line` or `http`.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct FormatName(Lifecycle);

impl TryFrom<Quoted> for FormatName {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<FormatName, String> {
        text.parse().map(FormatName)
    }
}

/// A user as the engine takes it: `uid[:gid]` (a bare uid runs with gid = uid)
/// or a name from the image.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct User(String);

impl TryFrom<Quoted> for User {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<User, String> {
        parse_user(&text).map(User)
    }
}

/// A byte size in [`crate::units`] syntax (`"64m"`), from `MIN` to `MAX` bytes;
/// `Size<1>` is any size but 0.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct Size<const MIN: u64, const MAX: u64 = { u64::MAX }>(u64);

impl<const MIN: u64, const MAX: u64> TryFrom<Quoted> for Size<MIN, MAX> {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<Self, String> {
        match parse_bytes(&text)? {
            0 if MIN == 1 => Err(format!("{text:?} must be more than 0")),
            bytes if bytes > MAX => Err(format!("{text:?} is more than {}", show_bytes(MAX))),
            bytes => bytes_at_least(&text, bytes, MIN).map(Size),
        }
    }
}

/// A duration in [`crate::units`] syntax (`"5s"`): more than 0, at most
/// `MAX_SECONDS`.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct Span<const MAX_SECONDS: u64>(Duration);

impl<const MAX_SECONDS: u64> TryFrom<Quoted> for Span<MAX_SECONDS> {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<Self, String> {
        let max = Duration::from_secs(MAX_SECONDS);
        duration_within(&text, parse_duration(&text)?, max).map(Span)
    }
}

/// A call's, a queue wait's or a client's time limit.
type Timeout = Span<{ MAX_TIMEOUT.as_secs() }>;
/// How long a hot container may sit idle.
type IdleTimeout = Span<{ MAX_IDLE_TIMEOUT.as_secs() }>;

/// A keep-alive policy: `adaptive`, `histogram` or `fixed:DURATION`, the
/// duration bounded like `idle_timeout`.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct KeepAlivePolicy(KeepAlive);

impl TryFrom<Quoted> for KeepAlivePolicy {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<KeepAlivePolicy, String> {
        let policy: KeepAlive = text.parse()?;
        if let KeepAlive::Fixed { idle_timeout } = policy {
            duration_within(&text, idle_timeout, MAX_IDLE_TIMEOUT)?;
        }
        Ok(KeepAlivePolicy(policy))
    }
}

/// `direct` or `attach`.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct TransportName(Transport);

impl TryFrom<Quoted> for TransportName {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<TransportName, String> {
        text.parse().map(TransportName)
    }
}

/// `docker` or `containerd`.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct EngineName(EngineKind);

impl TryFrom<Quoted> for EngineName {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<EngineName, String> {
        text.parse().map(EngineName)
    }
}

/// `lru` or `greedy-dual`.
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct EvictionPolicy(Eviction);

impl TryFrom<Quoted> for EvictionPolicy {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<EvictionPolicy, String> {
        text.parse().map(EvictionPolicy)
    }
}

/// How long calls in flight get to finish on shutdown: 0 (none) up to
/// [`MAX_TIMEOUT`].
#[derive(Deserialize)]
#[serde(try_from = "Quoted")]
struct GracePeriod(Duration);

impl TryFrom<Quoted> for GracePeriod {
    type Error = String;

    fn try_from(Quoted(text): Quoted) -> Result<GracePeriod, String> {
        match parse_duration(&text)? {
            Duration::ZERO => Ok(GracePeriod(Duration::ZERO)),
            duration => duration_within(&text, duration, MAX_TIMEOUT).map(GracePeriod),
        }
    }
}

/// A whole number from `MIN` to `MAX`.
struct Count<const MIN: usize, const MAX: usize>(usize);

impl<'de, const MIN: usize, const MAX: usize> Deserialize<'de> for Count<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expect<const MIN: usize, const MAX: usize>;
        impl<const MIN: usize, const MAX: usize> Visitor<'_> for Expect<MIN, MAX> {
            type Value = Count<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: de::Error>(self, number: i64) -> Result<Self::Value, E> {
                match u64::try_from(number) {
                    Ok(number) => self.visit_u64(number),
                    Err(_) => Err(E::custom(format!("{number} is less than {MIN}"))),
                }
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<Self::Value, E> {
                match usize::try_from(number) {
                    Ok(count) if count < MIN => {
                        Err(E::custom(format!("{count} is less than {MIN}")))
                    }
                    Ok(count) if count <= MAX => Ok(Count(count)),
                    _ => Err(E::custom(format!("{number} is more than {MAX}"))),
                }
            }
        }
        deserializer.deserialize_u64(Expect)
    }
}

/// `true` or `false`.
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Flag, D::Error> {
        struct Expect;
        impl Visitor<'_> for Expect {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, flag: bool) -> Result<Flag, E> {
                Ok(Flag(flag))
            }
        }
        deserializer.deserialize_bool(Expect)
    }
}

/// A number of CPUs, whole or fractional: `1`, `0.5`.
struct CpuQuota(Cpus);

impl<'de> Deserialize<'de> for CpuQuota {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CpuQuota, D::Error> {
        struct Expect;
        impl Expect {
            fn parse<E: de::Error>(number: impl ToString) -> Result<CpuQuota, E> {
                number.to_string().parse().map(CpuQuota).map_err(E::custom)
            }
        }
        impl Visitor<'_> for Expect {
            type Value = CpuQuota;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number like 1 or 0.5")
            }
            fn visit_i64<E: de::Error>(self, number: i64) -> Result<CpuQuota, E> {
                Expect::parse(number)
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<CpuQuota, E> {
                Expect::parse(number)
            }
            fn visit_f64<E: de::Error>(self, number: f64) -> Result<CpuQuota, E> {
                Expect::parse(number)
            }
        }
        deserializer.deserialize_f64(Expect)
    }
}

/// A command and its arguments: an array of strings.
struct Command(Vec<String>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Command, D::Error> {
        struct Expect;
        impl<'de> Visitor<'de> for Expect {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Command, A::Error> {
                let mut command = Vec::new();
                while let Some(item) = items.next_element()? {
                    command.push(item);
                }
                Ok(Command(command))
            }
        }
        deserializer.deserialize_seq(Expect)
    }
}

/// Environment variables: a table of strings, the names non-empty and without `=`.
struct Env(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Env {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Env, D::Error> {
        struct Expect;
        impl<'de> Visitor<'de> for Expect {
            type Value = Env;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table like { KEY = \"value\" }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut table: A) -> Result<Env, A::Error> {
                let mut env = BTreeMap::new();
                while let Some(name) = table.next_key::<String>()? {
                    if name.is_empty() {
                        return Err(de::Error::custom("variable names must not be empty"));
                    }
                    if name.contains('=') {
                        return Err(de::Error::custom(format!(
                            "variable name {name:?} must not contain '='"
                        )));
                    }
                    env.insert(name, table.next_value()?);
                }
                Ok(Env(env))
            }
        }
        deserializer.deserialize_map(Expect)
    }
}

/// The `[[function]]` tables.
#[derive(Default)]
struct Functions(Vec<FunctionTable>);

impl<'de> Deserialize<'de> for Functions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Functions, D::Error> {
        struct Expect;
        impl<'de> Visitor<'de> for Expect {
            type Value = Functions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of tables ([[function]])")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut tables: A) -> Result<Functions, A::Error> {
                let mut functions = Vec::new();
                while let Some(table) = tables.next_element()? {
                    functions.push(table);
                }
                Ok(Functions(functions))
            }
        }
        deserializer.deserialize_seq(Expect)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use hotpool::pool::Format;

    /// How errors name the function of [`function_error`].
    const ECHO: &str = r#"function "echo" (function[0])"#;

    /// A function `echo` with image `img`, to add fields to.
    const FUNCTION: &str = "[[function]]\nname = \"echo\"\nimage = \"img\"";

    /// The message of the error `text` gives.
    fn error(text: &str) -> String {
        ServeConfig::from_toml(text).unwrap_err().to_string()
    }

    /// The message of the error a function `echo` with image `img` and `fields`
    /// gives.
    fn function_error(fields: &str) -> String {
        error(&format!("{FUNCTION}\n{fields}"))
    }

    #[test]
    // Fields set one by one: the library's config types are to be #[non_exhaustive].
    #[allow(clippy::field_reassign_with_default)]
    fn full_config_parses_to_exactly_what_is_written() {
        let config = ServeConfig::from_toml(
            r#"
            [server]
            listen = "0.0.0.0:9090"
            max_body = "1m"
            max_response = "2m"
            max_stream = "5g"
            stream_idle_timeout = "5s"
            call_logs = "3m"
            header_timeout = "3s"
            body_timeout = "4s"
            max_connections = 64
            auth_tokens_file = "/etc/hotpool/tokens"
            metrics_auth = true

            [pool]
            name = "edge-1"
            memory_budget = "4g"
            shutdown_timeout = "5s"
            stats_max_points = 60
            orphan_timeout = "90s"
            removal_timeout = "7s"
            keep_alive = "histogram"
            eviction = "greedy-dual"

            [engine]
            kind = "docker"
            socket = "/run/docker.sock"

            [[function]]
            name = "echo"
            image = "hotpool-testfn:dev"
            cmd = ["line", "--verbose"]
            format = "http"
            memory = "64m"
            timeout = "1500ms"
            idle_timeout = "2m"
            max_concurrency = 8
            min_idle = 2
            max_queue = 0
            queue_timeout = "250ms"
            env = { KEY = "value", EMPTY = "" }
            network = "bridge"
            cpus = 0.5
            user = "nobody:nogroup"
            tmp_size = "8m"
            read_only = false
            transport = "direct"
            log_per_call = "64k"
            log_rate = "1k"
            "#,
        )
        .unwrap();
        let mut pool = PoolConfig::default();
        pool.name = "edge-1".into();
        pool.memory_budget = 4 << 30;
        pool.shutdown_timeout = Duration::from_secs(5);
        pool.stats_max_points = 60;
        pool.orphan_timeout = Duration::from_secs(90);
        pool.removal_timeout = Duration::from_secs(7);
        pool.max_response_bytes = 2 << 20;
        pool.max_stream_bytes = 5 << 30;
        pool.stream_idle_timeout = Duration::from_secs(5);
        pool.call_logs_bytes = 3 << 20;
        let mut echo = FunctionSpec::new("echo", "hotpool-testfn:dev");
        echo.cmd = vec!["line".into(), "--verbose".into()];
        echo.lifecycle = Format::Http.into();
        echo.memory = 64 << 20;
        echo.timeout = Duration::from_millis(1500);
        echo.keep_alive = KeepAlive::fixed(Duration::from_secs(120));
        echo.eviction = Eviction::GreedyDual;
        echo.max_concurrency = 8;
        echo.min_idle = 2;
        echo.max_queue = 0;
        echo.queue_timeout = Duration::from_millis(250);
        echo.env = BTreeMap::from([
            ("EMPTY".into(), String::new()),
            ("KEY".into(), "value".into()),
        ]);
        echo.network = Some("bridge".into());
        echo.cpus = "0.5".parse().unwrap();
        echo.user = "nobody:nogroup".into();
        echo.tmp_size = 8 << 20;
        echo.read_only = false;
        echo.transport = Transport::Direct;
        echo.log_per_call = 64 << 10;
        echo.log_rate = 1 << 10;
        let mut engine = EngineChoice::default();
        engine.kind = Some(EngineKind::Docker);
        engine.socket = Some(PathBuf::from("/run/docker.sock"));
        let expected = ServeConfig {
            server: ServerConfig {
                listen: "0.0.0.0:9090".parse().unwrap(),
                max_body: 1 << 20,
                max_response: 2 << 20,
                max_stream: 5 << 30,
                stream_idle_timeout: Duration::from_secs(5),
                call_logs: 3 << 20,
                header_timeout: Duration::from_secs(3),
                body_timeout: Duration::from_secs(4),
                max_connections: 64,
                auth_tokens_file: Some(PathBuf::from("/etc/hotpool/tokens")),
                metrics_auth: true,
            },
            pool,
            engine,
            functions: vec![echo],
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn an_unknown_engine_is_named() {
        assert_eq!(
            error("[engine]\nkind = \"podman\"\n[[function]]\nname = \"a\"\nimage = \"i\""),
            "engine.kind: \"podman\" is not an engine: use docker or containerd"
        );
        assert_eq!(
            error("[engine]\nnamespace = \"hot\"\n[[function]]\nname = \"a\"\nimage = \"i\""),
            "engine.namespace: is containerd's: set engine.kind = \"containerd\" with it"
        );
        let config = ServeConfig::from_toml(
            "[engine]\nkind = \"containerd\"\nnamespace = \"hot\"\nsnapshotter = \"native\"\n\
             group_size = 64\n[[function]]\nname = \"a\"\nimage = \"i\"",
        )
        .unwrap();
        assert_eq!(config.engine.kind, Some(EngineKind::Containerd));
        assert_eq!(config.engine.namespace.as_deref(), Some("hot"));
        assert_eq!(config.engine.snapshotter.as_deref(), Some("native"));
        assert_eq!(config.engine.group_size, Some(64));
        let empty_group = error(
            "[engine]\nkind = \"containerd\"\ngroup_size = 0\n[[function]]\nname = \"a\"\nimage = \"i\"",
        );
        assert!(
            empty_group.starts_with("engine.group_size: "),
            "{empty_group}"
        );
        assert_eq!(
            error("[engine]\ngroup_size = 8\n[[function]]\nname = \"a\"\nimage = \"i\""),
            "engine.group_size: is containerd's: set engine.kind = \"containerd\" with it"
        );
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let config =
            ServeConfig::from_toml("[[function]]\nname = \"echo\"\nimage = \"img\"\n").unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.server.max_body, 6 << 20);
        assert_eq!(config.server.max_response, 6 << 20);
        assert_eq!(config.server.call_logs, 64 << 20);
        assert_eq!(config.pool.call_logs_bytes, 64 << 20);
        assert_eq!(config.server.header_timeout, Duration::from_secs(10));
        assert_eq!(config.server.body_timeout, Duration::from_secs(30));
        assert_eq!(config.server.max_connections, 512);
        assert_eq!(config.server.auth_tokens_file, None);
        assert!(!config.server.metrics_auth);
        assert_eq!(config.pool.name, "serve");
        assert_eq!(config.pool.memory_budget, 2 << 30);
        assert_eq!(config.pool.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.pool.stats_max_points, 240);
        assert_eq!(
            config.engine,
            EngineChoice::default(),
            "Docker, where it answers"
        );
        let mut library_defaults = FunctionSpec::new("echo", "img");
        library_defaults.keep_alive = KeepAlive::ADAPTIVE;
        assert_eq!(
            config.functions,
            [library_defaults],
            "the library's defaults but the keep-alive"
        );
        let spec = &config.functions[0];
        assert_eq!(spec.lifecycle, Lifecycle::Hot(Format::Line));
        assert_eq!(spec.memory, 128 << 20);
        assert_eq!(spec.timeout, Duration::from_secs(30));
        assert_eq!(spec.keep_alive, KeepAlive::ADAPTIVE);
        assert_eq!(spec.eviction, Eviction::LeastRecentlyUsed);
        assert_eq!(spec.max_concurrency, 4);
        assert_eq!(spec.max_queue, 100);
        assert_eq!(spec.queue_timeout, Duration::from_secs(10));
        assert!(spec.cmd.is_empty() && spec.env.is_empty() && spec.network.is_none());
        assert_eq!(spec.cpus, Cpus::ONE);
        assert_eq!(spec.user, "1000:1000");
        assert_eq!(spec.tmp_size, 64 << 20);
        assert!(spec.read_only);
        assert_eq!(spec.log_per_call, 1 << 20);
        assert_eq!(spec.log_rate, 256 << 10);
    }

    #[test]
    // Fields set one by one: the library's config types are to be #[non_exhaustive].
    #[allow(clippy::field_reassign_with_default)]
    fn empty_tables_get_the_defaults() {
        let config =
            ServeConfig::from_toml("[server]\n[pool]\n[[function]]\nname = \"a\"\nimage = \"i\"")
                .unwrap();
        assert_eq!(config.server, ServerConfig::default());
        let mut pool = PoolConfig::default();
        pool.name = "serve".into();
        assert_eq!(config.pool, pool, "the library's defaults but the name");
    }

    /// `examples/hotpool.toml`, as shipped.
    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hotpool.toml")
    }

    /// The keys serde accepts in `table` (`""` for the file's top level, `server`,
    /// `pool` or `function`), read from the deserializer's own error for an
    /// unknown key, which lists them: the config's one list of its keys.
    fn accepted_keys(table: &str) -> Vec<String> {
        let text = match table {
            "" => "not_a_key = 1".to_owned(),
            "function" => "[[function]]\nnot_a_key = 1".to_owned(),
            table => format!("[{table}]\nnot_a_key = 1"),
        };
        let error = toml::from_str::<ConfigFile>(&text)
            .err()
            .expect("an unknown key is an error");
        let (_, expected) = (error.message().rsplit_once("`, expected "))
            .unwrap_or_else(|| panic!("serde lists the keys: {}", error.message()));
        let keys: Vec<String> = listed_keys(expected)
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert!(keys.len() >= 2, "[{table}] accepts {keys:?}");
        keys
    }

    #[test]
    fn accepted_keys_are_read_from_the_deserializer() {
        assert_eq!(accepted_keys(""), ["server", "pool", "engine", "function"]);
        // The whole list, first field to last, as the structs declare them.
        for (table, first, last) in [
            ("server", "listen", "metrics_auth"),
            ("pool", "name", "transport"),
            ("engine", "kind", "group_size"),
            ("function", "name", "log_rate"),
        ] {
            let keys = accepted_keys(table);
            assert_eq!(
                (
                    keys.first().unwrap().as_str(),
                    keys.last().unwrap().as_str()
                ),
                (first, last),
                "{keys:?}"
            );
            assert!(keys.contains(&"memory_budget".to_owned()) == (table == "pool"));
        }
    }

    #[test]
    fn the_example_config_shows_every_key_in_its_table_with_a_comment() {
        let example = fs::read_to_string(example_path()).unwrap();
        // (table, key, whether a comment says what it is), from lines `key = ...`
        // and `# key = ...`.
        let mut shown: Vec<(String, String, bool)> = Vec::new();
        let mut table = String::new();
        for line in example.lines().map(str::trim) {
            if line.starts_with('[') {
                table = line.trim_matches(['[', ']']).to_owned();
                continue;
            }
            let line = line.trim_start_matches('#').trim_start();
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                shown.push((table.clone(), key.to_owned(), value.contains(" # ")));
            }
        }
        let tables = accepted_keys("");
        for table in &tables {
            let header = if table == "function" {
                "\n[[function]]\n".to_owned()
            } else {
                format!("\n[{table}]\n")
            };
            assert!(example.contains(&header), "the example has no {header:?}");
            let accepted = accepted_keys(table);
            for key in &accepted {
                assert!(
                    shown
                        .iter()
                        .any(|(t, k, commented)| t == table && k == key && *commented),
                    "examples/hotpool.toml does not show {table}.{key} with a comment saying \
                     what it is: `{key} = ...  # ...`, or `# {key} = ...  # ...` to leave it off"
                );
            }
            for (_, key, _) in shown.iter().filter(|(t, ..)| t == table) {
                assert!(
                    accepted.contains(key),
                    "examples/hotpool.toml shows {table}.{key}, which the config does not accept"
                );
            }
        }
        assert!(
            shown.iter().all(|(table, ..)| tables.contains(table)),
            "{shown:?}"
        );
    }

    #[test]
    fn example_file_loads() {
        let config = ServeConfig::load(&example_path()).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.pool.memory_budget, 1 << 30);
        let summary: Vec<_> = config
            .functions
            .iter()
            .map(|f| (f.name.as_str(), f.lifecycle, f.cmd.join(" ")))
            .collect();
        assert_eq!(
            summary,
            [
                ("echo", Lifecycle::Hot(Format::Line), "line".to_owned()),
                ("echo-http", Lifecycle::Hot(Format::Http), "http".to_owned()),
                ("echo-cold", Lifecycle::Cold, "echo".to_owned()),
                ("hello", Lifecycle::Hot(Format::Http), String::new()),
            ]
        );
        let echo = &config.functions[0];
        assert_eq!(echo.image, "hotpool-testfn:dev");
        assert_eq!(echo.memory, 64 << 20);
        assert_eq!(echo.timeout, Duration::from_secs(5));
        assert_eq!(echo.keep_alive, KeepAlive::fixed(Duration::from_secs(60)));
        assert_eq!(echo.max_concurrency, 4);
        assert_eq!(
            config.functions[1].keep_alive,
            KeepAlive::ADAPTIVE,
            "the pool's"
        );
        assert!((config.functions.iter()).all(|spec| spec.eviction == Eviction::LeastRecentlyUsed));
        assert!((config.functions.iter()).all(|spec| spec.transport == Transport::Direct));
    }

    /// A config with `[server]`, `[pool]` and `[engine]` keys `server`, `pool`
    /// and `engine` (on top of an auth_tokens_file, which metrics_auth needs) and
    /// one function.
    fn with_engine(
        server: &[(&str, &str)],
        pool: &[(&str, &str)],
        engine: &[(&str, &str)],
    ) -> ServeConfig {
        let lines = |table: &[(&str, &str)]| {
            (table.iter())
                .map(|(key, value)| format!("{key} = {value}\n"))
                .collect::<String>()
        };
        let mut server = server.to_vec();
        if !server.iter().any(|(key, _)| *key == "auth_tokens_file") {
            server.push(("auth_tokens_file", "\"tokens\""));
        }
        ServeConfig::from_toml(&format!(
            "[server]\n{}[pool]\n{}[engine]\n{}[[function]]\nname = \"a\"\nimage = \"i\"\nmemory = \"64m\"",
            lines(&server),
            lines(pool),
            lines(engine)
        ))
        .unwrap()
    }

    /// [`with_engine`] with the default engine.
    fn with_tables(server: &[(&str, &str)], pool: &[(&str, &str)]) -> ServeConfig {
        with_engine(server, pool, &[])
    }

    #[test]
    fn every_server_and_pool_key_is_either_reloaded_or_named_as_waiting_for_a_restart() {
        // Every function's, so they reload with the functions.
        const RELOADED_POOL_KEYS: [&str; 4] = ["keep_alive", "eviction", "min_idle", "transport"];
        let on_docker = with_tables(&[], &[]);
        // containerd's own keys are set with its kind, in both configs.
        const ON_CONTAINERD: (&str, &str) = ("kind", "\"containerd\"");
        let on_containerd = with_engine(&[], &[], &[ON_CONTAINERD]);
        for table in ["server", "pool", "engine"] {
            for key in accepted_keys(table) {
                let containerds =
                    matches!(key.as_str(), "namespace" | "snapshotter" | "group_size");
                let running = if containerds {
                    &on_containerd
                } else {
                    &on_docker
                };
                let other = match (table, key.as_str()) {
                    (_, "listen") => "\"127.0.0.1:1\"",
                    (
                        _,
                        "max_body" | "max_response" | "max_stream" | "call_logs" | "memory_budget",
                    ) => "\"1g\"",
                    (
                        _,
                        "header_timeout"
                        | "body_timeout"
                        | "stream_idle_timeout"
                        | "shutdown_timeout"
                        | "orphan_timeout"
                        | "removal_timeout",
                    ) => "\"1s\"",
                    (_, "max_connections" | "stats_max_points") => "1",
                    (_, "auth_tokens_file") => "\"other-tokens\"",
                    (_, "metrics_auth") => "true",
                    ("pool", "name") => "\"other\"",
                    ("pool", "keep_alive") => "\"histogram\"",
                    ("pool", "eviction") => "\"greedy-dual\"",
                    ("pool", "min_idle") => "1",
                    ("pool", "transport") => "\"attach\"",
                    ("engine", "kind") => "\"docker\"",
                    ("engine", "socket") => "\"/run/other.sock\"",
                    ("engine", "namespace") => "\"other\"",
                    ("engine", "snapshotter") => "\"native\"",
                    ("engine", "group_size") => "8",
                    _ => panic!("give {table}.{key} a second value, to check a reload sees it"),
                };
                let changed = [(key.as_str(), other)];
                let new = match table {
                    "server" => with_tables(&changed, &[]),
                    "pool" => with_tables(&[], &changed),
                    _ if containerds => with_engine(&[], &[], &[ON_CONTAINERD, changed[0]]),
                    _ => with_engine(&[], &[], &changed),
                };
                let waiting = running.start_only_changes(&new);
                if table == "pool" && RELOADED_POOL_KEYS.contains(&key.as_str()) {
                    assert_eq!(waiting, Vec::<&str>::new(), "{table}.{key} reloads");
                    assert_ne!(
                        new.functions, running.functions,
                        "{table}.{key} is in every function's spec"
                    );
                } else {
                    assert_eq!(waiting, [format!("{table}.{key}")], "{table}.{key}");
                    assert_eq!(new.functions, running.functions, "{table}.{key}");
                }
            }
        }
        assert_eq!(
            on_docker.start_only_changes(&on_docker.clone()),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn a_reload_needs_every_function_within_the_running_memory_budget() {
        let config = with_tables(&[], &[]);
        assert_eq!(config.check_memory_within(64 << 20), Ok(()));
        assert_eq!(
            config
                .check_memory_within(32 << 20)
                .unwrap_err()
                .to_string(),
            "function \"a\" (function[0]).memory: 64m is more than the running pool's \
             memory_budget (32m); a new pool.memory_budget takes effect at the next start"
        );
    }

    #[test]
    fn transport_is_the_functions_or_else_the_pools_or_else_direct() {
        let transports = |text: &str| {
            let config = ServeConfig::from_toml(text).unwrap();
            (config.functions.iter())
                .map(|spec| spec.transport.as_str())
                .collect::<Vec<_>>()
        };
        let functions = "[[function]]\nname = \"a\"\nimage = \"i\"\ntransport = \"direct\"\n\
                         [[function]]\nname = \"b\"\nimage = \"i\"\n";
        assert_eq!(transports(functions), ["direct", "direct"]);
        assert_eq!(
            transports(&format!("[pool]\ntransport = \"attach\"\n{functions}")),
            ["direct", "attach"]
        );
    }

    #[test]
    fn keep_alive_is_the_functions_or_else_the_pools_or_else_adaptive() {
        let keep_alive = |text: &str| {
            let config = ServeConfig::from_toml(text).unwrap();
            (config.functions.iter())
                .map(|spec| spec.keep_alive.to_string())
                .collect::<Vec<_>>()
        };
        let functions = "[[function]]\nname = \"a\"\nimage = \"i\"\nkeep_alive = \"fixed:10m\"\n\
                         [[function]]\nname = \"b\"\nimage = \"i\"\nidle_timeout = \"90s\"\n\
                         [[function]]\nname = \"c\"\nimage = \"i\"\n";
        assert_eq!(
            keep_alive(functions),
            ["fixed:10m", "fixed:1m 30s", "adaptive"]
        );
        assert_eq!(
            keep_alive(&format!("[pool]\nkeep_alive = \"histogram\"\n{functions}")),
            ["fixed:10m", "fixed:1m 30s", "histogram"]
        );
        assert_eq!(
            keep_alive(&format!("[pool]\nkeep_alive = \"fixed:5m\"\n{functions}")),
            ["fixed:10m", "fixed:1m 30s", "fixed:5m"]
        );
        let config = ServeConfig::from_toml(
            "[[function]]\nname = \"a\"\nimage = \"i\"\nkeep_alive = \"fixed:60s\"",
        )
        .unwrap();
        assert_eq!(
            config.functions[0].keep_alive,
            KeepAlive::fixed(Duration::from_secs(60)),
            "keep_alive = \"fixed:60s\" is idle_timeout = \"60s\""
        );
    }

    #[test]
    fn keep_alive_and_idle_timeout_together_are_an_error_naming_both() {
        assert_eq!(
            function_error("idle_timeout = \"60s\"\nkeep_alive = \"adaptive\""),
            format!(
                "{ECHO}.keep_alive: is set together with idle_timeout, its shorthand \
                 (idle_timeout = \"60s\" is keep_alive = \"fixed:60s\"): keep one"
            )
        );
    }

    #[test]
    fn bad_keep_alive_policies_name_the_key() {
        assert_eq!(
            function_error("keep_alive = \"lazy\""),
            format!(
                "{ECHO}.keep_alive: \"lazy\" is not a keep-alive policy: use fixed:DURATION, \
                 histogram or adaptive"
            )
        );
        assert!(
            error("[pool]\nkeep_alive = \"fixed:soon\"\n[[function]]\nname = \"a\"\nimage = \"i\"")
                .starts_with("pool.keep_alive: \"soon\" is not a duration")
        );
        assert_eq!(
            function_error("keep_alive = \"fixed:0s\""),
            format!("{ECHO}.keep_alive: \"fixed:0s\" must be more than 0")
        );
        assert_eq!(
            function_error("keep_alive = \"fixed:366d\""),
            format!("{ECHO}.keep_alive: \"fixed:366d\" is more than 365d")
        );
        assert_eq!(
            function_error("keep_alive = 60"),
            format!("{ECHO}.keep_alive: expected a string in quotes, found integer 60")
        );
        let config = ServeConfig::from_toml(
            "[[function]]\nname = \"a\"\nimage = \"i\"\nkeep_alive = \"fixed:365d\"",
        )
        .unwrap();
        assert_eq!(
            config.functions[0].keep_alive,
            KeepAlive::fixed(Duration::from_secs(365 * 24 * 3600))
        );
    }

    #[test]
    fn eviction_is_the_pools_for_every_function() {
        let config = ServeConfig::from_toml(
            "[pool]\neviction = \"greedy-dual\"\n\
             [[function]]\nname = \"a\"\nimage = \"i\"\n\
             [[function]]\nname = \"b\"\nimage = \"i\"",
        )
        .unwrap();
        assert!(
            (config.functions.iter()).all(|spec| spec.eviction == Eviction::GreedyDual),
            "{:?}",
            config.functions
        );
        assert_eq!(
            error("[pool]\neviction = \"fifo\"\n[[function]]\nname = \"a\"\nimage = \"i\""),
            "pool.eviction: \"fifo\" is not an eviction policy: use lru or greedy-dual"
        );
        assert_eq!(
            function_error("eviction = \"lru\""),
            format!("{ECHO}.eviction: unknown key"),
            "eviction is the pool's"
        );
    }

    #[test]
    fn bad_sizes_name_the_key_and_the_unit() {
        assert_eq!(
            error(
                "[[function]]\nname = \"a\"\nimage = \"i\"\n\
                 [[function]]\nname = \"b\"\nimage = \"i\"\nmemory = \"12q\""
            ),
            r#"function "b" (function[1]).memory: "12q" has an unknown unit "q": use b, k, m, g or t"#
        );
        assert_eq!(
            error("[server]\nmax_body = \"lots\""),
            "server.max_body: \"lots\" is not a size: expected a number with an optional unit, \
             like 64m or 2g"
        );
        assert_eq!(
            error("[pool]\nmemory_budget = \"0\""),
            "pool.memory_budget: \"0\" must be more than 0"
        );
    }

    #[test]
    fn function_names_must_be_valid() {
        assert_eq!(
            error("[[function]]\nname = \"bad name!\"\nimage = \"i\""),
            r#"function[0].name: "bad name!" may contain only letters, digits, '.', '_' and '-'"#
        );
        assert_eq!(
            error("[[function]]\nname = \"\"\nimage = \"i\""),
            "function[0].name: must not be empty"
        );
        assert_eq!(
            error("[[function]]\nimage = \"i\""),
            "function[0].name: is required"
        );
        assert_eq!(
            error("[pool]\nname = \"a/b\""),
            r#"pool.name: "a/b" may contain only letters, digits, '.', '_' and '-'"#
        );
        let config =
            ServeConfig::from_toml("[[function]]\nname = \"A.b_c-9\"\nimage = \"i\"").unwrap();
        assert_eq!(config.functions[0].name, "A.b_c-9");
    }

    #[test]
    fn function_names_must_be_unique() {
        let text = ["echo", "other", "echo"]
            .map(|name| format!("[[function]]\nname = \"{name}\"\nimage = \"i\"\n"))
            .concat();
        assert_eq!(
            error(&text),
            r#"function "echo" (function[2]).name: "echo" is defined twice (also function[0])"#
        );
    }

    #[test]
    fn image_must_be_given_and_not_empty() {
        assert_eq!(
            error("[[function]]\nname = \"a\""),
            "function \"a\" (function[0]).image: is required"
        );
        assert_eq!(
            error("[[function]]\nname = \"a\"\nimage = \"\""),
            "function \"a\" (function[0]).image: must not be empty"
        );
    }

    #[test]
    fn memory_must_be_positive_and_within_the_budget() {
        assert_eq!(
            function_error("memory = \"0m\""),
            format!("{ECHO}.memory: \"0m\" must be more than 0")
        );
        assert_eq!(
            function_error("memory = \"3g\""),
            format!("{ECHO}.memory: 3g is more than pool.memory_budget (2g)")
        );
        assert_eq!(
            error(
                "[pool]\nmemory_budget = \"100m\"\n[[function]]\nname = \"a\"\nimage = \"i\"\nmemory = \"101m\""
            ),
            "function \"a\" (function[0]).memory: 101m is more than pool.memory_budget (100m)"
        );
        assert_eq!(
            error("[pool]\nmemory_budget = \"100m\"\n[[function]]\nname = \"a\"\nimage = \"i\""),
            "function \"a\" (function[0]).memory: 128m is more than pool.memory_budget (100m)",
            "the default memory counts too"
        );
        let config = ServeConfig::from_toml(
            "[pool]\nmemory_budget = \"100m\"\n[[function]]\nname = \"a\"\nimage = \"i\"\nmemory = \"100m\"",
        )
        .unwrap();
        assert_eq!(config.functions[0].memory, 100 << 20);
    }

    #[test]
    fn min_idle_is_the_functions_or_else_the_pools_for_hot_functions() {
        let min_idle = |text: &str| {
            let config = ServeConfig::from_toml(text).unwrap();
            (config.functions.iter())
                .map(|spec| spec.min_idle)
                .collect::<Vec<_>>()
        };
        let functions = "[[function]]\nname = \"a\"\nimage = \"i\"\nmin_idle = 3\n\
                         [[function]]\nname = \"b\"\nimage = \"i\"\n\
                         [[function]]\nname = \"c\"\nimage = \"i\"\nformat = \"cold\"";
        assert_eq!(min_idle(functions), [3, 0, 0]);
        assert_eq!(
            min_idle(&format!("[pool]\nmin_idle = 1\n{functions}")),
            [3, 1, 0],
            "a cold function keeps none"
        );
        assert_eq!(
            min_idle(&format!(
                "[pool]\nmin_idle = 1\n{FUNCTION}\nmin_idle = 0\nformat = \"cold\""
            )),
            [0],
            "0 is allowed anywhere"
        );
    }

    #[test]
    fn bad_min_idle_values_name_the_key_and_the_function() {
        assert_eq!(
            function_error("min_idle = 5"),
            format!("{ECHO}.min_idle: 5 is more than max_concurrency (4)")
        );
        assert_eq!(
            error(&format!("[pool]\nmin_idle = 5\n{FUNCTION}")),
            format!("{ECHO}.min_idle: 5 (pool.min_idle) is more than max_concurrency (4)")
        );
        assert_eq!(
            function_error("min_idle = 1\nformat = \"cold\""),
            format!(
                "{ECHO}.min_idle: a cold function keeps no idle containers: use format = \"line\" or \"http\""
            )
        );
        assert_eq!(
            function_error("min_idle = -1"),
            format!("{ECHO}.min_idle: -1 is less than 0")
        );
        assert_eq!(
            function_error("min_idle = \"2\""),
            format!("{ECHO}.min_idle: expected a whole number, found string \"2\"")
        );
        assert!(
            error("[pool]\nmin_idle = 10001\n[[function]]\nname = \"a\"\nimage = \"i\"")
                .starts_with("pool.min_idle: 10001 is more than 10000")
        );
    }

    #[test]
    fn timeouts_must_be_positive_durations() {
        for key in ["timeout", "idle_timeout", "queue_timeout"] {
            assert_eq!(
                function_error(&format!("{key} = \"0s\"")),
                format!("{ECHO}.{key}: \"0s\" must be more than 0")
            );
            assert!(
                function_error(&format!("{key} = \"5\""))
                    .starts_with(&format!("{ECHO}.{key}: \"5\" is not a duration")),
                "{key}"
            );
        }
        assert!(
            error("[pool]\nshutdown_timeout = \"soon\"")
                .starts_with("pool.shutdown_timeout: \"soon\" is not a duration")
        );
    }

    #[test]
    fn counts_must_be_in_range() {
        assert_eq!(
            function_error("max_concurrency = 0"),
            format!("{ECHO}.max_concurrency: 0 is less than 1")
        );
        assert_eq!(
            function_error("max_queue = -1"),
            format!("{ECHO}.max_queue: -1 is less than 0")
        );
        assert_eq!(
            error("[pool]\nstats_max_points = -5"),
            "pool.stats_max_points: -5 is less than 0"
        );
    }

    #[test]
    fn format_must_be_cold_line_or_http() {
        assert_eq!(
            function_error("format = \"grpc\""),
            format!(r#"{ECHO}.format: "grpc" is not a format: use cold, line or http"#)
        );
        for (name, format) in [
            ("cold", Lifecycle::Cold),
            ("line", Lifecycle::Hot(Format::Line)),
            ("http", Lifecycle::Hot(Format::Http)),
        ] {
            let text = format!("[[function]]\nname = \"a\"\nimage = \"i\"\nformat = \"{name}\"");
            assert_eq!(
                ServeConfig::from_toml(&text).unwrap().functions[0].lifecycle,
                format
            );
        }
    }

    #[test]
    fn env_names_must_be_non_empty_without_equals_and_values_strings() {
        assert_eq!(
            function_error("env = { \"\" = \"x\" }"),
            format!("{ECHO}.env: variable names must not be empty")
        );
        assert_eq!(
            function_error("env = { \"A=B\" = \"x\" }"),
            format!(r#"{ECHO}.env: variable name "A=B" must not contain '='"#)
        );
        assert_eq!(
            function_error("env = { PORT = 80 }"),
            format!("{ECHO}.env.PORT: expected a string, found integer 80")
        );
    }

    #[test]
    fn network_must_not_be_empty() {
        assert_eq!(
            function_error("network = \"\""),
            format!("{ECHO}.network: must not be empty")
        );
    }

    #[test]
    fn listen_must_be_a_socket_address() {
        assert_eq!(
            error("[server]\nlisten = \"nope\""),
            r#"server.listen: "nope" is not an address like 127.0.0.1:8080"#
        );
        let config = ServeConfig::from_toml(
            "[server]\nlisten = \"[::1]:80\"\n[[function]]\nname = \"a\"\nimage = \"i\"",
        )
        .unwrap();
        assert_eq!(config.server.listen, "[::1]:80".parse().unwrap());
    }

    #[test]
    fn unknown_keys_are_errors_in_every_table() {
        assert_eq!(
            function_error("frobnicate = 1"),
            format!("{ECHO}.frobnicate: unknown key")
        );
        assert_eq!(error("[server]\nport = 80"), "server.port: unknown key");
        assert_eq!(error("[pool]\nbudget = \"1g\""), "pool.budget: unknown key");
        assert_eq!(error("verbose = true"), "verbose: unknown key");
    }

    #[test]
    fn a_misspelt_key_gets_the_nearest_key_allowed_there() {
        assert_eq!(
            function_error("timout = \"5s\""),
            format!("{ECHO}.timout: unknown key, did you mean `timeout`?")
        );
        for (fields, typed, meant) in [
            ("memroy = \"64m\"", "memroy", "memory"),
            ("max_concurency = 2", "max_concurency", "max_concurrency"),
            ("idle_timout = \"1m\"", "idle_timout", "idle_timeout"),
            ("cmdd = [\"line\"]", "cmdd", "cmd"),
            ("Format = \"line\"", "Format", "format"),
        ] {
            assert_eq!(
                function_error(fields),
                format!("{ECHO}.{typed}: unknown key, did you mean `{meant}`?")
            );
        }
        assert_eq!(
            error("[server]\nlisen = \"127.0.0.1:1\""),
            "server.lisen: unknown key, did you mean `listen`?"
        );
        assert_eq!(
            error("[server]\nmax_conections = 5"),
            "server.max_conections: unknown key, did you mean `max_connections`?"
        );
        assert_eq!(
            error("[pool]\nevicton = \"lru\""),
            "pool.evicton: unknown key, did you mean `eviction`?"
        );
        assert_eq!(
            error("[pool]\nmemory_budgt = \"1g\""),
            "pool.memory_budgt: unknown key, did you mean `memory_budget`?"
        );
        assert_eq!(
            error("[[functions]]\nname = \"a\"\nimage = \"i\""),
            "functions: unknown key, did you mean `function`?"
        );
        assert_eq!(
            error("[sever]\nlisten = \"127.0.0.1:1\""),
            "sever: unknown key, did you mean `server`?"
        );
        // Nothing close: no suggestion, least of all for a short key.
        assert_eq!(
            function_error("ram = \"64m\""),
            format!("{ECHO}.ram: unknown key")
        );
        assert_eq!(
            function_error("timeouts_all = \"5s\""),
            format!("{ECHO}.timeouts_all: unknown key")
        );
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_substitutions_and_swaps() {
        assert_eq!(edit_distance("timeout", "timeout"), 0);
        assert_eq!(edit_distance("timout", "timeout"), 1);
        assert_eq!(edit_distance("timeoutt", "timeout"), 1);
        assert_eq!(edit_distance("tineout", "timeout"), 1);
        assert_eq!(edit_distance("memroy", "memory"), 1, "a swap is one edit");
        assert_eq!(edit_distance("", "cmd"), 3);
        assert_eq!(edit_distance("cnd", "cmd"), 1);
        assert_eq!(edit_distance("usr", "user"), 1);
        assert_eq!(edit_distance("é", "e"), 1, "characters, not bytes");
        assert_eq!(nearest_key("cnd", &["cmd", "env"]), Some("cmd"));
        assert_eq!(
            nearest_key("cnv", &["cmd"]),
            None,
            "2 edits are too many for 3 letters"
        );
        assert_eq!(
            nearest_key("timeot_", &["timeout"]),
            Some("timeout"),
            "2 edits for 6 letters or more"
        );
        assert_eq!(
            nearest_key("tmeout", &["timeout", "queue_timeout"]),
            Some("timeout")
        );
        assert_eq!(
            nearest_key("user", &["user", "users"]),
            Some("user"),
            "the nearest, not the first close"
        );
        assert_eq!(nearest_key("abc", &[]), None);
    }

    #[test]
    fn errors_name_the_function_once_its_name_is_valid() {
        let named = ["a", "b", "c", "echo"]
            .map(|name| format!("[[function]]\nname = \"{name}\"\nimage = \"i\"\n"))
            .concat();
        assert_eq!(
            error(&format!(
                "{named}[[function]]\nname = \"echo\"\nmemory = \"12q\""
            )),
            r#"function "echo" (function[4]).memory: "12q" has an unknown unit "q": use b, k, m, g or t"#,
            "the function's name, and its index in the file"
        );
        assert_eq!(
            error("[[function]]\nmemory = \"12q\"\nname = \"late\"\nimage = \"i\""),
            r#"function "late" (function[0]).memory: "12q" has an unknown unit "q": use b, k, m, g or t"#,
            "a name written after the bad key counts too"
        );
        for name in ["", "name = \"bad name!\"", "name = 5", "name = \"\""] {
            assert_eq!(
                error(&format!(
                    "[[function]]\nmemory = \"12q\"\n{name}\nimage = \"i\""
                )),
                r#"function[0].memory: "12q" has an unknown unit "q": use b, k, m, g or t"#,
                "no valid name ({name:?}): the index alone"
            );
        }
        assert_eq!(
            error("[[function]]\nname = \"a\""),
            "function \"a\" (function[0]).image: is required"
        );
        assert_eq!(
            error("[[function]]\nimage = \"i\""),
            "function[0].name: is required"
        );
        assert_eq!(
            function_error("cmd = [\"line\", 3]"),
            format!("{ECHO}.cmd[1]: expected a string, found integer 3"),
            "the path inside the function follows"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        assert_eq!(
            function_error("memory = 64"),
            format!("{ECHO}.memory: expected a string in quotes, found integer 64")
        );
        assert_eq!(
            function_error("max_concurrency = \"4\""),
            format!("{ECHO}.max_concurrency: expected a whole number, found string \"4\"")
        );
        assert_eq!(
            function_error("cmd = \"line\""),
            format!("{ECHO}.cmd: expected an array of strings, found string \"line\"")
        );
        assert_eq!(
            function_error("cmd = [\"line\", 3]"),
            format!("{ECHO}.cmd[1]: expected a string, found integer 3")
        );
        assert_eq!(
            function_error("env = \"A=1\""),
            format!(
                "{ECHO}.env: expected a table like {{ KEY = \"value\" }}, found string \"A=1\""
            )
        );
        assert_eq!(
            error("server = 1"),
            "server: expected a table ([server]), found integer 1"
        );
        assert_eq!(
            error("[function]\nname = \"a\"\nimage = \"i\""),
            "function: expected an array of tables ([[function]]), found a table"
        );
        assert_eq!(
            error("function = [1]"),
            "function[0]: expected a table, found integer 1"
        );
    }

    #[test]
    fn arrays_where_tables_belong_are_errors() {
        assert_eq!(
            error("server = []"),
            "server: expected a table ([server]), found an array"
        );
        assert_eq!(
            error("function = [[\"a\", \"i\"]]"),
            "function[0]: expected a table, found an array"
        );
    }

    #[test]
    fn max_response_is_the_pools_max_response_bytes() {
        let config = ServeConfig::from_toml(
            "[server]\nmax_response = \"1m\"\n[[function]]\nname = \"a\"\nimage = \"i\"",
        )
        .unwrap();
        assert_eq!(config.pool.max_response_bytes, 1 << 20);
        let config = ServeConfig::from_toml("[[function]]\nname = \"a\"\nimage = \"i\"").unwrap();
        assert_eq!(
            config.pool.max_response_bytes,
            PoolConfig::default().max_response_bytes
        );
    }

    #[test]
    fn at_least_one_function_is_required() {
        assert_eq!(
            error("[server]\nlisten = \"127.0.0.1:1\""),
            "function: at least one [[function]] is required"
        );
        assert_eq!(
            error("function = []"),
            "function: at least one [[function]] is required"
        );
    }

    #[test]
    fn syntax_errors_are_one_line_with_line_and_column() {
        let err = ServeConfig::from_toml("[server]\nlisten = 127.0.0.1:8080\n").unwrap_err();
        assert_eq!(err.key, None, "a syntax error names no key");
        assert_eq!(
            err.to_string(),
            "line 2, column 15: invalid float, expected nothing"
        );
        // Columns count characters, not bytes.
        assert_eq!(
            error("# é\nname = \"é\" x"),
            "line 2, column 12: unexpected key or value, expected newline, `#`"
        );
        for text in ["a = \"x\nb = 1", "[a]\n[a]\n", "x = [1,\n", "= 1"] {
            let message = error(text);
            assert!(
                message.starts_with("line ") && !message.contains('\n'),
                "{message:?}"
            );
        }
    }

    #[test]
    fn server_limits_and_authentication_keys() {
        let server = |fields: &str| {
            ServeConfig::from_toml(&format!(
                "[server]\n{fields}\n[[function]]\nname = \"a\"\nimage = \"i\""
            ))
            .map(|config| config.server)
        };
        let config = server("max_response = \"1g\"\nmax_body = \"1g\"").unwrap();
        assert_eq!((config.max_response, config.max_body), (1 << 30, 1 << 30));
        let config = server("call_logs = \"0\"").unwrap();
        assert_eq!(config.call_logs, 0, "0 keeps no call's log");
        let config = server("auth_tokens_file = \"tokens\"").unwrap();
        assert_eq!(config.auth_tokens_file, Some(PathBuf::from("tokens")));
        assert!(!config.metrics_auth);
        for (fields, message) in [
            (
                "max_response = \"2g\"",
                "server.max_response: \"2g\" is more than 1g",
            ),
            (
                "max_body = \"1t\"",
                "server.max_body: \"1t\" is more than 1g",
            ),
            (
                "max_stream = \"2t\"",
                "server.max_stream: \"2t\" is more than 1t",
            ),
            (
                "stream_idle_timeout = \"0s\"",
                "server.stream_idle_timeout: \"0s\" must be more than 0",
            ),
            (
                "call_logs = \"17g\"",
                "server.call_logs: \"17g\" is more than 16g",
            ),
            (
                "call_logs = \"lots\"",
                "server.call_logs: \"lots\" is not a size: expected a number with an optional unit, \
                 like 64m or 2g",
            ),
            (
                "max_response = \"0\"",
                "server.max_response: \"0\" must be more than 0",
            ),
            (
                "header_timeout = \"0s\"",
                "server.header_timeout: \"0s\" must be more than 0",
            ),
            (
                "body_timeout = \"25h\"",
                "server.body_timeout: \"25h\" is more than 24h",
            ),
            (
                "max_connections = 0",
                "server.max_connections: 0 is less than 1",
            ),
            (
                "max_connections = 9223372036854775807",
                "server.max_connections: 9223372036854775807 is more than 1000000",
            ),
            (
                "auth_tokens_file = \"\"",
                "server.auth_tokens_file: must not be empty",
            ),
            (
                "metrics_auth = \"yes\"",
                "server.metrics_auth: expected true or false, found string \"yes\"",
            ),
            (
                "metrics_auth = true",
                "server.metrics_auth: needs server.auth_tokens_file, the tokens to check",
            ),
        ] {
            assert_eq!(server(fields).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn durations_that_would_overflow_clocks_are_rejected() {
        for key in ["timeout", "queue_timeout"] {
            assert_eq!(
                function_error(&format!("{key} = \"10000000000000000000s\"")),
                format!("{ECHO}.{key}: \"10000000000000000000s\" is more than 24h")
            );
            assert_eq!(
                ServeConfig::from_toml(&format!(
                    "[[function]]\nname = \"a\"\nimage = \"i\"\n{key} = \"24h\""
                ))
                .map(|config| config.functions[0]
                    .timeout
                    .max(config.functions[0].queue_timeout)),
                Ok(Duration::from_secs(24 * 3600))
            );
        }
        assert_eq!(
            function_error("idle_timeout = \"10000000000000000000s\""),
            format!("{ECHO}.idle_timeout: \"10000000000000000000s\" is more than 365d")
        );
        assert_eq!(
            error("[pool]\nshutdown_timeout = \"2d\""),
            "pool.shutdown_timeout: \"2d\" is more than 24h"
        );
        let config = ServeConfig::from_toml(
            "[pool]\nshutdown_timeout = \"0s\"\n[[function]]\nname = \"a\"\nimage = \"i\"",
        )
        .unwrap();
        assert_eq!(config.pool.shutdown_timeout, Duration::ZERO);
    }

    #[test]
    fn counts_that_would_panic_are_rejected() {
        assert_eq!(
            function_error("max_concurrency = 9223372036854775807"),
            format!("{ECHO}.max_concurrency: 9223372036854775807 is more than 10000")
        );
        assert_eq!(
            function_error("max_queue = 1000001"),
            format!("{ECHO}.max_queue: 1000001 is more than 1000000")
        );
        assert_eq!(
            function_error("max_queue = 18446744073709551615"),
            format!("{ECHO}.max_queue: 18446744073709551615 is more than 1000000")
        );
        assert_eq!(
            error("[pool]\nstats_max_points = 100001"),
            "pool.stats_max_points: 100001 is more than 100000"
        );
    }

    #[test]
    fn memory_below_the_engine_minimum_is_rejected_once_the_engine_is_known() {
        let docker = EngineTraits::new("docker", 6 << 20, true);
        let small = ServeConfig::from_toml(&format!("{FUNCTION}\nmemory = \"64\"")).unwrap();
        assert_eq!(
            small.check_engine(&docker).unwrap_err().to_string(),
            format!("{ECHO}.memory: 64 bytes is under the docker engine's minimum of 6 MiB")
        );
        let at_minimum =
            ServeConfig::from_toml("[[function]]\nname = \"a\"\nimage = \"i\"\nmemory = \"6m\"")
                .unwrap();
        assert_eq!(at_minimum.functions[0].memory, 6 << 20);
        at_minimum.check_engine(&docker).unwrap();
        let no_attach = EngineTraits::new("containerd", 0, false);
        let attached =
            ServeConfig::from_toml(&format!("{FUNCTION}\ntransport = \"attach\"")).unwrap();
        assert_eq!(
            attached.check_engine(&no_attach).unwrap_err().to_string(),
            format!("{ECHO}.transport: the containerd engine has no attach transport: use direct")
        );
    }

    #[test]
    fn cpus_are_whole_or_fractional_and_sane() {
        let cpus = |value: &str| {
            ServeConfig::from_toml(&format!(
                "[[function]]\nname = \"a\"\nimage = \"i\"\ncpus = {value}"
            ))
            .map(|config| config.functions[0].cpus.millis())
            .map_err(|e| e.to_string())
        };
        assert_eq!(cpus("2"), Ok(2000));
        assert_eq!(cpus("0.25"), Ok(250));
        assert_eq!(cpus("1.5e0"), Ok(1500));
        for (value, message) in [
            (
                "0",
                "function \"a\" (function[0]).cpus: \"0\" is less than 0.01",
            ),
            (
                "-1",
                "function \"a\" (function[0]).cpus: \"-1\" is not a number of CPUs, like 1 or 0.5",
            ),
            (
                "0.0001",
                "function \"a\" (function[0]).cpus: \"0.0001\" has more than 3 decimals",
            ),
            (
                "2000",
                "function \"a\" (function[0]).cpus: \"2000\" is more than 1024",
            ),
            (
                "nan",
                "function \"a\" (function[0]).cpus: \"NaN\" is not a number of CPUs, like 1 or 0.5",
            ),
            (
                "\"1\"",
                "function \"a\" (function[0]).cpus: expected a number like 1 or 0.5, found string \"1\"",
            ),
        ] {
            assert_eq!(cpus(value), Err(message.to_owned()), "{value}");
        }
    }

    #[test]
    fn users_tmp_and_read_only_are_checked() {
        assert_eq!(
            function_error("user = \"1000:\""),
            format!(
                "{ECHO}.user: \"1000:\" is not a user: use uid[:gid] (like 1000:1000) or a \
                 name from the image"
            )
        );
        assert_eq!(
            function_error("tmp_size = \"512k\""),
            format!("{ECHO}.tmp_size: \"512k\" is less than the minimum, 1m")
        );
        assert_eq!(
            function_error("read_only = \"false\""),
            format!("{ECHO}.read_only: expected true or false, found string \"false\"")
        );
        assert_eq!(
            function_error("transport = \"pipes\""),
            format!("{ECHO}.transport: \"pipes\" is not a transport: use direct or attach")
        );
        let config = ServeConfig::from_toml(
            "[[function]]\nname = \"a\"\nimage = \"i\"\nuser = \"0\"\ntmp_size = \"1m\"",
        )
        .unwrap();
        assert_eq!(
            (
                config.functions[0].user.as_str(),
                config.functions[0].tmp_size
            ),
            ("0", 1 << 20)
        );
    }

    #[test]
    fn log_limits_are_positive_sizes() {
        for key in ["log_per_call", "log_rate"] {
            assert_eq!(
                function_error(&format!("{key} = \"0\"")),
                format!("{ECHO}.{key}: \"0\" must be more than 0")
            );
            assert_eq!(
                function_error(&format!("{key} = 100")),
                format!("{ECHO}.{key}: expected a string in quotes, found integer 100")
            );
        }
    }

    #[test]
    fn key_and_reason_are_the_two_halves_of_the_message() {
        let err = ServeConfig::from_toml("[server]\nlisten = \"nope\"").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.listen"));
        assert_eq!(err.reason, "\"nope\" is not an address like 127.0.0.1:8080");
        assert_eq!(
            err.to_string(),
            "server.listen: \"nope\" is not an address like 127.0.0.1:8080"
        );
    }

    #[test]
    fn load_reads_the_file_and_names_its_path_when_it_cannot() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"[[function]]\nname = \"a\"\nimage = \"i\"\n")
            .unwrap();
        let config = ServeConfig::load(file.path()).unwrap();
        assert_eq!(config.functions[0].name, "a");

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = ServeConfig::load(&missing).unwrap_err().to_string();
        assert!(err.starts_with("cannot read config "), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}
