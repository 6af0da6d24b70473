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

use crate::command::RequestId;
use crate::history::{Position, Read, ReadFrom, StreamLimits};
use crate::ids::{ConnId, GroupId, Uid};
use crate::proto::Message;

use super::mesh::Outgoing;
use super::reply::Reply;

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

/// History work for the cluster task (a clustered node keeps group history in Redis): the
/// appends of a publish to groups with history, or a read.
pub(crate) enum HistoryJob {
    /// Append these messages (in order: one publisher's messages keep their order) and publish
    /// them positioned on their groups' channels; answer the positions.
    Append(Vec<AppendItem>, AppendAnswer),
    /// Read a group's history and answer (boxed: the queue's slots stay small).
    Read(Box<ReadJob>),
}

/// One message of a publish, for its groups with history.
pub(crate) struct AppendItem {
    /// The publish's index in its batch (the report it belongs to).
    pub(crate) index: usize,
    pub(crate) groups: Vec<(GroupId, StreamLimits)>,
    pub(crate) message: Message,
    /// Connections that must not receive it (the publish's exclude list).
    pub(crate) exclude: Vec<ConnId>,
}

/// Who waits for an append's positions.
pub(crate) enum AppendAnswer {
    /// Nobody (a fire-and-forget publish).
    Nobody,
    /// A request's reply slot: [`super::reply::Answer::Positions`].
    Reply(Reply),
    /// A client's command: the reply frame goes to `conn` through its shard's inbox.
    Command { conn: ConnId, req_id: Option<RequestId>, cmd: &'static str },
}

/// A read of one group's history.
pub(crate) struct ReadJob {
    pub(crate) group: GroupId,
    pub(crate) limits: StreamLimits,
    pub(crate) from: ReadFrom,
    pub(crate) limit: usize,
    pub(crate) answer: ReadAnswer,
}

/// Who waits for a read.
pub(crate) enum ReadAnswer {
    /// A recovering (or enveloped) join on `conn`'s shard, which holds the group's live
    /// messages for it meanwhile (`history::Holds`). The read waits until this node receives
    /// the group's channel, so every message after it reaches the shard.
    Join { conn: ConnId, req_id: Option<RequestId>, since: Option<Position> },
    /// A client's `history` command: the answer frame (at most `bytes_max` of messages).
    Command { conn: ConnId, req_id: Option<RequestId>, since_given: bool, bytes_max: usize },
    /// A caller on the control plane (the HTTP API).
    Caller(tokio::sync::oneshot::Sender<Result<Read, String>>),
}

/// What shards and handles hold.
pub(crate) struct Tap {
    publishes: mpsc::Sender<OutboundBatch>,
    hints: mpsc::Sender<Hint>,
    history: mpsc::Sender<HistoryJob>,
    /// History jobs refused because their queue was full (bounded in jobs).
    pub(crate) history_jobs_dropped: AtomicU64,
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
    pub(crate) history: mpsc::Receiver<HistoryJob>,
}

impl Tap {
    /// Queues of `messages_max` publishes, `hints_max` hints and `history_jobs_max` history
    /// jobs.
    pub(crate) fn new(messages_max: usize, hints_max: usize, history_jobs_max: usize) -> Tap {
        // A batch holds at least one publish, so the channel never holds more batches than
        // the message bound allows.
        let (ptx, prx) = mpsc::channel(messages_max.max(1));
        let (htx, hrx) = mpsc::channel(hints_max.max(1));
        let (jtx, jrx) = mpsc::channel(history_jobs_max.max(1));
        Tap {
            publishes: ptx,
            hints: htx,
            history: jtx,
            history_jobs_dropped: AtomicU64::new(0),
            hints_overflowed: AtomicBool::new(false),
            overflow_notify: Notify::new(),
            outbound_dropped: AtomicU64::new(0),
            queued_messages: AtomicUsize::new(0),
            messages_max: messages_max.max(1),
            receivers: Mutex::new(Some(Receivers { publishes: prx, hints: hrx, history: jrx })),
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

    /// Queue history work for the cluster task; a full queue gives the job back (counted), so
    /// the caller can answer its waiter at once.
    pub(crate) fn history_job(&self, job: HistoryJob) -> Result<(), HistoryJob> {
        self.history.try_send(job).map_err(|e| {
            self.history_jobs_dropped.fetch_add(1, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            }
        })
    }

    /// The history queue's bound, in jobs.
    pub(crate) fn history_jobs_max(&self) -> usize {
        self.history.max_capacity()
    }

    /// History jobs waiting now.
    pub(crate) fn history_jobs_queued(&self) -> usize {
        self.history.max_capacity() - self.history.capacity()
    }

    /// Report an interest change.
    pub(crate) fn hint(&self, h: Hint) {
        if self.hints.try_send(h).is_err() && !self.hints_overflowed.swap(true, Ordering::AcqRel) {
            self.overflow_notify.notify_one();
        }
    }
}
