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

pub(crate) mod backplane;
pub(crate) mod conn;
mod core;
pub mod directory;
mod ips;
pub(crate) mod mesh;
pub(crate) mod node;
pub(crate) mod reply;

use std::future::{poll_fn, Future};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::command::JoinMatcher;
use crate::config::Config;
use crate::fanout::SharedFrame;
use crate::ids::{ConnId, NodeId};
use crate::metrics::SharedCounters;
use crate::proto::handshake;
use conn::Phase;
use mesh::ShardMsg;

pub use self::core::Ctx;
pub(crate) use self::core::{route_of, Core};
pub(crate) use node::Node;
pub use node::{Callbacks, ConnInfo};
pub use reply::Pending;

/// Read size for connections that are not sending: enough for a pong to our 8-byte ping (14
/// bytes), so an idle connection's pending read pins 16 bytes, not a page. A read that fills it
/// switches the connection to `read_buffer_bytes` until it goes quiet again.
pub(crate) const IDLE_READ_BYTES: usize = 16;
/// Accepts kept in flight per shard.
const ACCEPTS_IN_FLIGHT: usize = 8;
/// Mesh events applied per wake-up before the loop lets I/O progress.
const MESH_BATCH: usize = 4096;
/// How often timeouts and pings are checked.
pub(crate) const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(250);
/// Pause after an accept error (EMFILE...) so a full descriptor table cannot spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A started node: what the library API's handle is made of.
pub(crate) struct Launched {
    pub(crate) node: Arc<Node>,
    pub(crate) threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
    pub(crate) local_addr: SocketAddr,
}

impl Launched {
    fn stop(self) -> Option<io::Error> {
        for link in &self.node.links {
            let _ = link.send(ShardMsg::Shutdown);
        }
        let mut err = None;
        for t in self.threads {
            if let Err(e) =
                t.join().unwrap_or_else(|_| Err(io::Error::other("shard thread panicked")))
            {
                err.get_or_insert(e);
            }
        }
        err
    }
}

/// Bind every shard's listener up front (actionable errors before any thread starts), spawn
/// the shards and wait until each is accepting.
pub(crate) fn launch(config: Config, callbacks: Callbacks) -> io::Result<Launched> {
    let shards = config.shards.max(1);
    if shards > directory::SHARDS_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {} shards per node ({shards} asked)", directory::SHARDS_MAX),
        ));
    }
    let join_matcher = JoinMatcher::new(&config.permissions.join)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let auth = crate::auth::Policy::new(&config.auth, config.permissions.group_id_bytes_max)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
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
        let (link, rx, efd) = mesh::link(config.inbox_events_max)?;
        links.push(link);
        inboxes.push((rx, efd));
    }
    let node = Arc::new(Node {
        id: config.node_id.map(NodeId).unwrap_or_else(NodeId::generate),
        groups: directory::Directory::new(),
        uids: directory::Directory::new(),
        tap: config.cluster.enabled().then(|| {
            backplane::Tap::new(
                config.cluster.outbound_messages_max,
                config.cluster.interest_events_max,
            )
        }),
        links,
        counters: (0..shards).map(|_| SharedCounters::default()).collect(),
        health: (0..shards).map(|_| Default::default()).collect(),
        fanout_latency: (0..shards).map(|_| Default::default()).collect(),
        open: Default::default(),
        connections_max: config.connections_max,
        handle_frames_encoded: Default::default(),
        handle_mesh_dropped: Default::default(),
        handle_last_log_sec: Default::default(),
        started: std::time::Instant::now(),
        ips: ips::IpLimits::new(&auth),
        auth,
    });
    let cpus = config.cpus.clone().unwrap_or_else(crate::config::available_cpus);
    let config = Arc::new(config);
    let callbacks = Arc::new(callbacks);
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<usize>>();
    let mut threads = Vec::with_capacity(shards);
    for (id, (listener, (inbox, efd))) in listeners.into_iter().zip(inboxes).enumerate() {
        let cpu = (config.pin && !cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        let (config, callbacks, node, ready, join_matcher) = (
            config.clone(),
            callbacks.clone(),
            node.clone(),
            ready_tx.clone(),
            join_matcher.clone(),
        );
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
                let core = Core::new(id, config, node, callbacks, join_matcher);
                rt.block_on(run(core, listener, inbox, efd, cpu, ready))
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    let launched = Launched { node, threads, local_addr };
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                launched.stop();
                return Err(e);
            }
            Err(_) => {
                let err = launched.stop();
                return Err(
                    err.unwrap_or_else(|| io::Error::other("a shard exited during start-up"))
                );
            }
        }
    }
    Ok(launched)
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
    Accepted {
        stream: TcpStream,
        peer: SocketAddr,
        path: String,
        leftover: Vec<u8>,
        admitted: Admitted,
    },
    Rejected {
        status: u16,
        why: Refused,
        peer: SocketAddr,
    },
    Failed,
}

/// What the auth layer decided for an upgrade it let through.
pub(crate) struct Admitted {
    /// The verified connect token (uid to bind, grants, expiry).
    pub(crate) grant: Option<Box<crate::auth::TokenGrant>>,
    /// The address the connection is counted under (per-address connection limit).
    pub(crate) ip: Option<crate::auth::IpKey>,
}

/// Why an upgrade was refused, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// 503: the node is at `connections_max`.
    Full,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 429: over the per-address handshake rate.
    RateLimited,
    /// 429: the address has `connections_per_ip_max` open.
    PerIp,
    /// Malformed, wrong method or version, too large, timed out.
    Other,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Read the upgrade request (bounded in bytes and time), decide on it (rate, origin, token,
/// per-address and node limits, in that order; every refusal before a slot is taken), answer
/// it. `rate_limited`: the address was over its handshake rate at accept; the request is still
/// read (bounded) so the 429 reaches the client instead of a reset.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    node: Arc<Node>,
    rate_limited: bool,
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
    let decided = match outcome {
        Ok((accepted, buf)) => {
            decide(&accepted, peer, &node, rate_limited).map(|d| (d, accepted, buf))
        }
        Err(Some(rejection)) => Err((rejection, Refused::Other)),
        Err(None) => return Handshake::Failed,
    };
    match decided {
        Ok(((response, path, admitted), accepted, buf)) => {
            if write(response).await.is_none() {
                node.release_slot();
                if let Some(key) = admitted.ip {
                    node.ips.close(key);
                }
                return Handshake::Failed;
            }
            let leftover = buf[accepted.consumed..].to_vec();
            Handshake::Accepted { stream, peer, path, leftover, admitted }
        }
        Err((rejection, why)) => {
            write(rejection.response()).await;
            let _ = stream.shutdown(std::net::Shutdown::Write);
            Handshake::Rejected { status: rejection.status(), why, peer }
        }
    }
}

/// The admission decision for a well-formed upgrade: the 101 to send, the path applications
/// see (without the token), what was admitted; or the refusal. Takes the per-address count and
/// the node slot only when everything else passed, and gives them back on refusal.
#[allow(clippy::type_complexity)]
fn decide(
    accepted: &handshake::Accepted,
    peer: SocketAddr,
    node: &Node,
    rate_limited: bool,
) -> Result<(Vec<u8>, String, Admitted), (handshake::Rejection, Refused)> {
    use crate::auth::{Refusal, UpgradeRequest};
    use handshake::Rejection;
    if rate_limited {
        let r = Rejection::TooManyRequests("too many handshakes from this address");
        return Err((r, Refused::RateLimited));
    }
    let req = UpgradeRequest {
        path: &accepted.path,
        origin: accepted.origin.as_deref(),
        protocols: accepted.protocols.as_deref(),
    };
    let admission = node.auth.admit(&req, unix_now()).map_err(|r| match r {
        Refusal::Unauthorized(why) => (Rejection::Unauthorized(why), Refused::Unauthorized),
        Refusal::Forbidden(why) => (Rejection::Forbidden(why), Refused::Forbidden),
    })?;
    let ip = node.ips.open(peer.ip()).map_err(|()| {
        let r = Rejection::TooManyRequests("too many connections from this address");
        (r, Refused::PerIp)
    })?;
    if !node.reserve_slot() {
        if let Some(key) = ip {
            node.ips.close(key);
        }
        return Err((Rejection::Unavailable("server full"), Refused::Full));
    }
    let admitted = Admitted { grant: admission.grant.map(Box::new), ip };
    Ok((accepted.response_with(admission.protocol), admission.path, admitted))
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
            core.set_now(Instant::now());

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
                        let rate = core.node.ips.handshake(peer.ip(), core.now);
                        core.counters.ip_table_evictions += rate.evicted as u64;
                        handshakes.push(handshake(stream, peer, core.config.clone(), core.node.clone(), !rate.allowed));
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
                    Handshake::Accepted { stream, peer, path, leftover, admitted } => {
                        core.insert(stream, peer, path, leftover, admitted)
                    }
                    Handshake::Rejected { status, why, peer } => {
                        let c = &mut core.counters;
                        c.handshakes_rejected += 1;
                        match why {
                            Refused::Full => {
                                c.connections_refused_full += 1;
                                core.log_limiter.warn("full", || {
                                    format!("refusing connections: node at connections_max {}", core.node.connections_max)
                                });
                            }
                            Refused::Unauthorized => c.handshakes_unauthorized += 1,
                            Refused::Forbidden => c.handshakes_forbidden += 1,
                            Refused::RateLimited => {
                                c.handshakes_rate_limited += 1;
                                core.log_limiter.warn("ip-rate", || {
                                    format!("refusing upgrades from {}: over auth.handshakes_per_ip_per_sec", peer.ip())
                                });
                            }
                            Refused::PerIp => {
                                c.connections_refused_per_ip += 1;
                                core.log_limiter.warn("ip-conns", || {
                                    format!("refusing upgrades from {}: at auth.connections_per_ip_max", peer.ip())
                                });
                            }
                            Refused::Other => {}
                        }
                        tracing::debug!(shard, status, ?why, %peer, "upgrade refused");
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
                core.unix_now = unix_now();
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
                if let Some(conn) = core.conns.get_mut(id.slot() as usize).filter(|c| c.id == id) {
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
                core.counters.frames_written += batch.len() as u64;
                writes.push(write_op(conn.id, conn.stream.clone(), batch));
                progress = true;
            }
            core.dirty = dirty;

            core.node.counters[shard].publish(&core.counters);
            core.node.health[shard].publish_accepting(
                listener.is_some() && accept_pause.is_none() && core.shutting_down.is_none(),
            );
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
