//! The library's front door: a builder in the spirit of Workerman's `onConnect` / `onMessage` /
//! `onClose` / `Timer::add`, and the [`Handle`] to a running node.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, OnMessage};
use crate::metrics::{Counters, SharedCounters};
use crate::proto::Message;
use crate::shard::mesh::{Link, ShardMsg};
use crate::shard::{self, Ctx};

/// A connection's node-wide id: its shard, its slot there, and a generation so a reused slot
/// never matches a stale id. Assigned by the server; never taken from a client.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    pub(crate) fn new(shard: usize, slot: usize, generation: u16) -> Self {
        ConnId(((shard as u64) << 48) | ((generation as u64) << 32) | slot as u64)
    }

    /// The shard (Workerman's worker id) that owns the connection.
    pub fn shard(self) -> usize {
        (self.0 >> 48) as usize
    }

    pub(crate) fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    pub(crate) fn generation(self) -> u16 {
        (self.0 >> 32) as u16
    }

    /// The id as one integer, e.g. for an HTTP API.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Rebuild an id from [`ConnId::as_u64`]. An unknown id simply matches no connection.
    pub fn from_u64(v: u64) -> Self {
        ConnId(v)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({}:{}:{})", self.shard(), self.slot(), self.generation())
    }
}

/// What is known about a connection when it opens.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The request path and query of the upgrade, e.g. `/?uid=7`.
    pub path: String,
}

pub(crate) type ConnectFn = dyn Fn(&mut Ctx<'_>, ConnId, &ConnInfo) + Send + Sync;
pub(crate) type MessageFn = dyn Fn(&mut Ctx<'_>, ConnId, Message) + Send + Sync;
pub(crate) type CloseFn = dyn Fn(&mut Ctx<'_>, ConnId) + Send + Sync;
pub(crate) type TimerFn = dyn Fn(&mut Ctx<'_>) + Send + Sync;

/// Application callbacks, shared by every shard. Each runs on the shard that owns the
/// connection, inside its event loop: keep them short and never block.
#[derive(Default, Clone)]
pub(crate) struct Callbacks {
    pub(crate) on_connect: Option<Arc<ConnectFn>>,
    pub(crate) on_message: Option<Arc<MessageFn>>,
    pub(crate) on_close: Option<Arc<CloseFn>>,
    /// Run on shard 0 only, so a timer fires once per node per interval.
    pub(crate) timers: Vec<(Duration, Arc<TimerFn>)>,
}

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
        shard::launch(config, callbacks)
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

/// State shared by every shard of a node and its handles.
pub(crate) struct Node {
    pub(crate) links: Vec<Link>,
    pub(crate) counters: Vec<SharedCounters>,
    /// Open WebSocket connections on the whole node; checked only at handshake and close.
    pub(crate) open: AtomicUsize,
    pub(crate) connections_max: usize,
    /// Broadcast frames encoded by handles (outside any shard).
    pub(crate) handle_frames_encoded: AtomicU64,
    /// Events a handle could not queue because a shard's inbox was full.
    pub(crate) handle_mesh_dropped: AtomicU64,
}

impl Node {
    /// Try to take a connection slot; `false` when the node is full.
    pub(crate) fn reserve_slot(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.connections_max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn release_slot(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a publish did not reach every shard.
#[derive(Debug, thiserror::Error)]
#[error(
    "{missed} shard(s) did not take the message: their inbox was full (counted in mesh_dropped)"
)]
pub struct PublishError {
    /// Shards that missed it.
    pub missed: usize,
}

/// A running node. Cheap to share across threads by reference; dropping it does not stop the
/// node (call [`Handle::shutdown`] then [`Handle::join`]).
pub struct Handle {
    pub(crate) node: Arc<Node>,
    pub(crate) threads: Vec<JoinHandle<io::Result<()>>>,
    pub(crate) local_addr: SocketAddr,
}

impl Handle {
    /// The address the node listens on (with the real port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.node.links.len()
    }

    /// Send `msg` to every connection of the node. The frame is encoded once, here, and every
    /// shard queues the same buffer.
    pub fn broadcast(&self, msg: impl Into<Message>) -> Result<(), PublishError> {
        let frame = msg.into().encode();
        self.node.handle_frames_encoded.fetch_add(1, Ordering::Relaxed);
        let mut missed = 0;
        for link in &self.node.links {
            if link.send(ShardMsg::Broadcast(frame.clone())).is_err() {
                missed += 1;
            }
        }
        self.missed(missed)
    }

    /// Send `msg` to one connection, wherever it lives. Unknown ids are ignored.
    pub fn send_to(&self, conn: ConnId, msg: impl Into<Message>) -> Result<(), PublishError> {
        let Some(link) = self.node.links.get(conn.shard()) else { return Ok(()) };
        let sent = link.send(ShardMsg::SendTo(conn, msg.into().encode()));
        self.missed(usize::from(sent.is_err()))
    }

    /// Close one connection with `code` and `reason`.
    pub fn close(&self, conn: ConnId, code: u16, reason: &str) -> Result<(), PublishError> {
        let Some(link) = self.node.links.get(conn.shard()) else { return Ok(()) };
        let sent = link.send(ShardMsg::Close(conn, code, reason.to_owned()));
        self.missed(usize::from(sent.is_err()))
    }

    fn missed(&self, missed: usize) -> Result<(), PublishError> {
        if missed == 0 {
            return Ok(());
        }
        self.node.handle_mesh_dropped.fetch_add(missed as u64, Ordering::Relaxed);
        tracing::warn!(missed, "publish: shard inbox full, message not delivered there");
        Err(PublishError { missed })
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
        self.node.counters.iter().map(SharedCounters::load).collect()
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

    /// Wait for every shard to exit; the first shard error, if any.
    pub fn join(mut self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t.join().unwrap_or_else(|_| Err(io::Error::other("shard thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}
