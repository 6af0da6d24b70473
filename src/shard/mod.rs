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
mod tls_io;

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
use tokio_uring::net::TcpStream;

use crate::command::JoinMatcher;
use crate::config::Config;
use crate::fanout::SharedFrame;
use crate::ids::{ConnId, NodeId};
use crate::metrics::SharedCounters;
use crate::proto::handshake;
use crate::tls::TlsAcceptor;
use conn::{Phase, TlsConn};
use mesh::ShardMsg;

pub(crate) use self::core::Core;
pub use self::core::Ctx;
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
    /// Where `wss://` is served, if anywhere (the main address or `tls.listen`).
    pub(crate) tls_addr: Option<SocketAddr>,
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
    config.history.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let history = crate::history::MemoryHistory::new(&config.history)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    config.tls.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tls = match config.tls.enabled() {
        true => Some(
            TlsAcceptor::new(&config.tls)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
        ),
        false => None,
    };
    // TLS on the main listener unless it has its own address (see `TlsConfig`).
    let main_tls = tls.is_some() && config.tls.listen.is_none();
    let auth = crate::auth::Policy::new(&config.auth, config.permissions.group_id_bytes_max)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let first = bind_reuseport(config.listen).map_err(|e| {
        io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
    })?;
    let local_addr = first.local_addr()?;
    let mut listeners: Vec<Vec<(TcpListener, bool)>> = vec![vec![(first, main_tls)]];
    for _ in 1..shards {
        listeners.push(vec![(bind_reuseport(local_addr)?, main_tls)]);
    }
    let mut tls_addr = main_tls.then_some(local_addr);
    if let (Some(_), Some(addr)) = (&tls, config.tls.listen) {
        let first = bind_reuseport(addr).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {addr} (tls.listen): {e}"))
        })?;
        let addr = first.local_addr()?;
        tls_addr = Some(addr);
        listeners[0].push((first, true));
        for shard in listeners.iter_mut().skip(1) {
            shard.push((bind_reuseport(addr)?, true));
        }
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
                config.cluster.outbound_messages_max,
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
        history_on: config.history.enabled(),
        history: Arc::new(history),
        tls,
        ips: ips::IpLimits::new(&auth),
        auth,
    });
    let cpus = config.cpus.clone().unwrap_or_else(crate::config::available_cpus);
    let config = Arc::new(config);
    let callbacks = Arc::new(callbacks);
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<usize>>();
    let mut threads = Vec::with_capacity(shards);
    for (id, (listeners, (inbox, efd))) in listeners.into_iter().zip(inboxes).enumerate() {
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
                rt.block_on(run(core, listeners, inbox, efd, cpu, ready))
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    let launched = Launched { node, threads, local_addr, tls_addr };
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
        upgraded: Upgraded,
    },
    Rejected {
        status: u16,
        why: Refused,
        peer: SocketAddr,
        tls: bool,
    },
    /// Gone before an answer: EOF, reset, write error, or a failed TLS handshake
    /// (`tls_failed`); `tls_established`: the TLS handshake had completed.
    Failed {
        tls_failed: bool,
        tls_established: bool,
    },
}

/// A connection whose upgrade was accepted, on its way to the shard's table.
pub(crate) struct Upgraded {
    pub(crate) peer: SocketAddr,
    pub(crate) path: String,
    /// Plaintext that followed the upgrade request (already decrypted for `wss://`).
    pub(crate) leftover: Vec<u8>,
    pub(crate) admitted: Admitted,
    pub(crate) tls: Option<Box<TlsConn>>,
    /// The 101 response, not yet written: the shard queues it as the connection's first
    /// bytes when it registers the connection, so every publish from then on follows it.
    pub(crate) response: Vec<u8>,
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

/// Read the upgrade request (bounded in bytes and time; for `wss://` the TLS handshake comes
/// first, inside the same time bound), decide on it (rate, origin, token,
/// per-address and node limits, in that order; every refusal before a slot is taken), answer
/// it. `rate_limited`: the address was over its handshake rate at accept; the request is still
/// read (bounded) so the 429 reaches the client instead of a reset.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    node: Arc<Node>,
    tls: Option<Box<TlsConn>>,
    rate_limited: bool,
) -> Handshake {
    let max = config.header_bytes_max;
    let mut io = tls_io::UpgradeIo::new(&stream, tls);
    let read = async {
        let mut buf: Vec<u8> = Vec::with_capacity(1024.min(max));
        loop {
            if let Err(stop) = io.read(&mut buf, max).await {
                return Err((None, stop));
            }
            match handshake::parse(&buf, max) {
                Ok(None) => continue,
                Ok(Some(accepted)) => return Ok((accepted, buf)),
                Err(rejection) => return Err((Some(rejection), tls_io::IoStop::Gone)),
            }
        }
    };
    let outcome = match tokio::time::timeout(config.handshake_timeout, read).await {
        Ok(r) => r,
        Err(_) => Err((
            Some(handshake::Rejection::BadRequest("timed out reading the upgrade request")),
            tls_io::IoStop::Gone,
        )),
    };
    let is_tls = io.tls.is_some();
    if is_tls && !io.tls_established() {
        // A TLS handshake that did not complete gets no HTTP answer (there is no channel).
        if let Err((_, tls_io::IoStop::Tls(e))) = &outcome {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
        }
        return Handshake::Failed { tls_failed: true, tls_established: false };
    }
    let timeout = config.handshake_timeout;
    let decided = match outcome {
        Ok((accepted, buf)) => {
            decide(&accepted, peer, &node, rate_limited).map(|d| (d, accepted, buf))
        }
        Err((Some(rejection), _)) => Err((rejection, Refused::Other)),
        Err((None, stop)) => {
            if let tls_io::IoStop::Tls(e) = stop {
                tracing::debug!(%peer, "TLS error during the upgrade: {e}");
            }
            return Handshake::Failed { tls_failed: false, tls_established: is_tls };
        }
    };
    match decided {
        Ok(((response, path, admitted), accepted, buf)) => {
            // The 101 is not written here: a client that read it must get every message
            // published after, so the shard registers the connection first and sends the
            // 101 as its first bytes (`Core::insert`).
            let leftover = buf[accepted.consumed..].to_vec();
            let mut tls = io.tls.take();
            if let Some(tls) = tls.as_mut() {
                tls.session.handshake_done();
            }
            drop(io);
            let upgraded = Upgraded { peer, path, leftover, admitted, tls, response };
            Handshake::Accepted { stream, upgraded }
        }
        Err((rejection, why)) => {
            // The refusal goes through TLS for `wss://`; `finish` sends close_notify (TLS)
            // and shuts the write side down.
            let _ = tokio::time::timeout(timeout, async {
                io.write(rejection.response()).await;
                io.finish().await;
            })
            .await;
            Handshake::Rejected { status: rejection.status(), why, peer, tls: is_tls }
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
    listeners: Vec<(TcpListener, bool)>,
    inbox: Receiver<ShardMsg>,
    wake_file: std::fs::File,
    cpu: Option<usize>,
    ready: mpsc::Sender<io::Result<usize>>,
) -> io::Result<()> {
    let shard = core.id;
    // Each listener with whether it serves TLS and how many accepts it has in flight.
    let mut listeners: Vec<(Rc<tokio_uring::net::TcpListener>, bool, usize)> = listeners
        .into_iter()
        .map(|(l, tls)| (Rc::new(tokio_uring::net::TcpListener::from_std(l)), tls, 0))
        .collect();
    let wake = Rc::new(tokio_uring::fs::File::from_std(wake_file));
    let wake_read = |buf: Vec<u8>| {
        let wake = wake.clone();
        async move { wake.read_at(buf, 0).await }
    };
    let mut wake_fut = Box::pin(wake_read(Vec::with_capacity(8)));
    let accept =
        |l: Rc<tokio_uring::net::TcpListener>, i: usize| async move { (i, l.accept().await) };
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
    // Ciphertext writes of `wss://` connections (a separate set: the plain path is unchanged).
    let tls_write_op = |id: ConnId, stream: Rc<TcpStream>, buf: Vec<u8>| async move {
        let (res, buf) = stream.write_all(buf).await;
        (id, res, buf)
    };
    let mut tls_writes = FuturesUnordered::new();
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
    // Ready from the moment `start` returns: /readyz must not answer 503 for a node that has
    // just said it is listening (the loop's first turn comes right after this).
    let health = &core.node.health[shard];
    health
        .publish_heartbeat(std::time::Instant::now().saturating_duration_since(core.node.started));
    health.publish_accepting(!listeners.is_empty());
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
            } else if std::mem::take(&mut core.own_inbox) {
                // Our own positioned publishes, queued without a wake-up.
                for msg in inbox.try_iter().take(MESH_BATCH) {
                    core.apply(msg);
                }
                if !inbox.is_empty() {
                    core.node.links[shard].force_wake();
                }
                progress = true;
            }

            // Accepts: keep a few in flight unless paused, full of handshakes, or shutting down.
            if accept_pause.as_mut().is_some_and(|p| p.as_mut().poll(cx).is_ready()) {
                accept_pause = None;
            }
            while let Poll::Ready(Some((i, res))) = accepts.poll_next_unpin(cx) {
                progress = true;
                let res: io::Result<(TcpStream, SocketAddr)> = res;
                let tls = match listeners.get_mut(i) {
                    Some((_, tls, in_flight)) => {
                        *in_flight -= 1;
                        *tls
                    }
                    None => false,
                };
                match res {
                    Ok((stream, peer)) => {
                        core.counters.connections_accepted += 1;
                        let _ = stream.set_nodelay(true);
                        let rate = core.node.ips.handshake(peer.ip(), core.now);
                        core.counters.ip_table_evictions += rate.evicted as u64;
                        if !rate.allowed && tls {
                            // A plain client over its rate still reads its 429; a TLS one is
                            // dropped before the (costly) TLS handshake: that cost is what
                            // the rate limit is there to bound.
                            core.counters.handshakes_rejected += 1;
                            core.counters.handshakes_rate_limited += 1;
                            core.log_limiter.warn("ip-rate", || {
                                format!("dropping wss:// connections from {}: over auth.handshakes_per_ip_per_sec", peer.ip())
                            });
                            drop(stream);
                            continue;
                        }
                        let tls = match (tls, &core.node.tls) {
                            (true, Some(acceptor)) => match acceptor.session() {
                                Ok(session) => Some(TlsConn::new(session)),
                                Err(e) => {
                                    core.counters.tls_handshakes_failed += 1;
                                    core.log_limiter.warn("tls-session", || format!("cannot start a TLS session: {e}"));
                                    continue;
                                }
                            },
                            _ => None,
                        };
                        handshakes.push(handshake(stream, peer, core.config.clone(), core.node.clone(), tls, !rate.allowed));
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
                if !listeners.is_empty() {
                    listeners.clear();
                    accepts.clear();
                    handshakes.clear();
                }
            } else {
                for (i, (l, _, in_flight)) in listeners.iter_mut().enumerate() {
                    while accept_pause.is_none()
                        && *in_flight < ACCEPTS_IN_FLIGHT
                        && handshakes.len() + accepts.len() < core.config.handshakes_per_shard_max
                    {
                        accepts.push(accept(l.clone(), i));
                        *in_flight += 1;
                        progress = true;
                    }
                }
            }

            while let Poll::Ready(Some(outcome)) = handshakes.poll_next_unpin(cx) {
                progress = true;
                match outcome {
                    Handshake::Accepted { stream, upgraded } => {
                        core.counters.tls_handshakes += u64::from(upgraded.tls.is_some());
                        core.insert(stream, upgraded)
                    }
                    Handshake::Rejected { status, why, peer, tls } => {
                        let c = &mut core.counters;
                        c.tls_handshakes += u64::from(tls);
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
                    Handshake::Failed { tls_failed, tls_established } => {
                        core.counters.handshakes_rejected += 1;
                        core.counters.tls_handshakes_failed += u64::from(tls_failed);
                        core.counters.tls_handshakes += u64::from(tls_established);
                    }
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
            while let Poll::Ready(Some((id, res, buf))) = tls_writes.poll_next_unpin(cx) {
                progress = true;
                core.on_tls_write(id, res, buf);
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
                if conn.is_tls() {
                    match core.start_tls_write(slot) {
                        Some((id, stream, buf)) => {
                            tls_writes.push(tls_write_op(id, stream, buf));
                            progress = true;
                        }
                        None => core.maybe_send_fin(slot),
                    }
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
                !listeners.is_empty() && accept_pause.is_none() && core.shutting_down.is_none(),
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
