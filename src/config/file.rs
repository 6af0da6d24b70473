//! The daemon's configuration layer: a TOML file, `RINGCAST_*` environment variables and
//! command-line flags, merged and validated here (never in `main.rs`).
//!
//! # Precedence
//!
//! command-line flag > environment variable > file (`--config FILE`) > built-in default.
//!
//! Every flag has an environment variable named after it (`--outbox-bytes-max` is
//! `RINGCAST_OUTBOX_BYTES_MAX`); `clap` resolves flag-over-variable, and the result arrives
//! here as an *overlay*: a TOML table with the same layout as the file, holding only what was
//! given. The overlay is merged over the file key by key, then the whole document is
//! deserialized into [`ConfigFile`] and validated by [`ConfigFile::resolve`].
//!
//! # Errors
//!
//! Unknown sections and keys are errors (`deny_unknown_fields` everywhere), reported with the
//! file's line and column by toml's spans; so are type errors. Validation errors (a value out
//! of range, a rule between two keys) name the key (`limits.group_id_bytes_max`) and where its
//! value came from (the file's line, or a flag/environment variable). The daemon does not
//! start on any of them; `ringcast check-config FILE` reports them and prints the effective
//! configuration otherwise.
//!
//! # Layout
//!
//! ```toml
//! [server]    # listening, shards, CPUs, what client messages do, the demo switch
//! [limits]    # every bound on connections, messages, queues and names
//! [timeouts]  # pings, idle, handshake, close, shutdown
//! [commands]  # client permissions and the per-connection command rate
//! [api]       # the HTTP control plane (/api, /metrics, /readyz)
//! [log]       # format, level, periodic stats
//! [auth]      # connect tokens (JWT), origin allowlist, per-address limits
//! [history]   # per-group history rules, its bounds, idempotent publish
//! [tls]       # wss://: certificate and key files, an optional separate listener
//! [cluster]   # the Redis backplane between nodes (off unless `urls` is set)
//! ```
//!
//! `dist/ringcast.toml` documents every key with its default.
//!
//! # Adding a section (cluster, auth, TLS...)
//!
//! A subsystem keeps its settings in one struct in its own module, deriving `Debug, Clone,
//! Default, serde::Serialize, serde::Deserialize` with `#[serde(deny_unknown_fields,
//! default)]` (secrets `#[serde(skip_serializing)]` or redacted, so `check-config` never
//! prints them), with a `validate(&self) -> Result<(), String>`. Wiring it is three lines
//! here:
//!
//! 1. a field of [`ConfigFile`]: `pub cluster: crate::cluster::ClusterConfig,` (the field
//!    name is the TOML section, `[cluster]`);
//! 2. in [`ConfigFile::resolve`]: `check("cluster", self.cluster.validate())?;` beside the
//!    others;
//! 3. in [`ConfigFile::resolve`]: `config.cluster = self.cluster.clone();` (the struct is
//!    a field of the runtime [`Config`]).
//!
//! Its flags go in `main.rs` as one `#[derive(clap::Args, serde::Serialize)]` struct of
//! `Option` fields named like the section's keys (`#[serde(skip_serializing_if =
//! "Option::is_none")]`), each with `env = "RINGCAST_<FLAG>"`, flattened into `Overrides`
//! under `#[serde(rename = "cluster")]`: the overlay then carries them with no other code.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Config, GroupPublishPolicy, JoinPolicy, OnMessage, Permissions, SlowConsumerPolicy};
use crate::api::ApiConfig;

/// The whole configuration document: one field per TOML section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// `[server]`.
    pub server: ServerSection,
    /// `[limits]`.
    pub limits: LimitsSection,
    /// `[timeouts]`.
    pub timeouts: TimeoutsSection,
    /// `[commands]`.
    pub commands: CommandsSection,
    /// `[api]`.
    pub api: ApiSection,
    /// `[log]`.
    pub log: LogSection,
    /// `[auth]`: connect tokens, origin allowlist, per-address limits.
    pub auth: crate::auth::AuthConfig,
    /// `[history]`: which groups keep a history, its bounds, idempotency keys.
    pub history: crate::history::HistoryConfig,
    /// `[tls]`: `wss://` certificate, key and listener.
    pub tls: crate::tls::TlsConfig,
    /// `[cluster]`: the Redis backplane between nodes (off unless `urls` is set).
    pub cluster: crate::cluster::ClusterConfig,
}

/// `[server]`: where the node listens, how it runs, what client messages do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address every shard listens on (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Shards (threads, one io_uring each); unset: one per CPU this process may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// CPUs to pin shards to, e.g. "0,1" or "2-5"; unset: every CPU this process may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Pin shard threads to CPUs.
    pub pin: bool,
    /// This node's id, 8 hex digits (part of every client id); unset: generated at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// What a client's Text/Binary message does; unset: `ignore`, or `commands` with `demo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_message: Option<OnMessage>,
    /// Send each new connection `{"type":"welcome","client_id":..}`; unset: only in commands
    /// mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub welcome: Option<bool>,
    /// Broadcast the server time to everyone at this interval (seed 000); "0s": off.
    #[serde(with = "humantime_str")]
    pub tick_interval: Duration,
    /// Demo mode: commands, and clients may join and publish anywhere. Never in production.
    pub demo: bool,
    /// io_uring submission queue entries per shard.
    pub ring_entries: u32,
    /// Read size for connections that are sending (idle ones use 16 bytes).
    pub read_buffer_bytes: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        let c = Config::default();
        ServerSection {
            listen: c.listen,
            shards: None,
            cpus: None,
            pin: true,
            node_id: None,
            on_message: None,
            welcome: None,
            tick_interval: Duration::ZERO,
            demo: false,
            ring_entries: c.ring_entries,
            read_buffer_bytes: c.read_buffer_bytes,
        }
    }
}

/// `[limits]`: every bound, units last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Open WebSocket connections on the node; past it upgrades get 503. Unset: what the
    /// open-file limit allows (it is also clamped to that).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_max: Option<usize>,
    /// Largest message a client may send; larger ones close with 1009.
    pub message_bytes_max: usize,
    /// Largest upgrade request head; larger ones get 431.
    pub header_bytes_max: usize,
    /// Bytes that may wait in one connection's outbox (queued plus in flight).
    pub outbox_bytes_max: usize,
    /// What happens to a connection over `outbox_bytes_max`: `disconnect` (1008) or `drop`.
    pub slow_consumer: SlowConsumerPolicy,
    /// Capacity of each shard's cross-shard inbox, in events (a full inbox drops, counted).
    pub inbox_events_max: usize,
    /// Handshakes in progress per shard; accepting pauses at this many.
    pub handshakes_per_shard_max: usize,
    /// Largest per-connection session (JSON text), in bytes.
    pub session_bytes_max: usize,
    /// Groups one connection may be in.
    pub groups_per_connection_max: usize,
    /// Longest group id or uid, in bytes.
    pub group_id_bytes_max: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let c = Config::default();
        let p = Permissions::default();
        LimitsSection {
            connections_max: None,
            message_bytes_max: c.message_bytes_max,
            header_bytes_max: c.header_bytes_max,
            outbox_bytes_max: c.outbox_bytes_max,
            slow_consumer: c.slow_consumer,
            inbox_events_max: c.inbox_events_max,
            handshakes_per_shard_max: c.handshakes_per_shard_max,
            session_bytes_max: c.session_bytes_max,
            groups_per_connection_max: p.groups_per_connection_max,
            group_id_bytes_max: p.group_id_bytes_max,
        }
    }
}

/// `[timeouts]`: humantime strings ("30s", "1m 30s", "500ms").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsSection {
    /// Interval between server pings; "0s" disables pings and the idle timeout.
    #[serde(with = "humantime_str")]
    pub ping_interval: Duration,
    /// Close (1001) a client silent (not even a pong) this long; must exceed `ping_interval`.
    #[serde(with = "humantime_str")]
    pub idle_timeout: Duration,
    /// Time a client has to send its upgrade request (slowloris bound).
    #[serde(with = "humantime_str")]
    pub handshake_timeout: Duration,
    /// After our close frame, how long to wait for the client's.
    #[serde(with = "humantime_str")]
    pub close_timeout: Duration,
    /// On SIGTERM/SIGINT, how long clients get to complete the close handshake.
    #[serde(with = "humantime_str")]
    pub shutdown_timeout: Duration,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        let c = Config::default();
        TimeoutsSection {
            ping_interval: c.ping_interval.unwrap_or(Duration::ZERO),
            idle_timeout: c.idle_timeout,
            handshake_timeout: c.handshake_timeout,
            close_timeout: c.close_timeout,
            shutdown_timeout: c.shutdown_timeout,
        }
    }
}

/// `[commands]`: what clients may do with commands (`on_message = "commands"`), and how fast.
/// Unset permissions follow `server.demo` (off by default, everything in demo mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsSection {
    /// Groups clients may join themselves: "off", "any", or a list of glob patterns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSpec>,
    /// Groups clients may publish to: "off", "joined" or "any".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_groups: Option<GroupPublishPolicy>,
    /// Clients may publish to every connection (send_to_all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_all: Option<bool>,
    /// Clients may send to one client by id (send_to_client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_clients: Option<bool>,
    /// Commands one client may send per second, sustained; 0: unlimited.
    pub per_sec: u32,
    /// Commands one client may send in a burst above the sustained rate.
    pub burst: u32,
    /// A client still over its rate this long after its first refusal is closed with 1008.
    #[serde(with = "humantime_str")]
    pub flood_close_after: Duration,
}

impl Default for CommandsSection {
    fn default() -> Self {
        let c = Config::default();
        CommandsSection {
            join: None,
            publish_groups: None,
            publish_all: None,
            publish_clients: None,
            per_sec: c.commands_per_sec,
            burst: c.commands_burst,
            flood_close_after: c.commands_flood_close_after,
        }
    }
}

/// `[api]`: the HTTP control plane.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Start the HTTP API (push, queries, /metrics, /healthz, /readyz).
    pub enabled: bool,
    /// Address of the API; a non-loopback address requires a token.
    pub listen: SocketAddr,
    /// Bearer token every request needs (except /healthz and /readyz). Prefer `token_file`
    /// or `RINGCAST_API_TOKEN` to writing it here.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redacted")]
    pub token: Option<String>,
    /// File holding the token (surrounding whitespace ignored), e.g. a systemd credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Largest request body; larger ones get 413.
    pub body_bytes_max: usize,
    /// Open HTTP connections at once (past it, accepting waits).
    pub connections_max: usize,
    /// Longest a request waits for the shards before 503.
    #[serde(with = "humantime_str")]
    pub shard_timeout: Duration,
    /// Time a client has to send a request head; also the keep-alive idle limit.
    #[serde(with = "humantime_str")]
    pub header_read_timeout: Duration,
}

impl fmt::Debug for ApiSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSection")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("body_bytes_max", &self.body_bytes_max)
            .field("connections_max", &self.connections_max)
            .field("shard_timeout", &self.shard_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .finish()
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        let a = ApiConfig::default();
        ApiSection {
            enabled: true,
            listen: a.listen,
            token: None,
            token_file: None,
            body_bytes_max: a.body_bytes_max,
            connections_max: a.connections_max,
            shard_timeout: a.shard_timeout,
            header_read_timeout: a.header_read_timeout,
        }
    }
}

fn redacted<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event (colour on a terminal).
    #[default]
    Human,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter: "info", "warn", "ringcast=debug,info"...; unset: `RUST_LOG`, else
    /// "info".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Log the node's counters at this interval; "0s": never.
    #[serde(with = "humantime_str")]
    pub stats_interval: Duration,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { format: LogFormat::Human, level: None, stats_interval: Duration::ZERO }
    }
}

impl LogSection {
    /// The filter to install: `level`, else `RUST_LOG`, else "info".
    pub fn filter(&self) -> String {
        self.level
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(|| "info".to_owned())
    }
}

/// Which groups clients may join, as written in the file: "off", "any" (or "*"), a
/// comma-separated string of patterns, or an array of patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSpec(pub JoinPolicy);

impl JoinSpec {
    /// Parse the string form ("off", "any", "public:*,room-?").
    pub fn parse(s: &str) -> Self {
        JoinSpec(match s.trim() {
            "off" => JoinPolicy::Off,
            "any" | "*" => JoinPolicy::Any,
            list => JoinPolicy::Matching(
                list.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
            ),
        })
    }
}

impl Serialize for JoinSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            JoinPolicy::Off => s.serialize_str("off"),
            JoinPolicy::Any => s.serialize_str("any"),
            JoinPolicy::Matching(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for JoinSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JoinSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#""off", "any", or glob patterns (a list, or one comma-separated string)"#,
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<JoinSpec, E> {
                Ok(JoinSpec::parse(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<JoinSpec, A::Error> {
                let mut v = Vec::new();
                while let Some(p) = a.next_element::<String>()? {
                    v.push(p);
                }
                Ok(JoinSpec(JoinPolicy::Matching(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Durations as humantime strings ("30s", "1m 30s", "250ms").
mod humantime_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}): write e.g. \"30s\", \"1m 30s\" or \"250ms\""
            ))
        })
    }
}

/// A configuration that failed to load or validate. Its `Display` is the whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The file is not valid TOML or does not fit the layout (unknown key, wrong type); the
    /// message carries toml's line, column and snippet.
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A flag or environment variable does not fit the layout.
    Override {
        /// serde's message.
        message: String,
    },
    /// A value is out of range, or two values contradict each other.
    Invalid {
        /// The key, `section.key`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
        /// Where the value came from: `"ringcast.toml line 12"`, `"a flag or environment
        /// variable"`, or `None` for a default.
        origin: Option<String>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, message } => {
                write!(f, "cannot read the configuration file {}: {message}", path.display())
            }
            ConfigError::Parse { path, message } => {
                write!(f, "invalid configuration file {}: {}", path.display(), message.trim_end())
            }
            ConfigError::Override { message } => {
                write!(f, "invalid setting from a flag or environment variable: {message}")
            }
            ConfigError::Invalid { key, message, origin } => {
                write!(f, "invalid configuration: {key}: {message}")?;
                if let Some(o) = origin {
                    write!(f, " (from {o})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A validated configuration, ready to start a node.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The node's configuration.
    pub config: Config,
    /// The HTTP API's configuration; `None` when `api.enabled` is false.
    pub api: Option<ApiConfig>,
    /// Logging.
    pub log: LogSection,
    /// The document with every value that depends on another filled in (what `check-config`
    /// prints).
    pub effective: ConfigFile,
}

impl Resolved {
    /// The effective configuration as TOML, secrets redacted, with a comment for values
    /// decided at start-up.
    pub fn effective_toml(&self) -> String {
        let mut out = String::from(
            "# Effective ringcast configuration (precedence: flags > RINGCAST_* environment > \
             file > defaults).\n",
        );
        if self.effective.limits.connections_max.is_none() {
            out.push_str(
                "# limits.connections_max: unset, the open-file limit decides at start.\n",
            );
        }
        if self.effective.server.node_id.is_none() {
            out.push_str("# server.node_id: unset, generated at start.\n");
        }
        if self.effective.log.level.is_none() {
            out.push_str(&format!("# log.level: unset, using {:?}.\n", self.log.filter()));
        }
        out.push_str(&toml::to_string(&self.effective).unwrap_or_else(|e| format!("# {e}\n")));
        out
    }
}

/// Load `path` (if any), merge `overlay` (flags and environment, same layout) over it, and
/// validate. See the module documentation for the precedence and the error reporting.
pub fn load(path: Option<&Path>, overlay: toml::Table) -> Result<Resolved, ConfigError> {
    load_with(path, overlay, |_| None)
}

/// [`load`], with `describe` naming where an overlay key came from (`"--idle-timeout"`,
/// `"RINGCAST_IDLE_TIMEOUT"`) for error messages; `None` says "a flag or environment
/// variable".
pub fn load_with(
    path: Option<&Path>,
    overlay: toml::Table,
    describe: impl Fn(&str) -> Option<String>,
) -> Result<Resolved, ConfigError> {
    let mut doc = toml::Table::new();
    let mut source = None;
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.to_owned(), message: e.to_string() })?;
        // Typed first, so unknown keys and type errors come with toml's line and column.
        toml::from_str::<ConfigFile>(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        doc = toml::from_str::<toml::Table>(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        source = Some((path.to_owned(), text));
    }
    merge(&mut doc, overlay.clone());
    let file: ConfigFile = toml::Value::Table(doc)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Override { message: e.to_string() })?;
    file.resolve().map_err(|e| match e {
        ConfigError::Invalid { key, message, .. } => {
            let origin = if lookup(&overlay, &key) {
                Some(describe(&key).unwrap_or_else(|| "a flag or environment variable".to_owned()))
            } else {
                source.as_ref().and_then(|(path, text)| {
                    line_of(text, &key).map(|l| format!("{} line {l}", path.display()))
                })
            };
            ConfigError::Invalid { key, message, origin }
        }
        e => e,
    })
}

/// Deep-merge `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Whether `table` holds the dotted `key`.
fn lookup(table: &toml::Table, key: &str) -> bool {
    let mut parts = key.split('.');
    let mut t = table;
    loop {
        let Some(p) = parts.next() else { return false };
        match t.get(p) {
            Some(toml::Value::Table(inner)) => t = inner,
            Some(_) => return parts.next().is_none(),
            None => return false,
        }
    }
}

/// The 1-based line of the dotted `key` in the TOML `text`.
fn line_of(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *part)?;
        if i + 1 == parts.len() {
            let at = k.span().start;
            return Some(text[..at].matches('\n').count() + 1);
        }
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    None
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), message: message.into(), origin: None }
}

fn at_least(key: &str, v: usize, min: usize) -> Result<(), ConfigError> {
    if v < min {
        return Err(invalid(key, format!("must be at least {min} (got {v})")));
    }
    Ok(())
}

fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "must be longer than 0s"));
    }
    Ok(())
}

/// Parse a CPU list: "0,2-4" → [0, 2, 3, 4].
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| format!("bad CPU '{a}'"))?,
                    b.trim().parse().map_err(|_| format!("bad CPU '{b}'"))?,
                );
                if a > b {
                    return Err(format!("bad CPU range '{part}'"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| format!("bad CPU '{part}'"))?),
        }
    }
    if cpus.is_empty() {
        return Err("empty CPU list".into());
    }
    Ok(cpus)
}

/// Parse a node id: up to 8 hex digits.
pub fn parse_node_id(s: &str) -> Result<u32, String> {
    if s.is_empty() || s.len() > 8 {
        return Err(format!("bad node id {s:?}: expected 1 to 8 hex digits"));
    }
    u32::from_str_radix(s, 16).map_err(|_| format!("bad node id {s:?}: expected 1 to 8 hex digits"))
}

impl ConfigFile {
    /// Validate every value and rule, fill in what depends on other values, and build the
    /// runtime configurations. The one place where configuration is checked.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let (s, l, t, c, a) =
            (&self.server, &self.limits, &self.timeouts, &self.commands, &self.api);
        let mut config = Config { listen: s.listen, ..Config::default() };

        // [server]
        if let Some(n) = s.shards {
            let max = crate::shard::directory::SHARDS_MAX;
            if n == 0 || n > max {
                return Err(invalid(
                    "server.shards",
                    format!("must be between 1 and {max} (got {n})"),
                ));
            }
            config.shards = n;
        }
        if let Some(cpus) = &s.cpus {
            config.cpus = Some(parse_cpu_list(cpus).map_err(|e| invalid("server.cpus", e))?);
        }
        config.pin = s.pin;
        if let Some(id) = &s.node_id {
            config.node_id = Some(parse_node_id(id).map_err(|e| invalid("server.node_id", e))?);
        }
        config.on_message =
            s.on_message.unwrap_or(if s.demo { OnMessage::Commands } else { OnMessage::Ignore });
        let welcome = s.welcome.unwrap_or(config.on_message == OnMessage::Commands);
        config.welcome = Some(welcome);
        config.tick_interval = Some(s.tick_interval).filter(|d| !d.is_zero());
        if s.ring_entries == 0 || s.ring_entries > 32768 {
            return Err(invalid(
                "server.ring_entries",
                format!("must be between 1 and 32768 (got {})", s.ring_entries),
            ));
        }
        config.ring_entries = s.ring_entries;
        at_least("server.read_buffer_bytes", s.read_buffer_bytes, 64)?;
        config.read_buffer_bytes = s.read_buffer_bytes;

        // [limits]
        if let Some(n) = l.connections_max {
            at_least("limits.connections_max", n, 1)?;
            config.connections_max = n;
        }
        at_least("limits.message_bytes_max", l.message_bytes_max, 1)?;
        config.message_bytes_max = l.message_bytes_max;
        at_least("limits.header_bytes_max", l.header_bytes_max, 256)?;
        config.header_bytes_max = l.header_bytes_max;
        at_least("limits.outbox_bytes_max", l.outbox_bytes_max, 1)?;
        config.outbox_bytes_max = l.outbox_bytes_max;
        config.slow_consumer = l.slow_consumer;
        at_least("limits.inbox_events_max", l.inbox_events_max, 1)?;
        config.inbox_events_max = l.inbox_events_max;
        at_least("limits.handshakes_per_shard_max", l.handshakes_per_shard_max, 1)?;
        config.handshakes_per_shard_max = l.handshakes_per_shard_max;
        at_least("limits.session_bytes_max", l.session_bytes_max, 2)?;
        config.session_bytes_max = l.session_bytes_max;
        let name_max = crate::ids::NAME_BYTES_MAX;
        if l.group_id_bytes_max == 0 || l.group_id_bytes_max > name_max {
            return Err(invalid(
                "limits.group_id_bytes_max",
                format!("must be between 1 and {name_max} (got {})", l.group_id_bytes_max),
            ));
        }

        // [timeouts]
        config.ping_interval = Some(t.ping_interval).filter(|d| !d.is_zero());
        if config.ping_interval.is_some() && t.idle_timeout <= t.ping_interval {
            return Err(invalid(
                "timeouts.idle_timeout",
                format!(
                    "must be longer than timeouts.ping_interval ({} <= {})",
                    humantime::format_duration(t.idle_timeout),
                    humantime::format_duration(t.ping_interval)
                ),
            ));
        }
        config.idle_timeout = t.idle_timeout;
        positive("timeouts.handshake_timeout", t.handshake_timeout)?;
        config.handshake_timeout = t.handshake_timeout;
        positive("timeouts.close_timeout", t.close_timeout)?;
        config.close_timeout = t.close_timeout;
        config.shutdown_timeout = t.shutdown_timeout;

        // [commands]
        let base = if s.demo { Permissions::demo() } else { Permissions::default() };
        let permissions = Permissions {
            join: c.join.clone().map_or(base.join, |j| j.0),
            publish_groups: c.publish_groups.unwrap_or(base.publish_groups),
            publish_all: c.publish_all.unwrap_or(base.publish_all),
            publish_clients: c.publish_clients.unwrap_or(base.publish_clients),
            groups_per_connection_max: l.groups_per_connection_max,
            group_id_bytes_max: l.group_id_bytes_max,
        };
        crate::command::JoinMatcher::new(&permissions.join)
            .map_err(|e| invalid("commands.join", e))?;
        at_least("commands.burst", c.burst as usize, 1)?;
        positive("commands.flood_close_after", c.flood_close_after)?;
        config.commands_per_sec = c.per_sec;
        config.commands_burst = c.burst;
        config.commands_flood_close_after = c.flood_close_after;

        // [api]
        let api = if a.enabled {
            let token = match (&a.token, &a.token_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "api.token_file",
                        "set api.token or api.token_file, not both",
                    ))
                }
                (Some(t), None) => Some(t.trim().to_owned()),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            invalid(
                                "api.token_file",
                                format!("cannot read {}: {e}", path.display()),
                            )
                        })?
                        .trim()
                        .to_owned(),
                ),
                (None, None) => None,
            };
            if token.as_deref() == Some("") {
                return Err(invalid("api.token", "must not be empty"));
            }
            if token.is_none() && !a.listen.ip().to_canonical().is_loopback() {
                return Err(invalid(
                    "api.listen",
                    format!(
                        "the HTTP API would listen on {} (not a loopback address) without a \
                         token: set a bearer token (api.token_file, RINGCAST_API_TOKEN or \
                         --api-token) or listen on 127.0.0.1",
                        a.listen
                    ),
                ));
            }
            at_least("api.body_bytes_max", a.body_bytes_max, 1)?;
            at_least("api.connections_max", a.connections_max, 1)?;
            positive("api.shard_timeout", a.shard_timeout)?;
            positive("api.header_read_timeout", a.header_read_timeout)?;
            Some(ApiConfig {
                listen: a.listen,
                token,
                body_bytes_max: a.body_bytes_max,
                shard_timeout: a.shard_timeout,
                group_id_bytes_max: l.group_id_bytes_max,
                connections_max: a.connections_max,
                header_read_timeout: a.header_read_timeout,
                demo_page: s.demo,
                shutdown_timeout: t.shutdown_timeout,
                observability: Default::default(),
                cluster: None,
                node_limits: crate::observe::NodeLimits {
                    inbox_events_max: l.inbox_events_max,
                    outbox_bytes_max: l.outbox_bytes_max,
                },
                // Shared keys come with a cluster's Redis; a single node keeps its own.
                idempotency_redis: None,
            })
        } else {
            None
        };

        // [log]
        if let Some(level) = &self.log.level {
            tracing_subscriber::EnvFilter::try_new(level).map_err(|e| {
                invalid("log.level", format!("{e}: write e.g. \"info\" or \"ringcast=debug,warn\""))
            })?;
        }

        // [auth]
        self.auth.validate().map_err(|m| invalid("auth", m))?;
        config.auth = self.auth.clone();

        // [history]
        self.history.validate_keyed().map_err(|(key, m)| invalid(&format!("history.{key}"), m))?;
        config.history = self.history.clone();
        // [tls]
        self.tls.validate().map_err(|m| {
            // Every message starts with the key it is about ("tls.key_file is set but...").
            let key = m.split_whitespace().next().unwrap_or("tls").to_owned();
            invalid(&key, m)
        })?;
        config.tls = self.tls.clone();

        // [cluster]
        self.cluster.check().map_err(|(key, m)| invalid(&format!("cluster.{key}"), m))?;
        config.cluster = self.cluster.clone();
        let mut effective = self.clone();
        effective.server.shards = Some(config.shards);
        effective.server.on_message = Some(config.on_message);
        effective.server.welcome = Some(welcome);
        effective.commands.join = Some(JoinSpec(permissions.join.clone()));
        effective.commands.publish_groups = Some(permissions.publish_groups);
        effective.commands.publish_all = Some(permissions.publish_all);
        effective.commands.publish_clients = Some(permissions.publish_clients);
        config.permissions = permissions;
        Ok(Resolved { config, api, log: self.log.clone(), effective })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    fn write(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("ringcast.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// A throwaway directory under the target dir (no extra crate for one test helper).
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "ringcast-config-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn defaults_match_the_runtime_defaults() {
        let r = load(None, toml::Table::new()).unwrap();
        let d = Config::default();
        assert_eq!(r.config.outbox_bytes_max, d.outbox_bytes_max);
        assert_eq!(r.config.ping_interval, d.ping_interval);
        assert_eq!(r.config.on_message, OnMessage::Ignore);
        assert_eq!(r.config.permissions, Permissions::default());
        assert_eq!(r.config.connections_max, usize::MAX);
        assert_eq!(r.api.as_ref().unwrap().listen, ApiConfig::default().listen);
    }

    #[test]
    fn overlay_beats_file_beats_default() {
        let (_d, path) = write("[limits]\noutbox_bytes_max = 1000\nmessage_bytes_max = 2000\n");
        let r = load(Some(&path), overlay("[limits]\noutbox_bytes_max = 3000\n")).unwrap();
        assert_eq!(r.config.outbox_bytes_max, 3000, "overlay wins");
        assert_eq!(r.config.message_bytes_max, 2000, "file beats default");
        assert_eq!(r.config.header_bytes_max, Config::default().header_bytes_max);
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let (_d, path) = write("[limits]\noutbox_bytes_max = 1000\nmax_connections = 5\n");
        let e = load(Some(&path), toml::Table::new()).unwrap_err().to_string();
        assert!(e.contains("max_connections"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let (_d, path) = write("[nope]\nx = 1\n");
        let e = load(Some(&path), toml::Table::new()).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn invalid_values_name_key_and_line() {
        let (_d, path) =
            write("[server]\nlisten = \"127.0.0.1:0\"\n\n[limits]\ngroup_id_bytes_max = 0\n");
        let e = load(Some(&path), toml::Table::new()).unwrap_err().to_string();
        assert!(e.contains("limits.group_id_bytes_max"), "{e}");
        assert!(e.contains("line 5"), "{e}");
        let e = load(Some(&path), overlay("[limits]\ngroup_id_bytes_max = 0\n")).unwrap_err();
        assert!(e.to_string().contains("flag or environment"), "{e}");
        let (_d, path) = write("[timeouts]\nping_interval = \"30s\"\nidle_timeout = \"10s\"\n");
        let e = load(Some(&path), toml::Table::new()).unwrap_err().to_string();
        assert!(e.contains("timeouts.idle_timeout") && e.contains("line 3"), "{e}");
        let (_d, path) = write("[timeouts]\nping_interval = \"thirty\"\n");
        let e = load(Some(&path), toml::Table::new()).unwrap_err().to_string();
        assert!(e.contains("invalid duration") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn the_history_section() {
        let (_d, path) = write(
            "[history]\nrules = [\n  { pattern = \"chat:*\", messages_max = 1000, age_max = \"10m\" },\n  \"feed:*=5,1h\",\n]\n\
             groups_max = 10\nbytes_max = 65536\nidempotency_window = \"30s\"\nidempotency_keys_max = 7\n",
        );
        let r = load(Some(&path), toml::Table::new()).unwrap();
        let h = &r.config.history;
        assert!(h.enabled());
        assert_eq!(h.rules.len(), 2);
        assert_eq!((h.rules[0].pattern.as_str(), h.rules[0].messages_max), ("chat:*", 1000));
        assert_eq!(h.rules[0].age_max, Duration::from_secs(600));
        assert_eq!(h.rules[1], "feed:*=5,1h".parse().unwrap());
        assert_eq!((h.groups_max, h.bytes_max, h.idempotency_keys_max), (10, 65536, 7));
        assert_eq!(h.idempotency_window, Duration::from_secs(30));
        // The effective configuration round-trips.
        let again: ConfigFile = toml::from_str(&r.effective_toml()).unwrap();
        assert_eq!(again.history, *h);
        // Flags (the overlay) replace the file's rules and override single keys.
        let r = load(
            Some(&path),
            overlay("[history]\nrules = [\"x=1,1s\"]\nidempotency_window = \"5m\"\n"),
        )
        .unwrap();
        assert_eq!(r.config.history.rules, vec!["x=1,1s".parse().unwrap()]);
        assert_eq!(r.config.history.idempotency_window, Duration::from_secs(300));
        assert_eq!(r.config.history.groups_max, 10);
        // Off by default.
        assert!(!load(None, toml::Table::new()).unwrap().config.history.enabled());
        // Bad values name their key and line (or the flag).
        let (_d, path) = write("[history]\ngroups_max = 0\n");
        let e = load(Some(&path), toml::Table::new()).unwrap_err().to_string();
        assert!(e.contains("history.groups_max") && e.contains("line 2"), "{e}");
        let (_d, path) = write("[history]\n\nrules = [\"chat:*=0,1m\"]\n");
        let e = load(Some(&path), toml::Table::new()).unwrap_err().to_string();
        assert!(e.contains("history.rules") && e.contains("line 3"), "{e}");
        assert!(e.contains("messages must be between 1 and"), "{e}");
        let e = load(None, overlay("[history]\nbytes_max = 10\n")).unwrap_err().to_string();
        assert!(e.contains("history.bytes_max") && e.contains("flag or environment"), "{e}");
        let (_d, path) = write("[history]\nrules = [\"chat:*\"]\n");
        let e = load(Some(&path), toml::Table::new()).unwrap_err().to_string();
        assert!(e.contains("PATTERN=MESSAGES,AGE"), "{e}");
        let (_d, path) = write("[history]\nwindow = \"1s\"\n");
        let e = load(Some(&path), toml::Table::new()).unwrap_err().to_string();
        assert!(e.contains("unknown field") && e.contains("window"), "{e}");
    }

    #[test]
    fn the_token_rule() {
        let e = load(None, overlay("[api]\nlisten = \"0.0.0.0:2021\"\n")).unwrap_err();
        assert!(e.to_string().contains("api.listen"), "{e}");
        let r =
            load(None, overlay("[api]\nlisten = \"0.0.0.0:2021\"\ntoken = \"s3cret\"\n")).unwrap();
        assert_eq!(r.api.as_ref().unwrap().token.as_deref(), Some("s3cret"));
        assert!(!r.effective_toml().contains("s3cret"), "the token is never printed");
        assert!(load(None, overlay("[api]\nenabled = false\nlisten = \"0.0.0.0:2021\"\n"))
            .unwrap()
            .api
            .is_none());
    }

    #[test]
    fn demo_sets_what_is_unset() {
        let r = load(None, overlay("[server]\ndemo = true\n[commands]\npublish_all = false\n"))
            .unwrap();
        assert_eq!(r.config.on_message, OnMessage::Commands);
        assert_eq!(r.config.permissions.join, JoinPolicy::Any);
        assert!(!r.config.permissions.publish_all, "an explicit value beats demo");
        assert!(r.config.permissions.publish_clients);
        assert_eq!(r.effective.server.on_message, Some(OnMessage::Commands));
    }

    #[test]
    fn join_accepts_a_list_or_a_string() {
        let r = load(None, overlay("[commands]\njoin = [\"public:*\", \"room-?\"]\n")).unwrap();
        assert_eq!(
            r.config.permissions.join,
            JoinPolicy::Matching(vec!["public:*".into(), "room-?".into()])
        );
        let r = load(None, overlay("[commands]\njoin = \"public:*,room-?\"\n")).unwrap();
        assert_eq!(
            r.config.permissions.join,
            JoinPolicy::Matching(vec!["public:*".into(), "room-?".into()])
        );
    }

    #[test]
    fn the_effective_configuration_reloads_to_the_same() {
        let r = load(None, overlay("[server]\ndemo = true\n[timeouts]\nping_interval = \"20s\"\n"))
            .unwrap();
        let text = r.effective_toml();
        let again: ConfigFile = toml::from_str(&text).unwrap();
        assert_eq!(again, r.effective);
    }
}
