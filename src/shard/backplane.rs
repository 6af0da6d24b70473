//! The shard side of clustering: two bounded hand-off queues from shards (and handles) to the
//! control plane's cluster task, and nothing else. A shard never touches Redis and never
//! waits: it `try_send`s, and a full queue is counted (publishes) or turned into a full
//! resynchronisation (interest changes), never a stall.
//!
//! Present only when clustering is configured; a single node pays one `Option` check per
//! publish and per first-join / last-leave.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use crate::ids::{GroupId, Uid};

use super::mesh::Outgoing;

/// A node-level interest change: the node got its first member of a group (or uid), or lost
/// its last. A hint only: the cluster task reads the directory for the current state, so
/// hints racing each other cannot leave a wrong subscription behind.
#[derive(Debug, Clone)]
pub(crate) enum Hint {
    Group(GroupId),
    Uid(Uid),
}

/// Publishes made on this node, on their way to the other nodes.
pub(crate) type OutboundBatch = Arc<[Outgoing]>;

/// What shards and handles hold.
pub(crate) struct Tap {
    publishes: mpsc::Sender<OutboundBatch>,
    hints: mpsc::Sender<Hint>,
    /// Set when a hint could not be queued: the cluster task resynchronises every channel
    /// from the directory.
    pub(crate) hints_overflowed: AtomicBool,
    /// Wakes the cluster task after an overflow.
    pub(crate) overflow_notify: Notify,
    /// Publish batches dropped because the outbound queue was full.
    pub(crate) outbound_dropped: AtomicU64,
    /// Receivers, taken once by the cluster task.
    pub(crate) receivers: Mutex<Option<Receivers>>,
}

/// The cluster task's ends of the queues.
pub(crate) struct Receivers {
    pub(crate) publishes: mpsc::Receiver<OutboundBatch>,
    pub(crate) hints: mpsc::Receiver<Hint>,
}

impl Tap {
    /// Queues of `publishes_max` batches and `hints_max` hints.
    pub(crate) fn new(publishes_max: usize, hints_max: usize) -> Tap {
        let (ptx, prx) = mpsc::channel(publishes_max.max(1));
        let (htx, hrx) = mpsc::channel(hints_max.max(1));
        Tap {
            publishes: ptx,
            hints: htx,
            hints_overflowed: AtomicBool::new(false),
            overflow_notify: Notify::new(),
            outbound_dropped: AtomicU64::new(0),
            receivers: Mutex::new(Some(Receivers { publishes: prx, hints: hrx })),
        }
    }

    /// Hand a batch of local publishes to the cluster task; `false` (and counted) if its
    /// queue is full.
    pub(crate) fn publish(&self, batch: &OutboundBatch) -> bool {
        if self.publishes.try_send(batch.clone()).is_ok() {
            return true;
        }
        self.outbound_dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
        false
    }

    /// Report an interest change.
    pub(crate) fn hint(&self, h: Hint) {
        if self.hints.try_send(h).is_err() && !self.hints_overflowed.swap(true, Ordering::AcqRel) {
            self.overflow_notify.notify_one();
        }
    }
}
