//! `ringcast`: the push daemon. CLI (+ environment + config file, merged and validated by
//! `ringcast::config::file`) → start the shards and the HTTP API → wait for a signal →
//! graceful shutdown. Everything else lives in the library.
//!
//! Flag names follow one rule: noun first, then unit, then `max`/`min`
//! (`--connections-max`, `--message-bytes-max`); each flag `--x-y` is also the environment
//! variable `RINGCAST_X_Y`. Old spellings (`--max-connections`, `--tick`...) remain as hidden
//! aliases.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ringcast::config::file::{self as config_file, Resolved};
use ringcast::config::LogFormat;
use ringcast::Server;
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "ringcast",
    version,
    about = "Thread-per-core io_uring WebSocket broadcast daemon",
    after_help = "Settings come from, highest precedence first: flags, RINGCAST_* environment \
                  variables (RINGCAST_<FLAG>, e.g. RINGCAST_CONNECTIONS_MAX), the --config \
                  file, built-in defaults. See dist/ringcast.toml."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: accept WebSocket clients and fan messages out to them.
    Serve(ServeArgs),
    /// Validate a configuration file (with the same flags and RINGCAST_* environment `serve`
    /// would see) and print the effective configuration; exit 1 if it is invalid.
    CheckConfig(CheckArgs),
    /// Mint a connect token (HS256 JWT) signed with the node's secret (RINGCAST_AUTH_SECRET or
    /// --auth-secret-file) and print it.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (e.g. dist/ringcast.toml); flags and RINGCAST_* variables
    /// override it.
    #[arg(long, env = "RINGCAST_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The configuration file to check.
    file: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
}

/// Every setting that has a flag, in the file's layout: serialized, it is the overlay merged
/// over the file (only the flags and variables given). One struct per section; a new section
/// adds its own here the same way (see `ringcast::config::file`).
#[derive(clap::Args, Serialize)]
struct Overrides {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    limits: LimitsArgs,
    #[command(flatten)]
    timeouts: TimeoutsArgs,
    #[command(flatten)]
    commands: CommandsArgs,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    history: HistoryArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `true`/`false`, also `on`/`off`, `yes`/`no`, `1`/`0`.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(format!("expected true/false (or on/off), got {s:?}")),
    }
}

/// A humantime duration, kept as text for the overlay (validated here, parsed by the config).
fn duration_text(s: &str) -> Result<String, String> {
    humantime::parse_duration(s.trim())
        .map(|_| s.trim().to_owned())
        .map_err(|e| format!("{e}: write e.g. \"30s\", \"1m 30s\" or \"250ms\""))
}

fn cpu_list_text(s: &str) -> Result<String, String> {
    config_file::parse_cpu_list(s).map(|_| s.to_owned())
}

fn node_id_text(s: &str) -> Result<String, String> {
    config_file::parse_node_id(s).map(|_| s.to_owned())
}

#[derive(clap::Args, Serialize)]
#[command(next_help_heading = "Server [server]")]
struct ServerArgs {
    /// Address every shard listens on (SO_REUSEPORT) [default: 0.0.0.0:2020].
    #[arg(long, env = "RINGCAST_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Number of shards (threads, one io_uring each) [default: one per available CPU].
    #[arg(long, env = "RINGCAST_SHARDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    shards: Option<usize>,
    /// CPUs to pin shards to, e.g. "0,1" or "2-5"; shard i gets the i-th (wrapping)
    /// [default: the CPUs this process may run on].
    #[arg(long, env = "RINGCAST_CPUS", value_parser = cpu_list_text)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<String>,
    /// Do not pin shard threads to CPUs (server.pin = false).
    #[arg(long, env = "RINGCAST_NO_PIN")]
    #[serde(skip)]
    no_pin: bool,
    /// This node's id, 8 hex digits (part of every client id) [default: generated].
    #[arg(long, env = "RINGCAST_NODE_ID", value_parser = node_id_text)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// What a client's Text/Binary message does: ignore (clients only listen), relay (to every
    /// connection, seed 000's chat), commands (JSON commands, docs/api.md) [default: ignore;
    /// with --demo: commands].
    #[arg(long, env = "RINGCAST_ON_MESSAGE", value_parser = ["ignore", "relay", "commands"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    on_message: Option<String>,
    /// Send each new connection {"type":"welcome","client_id":..}: on/off [default: on in
    /// commands mode, off otherwise].
    #[arg(long, env = "RINGCAST_WELCOME", value_name = "BOOL", value_parser = parse_bool)]
    #[serde(skip_serializing_if = "Option::is_none")]
    welcome: Option<bool>,
    /// Broadcast the server time (Unix seconds) to every client at this interval, e.g. "10s"
    /// (seed 000's timer); "0s": off [default: off].
    #[arg(long, env = "RINGCAST_TICK_INTERVAL", alias = "tick", value_parser = duration_text)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tick_interval: Option<String>,
    /// Allow what Workerman's seeds do: commands mode (unless --on-message is given), clients
    /// may join and publish to any group, to all and to any client. For trying ringcast out,
    /// never for production.
    #[arg(long, env = "RINGCAST_DEMO", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    #[serde(skip_serializing_if = "Option::is_none")]
    demo: Option<bool>,
    /// io_uring submission queue entries per shard [default: 4096].
    #[arg(long, env = "RINGCAST_RING_ENTRIES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ring_entries: Option<u32>,
    /// Read size for connections that are sending, in bytes [default: 16384].
    #[arg(long, env = "RINGCAST_READ_BUFFER_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    read_buffer_bytes: Option<usize>,
}

#[derive(clap::Args, Serialize)]
#[command(next_help_heading = "Limits [limits]")]
struct LimitsArgs {
    /// Open WebSocket connections on this node; past it upgrades get 503 [default: what the
    /// open-file limit allows].
    #[arg(long, env = "RINGCAST_CONNECTIONS_MAX", alias = "max-connections")]
    #[serde(skip_serializing_if = "Option::is_none")]
    connections_max: Option<usize>,
    /// Largest message a client may send, in bytes; larger ones close with 1009
    /// [default: 1048576].
    #[arg(long, env = "RINGCAST_MESSAGE_BYTES_MAX", alias = "max-message-bytes")]
    #[serde(skip_serializing_if = "Option::is_none")]
    message_bytes_max: Option<usize>,
    /// Largest upgrade request head, in bytes; larger ones get 431 [default: 8192].
    #[arg(long, env = "RINGCAST_HEADER_BYTES_MAX", alias = "max-header-bytes")]
    #[serde(skip_serializing_if = "Option::is_none")]
    header_bytes_max: Option<usize>,
    /// Bytes that may wait in one connection's outbox, queued plus in flight
    /// [default: 1048576].
    #[arg(long, env = "RINGCAST_OUTBOX_BYTES_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox_bytes_max: Option<usize>,
    /// What happens to a client over its outbox bound: disconnect (1008 "slow consumer") or
    /// drop (skip messages while over) [default: disconnect].
    #[arg(long, env = "RINGCAST_SLOW_CONSUMER", value_parser = ["disconnect", "drop"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_consumer: Option<String>,
    /// Capacity of each shard's cross-shard inbox, in events; a full inbox drops events
    /// (counted as mesh_dropped) [default: 65536].
    #[arg(long, env = "RINGCAST_INBOX_EVENTS_MAX", alias = "mesh-capacity")]
    #[serde(skip_serializing_if = "Option::is_none")]
    inbox_events_max: Option<usize>,
    /// Handshakes in progress per shard; accepting pauses at this many [default: 4096].
    #[arg(long, env = "RINGCAST_HANDSHAKES_PER_SHARD_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    handshakes_per_shard_max: Option<usize>,
    /// Largest per-connection session (JSON text), in bytes [default: 4096].
    #[arg(long, env = "RINGCAST_SESSION_BYTES_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    session_bytes_max: Option<usize>,
    /// Groups one connection may be in [default: 64].
    #[arg(long, env = "RINGCAST_GROUPS_PER_CONNECTION_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    groups_per_connection_max: Option<usize>,
    /// Longest group id or uid, in bytes [default: 128].
    #[arg(long, env = "RINGCAST_GROUP_ID_BYTES_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id_bytes_max: Option<usize>,
}

#[derive(clap::Args, Serialize)]
#[command(next_help_heading = "Timeouts [timeouts]")]
struct TimeoutsArgs {
    /// Interval between server pings; "0s" disables pings and the idle timeout
    /// [default: 30s].
    #[arg(long, env = "RINGCAST_PING_INTERVAL", value_parser = duration_text)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ping_interval: Option<String>,
    /// Close (1001) a client that sent nothing, not even a pong, for this long [default: 75s].
    #[arg(long, env = "RINGCAST_IDLE_TIMEOUT", value_parser = duration_text)]
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout: Option<String>,
    /// Time a client has to send its upgrade request (slowloris bound) [default: 10s].
    #[arg(long, env = "RINGCAST_HANDSHAKE_TIMEOUT", value_parser = duration_text)]
    #[serde(skip_serializing_if = "Option::is_none")]
    handshake_timeout: Option<String>,
    /// After sending a close frame, how long to wait for the client's [default: 2s].
    #[arg(long, env = "RINGCAST_CLOSE_TIMEOUT", value_parser = duration_text)]
    #[serde(skip_serializing_if = "Option::is_none")]
    close_timeout: Option<String>,
    /// On SIGTERM/SIGINT, how long clients get to complete the close handshake
    /// [default: 5s].
    #[arg(long, env = "RINGCAST_SHUTDOWN_TIMEOUT", value_parser = duration_text)]
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_timeout: Option<String>,
}

#[derive(clap::Args, Serialize)]
#[command(next_help_heading = "Client commands [commands]")]
struct CommandsArgs {
    /// Groups clients may join by themselves: "off", "any", or comma-separated glob patterns
    /// such as "public:*,room-?" [default: off; --demo: any].
    #[arg(long, env = "RINGCAST_CLIENT_JOIN")]
    #[serde(rename = "join", skip_serializing_if = "Option::is_none")]
    client_join: Option<String>,
    /// Groups clients may publish to: off, joined, any [default: off; --demo: any].
    #[arg(long, env = "RINGCAST_CLIENT_PUBLISH_GROUPS", value_parser = ["off", "joined", "any"])]
    #[serde(rename = "publish_groups", skip_serializing_if = "Option::is_none")]
    client_publish_groups: Option<String>,
    /// Clients may publish to every connection (send_to_all) [default: false; --demo: true].
    #[arg(long, env = "RINGCAST_CLIENT_PUBLISH_ALL", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    #[serde(rename = "publish_all", skip_serializing_if = "Option::is_none")]
    client_publish_all: Option<bool>,
    /// Clients may send to one client by id (send_to_client) [default: false; --demo: true].
    #[arg(long, env = "RINGCAST_CLIENT_PUBLISH_CLIENTS", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    #[serde(rename = "publish_clients", skip_serializing_if = "Option::is_none")]
    client_publish_clients: Option<bool>,
    /// Commands one client may send per second, sustained; 0 disables the limit
    /// [default: 100].
    #[arg(long, env = "RINGCAST_COMMANDS_PER_SEC")]
    #[serde(rename = "per_sec", skip_serializing_if = "Option::is_none")]
    commands_per_sec: Option<u32>,
    /// Commands one client may send in a burst above the sustained rate [default: 200].
    #[arg(long, env = "RINGCAST_COMMANDS_BURST")]
    #[serde(rename = "burst", skip_serializing_if = "Option::is_none")]
    commands_burst: Option<u32>,
    /// A client still over its command rate this long after its first refusal is closed with
    /// 1008 [default: 3s].
    #[arg(long, env = "RINGCAST_COMMANDS_FLOOD_CLOSE_AFTER", value_parser = duration_text)]
    #[serde(rename = "flood_close_after", skip_serializing_if = "Option::is_none")]
    commands_flood_close_after: Option<String>,
}

#[derive(clap::Args, Serialize)]
#[command(next_help_heading = "HTTP API [api]")]
struct ApiArgs {
    /// Do not start the HTTP API (api.enabled = false).
    #[arg(long, env = "RINGCAST_NO_API")]
    #[serde(skip)]
    no_api: bool,
    /// Address of the HTTP API (push, queries, /metrics, /healthz, /readyz); a non-loopback
    /// address requires a token [default: 127.0.0.1:2021].
    #[arg(long, env = "RINGCAST_API_LISTEN")]
    #[serde(rename = "listen", skip_serializing_if = "Option::is_none")]
    api_listen: Option<SocketAddr>,
    /// Bearer token the HTTP API requires (prefer the environment variable or
    /// --api-token-file: flags are visible in `ps`).
    #[arg(long, env = "RINGCAST_API_TOKEN", hide_env_values = true)]
    #[serde(rename = "token", skip_serializing_if = "Option::is_none")]
    api_token: Option<String>,
    /// File holding the API's bearer token (e.g. a systemd credential).
    #[arg(long, env = "RINGCAST_API_TOKEN_FILE", value_name = "FILE")]
    #[serde(rename = "token_file", skip_serializing_if = "Option::is_none")]
    api_token_file: Option<PathBuf>,
    /// Largest HTTP API request body, in bytes; larger ones get 413 [default: 1048576].
    #[arg(long, env = "RINGCAST_API_BODY_BYTES_MAX")]
    #[serde(rename = "body_bytes_max", skip_serializing_if = "Option::is_none")]
    api_body_bytes_max: Option<usize>,
    /// Open HTTP connections at once; past it accepting waits [default: 1024].
    #[arg(long, env = "RINGCAST_API_CONNECTIONS_MAX")]
    #[serde(rename = "connections_max", skip_serializing_if = "Option::is_none")]
    api_connections_max: Option<usize>,
    /// Longest an API request waits for the shards before 503 [default: 5s].
    #[arg(long, env = "RINGCAST_API_SHARD_TIMEOUT", value_parser = duration_text)]
    #[serde(rename = "shard_timeout", skip_serializing_if = "Option::is_none")]
    api_shard_timeout: Option<String>,
    /// Time an API client has to send a request head; also the keep-alive idle limit
    /// [default: 60s].
    #[arg(long, env = "RINGCAST_API_HEADER_READ_TIMEOUT", value_parser = duration_text)]
    #[serde(rename = "header_read_timeout", skip_serializing_if = "Option::is_none")]
    api_header_read_timeout: Option<String>,
}

#[derive(clap::Args, Serialize)]
#[command(next_help_heading = "Logging [log]")]
struct LogArgs {
    /// Log format: human (one readable line per event) or json (one object per line)
    /// [default: human].
    #[arg(long, env = "RINGCAST_LOG_FORMAT", value_parser = ["human", "json"])]
    #[serde(rename = "format", skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    /// Log filter, e.g. "info", "warn", "ringcast=debug,info" [default: RUST_LOG, else info].
    #[arg(long, env = "RINGCAST_LOG_LEVEL")]
    #[serde(rename = "level", skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
    /// Log the node's counters at this interval, e.g. "10s"; "0s" disables [default: 0s].
    #[arg(long, env = "RINGCAST_STATS_INTERVAL", value_parser = duration_text)]
    #[serde(skip_serializing_if = "Option::is_none")]
    stats_interval: Option<String>,
}

// ---- [auth]: connect tokens, origin allowlist, per-address limits (ringcast::auth) ----------

/// `ringcast::auth::AuthConfig` on the command line. The secret is never a flag (flags show in
/// `ps`): RINGCAST_AUTH_SECRET, `auth.secret_file` or --auth-secret-file.
#[derive(clap::Args, Serialize)]
#[command(next_help_heading = "Connect authentication [auth]")]
struct AuthArgs {
    /// Connect tokens: off (what --demo uses), optional (a token, if given, must be valid) or
    /// required (no valid token: 401). Needs a secret [default: off].
    #[arg(long, env = "RINGCAST_AUTH_MODE", value_parser = ["off", "optional", "required"])]
    #[serde(rename = "mode", skip_serializing_if = "Option::is_none")]
    auth_mode: Option<String>,
    /// File holding the HS256 secret (at least 32 bytes; one trailing newline is ignored).
    #[arg(long, env = "RINGCAST_AUTH_SECRET_FILE", value_name = "FILE")]
    #[serde(rename = "secret_file", skip_serializing_if = "Option::is_none")]
    auth_secret_file: Option<PathBuf>,
    /// How long a connection may stay open past its token's expiry before it is closed with
    /// 4001, e.g. "30s" [default: 0s].
    #[arg(long, env = "RINGCAST_AUTH_EXPIRY_GRACE", value_parser = duration_text)]
    #[serde(rename = "expiry_grace", skip_serializing_if = "Option::is_none")]
    auth_expiry_grace: Option<String>,
    /// Accept only tokens whose "iss" is this.
    #[arg(long, env = "RINGCAST_AUTH_ISSUER")]
    #[serde(rename = "issuer", skip_serializing_if = "Option::is_none")]
    auth_issuer: Option<String>,
    /// Accept only tokens whose "aud" includes this (without it, tokens with an "aud" are
    /// refused).
    #[arg(long, env = "RINGCAST_AUTH_AUDIENCE")]
    #[serde(rename = "audience", skip_serializing_if = "Option::is_none")]
    auth_audience: Option<String>,
    /// Origins allowed to open WebSockets, comma-separated: exact ("https://app.example.com")
    /// or patterns ("https://*.example.com"); others get 403. Requests without Origin
    /// (non-browser clients) pass [default: any origin].
    #[arg(long = "origins-allowed", env = "RINGCAST_ORIGINS_ALLOWED", value_delimiter = ',')]
    #[serde(rename = "origins_allowed", skip_serializing_if = "Option::is_none")]
    auth_origins_allowed: Option<Vec<String>>,
    /// Open connections one IP address (IPv6: one /64) may hold; more get 429; 0: unlimited
    /// [default: 0].
    #[arg(long = "connections-per-ip-max", env = "RINGCAST_CONNECTIONS_PER_IP_MAX")]
    #[serde(rename = "connections_per_ip_max", skip_serializing_if = "Option::is_none")]
    auth_connections_per_ip_max: Option<usize>,
    /// Upgrade requests per second one IP address (IPv6: one /64) may make, sustained; more
    /// get 429; 0: unlimited [default: 0].
    #[arg(long = "handshakes-per-ip-per-sec", env = "RINGCAST_HANDSHAKES_PER_IP_PER_SEC")]
    #[serde(rename = "handshakes_per_ip_per_sec", skip_serializing_if = "Option::is_none")]
    auth_handshakes_per_ip_per_sec: Option<u32>,
    /// Upgrade requests one address may make in a burst [default: twice the rate].
    #[arg(long = "handshakes-per-ip-burst", env = "RINGCAST_HANDSHAKES_PER_IP_BURST")]
    #[serde(rename = "handshakes_per_ip_burst", skip_serializing_if = "Option::is_none")]
    auth_handshakes_per_ip_burst: Option<u32>,
    /// Addresses whose handshake rate is remembered at once (bounded memory under a flood)
    /// [default: 65536].
    #[arg(long = "ips-tracked-max", env = "RINGCAST_IPS_TRACKED_MAX")]
    #[serde(rename = "ips_tracked_max", skip_serializing_if = "Option::is_none")]
    auth_ips_tracked_max: Option<usize>,
}

// ---- [history]: per-group history, recovery, idempotent publish (ringcast::history) --------

/// `ringcast::history::HistoryConfig` on the command line.
#[derive(clap::Args, Serialize)]
#[command(next_help_heading = "History and idempotent publish [history]")]
struct HistoryArgs {
    /// Keep a history for groups matching PATTERN: the newest MESSAGES, each for at most AGE,
    /// e.g. "chat:*=1000,10m"; repeatable (in the environment variable: separated by ";"),
    /// the first matching rule applies; replaces the file's rules [default: no group keeps
    /// history].
    #[arg(long = "history-rule", env = "RINGCAST_HISTORY_RULE", value_name = "PATTERN=MESSAGES,AGE",
          value_delimiter = ';', value_parser = history_rule_text)]
    #[serde(rename = "rules", skip_serializing_if = "Option::is_none")]
    history_rules: Option<Vec<String>>,
    /// Groups that may keep a history at once; past it the one published to least recently
    /// is forgotten (its next message starts a new epoch) [default: 100000].
    #[arg(long, env = "RINGCAST_HISTORY_GROUPS_MAX")]
    #[serde(rename = "groups_max", skip_serializing_if = "Option::is_none")]
    history_groups_max: Option<usize>,
    /// Bytes all histories may hold together; past it a group's oldest messages are evicted
    /// [default: 268435456].
    #[arg(long, env = "RINGCAST_HISTORY_BYTES_MAX")]
    #[serde(rename = "bytes_max", skip_serializing_if = "Option::is_none")]
    history_bytes_max: Option<usize>,
    /// How long the HTTP API remembers an idempotency key after answering its publish
    /// [default: 2m].
    #[arg(long = "idempotency-window", env = "RINGCAST_IDEMPOTENCY_WINDOW",
          value_parser = duration_text)]
    #[serde(rename = "idempotency_window", skip_serializing_if = "Option::is_none")]
    history_idempotency_window: Option<String>,
    /// Idempotency keys remembered at once (the oldest is forgotten early past it, counted)
    /// [default: 100000].
    #[arg(long = "idempotency-keys-max", env = "RINGCAST_IDEMPOTENCY_KEYS_MAX")]
    #[serde(rename = "idempotency_keys_max", skip_serializing_if = "Option::is_none")]
    history_idempotency_keys_max: Option<usize>,
    /// Clustered node (history in Redis): live messages held for one recovering client while
    /// its history read is in flight; past it the recovery answers recovered=false
    /// [default: 10000].
    #[arg(long, env = "RINGCAST_HISTORY_RECOVERY_HELD_MESSAGES_MAX")]
    #[serde(rename = "recovery_held_messages_max", skip_serializing_if = "Option::is_none")]
    history_recovery_held_messages_max: Option<usize>,
}

/// A history rule, kept as text for the overlay (checked here, parsed by the config).
fn history_rule_text(s: &str) -> Result<String, String> {
    s.trim().parse::<ringcast::history::HistoryRule>().map(|_| s.trim().to_owned())
}

// ---- [tls]: wss:// (ringcast::tls::TlsConfig) --------------------------------------------------

#[derive(clap::Args, Serialize)]
#[command(next_help_heading = "TLS [tls]")]
struct TlsArgs {
    /// PEM certificate chain (leaf first) for wss://; with --tls-key-file turns TLS on.
    /// Reloaded on SIGHUP (new handshakes get the new certificate; connections stay).
    #[arg(long, env = "RINGCAST_TLS_CERT_FILE", value_name = "FILE")]
    #[serde(rename = "cert_file", skip_serializing_if = "Option::is_none")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching --tls-cert-file.
    #[arg(long, env = "RINGCAST_TLS_KEY_FILE", value_name = "FILE")]
    #[serde(rename = "key_file", skip_serializing_if = "Option::is_none")]
    tls_key_file: Option<PathBuf>,
    /// Serve wss:// on this separate address and keep --listen plain ws:// [default: TLS on
    /// --listen itself].
    #[arg(long, env = "RINGCAST_TLS_LISTEN")]
    #[serde(rename = "listen", skip_serializing_if = "Option::is_none")]
    tls_listen: Option<SocketAddr>,
}

// ---- [cluster]: the Redis backplane between nodes (ringcast::cluster) ----------------------

/// `ringcast::cluster::ClusterConfig` on the command line.
#[derive(clap::Args, Serialize)]
#[command(next_help_heading = "Cluster over Redis [cluster]")]
struct ClusterArgs {
    /// Join a cluster over Redis: redis://host:port (one Redis, classic pub/sub), or with
    /// --cluster-bus sharded the comma-separated seed nodes of a Redis Cluster (a password
    /// goes in the URL: prefer the environment variable or the file) [default: off, a single
    /// node needs no Redis].
    #[arg(
        long = "cluster",
        env = "RINGCAST_CLUSTER",
        value_delimiter = ',',
        value_name = "URL",
        hide_env_values = true
    )]
    #[serde(rename = "urls", skip_serializing_if = "Option::is_none")]
    cluster_urls: Option<Vec<String>>,
    /// Pub/sub flavour: classic (PUBLISH/SUBSCRIBE on one Redis) or sharded
    /// (SPUBLISH/SSUBSCRIBE on a Redis Cluster, Redis >= 7) [default: classic].
    #[arg(long, env = "RINGCAST_CLUSTER_BUS", value_parser = ["classic", "sharded"])]
    #[serde(rename = "bus", skip_serializing_if = "Option::is_none")]
    cluster_bus: Option<String>,
    /// Prefix of the cluster's Redis channels and keys (several clusters can share a Redis)
    /// [default: ringcast].
    #[arg(long, env = "RINGCAST_CLUSTER_NAMESPACE")]
    #[serde(rename = "namespace", skip_serializing_if = "Option::is_none")]
    cluster_namespace: Option<String>,
    /// Interval of presence heartbeats; a dead node vanishes within three of them
    /// [default: 1s].
    #[arg(long, env = "RINGCAST_CLUSTER_HEARTBEAT_INTERVAL", value_parser = duration_text)]
    #[serde(rename = "heartbeat_interval", skip_serializing_if = "Option::is_none")]
    cluster_heartbeat_interval: Option<String>,
    /// How long a group's or uid's channel stays subscribed after its last local member left
    /// (no churn when members come and go) [default: 5s].
    #[arg(long, env = "RINGCAST_CLUSTER_UNSUBSCRIBE_LINGER", value_parser = duration_text)]
    #[serde(rename = "unsubscribe_linger", skip_serializing_if = "Option::is_none")]
    cluster_unsubscribe_linger: Option<String>,
    /// Longest a cluster-wide query (stats, group, uid, client, forwarded operations) waits
    /// for other nodes [default: 500ms].
    #[arg(long, env = "RINGCAST_CLUSTER_QUERY_TIMEOUT", value_parser = duration_text)]
    #[serde(rename = "query_timeout", skip_serializing_if = "Option::is_none")]
    cluster_query_timeout: Option<String>,
    /// Local publishes waiting to go to Redis; past it they are dropped and counted
    /// [default: 65536].
    #[arg(long, env = "RINGCAST_CLUSTER_OUTBOUND_MESSAGES_MAX")]
    #[serde(rename = "outbound_messages_max", skip_serializing_if = "Option::is_none")]
    cluster_outbound_messages_max: Option<usize>,
    /// Messages from Redis waiting to be delivered; past it they are dropped and counted
    /// [default: 65536].
    #[arg(long, env = "RINGCAST_CLUSTER_INBOUND_MESSAGES_MAX")]
    #[serde(rename = "inbound_messages_max", skip_serializing_if = "Option::is_none")]
    cluster_inbound_messages_max: Option<usize>,
    /// Interest changes (first/last local member of a group or uid) waiting for the cluster
    /// task; past it the task resynchronises from the directory [default: 65536].
    #[arg(long, env = "RINGCAST_CLUSTER_INTEREST_EVENTS_MAX")]
    #[serde(rename = "interest_events_max", skip_serializing_if = "Option::is_none")]
    cluster_interest_events_max: Option<usize>,
    /// Publishes sent to Redis in one pipelined round trip at most [default: 1024].
    #[arg(long, env = "RINGCAST_CLUSTER_BATCH_MESSAGES_MAX")]
    #[serde(rename = "batch_messages_max", skip_serializing_if = "Option::is_none")]
    cluster_batch_messages_max: Option<usize>,
    /// Longest reconnect back-off after Redis fails [default: 2s].
    #[arg(long, env = "RINGCAST_CLUSTER_RECONNECT_DELAY_MAX", value_parser = duration_text)]
    #[serde(rename = "reconnect_delay_max", skip_serializing_if = "Option::is_none")]
    cluster_reconnect_delay_max: Option<String>,
}

fn secret_from_env() -> Option<ringcast::auth::Secret> {
    std::env::var_os(ringcast::auth::config::SECRET_ENV)
        .filter(|v| !v.is_empty())
        .map(|v| ringcast::auth::Secret::new(v.into_encoded_bytes()))
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The uid the connection is bound to ("" for an anonymous client with grants).
    #[arg(long)]
    sub: String,
    /// A group the client may join (exact id, a prefix ending in "*", or "*"); repeatable.
    #[arg(long)]
    join: Vec<String>,
    /// A group the client may publish to (same forms); repeatable.
    #[arg(long)]
    publish: Vec<String>,
    /// Lifetime from now, e.g. "1h".
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    ttl: std::time::Duration,
    /// "iss" claim.
    #[arg(long)]
    issuer: Option<String>,
    /// "aud" claim.
    #[arg(long)]
    audience: Option<String>,
    /// File holding the secret (else RINGCAST_AUTH_SECRET).
    #[arg(long)]
    auth_secret_file: Option<PathBuf>,
}

fn mint_token(args: TokenArgs) -> anyhow::Result<()> {
    use ringcast::auth::AuthConfig;
    let c = AuthConfig {
        secret: secret_from_env(),
        secret_file: args.auth_secret_file,
        ..AuthConfig::default()
    };
    c.validate().map_err(anyhow::Error::msg)?;
    let Some(secret) = c.resolve_secret().map_err(anyhow::Error::msg)? else {
        anyhow::bail!(
            "no secret: set {} or --auth-secret-file",
            ringcast::auth::config::SECRET_ENV
        );
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let claims = ringcast::auth::Claims {
        sub: args.sub,
        exp: now + args.ttl.as_secs().max(1),
        nbf: None,
        iat: Some(now),
        iss: args.issuer,
        aud: args.audience.map(ringcast::auth::token::Audience::One),
        join: args.join,
        publish: args.publish,
    };
    println!("{}", ringcast::auth::token::mint(&secret, &claims));
    Ok(())
}

impl Overrides {
    /// The flags and variables given, as a TOML table in the file's layout.
    fn overlay(&self) -> anyhow::Result<toml::Table> {
        let mut t = toml::Table::try_from(self).context("encoding the command-line overlay")?;
        let mut set = |section: &str, key: &str, v: toml::Value| {
            if let Some(toml::Value::Table(s)) = t.get_mut(section) {
                s.insert(key.to_owned(), v);
            }
        };
        if self.server.no_pin {
            set("server", "pin", toml::Value::Boolean(false));
        }
        if self.api.no_api {
            set("api", "enabled", toml::Value::Boolean(false));
        }
        // The connect-token secret comes from the environment only (never a flag, never the
        // effective configuration's output).
        if let Some(secret) =
            std::env::var(ringcast::auth::config::SECRET_ENV).ok().filter(|v| !v.is_empty())
        {
            set("auth", "secret", toml::Value::String(secret));
        }
        // An empty RINGCAST_API_TOKEN means "no token", as it always has.
        if self.api.api_token.as_deref().is_some_and(|s| s.trim().is_empty()) {
            if let Some(toml::Value::Table(s)) = t.get_mut("api") {
                s.remove("token");
            }
        }
        Ok(t)
    }

    fn resolve(
        &self,
        file: Option<&std::path::Path>,
        matches: &clap::ArgMatches,
    ) -> anyhow::Result<Resolved> {
        Ok(config_file::load_with(file, self.overlay()?, |key| origin(matches, key))?)
    }
}

/// The flag or environment variable that set the overlay `key` ("timeouts.idle_timeout"):
/// argument ids are the key, or the key with its section's flag prefix.
fn origin(matches: &clap::ArgMatches, key: &str) -> Option<String> {
    use clap::parser::ValueSource;
    let (section, name) = key.split_once('.')?;
    let special = match key {
        "server.pin" => Some("no_pin"),
        "api.enabled" => Some("no_api"),
        _ => None,
    };
    // Flags of [api], [commands] and [log] carry their section as a prefix (`api_listen`,
    // `commands_burst`, `client_join`); the others are named like their key.
    let unprefixed = matches!(section, "server" | "limits" | "timeouts" | "log");
    let candidates = [
        special.map(str::to_owned),
        Some(format!("{section}_{name}")),
        (section == "commands").then(|| format!("client_{name}")),
        unprefixed.then(|| name.to_owned()),
    ];
    let cmd = Cli::command();
    let (sub, _) = matches.subcommand()?;
    let sub_cmd = cmd.find_subcommand(sub)?;
    let sub_matches = matches.subcommand_matches(sub)?;
    for id in candidates.into_iter().flatten() {
        let Some(arg) = sub_cmd.get_arguments().find(|a| a.get_id() == id.as_str()) else {
            continue;
        };
        let Some(source) = sub_matches.value_source(&id) else { continue };
        return match source {
            ValueSource::CommandLine => arg.get_long().map(|l| format!("--{l}")),
            ValueSource::EnvVariable => arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            _ => None,
        };
    }
    None
}

fn init_logging(log: &ringcast::config::file::LogSection) {
    let filter = tracing_subscriber::EnvFilter::try_new(log.filter())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        LogFormat::Human => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
        LogFormat::Json => builder.json().with_current_span(false).with_span_list(false).init(),
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Token(args) => match mint_token(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringcast: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig(args) => match args.overrides.resolve(Some(&args.file), &matches) {
            Ok(resolved) => {
                print!("{}", resolved.effective_toml());
                eprintln!("ringcast: {} is valid", args.file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringcast: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            // Configuration errors come before logging exists: plain stderr, exit 2.
            let resolved = match args.overrides.resolve(args.config.as_deref(), &matches) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ringcast: {e:#}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&resolved.log);
            match serve(resolved, args.config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(resolved: Resolved, file: Option<PathBuf>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Register before starting so an early signal is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    match &file {
        Some(f) => tracing::info!(file = %f.display(), "configuration loaded"),
        None => tracing::info!("no configuration file: defaults, environment and flags"),
    }
    match ringcast::limits::raise_nofile_limit() {
        Ok((old, new)) if old != new => {
            tracing::info!(
                from = old,
                to = new,
                "raised the open-file soft limit to the hard limit"
            )
        }
        Ok((_, new)) => tracing::info!(limit = new, "open-file limit already at its hard limit"),
        Err(e) => tracing::warn!("could not raise the open-file limit: {e}"),
    }
    let Resolved { config, api: api_config, log, .. } = resolved;
    let shards = config.shards;
    let history_config = config.history.clone();
    let config_cluster = config.cluster.clone();
    let handle = Server::builder().config(config).start().context("starting ringcast")?;
    tracing::info!(
        shards,
        capacity = ringcast::limits::connection_capacity(shards),
        connections_max = handle.connections_max(),
        node_id = %handle.node_id(),
        "connection capacity (open-file limit minus reserved descriptors)"
    );
    // Scripts and tests read the address after "listening on" in these lines.
    match handle.tls_local_addr() {
        Some(tls) if tls == handle.local_addr() => tracing::info!("listening on {tls} (wss://)"),
        Some(tls) => {
            tracing::info!("listening on {}", handle.local_addr());
            tracing::info!("TLS listening on {tls} (wss://)");
        }
        None => tracing::info!("listening on {}", handle.local_addr()),
    }
    let (redis_urls, redis_namespace) =
        (config_cluster.urls.clone(), config_cluster.namespace.clone());
    let redis_cluster_mode = config_cluster.bus == ringcast::cluster::BusMode::Sharded;
    let cluster = if config_cluster.enabled() {
        match ringcast::cluster::spawn(handle.clone(), config_cluster) {
            Ok(c) => Some(c),
            Err(e) => {
                handle.shutdown();
                let _ = handle.join();
                return Err(e).context("joining the cluster");
            }
        }
    } else {
        None
    };
    let api = match api_config {
        None => None,
        Some(mut api_config) => {
            let demo_page = api_config.demo_page;
            // Subsystems with metrics or readiness conditions add them to
            // `api_config.observability` here (see ringcast::observe).
            api_config.observability.add_collector(ringcast::history::HistoryCollector::new(
                handle.clone(),
                &history_config,
            ));
            if let Some(c) = &cluster {
                let c = c.cluster();
                c.observe(&mut api_config.observability);
                api_config.cluster = Some(c);
                // Idempotency keys in the cluster's Redis: a repeated key is caught on
                // whichever node it reaches.
                api_config.idempotency_redis = Some(ringcast::api::RedisKeysConfig {
                    urls: redis_urls.clone(),
                    redis_cluster: redis_cluster_mode,
                    namespace: redis_namespace.clone(),
                    window: history_config.idempotency_window,
                });
            }
            match ringcast::api::spawn(handle.clone(), api_config) {
                Ok(api) => {
                    tracing::info!("HTTP API listening on {}", api.local_addr());
                    if demo_page {
                        let a = api.local_addr();
                        let host = if a.ip().is_unspecified() {
                            "<this host>".to_owned()
                        } else {
                            a.ip().to_canonical().to_string()
                        };
                        let host = if host.contains(':') { format!("[{host}]") } else { host };
                        tracing::info!("demo page: open http://{host}:{}/ in a browser", a.port());
                    }
                    Some(api)
                }
                Err(e) => {
                    handle.shutdown();
                    let _ = handle.join();
                    return Err(e).context("starting the HTTP API");
                }
            }
        }
    };
    std::thread::scope(|s| {
        if !log.stats_interval.is_zero() {
            let handle = &handle;
            let every = log.stats_interval;
            s.spawn(move || loop {
                std::thread::park_timeout(every);
                if STOP.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let m = handle.metrics();
                let fields: Vec<String> =
                    m.fields().iter().map(|(k, v)| format!("{k}={v}")).collect();
                tracing::info!("stats {}", fields.join(" "));
            });
        }
        let sig = signals.forever().find(|&sig| {
            if sig != SIGHUP {
                return true;
            }
            match handle.reload_tls() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                Err(ringcast::tls::TlsError::NotEnabled) => {
                    tracing::info!("SIGHUP: TLS is not enabled, nothing to reload")
                }
                Err(e) => {
                    tracing::error!("SIGHUP: TLS reload failed, keeping the old certificate: {e}")
                }
            }
            false
        });
        tracing::info!(signal = ?sig, "shutting down gracefully");
        STOP.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(api) = api {
            api.shutdown();
        }
        if let Some(cluster) = cluster {
            cluster.shutdown();
        }
        handle.shutdown();
    });
    handle.join().context("a shard failed")?;
    tracing::info!("stopped");
    Ok(())
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn errors_name_the_flag_or_variable_that_set_a_value() {
        let m = super::Cli::command()
            .try_get_matches_from(["ringcast", "serve", "--idle-timeout", "1s", "--no-api"])
            .unwrap();
        assert_eq!(super::origin(&m, "timeouts.idle_timeout").as_deref(), Some("--idle-timeout"));
        assert_eq!(super::origin(&m, "api.enabled").as_deref(), Some("--no-api"));
        assert_eq!(super::origin(&m, "limits.outbox_bytes_max"), None);
        let m = super::Cli::command()
            .try_get_matches_from(["ringcast", "serve", "--listen", "127.0.0.1:0"])
            .unwrap();
        assert_eq!(super::origin(&m, "api.listen"), None, "--listen is server.listen");
        assert_eq!(super::origin(&m, "server.listen").as_deref(), Some("--listen"));
    }

    #[test]
    fn every_serve_flag_is_documented_and_has_an_env_var() {
        let cmd = super::Cli::command();
        cmd.clone().debug_assert();
        let serve = cmd.find_subcommand("serve").expect("serve subcommand");
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" {
                continue;
            }
            assert!(arg.get_help().is_some(), "serve --{id} has no help text");
            let long = arg.get_long().expect("a long flag");
            let env = arg.get_env().expect("an environment variable").to_string_lossy();
            assert_eq!(env, format!("RINGCAST_{}", long.replace('-', "_").to_uppercase()));
        }
    }

    #[test]
    fn old_spellings_still_parse() {
        let cli = super::Cli::try_parse_from([
            "ringcast",
            "serve",
            "--max-connections",
            "10",
            "--max-message-bytes",
            "20",
            "--max-header-bytes",
            "300",
            "--tick",
            "5s",
            "--mesh-capacity",
            "7",
            "--welcome",
            "off",
            "--demo",
            "--client-publish-all",
        ])
        .unwrap();
        let super::Command::Serve(args) = cli.command else { panic!("serve") };
        let t = args.overrides.overlay().unwrap();
        let limits = t["limits"].as_table().unwrap();
        assert_eq!(limits["connections_max"].as_integer(), Some(10));
        assert_eq!(limits["message_bytes_max"].as_integer(), Some(20));
        assert_eq!(limits["header_bytes_max"].as_integer(), Some(300));
        assert_eq!(limits["inbox_events_max"].as_integer(), Some(7));
        assert_eq!(t["server"]["tick_interval"].as_str(), Some("5s"));
        assert_eq!(t["server"]["welcome"].as_bool(), Some(false));
        assert_eq!(t["server"]["demo"].as_bool(), Some(true));
        assert_eq!(t["commands"]["publish_all"].as_bool(), Some(true));
    }

    #[test]
    fn cpu_lists_parse() {
        assert!(super::cpu_list_text("0,2-4").is_ok());
        assert!(super::cpu_list_text("3-1").is_err());
        assert!(super::cpu_list_text("x").is_err());
    }
}
