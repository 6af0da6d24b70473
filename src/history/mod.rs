//! Delivery guarantees: per-group history with positions, recovery after reconnect, and
//! idempotent publish.
//!
//! - `stream.rs`: one group's bounded history and the position logic (sans-I/O).
//! - `idempotency.rs`: the idempotency-key table (sans-I/O).
//! - `envelope.rs`: the enveloped frame members who opted in receive (pure).
//! - `seam.rs`: which recovering members skip which live messages (sans-I/O).
//! - `holding.rs`: live messages held for a member whose history read (Redis, in a cluster)
//!   is in flight, and what to send when it returns (sans-I/O; a clustered node's shards).
//! - `memory.rs`: [`MemoryHistory`], the single-node backend (striped locks around the above).
//! - `config.rs`: [`HistoryConfig`].
//!
//! - `redis.rs`: [`redis::RedisHistory`], a cluster's store (async, control plane only).
//!
//! A single node's shards talk to a [`HistoryBackend`] (in memory); a clustered node's go
//! through the cluster task to Redis. See ARCHITECTURE.md ("History backends").

pub mod config;
pub mod envelope;
pub mod holding;
pub mod idempotency;
pub mod memory;
pub mod metrics;
pub mod redis;
pub mod seam;
pub mod stream;

use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use globset::{GlobBuilder, GlobMatcher};
use serde::Serialize;

use crate::ids::GroupId;
use crate::proto::Message;

pub use config::{HistoryConfig, HistoryRule};
pub use holding::{Holds, Resolved};
pub use idempotency::{Claim, IdempotencyTable};
pub use memory::MemoryHistory;
pub use metrics::HistoryCollector;
pub use seam::Seams;
pub use stream::{ReadFrom, Stored, StreamLimits, Unrecoverable};

/// Identifies one continuous run of a group's offsets. A new epoch means continuity was lost
/// (the process restarted, or the group's history was forgotten): positions of another epoch
/// cannot be recovered from. Shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for Epoch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 16 {
            return Err(format!("bad epoch {s:?}: expected up to 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .map(Epoch)
            .map_err(|_| format!("bad epoch {s:?}: expected up to 16 hex digits"))
    }
}

impl Serialize for Epoch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A message's place in its group: `offset` grows by one per message within `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    /// The run of offsets this belongs to.
    pub epoch: Epoch,
    /// 1 for the group's first message of the epoch; 0 means "before the first".
    pub offset: u64,
}

/// The history rules, compiled once. Matched in order, one glob at a time (no allocation per
/// lookup: it runs once per publish to a group).
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<(GlobMatcher, StreamLimits)>,
}

impl Rules {
    /// Compile the patterns; an invalid one is an error naming it.
    pub fn new(rules: &[HistoryRule]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(rules.len());
        for r in rules {
            let glob = GlobBuilder::new(&r.pattern)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("bad history pattern {:?}: {}", r.pattern, e.kind()))?;
            let limits = StreamLimits { messages_max: r.messages_max, age_max: r.age_max };
            out.push((glob.compile_matcher(), limits));
        }
        Ok(Rules { rules: out })
    }

    /// The limits of the first rule matching `group`, if any.
    pub fn limits_for(&self, group: &str) -> Option<StreamLimits> {
        self.rules.iter().find(|(m, _)| m.is_match(group)).map(|(_, l)| *l)
    }

    /// Whether there is any rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// One message of an append: the groups with history it goes to and its payload.
#[derive(Debug)]
pub struct AppendItem<'a> {
    /// Groups with history among the publish's target groups, with their limits.
    pub groups: Vec<(GroupId, StreamLimits)>,
    /// The payload.
    pub message: &'a Message,
}

/// What an append assigned to one message.
#[derive(Debug, Clone)]
pub struct Appended {
    /// One position per group, in the item's order.
    pub positions: Vec<(GroupId, Position)>,
}

/// The result of a read.
#[derive(Debug, Clone)]
pub struct Read {
    /// The group's newest position (`None`: the group keeps no history).
    pub position: Option<Position>,
    /// The messages (oldest first) and whether more follow; or why the position given could
    /// not be recovered from.
    pub outcome: Result<(Vec<Stored>, bool), Unrecoverable>,
}

/// Counters of a history backend (gauges say so).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HistoryCounters {
    /// Messages stored (one per group with history per publish).
    pub history_messages_stored: u64,
    /// Messages evicted by the count, age or byte bounds.
    pub history_messages_evicted: u64,
    /// Of those, evicted by the byte bound (`history_bytes_max`).
    pub history_messages_evicted_bytes: u64,
    /// Groups forgotten to stay within `history_groups_max` (their next publish starts a
    /// new epoch).
    pub history_groups_evicted: u64,
    /// Bytes held now (gauge).
    pub history_bytes: u64,
    /// Groups with a history now (gauge).
    pub history_groups: u64,
    /// Reads from a position that returned everything after it.
    pub history_recovered: u64,
    /// Reads from a position that could not (`recovered: false`).
    pub history_unrecovered: u64,
    /// Keyed publishes acknowledged as duplicates (not delivered again).
    pub idempotency_duplicates: u64,
    /// Idempotency keys forgotten before their window passed (count bound).
    pub idempotency_keys_evicted: u64,
    /// Idempotency keys held now (gauge).
    pub idempotency_keys: u64,
}

impl HistoryCounters {
    /// `(name, value)` pairs, for logs and exporters.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("history_messages_stored", self.history_messages_stored),
            ("history_messages_evicted", self.history_messages_evicted),
            ("history_messages_evicted_bytes", self.history_messages_evicted_bytes),
            ("history_groups_evicted", self.history_groups_evicted),
            ("history_bytes", self.history_bytes),
            ("history_groups", self.history_groups),
            ("history_recovered", self.history_recovered),
            ("history_unrecovered", self.history_unrecovered),
            ("idempotency_duplicates", self.idempotency_duplicates),
            ("idempotency_keys_evicted", self.idempotency_keys_evicted),
            ("idempotency_keys", self.idempotency_keys),
        ]
    }
}

/// The seam between the node and where history and idempotency keys live: in this process
/// ([`MemoryHistory`], what this trait serves). A clustered node keeps history in Redis instead
/// (`redis.rs`, driven by the cluster task: see ARCHITECTURE.md, "History backends").
///
/// The contract that makes recovery exact ("no gap, no duplicate at the seam"):
/// - `append` assigns each group's next offsets and stores the messages, then calls `fan_out`
///   **while the groups' order is still held**: the caller queues the publishes to the shards
///   inside it, so every shard's inbox receives a group's messages in offset order.
/// - `read` calls `while_held` **while the group's order is held**: a joining shard registers
///   its new member there, so every message after the read's `position` reaches that shard
///   through its inbox (and the shard skips, for that member, the ones at or below it).
pub trait HistoryBackend: Send + Sync {
    /// Whether `group` keeps a history, and its bounds.
    fn limits_for(&self, group: &str) -> Option<StreamLimits>;

    /// Assign positions to `items` and store them; `fan_out` gets one [`Appended`] per item,
    /// in order, while the order is held.
    fn append(
        &self,
        items: &[AppendItem<'_>],
        now: Instant,
        fan_out: &mut dyn FnMut(Vec<Appended>),
    );

    /// Read `group`'s history from `from`, at most `limit` messages; `while_held` runs while
    /// the group's order is held (see the trait's contract).
    fn read(
        &self,
        group: &GroupId,
        from: ReadFrom,
        limit: usize,
        now: Instant,
        while_held: &mut dyn FnMut(&Read),
    ) -> Read;

    /// Check an idempotency key and claim it if new.
    fn idempotency_claim(&self, key: &str, now: Instant) -> Claim<Bytes>;

    /// Remember the answer of a claimed key for the window.
    fn idempotency_complete(&self, key: &str, answer: Bytes, now: Instant);

    /// Forget a claimed key whose publish failed.
    fn idempotency_release(&self, key: &str);

    /// Count a duplicate found by a store outside this backend (idempotency keys in Redis),
    /// so `idempotency_duplicates` covers every keyed publish the node answered.
    fn count_duplicate(&self);

    /// Evict what has aged out (a slice of the store per call; call it every few hundred ms).
    fn sweep(&self, now: Instant);

    /// Counters.
    fn counters(&self) -> HistoryCounters;
}
