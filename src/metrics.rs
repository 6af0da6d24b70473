//! Counters, shard health and the fan-out latency histogram.
//!
//! Each shard counts in plain integers on its hot path and publishes them to its own
//! cache-line-aligned atomics once per loop turn; readers (the stats log, `/api/metrics`, the
//! Prometheus collector in [`crate::observe`]) load them at any time and sum the shards. No
//! lock is taken, and no reader can slow a shard down.
//!
//! Two more per-shard structures are written by their shard only and read by anyone:
//! [`ShardHealth`] (is the shard accepting, and when did its loop last run housekeeping) and
//! [`LatencyHistogram`] (publish accepted → last write of it completed, one observation per
//! publish per shard, fixed buckets; recording is a bucket search and three relaxed
//! load/store pairs on this shard's own cache lines).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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
    /// Bytes read from client sockets (frames of every kind, handshakes excluded).
    bytes_received,
    /// Broadcast frames encoded on this shard (once per broadcast, whatever the fan-out).
    frames_encoded,
    /// Frames queued to a connection (one per recipient per message).
    deliveries,
    /// Bytes the kernel accepted from our writes.
    bytes_written,
    /// Vectored writes submitted.
    writes,
    /// Frames submitted in those writes (`frames_written / writes`: frames per vectored write).
    frames_written,
    /// Bytes queued in this shard's outboxes, queued plus in flight (a gauge, sampled every
    /// housekeeping pass, 250 ms).
    outbox_bytes,
    /// Connections closed by the client (its close frame).
    closes_by_peer,
    /// Connections closed by the server's application or the HTTP API (`close`).
    closes_by_server,
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
    /// Clustered node: recovering joins answered `recovered: true` (history read in Redis).
    recoveries,
    /// Clustered node: recovering joins answered `recovered: false`.
    recoveries_failed,
    /// Clustered node: live messages dropped from a recovering member's hold past
    /// `history.recovery_held_messages_max` (its join answers `recovered: false`).
    recovery_held_dropped,
    /// Connections closed with 1008 for flooding commands.
    command_flood_closes,
    /// TLS handshakes completed (`wss://` connections that reached the upgrade request).
    tls_handshakes,
    /// TLS handshakes that failed (bad ClientHello, no common cipher, peer gone, timeout).
    tls_handshakes_failed,
    /// Established TLS sessions ended by a TLS error (bad record, decryption failure).
    tls_errors,
    /// Upgrades refused with 401: token missing (`auth.mode = required`), malformed, badly
    /// signed, expired, wrong issuer or audience. Also counted in `handshakes_rejected`.
    handshakes_unauthorized,
    /// Upgrades refused with 403: `Origin` not on `auth.origins_allowed`. Also counted in
    /// `handshakes_rejected`.
    handshakes_forbidden,
    /// Upgrades refused with 429: the address went over `auth.handshakes_per_ip_per_sec`.
    /// Also counted in `handshakes_rejected`.
    handshakes_rate_limited,
    /// Upgrades refused with 429: the address already had `auth.connections_per_ip_max`
    /// connections open. Also counted in `handshakes_rejected`.
    connections_refused_per_ip,
    /// Connections opened with a valid token (uid bound, grants applied).
    connections_authenticated,
    /// Connections closed with 4001 because their token expired (after `auth.expiry_grace`).
    token_expiry_closes,
    /// Handshake-rate buckets forgotten before they refilled, to keep the address table
    /// within `auth.ips_tracked_max` (a flood from many addresses).
    ip_table_evictions,
}

/// Whether one shard is taking connections, as it last published it.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct ShardHealth {
    /// The shard has its listener, is not shutting down, and accepts are not paused after an
    /// accept error (EMFILE...).
    accepting: AtomicBool,
    /// Milliseconds since the node started at the shard's last housekeeping pass, plus one
    /// (0: never). Housekeeping runs every 250 ms, so a stale value means a stalled loop.
    heartbeat_ms: AtomicU64,
}

impl ShardHealth {
    pub(crate) fn publish_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Relaxed);
    }

    pub(crate) fn publish_heartbeat(&self, since_start: Duration) {
        self.heartbeat_ms.store(since_start.as_millis() as u64 + 1, Relaxed);
    }

    /// `(accepting, time since the node started at the last heartbeat)`.
    pub(crate) fn load(&self) -> (bool, Option<Duration>) {
        let ms = self.heartbeat_ms.load(Relaxed);
        (self.accepting.load(Relaxed), ms.checked_sub(1).map(Duration::from_millis))
    }
}

/// Upper bounds of the fan-out latency buckets, in nanoseconds (10 µs to 10 s, 1-2.5-5 steps);
/// a last, implicit bucket holds everything slower.
pub const LATENCY_BUCKETS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

const BUCKETS: usize = LATENCY_BUCKETS_NS.len() + 1;

/// One shard's fan-out latency histogram: written by that shard only (so a relaxed load and
/// store replace a locked read-modify-write), read by anyone.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct LatencyHistogram {
    /// Non-cumulative counts; the last is the overflow bucket.
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// Add one to a counter only this thread writes.
fn bump(a: &AtomicU64, by: u64) {
    a.store(a.load(Relaxed).wrapping_add(by), Relaxed);
}

impl LatencyHistogram {
    /// Record one observation. Must be called by the owning shard only (single writer).
    pub(crate) fn record(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_NS.partition_point(|&b| b < ns);
        bump(&self.buckets[i], 1);
        bump(&self.sum_ns, ns);
        bump(&self.count, 1);
    }

    pub(crate) fn load(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_ns: self.sum_ns.load(Relaxed),
            count: self.count.load(Relaxed),
        }
    }
}

/// A copy of fan-out latency histograms (one shard's, or summed over shards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Non-cumulative counts per bucket of [`LATENCY_BUCKETS_NS`], then the overflow bucket.
    /// A reader may see `count` and the buckets from slightly different moments.
    pub buckets: [u64; BUCKETS],
    /// Sum of every observation, in nanoseconds.
    pub sum_ns: u64,
    /// Number of observations.
    pub count: u64,
}

impl Default for LatencySnapshot {
    fn default() -> Self {
        LatencySnapshot { buckets: [0; BUCKETS], sum_ns: 0, count: 0 }
    }
}

impl std::ops::AddAssign for LatencySnapshot {
    fn add_assign(&mut self, o: LatencySnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.wrapping_add(o.sum_ns);
        self.count += o.count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(5)); // <= 10 us
        h.record(Duration::from_micros(10)); // <= 10 us (bounds are inclusive)
        h.record(Duration::from_micros(11)); // <= 25 us
        h.record(Duration::from_millis(3)); // <= 5 ms
        h.record(Duration::from_secs(60)); // overflow
        let s = h.load();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], 2);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[8], 1);
        assert_eq!(s.buckets[BUCKETS - 1], 1);
        assert_eq!(s.buckets.iter().sum::<u64>(), 5);
        assert_eq!(s.sum_ns, 5_000 + 10_000 + 11_000 + 3_000_000 + 60_000_000_000);
    }

    #[test]
    fn health_reports_heartbeats() {
        let h = ShardHealth::default();
        assert_eq!(h.load(), (false, None));
        h.publish_accepting(true);
        h.publish_heartbeat(Duration::from_millis(1500));
        assert_eq!(h.load(), (true, Some(Duration::from_millis(1500))));
    }
}
