//! The library's front door: a builder in the spirit of Workerman's `onConnect` / `onMessage` /
//! `onClose` / `Timer::add`, and the [`Handle`] to a running node.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::addressing::{
    Applied, ClientInfo, GroupInfo, Publish, PublishReport, RequestError, Session, Stats, To,
    UidInfo,
};
use crate::config::{Config, OnMessage};
use crate::history::{Claim, HistoryCounters, Read, ReadFrom};
use crate::ids::{ConnId, GroupId, NodeId, Uid};
use crate::metrics::{Counters, LatencySnapshot};
use crate::proto::Message;
use crate::shard::mesh::{Op, Outgoing, Query, ShardMsg};
use crate::shard::node::HistoryHandOff;
use crate::shard::reply::{Answer, Request};
use crate::shard::{self, Callbacks, ConnInfo, Ctx, Node, Pending};

/// Builds a node. `Server::builder().listen(..).on_message(..).start()`.
pub struct Builder {
    config: Config,
    callbacks: Callbacks,
}

/// Entry point of the library.
pub struct Server;

impl Server {
    /// A builder with [`Config::default`].
    pub fn builder() -> Builder {
        Builder { config: Config::default(), callbacks: Callbacks::default() }
    }
}

impl Builder {
    /// Start from a full configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Change the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Address to listen on (every shard shares it with SO_REUSEPORT).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Number of shards.
    pub fn shards(mut self, n: usize) -> Self {
        self.config.shards = n.max(1);
        self
    }

    /// Called when a connection has completed its upgrade (Workerman's `onConnect`).
    pub fn on_connect(
        mut self,
        f: impl Fn(&mut Ctx<'_>, ConnId, &ConnInfo) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.on_connect = Some(Arc::new(f));
        self
    }

    /// Called for each Text/Binary message a client sends (Workerman's `onMessage`). Replaces
    /// `Config::on_message`.
    pub fn on_message(
        mut self,
        f: impl Fn(&mut Ctx<'_>, ConnId, Message) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.on_message = Some(Arc::new(f));
        self
    }

    /// Called once when a connection is gone (Workerman's `onClose`).
    pub fn on_close(mut self, f: impl Fn(&mut Ctx<'_>, ConnId) + Send + Sync + 'static) -> Self {
        self.callbacks.on_close = Some(Arc::new(f));
        self
    }

    /// Run `f` every `interval` on shard 0 (Workerman's `Timer::add`); use
    /// [`Ctx::broadcast`] inside it to reach every connection of the node.
    pub fn timer(
        mut self,
        interval: Duration,
        f: impl Fn(&mut Ctx<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.timers.push((interval, Arc::new(f)));
        self
    }

    /// Bind, spawn the shards, and return once every shard is accepting.
    pub fn start(self) -> io::Result<Handle> {
        let Builder { mut config, mut callbacks } = self;
        if callbacks.on_message.is_none() && config.on_message == OnMessage::Relay {
            callbacks.on_message = Some(Arc::new(|ctx: &mut Ctx<'_>, _, msg| ctx.broadcast(msg)));
        }
        if let Some(every) = config.tick_interval {
            callbacks.timers.push((every, Arc::new(tick_server_time)));
        }
        let capacity = crate::limits::connection_capacity(config.shards);
        if config.connections_max > capacity {
            if config.connections_max != usize::MAX {
                tracing::warn!(
                    requested = config.connections_max,
                    capacity,
                    "connections_max lowered to what the open-file limit allows"
                );
            }
            config.connections_max = capacity;
        }
        let launched = shard::launch(config, callbacks)?;
        Ok(Handle {
            node: launched.node,
            threads: Arc::new(Mutex::new(launched.threads)),
            local_addr: launched.local_addr,
            tls_addr: launched.tls_addr,
        })
    }
}

/// Seed 000's timer: every connection receives the server time (seconds since the epoch).
fn tick_server_time(ctx: &mut Ctx<'_>) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ctx.broadcast(Message::text(secs.to_string()));
}

/// One shard's published state ([`Handle::shard_health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHealth {
    /// Listening, not shutting down, accepts not paused after an accept error.
    pub accepting: bool,
    /// Time since the shard's loop last ran housekeeping; `None` before the first pass.
    pub heartbeat_age: Option<Duration>,
}

/// A running node. Cheap to clone and share across threads (the control plane holds one);
/// dropping it does not stop the node (call [`Handle::shutdown`] then [`Handle::join`]).
///
/// Every method is non-blocking: requests go to the shards' bounded inboxes with `try_send`
/// (a full inbox is counted and answered [`RequestError::Busy`], never waited on) and answers
/// come back as a [`Pending`], which can be `.await`ed in any executor or waited for with
/// [`Pending::wait`] on a plain thread.
#[derive(Clone)]
pub struct Handle {
    node: Arc<Node>,
    threads: Arc<Mutex<Vec<JoinHandle<io::Result<()>>>>>,
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
}

/// Publishes one handle request may carry.
pub const BATCH_PUBLISHES_MAX: usize = 100_000;

impl Handle {
    /// The address the node listens on (with the real port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `wss://` is served: the main address when TLS is on the main listener, the
    /// `tls.listen` address when it has its own, `None` without TLS.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Read the TLS certificate and key files again (the daemon does this on `SIGHUP`). New
    /// handshakes use the new certificate; established connections are not touched. On error
    /// the certificate in service stays.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        let acceptor = self.node.tls.as_ref().ok_or(crate::tls::TlsError::NotEnabled)?;
        acceptor.store().reload()
    }

    /// The state shards and handles share (for the cluster task).
    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.node.links.len()
    }

    /// This node's id (part of every client id it issues).
    pub fn node_id(&self) -> NodeId {
        self.node.id
    }

    /// Send `msg` to every connection of the node. Fire and forget: see [`Handle::publish`]
    /// for the report.
    pub fn broadcast(&self, msg: impl Into<Message>) -> Result<(), RequestError> {
        self.send_batch(vec![Publish::new(To::All, msg)], false).map(|_| ())
    }

    /// Send `msg` to one connection, wherever it lives. Unknown ids reach nobody.
    pub fn send_to(&self, conn: ConnId, msg: impl Into<Message>) -> Result<(), RequestError> {
        self.send_batch(vec![Publish::new(To::Clients(vec![conn]), msg)], false).map(|_| ())
    }

    /// Publish one message; the answer says how many connections of this node it was queued
    /// to. The frame is encoded once, here, and every shard with recipients queues the same
    /// bytes.
    pub fn publish(&self, p: Publish) -> Pending<PublishReport> {
        match self.send_batch(vec![p], true) {
            Ok(pending) => pending.map(|mut v| v.pop().unwrap_or_default()),
            Err(e) => Pending::ready(Err(e)),
        }
    }

    /// Publish many messages in one request: one mesh event per shard for the whole batch,
    /// one report per publish, in order.
    pub fn publish_batch(&self, batch: Vec<Publish>) -> Pending<Vec<PublishReport>> {
        match self.send_batch(batch, true) {
            Ok(pending) => pending,
            Err(e) => Pending::ready(Err(e)),
        }
    }

    fn send_batch(
        &self,
        batch: Vec<Publish>,
        want_reply: bool,
    ) -> Result<Pending<Vec<PublishReport>>, RequestError> {
        let n = batch.len();
        self.node.handle_frames_encoded.fetch_add(n as u64, Ordering::Relaxed);
        let mut req = Request::new();
        let published = self.node.publish(batch, None, want_reply.then_some(&mut req), 0, None);
        let (outgoing, missed, tapped) = (published.batch, published.missed, published.tapped);
        if let (false, HistoryHandOff::Refused(why)) = (want_reply, &published.history) {
            return Err(RequestError::HistoryUnavailable(why.clone()));
        }
        if !tapped && self.node.handle_log_due() {
            tracing::warn!(
                "cluster outbound queue full: publish not sent to the other nodes (at most one \
                 such line per second; cluster.outbound_dropped counts them all)"
            );
        }
        self.gather(outgoing, missed, want_reply, req)
    }

    /// Publish one message and hand it to the cluster asking each receiving node for its
    /// report under `request` (`"ack": "nodes"`). `false` beside the local pending report:
    /// the cluster's outbound queue was full (counted), so it went to no other node.
    pub(crate) fn publish_with_request(
        &self,
        p: Publish,
        request: u64,
    ) -> (Pending<Vec<PublishReport>>, bool) {
        self.node.handle_frames_encoded.fetch_add(1, Ordering::Relaxed);
        let mut req = Request::new();
        let published = self.node.publish(vec![p], None, Some(&mut req), request, None);
        let (outgoing, missed) = (published.batch, published.missed);
        let sent = published.tapped && self.node.tap.is_some();
        let pending = match self.gather(outgoing, missed, true, req) {
            Ok(p) => p,
            Err(e) => Pending::ready(Err(e)),
        };
        (pending, sent)
    }

    /// Queue already encoded publishes to this node's shards (no cluster hand-off and no
    /// history: the cluster task uses this for publishes that came from other nodes).
    pub(crate) fn deliver(
        &self,
        outgoing: Arc<[Outgoing]>,
        want_reply: bool,
    ) -> Result<Pending<Vec<PublishReport>>, RequestError> {
        let mut req = Request::new();
        let missed = self.node.send_publish(&outgoing, None, None, want_reply.then_some(&mut req));
        self.gather(outgoing, missed, want_reply, req)
    }

    /// The shards' reports for `outgoing`, sent with `req` (`missed` shards were full).
    fn gather(
        &self,
        outgoing: Arc<[Outgoing]>,
        missed: usize,
        want_reply: bool,
        req: Request,
    ) -> Result<Pending<Vec<PublishReport>>, RequestError> {
        let n = outgoing.len();
        if missed > 0 {
            let dropped = self.node.handle_mesh_dropped.fetch_add(missed as u64, Ordering::Relaxed);
            if self.node.handle_log_due() {
                tracing::warn!(
                    missed,
                    dropped_total = dropped + missed as u64,
                    "publish: shard inbox full, message not delivered there (at most one such \
                     line per second; mesh_dropped counts them all)"
                );
            }
            if !want_reply {
                return Err(RequestError::Busy);
            }
        }
        Ok(req.pending(move |answers, busy| {
            let mut total = vec![PublishReport::default(); n];
            for (t, o) in total.iter_mut().zip(outgoing.iter()) {
                t.shards_missed = busy as u32;
                t.positions = o.positions.to_vec();
            }
            for a in answers {
                match a {
                    Answer::Published(reports) => {
                        for (t, r) in total.iter_mut().zip(reports) {
                            t.queued += r.queued;
                            t.slow_consumers += r.slow_consumers;
                        }
                    }
                    // Positions in a history kept in Redis (a clustered node): the members
                    // get these messages from the bus, on every node, in offset order.
                    Answer::Positions(Ok(at)) => {
                        for (i, positions) in at {
                            if let Some(t) = total.get_mut(i) {
                                t.positions.extend(positions);
                            }
                        }
                    }
                    Answer::Positions(Err(why)) => {
                        return Err(RequestError::HistoryUnavailable(why));
                    }
                    _ => {}
                }
            }
            Ok(total)
        }))
    }

    /// Send one operation to the shard that owns `conn`.
    fn op(&self, conn: ConnId, op: Op) -> Pending<Applied> {
        if conn.node() != self.node.id || conn.shard() >= self.node.links.len() {
            return Pending::ready(Ok(Applied::NoSuchClient));
        }
        let mut req = Request::new();
        let reply = req.reply();
        if let Err(ShardMsg::Op(_, Some(reply))) =
            self.node.links[conn.shard()].try_send(ShardMsg::Op(op, Some(reply)))
        {
            req.mark_busy(reply);
            self.node.handle_mesh_dropped.fetch_add(1, Ordering::Relaxed);
            return Pending::ready(Err(RequestError::Busy));
        }
        req.pending(|answers, _| match answers.into_iter().next() {
            Some(Answer::Applied(a)) => Ok(a),
            _ => Err(RequestError::Stopped),
        })
    }

    /// Add a connection to a group (GatewayWorker's `joinGroup`).
    pub fn join_group(&self, conn: ConnId, group: GroupId) -> Pending<Applied> {
        self.op(conn, Op::Join(conn, group))
    }

    /// Remove a connection from a group (`leaveGroup`).
    pub fn leave_group(&self, conn: ConnId, group: GroupId) -> Pending<Applied> {
        self.op(conn, Op::Leave(conn, group))
    }

    /// Bind a connection to a uid, replacing its previous binding (`bindUid`).
    pub fn bind_uid(&self, conn: ConnId, uid: Uid) -> Pending<Applied> {
        self.op(conn, Op::BindUid(conn, uid))
    }

    /// Unbind a connection from its uid (`unbindUid`).
    pub fn unbind_uid(&self, conn: ConnId) -> Pending<Applied> {
        self.op(conn, Op::UnbindUid(conn))
    }

    /// Close a connection with `code` and `reason` (`closeClient`).
    pub fn close(&self, conn: ConnId, code: u16, reason: &str) -> Pending<Applied> {
        self.op(conn, Op::Close(conn, code, reason.to_owned()))
    }

    /// Replace (`merge == false`, `setSession`) or merge into (`updateSession`; a `null`
    /// value deletes its key) a connection's session.
    pub fn set_session(&self, conn: ConnId, session: Session, merge: bool) -> Pending<Applied> {
        self.op(conn, Op::SetSession(conn, session, merge))
    }

    /// Send one query to `shards` and combine the answers.
    fn query<T: Send + 'static>(
        &self,
        shards: impl IntoIterator<Item = usize>,
        q: impl Fn() -> Query,
        finish: impl FnOnce(Vec<Answer>) -> T + Send + 'static,
    ) -> Pending<T> {
        let mut req = Request::new();
        for i in shards {
            let reply = req.reply();
            if let Err(ShardMsg::Query(_, reply)) =
                self.node.links[i].try_send(ShardMsg::Query(q(), reply))
            {
                req.mark_busy(reply);
            }
        }
        if req.busy() > 0 {
            self.node.handle_mesh_dropped.fetch_add(req.busy() as u64, Ordering::Relaxed);
        }
        req.pending(
            move |answers, busy| {
                if busy > 0 {
                    Err(RequestError::Busy)
                } else {
                    Ok(finish(answers))
                }
            },
        )
    }

    /// Dissolve a group: every member leaves it (`ungroup`). Answers the members removed.
    pub fn dissolve(&self, group: GroupId) -> Pending<u64> {
        let shards = self.node.groups.shards(&group);
        let mut req = Request::new();
        for i in shards.iter() {
            let reply = req.reply();
            let msg = ShardMsg::Op(Op::Dissolve(group.clone()), Some(reply));
            if let Err(ShardMsg::Op(_, Some(reply))) = self.node.links[i].try_send(msg) {
                req.mark_busy(reply);
            }
        }
        req.pending(|answers, busy| {
            if busy > 0 {
                return Err(RequestError::Busy);
            }
            Ok(answers.into_iter().map(|a| if let Answer::Dissolved(n) = a { n } else { 0 }).sum())
        })
    }

    /// One connection: online, uid, groups, session.
    pub fn client(&self, conn: ConnId) -> Pending<ClientInfo> {
        if conn.node() != self.node.id || conn.shard() >= self.node.links.len() {
            return Pending::ready(Ok(ClientInfo::default()));
        }
        self.query(
            [conn.shard()],
            || Query::Client(conn),
            |answers| match answers.into_iter().next() {
                Some(Answer::Client(c)) => c,
                _ => ClientInfo::default(),
            },
        )
    }

    /// A group's members on this node and the uids bound to them.
    pub fn group(&self, group: GroupId) -> Pending<GroupInfo> {
        let shards = self.node.groups.shards(&group);
        self.query(
            shards.iter(),
            || Query::Group(group.clone()),
            |answers| {
                let mut info = GroupInfo::default();
                let mut uids = std::collections::BTreeSet::new();
                for a in answers {
                    if let Answer::Group { clients, uids: u } = a {
                        info.count += clients.len() as u64;
                        info.clients.extend(clients.iter().map(|c| c.client_id()));
                        uids.extend(u.into_iter().map(|u| u.to_string()));
                    }
                }
                info.clients.sort_unstable();
                info.uids = uids.into_iter().collect();
                info
            },
        )
    }

    /// Every group with at least one member on this node (from the node's directory; no
    /// shard is asked).
    pub fn groups(&self) -> Vec<GroupId> {
        let mut v = self.node.groups.names();
        v.sort_unstable();
        v
    }

    /// A uid's connections on this node (`isUidOnline`, `getClientIdByUid`).
    pub fn uid(&self, uid: Uid) -> Pending<UidInfo> {
        let shards = self.node.uids.shards(&uid);
        self.query(
            shards.iter(),
            || Query::Uid(uid.clone()),
            |answers| {
                let mut info = UidInfo::default();
                for a in answers {
                    if let Answer::Uid(ids) = a {
                        info.clients.extend(ids.iter().map(|c| c.client_id()));
                    }
                }
                info.clients.sort_unstable();
                info.online = !info.clients.is_empty();
                info
            },
        )
    }

    /// Totals, per shard and for the node.
    pub fn stats(&self) -> Pending<Stats> {
        let node_id = self.node.id.to_string();
        let (groups, uids) = (self.node.groups.len() as u64, self.node.uids.len() as u64);
        self.query(
            0..self.shards(),
            || Query::Stats,
            move |answers| {
                let mut shards: Vec<_> = answers
                    .into_iter()
                    .filter_map(|a| if let Answer::Stats(s) = a { Some(s) } else { None })
                    .collect();
                shards.sort_by_key(|s| s.shard);
                Stats {
                    node_id,
                    connections: shards.iter().map(|s| s.connections).sum(),
                    groups,
                    uids,
                    shards,
                }
            },
        )
    }

    /// A group's history (no shard is asked: the history store answers), from the newest
    /// `limit` messages ([`ReadFrom::Last`]) or everything after a position
    /// ([`ReadFrom::Since`], at most `limit`). `position` is `None` for a group without
    /// history (no rule matches it).
    pub fn history(&self, group: &GroupId, from: ReadFrom, limit: usize) -> Read {
        self.node.history.read(group, from, limit, std::time::Instant::now(), &mut |_| {})
    }

    /// Whether any group keeps a history.
    pub fn history_enabled(&self) -> bool {
        self.node.history_on
    }

    /// Check an idempotency key and claim it when it is new (see [`Claim`]). A claimed key
    /// must be completed with [`Handle::idempotency_complete`] or released with
    /// [`Handle::idempotency_release`].
    pub fn idempotency_claim(&self, key: &str) -> Claim<bytes::Bytes> {
        self.node.history.idempotency_claim(key, std::time::Instant::now())
    }

    /// Remember `answer` for a claimed key for the idempotency window.
    pub fn idempotency_complete(&self, key: &str, answer: bytes::Bytes) {
        self.node.history.idempotency_complete(key, answer, std::time::Instant::now());
    }

    /// Forget a claimed key whose publish delivered nothing (a retry may deliver).
    pub fn idempotency_release(&self, key: &str) {
        self.node.history.idempotency_release(key);
    }

    /// Count a keyed publish answered as a duplicate by a shared store (Redis).
    pub(crate) fn count_idempotency_duplicate(&self) {
        self.node.history.count_duplicate();
    }

    /// History and idempotency counters.
    pub fn history_counters(&self) -> HistoryCounters {
        self.node.history.counters()
    }

    /// Counters summed over every shard.
    pub fn metrics(&self) -> Counters {
        let mut total = Counters::default();
        for c in &self.node.counters {
            total += c.load();
        }
        total.frames_encoded += self.node.handle_frames_encoded.load(Ordering::Relaxed);
        total.mesh_dropped += self.node.handle_mesh_dropped.load(Ordering::Relaxed);
        total
    }

    /// Per-shard counters.
    pub fn shard_metrics(&self) -> Vec<Counters> {
        self.node.counters.iter().map(|c| c.load()).collect()
    }

    /// Fan-out latency (publish accepted → last write completed), per shard. Atomic reads; no
    /// shard is asked.
    pub fn shard_fanout_latency(&self) -> Vec<LatencySnapshot> {
        self.node.fanout_latency.iter().map(|h| h.load()).collect()
    }

    /// Each shard's state as it last published it: accepting, and how long ago its loop last
    /// ran housekeeping (every 250 ms when healthy). Atomic reads; no shard is asked.
    pub fn shard_health(&self) -> Vec<ShardHealth> {
        let age_now = self.node.started.elapsed();
        self.node
            .health
            .iter()
            .map(|h| {
                let (accepting, at) = h.load();
                ShardHealth { accepting, heartbeat_age: at.map(|t| age_now.saturating_sub(t)) }
            })
            .collect()
    }

    /// Events waiting in each shard's inbox (bounded by `Config::inbox_events_max`).
    pub fn inbox_depths(&self) -> Vec<usize> {
        self.node.links.iter().map(|l| l.len()).collect()
    }

    /// Groups and uids with at least one member on the node (the node's directory; no shard
    /// is asked).
    pub fn directory_sizes(&self) -> (usize, usize) {
        (self.node.groups.len(), self.node.uids.len())
    }

    /// The node's connection limit after clamping to the open-file limit.
    pub fn connections_max(&self) -> usize {
        self.node.connections_max
    }

    /// Open connections on the node (an atomic read; no shard is asked).
    pub fn connections(&self) -> usize {
        self.node.open.load(Ordering::Relaxed)
    }

    /// Begin graceful shutdown: every shard stops accepting, sends close 1001 to its
    /// connections, flushes, and exits within `Config::shutdown_timeout`.
    pub fn shutdown(&self) {
        for link in &self.node.links {
            // A blocked inbox must not stop shutdown: retry until the shard takes it or exits.
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while link.send(ShardMsg::Shutdown).is_err() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Wait for every shard to exit; the first shard error, if any. Later calls (from clones)
    /// return at once.
    pub fn join(&self) -> io::Result<()> {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let mut result = Ok(());
        for t in threads {
            let r = t.join().unwrap_or_else(|_| Err(io::Error::other("shard thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}
