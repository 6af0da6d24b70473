//! Cross-shard events: one bounded crossbeam channel into each shard, plus an eventfd that the
//! shard keeps a read on in its io_uring. A sender pushes, then writes the eventfd only if the
//! shard is not already signalled, so a burst of events costs one wake-up. The shard clears the
//! flag *before* draining, so an event sent during the drain always gets a fresh wake-up.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::addressing::Session;
use crate::history::{Position, Read};
use crate::ids::{ConnId, GroupId, Uid};
use crate::proto::Message;

use super::reply::Reply;

/// Who a publish is for, as carried between shards (ids already validated).
#[derive(Debug)]
pub(crate) enum Route {
    All,
    Groups(Vec<GroupId>),
    Clients(Vec<ConnId>),
    Uids(Vec<Uid>),
}

/// One publish, encoded once: every shard that receives it queues the same `frame`; members
/// who opted into envelopes get `enveloped`, also encoded once per publish, by the first shard
/// that needs it (a publish no enveloped member receives never builds one).
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) route: Route,
    pub(crate) exclude: Vec<ConnId>,
    pub(crate) frame: Bytes,
    /// The payload, to build the envelope from.
    pub(crate) message: Message,
    /// Its position in each target group with history (empty for most publishes).
    pub(crate) positions: Box<[(GroupId, Position)]>,
    pub(crate) enveloped: OnceLock<Bytes>,
    /// When the node accepted it: where its fan-out latency starts.
    pub(crate) accepted: std::time::Instant,
}

impl Outgoing {
    /// A publish without positions.
    pub(crate) fn new(route: Route, exclude: Vec<ConnId>, message: Message) -> Self {
        Outgoing {
            route,
            exclude,
            frame: message.encode(),
            message,
            positions: Box::default(),
            enveloped: OnceLock::new(),
            accepted: std::time::Instant::now(),
        }
    }

    /// A publish that arrived already encoded (from another node): `frame` is one unmasked
    /// final text or binary frame, validated by the receiver; its payload is kept as the
    /// message (a slice of the same bytes, no copy) for enveloped members.
    pub(crate) fn from_frame(
        route: Route,
        exclude: Vec<ConnId>,
        frame: Bytes,
        accepted: std::time::Instant,
    ) -> Self {
        let header = match frame.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        let payload = frame.slice(header.min(frame.len())..);
        let message = match frame.first() {
            Some(0x81) => tungstenite::Utf8Bytes::try_from(payload.clone())
                .map(Message::Text)
                .unwrap_or(Message::Binary(payload)),
            _ => Message::Binary(payload),
        };
        Outgoing {
            route,
            exclude,
            frame,
            message,
            positions: Box::default(),
            enveloped: OnceLock::new(),
            accepted,
        }
    }

    /// The enveloped frame, and whether this call encoded it.
    pub(crate) fn enveloped(&self) -> (Bytes, bool) {
        if let Some(b) = self.enveloped.get() {
            return (b.clone(), false);
        }
        let mut built = false;
        let b = self.enveloped.get_or_init(|| {
            built = true;
            crate::history::envelope::frame(&self.message, &self.positions)
        });
        (b.clone(), built)
    }
}

/// A change to one connection, or to a group, on the shard that owns it.
#[derive(Debug)]
pub(crate) enum Op {
    Join(ConnId, GroupId),
    Leave(ConnId, GroupId),
    Dissolve(GroupId),
    BindUid(ConnId, Uid),
    UnbindUid(ConnId),
    Close(ConnId, u16, String),
    /// Replace (`merge == false`) or merge into the connection's session.
    SetSession(ConnId, Session, bool),
}

impl Op {
    /// The connection the operation is about; `None` for a dissolve (about a group).
    pub(crate) fn conn(&self) -> Option<ConnId> {
        match self {
            Op::Join(c, _)
            | Op::Leave(c, _)
            | Op::BindUid(c, _)
            | Op::UnbindUid(c)
            | Op::Close(c, ..)
            | Op::SetSession(c, ..) => Some(*c),
            Op::Dissolve(_) => None,
        }
    }
}

/// A question to one shard; the answer goes back through the [`Reply`].
#[derive(Debug)]
pub(crate) enum Query {
    Client(ConnId),
    Group(GroupId),
    Uid(Uid),
    Stats,
}

/// What one shard asks of another, or what a handle asks of a shard.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// Publishes (one, or a batch from one request), shared by every shard they go to.
    Publish(Arc<[Outgoing]>, Option<Reply>),
    /// A membership, binding, session or close operation.
    Op(Op, Option<Reply>),
    /// A query.
    Query(Query, Reply),
    /// A frame of ours for one connection (a command's reply the control plane answered).
    Control(ConnId, String),
    /// The history read of a recovering (or enveloped) join on a clustered node came back:
    /// end the member's hold and answer (`history::Holds::resolve`). Boxed: rare, and the
    /// inbox's slots stay small.
    Recovered(Box<Recovery>),
    /// Begin graceful shutdown: stop accepting, close everyone with 1001.
    Shutdown,
}

/// A join's history read, answered to the member's shard (see [`ShardMsg::Recovered`]).
#[derive(Debug)]
pub(crate) struct Recovery {
    pub(crate) conn: ConnId,
    pub(crate) group: GroupId,
    pub(crate) req_id: Option<crate::command::RequestId>,
    pub(crate) since: Option<Position>,
    pub(crate) read: Read,
}

/// The sending side of one shard's inbox.
#[derive(Debug)]
pub(crate) struct Link {
    tx: Sender<ShardMsg>,
    signalled: AtomicBool,
    eventfd: OwnedFd,
}

/// The event was not delivered: the shard's inbox is full (or the shard has exited).
#[derive(Debug)]
pub(crate) struct Full;

impl Link {
    /// Queue an event without ever blocking the caller.
    pub(crate) fn send(&self, msg: ShardMsg) -> Result<(), Full> {
        self.try_send(msg).map_err(|_| Full)
    }

    /// Events waiting in the inbox (a gauge for the metrics; racy by nature).
    pub(crate) fn len(&self) -> usize {
        self.tx.len()
    }

    /// Like [`Link::send`], but gives the event back when it could not be queued (so a reply
    /// inside it can be accounted for by the caller).
    pub(crate) fn try_send(&self, msg: ShardMsg) -> Result<(), ShardMsg> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Queue an event from the owning shard itself, without a wake-up: the shard drains its
    /// inbox again before it parks (see `Core::own_inbox`).
    pub(crate) fn try_send_quiet(&self, msg: ShardMsg) -> Result<(), ShardMsg> {
        self.tx.try_send(msg).map_err(|e| e.into_inner())
    }

    fn wake(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own for our lifetime.
            let _ =
                unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Called by the owning shard before it drains its inbox.
    pub(crate) fn clear_signal(&self) {
        self.signalled.store(false, Ordering::Release);
    }
}

/// Create one shard's link and the receiving half (inbox plus a file to read the eventfd).
pub(crate) fn link(events_max: usize) -> io::Result<(Link, Receiver<ShardMsg>, File)> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let reader = File::from(eventfd.try_clone()?);
    let (tx, rx) = crossbeam_channel::bounded(events_max);
    Ok((Link { tx, signalled: AtomicBool::new(false), eventfd }, rx, reader))
}

impl Link {
    /// Signal the shard even if it is already marked signalled (it left events in its inbox).
    pub(crate) fn force_wake(&self) {
        self.signalled.store(false, Ordering::Release);
        self.wake();
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn inbox_slots_stay_small() {
        // Every event in an inbox takes a slot of this size: rare, large events are boxed.
        assert!(
            std::mem::size_of::<super::ShardMsg>() <= 64,
            "{}",
            std::mem::size_of::<super::ShardMsg>()
        );
    }
}
