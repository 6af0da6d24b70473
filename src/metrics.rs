//! Counters. Each shard counts in plain integers on its hot path and publishes them to its own
//! cache-line-aligned atomics once per loop turn; readers sum the shards.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One shard's counters, owned and mutated by that shard only.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Counters { $($(#[$doc])* pub $name: u64,)* }

        /// A shard's published counters.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub(crate) struct SharedCounters { $($name: AtomicU64,)* }

        impl SharedCounters {
            pub(crate) fn publish(&self, c: &Counters) { $(self.$name.store(c.$name, Relaxed);)* }
            pub(crate) fn load(&self) -> Counters { Counters { $($name: self.$name.load(Relaxed),)* } }
        }

        impl std::ops::AddAssign for Counters {
            fn add_assign(&mut self, o: Counters) { $(self.$name += o.$name;)* }
        }

        impl Counters {
            /// `(name, value)` pairs, for logs and exporters.
            pub fn fields(&self) -> Vec<(&'static str, u64)> { vec![$((stringify!($name), self.$name),)*] }
        }
    };
}

counters! {
    /// Open WebSocket connections (a gauge).
    connections_open,
    /// TCP connections accepted.
    connections_accepted,
    /// Upgrades refused with an HTTP error (malformed, wrong version, too large, timeout).
    handshakes_rejected,
    /// Upgrades refused with 503 because the node was at `connections_max`.
    connections_refused_full,
    /// `accept` failures (EMFILE and friends); accepting pauses briefly after each.
    accept_errors,
    /// Text/Binary messages received from clients.
    messages_received,
    /// Broadcast frames encoded on this shard (once per broadcast, whatever the fan-out).
    frames_encoded,
    /// Frames queued to a connection (one per recipient per message).
    deliveries,
    /// Bytes the kernel accepted from our writes.
    bytes_written,
    /// Vectored writes submitted.
    writes,
    /// Connections closed by the slow-consumer policy (`disconnect`).
    slow_consumer_disconnects,
    /// Messages skipped for a connection over its outbox bound (`drop` policy).
    slow_consumer_drops,
    /// Cross-shard events lost because the target shard's channel was full.
    mesh_dropped,
    /// Events this shard took from its inbox (publishes, operations, queries).
    mesh_received,
    /// Connections failed for a protocol violation (1002, 1007, 1009).
    protocol_errors,
    /// Connections closed for silence past `idle_timeout`.
    idle_timeouts,
    /// Connections gone without a close handshake (reset, EOF, write error).
    connections_aborted,
    /// Client commands received (`--on-message commands`).
    commands_received,
    /// Client commands answered with an error frame (malformed, unknown, forbidden, refused).
    commands_rejected,
    /// Client commands dropped by the per-connection rate limit.
    commands_rate_limited,
    /// Connections closed with 1008 for flooding commands.
    command_flood_closes,
    /// TLS handshakes completed (`wss://` connections that reached the upgrade request).
    tls_handshakes,
    /// TLS handshakes that failed (bad ClientHello, no common cipher, peer gone, timeout).
    tls_handshakes_failed,
    /// Established TLS sessions ended by a TLS error (bad record, decryption failure).
    tls_errors,
}
