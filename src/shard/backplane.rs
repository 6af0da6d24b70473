//! The shard side of clustering: two bounded hand-off queues from shards (and handles) to the
//! control plane's cluster task, and nothing else. A shard never touches Redis and never
//! waits: it `try_send`s, and a full queue is counted (publishes) or turned into a full
//! resynchronisation (interest changes), never a stall.
//!
//! Present only when clustering is configured; a single node pays one `Option` check per
//! publish and per first-join / last-leave.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
pub(crate) struct OutboundBatch {
    pub(crate) publishes: Arc<[Outgoing]>,
    /// Non-zero: the publisher wants each receiving node's report under this request id (a
    /// publish with `"ack": "nodes"`; such a batch holds one publish).
    pub(crate) request: u64,
}

impl OutboundBatch {
    pub(crate) fn len(&self) -> usize {
        self.publishes.len()
    }
}

/// What shards and handles hold.
pub(crate) struct Tap {
    publishes: mpsc::Sender<OutboundBatch>,
    hints: mpsc::Sender<Hint>,
    /// Set when a hint could not be queued: the cluster task resynchronises every channel
    /// from the directory.
    pub(crate) hints_overflowed: AtomicBool,
    /// Wakes the cluster task after an overflow.
    pub(crate) overflow_notify: Notify,
    /// Publishes dropped because the outbound queue was full.
    pub(crate) outbound_dropped: AtomicU64,
    /// Publishes (not batches) in the outbound queue: the queue's bound is in messages.
    queued_messages: AtomicUsize,
    messages_max: usize,
    /// Receivers, taken once by the cluster task.
    pub(crate) receivers: Mutex<Option<Receivers>>,
}

/// The cluster task's ends of the queues.
pub(crate) struct Receivers {
    pub(crate) publishes: mpsc::Receiver<OutboundBatch>,
    pub(crate) hints: mpsc::Receiver<Hint>,
}

impl Tap {
    /// Queues of `messages_max` publishes and `hints_max` hints.
    pub(crate) fn new(messages_max: usize, hints_max: usize) -> Tap {
        // A batch holds at least one publish, so the channel never holds more batches than
        // the message bound allows.
        let (ptx, prx) = mpsc::channel(messages_max.max(1));
        let (htx, hrx) = mpsc::channel(hints_max.max(1));
        Tap {
            publishes: ptx,
            hints: htx,
            hints_overflowed: AtomicBool::new(false),
            overflow_notify: Notify::new(),
            outbound_dropped: AtomicU64::new(0),
            queued_messages: AtomicUsize::new(0),
            messages_max: messages_max.max(1),
            receivers: Mutex::new(Some(Receivers { publishes: prx, hints: hrx })),
        }
    }

    /// [`Tap::publish`], asking the receiving nodes for a report under `request`.
    pub(crate) fn publish_with_request(&self, batch: &Arc<[Outgoing]>, request: u64) -> bool {
        let n = batch.len();
        let before = self.queued_messages.fetch_add(n, Ordering::AcqRel);
        let b = OutboundBatch { publishes: batch.clone(), request };
        if before + n <= self.messages_max && self.publishes.try_send(b).is_ok() {
            return true;
        }
        self.queued_messages.fetch_sub(n, Ordering::AcqRel);
        self.outbound_dropped.fetch_add(n as u64, Ordering::Relaxed);
        false
    }

    /// Publishes waiting in the outbound queue now.
    pub(crate) fn queued(&self) -> usize {
        self.queued_messages.load(Ordering::Acquire)
    }

    /// The outbound queue's bound, in publishes.
    pub(crate) fn messages_max(&self) -> usize {
        self.messages_max
    }

    /// The cluster task took `n` publishes out of the queue.
    pub(crate) fn taken(&self, n: usize) {
        self.queued_messages.fetch_sub(n, Ordering::AcqRel);
    }

    /// Report an interest change.
    pub(crate) fn hint(&self, h: Hint) {
        if self.hints.try_send(h).is_err() && !self.hints_overflowed.swap(true, Ordering::AcqRel) {
            self.overflow_notify.notify_one();
        }
    }
}
