//! The cluster's tasks, on the `ringcast-cluster` thread's current-thread runtime:
//!
//! - **outbound**: local publishes (from the shards' and handles' bounded hand-off queue) →
//!   one bus message per channel, many per Redis round trip, in order;
//! - **inbound**: pub/sub pushes (bounded queue) → decode, check, de-duplicate → the node's
//!   shards through [`Handle`] (one mesh event per shard per drained batch); queries from other
//!   nodes answered; answers to ours gathered;
//! - **control**: interest hints → subscription state machine → `SUBSCRIBE`/`UNSUBSCRIBE`;
//!   heartbeats and presence; back-off and re-subscription after Redis comes back; queries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use super::bus::{self, Bus};
use super::interest::Channel;
use super::wire::{Body, Envelope, Query, Target, WireError};
use super::{Ask, BackplaneState, Gathered, Inner};
use crate::history::redis::{PublishOn, RedisConn, RedisHistory};
use crate::ids::{ConnId, GroupId, NodeId, Uid, NAME_BYTES_MAX};
use crate::shard::backplane::{Hint, OutboundBatch, Receivers};
use crate::shard::mesh::{Outgoing, Route};

/// How long start-up waits for Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pushes handled per inbound turn (one delivery to the shards per turn).
const INBOUND_BATCH_MAX: usize = 1024;

/// Queries from other nodes being answered at once; past it they are dropped (counted).
const ANSWERS_IN_FLIGHT_MAX: usize = 256;

/// Interest items per announcement message (the wire's lists hold at most `u16::MAX`).
const INTEREST_ITEMS_PER_MESSAGE: usize = 4096;

pub(crate) struct PendingAsk {
    pub(crate) to: Option<NodeId>,
    /// A publish's report: the nodes it was forwarded to (missing = these minus who answered).
    pub(crate) expect_from: Option<Vec<NodeId>>,
    pub(crate) expected: Option<usize>,
    pub(crate) answers: Vec<(NodeId, Bytes)>,
    pub(crate) reply: Option<oneshot::Sender<Gathered>>,
    pub(crate) deadline: Instant,
}

pub(crate) type Asks = Arc<Mutex<HashMap<u64, PendingAsk>>>;

fn presence_key(ns: &str, node: impl std::fmt::Display) -> String {
    format!("{{{ns}}}:node:{node}")
}

fn nodes_key(ns: &str) -> String {
    format!("{{{ns}}}:nodes")
}

fn start_error(msg: String) -> io::Error {
    io::Error::other(msg)
}

pub(crate) async fn run(
    inner: Arc<Inner>,
    receivers: Receivers,
    asks: mpsc::Receiver<Ask>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    let cfg = &inner.cfg;
    let (push_tx, push_rx) = mpsc::channel(cfg.inbound_messages_max);
    let _ = inner.inbound_queue.set(push_tx.downgrade());
    let urls = cfg.urls.join(",");
    let mut bus = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        bus::connect(cfg, push_tx, inner.push_dropped.clone()),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let _ = ready.send(Err(start_error(format!("cluster: connecting to {urls}: {e}"))));
            return;
        }
        Err(_) => {
            let _ = ready.send(Err(start_error(format!(
                "cluster: Redis at {urls} did not answer within {CONNECT_TIMEOUT:?}"
            ))));
            return;
        }
    };
    let token = format!("{}-{:016x}", std::process::id(), {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(inner.me.0);
        h.finish()
    });
    match claim(&mut bus, &inner, &token).await {
        Ok(true) => {}
        Ok(false) => {
            let _ = ready.send(Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "cluster: node id {} is held by another live node (its presence key {} \
                     has not expired); pick another --node-id, or leave it out to generate one",
                    inner.me,
                    presence_key(&cfg.namespace, inner.me)
                ),
            )));
            return;
        }
        Err(e) => {
            let _ = ready.send(Err(start_error(format!("cluster: registering the node: {e}"))));
            return;
        }
    }
    {
        let mut subs = inner.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.handle_wanted(Channel::All);
        subs.handle_wanted(Channel::Node(inner.me));
    }
    resync(&inner, Instant::now().into_std());
    if let Err(e) = sync_subscriptions(&inner, &mut bus).await {
        let _ = ready.send(Err(start_error(format!("cluster: subscribing: {e}"))));
        return;
    }
    if let Err(e) = heartbeat(&mut bus, &inner, &token).await {
        let _ = ready.send(Err(start_error(format!("cluster: first heartbeat: {e}"))));
        return;
    }
    // A node with history rules keeps the history in Redis, over its own connection (the
    // bus's is busy with pub/sub).
    let history_store = match inner.handle.node().history_on {
        false => None,
        true => match RedisConn::connect(&cfg.urls, cfg.bus == super::BusMode::Sharded).await {
            Ok(conn) => Some(RedisHistory::new(
                conn,
                &cfg.namespace,
                match cfg.bus {
                    super::BusMode::Classic => PublishOn::Classic,
                    super::BusMode::Sharded => PublishOn::Sharded,
                },
                Bytes::from_static(super::wire::POSITIONED_PREFIX),
                // Idempotency keys are the HTTP API's (`api::keys`), not this store's.
                Duration::ZERO,
            )),
            Err(e) => {
                let _ = ready.send(Err(start_error(format!(
                    "cluster: connecting the history store to Redis at {urls}: {e}"
                ))));
                return;
            }
        },
    };
    inner.set_state(BackplaneState::Up);
    tracing::info!(
        node_id = %inner.me,
        bus = ?cfg.bus,
        redis = %urls,
        nodes = inner.alive.lock().unwrap_or_else(|e| e.into_inner()).len(),
        "cluster backplane up"
    );
    let _ = ready.send(Ok(()));
    // Tell the others what this node receives, and ask for what they receive.
    announce_all(&inner, &mut bus, None).await;

    let pending: Asks = inner.pending.clone();
    let reconnect = Arc::new(Notify::new());
    let out =
        tokio::spawn(outbound(inner.clone(), bus.clone(), receivers.publishes, reconnect.clone()));
    let hist = history_store
        .map(|store| tokio::spawn(super::history::run(inner.clone(), store, receivers.history)));
    let inb = tokio::spawn(inbound(
        inner.clone(),
        bus.clone(),
        push_rx,
        pending.clone(),
        reconnect.clone(),
    ));
    control(&inner, &mut bus, receivers.hints, asks, &pending, stop, &token, &reconnect).await;
    out.abort();
    inb.abort();
    if let Some(h) = hist {
        h.abort();
    }
    // Leave presence at once rather than after the TTL (best effort).
    let key = presence_key(&cfg.namespace, inner.me);
    let leave = async {
        let cur: Option<String> = bus.query(redis::cmd("GET").arg(&key)).await?;
        if cur.as_deref() == Some(token.as_str()) {
            bus.query::<()>(redis::cmd("DEL").arg(&key)).await?;
        }
        bus.query::<()>(redis::cmd("SREM").arg(nodes_key(&cfg.namespace)).arg(inner.me.to_string()))
            .await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), leave).await;
    tracing::info!(node_id = %inner.me, "cluster backplane stopped");
}

/// Take the node id: `SET NX` with the presence TTL. `false`: a live node holds it.
async fn claim(bus: &mut Bus, inner: &Inner, token: &str) -> RedisResult<bool> {
    let ttl_ms = (inner.cfg.heartbeat_interval * 3).as_millis() as u64;
    let key = presence_key(&inner.cfg.namespace, inner.me);
    let set: Option<String> =
        bus.query(redis::cmd("SET").arg(&key).arg(token).arg("NX").arg("PX").arg(ttl_ms)).await?;
    Ok(set.is_some())
}

/// Refresh our presence entry, then read which nodes are alive.
async fn heartbeat(bus: &mut Bus, inner: &Inner, token: &str) -> RedisResult<()> {
    let ns = &inner.cfg.namespace;
    let ttl_ms = (inner.cfg.heartbeat_interval * 3).as_millis() as u64;
    let key = presence_key(ns, inner.me);
    let cur: Option<String> = bus.query(redis::cmd("GET").arg(&key)).await?;
    if cur.as_deref().is_some_and(|c| c != token) {
        inner.counters.node_id_clashes.fetch_add(1, Relaxed);
        if inner.log.allow("clash").is_some() {
            tracing::error!(
                node_id = %inner.me,
                "cluster: another live process holds this node's id (it claimed it while this \
                 node could not refresh its presence); client-id sends to this id are \
                 ambiguous until one of them stops"
            );
        }
    } else {
        bus.query::<()>(redis::cmd("SET").arg(&key).arg(token).arg("PX").arg(ttl_ms)).await?;
    }
    bus.query::<()>(redis::cmd("SADD").arg(nodes_key(ns)).arg(inner.me.to_string())).await?;
    let members: Vec<String> = bus.query(redis::cmd("SMEMBERS").arg(nodes_key(ns))).await?;
    let mut alive = std::collections::BTreeSet::new();
    if !members.is_empty() {
        let keys: Vec<String> = members.iter().map(|m| presence_key(ns, m)).collect();
        let vals: Vec<Option<String>> = bus.query(redis::cmd("MGET").arg(&keys)).await?;
        let mut dead = Vec::new();
        for (m, v) in members.iter().zip(vals) {
            match (v, u32::from_str_radix(m, 16)) {
                (Some(_), Ok(id)) => {
                    alive.insert(NodeId(id));
                }
                _ => dead.push(m.clone()),
            }
        }
        if !dead.is_empty() {
            bus.query::<()>(redis::cmd("SREM").arg(nodes_key(ns)).arg(&dead)).await?;
        }
    }
    alive.insert(inner.me);
    inner.remote.lock().unwrap_or_else(|e| e.into_inner()).retain(&alive);
    *inner.alive.lock().unwrap_or_else(|e| e.into_inner()) = alive;
    Ok(())
}

/// Set every channel's wanted state from the node's directory (start-up, reconnection, a
/// hint queue overflow).
fn resync(inner: &Inner, now: std::time::Instant) {
    let node = inner.handle.node();
    let mut want: HashSet<Channel> = HashSet::new();
    want.insert(Channel::All);
    want.insert(Channel::Node(inner.me));
    want.extend(node.groups.names().into_iter().map(Channel::Group));
    want.extend(node.uids.names().into_iter().map(Channel::Uid));
    let mut subs = inner.subs.lock().unwrap_or_else(|e| e.into_inner());
    for c in subs.wanted() {
        if !want.contains(&c) {
            subs.handle_unwanted(&c, now);
        }
    }
    for c in want {
        subs.handle_wanted(c);
    }
}

/// Send the subscription state machine's pending subscribes and due unsubscribes.
async fn sync_subscriptions(inner: &Inner, bus: &mut Bus) -> RedisResult<()> {
    let ns = &inner.cfg.namespace;
    let (sub, unsub) = {
        let mut s = inner.subs.lock().unwrap_or_else(|e| e.into_inner());
        (s.poll_subscribe(), s.poll_unsubscribe(std::time::Instant::now()))
    };
    if !sub.is_empty() {
        let names: Vec<String> = sub.iter().map(|c| c.name(ns)).collect();
        bus.subscribe(&names).await?;
        inner.counters.subscribes.fetch_add(names.len() as u64, Relaxed);
        inner.confirmed.lock().unwrap_or_else(|e| e.into_inner()).extend(sub.iter().cloned());
        inner.confirmed_changed.notify_waiters();
    }
    if !unsub.is_empty() {
        let names: Vec<String> = unsub.iter().map(|c| c.name(ns)).collect();
        {
            let mut confirmed = inner.confirmed.lock().unwrap_or_else(|e| e.into_inner());
            for c in &unsub {
                confirmed.remove(c);
            }
        }
        bus.unsubscribe(&names).await?;
        inner.counters.unsubscribes.fetch_add(names.len() as u64, Relaxed);
    }
    // Announce the group and uid channels that changed, so the other nodes know where a
    // publish goes (the reply's `forwarded_to`).
    let routed = |c: &&Channel| matches!(c, Channel::Group(_) | Channel::Uid(_));
    let added: Vec<Channel> = sub.iter().filter(routed).cloned().collect();
    let removed: Vec<Channel> = unsub.iter().filter(routed).cloned().collect();
    for (a, r) in chunks(&added).zip_longest_pairs(chunks(&removed)) {
        let body = Body::Interest { replace: false, reply: false, added: a, removed: r };
        send(inner, bus, &Channel::All, body).await?;
    }
    Ok(())
}

fn chunks(v: &[Channel]) -> std::vec::IntoIter<Vec<Channel>> {
    v.chunks(INTEREST_ITEMS_PER_MESSAGE).map(<[Channel]>::to_vec).collect::<Vec<_>>().into_iter()
}

trait ZipLongestPairs: Iterator<Item = Vec<Channel>> + Sized {
    /// Pairs of chunks, an empty list where one side ran out first.
    fn zip_longest_pairs<J: Iterator<Item = Vec<Channel>>>(
        self,
        other: J,
    ) -> impl Iterator<Item = (Vec<Channel>, Vec<Channel>)> {
        let mut a = self.fuse();
        let mut b = other.fuse();
        std::iter::from_fn(move || match (a.next(), b.next()) {
            (None, None) => None,
            (x, y) => Some((x.unwrap_or_default(), y.unwrap_or_default())),
        })
    }
}

impl<I: Iterator<Item = Vec<Channel>>> ZipLongestPairs for I {}

/// Send this node's whole set of group and uid channels: to every node (`to: None`, asking
/// for theirs in return: start-up and reconnection, when announcements may have been missed)
/// or to one node that asked.
async fn announce_all(inner: &Inner, bus: &mut Bus, to: Option<NodeId>) {
    let chans: Vec<Channel> = inner
        .subs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .receiving()
        .into_iter()
        .filter(|c| matches!(c, Channel::Group(_) | Channel::Uid(_)))
        .collect();
    let ch = to.map_or(Channel::All, Channel::Node);
    let mut parts = chunks(&chans).peekable();
    if parts.peek().is_none() {
        parts = vec![Vec::new()].into_iter().peekable();
    }
    for (i, added) in parts.enumerate() {
        let body = Body::Interest {
            replace: i == 0,
            reply: i == 0 && to.is_none(),
            added,
            removed: vec![],
        };
        if let Err(e) = send(inner, bus, &ch, body).await {
            if inner.log.allow("announce").is_some() {
                tracing::warn!("cluster: announcing this node's subscriptions failed: {e}");
            }
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn control(
    inner: &Arc<Inner>,
    bus: &mut Bus,
    mut hints: mpsc::Receiver<Hint>,
    mut asks: mpsc::Receiver<Ask>,
    pending: &Asks,
    mut stop: watch::Receiver<bool>,
    token: &str,
    reconnect: &Notify,
) {
    let hb = inner.cfg.heartbeat_interval;
    let backoff_min = Duration::from_millis(100);
    let mut backoff = backoff_min;
    let mut next_heartbeat = Instant::now() + hb;
    let mut need_resubscribe = false;
    // After a reconnection: send the whole interest set once subscriptions are back.
    let mut announce_needed = false;
    let mut down_since: Option<Instant> = None;
    let mut hint_buf = Vec::new();
    let tap = inner.handle.node().tap.as_ref().expect("clustered node has a tap");
    loop {
        let mut wake = next_heartbeat;
        if let Some(at) = inner.subs.lock().unwrap_or_else(|e| e.into_inner()).poll_timeout() {
            wake = wake.min(Instant::from_std(at));
        }
        if let Some(at) =
            pending.lock().unwrap_or_else(|e| e.into_inner()).values().map(|p| p.deadline).min()
        {
            wake = wake.min(at);
        }
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = reconnect.notified() => {
                need_resubscribe = true;
                next_heartbeat = Instant::now();
            }
            _ = tap.overflow_notify.notified() => {
                tap.hints_overflowed.store(false, Relaxed);
                resync(inner, std::time::Instant::now());
            }
            n = hints.recv_many(&mut hint_buf, 4096) => {
                if n == 0 {
                    break;
                }
                let now = std::time::Instant::now();
                let node = inner.handle.node();
                let mut subs = inner.subs.lock().unwrap_or_else(|e| e.into_inner());
                for h in hint_buf.drain(..) {
                    match h {
                        Hint::Group(g) => {
                            let empty = node.groups.shards(&g).is_empty();
                            let ch = Channel::Group(g);
                            if empty { subs.handle_unwanted(&ch, now) } else { subs.handle_wanted(ch) }
                        }
                        Hint::Uid(u) => {
                            let empty = node.uids.shards(&u).is_empty();
                            let ch = Channel::Uid(u);
                            if empty { subs.handle_unwanted(&ch, now) } else { subs.handle_wanted(ch) }
                        }
                    }
                }
            }
            Some(ask) = asks.recv() => {
                start_ask(inner, bus, pending, ask).await;
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        if now >= next_heartbeat {
            match heartbeat(bus, inner, token).await {
                Ok(()) => {
                    let prev = inner.set_state(BackplaneState::Up);
                    if prev == BackplaneState::Down {
                        inner.counters.reconnects.fetch_add(1, Relaxed);
                        tracing::info!(
                            down_for = ?down_since.map(|d| d.elapsed()),
                            publish_failed = inner.counters.publish_failed.load(Relaxed),
                            "cluster backplane up again: re-subscribing every channel; \
                             cross-node delivery resumes"
                        );
                        need_resubscribe = true;
                    }
                    if need_resubscribe {
                        inner.confirmed.lock().unwrap_or_else(|e| e.into_inner()).clear();
                        inner.subs.lock().unwrap_or_else(|e| e.into_inner()).handle_reconnected();
                        resync(inner, std::time::Instant::now());
                        need_resubscribe = false;
                        announce_needed = true;
                    }
                    down_since = None;
                    backoff = backoff_min;
                    next_heartbeat = now + hb;
                }
                Err(e) => {
                    inner.confirmed.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    if inner.set_state(BackplaneState::Down) != BackplaneState::Down {
                        inner.counters.disconnects.fetch_add(1, Relaxed);
                        down_since = Some(now);
                        tracing::warn!(
                            "cluster backplane down ({e}): local delivery continues, publishes \
                             to other nodes are lost and counted (cluster.publish_failed) until \
                             Redis is back; reconnecting with back-off up to {:?}",
                            inner.cfg.reconnect_delay_max
                        );
                    }
                    need_resubscribe = true;
                    next_heartbeat = now + backoff;
                    backoff = (backoff * 2).min(inner.cfg.reconnect_delay_max.max(backoff_min));
                }
            }
        }
        if inner.state() == BackplaneState::Up {
            let synced = sync_subscriptions(inner, bus).await;
            if synced.is_ok() && announce_needed {
                announce_needed = false;
                announce_all(inner, bus, None).await;
            }
            if let Err(e) = synced {
                if inner.log.allow("subscribe").is_some() {
                    tracing::warn!("cluster: subscribing failed ({e}); retrying after reconnect");
                }
                inner.set_state(BackplaneState::Down);
                inner.counters.disconnects.fetch_add(1, Relaxed);
                down_since.get_or_insert(now);
                need_resubscribe = true;
                next_heartbeat = now;
            }
        }
        expire_asks(inner, pending, Instant::now());
    }
}

/// Publish a query and register it; answers are gathered by the inbound task.
async fn start_ask(inner: &Inner, bus: &mut Bus, pending: &Asks, ask: Ask) {
    inner.counters.queries.fetch_add(1, Relaxed);
    let request = inner.next_sequence();
    let Ask { query, to, reply } = ask;
    pending.lock().unwrap_or_else(|e| e.into_inner()).insert(
        request,
        PendingAsk {
            to,
            expect_from: None,
            expected: None,
            answers: Vec::new(),
            reply: Some(reply),
            deadline: Instant::now() + inner.cfg.query_timeout,
        },
    );
    let ch = to.map_or(Channel::All, Channel::Node);
    let receivers = if inner.state() == BackplaneState::Up {
        send(inner, bus, &ch, Body::Query { request, query }).await.unwrap_or(0)
    } else {
        0
    };
    // Our own subscription to `all` receives the query too.
    let expected = if to.is_none() { receivers.saturating_sub(1) } else { receivers };
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = p.get_mut(&request) {
        a.expected = Some(expected as usize);
    }
    finish_if_complete(inner, &mut p, request);
}

fn finish_if_complete(inner: &Inner, p: &mut HashMap<u64, PendingAsk>, request: u64) {
    let done = p.get(&request).is_some_and(|a| a.expected.is_some_and(|e| a.answers.len() >= e));
    if done {
        if let Some(a) = p.remove(&request) {
            finish(inner, a);
        }
    }
}

pub(crate) fn finish(inner: &Inner, mut a: PendingAsk) {
    let answered: HashSet<NodeId> = a.answers.iter().map(|(n, _)| *n).collect();
    let alive = inner.alive.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let missing: Vec<NodeId> = match (&a.expect_from, a.to) {
        (Some(from), _) => from.iter().filter(|n| !answered.contains(n)).copied().collect(),
        (None, None) => {
            alive.into_iter().filter(|n| *n != inner.me && !answered.contains(n)).collect()
        }
        (None, Some(n)) => {
            (alive.contains(&n) && !answered.contains(&n)).then_some(n).into_iter().collect()
        }
    };
    inner.counters.query_nodes_missing.fetch_add(missing.len() as u64, Relaxed);
    if let Some(reply) = a.reply.take() {
        let _ = reply.send(Gathered { answers: a.answers, missing });
    }
}

fn expire_asks(inner: &Inner, pending: &Asks, now: Instant) {
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    let due: Vec<u64> = p.iter().filter(|(_, a)| a.deadline <= now).map(|(k, _)| *k).collect();
    for k in due {
        if let Some(a) = p.remove(&k) {
            finish(inner, a);
        }
    }
}

/// Encode and publish one message of ours; the number of nodes that received it.
async fn send(inner: &Inner, bus: &mut Bus, ch: &Channel, body: Body) -> RedisResult<u64> {
    let env = Envelope { origin: inner.me, sequence: inner.next_sequence(), body };
    let mut out = Vec::new();
    if env.encode(&mut out).is_err() {
        return Ok(0);
    }
    let n = bus.publish(&[(ch.name(&inner.cfg.namespace), out)]).await?;
    inner.counters.published.fetch_add(1, Relaxed);
    Ok(n.first().copied().unwrap_or(0))
}

/// The bus messages for one local publish: one per channel that may have recipients on
/// another node, each encoded once.
fn encode_outgoing(inner: &Inner, o: &Outgoing, request: u64, msgs: &mut Vec<(String, Vec<u8>)>) {
    let me = inner.me;
    let ns = &inner.cfg.namespace;
    let mut emit =
        |target: Target, exclude: Vec<ConnId>, channels: &mut dyn Iterator<Item = Channel>| {
            let env = Envelope {
                origin: me,
                sequence: inner.next_sequence(),
                body: Body::Publish { request, target, exclude, frame: o.frame.clone() },
            };
            let mut out = Vec::new();
            if let Err(e) = env.encode(&mut out) {
                inner.counters.publish_failed.fetch_add(1, Relaxed);
                if inner.log.allow("encode").is_some() {
                    tracing::warn!("cluster: publish not sent to other nodes: {e}");
                }
                return;
            }
            let chans: Vec<Channel> = channels.collect();
            for (i, ch) in chans.iter().enumerate() {
                if i + 1 == chans.len() {
                    msgs.push((ch.name(ns), std::mem::take(&mut out)));
                } else {
                    msgs.push((ch.name(ns), out.clone()));
                }
            }
        };
    let remote_excludes = || o.exclude.iter().filter(|c| c.node() != me).copied().collect();
    match &o.route {
        // Every group had a history (appended in Redis, which publishes it): nothing to send.
        Route::Groups(gs) if gs.is_empty() => {}
        Route::All => emit(Target::All, remote_excludes(), &mut std::iter::once(Channel::All)),
        Route::Groups(gs) => emit(
            Target::Groups(gs.clone()),
            remote_excludes(),
            &mut gs.iter().cloned().map(Channel::Group),
        ),
        Route::Uids(us) => emit(
            Target::Uids(us.clone()),
            remote_excludes(),
            &mut us.iter().cloned().map(Channel::Uid),
        ),
        Route::Clients(ids) => {
            // Only the node that holds a client gets a send to it.
            let mut by_node: BTreeMap<NodeId, Vec<ConnId>> = BTreeMap::new();
            for id in ids.iter().filter(|id| id.node() != me) {
                by_node.entry(id.node()).or_default().push(*id);
            }
            for (node, ids) in by_node {
                let exclude = o.exclude.iter().filter(|c| c.node() == node).copied().collect();
                emit(Target::Clients(ids), exclude, &mut std::iter::once(Channel::Node(node)));
            }
        }
    }
}

async fn outbound(
    inner: Arc<Inner>,
    mut bus: Bus,
    mut rx: mpsc::Receiver<OutboundBatch>,
    reconnect: Arc<Notify>,
) {
    let mut batches = Vec::new();
    let mut msgs: Vec<(String, Vec<u8>)> = Vec::new();
    loop {
        if rx.recv_many(&mut batches, inner.cfg.batch_messages_max).await == 0 {
            return;
        }
        msgs.clear();
        if let Some(tap) = &inner.handle.node().tap {
            tap.taken(batches.iter().map(|b| b.len()).sum());
        }
        for b in batches.drain(..) {
            for o in b.publishes.iter() {
                encode_outgoing(&inner, o, b.request, &mut msgs);
            }
        }
        if msgs.is_empty() {
            continue;
        }
        let n = msgs.len() as u64;
        if inner.state() != BackplaneState::Up {
            inner.counters.publish_failed.fetch_add(n, Relaxed);
            if let Some(suppressed) = inner.log.allow("publish") {
                tracing::warn!(
                    messages = n,
                    suppressed,
                    total = inner.counters.publish_failed.load(Relaxed),
                    "cluster backplane down: publishes not sent to the other nodes (local \
                     clients got them)"
                );
            }
            continue;
        }
        match bus.publish(&msgs).await {
            Ok(_) => {
                inner.counters.published.fetch_add(n, Relaxed);
            }
            Err(e) => {
                inner.counters.publish_failed.fetch_add(n, Relaxed);
                if let Some(suppressed) = inner.log.allow("publish") {
                    tracing::warn!(
                        messages = n,
                        suppressed,
                        "cluster: publishing to Redis failed ({e}): not sent to the other nodes"
                    );
                }
                reconnect.notify_one();
            }
        }
    }
}

/// Parse a channel name of ours back into a [`Channel`].
fn parse_channel(ns: &str, name: &[u8]) -> Option<Channel> {
    let name = std::str::from_utf8(name).ok()?;
    let rest = name.strip_prefix(ns)?.strip_prefix(':')?;
    if rest == "all" {
        return Some(Channel::All);
    }
    if let Some(n) = rest.strip_prefix("node:") {
        return u32::from_str_radix(n, 16).ok().map(|n| Channel::Node(NodeId(n)));
    }
    if let Some(g) = rest.strip_prefix("g:") {
        return GroupId::new(g, NAME_BYTES_MAX).ok().map(Channel::Group);
    }
    if let Some(u) = rest.strip_prefix("u:") {
        return Uid::new(u, NAME_BYTES_MAX).ok().map(Channel::Uid);
    }
    None
}

/// A message for several groups (or uids) arrives once per subscribed channel; a node
/// delivers it on the first of the target's channels it receives, so each member gets it
/// once (the shards de-duplicate members of several of the groups).
fn first_receiving(
    inner: &Inner,
    channels: impl Iterator<Item = Channel>,
    arrival: &Option<Channel>,
) -> bool {
    let subs = inner.subs.lock().unwrap_or_else(|e| e.into_inner());
    match channels.into_iter().find(|c| subs.is_receiving(c)) {
        None => true,
        Some(c) => arrival.as_ref() == Some(&c),
    }
}

fn bulk(v: Option<&Value>) -> Option<&[u8]> {
    match v {
        Some(Value::BulkString(b)) => Some(b),
        _ => None,
    }
}

async fn inbound(
    inner: Arc<Inner>,
    mut bus: Bus,
    mut rx: mpsc::Receiver<PushInfo>,
    pending: Asks,
    reconnect: Arc<Notify>,
) {
    let ns = inner.cfg.namespace.clone();
    let me = inner.me;
    let mut buf = Vec::with_capacity(INBOUND_BATCH_MAX);
    let answering = Arc::new(tokio::sync::Semaphore::new(ANSWERS_IN_FLIGHT_MAX));
    loop {
        if rx.recv_many(&mut buf, INBOUND_BATCH_MAX).await == 0 {
            return;
        }
        // Fan-out latency on this node starts when the bus message arrives.
        let accepted = std::time::Instant::now();
        let mut batch: Vec<Outgoing> = Vec::new();
        for info in buf.drain(..) {
            match info.kind {
                PushKind::Disconnection => {
                    reconnect.notify_one();
                    continue;
                }
                PushKind::Message | PushKind::SMessage => {}
                _ => continue,
            }
            let (Some(ch), Some(payload)) = (bulk(info.data.first()), bulk(info.data.get(1)))
            else {
                continue;
            };
            inner.counters.received.fetch_add(1, Relaxed);
            if let Some(split) = super::wire::split_positioned(payload) {
                // A group's message with its position, published by the history's append
                // script: every subscribed node delivers it, the origin included, so the
                // group's messages reach each node in offset order.
                let decoded = split.ok().and_then(|(exclude, body)| {
                    crate::history::redis::decode_positioned(body).map(|p| (exclude, p))
                });
                match (parse_channel(&ns, ch), decoded) {
                    (Some(Channel::Group(g)), Some((exclude, p))) => {
                        let exclude =
                            exclude.into_iter().filter(|c| c.node() == inner.me).collect();
                        let mut o =
                            Outgoing::new(Route::Groups(vec![g.clone()]), exclude, p.message);
                        o.positions = vec![(g, p.position)].into_boxed_slice();
                        o.accepted = accepted;
                        batch.push(o);
                    }
                    _ => {
                        inner.counters.rejected_malformed.fetch_add(1, Relaxed);
                        if let Some(suppressed) = inner.log.allow("malformed") {
                            tracing::warn!(
                                suppressed,
                                "cluster: dropped a malformed positioned history message"
                            );
                        }
                    }
                }
                continue;
            }
            let env = match Envelope::decode(Bytes::copy_from_slice(payload)) {
                Ok(e) => e,
                Err(WireError::Version(v)) => {
                    inner.counters.rejected_version.fetch_add(1, Relaxed);
                    if let Some(suppressed) = inner.log.allow("version") {
                        tracing::warn!(
                            version = v,
                            ours = super::wire::VERSION,
                            suppressed,
                            "cluster: dropped a bus message of an incompatible format version \
                             (is a node of another ringcast version on this bus?)"
                        );
                    }
                    continue;
                }
                Err(e) => {
                    inner.counters.rejected_malformed.fetch_add(1, Relaxed);
                    if let Some(suppressed) = inner.log.allow("malformed") {
                        tracing::warn!(suppressed, "cluster: dropped a malformed bus message: {e}");
                    }
                    continue;
                }
            };
            if env.origin == me {
                continue;
            }
            if !known_node(&inner, &mut bus, env.origin).await {
                inner.counters.rejected_unknown_node.fetch_add(1, Relaxed);
                if let Some(suppressed) = inner.log.allow("unknown") {
                    tracing::warn!(
                        origin = %env.origin,
                        suppressed,
                        "cluster: dropped a bus message from a node absent from presence"
                    );
                }
                continue;
            }
            match env.body {
                Body::Publish { request, target, exclude, frame } => {
                    let arrival = parse_channel(&ns, ch);
                    let route = match target {
                        Target::All => Route::All,
                        Target::Groups(gs) => {
                            if gs.len() > 1
                                && !first_receiving(
                                    &inner,
                                    gs.iter().cloned().map(Channel::Group),
                                    &arrival,
                                )
                            {
                                inner.counters.skipped_duplicate.fetch_add(1, Relaxed);
                                continue;
                            }
                            Route::Groups(gs)
                        }
                        Target::Uids(us) => {
                            if us.len() > 1
                                && !first_receiving(
                                    &inner,
                                    us.iter().cloned().map(Channel::Uid),
                                    &arrival,
                                )
                            {
                                inner.counters.skipped_duplicate.fetch_add(1, Relaxed);
                                continue;
                            }
                            Route::Uids(us)
                        }
                        Target::Clients(ids) => {
                            let n = ids.len();
                            let mine: Vec<ConnId> =
                                ids.into_iter().filter(|c| c.node() == me).collect();
                            if mine.len() < n {
                                inner
                                    .counters
                                    .rejected_unknown_node
                                    .fetch_add((n - mine.len()) as u64, Relaxed);
                            }
                            if mine.is_empty() {
                                continue;
                            }
                            Route::Clients(mine)
                        }
                    };
                    let exclude = exclude.into_iter().filter(|c| c.node() == me).collect();
                    let o = Outgoing::from_frame(route, exclude, frame, accepted);
                    if request == 0 {
                        batch.push(o);
                        continue;
                    }
                    // The publisher wants this node's count ("ack": "nodes"): deliver what
                    // came before (order), then this one with a reply, and report it.
                    deliver_batch(&inner, &mut batch);
                    inner.counters.delivered.fetch_add(1, Relaxed);
                    let pending = inner.handle.deliver(Arc::from([o]), true);
                    let (inner, mut bus, origin) = (inner.clone(), bus.clone(), env.origin);
                    tokio::spawn(async move {
                        let t = inner.cfg.query_timeout;
                        let r = match pending {
                            Ok(p) => tokio::time::timeout(t, p).await.ok().and_then(Result::ok),
                            Err(_) => None,
                        };
                        let r = r.and_then(|mut v| v.pop()).unwrap_or_default();
                        let body = Body::Report {
                            request,
                            queued: r.queued,
                            slow_consumers: r.slow_consumers,
                        };
                        let _ = send(&inner, &mut bus, &Channel::Node(origin), body).await;
                    });
                }
                Body::Query { request, query } => {
                    let Ok(permit) = answering.clone().try_acquire_owned() else {
                        inner.counters.inbound_dropped.fetch_add(1, Relaxed);
                        continue;
                    };
                    let (inner, mut bus, origin) = (inner.clone(), bus.clone(), env.origin);
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Some(json) = answer(&inner, query).await {
                            let body = Body::Answer { request, json: json.into() };
                            if send(&inner, &mut bus, &Channel::Node(origin), body).await.is_ok() {
                                inner.counters.queries_answered.fetch_add(1, Relaxed);
                            }
                        }
                    });
                }
                Body::Answer { request, json } => {
                    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(a) = p.get_mut(&request) {
                        a.answers.push((env.origin, json));
                        finish_if_complete(&inner, &mut p, request);
                    }
                }
                Body::Report { request, queued, slow_consumers } => {
                    let json =
                        format!(r#"{{"queued":{queued},"slow_consumers":{slow_consumers}}}"#);
                    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(a) = p.get_mut(&request) {
                        a.answers.push((env.origin, Bytes::from(json)));
                        finish_if_complete(&inner, &mut p, request);
                    }
                }
                Body::Interest { replace, reply, added, removed } => {
                    {
                        let mut r = inner.remote.lock().unwrap_or_else(|e| e.into_inner());
                        if replace {
                            r.forget(env.origin);
                        }
                        for ch in added {
                            r.add(env.origin, ch);
                        }
                        for ch in &removed {
                            r.remove(env.origin, ch);
                        }
                    }
                    if reply {
                        let (inner, mut bus, origin) = (inner.clone(), bus.clone(), env.origin);
                        tokio::spawn(
                            async move { announce_all(&inner, &mut bus, Some(origin)).await },
                        );
                    }
                }
            }
        }
        deliver_batch(&inner, &mut batch);
    }
}

/// Hand remote publishes to this node's shards: encoded once by the origin; one mesh event per
/// shard for the whole batch. A full shard inbox is counted by the node (mesh_dropped) and
/// logged there.
fn deliver_batch(inner: &Inner, batch: &mut Vec<Outgoing>) {
    if batch.is_empty() {
        return;
    }
    inner.counters.delivered.fetch_add(batch.len() as u64, Relaxed);
    let _ = inner.handle.deliver(Arc::from(std::mem::take(batch)), false);
}

/// Whether `node` is in presence (refreshed from Redis the first time it is seen).
async fn known_node(inner: &Inner, bus: &mut Bus, node: NodeId) -> bool {
    if inner.alive.lock().unwrap_or_else(|e| e.into_inner()).contains(&node) {
        return true;
    }
    let key = presence_key(&inner.cfg.namespace, node);
    match bus.query::<bool>(redis::cmd("EXISTS").arg(&key)).await {
        Ok(true) => {
            inner.alive.lock().unwrap_or_else(|e| e.into_inner()).insert(node);
            true
        }
        Ok(false) => false,
        // Redis unreachable: do not drop a message from a node we cannot check.
        Err(_) => true,
    }
}

/// This node's answer to another node's query, as JSON.
async fn answer(inner: &Inner, query: Query) -> Option<Vec<u8>> {
    let h = &inner.handle;
    let t = inner.cfg.query_timeout;
    let json = match query {
        Query::Stats => serde_json::to_vec(&tokio::time::timeout(t, h.stats()).await.ok()?.ok()?),
        Query::Group(g) => {
            serde_json::to_vec(&tokio::time::timeout(t, h.group(g)).await.ok()?.ok()?)
        }
        Query::Uid(u) => serde_json::to_vec(&tokio::time::timeout(t, h.uid(u)).await.ok()?.ok()?),
        Query::Client(c) => {
            if c.node() != inner.me {
                return None;
            }
            serde_json::to_vec(&tokio::time::timeout(t, h.client(c)).await.ok()?.ok()?)
        }
        Query::Op { client, op } => {
            if client.node() != inner.me {
                return None;
            }
            serde_json::to_vec(&super::ops::apply(h, client, &op, t).await)
        }
    };
    json.ok()
}
