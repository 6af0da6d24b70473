//! Shards: the only code that touches io_uring, threads, CPUs and channels.
//!
//! A shard is one OS thread pinned to one CPU, running one tokio-uring runtime. It owns its
//! listener (SO_REUSEPORT: accepted sockets never migrate), its connections (a slab), and one
//! task: the event loop in [`run`]. Nothing it owns is shared; other threads reach it only
//! through its mesh inbox (`mesh`).
//!
//! One loop turn: apply completed operations (accepts, handshakes, reads, writes, the mesh
//! wake-up, timers) in batches, then start a vectored write for every connection that gained
//! frames and has none in flight, then return to the runtime, which submits every new
//! operation to the ring in one `io_uring_enter` when it parks.

pub(crate) mod conn;
pub(crate) mod mesh;

use std::future::{poll_fn, Future};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use futures_util::stream::{FuturesUnordered, StreamExt};
use slab::Slab;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::config::{Config, SlowConsumerPolicy};
use crate::fanout::{SendStatus, SharedFrame};
use crate::metrics::{Counters, SharedCounters};
use crate::proto::{self, handshake, CloseCode, Inbound, Message};
use crate::server::{Callbacks, ConnId, ConnInfo, Handle, Node};
use conn::{Conn, Phase};
use mesh::ShardMsg;

/// Read size for connections that are not sending: enough for a pong or a small command, so an
/// idle connection's pending read pins 64 bytes, not a page.
const IDLE_READ_BYTES: usize = 64;
/// Accepts kept in flight per shard.
const ACCEPTS_IN_FLIGHT: usize = 8;
/// Mesh events applied per wake-up before the loop lets I/O progress.
const MESH_BATCH: usize = 4096;
/// How often timeouts and pings are checked.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(250);
/// Pause after an accept error (EMFILE...) so a full descriptor table cannot spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Large read buffers kept for reuse.
const READ_POOL_MAX: usize = 64;

/// Bind every shard's listener up front (actionable errors before any thread starts), spawn
/// the shards and wait until each is accepting.
pub(crate) fn launch(config: Config, callbacks: Callbacks) -> io::Result<Handle> {
    let shards = config.shards.max(1);
    let first = bind_reuseport(config.listen).map_err(|e| {
        io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
    })?;
    let local_addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(bind_reuseport(local_addr)?);
    }
    let mut links = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (link, rx, efd) = mesh::link(config.mesh_capacity)?;
        links.push(link);
        inboxes.push((rx, efd));
    }
    let node = Arc::new(Node {
        links,
        counters: (0..shards).map(|_| SharedCounters::default()).collect(),
        open: Default::default(),
        connections_max: config.connections_max,
        handle_frames_encoded: Default::default(),
        handle_mesh_dropped: Default::default(),
    });
    let cpus = config.cpus.clone().unwrap_or_else(crate::config::available_cpus);
    let config = Arc::new(config);
    let callbacks = Arc::new(callbacks);
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<usize>>();
    let mut threads = Vec::with_capacity(shards);
    for (id, (listener, (inbox, efd))) in listeners.into_iter().zip(inboxes).enumerate() {
        let cpu = (config.pin && !cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        let (config, callbacks, node, ready) =
            (config.clone(), callbacks.clone(), node.clone(), ready_tx.clone());
        let thread =
            std::thread::Builder::new().name(format!("ringcast-shard-{id}")).spawn(move || {
                if let Some(cpu) = cpu {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                        tracing::warn!(shard = id, cpu, "could not pin shard to its CPU");
                    }
                }
                let mut builder = tokio_uring::builder();
                builder.entries(config.ring_entries);
                let rt = match tokio_uring::Runtime::new(&builder) {
                    Ok(rt) => rt,
                    Err(e) => {
                        let e = io::Error::new(
                            e.kind(),
                            format!(
                                "shard {id}: cannot create an io_uring ({e}); check that \
                                 /proc/sys/kernel/io_uring_disabled is 0 and that no seccomp \
                                 profile (containers) blocks io_uring_setup"
                            ),
                        );
                        let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                };
                let core = Core::new(id, config, node, callbacks);
                rt.block_on(run(core, listener, inbox, efd, cpu, ready))
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    let handle = Handle { node, threads, local_addr };
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                handle.shutdown();
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let err = handle.join().err();
                return Err(
                    err.unwrap_or_else(|| io::Error::other("a shard exited during start-up"))
                );
            }
        }
    }
    Ok(handle)
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Everything a shard owns that callbacks may touch through [`Ctx`].
pub(crate) struct Core {
    id: usize,
    config: Arc<Config>,
    node: Arc<Node>,
    callbacks: Arc<Callbacks>,
    conns: Slab<Conn>,
    /// Slots with frames to write and no write in flight.
    dirty: Vec<usize>,
    /// Connections whose next read must be started, with the buffer to read into.
    to_read: Vec<(ConnId, Vec<u8>)>,
    read_pool: Vec<Vec<u8>>,
    batch_pool: Vec<Vec<SharedFrame>>,
    events: Vec<Inbound>,
    counters: Counters,
    generation: u16,
    now: Instant,
    next_ping: Option<Instant>,
    ping_frame: SharedFrame,
    shutting_down: Option<Instant>,
    log_limiter: LogLimiter,
}

/// The application's view of its shard inside a callback.
pub struct Ctx<'a> {
    core: &'a mut Core,
}

impl Ctx<'_> {
    /// This shard's index (Workerman's worker id).
    pub fn shard(&self) -> usize {
        self.core.id
    }

    /// Send `msg` to every connection of the node: encoded once here, shared by every
    /// recipient on every shard.
    pub fn broadcast(&mut self, msg: impl Into<Message>) {
        let frame = msg.into().encode();
        self.core.counters.frames_encoded += 1;
        self.core.broadcast_frame(frame, true);
    }

    /// Send `msg` to one connection of the node, wherever it lives.
    pub fn send(&mut self, conn: ConnId, msg: impl Into<Message>) {
        let frame = msg.into().encode();
        self.core.send_frame(conn, frame);
    }

    /// Close one connection of the node with `code` and `reason`.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.core.close_conn(conn, code, reason);
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

impl Core {
    fn new(id: usize, config: Arc<Config>, node: Arc<Node>, callbacks: Arc<Callbacks>) -> Self {
        let now = Instant::now();
        Core {
            id,
            next_ping: config.ping_interval.map(|p| now + p),
            config,
            node,
            callbacks,
            conns: Slab::new(),
            dirty: Vec::new(),
            to_read: Vec::new(),
            read_pool: Vec::new(),
            batch_pool: Vec::new(),
            events: Vec::new(),
            counters: Counters::default(),
            generation: 0,
            now,
            ping_frame: SharedFrame::new(proto::frame::ping(b"ringcast")),
            shutting_down: None,
            log_limiter: LogLimiter::default(),
        }
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.slot()).filter(|c| c.id == id)
    }

    /// Queue `frame` for every open local connection and, when `to_peers`, for every other
    /// shard. Every queue holds a clone of the same `Bytes`.
    fn broadcast_frame(&mut self, frame: Bytes, to_peers: bool) {
        let shared = SharedFrame::new(frame.clone());
        let Core { conns, dirty, config, counters, log_limiter, .. } = self;
        for (slot, conn) in conns.iter_mut() {
            deliver(conn, slot, shared.clone(), config, dirty, counters, log_limiter);
        }
        if to_peers {
            for (i, link) in self.node.links.iter().enumerate() {
                if i != self.id && link.send(ShardMsg::Broadcast(frame.clone())).is_err() {
                    self.counters.mesh_dropped += 1;
                    self.log_limiter.warn("mesh", || {
                        format!("shard {i}'s inbox is full: broadcast not delivered there")
                    });
                }
            }
        }
    }

    fn send_frame(&mut self, id: ConnId, frame: Bytes) {
        if id.shard() != self.id {
            if let Some(link) = self.node.links.get(id.shard()) {
                if link.send(ShardMsg::SendTo(id, frame)).is_err() {
                    self.counters.mesh_dropped += 1;
                    self.log_limiter.warn("mesh", || {
                        format!("shard {}'s inbox is full: send to {id} not delivered", id.shard())
                    });
                }
            }
            return;
        }
        let Core { conns, dirty, config, counters, log_limiter, .. } = self;
        if let Some(conn) = conns.get_mut(id.slot()).filter(|c| c.id == id) {
            deliver(conn, id.slot(), frame.into(), config, dirty, counters, log_limiter);
        }
    }

    fn close_conn(&mut self, id: ConnId, code: u16, reason: &str) {
        if id.shard() != self.id {
            if let Some(link) = self.node.links.get(id.shard()) {
                if link.send(ShardMsg::Close(id, code, reason.to_owned())).is_err() {
                    self.counters.mesh_dropped += 1;
                }
            }
            return;
        }
        let (max, deadline) = (self.config.message_bytes_max, self.now + self.config.close_timeout);
        if let Some(conn) = self.conns.get_mut(id.slot()).filter(|c| c.id == id) {
            conn.begin_close(CloseCode::from(code), reason, false, max, deadline);
            mark_dirty(conn, id.slot(), &mut self.dirty);
        }
    }

    fn apply(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Broadcast(frame) => self.broadcast_frame(frame, false),
            ShardMsg::SendTo(id, frame) => self.send_frame(id, frame),
            ShardMsg::Close(id, code, reason) => self.close_conn(id, code, &reason),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn begin_shutdown(&mut self) {
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
        let (max, close_deadline) = (self.config.message_bytes_max, deadline);
        let Core { conns, dirty, .. } = self;
        for (slot, conn) in conns.iter_mut() {
            conn.begin_close(CloseCode::Away, "server shutting down", false, max, close_deadline);
            mark_dirty(conn, slot, dirty);
        }
    }

    /// A handshake finished: the connection joins the shard.
    fn insert(&mut self, stream: TcpStream, peer: SocketAddr, path: String, leftover: Vec<u8>) {
        self.generation = self.generation.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let id = ConnId::new(self.id, entry.key(), self.generation);
        entry.insert(Conn::new(id, stream, peer, self.now));
        self.counters.connections_open += 1;
        if let Some(cb) = self.callbacks.on_connect.clone() {
            cb(&mut Ctx { core: self }, id, &ConnInfo { peer, path });
        }
        if self.shutting_down.is_some() {
            self.close_conn(id, 1001, "server shutting down");
        }
        if leftover.is_empty() {
            self.to_read.push((id, Vec::with_capacity(IDLE_READ_BYTES)));
        } else {
            let n = leftover.len();
            self.on_read(id, Ok(n), leftover);
        }
    }

    fn on_read(&mut self, id: ConnId, res: io::Result<usize>, buf: Vec<u8>) {
        let slot = id.slot();
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
        conn.last_rx = self.now;
        let mut out = Vec::new();
        let mut failure = None;
        if conn.phase != Phase::Dead && !conn.failed {
            let events = &mut self.events;
            let max = self.config.message_bytes_max;
            if let Err(f) = conn.codec.handle_read(&buf[..n], max, &mut out, |e| events.push(e)) {
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
        // Read big next time if this read filled the buffer; otherwise go back to a small one.
        let full = n == buf.capacity();
        conn.big_read = full;
        let next = self.next_read_buffer(buf, full);
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            match event {
                Inbound::Message(msg) => {
                    self.counters.messages_received += 1;
                    if let Some(cb) = self.callbacks.on_message.clone() {
                        cb(&mut Ctx { core: self }, id, msg);
                    }
                }
                Inbound::Closed => {
                    let deadline = self.now + self.config.close_timeout;
                    if let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) {
                        if conn.phase == Phase::Open {
                            conn.phase = Phase::Closing;
                            conn.deadline = deadline;
                        }
                        mark_dirty(conn, slot, &mut self.dirty);
                    }
                }
            }
        }
        self.events = events;
        if let Some(f) = failure {
            self.counters.protocol_errors += 1;
            let (max, deadline) =
                (self.config.message_bytes_max, self.now + self.config.close_timeout);
            if let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) {
                tracing::debug!(conn = %id, peer = %conn.peer, code = u16::from(f.code), reason = f.reason, "failing connection");
                // Keep what was queued before the violation (e.g. the echo of a valid message
                // that arrived in the same read): it precedes our close frame.
                conn.begin_close(f.code, f.reason, false, max, deadline);
                conn.failed = true;
                mark_dirty(conn, slot, &mut self.dirty);
            }
        }
        if let Some(conn) = self.get_mut(id) {
            if conn.phase != Phase::Dead {
                self.to_read.push((id, next));
            }
        }
        self.finish_if_done(slot);
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

    fn on_write(&mut self, id: ConnId, res: io::Result<usize>, mut batch: Vec<SharedFrame>) {
        let slot = id.slot();
        if let Some(conn) = self.conns.get_mut(slot).filter(|c| c.id == id) {
            conn.writing = false;
            match res {
                Ok(n) => {
                    self.counters.bytes_written += n as u64;
                    conn.outbox.complete(&mut batch, n);
                    if n == 0 {
                        conn.kill();
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

    /// A closing connection whose outbox is flushed sends FIN and waits for the peer's EOF.
    fn maybe_send_fin(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.phase == Phase::Closing
                && !conn.writing
                && conn.outbox.is_empty()
                && !conn.fin_sent
            {
                conn.fin_sent = true;
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    fn finish_if_done(&mut self, slot: usize) {
        if !self.conns.get(slot).is_some_and(Conn::is_finished) {
            return;
        }
        let conn = self.conns.remove(slot);
        self.node.release_slot();
        self.counters.connections_open -= 1;
        if let Some(cb) = self.callbacks.on_close.clone() {
            cb(&mut Ctx { core: self }, conn.id);
        }
    }

    /// Pings, idle timeouts, closing deadlines, the shutdown deadline.
    fn housekeeping(&mut self) {
        let now = self.now;
        let ping = match self.next_ping {
            Some(at) if at <= now => {
                self.next_ping = self.config.ping_interval.map(|p| now + p);
                true
            }
            _ => false,
        };
        let idle_limit = self.config.ping_interval.map(|_| self.config.idle_timeout);
        let forced = self.shutting_down.is_some_and(|d| d <= now);
        let (max, close_deadline) =
            (self.config.message_bytes_max, now + self.config.close_timeout);
        let Core { conns, dirty, config, counters, log_limiter, ping_frame, .. } = self;
        let mut finished = Vec::new();
        for (slot, conn) in conns.iter_mut() {
            match conn.phase {
                Phase::Open if idle_limit.is_some_and(|l| now.duration_since(conn.last_rx) > l) => {
                    counters.idle_timeouts += 1;
                    conn.begin_close(CloseCode::Away, "idle timeout", true, max, close_deadline);
                    mark_dirty(conn, slot, dirty);
                }
                Phase::Open if ping => {
                    if conn.outbox.push(ping_frame.clone(), config.outbox_bytes_max)
                        == SendStatus::OverBudget
                    {
                        over_budget(conn, config, counters, log_limiter);
                    }
                    mark_dirty(conn, slot, dirty);
                }
                Phase::Closing if conn.deadline <= now || forced => conn.kill(),
                Phase::Open if forced => conn.kill(),
                _ => {}
            }
            if conn.is_finished() {
                finished.push(slot);
            }
        }
        for slot in finished {
            self.finish_if_done(slot);
        }
    }

    fn done(&self) -> bool {
        self.shutting_down.is_some() && self.conns.is_empty()
    }
}

fn mark_dirty(conn: &mut Conn, slot: usize, dirty: &mut Vec<usize>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(slot);
    }
}

/// Queue one frame for one connection, applying the slow-consumer policy.
fn deliver(
    conn: &mut Conn,
    slot: usize,
    frame: SharedFrame,
    config: &Config,
    dirty: &mut Vec<usize>,
    counters: &mut Counters,
    log_limiter: &mut LogLimiter,
) {
    if conn.phase != Phase::Open {
        return;
    }
    match conn.outbox.push(frame, config.outbox_bytes_max) {
        SendStatus::Queued => {
            counters.deliveries += 1;
            mark_dirty(conn, slot, dirty);
        }
        SendStatus::OverBudget => {
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
            conn.peer,
            conn.outbox.queued_bytes(),
            config.outbox_bytes_max
        )
    });
    match config.slow_consumer {
        SlowConsumerPolicy::Drop => counters.slow_consumer_drops += 1,
        SlowConsumerPolicy::Disconnect => {
            counters.slow_consumer_disconnects += 1;
            let deadline = Instant::now() + config.close_timeout;
            conn.begin_close(
                CloseCode::Policy,
                "slow consumer",
                true,
                config.message_bytes_max,
                deadline,
            );
        }
    }
}

/// Warn at most once per second per kind, with a count of what was suppressed.
#[derive(Default)]
struct LogLimiter {
    last: std::collections::HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    fn warn(&mut self, kind: &'static str, msg: impl FnOnce() -> String) {
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

// SAFETY: `stable_ptr` points into the heap storage of an immutable `Bytes` that the frame's
// `Rc` keeps alive for as long as the frame exists (an in-flight write owns its frames until
// completion); moving a `SharedFrame` moves only the `Rc` pointer, never the storage, and
// `start <= len` holds, so `bytes_init` bytes from the pointer are initialized and in bounds.
unsafe impl tokio_uring::buf::IoBuf for SharedFrame {
    fn stable_ptr(&self) -> *const u8 {
        self.as_slice().as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len()
    }

    fn bytes_total(&self) -> usize {
        self.len()
    }
}

enum Handshake {
    Accepted { stream: TcpStream, peer: SocketAddr, path: String, leftover: Vec<u8> },
    Rejected { status: u16, full: bool },
    Failed,
}

/// Read the upgrade request (bounded in bytes and time), answer it, reserve a node slot.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    node: Arc<Node>,
) -> Handshake {
    let max = config.header_bytes_max;
    let read = async {
        let mut buf: Vec<u8> = Vec::with_capacity(1024.min(max));
        loop {
            let len = buf.len();
            if len == buf.capacity() {
                buf.reserve((buf.capacity()).min(max + 1 - buf.len()).max(1));
            }
            let (res, slice) = stream.read(buf.slice(len..)).await;
            buf = slice.into_inner();
            match res {
                Ok(0) | Err(_) => return Err(None),
                Ok(_) => {}
            }
            match handshake::parse(&buf, max) {
                Ok(None) => continue,
                Ok(Some(accepted)) => return Ok((accepted, buf)),
                Err(rejection) => return Err(Some(rejection)),
            }
        }
    };
    let outcome = match tokio::time::timeout(config.handshake_timeout, read).await {
        Ok(r) => r,
        Err(_) => {
            Err(Some(handshake::Rejection::BadRequest("timed out reading the upgrade request")))
        }
    };
    let write = |bytes: Vec<u8>| async {
        tokio::time::timeout(config.handshake_timeout, stream.write_all(bytes))
            .await
            .ok()
            .and_then(|(r, _)| r.ok())
    };
    match outcome {
        Ok((accepted, buf)) => {
            if !node.reserve_slot() {
                let r = handshake::Rejection::Unavailable("server full");
                write(r.response()).await;
                let _ = stream.shutdown(std::net::Shutdown::Write);
                return Handshake::Rejected { status: 503, full: true };
            }
            if write(accepted.response).await.is_none() {
                node.release_slot();
                return Handshake::Failed;
            }
            let leftover = buf[accepted.consumed..].to_vec();
            Handshake::Accepted { stream, peer, path: accepted.path, leftover }
        }
        Err(Some(rejection)) => {
            write(rejection.response()).await;
            let _ = stream.shutdown(std::net::Shutdown::Write);
            Handshake::Rejected { status: rejection.status(), full: false }
        }
        Err(None) => Handshake::Failed,
    }
}

/// The shard's event loop; returns when shutdown has closed every connection.
async fn run(
    mut core: Core,
    listener: TcpListener,
    inbox: Receiver<ShardMsg>,
    wake_file: std::fs::File,
    cpu: Option<usize>,
    ready: mpsc::Sender<io::Result<usize>>,
) -> io::Result<()> {
    let shard = core.id;
    let mut listener = Some(Rc::new(tokio_uring::net::TcpListener::from_std(listener)));
    let wake = Rc::new(tokio_uring::fs::File::from_std(wake_file));
    let wake_read = |buf: Vec<u8>| {
        let wake = wake.clone();
        async move { wake.read_at(buf, 0).await }
    };
    let mut wake_fut = Box::pin(wake_read(Vec::with_capacity(8)));
    let accept = |l: Rc<tokio_uring::net::TcpListener>| async move { l.accept().await };
    let read_op = |id: ConnId, stream: Rc<TcpStream>, buf: Vec<u8>| async move {
        let (res, buf) = stream.read(buf).await;
        (id, res, buf)
    };
    let write_op = |id: ConnId, stream: Rc<TcpStream>, batch: Vec<SharedFrame>| async move {
        let (res, batch) = stream.writev(batch).await;
        (id, res, batch)
    };
    let mut accepts = FuturesUnordered::new();
    let mut handshakes = FuturesUnordered::new();
    let mut reads = FuturesUnordered::new();
    let mut writes = FuturesUnordered::new();
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut timers: Vec<_> = if shard == 0 {
        core.callbacks
            .timers
            .iter()
            .map(|(every, f)| {
                let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + *every, *every);
                iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                (iv, f.clone())
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut accept_pause: Option<Pin<Box<tokio::time::Sleep>>> = None;
    tracing::debug!(shard, ?cpu, "shard accepting");
    let _ = ready.send(Ok(shard));
    drop(ready);

    poll_fn(|cx| {
        loop {
            let mut progress = false;
            core.now = Instant::now();

            // Cross-shard events: clear the signal, then drain a bounded batch.
            if let Poll::Ready((res, buf)) = wake_fut.as_mut().poll(cx) {
                if let Err(e) = res {
                    tracing::error!(shard, "eventfd read failed: {e}");
                }
                core.node.links[shard].clear_signal();
                for msg in inbox.try_iter().take(MESH_BATCH) {
                    core.apply(msg);
                }
                if !inbox.is_empty() {
                    core.node.links[shard].force_wake();
                }
                wake_fut.set(wake_read(buf));
                progress = true;
            }

            // Accepts: keep a few in flight unless paused, full of handshakes, or shutting down.
            if accept_pause.as_mut().is_some_and(|p| p.as_mut().poll(cx).is_ready()) {
                accept_pause = None;
            }
            while let Poll::Ready(Some(res)) = accepts.poll_next_unpin(cx) {
                progress = true;
                let res: io::Result<(TcpStream, SocketAddr)> = res;
                match res {
                    Ok((stream, peer)) => {
                        core.counters.connections_accepted += 1;
                        let _ = stream.set_nodelay(true);
                        handshakes.push(handshake(stream, peer, core.config.clone(), core.node.clone()));
                    }
                    Err(e) => {
                        core.counters.accept_errors += 1;
                        core.log_limiter.warn("accept", || {
                            format!("accept failed: {e}; pausing accepts for {ACCEPT_ERROR_PAUSE:?} (raise the open-file limit?)")
                        });
                        accept_pause = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                    }
                }
            }
            if core.shutting_down.is_some() {
                if listener.take().is_some() {
                    accepts.clear();
                    handshakes.clear();
                }
            } else if let Some(l) = &listener {
                while accept_pause.is_none()
                    && accepts.len() < ACCEPTS_IN_FLIGHT
                    && handshakes.len() + accepts.len() < core.config.handshakes_per_shard_max
                {
                    accepts.push(accept(l.clone()));
                    progress = true;
                }
            }

            while let Poll::Ready(Some(outcome)) = handshakes.poll_next_unpin(cx) {
                progress = true;
                match outcome {
                    Handshake::Accepted { stream, peer, path, leftover } => {
                        core.insert(stream, peer, path, leftover)
                    }
                    Handshake::Rejected { status, full } => {
                        core.counters.handshakes_rejected += 1;
                        if full {
                            core.counters.connections_refused_full += 1;
                            core.log_limiter.warn("full", || {
                                format!("refusing connections: node at connections_max {}", core.node.connections_max)
                            });
                        }
                        tracing::debug!(shard, status, "upgrade refused");
                    }
                    Handshake::Failed => core.counters.handshakes_rejected += 1,
                }
            }

            while let Poll::Ready(Some((id, res, buf))) = reads.poll_next_unpin(cx) {
                progress = true;
                core.on_read(id, res, buf);
            }
            while let Poll::Ready(Some((id, res, batch))) = writes.poll_next_unpin(cx) {
                progress = true;
                core.on_write(id, res, batch);
            }

            if housekeeping.poll_tick(cx).is_ready() {
                core.housekeeping();
                progress = true;
            }
            for (iv, f) in timers.iter_mut() {
                if iv.poll_tick(cx).is_ready() {
                    f(&mut Ctx { core: &mut core });
                    progress = true;
                }
            }

            // Start the reads and the vectored writes this turn produced.
            for (id, buf) in core.to_read.drain(..) {
                if let Some(conn) = core.conns.get_mut(id.slot()).filter(|c| c.id == id) {
                    conn.reading = true;
                    reads.push(read_op(id, conn.stream.clone(), buf));
                    progress = true;
                }
            }
            let mut dirty = std::mem::take(&mut core.dirty);
            for slot in dirty.drain(..) {
                let Some(conn) = core.conns.get_mut(slot) else { continue };
                conn.dirty = false;
                if conn.writing || conn.phase == Phase::Dead {
                    continue;
                }
                if conn.outbox.is_empty() {
                    core.maybe_send_fin(slot);
                    continue;
                }
                let mut batch = core.batch_pool.pop().unwrap_or_default();
                conn.outbox.take_batch(&mut batch);
                conn.writing = true;
                core.counters.writes += 1;
                writes.push(write_op(conn.id, conn.stream.clone(), batch));
                progress = true;
            }
            core.dirty = dirty;

            core.node.counters[shard].publish(&core.counters);
            if core.done() {
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
    })
    .await;
    tracing::debug!(shard, "shard stopped");
    Ok(())
}
