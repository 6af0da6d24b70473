//! Every limit and knob of a ringcast node, in one plain struct.
//!
//! Deliberately absent: parsing (the daemon's CLI lives in `main.rs`) and I/O.
//! Names put units last (`outbox_bytes_max`, `ping_interval`), so a reader never guesses.

use std::net::SocketAddr;
use std::time::Duration;

/// What a node does with a Text/Binary message a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMessage {
    /// Drop it (after protocol validation). The default for a push daemon: clients listen,
    /// publishers use the node's API.
    #[default]
    Ignore,
    /// Send it to every open connection on every shard, sender included (seed 000's group chat).
    Relay,
}

/// What happens to a connection whose outbox is over `outbox_bytes_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    pub mesh_capacity: usize,
    /// io_uring submission queue entries per shard.
    pub ring_entries: u32,
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
            mesh_capacity: 64 * 1024,
            ring_entries: 4096,
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
