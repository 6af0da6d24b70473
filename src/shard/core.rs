//! A shard's state and everything it does that is not I/O scheduling: connections, routing,
//! publishes, membership operations, queries, the client command protocol, heartbeats and the
//! slow-consumer policy. The event loop in `super::run` owns one `Core` and calls into it with
//! completed operations; `Core` never polls, never blocks and never touches another shard's
//! state (it reaches other shards only through their inboxes).

use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use tokio_uring::net::TcpStream;

use super::backplane::{HistoryJob, ReadAnswer, ReadJob};
use super::node::{HistoryHandOff, Published};
use crate::addressing::{Applied, ClientInfo, Publish, PublishReport, Session, ShardStats, To};
use crate::command::{self, Command, JoinMatcher, ParseLimits, RateDecision, Request};
use crate::config::{Config, OnMessage, SlowConsumerPolicy};
use crate::fanout::{FrameDone, SendStatus, SharedFrame};
use crate::history::{Holds, Position, Read, ReadFrom, Resolved, Seams, Unrecoverable};
use crate::ids::{ConnId, GroupId, NodeId, Slot, Uid};
use crate::metrics::Counters;
use crate::proto::{self, CloseCode, Inbound, Message};
use crate::route::{Bound, Joined, Left, Router, Selection, Target};

use super::conn::{Conn, Phase, Tick};
use super::mesh::{Op, Outgoing, Query, Route, ShardMsg};
use super::node::{Callbacks, ConnInfo, Node};
use super::reply::{Answer, Reply};
use super::IDLE_READ_BYTES;

/// Read buffers kept for reuse.
const READ_POOL_MAX: usize = 64;
/// Ciphertext write buffers kept for reuse (TLS connections), and the largest one kept.
const CIPHER_POOL_MAX: usize = 64;
const CIPHER_BUFFER_KEEP_BYTES: usize = 64 * 1024;
/// After this many connections were freed (a mass disconnect), the shard asks the allocator to
/// return free memory to the OS, so resident memory follows the number of connections down.
const TRIM_AFTER_FREED_CONNECTIONS: usize = 1024;
/// During a long burst of closes, at most one trim per interval per shard (a trim walks the
/// allocator's free lists).
const TRIM_INTERVAL_MIN: Duration = Duration::from_secs(5);

/// Return free heap pages to the OS (glibc keeps freed memory in its arenas otherwise).
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas; it takes
    // the arena locks itself and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Most groups, clients or uids one client command may address.
const COMMAND_TARGETS_MAX: usize = 64;

/// Everything a shard owns that callbacks may touch through [`Ctx`].
pub(crate) struct Core {
    pub(crate) id: usize,
    node_id: NodeId,
    pub(crate) config: Arc<Config>,
    pub(crate) node: Arc<Node>,
    pub(crate) callbacks: Arc<Callbacks>,
    pub(crate) conns: Slab<Conn>,
    /// Per-slot generation of the connection now (or last) in that slot: 32 bits, so a stale
    /// id matches nothing for 4 billion reuses of one slot.
    generations: Vec<u32>,
    /// Group membership and uid bindings of this shard's connections.
    router: Router,
    join_matcher: JoinMatcher,
    /// Whether new connections get the welcome frame.
    welcome: bool,
    /// Recovering members and the offset of their group their replay ended at: a live
    /// message of that group at or below it was replayed (or seen before) and is skipped for
    /// them. Removed once a later message of the group arrives (the shard's inbox holds a
    /// group's messages in offset order), or when the member leaves or closes. Usually empty.
    seams: Seams<ConnId>,
    /// A clustered node (history in Redis): members whose history read is in flight, and the
    /// live messages of their group held for them meanwhile (see `history::holding`).
    /// Usually empty.
    holds: Holds<ConnId, Message>,
    /// This shard queued a publish to its own inbox (a positioned publish, which must not
    /// overtake older messages of its groups there): the loop drains the inbox before parking.
    pub(crate) own_inbox: bool,
    /// Scratch buffers for recipient selection (kept to avoid allocating per publish).
    recipients: Vec<Slot>,
    excluded: Vec<Slot>,
    /// Slots with frames to write and no write in flight.
    pub(crate) dirty: Vec<usize>,
    /// Connections whose next read must be started, with the buffer to read into.
    pub(crate) to_read: Vec<(ConnId, Vec<u8>)>,
    read_pool: Vec<Vec<u8>>,
    pub(crate) batch_pool: Vec<Vec<SharedFrame>>,
    /// TLS only: ciphertext write buffers, and the plaintext of the last read.
    cipher_pool: Vec<Vec<u8>>,
    tls_plain: Vec<u8>,
    events: Vec<Inbound>,
    pub(crate) counters: Counters,
    pub(crate) now: Instant,
    /// Wall-clock seconds since the epoch, set by the event loop before each housekeeping
    /// pass (token expiry is in Unix time).
    pub(crate) unix_now: u64,
    /// `now` as a compact shard-local tick (what connections store).
    pub(crate) tick: Tick,
    epoch: Instant,
    /// Housekeeping passes so far: pass `n` pings the connections whose slot is `n` modulo
    /// `ping_buckets`, so pings (and the pongs they draw) are spread over the ping interval
    /// instead of hitting every connection, and the loopback, in the same millisecond.
    housekeeping_passes: u64,
    ping_buckets: u64,
    ping_frame: SharedFrame,
    pub(crate) shutting_down: Option<Instant>,
    pub(crate) log_limiter: LogLimiter,
    /// Connections freed since memory was last handed back to the OS.
    freed_since_trim: usize,
    /// `freed_since_trim` at the previous housekeeping pass (unchanged: the burst is over).
    freed_at_last_pass: usize,
    /// The last trim ran during a burst of closes: trim once more when it ends.
    trim_tail_due: bool,
    last_trim: Instant,
    /// Records the fan-out latency of this shard's armed frames (see [`LatencySink`]).
    latency_sink: Rc<dyn FrameDone>,
}

/// Fan-out latency, publish accepted → the last write of it on this shard completed (or the
/// frame was dropped with its last connection). Armed once per publish per shard that queued
/// it at least once; the cost is one clock read and one histogram bucket when the frame's
/// last shard-local reference goes, nothing per recipient.
struct LatencySink {
    node: Arc<Node>,
    shard: usize,
}

impl FrameDone for LatencySink {
    fn frame_done(&self, accepted: Instant) {
        self.node.fanout_latency[self.shard].record(accepted.elapsed());
    }
}

/// The application's view of its shard inside a callback.
pub struct Ctx<'a> {
    pub(crate) core: &'a mut Core,
}

impl Ctx<'_> {
    /// This shard's index (Workerman's worker id).
    pub fn shard(&self) -> usize {
        self.core.id
    }

    /// Send `msg` to every connection of the node: encoded once here, shared by every
    /// recipient on every shard.
    pub fn broadcast(&mut self, msg: impl Into<Message>) {
        self.publish(Publish::new(To::All, msg));
    }

    /// Send `msg` to one connection of the node, wherever it lives.
    pub fn send(&mut self, conn: ConnId, msg: impl Into<Message>) {
        self.publish(Publish::new(To::Clients(vec![conn]), msg));
    }

    /// Publish to any target of the node (all, groups, clients, uids, with exclusions). The
    /// frame is encoded once here; this shard's recipients are queued before this returns,
    /// other shards' when they next run. Returns what was queued on this shard. A publish to
    /// groups with history reaches this shard's members through its inbox too (so they get
    /// the group's messages in offset order): then nothing is queued here yet, and the report
    /// carries the positions.
    pub fn publish(&mut self, p: Publish) -> PublishReport {
        self.core.publish(p)
    }

    /// Close one connection of the node with `code` and `reason`.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.core.op(Op::Close(conn, code, reason.to_owned()));
    }

    /// Add a connection to a group. A connection of this shard is added now and the outcome
    /// returned; one of another shard is forwarded to it (`None`).
    pub fn join_group(&mut self, conn: ConnId, group: GroupId) -> Option<Applied> {
        self.core.op(Op::Join(conn, group))
    }

    /// Remove a connection from a group (see [`Ctx::join_group`] for the return value).
    pub fn leave_group(&mut self, conn: ConnId, group: GroupId) -> Option<Applied> {
        self.core.op(Op::Leave(conn, group))
    }

    /// Bind a connection to a uid (see [`Ctx::join_group`] for the return value).
    pub fn bind_uid(&mut self, conn: ConnId, uid: Uid) -> Option<Applied> {
        self.core.op(Op::BindUid(conn, uid))
    }

    /// Groups a connection of this shard is in (empty for other shards' connections).
    pub fn groups_of(&self, conn: ConnId) -> Vec<GroupId> {
        match self.core.local_slot(conn) {
            Some(slot) => self.core.router.groups_of(slot).to_vec(),
            None => Vec::new(),
        }
    }

    /// Open connections on this shard.
    pub fn connections(&self) -> usize {
        self.core.conns.iter().filter(|(_, c)| c.phase == Phase::Open).count()
    }

    /// Open connections on the whole node.
    pub fn node_connections(&self) -> usize {
        self.core.node.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ids of this shard's open connections.
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.core.conns.iter().filter(|(_, c)| c.phase == Phase::Open).map(|(_, c)| c.id).collect()
    }
}

/// Convert the API's target into the mesh's.
pub(crate) fn route_of(to: To) -> Route {
    match to {
        To::All => Route::All,
        To::Groups(g) => Route::Groups(g),
        To::Clients(c) => Route::Clients(c),
        To::Uids(u) => Route::Uids(u),
    }
}

impl Core {
    pub(crate) fn new(
        id: usize,
        config: Arc<Config>,
        node: Arc<Node>,
        callbacks: Arc<Callbacks>,
        join_matcher: JoinMatcher,
    ) -> Self {
        let now = Instant::now();
        let welcome = config.welcome.unwrap_or(config.on_message == OnMessage::Commands);
        let held_max = config.history.recovery_held_messages_max;
        Core {
            id,
            latency_sink: Rc::new(LatencySink { node: node.clone(), shard: id }),
            node_id: node.id,
            housekeeping_passes: 0,
            ping_buckets: config
                .ping_interval
                .map_or(1, |p| (p.as_millis() / super::HOUSEKEEPING_INTERVAL.as_millis()).max(1))
                as u64,
            config,
            node,
            callbacks,
            conns: Slab::new(),
            generations: Vec::new(),
            router: Router::new(),
            join_matcher,
            welcome,
            seams: Seams::default(),
            holds: Holds::new(held_max),
            own_inbox: false,
            recipients: Vec::new(),
            excluded: Vec::new(),
            dirty: Vec::new(),
            to_read: Vec::new(),
            read_pool: Vec::new(),
            batch_pool: Vec::new(),
            cipher_pool: Vec::new(),
            tls_plain: Vec::new(),
            events: Vec::new(),
            counters: Counters::default(),
            now,
            unix_now: 0,
            tick: Tick::at(now, now),
            epoch: now,
            ping_frame: SharedFrame::new(proto::frame::ping(b"ringcast")),
            shutting_down: None,
            log_limiter: LogLimiter::default(),
            freed_since_trim: 0,
            freed_at_last_pass: 0,
            trim_tail_due: false,
            last_trim: now,
        }
    }

    /// Drop capacity kept from a larger past: tables sized for the peak, pooled buffers.
    fn shrink_to_fit(&mut self) {
        self.router.shrink_to_fit();
        self.conns.shrink_to_fit();
        self.read_pool.clear();
        self.batch_pool.clear();
        self.cipher_pool.clear();
        self.tls_plain = Vec::new();
        self.dirty.shrink_to_fit();
        self.to_read.shrink_to_fit();
        self.recipients = Vec::new();
        self.excluded = Vec::new();
    }

    /// Read once per loop turn by the event loop.
    pub(crate) fn set_now(&mut self, now: Instant) {
        self.now = now;
        self.tick = Tick::at(self.epoch, now);
    }

    /// The slot of `id` if it is an open connection of this shard (right node, shard, slot
    /// and generation).
    fn local_slot(&self, id: ConnId) -> Option<Slot> {
        if id.node() != self.node_id || id.shard() != self.id {
            return None;
        }
        self.conns
            .get(id.slot() as usize)
            .filter(|c| c.id == id && c.phase == Phase::Open)
            .map(|_| id.slot())
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.slot() as usize).filter(|c| c.id == id)
    }

    /// Publish from this shard (a callback, a timer, a client command): encode once, queue
    /// locally now, and send the same bytes to every other shard that may have recipients.
    fn publish(&mut self, p: Publish) -> PublishReport {
        self.publish_from(p, None).0
    }

    /// [`Core::publish`] for a client's command (`command`: its connection, request id and
    /// name), which a clustered node with history answers later, once Redis assigned the
    /// positions (the returned hand-off says so).
    fn publish_from(
        &mut self,
        p: Publish,
        command: Option<(ConnId, Option<command::RequestId>, &'static str)>,
    ) -> (PublishReport, HistoryHandOff) {
        self.counters.frames_encoded += 1;
        let Published { batch, missed, local, tapped, history } =
            self.node.publish(vec![p], Some(self.id), None, 0, command);
        if let HistoryHandOff::Refused(why) = &history {
            self.log_limiter.warn("history_queue", || why.clone());
        }
        self.own_inbox |= !local;
        if !tapped {
            self.log_limiter.warn("cluster", || {
                "cluster outbound queue full: publish not sent to the other nodes \
                 (cluster.outbound_dropped counts them)"
                    .to_owned()
            });
        }
        if missed > 0 {
            self.counters.mesh_dropped += missed as u64;
            self.log_limiter.warn("mesh", || {
                format!("{missed} shard inbox(es) full: publish not delivered there")
            });
        }
        let mut total = PublishReport { shards_missed: missed as u32, ..Default::default() };
        for o in batch.iter() {
            if !local {
                total.positions.extend(o.positions.iter().cloned());
                continue;
            }
            let r = self.publish_local(o);
            total.queued += r.queued;
            total.slow_consumers += r.slow_consumers;
            total.positions.extend(o.positions.iter().cloned());
        }
        (total, history)
    }

    /// Queue one publish for its recipients on this shard.
    fn publish_local(&mut self, o: &Outgoing) -> PublishReport {
        let mut report = PublishReport::default();
        let mut excluded = std::mem::take(&mut self.excluded);
        let mut recipients = std::mem::take(&mut self.recipients);
        excluded.clear();
        for id in &o.exclude {
            if let Some(slot) = self.local_slot(*id) {
                excluded.push(slot);
            }
        }
        if !self.seams.is_empty() && !o.positions.is_empty() {
            self.apply_seams(o, &mut excluded);
        }
        if !self.holds.is_empty() && !o.positions.is_empty() {
            let (node_id, shard) = (self.node_id, self.id);
            let dropped = self.holds.offer(&o.positions, &o.message, |id| {
                if id.node() == node_id && id.shard() == shard && !excluded.contains(&id.slot()) {
                    excluded.push(id.slot());
                }
            });
            self.counters.recovery_held_dropped += dropped;
        }
        let mut frames = Frames::new(o);
        let target = match &o.route {
            Route::All => Target::All,
            Route::Groups(g) => Target::Groups(g),
            Route::Uids(u) => Target::Uids(u),
            Route::Clients(ids) => {
                recipients.clear();
                recipients.extend(ids.iter().filter_map(|id| self.local_slot(*id)));
                // `recipients` is both the input and the output: move it aside.
                let slots = std::mem::take(&mut recipients);
                let sel = self.router.recipients(Target::Slots(&slots), &excluded, &mut recipients);
                debug_assert_eq!(sel, Selection::Listed);
                self.deliver_listed(&mut frames, &recipients, &mut report);
                self.recipients = recipients;
                self.excluded = excluded;
                return report;
            }
        };
        match self.router.recipients(target, &excluded, &mut recipients) {
            Selection::Everyone => {
                let Core { conns, dirty, config, counters, log_limiter, .. } = self;
                for (slot, conn) in conns.iter_mut() {
                    if excluded.is_empty() || !excluded.contains(&(slot as Slot)) {
                        deliver(
                            conn,
                            slot,
                            &mut frames,
                            config,
                            dirty,
                            counters,
                            log_limiter,
                            &mut report,
                        );
                    }
                }
                if report.queued > 0 {
                    frames.arm(&self.latency_sink);
                }
            }
            Selection::Listed => self.deliver_listed(&mut frames, &recipients, &mut report),
        }
        self.recipients = recipients;
        self.excluded = excluded;
        report
    }

    fn deliver_listed(
        &mut self,
        frames: &mut Frames<'_>,
        slots: &[Slot],
        report: &mut PublishReport,
    ) {
        if slots.is_empty() {
            return;
        }
        let queued_before = report.queued;
        let Core { conns, dirty, config, counters, log_limiter, .. } = self;
        for &slot in slots {
            if let Some(conn) = conns.get_mut(slot as usize) {
                deliver(conn, slot as usize, frames, config, dirty, counters, log_limiter, report);
            }
        }
        if report.queued > queued_before {
            frames.arm(&self.latency_sink);
        }
    }

    /// Exclude recovering members from a message their replay covered (see `Seams`).
    fn apply_seams(&mut self, o: &Outgoing, excluded: &mut Vec<Slot>) {
        let (conns, node_id, shard) = (&self.conns, self.node_id, self.id);
        self.seams.covered(
            &o.positions,
            |id| {
                id.node() == node_id
                    && id.shard() == shard
                    && conns.get(id.slot() as usize).is_some_and(|c| c.id == id)
            },
            |id| {
                if !excluded.contains(&id.slot()) {
                    excluded.push(id.slot());
                }
            },
        );
    }

    /// Forget the seams of `conn` (of one group, or all).
    fn drop_seams(&mut self, conn: ConnId, group: Option<&str>) {
        if !self.seams.is_empty() {
            self.seams.forget(conn, group);
        }
        if !self.holds.is_empty() {
            self.holds.forget(conn, group);
        }
    }

    /// `add_group` with `envelope` (and maybe `since`): join, reply with the position, and
    /// with `since` replay what the member missed, exactly up to the seam.
    fn join_enveloped(
        &mut self,
        slot: Slot,
        id: ConnId,
        req_id: Option<&command::RequestId>,
        group: GroupId,
        since: Option<Position>,
    ) {
        let node = self.node.clone();
        if let (true, Some(tap), Some(limits)) =
            (node.history_on, &node.tap, node.history.limits_for(&group))
        {
            // A clustered node: the history is in Redis, read by the control plane.
            let already = self.router.is_member(slot, &group);
            if let Applied::Refused(reason) = self.join_slot(slot, &group) {
                self.counters.commands_rejected += 1;
                self.send_control(slot, command::error(req_id, Some("add_group"), &reason));
                return;
            }
            if let Some(conn) = self.conns.get_mut(slot as usize) {
                conn.envelope = true;
            }
            if !already {
                // From here on the group's live messages are held for the member until the
                // read returns (the read waits for the group's channel to be subscribed).
                self.holds.hold(id, group.clone());
            }
            let from = match since {
                Some(p) if !already => ReadFrom::Since(p),
                _ => ReadFrom::Last(0),
            };
            let job = ReadJob {
                group: group.clone(),
                limits,
                from,
                limit: limits.messages_max,
                answer: ReadAnswer::Join { conn: id, req_id: req_id.cloned(), since },
            };
            if tap.history_job(HistoryJob::Read(Box::new(job))).is_err() {
                self.log_limiter.warn("history_queue", || {
                    "the cluster's history queue is full: a recovering join answers \
                     recovered=false"
                        .to_owned()
                });
                let read = Read { position: None, outcome: Err(Unrecoverable::Unavailable) };
                self.recovered(id, group, req_id.cloned(), since, read);
            }
            return;
        }
        let already = self.router.is_member(slot, &group);
        let from = match since {
            Some(p) if !already => ReadFrom::Since(p),
            _ => ReadFrom::Last(0),
        };
        let history = self.node.history.clone();
        let mut joined = None;
        let mut read = history.read(&group, from, usize::MAX, self.now, &mut |_| {
            // While the group's order is held: from here on every message of the group
            // reaches this shard, after any still in its inbox.
            joined = Some(self.join_slot(slot, &group));
        });
        if let Some(Applied::Refused(reason)) = joined {
            self.counters.commands_rejected += 1;
            self.send_control(slot, command::error(req_id, Some("add_group"), &reason));
            return;
        }
        if already && since.is_some() {
            read.outcome = Err(Unrecoverable::AlreadyMember);
        }
        if let Some(conn) = self.conns.get_mut(slot as usize) {
            conn.envelope = true;
        }
        self.send_control(slot, command::joined(req_id, &group, &read, since.is_some()));
        let (Some(_), Some(top), Ok((msgs, _))) = (since, read.position, &read.outcome) else {
            return;
        };
        self.seams.add(id, group.clone(), top.offset);
        if msgs.is_empty() {
            return;
        }
        let epoch = top.epoch;
        let replay = msgs.iter().map(|m| (Position { epoch, offset: m.offset }, &m.message));
        self.queue_replay(slot, &group, replay);
    }

    /// The history read of an enveloped join on a clustered node came back (or could not be
    /// made: `Unavailable`): end the member's hold, reply, then send the replay and the held
    /// live messages above it, and keep skipping live ones at or below the read's newest
    /// (they may still be on their way from the bus).
    fn recovered(
        &mut self,
        id: ConnId,
        group: GroupId,
        req_id: Option<command::RequestId>,
        since: Option<Position>,
        read: Read,
    ) {
        let Some(slot) = self.local_slot(id) else {
            self.holds.forget(id, Some(&group));
            return;
        };
        let Some(resolved) = self.holds.resolve(id, &group, read.clone()) else {
            // No hold: the connection was already a member (it has been receiving the group
            // live), or it left the group meanwhile.
            if self.router.is_member(slot, &group) {
                let mut read = read;
                if since.is_some() {
                    read.outcome = Err(Unrecoverable::AlreadyMember);
                }
                self.send_control(
                    slot,
                    command::joined(req_id.as_ref(), &group, &read, since.is_some()),
                );
            }
            return;
        };
        let Resolved { position, outcome, live } = resolved;
        let reply = Read {
            position,
            outcome: outcome.map(|msgs| (if since.is_some() { msgs } else { Vec::new() }, false)),
        };
        self.send_control(slot, command::joined(req_id.as_ref(), &group, &reply, since.is_some()));
        let replay = match reply.outcome {
            Ok((msgs, _)) => {
                self.counters.recoveries += u64::from(since.is_some());
                msgs
            }
            Err(_) => {
                self.counters.recoveries_failed += u64::from(since.is_some());
                Vec::new()
            }
        };
        if let Some(top) = position {
            self.seams.add(id, group.clone(), top.offset);
        }
        if replay.is_empty() && live.is_empty() {
            return;
        }
        let epoch = position.map(|p| p.epoch);
        let replayed = replay
            .iter()
            .filter_map(|m| Some((Position { epoch: epoch?, offset: m.offset }, &m.message)));
        let held = live.iter().map(|(p, m)| (*p, m));
        self.queue_replay(slot, &group, replayed.chain(held));
    }

    /// Queue messages for one connection behind its join reply, each enveloped with its
    /// position in `group` (encoded here, once per message: recovery is rare, publishes are
    /// not), and start moving them into the outbox as writes complete.
    fn queue_replay<'m>(
        &mut self,
        slot: Slot,
        group: &GroupId,
        msgs: impl Iterator<Item = (Position, &'m Message)>,
    ) {
        let max = self.config.outbox_bytes_max;
        let Core { conns, dirty, .. } = self;
        let Some(conn) = conns.get_mut(slot as usize) else { return };
        let ext = conn.ext.get_or_insert_with(Default::default);
        ext.backlog.extend(msgs.map(|(p, m)| {
            let at = [(group.clone(), p)];
            (SharedFrame::new(crate::history::envelope::frame(m, &at)), false)
        }));
        conn.replaying = true;
        conn.refill(max);
        mark_dirty(conn, slot as usize, dirty);
    }

    /// Queue a frame of ours (a reply, the welcome) for one connection, within its budget but
    /// not counted as a delivery.
    fn send_control(&mut self, slot: Slot, text: String) {
        let frame = SharedFrame::new(Message::text(text).encode());
        let Core { conns, dirty, config, counters, log_limiter, .. } = self;
        if let Some(conn) = conns.get_mut(slot as usize).filter(|c| c.phase == Phase::Open) {
            if conn.outbox.push(frame, config.outbox_bytes_max) == SendStatus::OverBudget {
                over_budget(conn, config, counters, log_limiter);
            }
            mark_dirty(conn, slot as usize, dirty);
        }
    }

    /// Apply an operation: now if the connection (or group) is ours, else forward it to the
    /// owning shard (`None`). Dissolve applies here and is forwarded to the group's other
    /// shards.
    fn op(&mut self, op: Op) -> Option<Applied> {
        if let Op::Dissolve(g) = &op {
            for shard in self.node.groups.shards(g).iter() {
                if shard != self.id {
                    let msg = ShardMsg::Op(Op::Dissolve(g.clone()), None);
                    if self.node.links[shard].send(msg).is_err() {
                        self.counters.mesh_dropped += 1;
                    }
                }
            }
            self.apply_op(op);
            return Some(Applied::Done);
        }
        let Some(target) = op.conn() else { unreachable!("dissolve is handled above") };
        if target.node() == self.node_id && target.shard() == self.id {
            return match self.apply_op(op) {
                Answer::Applied(a) => Some(a),
                _ => Some(Applied::Done),
            };
        }
        if target.node() == self.node_id {
            if let Some(link) = self.node.links.get(target.shard()) {
                if link.send(ShardMsg::Op(op, None)).is_err() {
                    self.counters.mesh_dropped += 1;
                    self.log_limiter.warn("mesh", || {
                        format!(
                            "shard {}'s inbox is full: operation on {target} lost",
                            target.shard()
                        )
                    });
                }
            }
        }
        None
    }

    pub(crate) fn apply(&mut self, msg: ShardMsg) {
        self.counters.mesh_received += 1;
        match msg {
            ShardMsg::Publish(batch, reply) => {
                let reports: Vec<PublishReport> =
                    batch.iter().map(|o| self.publish_local(o)).collect();
                if let Some(r) = reply {
                    r.send(Answer::Published(reports));
                }
            }
            ShardMsg::Op(op, reply) => {
                let answer = self.apply_op(op);
                if let Some(r) = reply {
                    r.send(answer);
                }
            }
            ShardMsg::Query(q, reply) => self.answer(q, reply),
            ShardMsg::Control(conn, text) => {
                if let Some(slot) = self.local_slot(conn) {
                    self.send_control(slot, text);
                }
            }
            ShardMsg::Recovered(r) => {
                let super::mesh::Recovery { conn, group, req_id, since, read } = *r;
                self.recovered(conn, group, req_id, since, read)
            }
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn apply_op(&mut self, op: Op) -> Answer {
        if let Op::Dissolve(g) = &op {
            let removed = self.router.dissolve(g);
            if !self.seams.is_empty() {
                self.seams.forget_group(g);
            }
            if !self.holds.is_empty() {
                self.holds.forget_group(g);
            }
            if !removed.is_empty() {
                self.node.group_remove(g, self.id);
            }
            return Answer::Dissolved(removed.len() as u64);
        }
        let Some(id) = op.conn() else { unreachable!("dissolve is handled above") };
        let Some(slot) = self.local_slot(id) else {
            return Answer::Applied(Applied::NoSuchClient);
        };
        Answer::Applied(match op {
            Op::Join(_, g) => self.join_slot(slot, &g),
            Op::Leave(_, g) => match self.router.leave(slot, &g) {
                Left::NotMember => Applied::Unchanged,
                Left::Removed { last } => {
                    if last {
                        self.node.group_remove(&g, self.id);
                    }
                    self.drop_seams(id, Some(&g));
                    Applied::Done
                }
            },
            Op::BindUid(_, uid) => {
                if self.router.uid_of(slot) == Some(&uid) {
                    Applied::Unchanged
                } else {
                    let Bound { first, previous } = self.router.bind_uid(slot, &uid);
                    if first {
                        self.node.uid_add(&uid, self.id);
                    }
                    if let Some((prev, true)) = previous {
                        self.node.uid_remove(&prev, self.id);
                    }
                    Applied::Done
                }
            }
            Op::UnbindUid(_) => match self.router.unbind_uid(slot) {
                None => Applied::Unchanged,
                Some((uid, emptied)) => {
                    if emptied {
                        self.node.uid_remove(&uid, self.id);
                    }
                    Applied::Done
                }
            },
            Op::Close(_, code, reason) => {
                self.counters.closes_by_server += 1;
                self.close_conn(id, code, &reason);
                Applied::Done
            }
            Op::SetSession(_, session, merge) => self.set_session(slot, session, merge),
            Op::Dissolve(_) => unreachable!("handled above"),
        })
    }

    fn join_slot(&mut self, slot: Slot, g: &GroupId) -> Applied {
        let max = self.config.permissions.groups_per_connection_max;
        match self.router.join(slot, g, max) {
            Ok(Joined::Already) => Applied::Unchanged,
            Ok(Joined::Added { first }) => {
                if first {
                    self.node.group_add(g, self.id);
                }
                Applied::Done
            }
            Err(e) => Applied::Refused(e.to_string()),
        }
    }

    fn set_session(&mut self, slot: Slot, session: Session, merge: bool) -> Applied {
        let max = self.config.session_bytes_max;
        let Some(conn) = self.conns.get_mut(slot as usize) else { return Applied::NoSuchClient };
        let mut next = if merge {
            conn.ext.as_ref().and_then(|e| e.session.clone()).unwrap_or_default()
        } else {
            Session::new()
        };
        for (k, v) in session {
            if v.is_null() && merge {
                next.remove(&k);
            } else {
                next.insert(k, v);
            }
        }
        let size = serde_json::to_string(&next).map(|s| s.len()).unwrap_or(usize::MAX);
        if size > max {
            return Applied::Refused(format!("session is {size} bytes, over the limit of {max}"));
        }
        let ext = conn.ext.get_or_insert_with(Default::default);
        ext.session = (!next.is_empty()).then_some(next);
        conn.trim_ext();
        Applied::Done
    }

    fn answer(&mut self, q: Query, reply: Reply) {
        let answer = match q {
            Query::Client(id) => match self.local_slot(id) {
                None => Answer::Client(ClientInfo::default()),
                Some(slot) => {
                    let conn = &self.conns[slot as usize];
                    Answer::Client(ClientInfo {
                        online: true,
                        uid: self.router.uid_of(slot).map(|u| u.to_string()),
                        groups: self.router.groups_of(slot).iter().map(|g| g.to_string()).collect(),
                        session: conn
                            .ext
                            .as_ref()
                            .and_then(|e| e.session.clone())
                            .unwrap_or_default(),
                    })
                }
            },
            Query::Group(g) => {
                let mut clients = Vec::new();
                let mut uids: Vec<Uid> = Vec::new();
                for &slot in self.router.members(&g) {
                    if let Some(conn) = self.conns.get(slot as usize) {
                        clients.push(conn.id);
                    }
                    if let Some(u) = self.router.uid_of(slot) {
                        uids.push(u.clone());
                    }
                }
                Answer::Group { clients, uids }
            }
            Query::Uid(u) => Answer::Uid(
                self.router
                    .uid_slots(&u)
                    .iter()
                    .filter_map(|&s| self.conns.get(s as usize).map(|c| c.id))
                    .collect(),
            ),
            Query::Stats => {
                let c = self.router.counts();
                Answer::Stats(ShardStats {
                    shard: self.id,
                    connections: self.counters.connections_open,
                    groups: c.groups as u64,
                    memberships: c.memberships as u64,
                    uids: c.uids as u64,
                })
            }
        };
        reply.send(answer);
    }

    fn close_conn(&mut self, id: ConnId, code: u16, reason: &str) {
        let max = self.config.message_bytes_max;
        let slot = id.slot() as usize;
        if let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) {
            conn.begin_close(CloseCode::from(code), reason, false, max);
            mark_dirty(conn, slot, &mut self.dirty);
        }
    }

    /// One command from a client in [`OnMessage::Commands`] mode.
    fn on_command(&mut self, id: ConnId, msg: Message) {
        let slot = id.slot();
        self.counters.commands_received += 1;
        let (rate, burst, after) = (
            self.config.commands_per_sec,
            self.config.commands_burst,
            self.config.commands_flood_close_after,
        );
        let now = self.now;
        let Some(conn) = self.conns.get_mut(slot as usize).filter(|c| c.id == id) else { return };
        if rate > 0 {
            let ext = conn.ext.get_or_insert_with(Default::default);
            let limiter = ext.limiter.get_or_insert_with(|| command::RateLimiter::new(now, burst));
            match limiter.check(now, rate, burst, after) {
                RateDecision::Allow => {}
                RateDecision::Refuse { notify } => {
                    self.counters.commands_rate_limited += 1;
                    if notify {
                        self.send_control(
                            slot,
                            command::error(None, None, "rate limited: command dropped"),
                        );
                    }
                    return;
                }
                RateDecision::Close => {
                    self.counters.commands_rate_limited += 1;
                    self.counters.command_flood_closes += 1;
                    let max = self.config.message_bytes_max;
                    self.log_limiter.warn("flood", || {
                        let peer = conn.peer();
                        format!("closing {id} ({peer}) with 1008: command flood over {rate}/s")
                    });
                    conn.begin_close(CloseCode::Policy, "command rate exceeded", true, max);
                    mark_dirty(conn, slot as usize, &mut self.dirty);
                    return;
                }
            }
        }
        let Message::Text(text) = msg else {
            self.counters.commands_rejected += 1;
            self.send_control(slot, command::error(None, None, "commands are JSON text frames"));
            return;
        };
        let limits = ParseLimits {
            group_id_bytes_max: self.config.permissions.group_id_bytes_max,
            targets_max: COMMAND_TARGETS_MAX,
        };
        let Request { id: req_id, cmd } = match command::parse(&text, limits) {
            Ok(r) => r,
            Err(rej) => {
                self.counters.commands_rejected += 1;
                let frame = command::error(rej.id.as_ref(), rej.cmd.as_deref(), &rej.reason);
                self.send_control(slot, frame);
                return;
            }
        };
        let name = cmd.name();
        let router = &self.router;
        let token = self.conns[slot as usize].ext.as_ref().and_then(|e| e.token.as_deref());
        let grants: &dyn command::Grants = match token {
            Some(t) => t,
            None => &command::NoGrants,
        };
        let allowed = command::check(
            &self.config.permissions,
            &self.join_matcher,
            &cmd,
            |g| router.is_member(slot, g),
            router.groups_of(slot).len(),
            grants,
        );
        if let Err(denied) = allowed {
            self.counters.commands_rejected += 1;
            self.send_control(slot, command::error(req_id.as_ref(), Some(name), &denied.0));
            return;
        }
        let parse_ids = |ids: &[String]| -> Result<Vec<ConnId>, String> {
            ids.iter()
                .map(|s| s.parse::<ConnId>().map_err(|_| format!("bad client id {s:?}")))
                .collect()
        };
        let mut positions = Vec::new();
        let mut answered_later = false;
        let outcome: Result<(), String> = match cmd {
            Command::Ping => {
                self.send_control(slot, command::pong(req_id.as_ref()));
                return;
            }
            Command::AddGroupEnveloped { group, since } => {
                self.join_enveloped(slot, id, req_id.as_ref(), group, since);
                return;
            }
            Command::History { group, since, limit } => {
                let from = since.map_or(ReadFrom::Last(limit), ReadFrom::Since);
                if let (true, Some(tap), Some(limits)) =
                    (self.node.history_on, &self.node.tap, self.node.history.limits_for(&group))
                {
                    // A clustered node: the history is in Redis; the answer comes back
                    // through this shard's inbox.
                    let job = ReadJob {
                        group,
                        limits,
                        from,
                        limit,
                        answer: ReadAnswer::Command {
                            conn: id,
                            req_id: req_id.clone(),
                            since_given: since.is_some(),
                            bytes_max: (self.config.outbox_bytes_max / 2).max(4096),
                        },
                    };
                    if tap.history_job(HistoryJob::Read(Box::new(job))).is_err() {
                        self.counters.commands_rejected += 1;
                        let why = "history store busy (the cluster's history queue is full); retry";
                        self.send_control(slot, command::error(req_id.as_ref(), Some(name), why));
                    }
                    return;
                }
                let read = self.node.history.read(&group, from, limit, self.now, &mut |_| {});
                let bytes_max = (self.config.outbox_bytes_max / 2).max(4096);
                let text =
                    command::history(req_id.as_ref(), &group, &read, since.is_some(), bytes_max);
                self.send_control(slot, text);
                return;
            }
            Command::AddGroup { group } => match self.join_slot(slot, &group) {
                Applied::Refused(r) => Err(r),
                _ => Ok(()),
            },
            Command::LeaveGroup { group } => {
                if let Left::Removed { last: true } = self.router.leave(slot, &group) {
                    self.node.group_remove(&group, self.id);
                }
                self.drop_seams(id, Some(&group));
                Ok(())
            }
            Command::SendToGroup { groups, message, exclude } => {
                parse_ids(&exclude).and_then(|ex| {
                    let p = Publish {
                        to: To::Groups(groups),
                        exclude: ex,
                        message: Message::text(message),
                    };
                    let (report, history) = self.publish_from(p, Some((id, req_id.clone(), name)));
                    positions = report.positions;
                    match history {
                        HistoryHandOff::None => Ok(()),
                        // The cluster task answers once Redis gave the positions.
                        HistoryHandOff::Queued => {
                            answered_later = true;
                            Ok(())
                        }
                        HistoryHandOff::Refused(why) => Err(why),
                    }
                })
            }
            Command::SendToAll { message, exclude } => parse_ids(&exclude).map(|ex| {
                let p = Publish { to: To::All, exclude: ex, message: Message::text(message) };
                self.publish(p);
            }),
            Command::SendToClient { clients, message } => parse_ids(&clients).map(|to| {
                self.publish(Publish::new(To::Clients(to), message));
            }),
        };
        match outcome {
            Ok(()) if answered_later => {}
            Ok(()) => {
                if let Some(rid) = req_id {
                    // No `queued` in the reply: this shard knows only its own count; other
                    // shards queue asynchronously.
                    let mut text = command::ok(&rid, name, None);
                    if !positions.is_empty() {
                        text = command::with_positions(text, &positions);
                    }
                    self.send_control(slot, text);
                }
            }
            Err(reason) => {
                self.counters.commands_rejected += 1;
                self.send_control(slot, command::error(req_id.as_ref(), Some(name), &reason));
            }
        }
    }

    pub(crate) fn begin_shutdown(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        let deadline = self.now + self.config.shutdown_timeout;
        self.shutting_down = Some(deadline);
        tracing::info!(
            shard = self.id,
            open = self.conns.len(),
            "shutting down: closing connections with 1001"
        );
        let max = self.config.message_bytes_max;
        let Core { conns, dirty, .. } = self;
        for (slot, conn) in conns.iter_mut() {
            conn.begin_close(CloseCode::Away, "server shutting down", false, max);
            mark_dirty(conn, slot, dirty);
        }
    }

    /// A handshake finished: the connection joins the shard.
    pub(crate) fn insert(&mut self, stream: TcpStream, upgraded: super::Upgraded) {
        let super::Upgraded { peer, path, leftover, admitted, tls, response } = upgraded;
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if self.generations.len() <= slot {
            self.generations.resize(slot + 1, 0);
        }
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        let id = ConnId::new(self.node_id, self.id, slot as Slot, self.generations[slot]);
        let conn = entry.insert(Conn::new(id, stream, self.tick, tls));
        // The 101 is the connection's first frame: from the moment it is queued the
        // connection is registered, so a client that read its 101 misses nothing published
        // after it (the handshake task did not write it, see `shard::handshake`).
        let _ = conn.outbox.push(SharedFrame::new(Bytes::from(response)), usize::MAX);
        mark_dirty(conn, slot, &mut self.dirty);
        self.counters.connections_open += 1;
        let super::Admitted { mut grant, ip } = admitted;
        // The token's uid is bound before anything else sees the connection (callbacks, the
        // welcome frame): a client never acts unbound.
        if let Some(uid) = grant.as_mut().and_then(|g| g.uid.take()) {
            let Bound { first, .. } = self.router.bind_uid(slot as Slot, &uid);
            if first {
                self.node.uid_add(&uid, self.id);
            }
        }
        if grant.is_some() {
            self.counters.connections_authenticated += 1;
        }
        if grant.is_some() || ip.is_some() {
            let ext = self.conns[slot].ext.get_or_insert_with(Default::default);
            ext.token = grant;
            ext.ip = ip;
        }
        if self.welcome {
            let text = command::welcome(&id.client_id(), self.id, id.connection_number());
            self.send_control(slot as Slot, text);
        }
        if let Some(cb) = self.callbacks.on_connect.clone() {
            cb(&mut Ctx { core: self }, id, &ConnInfo { peer, path });
        }
        if self.shutting_down.is_some() {
            self.close_conn(id, 1001, "server shutting down");
        }
        if !leftover.is_empty() {
            // Plaintext (a `wss://` upgrade's leftover is already decrypted).
            self.on_plaintext(id, slot, &leftover);
        }
        if let Some(conn) = self.get_mut(id) {
            if conn.phase != Phase::Dead {
                self.to_read.push((id, Vec::with_capacity(IDLE_READ_BYTES)));
            }
        }
        self.finish_if_done(slot);
    }

    pub(crate) fn on_read(&mut self, id: ConnId, res: io::Result<usize>, buf: Vec<u8>) {
        let slot = id.slot() as usize;
        let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) else { return };
        conn.reading = false;
        let n = match res {
            Ok(n) if n > 0 => n,
            _ => {
                if conn.phase == Phase::Open {
                    self.counters.connections_aborted += 1;
                }
                conn.kill();
                self.finish_if_done(slot);
                return;
            }
        };
        conn.last_rx = self.tick;
        self.counters.bytes_received += n as u64;
        // Read big next time if this read filled the buffer; otherwise go back to a small one.
        let full = n == buf.capacity();
        conn.big_read = full;
        let tls_outcome = match conn.ext.as_mut().and_then(|e| e.tls.as_mut()) {
            None => None,
            Some(_) if conn.phase == Phase::Dead || conn.failed => Some(Ok(Default::default())),
            Some(tls) => {
                self.tls_plain.clear();
                Some(tls.session.handle_read(&buf[..n], &mut self.tls_plain))
            }
        };
        match tls_outcome {
            None => self.on_plaintext(id, slot, &buf[..n]),
            Some(outcome) => {
                // What was decrypted before an error or close_notify still counts.
                let plain = std::mem::take(&mut self.tls_plain);
                self.on_plaintext(id, slot, &plain);
                self.tls_plain = plain;
                self.after_tls_read(id, slot, outcome);
            }
        }
        let next = self.next_read_buffer(buf, full);
        if let Some(conn) = self.get_mut(id) {
            if conn.phase != Phase::Dead {
                self.to_read.push((id, next));
            }
        }
        self.finish_if_done(slot);
    }

    /// Bytes the client sent (decrypted for `wss://`): WebSocket frames into the codec, then
    /// messages to the application or the command protocol.
    fn on_plaintext(&mut self, id: ConnId, slot: usize, input: &[u8]) {
        if input.is_empty() {
            return;
        }
        let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) else { return };
        let mut out = Vec::new();
        let mut failure = None;
        if conn.phase != Phase::Dead && !conn.failed {
            let events = &mut self.events;
            let max = self.config.message_bytes_max;
            if let Err(f) = conn.codec.handle_read(input, max, &mut out, |e| events.push(e)) {
                failure = Some(f);
            }
        }
        if !out.is_empty() {
            let frame = SharedFrame::new(Bytes::from(out));
            // Pongs count against the budget (a client pinging without reading must not grow
            // memory); a close reply never does: the handshake must complete.
            if conn.phase == Phase::Open && conn.codec.can_write() {
                let Core { dirty, config, counters, log_limiter, .. } = self;
                if conn.outbox.push(frame, config.outbox_bytes_max) == SendStatus::OverBudget {
                    over_budget(conn, config, counters, log_limiter);
                }
                mark_dirty(conn, slot, dirty);
            } else {
                conn.outbox.push_unbounded(frame);
                mark_dirty(conn, slot, &mut self.dirty);
            }
        }
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            match event {
                Inbound::Message(msg) => {
                    self.counters.messages_received += 1;
                    if let Some(cb) = self.callbacks.on_message.clone() {
                        cb(&mut Ctx { core: self }, id, msg);
                    } else if self.config.on_message == OnMessage::Commands {
                        self.on_command(id, msg);
                    }
                }
                Inbound::Closed => {
                    if let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) {
                        if conn.phase == Phase::Open {
                            self.counters.closes_by_peer += 1;
                            conn.phase = Phase::Closing;
                            conn.deadline = None;
                        }
                        mark_dirty(conn, slot, &mut self.dirty);
                    }
                }
            }
        }
        self.events = events;
        if let Some(f) = failure {
            self.counters.protocol_errors += 1;
            let max = self.config.message_bytes_max;
            if let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) {
                tracing::debug!(conn = %id, peer = %conn.peer(), code = u16::from(f.code), reason = f.reason, "failing connection");
                // Keep what was queued before the violation (e.g. the echo of a valid message
                // that arrived in the same read): it precedes our close frame.
                conn.begin_close(f.code, f.reason, false, max);
                conn.failed = true;
                mark_dirty(conn, slot, &mut self.dirty);
            }
        }
    }

    /// After a `wss://` read: a TLS error fails the session (its alert is flushed, then FIN);
    /// the peer's close_notify ends the connection like an EOF; records the session owes the
    /// peer (a key update) are written.
    fn after_tls_read(
        &mut self,
        id: ConnId,
        slot: usize,
        outcome: Result<crate::tls::ReadOutcome, rustls::Error>,
    ) {
        let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) else { return };
        let Some(tls) = conn.ext.as_mut().and_then(|e| e.tls.as_mut()) else { return };
        match outcome {
            Ok(o) if o.peer_closed => {
                if conn.phase == Phase::Open {
                    self.counters.connections_aborted += 1;
                }
                conn.kill();
            }
            Ok(_) => {
                if tls.session.wants_write() {
                    mark_dirty(conn, slot, &mut self.dirty);
                }
            }
            Err(e) => {
                self.counters.tls_errors += 1;
                tls.broken = true;
                tracing::debug!(conn = %id, peer = %conn.peer(), "TLS error: {e}");
                conn.failed = true;
                conn.outbox.discard_queued();
                if conn.phase == Phase::Open {
                    conn.phase = Phase::Closing;
                    conn.deadline = None;
                }
                mark_dirty(conn, slot, &mut self.dirty);
            }
        }
    }

    fn next_read_buffer(&mut self, mut buf: Vec<u8>, big: bool) -> Vec<u8> {
        buf.clear();
        let size = self.config.read_buffer_bytes.max(IDLE_READ_BYTES);
        match (big, buf.capacity() >= size) {
            (true, true) | (false, false) => buf,
            (true, false) => self.read_pool.pop().unwrap_or_else(|| Vec::with_capacity(size)),
            (false, true) => {
                if self.read_pool.len() < READ_POOL_MAX {
                    self.read_pool.push(buf);
                }
                Vec::with_capacity(IDLE_READ_BYTES)
            }
        }
    }

    pub(crate) fn on_write(
        &mut self,
        id: ConnId,
        res: io::Result<usize>,
        mut batch: Vec<SharedFrame>,
    ) {
        let slot = id.slot() as usize;
        if let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) {
            conn.writing = false;
            match res {
                Ok(n) => {
                    self.counters.bytes_written += n as u64;
                    conn.outbox.complete(&mut batch, n);
                    if n == 0 {
                        conn.kill();
                    }
                    if conn.replaying {
                        conn.refill(self.config.outbox_bytes_max);
                    }
                }
                Err(_) => {
                    conn.outbox.abandon(&mut batch);
                    if conn.phase == Phase::Open {
                        self.counters.connections_aborted += 1;
                    }
                    conn.kill();
                }
            }
            if conn.phase != Phase::Dead && !conn.outbox.is_empty() {
                mark_dirty(conn, slot, &mut self.dirty);
            }
            self.maybe_send_fin(slot);
        }
        batch.clear();
        self.batch_pool.push(batch);
        self.finish_if_done(slot);
    }

    /// `wss://`: encrypt the queued frames (one batch, as few TLS records as fit) together with
    /// any record the session owes (key update, alert; close_notify once a closing connection
    /// is flushed) into one ciphertext buffer for one write. `None`: nothing to write.
    ///
    /// The batch's frames stay in `TlsConn::in_flight`, counted against the outbox budget,
    /// until the write completes; the ciphertext is this connection's alone (TLS encrypts per
    /// connection), while the frames it came from are still the shared broadcast buffers.
    pub(crate) fn start_tls_write(
        &mut self,
        slot: usize,
    ) -> Option<(ConnId, std::rc::Rc<TcpStream>, Vec<u8>)> {
        let Core { conns, cipher_pool, counters, .. } = self;
        let conn = conns.get_mut(slot)?;
        let tls = conn.ext.as_mut().and_then(|e| e.tls.as_mut())?;
        debug_assert!(tls.in_flight.is_empty() && !conn.writing);
        let mut out = cipher_pool.pop().unwrap_or_default();
        if !conn.outbox.is_empty() && !tls.broken {
            conn.outbox.take_batch(&mut tls.in_flight);
            let mut parts: Vec<std::io::IoSlice<'_>> =
                tls.in_flight.iter().map(|f| std::io::IoSlice::new(f.as_slice())).collect();
            if tls.session.encrypt(&mut parts, &mut out).is_err() {
                // Only after a TLS error, which `after_tls_read` already handled.
                drop(parts);
                tls.broken = true;
                conn.outbox.abandon(&mut tls.in_flight);
                conn.outbox.discard_queued();
            }
        }
        if conn.phase == Phase::Closing && conn.outbox.is_empty() && !tls.broken {
            tls.session.send_close_notify();
        }
        tls.session.write_pending(&mut out);
        if out.is_empty() {
            conn.outbox.complete(&mut tls.in_flight, 0);
            cipher_pool.push(out);
            return None;
        }
        conn.writing = true;
        counters.writes += 1;
        Some((conn.id, conn.stream.clone(), out))
    }

    /// A `wss://` write completed (all of it, or failed).
    pub(crate) fn on_tls_write(&mut self, id: ConnId, res: io::Result<()>, mut buf: Vec<u8>) {
        let slot = id.slot() as usize;
        if let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) {
            conn.writing = false;
            if let Some(tls) = conn.ext.as_mut().and_then(|e| e.tls.as_mut()) {
                let ok = res.is_ok();
                if ok {
                    self.counters.bytes_written += buf.len() as u64;
                    let plain: usize = tls.in_flight.iter().map(SharedFrame::len).sum();
                    conn.outbox.complete(&mut tls.in_flight, plain);
                } else {
                    conn.outbox.abandon(&mut tls.in_flight);
                }
                if !ok {
                    if conn.phase == Phase::Open {
                        self.counters.connections_aborted += 1;
                    }
                    conn.kill();
                }
                let Some(tls) = conn.ext.as_ref().and_then(|e| e.tls.as_ref()) else { return };
                let owed = !conn.outbox.is_empty()
                    || tls.session.wants_write()
                    || (conn.phase == Phase::Closing
                        && !tls.broken
                        && !tls.session.close_notify_sent());
                if conn.phase != Phase::Dead && owed {
                    mark_dirty(conn, slot, &mut self.dirty);
                }
            }
            self.maybe_send_fin(slot);
        }
        buf.clear();
        if buf.capacity() <= CIPHER_BUFFER_KEEP_BYTES && self.cipher_pool.len() < CIPHER_POOL_MAX {
            self.cipher_pool.push(buf);
        }
        self.finish_if_done(slot);
    }

    /// A closing connection whose outbox is flushed sends FIN and waits for the peer's EOF
    /// (`wss://`: after its close_notify, or its alert, is written).
    pub(crate) fn maybe_send_fin(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.phase == Phase::Closing
                && !conn.writing
                && conn.outbox.is_empty()
                && !conn.fin_sent
                && conn.ext.as_ref().and_then(|e| e.tls.as_ref()).is_none_or(|t| {
                    !t.session.wants_write() && (t.broken || t.session.close_notify_sent())
                })
            {
                conn.fin_sent = true;
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    pub(crate) fn finish_if_done(&mut self, slot: usize) {
        if !self.conns.get(slot).is_some_and(Conn::is_finished) {
            return;
        }
        let conn = self.conns.remove(slot);
        self.drop_seams(conn.id, None);
        self.freed_since_trim += 1;
        let released = self.router.close(slot as Slot);
        for g in &released.emptied_groups {
            self.node.group_remove(g, self.id);
        }
        if let Some((uid, true)) = &released.uid {
            self.node.uid_remove(uid, self.id);
        }
        if let Some(key) = conn.ext.as_ref().and_then(|e| e.ip) {
            self.node.ips.close(key);
        }
        self.node.release_slot();
        self.counters.connections_open -= 1;
        if let Some(cb) = self.callbacks.on_close.clone() {
            cb(&mut Ctx { core: self }, conn.id);
        }
    }

    /// Pings, idle timeouts, closing deadlines, the shutdown deadline.
    pub(crate) fn housekeeping(&mut self) {
        let now = self.now;
        // Trim once a burst of closes is over (none freed since the last pass), or during a
        // long one at most every TRIM_INTERVAL_MIN.
        let burst_over = self.freed_since_trim == self.freed_at_last_pass;
        self.freed_at_last_pass = self.freed_since_trim;
        // A trim taken during a burst is followed by one more when the burst ends, so the
        // burst's tail (fewer than TRIM_AFTER_FREED_CONNECTIONS frees) is handed back too.
        let tail = self.trim_tail_due && burst_over && self.freed_since_trim > 0;
        if tail
            || self.freed_since_trim >= TRIM_AFTER_FREED_CONNECTIONS
                && (burst_over || now.duration_since(self.last_trim) >= TRIM_INTERVAL_MIN)
        {
            self.trim_tail_due = !burst_over;
            self.freed_at_last_pass = 0;
            self.freed_since_trim = 0;
            self.last_trim = now;
            self.shrink_to_fit();
            give_memory_back();
        }
        if self.id == 0 {
            // History and idempotency keys past their age (a slice of the store per pass).
            self.node.history.sweep(now);
        }
        self.housekeeping_passes += 1;
        let pinging = self.config.ping_interval.is_some();
        let ping_bucket = (self.housekeeping_passes % self.ping_buckets) as usize;
        let buckets = self.ping_buckets as usize;
        let idle_limit = self.config.ping_interval.map(|_| self.config.idle_timeout);
        let forced = self.shutting_down.is_some_and(|d| d <= now);
        let max = self.config.message_bytes_max;
        let (tick, close_timeout) = (self.tick, self.config.close_timeout);
        let (unix_now, grace) = (self.unix_now, self.node.auth.expiry_grace_secs);
        let Core { conns, dirty, config, counters, log_limiter, ping_frame, .. } = self;
        let mut finished = Vec::new();
        let mut outbox_bytes = 0;
        for (slot, conn) in conns.iter_mut() {
            outbox_bytes += conn.outbox.queued_bytes() as u64;
            let expired = || {
                let token = conn.ext.as_ref().and_then(|e| e.token.as_ref());
                token.is_some_and(|t| t.expired(unix_now, grace))
            };
            match conn.phase {
                Phase::Open if !forced && expired() => {
                    counters.token_expiry_closes += 1;
                    let code = CloseCode::from(crate::auth::CLOSE_TOKEN_EXPIRED);
                    conn.begin_close(code, "token expired", true, max);
                    mark_dirty(conn, slot, dirty);
                }
                Phase::Open if idle_limit.is_some_and(|l| tick.since(conn.last_rx) > l) => {
                    counters.idle_timeouts += 1;
                    conn.begin_close(CloseCode::Away, "idle timeout", true, max);
                    mark_dirty(conn, slot, dirty);
                }
                Phase::Open if pinging && slot % buckets == ping_bucket => {
                    if conn.outbox.push(ping_frame.clone(), config.outbox_bytes_max)
                        == SendStatus::OverBudget
                    {
                        over_budget(conn, config, counters, log_limiter);
                    }
                    mark_dirty(conn, slot, dirty);
                }
                Phase::Closing if forced => conn.kill(),
                Phase::Closing => match conn.deadline {
                    None => conn.deadline = Some(tick.plus(close_timeout)),
                    Some(d) if tick.reached(d) => conn.kill(),
                    Some(_) => {}
                },
                Phase::Open if forced => conn.kill(),
                _ => {}
            }
            if conn.is_finished() {
                finished.push(slot);
            }
        }
        counters.outbox_bytes = outbox_bytes;
        for slot in finished {
            self.finish_if_done(slot);
        }
        self.node.health[self.id]
            .publish_heartbeat(now.saturating_duration_since(self.node.started));
    }

    pub(crate) fn done(&self) -> bool {
        self.shutting_down.is_some() && self.conns.is_empty()
    }
}

/// The frames of one publish on this shard, each wrapped once and cloned per recipient: the
/// plain one, and the enveloped one (encoded once per publish node-wide; see `Outgoing`).
struct Frames<'o> {
    out: &'o Outgoing,
    plain: Option<SharedFrame>,
    enveloped: Option<SharedFrame>,
}

impl<'o> Frames<'o> {
    fn new(out: &'o Outgoing) -> Self {
        Frames { out, plain: None, enveloped: None }
    }

    fn get(&mut self, envelope: bool, counters: &mut Counters) -> SharedFrame {
        let out = self.out;
        if envelope {
            self.enveloped
                .get_or_insert_with(|| {
                    let (bytes, built) = out.enveloped();
                    if built {
                        counters.frames_encoded += 1;
                    }
                    SharedFrame::new(bytes)
                })
                .clone()
        } else {
            self.plain.get_or_insert_with(|| SharedFrame::new(out.frame.clone())).clone()
        }
    }

    /// Report the fan-out latency of the frames built here when their last copy on this
    /// shard is written (a publish some members get enveloped records one sample per form).
    fn arm(&self, sink: &Rc<dyn FrameDone>) {
        for f in [&self.plain, &self.enveloped].into_iter().flatten() {
            f.arm(self.out.accepted, sink.clone());
        }
    }
}

fn mark_dirty(conn: &mut Conn, slot: usize, dirty: &mut Vec<usize>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(slot);
    }
}

/// Queue one frame for one connection, applying the slow-consumer policy.
#[allow(clippy::too_many_arguments)]
fn deliver(
    conn: &mut Conn,
    slot: usize,
    frames: &mut Frames<'_>,
    config: &Config,
    dirty: &mut Vec<usize>,
    counters: &mut Counters,
    log_limiter: &mut LogLimiter,
    report: &mut PublishReport,
) {
    if conn.phase != Phase::Open {
        return;
    }
    let frame = frames.get(conn.envelope, counters);
    if conn.replaying {
        // Behind the replay, within the same budget as the outbox.
        let ext = conn.ext.get_or_insert_with(Default::default);
        let live = ext.backlog_live_bytes;
        if live > 0 && live + frame.len() > config.outbox_bytes_max {
            report.slow_consumers += 1;
            over_budget(conn, config, counters, log_limiter);
            mark_dirty(conn, slot, dirty);
        } else {
            ext.backlog_live_bytes += frame.len();
            ext.backlog.push_back((frame, true));
            counters.deliveries += 1;
            report.queued += 1;
        }
        return;
    }
    match conn.outbox.push(frame, config.outbox_bytes_max) {
        SendStatus::Queued => {
            counters.deliveries += 1;
            report.queued += 1;
            mark_dirty(conn, slot, dirty);
        }
        SendStatus::OverBudget => {
            report.slow_consumers += 1;
            over_budget(conn, config, counters, log_limiter);
            mark_dirty(conn, slot, dirty);
        }
    }
}

fn over_budget(
    conn: &mut Conn,
    config: &Config,
    counters: &mut Counters,
    log_limiter: &mut LogLimiter,
) {
    let (kind, action) = match config.slow_consumer {
        SlowConsumerPolicy::Drop => ("slow-drop", "skipping messages"),
        SlowConsumerPolicy::Disconnect => ("slow-close", "closing with 1008"),
    };
    log_limiter.warn(kind, || {
        format!(
            "slow consumer {} ({}): {} bytes queued, over outbox_bytes_max {}; {action}",
            conn.id,
            conn.peer(),
            conn.outbox.queued_bytes(),
            config.outbox_bytes_max
        )
    });
    match config.slow_consumer {
        SlowConsumerPolicy::Drop => counters.slow_consumer_drops += 1,
        SlowConsumerPolicy::Disconnect => {
            counters.slow_consumer_disconnects += 1;
            conn.begin_close(CloseCode::Policy, "slow consumer", true, config.message_bytes_max);
        }
    }
}

/// Warn at most once per second per kind, with a count of what was suppressed.
#[derive(Default)]
pub(crate) struct LogLimiter {
    last: std::collections::HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    pub(crate) fn warn(&mut self, kind: &'static str, msg: impl FnOnce() -> String) {
        let now = Instant::now();
        let entry = self.last.entry(kind).or_insert((now - Duration::from_secs(2), 0));
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            let suppressed = entry.1;
            *entry = (now, 0);
            tracing::warn!(suppressed, "{}", msg());
        } else {
            entry.1 += 1;
        }
    }
}
