//! Clustering over Redis: several nodes, one bus, each message sent only where it is needed.
//!
//! Runs on the control plane: its own thread (`ringcast-cluster`) with a current-thread tokio
//! runtime owning every Redis connection. Shards never touch Redis: they hand local publishes
//! and interest changes over bounded queues (`shard::backplane`), and the cluster task hands
//! remote publishes back through the library's [`Handle`].
//!
//! - `config.rs`: [`ClusterConfig`], validated in one place.
//! - `wire.rs`: the inter-node format (sans-I/O, versioned, binary).
//! - `interest.rs`: the subscription state machine (sans-I/O, time passed in).
//! - `bus.rs`: classic pub/sub on one Redis or sharded pub/sub on a Redis Cluster.
//! - `driver.rs`: the tasks: outbound publishes, inbound messages, heartbeats and presence,
//!   subscriptions, cluster-wide queries.
//!
//! Channels (under the namespace `ns`): `ns:all` (broadcasts and cluster-wide queries; every
//! node), `ns:node:<id>` (client-id sends, answers; that node only), `ns:g:<group>` and
//! `ns:u:<uid>` (only nodes with a local member). Presence: key `{ns}:node:<id>` (expires
//! after three heartbeats) and set `{ns}:nodes`, in one hash slot.

mod bus;
pub mod config;
mod driver;
mod history;
pub mod interest;
mod observe;
pub mod ops;
pub mod wire;

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

pub use config::{BusMode, ClusterConfig};

use bytes::Bytes;

use crate::addressing::{
    Applied, ClientInfo, GroupInfo, Publish, PublishReport, RequestError, Stats, To, UidInfo,
};
use crate::ids::{ConnId, GroupId, NodeId, Uid};
use crate::Handle;

/// The backplane's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackplaneState {
    /// Not connected yet.
    Connecting,
    /// Connected; cross-node delivery works.
    Up,
    /// Redis is unreachable: local delivery continues, cross-node messages are lost (counted)
    /// until it comes back; reconnecting with back-off.
    Down,
}

impl BackplaneState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => BackplaneState::Up,
            2 => BackplaneState::Down,
            _ => BackplaneState::Connecting,
        }
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The cluster's counters (a snapshot; `"cluster"` in `GET /api/stats`).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct ClusterCounters { $($(#[$doc])* pub $name: u64,)* }

        #[derive(Debug, Default)]
        pub(crate) struct Counters { $(pub(crate) $name: AtomicU64,)* }

        impl Counters {
            fn snapshot(&self) -> ClusterCounters {
                ClusterCounters { $($name: self.$name.load(Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Messages sent to Redis (one per publish and channel).
    published,
    /// Local publishes that did not reach the other nodes because Redis failed or was down.
    publish_failed,
    /// Local publishes dropped because the outbound queue was full.
    outbound_dropped,
    /// Bus messages received.
    received,
    /// Remote publishes handed to this node's shards.
    delivered,
    /// A remote publish received on a second channel of the same message (a member of two of
    /// its groups gets it once), not delivered again.
    skipped_duplicate,
    /// Pushes dropped because the inbound queue was full.
    inbound_dropped,
    /// Bus messages of another format version, dropped.
    rejected_version,
    /// Malformed bus messages (truncated, bad names, bad frame), dropped.
    rejected_malformed,
    /// Bus messages from a node absent from presence, or for clients of another node, dropped.
    rejected_unknown_node,
    /// Channels subscribed.
    subscribes,
    /// Channels unsubscribed.
    unsubscribes,
    /// Times the backplane went down.
    disconnects,
    /// Times it came back (everything re-subscribed).
    reconnects,
    /// Cluster-wide queries asked by this node.
    queries,
    /// Nodes that did not answer a query in time (summed over queries).
    query_nodes_missing,
    /// Queries from other nodes answered.
    queries_answered,
    /// Another live process claimed this node's id.
    node_id_clashes,
    /// Messages appended to a group's history in Redis (one per message and group).
    history_appends,
    /// Appends that failed (Redis down or an error): those messages reached nobody through
    /// their groups with history, and their publisher was told.
    history_append_failed,
    /// History reads made in Redis (recovering joins, `history` commands, the HTTP API).
    history_reads,
    /// Reads that failed (Redis down, an error, or the group's channel not subscribed in
    /// time): a recovering join answers `recovered: false`.
    history_read_failed,
    /// History jobs (appends, reads) refused because their queue was full.
    history_jobs_dropped,
    /// Answers to a shard (a deferred command reply, a recovery) dropped after its inbox stayed
    /// full for a second.
    history_answers_dropped,
}

/// What the backplane is doing (for `/api/stats`, `/readyz`, logs).
#[derive(Debug, Clone, Serialize)]
pub struct BackplaneStatus {
    /// Connection state.
    pub state: BackplaneState,
    /// `classic` or `sharded`.
    pub bus: &'static str,
    /// This node's id.
    pub node_id: String,
    /// Live nodes seen in presence at the last heartbeat (this one included).
    pub nodes: Vec<String>,
    /// Channels subscribed (or lingering before an unsubscribe).
    pub subscriptions: u64,
    /// Channels wanted but not yet subscribed.
    pub subscriptions_pending: u64,
    /// Counters.
    pub counters: ClusterCounters,
}

/// One node's part of a cluster-wide answer.
#[derive(Debug, Clone, Serialize)]
pub struct NodeAnswer<T> {
    /// The node.
    pub node_id: String,
    /// Its answer.
    #[serde(flatten)]
    pub answer: T,
}

/// A cluster-wide answer: merged totals, who answered, who is missing.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterAnswer<T> {
    /// The merged answer.
    #[serde(flatten)]
    pub merged: T,
    /// Nodes that answered (this one included).
    pub nodes_answered: Vec<String>,
    /// Live nodes that did not answer within `query_timeout`.
    pub nodes_missing: Vec<String>,
}

/// One node's share of an acknowledged publish.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NodeReport {
    /// The node.
    #[serde(default)]
    pub node_id: String,
    /// Connections on that node it was queued to.
    pub queued: u64,
    /// Recipients there skipped or disconnected for a full outbox.
    pub slow_consumers: u64,
}

/// What a publish with `"ack": "nodes"` did across the cluster.
#[derive(Debug, Clone, Default)]
pub struct AckedPublish {
    /// This node's report.
    pub local: PublishReport,
    /// The nodes it was forwarded to (interest routing), sorted.
    pub forwarded_to: Vec<NodeId>,
    /// The reports of the nodes that answered within `query_timeout`.
    pub nodes: Vec<NodeReport>,
    /// Nodes it was forwarded to that did not answer in time.
    pub nodes_missing: Vec<NodeId>,
}

/// Per-node totals of a cluster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStats {
    /// Open connections on every node that answered.
    pub connections: u64,
    /// Each node's stats.
    pub nodes: Vec<Stats>,
}

/// A question for the control task.
pub(crate) struct Ask {
    pub(crate) query: wire::Query,
    /// `None`: every node (the `all` channel); `Some`: that node.
    pub(crate) to: Option<NodeId>,
    pub(crate) reply: oneshot::Sender<Gathered>,
}

/// Remote answers to one query.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    pub(crate) answers: Vec<(NodeId, bytes::Bytes)>,
    pub(crate) missing: Vec<NodeId>,
}

/// Per-kind log budget: one line per kind per second, with the number suppressed.
#[derive(Debug, Default)]
pub(crate) struct LogBudget {
    last: Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl LogBudget {
    /// `Some(suppressed since the last line)` when a line of `kind` may be written now.
    pub(crate) fn allow(&self, kind: &'static str) -> Option<u64> {
        let mut m = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match m.get_mut(kind) {
            Some((at, n)) if now.duration_since(*at) < Duration::from_secs(1) => {
                *n += 1;
                None
            }
            Some((at, n)) => {
                *at = now;
                Some(std::mem::take(n))
            }
            None => {
                m.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// State shared by the cluster's tasks and its [`Cluster`] handles.
pub(crate) struct Inner {
    pub(crate) cfg: ClusterConfig,
    pub(crate) me: NodeId,
    pub(crate) handle: Handle,
    pub(crate) state: AtomicU8,
    pub(crate) counters: Counters,
    /// Pushes dropped by the bounded push queue (shared with the Redis client's callback).
    pub(crate) push_dropped: Arc<AtomicU64>,
    /// The inbound queue (Redis pushes waiting for the inbound task), for its depth.
    pub(crate) inbound_queue: std::sync::OnceLock<mpsc::WeakSender<redis::PushInfo>>,
    pub(crate) alive: Mutex<BTreeSet<NodeId>>,
    pub(crate) subs: Mutex<interest::Subscriptions>,
    /// Which other nodes receive which group and uid channels (from their announcements).
    pub(crate) remote: Mutex<interest::RemoteInterest>,
    /// Queries and acknowledged publishes waiting for other nodes.
    pub(crate) pending: driver::Asks,
    pub(crate) sequence: AtomicU64,
    pub(crate) log: LogBudget,
    /// Channels whose `SUBSCRIBE` Redis confirmed (cleared when the bus reconnects), and a
    /// wake-up when one is added: a recovering join reads the history only once its group's
    /// channel is here, so every later message reaches the node.
    pub(crate) confirmed: Mutex<std::collections::HashSet<interest::Channel>>,
    pub(crate) confirmed_changed: tokio::sync::Notify,
}

impl Inner {
    pub(crate) fn state(&self) -> BackplaneState {
        BackplaneState::from_u8(self.state.load(Relaxed))
    }

    pub(crate) fn set_state(&self, s: BackplaneState) -> BackplaneState {
        let v = match s {
            BackplaneState::Connecting => 0,
            BackplaneState::Up => 1,
            BackplaneState::Down => 2,
        };
        BackplaneState::from_u8(self.state.swap(v, Relaxed))
    }

    pub(crate) fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Relaxed)
    }
}

/// A running cluster backplane. Cheap to clone; [`Cluster::shutdown`] (or dropping the last
/// clone's owner, [`ClusterServer`]) stops it and removes this node from presence.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    asks: mpsc::Sender<Ask>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node_id", &self.inner.me).finish_non_exhaustive()
    }
}

/// Owns the cluster thread.
pub struct ClusterServer {
    cluster: Cluster,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ClusterServer {
    /// A handle for queries and status.
    pub fn cluster(&self) -> Cluster {
        self.cluster.clone()
    }

    /// Leave presence, close the Redis connections, stop the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the cluster thread panicked");
            }
        }
    }
}

impl Drop for ClusterServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Start the backplane for the node behind `handle` (built with `config.cluster` set, so its
/// shards hand publishes over): connect to Redis, claim the node id (refused if a live node
/// holds it), subscribe, and run on a new thread. Errors are returned before the thread
/// runs: Redis unreachable within `connect_timeout`, a node id clash, a bad configuration.
pub fn spawn(handle: Handle, cfg: ClusterConfig) -> io::Result<ClusterServer> {
    cfg.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let receivers = handle
        .node()
        .tap
        .as_ref()
        .and_then(|t| t.receivers.lock().unwrap_or_else(|e| e.into_inner()).take())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the node was started without clustering (Config::cluster), or the cluster \
                 was already started for it",
            )
        })?;
    let me = handle.node_id();
    let inner = Arc::new(Inner {
        subs: Mutex::new(interest::Subscriptions::new(cfg.unsubscribe_linger)),
        remote: Mutex::new(interest::RemoteInterest::default()),
        pending: Default::default(),
        cfg,
        me,
        handle,
        state: AtomicU8::new(0),
        counters: Counters::default(),
        push_dropped: Arc::new(AtomicU64::new(0)),
        inbound_queue: std::sync::OnceLock::new(),
        alive: Mutex::new(BTreeSet::new()),
        sequence: AtomicU64::new(1),
        log: LogBudget::default(),
        confirmed: Mutex::new(Default::default()),
        confirmed_changed: tokio::sync::Notify::new(),
    });
    let (asks_tx, asks_rx) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let task_inner = inner.clone();
    let thread = std::thread::Builder::new().name("ringcast-cluster".into()).spawn(move || {
        runtime.block_on(driver::run(task_inner, receivers, asks_rx, stop_rx, ready_tx));
    })?;
    let started = ready_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the cluster thread exited during start-up")));
    let server =
        ClusterServer { cluster: Cluster { inner, asks: asks_tx }, stop, thread: Some(thread) };
    started.map(|()| server)
}

impl Cluster {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.me
    }

    /// Whether cross-node delivery works now (Redis connected, this node's own channels
    /// subscribed): the accessor for `/readyz`.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// [`Cluster::is_ready`] with the reason when not: the `backplane` check of `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.inner.state();
        if state != BackplaneState::Up {
            return Err(format!(
                "backplane {}: cross-node delivery is not working (Redis at {})",
                match state {
                    BackplaneState::Connecting => "connecting",
                    BackplaneState::Down => "down",
                    BackplaneState::Up => "up",
                },
                self.inner
                    .cfg
                    .urls
                    .iter()
                    .map(|u| config::redact_url(u))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        let subs = self.inner.subs.lock().unwrap_or_else(|e| e.into_inner());
        for ch in [interest::Channel::All, interest::Channel::Node(self.inner.me)] {
            if !subs.is_receiving(&ch) {
                return Err(format!(
                    "backplane connected but {} is not subscribed yet",
                    ch.name(&self.inner.cfg.namespace)
                ));
            }
        }
        Ok(())
    }

    /// Wire this backplane into `/readyz` (check `backplane`) and `/metrics`
    /// (`ringcast_cluster_*`).
    pub fn observe(&self, obs: &mut crate::observe::Observability) {
        let c = self.clone();
        obs.add_readiness_check("backplane", move || c.readiness());
        obs.add_collector(observe::ClusterCollector(self.clone()));
    }

    /// The nodes a publish to `to` is forwarded to, as interest routing decides it now: every
    /// other live node for a broadcast, the nodes that announced a subscription to one of the
    /// groups or uids, the nodes named in the client ids. Empty while the backplane is not
    /// up (the publish reaches this node's clients only; counted). Reads local state only.
    pub fn forwarded_to(&self, to: &To) -> Vec<NodeId> {
        if self.inner.state() != BackplaneState::Up {
            return Vec::new();
        }
        let me = self.inner.me;
        let set: BTreeSet<NodeId> = match to {
            To::All => self.inner.alive.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            To::Groups(gs) => {
                let chans: Vec<interest::Channel> =
                    gs.iter().cloned().map(interest::Channel::Group).collect();
                self.inner.remote.lock().unwrap_or_else(|e| e.into_inner()).nodes(&chans)
            }
            To::Uids(us) => {
                let chans: Vec<interest::Channel> =
                    us.iter().cloned().map(interest::Channel::Uid).collect();
                self.inner.remote.lock().unwrap_or_else(|e| e.into_inner()).nodes(&chans)
            }
            To::Clients(ids) => ids.iter().map(|c| c.node()).collect(),
        };
        set.into_iter().filter(|n| *n != me).collect()
    }

    /// Publish and wait, at most `query_timeout`, for the report of each node it was
    /// forwarded to (`"ack": "nodes"`); nodes that did not answer are listed as missing. The
    /// local delivery does not wait for them.
    pub async fn publish_acked(&self, p: Publish) -> Result<AckedPublish, RequestError> {
        // Groups with history are delivered through Redis's append script, not forwarded by
        // this node: no node reports on them (the reply's positions confirm the append).
        let node = self.inner.handle.node();
        let forwarded = match &p.to {
            To::Groups(gs) if node.history_on => To::Groups(
                gs.iter().filter(|g| node.history.limits_for(g).is_none()).cloned().collect(),
            ),
            to => to.clone(),
        };
        let mut forwarded_to = self.forwarded_to(&forwarded);
        let request = self.inner.next_sequence();
        let (tx, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.inner.cfg.query_timeout;
        if !forwarded_to.is_empty() {
            self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(
                request,
                driver::PendingAsk {
                    to: None,
                    expect_from: Some(forwarded_to.clone()),
                    expected: Some(forwarded_to.len()),
                    answers: Vec::new(),
                    reply: Some(tx),
                    deadline,
                },
            );
        }
        let (local, sent) = self.inner.handle.publish_with_request(p, request);
        if !sent {
            // The outbound queue was full (counted): it went to no other node.
            self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
            forwarded_to.clear();
        }
        let remote = async {
            if forwarded_to.is_empty() {
                return Gathered::default();
            }
            if let Ok(Ok(g)) = tokio::time::timeout_at(deadline, rx).await {
                return g;
            }
            // Timed out: whatever arrived so far, the rest missing.
            let a = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
            let answers = a.map(|a| a.answers).unwrap_or_default();
            let answered: BTreeSet<NodeId> = answers.iter().map(|(n, _)| *n).collect();
            let missing: Vec<NodeId> =
                forwarded_to.iter().filter(|n| !answered.contains(n)).copied().collect();
            self.inner.counters.query_nodes_missing.fetch_add(missing.len() as u64, Relaxed);
            Gathered { answers, missing }
        };
        let (local, remote) = tokio::join!(local, remote);
        let local = local?.pop().unwrap_or_default();
        let mut nodes: Vec<NodeReport> = remote
            .answers
            .iter()
            .filter_map(|(n, json)| {
                let mut r: NodeReport = self.decode(json)?;
                r.node_id = n.to_string();
                Some(r)
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let mut nodes_missing = remote.missing;
        nodes_missing.sort();
        Ok(AckedPublish { local, forwarded_to, nodes, nodes_missing })
    }

    /// Publishes waiting to go to Redis, and the bound.
    pub fn outbound_queue(&self) -> (usize, usize) {
        match &self.inner.handle.node().tap {
            Some(tap) => (tap.queued(), tap.messages_max()),
            None => (0, self.inner.cfg.outbound_messages_max),
        }
    }

    /// Messages from Redis waiting to be applied, and the bound.
    pub fn inbound_queue(&self) -> (usize, usize) {
        let max = self.inner.cfg.inbound_messages_max;
        let depth = self
            .inner
            .inbound_queue
            .get()
            .and_then(|w| w.upgrade())
            .map_or(0, |tx| tx.max_capacity() - tx.capacity());
        (depth, max)
    }

    /// History jobs (appends, reads) waiting for the cluster task, and the queue's bound.
    pub fn history_queue(&self) -> (usize, usize) {
        match &self.inner.handle.node().tap {
            Some(tap) => (tap.history_jobs_queued(), tap.history_jobs_max()),
            None => (0, 0),
        }
    }

    /// A group's history, read in Redis (a clustered node with history rules keeps it there):
    /// the same answer as [`Handle::history`]. `Ok(None)`: no rule matches `group` (it keeps
    /// no history); `Err`: Redis could not answer (or the job queue was full).
    pub async fn history(
        &self,
        group: &crate::ids::GroupId,
        from: crate::history::ReadFrom,
        limit: usize,
    ) -> Result<Option<crate::history::Read>, String> {
        use crate::shard::backplane::{HistoryJob, ReadAnswer, ReadJob};
        let node = self.inner.handle.node();
        let (true, Some(tap)) = (node.history_on, &node.tap) else { return Ok(None) };
        let Some(limits) = node.history.limits_for(group) else { return Ok(None) };
        let (tx, rx) = oneshot::channel();
        let job =
            ReadJob { group: group.clone(), limits, from, limit, answer: ReadAnswer::Caller(tx) };
        if tap.history_job(HistoryJob::Read(Box::new(job))).is_err() {
            return Err("the cluster's history queue is full; retry".into());
        }
        match tokio::time::timeout(self.inner.cfg.query_timeout * 2, rx).await {
            Ok(Ok(r)) => r.map(Some),
            Ok(Err(_)) => Err("the cluster task stopped".into()),
            Err(_) => Err("Redis did not answer the history read in time".into()),
        }
    }

    /// State, live nodes, subscriptions and counters.
    pub fn status(&self) -> BackplaneStatus {
        let subs = self.inner.subs.lock().unwrap_or_else(|e| e.into_inner());
        let mut counters = self.inner.counters.snapshot();
        if let Some(tap) = &self.inner.handle.node().tap {
            counters.outbound_dropped += tap.outbound_dropped.load(Relaxed);
            counters.history_jobs_dropped += tap.history_jobs_dropped.load(Relaxed);
        }
        counters.inbound_dropped += self.inner.push_dropped.load(Relaxed);
        BackplaneStatus {
            state: self.inner.state(),
            bus: match self.inner.cfg.bus {
                BusMode::Classic => "classic",
                BusMode::Sharded => "sharded",
            },
            node_id: self.inner.me.to_string(),
            nodes: self
                .inner
                .alive
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|n| n.to_string())
                .collect(),
            subscriptions: subs.len() as u64,
            subscriptions_pending: subs.pending() as u64,
            counters,
        }
    }

    /// Ask the other nodes (`to: None`: all of them) and wait for their answers, at most
    /// `query_timeout`.
    async fn ask(&self, query: wire::Query, to: Option<NodeId>) -> Gathered {
        let (tx, rx) = oneshot::channel();
        if self.asks.try_send(Ask { query, to, reply: tx }).is_err() {
            // Too many questions in flight: nobody was asked, every node is missing.
            let alive = self.inner.alive.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let missing = match to {
                Some(n) => vec![n],
                None => alive.into_iter().filter(|n| *n != self.inner.me).collect(),
            };
            return Gathered { answers: Vec::new(), missing };
        }
        let bound = self.inner.cfg.query_timeout + Duration::from_millis(500);
        tokio::time::timeout(bound, rx).await.ok().and_then(Result::ok).unwrap_or_default()
    }

    fn names(&self, g: &Gathered) -> (Vec<String>, Vec<String>) {
        let mut answered: Vec<String> = std::iter::once(self.inner.me)
            .chain(g.answers.iter().map(|(n, _)| *n))
            .map(|n| n.to_string())
            .collect();
        answered.sort();
        answered.dedup();
        (answered, g.missing.iter().map(|n| n.to_string()).collect())
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, json: &[u8]) -> Option<T> {
        match serde_json::from_slice(json) {
            Ok(v) => Some(v),
            Err(e) => {
                self.inner.counters.rejected_malformed.fetch_add(1, Relaxed);
                if self.inner.log.allow("answer").is_some() {
                    tracing::warn!("cluster: undecodable answer from another node: {e}");
                }
                None
            }
        }
    }

    /// Every node's totals. Bounded by `query_timeout`.
    pub async fn stats(&self) -> Result<ClusterAnswer<ClusterStats>, RequestError> {
        let (local, remote) =
            tokio::join!(self.inner.handle.stats(), self.ask(wire::Query::Stats, None));
        let mut merged = ClusterStats { connections: 0, nodes: vec![local?] };
        for (_, json) in &remote.answers {
            merged.nodes.extend(self.decode::<Stats>(json));
        }
        merged.nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        merged.connections = merged.nodes.iter().map(|n| n.connections).sum();
        let (nodes_answered, nodes_missing) = self.names(&remote);
        Ok(ClusterAnswer { merged, nodes_answered, nodes_missing })
    }

    /// A group's members on every node. Bounded by `query_timeout`.
    pub async fn group(&self, group: GroupId) -> Result<ClusterAnswer<GroupInfo>, RequestError> {
        let (local, remote) = tokio::join!(
            self.inner.handle.group(group.clone()),
            self.ask(wire::Query::Group(group), None)
        );
        let mut merged = local?;
        let mut uids: BTreeSet<String> = merged.uids.drain(..).collect();
        for (_, json) in &remote.answers {
            if let Some(g) = self.decode::<GroupInfo>(json) {
                merged.count += g.count;
                merged.clients.extend(g.clients);
                uids.extend(g.uids);
            }
        }
        merged.clients.sort_unstable();
        merged.uids = uids.into_iter().collect();
        let (nodes_answered, nodes_missing) = self.names(&remote);
        Ok(ClusterAnswer { merged, nodes_answered, nodes_missing })
    }

    /// A uid's connections on every node. Bounded by `query_timeout`.
    pub async fn uid(&self, uid: Uid) -> Result<ClusterAnswer<UidInfo>, RequestError> {
        let (local, remote) =
            tokio::join!(self.inner.handle.uid(uid.clone()), self.ask(wire::Query::Uid(uid), None));
        let mut merged = local?;
        for (_, json) in &remote.answers {
            if let Some(u) = self.decode::<UidInfo>(json) {
                merged.clients.extend(u.clients);
            }
        }
        merged.clients.sort_unstable();
        merged.online = !merged.clients.is_empty();
        let (nodes_answered, nodes_missing) = self.names(&remote);
        Ok(ClusterAnswer { merged, nodes_answered, nodes_missing })
    }

    /// One connection, asked of the node that holds it (its id names it). Bounded by
    /// `query_timeout`: a node that is not in the cluster holds nothing, so the client is
    /// offline; a node that is there but does not answer in time is an error.
    pub async fn client(&self, conn: ConnId) -> Result<ClientInfo, ops::OpError> {
        if conn.node() == self.inner.me {
            return self.inner.handle.client(conn).await.map_err(ops::OpError::Request);
        }
        let json = match self.ask_node(wire::Query::Client(conn), conn.node()).await {
            Err(ops::OpError::UnknownNode(_)) => return Ok(ClientInfo::default()),
            r => r?,
        };
        self.decode::<ClientInfo>(&json).ok_or(ops::OpError::BadAnswer)
    }

    /// Run an operation on a connection another node holds, on that node. Bounded by
    /// `query_timeout`.
    pub async fn op(&self, conn: ConnId, op: &ops::RemoteOp) -> Result<Applied, ops::OpError> {
        let json = serde_json::to_vec(op).map_err(|_| ops::OpError::BadAnswer)?;
        let q = wire::Query::Op { client: conn, op: json.into() };
        let answer = self.ask_node(q, conn.node()).await?;
        self.decode::<ops::OpAnswer>(&answer).ok_or(ops::OpError::BadAnswer)?.into_applied()
    }

    /// Ask one node; its answer, or why there is none.
    async fn ask_node(&self, q: wire::Query, node: NodeId) -> Result<Bytes, ops::OpError> {
        if self.inner.state() != BackplaneState::Up {
            return Err(ops::OpError::BackplaneDown);
        }
        let g = self.ask(q, Some(node)).await;
        if let Some((_, json)) = g.answers.into_iter().next() {
            return Ok(json);
        }
        if g.missing.is_empty() {
            // Nobody is subscribed to its node channel and it is not in presence.
            return Err(ops::OpError::UnknownNode(node));
        }
        Err(ops::OpError::Timeout(node, self.inner.cfg.query_timeout))
    }
}
