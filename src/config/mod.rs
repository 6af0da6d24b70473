//! Every limit and knob of a ringcast node, in one plain struct ([`Config`]), and the daemon's
//! configuration layer ([`file`]): one TOML file, `RINGCAST_*` environment variables and
//! command-line flags merged with a fixed precedence, validated in one place.
//!
//! Names put units last (`outbox_bytes_max`, `ping_interval`), so a reader never guesses.

pub mod file;

pub use file::{ConfigError, ConfigFile, LogFormat, Resolved};

use std::net::SocketAddr;
use std::time::Duration;

/// What a node does with a Text/Binary message a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMessage {
    /// Drop it (after protocol validation). The default for a push daemon: clients listen,
    /// publishers use the node's API.
    #[default]
    Ignore,
    /// Send it to every open connection on every shard, sender included (seed 000's group chat).
    Relay,
    /// Parse it as a JSON command (`add_group`, `send_to_group`, ...; see `docs/api.md`),
    /// subject to [`Permissions`] and the per-connection command rate limit.
    Commands,
}

/// Which groups a client may join by itself (the server's API may always add it anywhere).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum JoinPolicy {
    /// Clients may not join groups themselves. The default: membership is the application's
    /// decision, made through the API.
    #[default]
    Off,
    /// Only groups whose id matches one of these glob patterns (`*` any run, `?` one char),
    /// e.g. `public:*`.
    Matching(Vec<String>),
    /// Any group (seed 004).
    Any,
}

/// Which groups a client may publish to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupPublishPolicy {
    /// None. The default.
    #[default]
    Off,
    /// Only groups the connection is a member of.
    Joined,
    /// Any group (seed 004).
    Any,
}

/// What clients may do with commands. Configuration, not code; the defaults are the safe ones
/// (clients listen, the application publishes), `--demo` allows what the seeds do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Joining groups.
    pub join: JoinPolicy,
    /// Publishing to groups.
    pub publish_groups: GroupPublishPolicy,
    /// Publishing to every connection of the node (`send_to_all`).
    pub publish_all: bool,
    /// Sending to one client by id (`send_to_client`).
    pub publish_clients: bool,
    /// Groups one connection may be in (joins by the API count too).
    pub groups_per_connection_max: usize,
    /// Longest group id (and uid) accepted, in bytes.
    pub group_id_bytes_max: usize,
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions {
            join: JoinPolicy::Off,
            publish_groups: GroupPublishPolicy::Off,
            publish_all: false,
            publish_clients: false,
            groups_per_connection_max: 64,
            group_id_bytes_max: 128,
        }
    }
}

impl Permissions {
    /// What the seeds do: join any group, publish to any group, to all, to any client.
    pub fn demo() -> Self {
        Permissions {
            join: JoinPolicy::Any,
            publish_groups: GroupPublishPolicy::Any,
            publish_all: true,
            publish_clients: true,
            ..Permissions::default()
        }
    }
}

/// What happens to a connection whose outbox is over `outbox_bytes_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Close it with 1008 (policy violation, reason "slow consumer"): it can reconnect and
    /// resynchronise, and the node's memory stays bounded.
    #[default]
    Disconnect,
    /// Keep it, but skip messages for it while it is over the bound.
    Drop,
}

/// Configuration of one node (one process: all its shards).
#[derive(Debug, Clone)]
pub struct Config {
    /// Address every shard listens on (SO_REUSEPORT); port 0 picks a free port once for all.
    pub listen: SocketAddr,
    /// Number of shards (threads, one io_uring each).
    pub shards: usize,
    /// CPUs to pin shard `i` to (`cpus[i % cpus.len()]`); `None` means every CPU this process may
    /// run on, in order.
    pub cpus: Option<Vec<usize>>,
    /// Pin shard threads at all. Off only for debugging on busy machines.
    pub pin: bool,
    /// What a client's message does.
    pub on_message: OnMessage,
    /// Periodic broadcast of the server time (seconds since the epoch), seed 000's timer.
    pub tick_interval: Option<Duration>,
    /// Open WebSocket connections the whole node accepts; past it handshakes get 503.
    /// Clamped at start-up to what the open-file limit allows (`usize::MAX`, the default,
    /// means exactly that).
    pub connections_max: usize,
    /// Largest message (after reassembly of fragments) a client may send; larger ones get 1009.
    pub message_bytes_max: usize,
    /// Largest HTTP upgrade request head; larger ones get 431.
    pub header_bytes_max: usize,
    /// Bound on bytes queued for one connection (queued plus in flight). Bounded so one slow
    /// reader cannot grow memory; see `slow_consumer`.
    pub outbox_bytes_max: usize,
    /// What happens past `outbox_bytes_max`.
    pub slow_consumer: SlowConsumerPolicy,
    /// Interval between server pings; `None` disables pings (and the idle timeout).
    pub ping_interval: Option<Duration>,
    /// A connection silent (no byte received) for longer than this is closed with 1001.
    pub idle_timeout: Duration,
    /// Time a client has to complete its upgrade request (slowloris bound).
    pub handshake_timeout: Duration,
    /// Time we wait for the peer's close frame after sending ours, then drop the socket.
    pub close_timeout: Duration,
    /// Time graceful shutdown waits for close handshakes before the shards exit anyway.
    pub shutdown_timeout: Duration,
    /// Concurrent handshakes per shard; accepting pauses while this many are pending.
    pub handshakes_per_shard_max: usize,
    /// Read size for connections that are sending (idle connections use a tiny buffer).
    pub read_buffer_bytes: usize,
    /// Capacity of each shard's inbound cross-shard channel, in events.
    pub inbox_events_max: usize,
    /// io_uring submission queue entries per shard.
    pub ring_entries: u32,
    /// This node's id (part of every client id); `None` generates one at start-up.
    pub node_id: Option<u32>,
    /// Send `{"type":"welcome","client_id":...}` to each new connection. `None`: only in
    /// [`OnMessage::Commands`] mode.
    pub welcome: Option<bool>,
    /// What clients may do in [`OnMessage::Commands`] mode.
    pub permissions: Permissions,
    /// Commands one connection may send per second, sustained (0: unlimited).
    pub commands_per_sec: u32,
    /// Commands one connection may send in a burst above the sustained rate.
    pub commands_burst: u32,
    /// A connection still over its command rate this long after it was first refused is
    /// closed with 1008.
    pub commands_flood_close_after: Duration,
    /// Largest per-connection session (its JSON text), in bytes.
    pub session_bytes_max: usize,
    /// Per-group history, recovery and idempotent publish (off unless a rule is given).
    pub history: crate::history::HistoryConfig,
    /// `wss://`: certificate, key, and where TLS is served (off by default).
    pub tls: crate::tls::TlsConfig,
    /// Clustering over Redis (off unless URLs are set): `[cluster]`, `--cluster*`.
    pub cluster: crate::cluster::ClusterConfig,
    /// Connect tokens, origin allowlist, per-address limits (`[auth]`); off by default.
    pub auth: crate::auth::AuthConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 2020)),
            shards: available_cpus().len().max(1),
            cpus: None,
            pin: true,
            on_message: OnMessage::Ignore,
            tick_interval: None,
            connections_max: usize::MAX,
            message_bytes_max: 1 << 20,
            header_bytes_max: 8 * 1024,
            outbox_bytes_max: 1 << 20,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            ping_interval: Some(Duration::from_secs(30)),
            idle_timeout: Duration::from_secs(75),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(5),
            handshakes_per_shard_max: 4096,
            read_buffer_bytes: 16 * 1024,
            inbox_events_max: 64 * 1024,
            ring_entries: 4096,
            node_id: None,
            welcome: None,
            permissions: Permissions::default(),
            commands_per_sec: 100,
            commands_burst: 200,
            commands_flood_close_after: Duration::from_secs(3),
            session_bytes_max: 4096,
            history: crate::history::HistoryConfig::default(),
            tls: crate::tls::TlsConfig::default(),
            cluster: Default::default(),
            auth: crate::auth::AuthConfig::default(),
        }
    }
}

/// CPUs this process may run on (its affinity mask), in ascending order.
pub fn available_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}
