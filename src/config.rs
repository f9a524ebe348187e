//! The TOML config of `hotpool serve`: where to listen, the pool's limits, and the
//! functions it serves.
//!
//! The text is parsed into a plain TOML table first, then read section by section:
//! every value is checked on its own, so an error names the exact key path
//! (`server.listen`, `pool.memory_budget`, `function[1].memory`) and the reason.
//! Sizes (`"64m"`) and durations (`"5s"`) are strings in [`crate::units`] syntax.
//! Unknown keys are errors in every table. See `examples/hotpool.toml`.
//!
//! Every value is bounded, so a config that loads never panics or fails later:
//! timeouts up to 24 h (an idle timeout up to 365 days), memory of at least the
//! engine's 6 MiB minimum, counts and request and response sizes within sane
//! maxima.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use toml::{Table, Value};

use crate::driver::docker::{MIN_MEMORY, MIN_TMP_SIZE};
use crate::pool::{Format, FunctionSpec, KeepAlive};
use crate::units::{
    Cpus, parse_bytes, parse_bytes_at_least, parse_duration, parse_duration_within, parse_timeout,
    parse_user, show_bytes,
};

/// The longest a hot container may be kept idle: a year.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// The largest request body or response that may be allowed: 1 GiB.
const MAX_MESSAGE_SIZE: u64 = 1 << 30;
/// The most containers one function may run at once.
const MAX_CONCURRENCY: usize = 10_000;
/// The most calls that may wait for one function.
const MAX_QUEUE: usize = 1_000_000;
/// The most client connections the server may be allowed at once.
const MAX_CONNECTIONS: usize = 1_000_000;
/// The most stats points that may be kept per call.
const MAX_STATS_POINTS: usize = 100_000;

/// Everything `hotpool serve` reads from its config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The HTTP server (`[server]`).
    pub server: ServerConfig,
    /// The pool's limits (`[pool]`).
    pub pool: PoolSettings,
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
    /// default `6m`, at most `1g`).
    pub max_response: u64,
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
    /// Listen on `127.0.0.1:8080`, bodies and responses up to 6 MiB, 10 s for a
    /// request head and 30 s for its body, 512 connections, no authentication.
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body: 6 << 20,
            max_response: 6 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
            auth_tokens_file: None,
            metrics_auth: false,
        }
    }
}

/// The `[pool]` table: limits shared by all functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// The pool's name, labelled on its containers as `hotpool.pool=<name>`
    /// (`name`, default `serve`).
    pub name: String,
    /// The most the memory limits of all live containers may add up to, in bytes
    /// (`memory_budget`, default `2g`).
    pub memory_budget: u64,
    /// How long in-flight calls get to finish on shutdown (`shutdown_timeout`,
    /// default `30s`, at most `24h`).
    pub shutdown_timeout: Duration,
    /// The most stats points kept per call (`stats_max_points`, default 240).
    pub stats_max_points: usize,
}

impl Default for PoolSettings {
    /// Named `serve`, a 2 GiB memory budget, 30 s to shut down, 240 stats points.
    fn default() -> PoolSettings {
        PoolSettings {
            name: "serve".to_owned(),
            memory_budget: 2 << 30,
            shutdown_timeout: Duration::from_secs(30),
            stats_max_points: 240,
        }
    }
}

/// A config that cannot be used: the key path of the bad value and why.
///
/// Displays as `<key>: <reason>`, e.g.
/// `function[1].memory: "12q" has an unknown unit "q": use b, k, m, g or t`. Errors
/// that are not about one key (TOML syntax, an unreadable file) have an empty key
/// and display as the reason alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}{separator}{reason}", separator = if .key.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    key: String,
    reason: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The key path of the bad value (`server.listen`, `function[0].name`); empty
    /// when the error is not about one key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Why the value is bad, e.g. `"nope" is not an address like 127.0.0.1:8080`.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl ServeConfig {
    /// Parses and checks a config.
    pub fn from_toml(text: &str) -> Result<ServeConfig, ConfigError> {
        let table = text
            .parse::<Table>()
            .map_err(|e| ConfigError::new("", syntax_error(text, &e)))?;
        let root = Section::open(String::new(), &table, ROOT_KEYS)?;
        let server = root.table("server", SERVER_KEYS)?;
        let pool = root.table("pool", POOL_KEYS)?;
        let functions = root.tables("function", FUNCTION_KEYS)?;
        let pool = pool_settings(pool)?;
        Ok(ServeConfig {
            server: server_config(server)?,
            functions: function_specs(functions, &pool)?,
            pool,
        })
    }

    /// Reads and parses the config file at `path`; an unreadable file is an error
    /// naming the path.
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = fs::read_to_string(path).map_err(|e| {
            ConfigError::new("", format!("cannot read config {}: {e}", path.display()))
        })?;
        ServeConfig::from_toml(&text)
    }
}

const ROOT_KEYS: &[&str] = &["server", "pool", "function"];

const SERVER_KEYS: &[&str] = &[
    "listen",
    "max_body",
    "max_response",
    "header_timeout",
    "body_timeout",
    "max_connections",
    "auth_tokens_file",
    "metrics_auth",
];

const POOL_KEYS: &[&str] = &[
    "name",
    "memory_budget",
    "shutdown_timeout",
    "stats_max_points",
];

const FUNCTION_KEYS: &[&str] = &[
    "name",
    "image",
    "cmd",
    "format",
    "memory",
    "timeout",
    "idle_timeout",
    "max_concurrency",
    "max_queue",
    "queue_timeout",
    "env",
    "network",
    "cpus",
    "user",
    "tmp_size",
    "read_only",
    "log_per_call",
    "log_rate",
];

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

fn server_config(section: Option<Section<'_>>) -> Result<ServerConfig, ConfigError> {
    let defaults = ServerConfig::default();
    let Some(section) = section else {
        return Ok(defaults);
    };
    let config = ServerConfig {
        listen: section
            .parsed("listen", parse_listen)?
            .unwrap_or(defaults.listen),
        max_body: section
            .parsed("max_body", message_size)?
            .unwrap_or(defaults.max_body),
        max_response: section
            .parsed("max_response", message_size)?
            .unwrap_or(defaults.max_response),
        header_timeout: section
            .parsed("header_timeout", parse_timeout)?
            .unwrap_or(defaults.header_timeout),
        body_timeout: section
            .parsed("body_timeout", parse_timeout)?
            .unwrap_or(defaults.body_timeout),
        max_connections: section
            .count("max_connections", 1, MAX_CONNECTIONS)?
            .unwrap_or(defaults.max_connections),
        auth_tokens_file: section
            .parsed("auth_tokens_file", non_empty)?
            .map(PathBuf::from),
        metrics_auth: section
            .boolean("metrics_auth")?
            .unwrap_or(defaults.metrics_auth),
    };
    if config.metrics_auth && config.auth_tokens_file.is_none() {
        return Err(section.error(
            "metrics_auth",
            "needs server.auth_tokens_file, the tokens to check",
        ));
    }
    Ok(config)
}

fn pool_settings(section: Option<Section<'_>>) -> Result<PoolSettings, ConfigError> {
    let defaults = PoolSettings::default();
    let Some(section) = section else {
        return Ok(defaults);
    };
    Ok(PoolSettings {
        name: section.parsed("name", valid_name)?.unwrap_or(defaults.name),
        memory_budget: section
            .parsed("memory_budget", positive_bytes)?
            .unwrap_or(defaults.memory_budget),
        shutdown_timeout: section
            .parsed("shutdown_timeout", shutdown_timeout)?
            .unwrap_or(defaults.shutdown_timeout),
        stats_max_points: section
            .count("stats_max_points", 0, MAX_STATS_POINTS)?
            .unwrap_or(defaults.stats_max_points),
    })
}

/// Reads every `[[function]]` and checks that there is at least one and that
/// their names are unique.
fn function_specs(
    sections: Vec<Section<'_>>,
    pool: &PoolSettings,
) -> Result<Vec<FunctionSpec>, ConfigError> {
    if sections.is_empty() {
        return Err(ConfigError::new(
            "function",
            "at least one [[function]] is required",
        ));
    }
    let specs = sections
        .into_iter()
        .map(|section| function_spec(section, pool))
        .collect::<Result<Vec<_>, _>>()?;
    let mut first_index = HashMap::new();
    for (index, spec) in specs.iter().enumerate() {
        if let Some(first) = first_index.insert(spec.name.as_str(), index) {
            return Err(ConfigError::new(
                format!("function[{index}].name"),
                format!("{:?} is defined twice (also function[{first}])", spec.name),
            ));
        }
    }
    Ok(specs)
}

fn function_spec(section: Section<'_>, pool: &PoolSettings) -> Result<FunctionSpec, ConfigError> {
    let name = section.required("name", valid_name)?;
    let image = section.required("image", non_empty)?;
    let defaults = FunctionSpec::new(name, image);
    let memory = section
        .parsed("memory", memory_limit)?
        .unwrap_or(defaults.memory);
    Ok(FunctionSpec {
        cmd: section.strings("cmd")?.unwrap_or(defaults.cmd),
        format: section
            .parsed("format", Format::from_str)?
            .unwrap_or(defaults.format),
        memory: within_budget(&section, memory, pool.memory_budget)?,
        timeout: section
            .parsed("timeout", parse_timeout)?
            .unwrap_or(defaults.timeout),
        keep_alive: section
            .parsed("idle_timeout", |text| {
                parse_duration_within(text, MAX_IDLE_TIMEOUT)
            })?
            .map_or(defaults.keep_alive, KeepAlive::fixed),
        eviction: defaults.eviction,
        max_concurrency: section
            .count("max_concurrency", 1, MAX_CONCURRENCY)?
            .unwrap_or(defaults.max_concurrency),
        max_queue: section
            .count("max_queue", 0, MAX_QUEUE)?
            .unwrap_or(defaults.max_queue),
        queue_timeout: section
            .parsed("queue_timeout", parse_timeout)?
            .unwrap_or(defaults.queue_timeout),
        env: section.env("env")?.unwrap_or(defaults.env),
        network: section.parsed("network", non_empty)?,
        cpus: section.cpus("cpus")?.unwrap_or(defaults.cpus),
        user: section.parsed("user", parse_user)?.unwrap_or(defaults.user),
        tmp_size: section
            .parsed("tmp_size", tmp_size)?
            .unwrap_or(defaults.tmp_size),
        read_only: section.boolean("read_only")?.unwrap_or(defaults.read_only),
        log_per_call: section
            .parsed("log_per_call", positive_bytes)?
            .unwrap_or(defaults.log_per_call),
        log_rate: section
            .parsed("log_rate", positive_bytes)?
            .unwrap_or(defaults.log_rate),
        ..defaults
    })
}

/// Checks a function's memory limit (written or the default) against the budget.
fn within_budget(section: &Section<'_>, memory: u64, budget: u64) -> Result<u64, ConfigError> {
    if memory > budget {
        return Err(section.error(
            "memory",
            format!(
                "{} is more than pool.memory_budget ({})",
                show_bytes(memory),
                show_bytes(budget)
            ),
        ));
    }
    Ok(memory)
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:8080"))
}

fn valid_name(text: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !text.chars().all(allowed) {
        return Err(format!(
            "{text:?} may contain only letters, digits, '.', '_' and '-'"
        ));
    }
    non_empty(text)
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(text.to_owned())
}

fn positive_bytes(text: &str) -> Result<u64, String> {
    match parse_bytes(text)? {
        0 => Err(format!("{text:?} must be more than 0")),
        bytes => Ok(bytes),
    }
}

/// A memory limit of at least the engine's minimum.
fn memory_limit(text: &str) -> Result<u64, String> {
    parse_bytes_at_least(text, MIN_MEMORY)
}

/// A `/tmp` size of at least [`MIN_TMP_SIZE`].
fn tmp_size(text: &str) -> Result<u64, String> {
    parse_bytes_at_least(text, MIN_TMP_SIZE)
}

/// A request body or response limit: more than 0, at most [`MAX_MESSAGE_SIZE`].
fn message_size(text: &str) -> Result<u64, String> {
    match positive_bytes(text)? {
        bytes if bytes > MAX_MESSAGE_SIZE => Err(format!(
            "{text:?} is more than {}",
            show_bytes(MAX_MESSAGE_SIZE)
        )),
        bytes => Ok(bytes),
    }
}

/// A shutdown grace period: 0 (none) up to [`crate::units::MAX_TIMEOUT`].
fn shutdown_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Ok(Duration::ZERO),
        _ => parse_timeout(text),
    }
}

fn env_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("variable names must not be empty".to_owned());
    }
    if name.contains('=') {
        return Err(format!("variable name {name:?} must not contain '='"));
    }
    Ok(())
}

/// One TOML table of the config and its key path (`""`, `server`, `function[0]`),
/// read one typed value at a time; every error names the value's full key path.
struct Section<'a> {
    path: String,
    table: &'a Table,
}

impl<'a> Section<'a> {
    /// Wraps `table`, failing on the first key not in `known`.
    fn open(path: String, table: &'a Table, known: &[&str]) -> Result<Section<'a>, ConfigError> {
        let section = Section { path, table };
        match table.keys().find(|key| !known.contains(&key.as_str())) {
            Some(unknown) => Err(section.error(unknown, "unknown key")),
            None => Ok(section),
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.key_path(key), reason)
    }

    fn expected(&self, key: &str, what: &str, found: &Value) -> ConfigError {
        self.error(key, format!("expected {what}, found {}", describe(found)))
    }

    /// A string value, parsed by `parse` (whose error is the reason); `None` if
    /// the key is absent.
    fn parsed<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => parse(text).map(Some).map_err(|e| self.error(key, e)),
            Some(other) => Err(self.expected(key, "a string in quotes", other)),
        }
    }

    /// Like [`Section::parsed`], but the key must be present.
    fn required<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parsed(key, parse)?
            .ok_or_else(|| self.error(key, "is required"))
    }

    /// A whole number from `min` to `max`.
    fn count(&self, key: &str, min: usize, max: usize) -> Result<Option<usize>, ConfigError> {
        let number = match self.table.get(key) {
            None => return Ok(None),
            Some(Value::Integer(number)) => *number,
            Some(other) => return Err(self.expected(key, "a whole number", other)),
        };
        match usize::try_from(number) {
            Ok(count) if count < min => {
                Err(self.error(key, format!("{number} is less than {min}")))
            }
            Ok(count) if count <= max => Ok(Some(count)),
            Err(_) if number < 0 => Err(self.error(key, format!("{number} is less than {min}"))),
            _ => Err(self.error(key, format!("{number} is more than {max}"))),
        }
    }

    /// `true` or `false`.
    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Boolean(value)) => Ok(Some(*value)),
            Some(other) => Err(self.expected(key, "true or false", other)),
        }
    }

    /// A number of CPUs, whole or fractional: `1`, `0.5`.
    fn cpus(&self, key: &str) -> Result<Option<Cpus>, ConfigError> {
        let text = match self.table.get(key) {
            None => return Ok(None),
            Some(Value::Integer(number)) => number.to_string(),
            Some(Value::Float(number)) => number.to_string(),
            Some(other) => return Err(self.expected(key, "a number like 1 or 0.5", other)),
        };
        text.parse().map(Some).map_err(|e| self.error(key, e))
    }

    /// An array of strings.
    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let items = match self.table.get(key) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.expected(key, "an array of strings", other)),
        };
        let string = |(index, item): (usize, &Value)| match item {
            Value::String(text) => Ok(text.clone()),
            other => Err(self.expected(&format!("{key}[{index}]"), "a string", other)),
        };
        items
            .iter()
            .enumerate()
            .map(string)
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// A table of environment variables: names non-empty and without `=`, values
    /// strings.
    fn env(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
        let table = match self.table.get(key) {
            None => return Ok(None),
            Some(Value::Table(table)) => table,
            Some(other) => {
                return Err(self.expected(key, "a table like { KEY = \"value\" }", other));
            }
        };
        let variable = |(name, value): (&String, &Value)| {
            env_name(name).map_err(|e| self.error(key, e))?;
            match value {
                Value::String(text) => Ok((name.clone(), text.clone())),
                other => Err(self.expected(&format!("{key}.{name}"), "a string", other)),
            }
        };
        table
            .iter()
            .map(variable)
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// A sub-table such as `[server]`; `None` if absent.
    fn table(&self, key: &str, known: &[&str]) -> Result<Option<Section<'a>>, ConfigError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Table(table)) => Section::open(self.key_path(key), table, known).map(Some),
            Some(other) => Err(self.expected(key, &format!("a table ([{key}])"), other)),
        }
    }

    /// An array of tables such as `[[function]]`; empty if absent.
    fn tables(&self, key: &str, known: &[&str]) -> Result<Vec<Section<'a>>, ConfigError> {
        let what = format!("an array of tables ([[{key}]])");
        let items = match self.table.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.expected(key, &what, other)),
        };
        let section = |(index, item): (usize, &'a Value)| {
            let path = format!("{}[{index}]", self.key_path(key));
            match item {
                Value::Table(table) => Section::open(path, table, known),
                other => Err(self.expected(&format!("{key}[{index}]"), "a table", other)),
            }
        };
        items.iter().enumerate().map(section).collect()
    }
}

/// A value as an error message names it: `integer 64`, `an array`, `a table`.
fn describe(value: &Value) -> String {
    match value {
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
        scalar => format!("{} {scalar}", scalar.type_str()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// The message of the error `text` gives.
    fn error(text: &str) -> String {
        ServeConfig::from_toml(text).unwrap_err().to_string()
    }

    /// The message of the error a function `echo` with image `img` and `fields`
    /// gives.
    fn function_error(fields: &str) -> String {
        error(&format!(
            "[[function]]\nname = \"echo\"\nimage = \"img\"\n{fields}"
        ))
    }

    #[test]
    fn full_config_parses_to_exactly_what_is_written() {
        let config = ServeConfig::from_toml(
            r#"
            [server]
            listen = "0.0.0.0:9090"
            max_body = "1m"
            max_response = "2m"
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

            [[function]]
            name = "echo"
            image = "hotpool-testfn:dev"
            cmd = ["line", "--verbose"]
            format = "http"
            memory = "64m"
            timeout = "1500ms"
            idle_timeout = "2m"
            max_concurrency = 8
            max_queue = 0
            queue_timeout = "250ms"
            env = { KEY = "value", EMPTY = "" }
            network = "bridge"
            cpus = 0.5
            user = "nobody:nogroup"
            tmp_size = "8m"
            read_only = false
            log_per_call = "64k"
            log_rate = "1k"
            "#,
        )
        .unwrap();
        let expected = ServeConfig {
            server: ServerConfig {
                listen: "0.0.0.0:9090".parse().unwrap(),
                max_body: 1 << 20,
                max_response: 2 << 20,
                header_timeout: Duration::from_secs(3),
                body_timeout: Duration::from_secs(4),
                max_connections: 64,
                auth_tokens_file: Some(PathBuf::from("/etc/hotpool/tokens")),
                metrics_auth: true,
            },
            pool: PoolSettings {
                name: "edge-1".into(),
                memory_budget: 4 << 30,
                shutdown_timeout: Duration::from_secs(5),
                stats_max_points: 60,
            },
            functions: vec![FunctionSpec {
                name: "echo".into(),
                image: "hotpool-testfn:dev".into(),
                cmd: vec!["line".into(), "--verbose".into()],
                format: Format::Http,
                memory: 64 << 20,
                timeout: Duration::from_millis(1500),
                keep_alive: KeepAlive::fixed(Duration::from_secs(120)),
                eviction: Default::default(),
                max_concurrency: 8,
                max_queue: 0,
                queue_timeout: Duration::from_millis(250),
                env: BTreeMap::from([
                    ("EMPTY".into(), String::new()),
                    ("KEY".into(), "value".into()),
                ]),
                network: Some("bridge".into()),
                cpus: "0.5".parse().unwrap(),
                user: "nobody:nogroup".into(),
                tmp_size: 8 << 20,
                read_only: false,
                log_per_call: 64 << 10,
                log_rate: 1 << 10,
            }],
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let config =
            ServeConfig::from_toml("[[function]]\nname = \"echo\"\nimage = \"img\"\n").unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.server.max_body, 6 << 20);
        assert_eq!(config.server.max_response, 6 << 20);
        assert_eq!(config.server.header_timeout, Duration::from_secs(10));
        assert_eq!(config.server.body_timeout, Duration::from_secs(30));
        assert_eq!(config.server.max_connections, 512);
        assert_eq!(config.server.auth_tokens_file, None);
        assert!(!config.server.metrics_auth);
        assert_eq!(config.pool.name, "serve");
        assert_eq!(config.pool.memory_budget, 2 << 30);
        assert_eq!(config.pool.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.pool.stats_max_points, 240);
        assert_eq!(config.functions, [FunctionSpec::new("echo", "img")]);
        let spec = &config.functions[0];
        assert_eq!(spec.format, Format::Line);
        assert_eq!(spec.memory, 128 << 20);
        assert_eq!(spec.timeout, Duration::from_secs(30));
        assert_eq!(spec.keep_alive, KeepAlive::fixed(Duration::from_secs(60)));
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
    fn empty_tables_get_the_defaults() {
        let config =
            ServeConfig::from_toml("[server]\n[pool]\n[[function]]\nname = \"a\"\nimage = \"i\"")
                .unwrap();
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(config.pool, PoolSettings::default());
    }

    #[test]
    fn example_file_parses() {
        let config = ServeConfig::from_toml(include_str!("../examples/hotpool.toml")).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.pool.memory_budget, 1 << 30);
        let summary: Vec<_> = config
            .functions
            .iter()
            .map(|f| (f.name.as_str(), f.format, f.cmd.join(" ")))
            .collect();
        assert_eq!(
            summary,
            [
                ("echo", Format::Line, "line".to_owned()),
                ("echo-http", Format::Http, "http".to_owned()),
                ("echo-cold", Format::Cold, "echo".to_owned()),
                ("hello", Format::Http, String::new()),
            ]
        );
        let echo = &config.functions[0];
        assert_eq!(echo.image, "hotpool-testfn:dev");
        assert_eq!(echo.memory, 64 << 20);
        assert_eq!(echo.timeout, Duration::from_secs(5));
        assert_eq!(echo.keep_alive, KeepAlive::fixed(Duration::from_secs(60)));
        assert_eq!(echo.max_concurrency, 4);
    }

    #[test]
    fn bad_sizes_name_the_key_and_the_unit() {
        assert_eq!(
            error(
                "[[function]]\nname = \"a\"\nimage = \"i\"\n\
                 [[function]]\nname = \"b\"\nimage = \"i\"\nmemory = \"12q\""
            ),
            r#"function[1].memory: "12q" has an unknown unit "q": use b, k, m, g or t"#
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
            r#"function[2].name: "echo" is defined twice (also function[0])"#
        );
    }

    #[test]
    fn image_must_be_given_and_not_empty() {
        assert_eq!(
            error("[[function]]\nname = \"a\""),
            "function[0].image: is required"
        );
        assert_eq!(
            error("[[function]]\nname = \"a\"\nimage = \"\""),
            "function[0].image: must not be empty"
        );
    }

    #[test]
    fn memory_must_be_positive_and_within_the_budget() {
        assert_eq!(
            function_error("memory = \"0m\""),
            "function[0].memory: \"0m\" is less than the minimum, 6m"
        );
        assert_eq!(
            function_error("memory = \"3g\""),
            "function[0].memory: 3g is more than pool.memory_budget (2g)"
        );
        assert_eq!(
            error(
                "[pool]\nmemory_budget = \"100m\"\n[[function]]\nname = \"a\"\nimage = \"i\"\nmemory = \"101m\""
            ),
            "function[0].memory: 101m is more than pool.memory_budget (100m)"
        );
        assert_eq!(
            error("[pool]\nmemory_budget = \"100m\"\n[[function]]\nname = \"a\"\nimage = \"i\""),
            "function[0].memory: 128m is more than pool.memory_budget (100m)",
            "the default memory counts too"
        );
        let config = ServeConfig::from_toml(
            "[pool]\nmemory_budget = \"100m\"\n[[function]]\nname = \"a\"\nimage = \"i\"\nmemory = \"100m\"",
        )
        .unwrap();
        assert_eq!(config.functions[0].memory, 100 << 20);
    }

    #[test]
    fn timeouts_must_be_positive_durations() {
        for key in ["timeout", "idle_timeout", "queue_timeout"] {
            assert_eq!(
                function_error(&format!("{key} = \"0s\"")),
                format!("function[0].{key}: \"0s\" must be more than 0")
            );
            assert!(
                function_error(&format!("{key} = \"5\""))
                    .starts_with(&format!("function[0].{key}: \"5\" is not a duration")),
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
            "function[0].max_concurrency: 0 is less than 1"
        );
        assert_eq!(
            function_error("max_queue = -1"),
            "function[0].max_queue: -1 is less than 0"
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
            r#"function[0].format: "grpc" is not a format: use cold, line or http"#
        );
        for (name, format) in [
            ("cold", Format::Cold),
            ("line", Format::Line),
            ("http", Format::Http),
        ] {
            let text = format!("[[function]]\nname = \"a\"\nimage = \"i\"\nformat = \"{name}\"");
            assert_eq!(
                ServeConfig::from_toml(&text).unwrap().functions[0].format,
                format
            );
        }
    }

    #[test]
    fn env_names_must_be_non_empty_without_equals_and_values_strings() {
        assert_eq!(
            function_error("env = { \"\" = \"x\" }"),
            "function[0].env: variable names must not be empty"
        );
        assert_eq!(
            function_error("env = { \"A=B\" = \"x\" }"),
            r#"function[0].env: variable name "A=B" must not contain '='"#
        );
        assert_eq!(
            function_error("env = { PORT = 80 }"),
            "function[0].env.PORT: expected a string, found integer 80"
        );
    }

    #[test]
    fn network_must_not_be_empty() {
        assert_eq!(
            function_error("network = \"\""),
            "function[0].network: must not be empty"
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
            "function[0].frobnicate: unknown key"
        );
        assert_eq!(error("[server]\nport = 80"), "server.port: unknown key");
        assert_eq!(error("[pool]\nbudget = \"1g\""), "pool.budget: unknown key");
        assert_eq!(error("verbose = true"), "verbose: unknown key");
        assert_eq!(
            error("[[functions]]\nname = \"a\"\nimage = \"i\""),
            "functions: unknown key"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        assert_eq!(
            function_error("memory = 64"),
            "function[0].memory: expected a string in quotes, found integer 64"
        );
        assert_eq!(
            function_error("max_concurrency = \"4\""),
            "function[0].max_concurrency: expected a whole number, found string \"4\""
        );
        assert_eq!(
            function_error("cmd = \"line\""),
            "function[0].cmd: expected an array of strings, found string \"line\""
        );
        assert_eq!(
            function_error("cmd = [\"line\", 3]"),
            "function[0].cmd[1]: expected a string, found integer 3"
        );
        assert_eq!(
            function_error("env = \"A=1\""),
            "function[0].env: expected a table like { KEY = \"value\" }, found string \"A=1\""
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
        assert_eq!(err.key(), "");
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
                format!("function[0].{key}: \"10000000000000000000s\" is more than 24h")
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
            "function[0].idle_timeout: \"10000000000000000000s\" is more than 365d"
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
            "function[0].max_concurrency: 9223372036854775807 is more than 10000"
        );
        assert_eq!(
            function_error("max_queue = 1000001"),
            "function[0].max_queue: 1000001 is more than 1000000"
        );
        assert_eq!(
            error("[pool]\nstats_max_points = 100001"),
            "pool.stats_max_points: 100001 is more than 100000"
        );
    }

    #[test]
    fn memory_below_the_engine_minimum_is_rejected() {
        assert_eq!(
            function_error("memory = \"64\""),
            "function[0].memory: \"64\" is less than the minimum, 6m"
        );
        let config =
            ServeConfig::from_toml("[[function]]\nname = \"a\"\nimage = \"i\"\nmemory = \"6m\"")
                .unwrap();
        assert_eq!(config.functions[0].memory, 6 << 20);
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
            ("0", "function[0].cpus: \"0\" is less than 0.01"),
            (
                "-1",
                "function[0].cpus: \"-1\" is not a number of CPUs, like 1 or 0.5",
            ),
            (
                "0.0001",
                "function[0].cpus: \"0.0001\" has more than 3 decimals",
            ),
            ("2000", "function[0].cpus: \"2000\" is more than 1024"),
            (
                "nan",
                "function[0].cpus: \"NaN\" is not a number of CPUs, like 1 or 0.5",
            ),
            (
                "\"1\"",
                "function[0].cpus: expected a number like 1 or 0.5, found string \"1\"",
            ),
        ] {
            assert_eq!(cpus(value), Err(message.to_owned()), "{value}");
        }
    }

    #[test]
    fn users_tmp_and_read_only_are_checked() {
        assert_eq!(
            function_error("user = \"1000:\""),
            "function[0].user: \"1000:\" is not a user: use uid[:gid] (like 1000:1000) or a \
             name from the image"
        );
        assert_eq!(
            function_error("tmp_size = \"512k\""),
            "function[0].tmp_size: \"512k\" is less than the minimum, 1m"
        );
        assert_eq!(
            function_error("read_only = \"false\""),
            "function[0].read_only: expected true or false, found string \"false\""
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
                format!("function[0].{key}: \"0\" must be more than 0")
            );
            assert_eq!(
                function_error(&format!("{key} = 100")),
                format!("function[0].{key}: expected a string in quotes, found integer 100")
            );
        }
    }

    #[test]
    fn key_and_reason_are_the_two_halves_of_the_message() {
        let err = ServeConfig::from_toml("[server]\nlisten = \"nope\"").unwrap_err();
        assert_eq!(err.key(), "server.listen");
        assert_eq!(
            err.reason(),
            "\"nope\" is not an address like 127.0.0.1:8080"
        );
        assert_eq!(err.to_string(), format!("{}: {}", err.key(), err.reason()));
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
