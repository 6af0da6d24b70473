//! State shared by every shard of a node and by the handles to it: the shards' inboxes, their
//! published counters, the open-connection count, and the directory of which shards have
//! members of which groups and uids. Everything here is thread-safe and lock-free on the
//! per-message path (the directory is read once per publish, never per recipient).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::addressing::Publish;
use crate::history::{AppendItem, HistoryBackend};
use crate::ids::{ConnId, GroupId, NodeId, Uid};
use crate::metrics::{LatencyHistogram, ShardHealth, SharedCounters};

use super::backplane::{AppendAnswer, Hint, HistoryJob};
use super::directory::{Directory, ShardSet};
use super::mesh::{Link, Outgoing, Route, ShardMsg};
use super::reply::{Answer, Request};
use super::Ctx;
use crate::command::RequestId;

/// What is known about a connection when it opens.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The request path and query of the upgrade, e.g. `/?uid=7`.
    pub path: String,
}

pub(crate) type ConnectFn = dyn Fn(&mut Ctx<'_>, ConnId, &ConnInfo) + Send + Sync;
pub(crate) type MessageFn = dyn Fn(&mut Ctx<'_>, ConnId, crate::proto::Message) + Send + Sync;
pub(crate) type CloseFn = dyn Fn(&mut Ctx<'_>, ConnId) + Send + Sync;
pub(crate) type TimerFn = dyn Fn(&mut Ctx<'_>) + Send + Sync;

/// Application callbacks, shared by every shard. Each runs on the shard that owns the
/// connection, inside its event loop: keep them short and never block.
#[derive(Default, Clone)]
pub struct Callbacks {
    pub(crate) on_connect: Option<Arc<ConnectFn>>,
    pub(crate) on_message: Option<Arc<MessageFn>>,
    pub(crate) on_close: Option<Arc<CloseFn>>,
    /// Run on shard 0 only, so a timer fires once per node per interval.
    pub(crate) timers: Vec<(Duration, Arc<TimerFn>)>,
}

/// State shared by every shard of a node and its handles.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) links: Vec<Link>,
    pub(crate) counters: Vec<SharedCounters>,
    /// Per shard: accepting, and its last housekeeping pass (readiness).
    pub(crate) health: Vec<ShardHealth>,
    /// Per shard: publish accepted → last write completed.
    pub(crate) fanout_latency: Vec<LatencyHistogram>,
    /// Open WebSocket connections on the whole node; checked only at handshake and close.
    pub(crate) open: AtomicUsize,
    pub(crate) connections_max: usize,
    /// Shards with members, per group.
    pub(crate) groups: Directory<GroupId>,
    /// Shards with bound connections, per uid.
    pub(crate) uids: Directory<Uid>,
    /// Frames encoded by handles (outside any shard).
    pub(crate) handle_frames_encoded: AtomicU64,
    /// Events a handle could not queue because a shard's inbox was full.
    pub(crate) handle_mesh_dropped: AtomicU64,
    /// Second (since `started`) of the last warning handles logged: at most one per second.
    pub(crate) handle_last_log_sec: AtomicU64,
    pub(crate) started: std::time::Instant,
    /// Whether any group keeps a history (no rule: publishes skip the history entirely).
    pub(crate) history_on: bool,
    /// Where histories and idempotency keys live (in memory on a single node).
    pub(crate) history: Arc<dyn HistoryBackend>,
    /// `wss://` sessions start here; its certificate store reloads on `SIGHUP`.
    pub(crate) tls: Option<crate::tls::TlsAcceptor>,
    /// Hand-off queues to the cluster task; `None` on a single node.
    pub(crate) tap: Option<super::backplane::Tap>,
    /// Connect authentication and origin policy, compiled from `Config::auth`.
    pub(crate) auth: crate::auth::Policy,
    /// Per-address handshake rate and open-connection counts.
    pub(crate) ips: super::ips::IpLimits,
}

/// What [`Node::publish`] did.
pub(crate) struct Published {
    /// The encoded batch (its `positions` set by an in-memory history).
    pub(crate) batch: Arc<[Outgoing]>,
    /// Shards whose inbox was full.
    pub(crate) missed: usize,
    /// The calling shard applies the batch itself.
    pub(crate) local: bool,
    /// `false`: the cluster's outbound queue was full (counted).
    pub(crate) tapped: bool,
    /// Whether appends to a history in Redis were handed to the cluster task.
    pub(crate) history: HistoryHandOff,
}

/// Appends handed to the cluster task by a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HistoryHandOff {
    /// None needed (no group with history, or the history is in memory).
    None,
    /// Queued: the cluster task answers the positions.
    Queued,
    /// Refused (the queue was full): those groups' members got nothing; the reason.
    Refused(String),
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

    /// Whether a handle may log a warning now (one per second across every handle).
    pub(crate) fn handle_log_due(&self) -> bool {
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.handle_last_log_sec.load(Ordering::Relaxed);
        last != now
            && self
                .handle_last_log_sec
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Shard `shard` has its first member of `g` (directory update plus cluster hint).
    pub(crate) fn group_add(&self, g: &GroupId, shard: usize) {
        if self.groups.add(g, shard) {
            if let Some(tap) = &self.tap {
                tap.hint(Hint::Group(g.clone()));
            }
        }
    }

    /// Shard `shard` lost its last member of `g`.
    pub(crate) fn group_remove(&self, g: &GroupId, shard: usize) {
        if self.groups.remove(g, shard) {
            if let Some(tap) = &self.tap {
                tap.hint(Hint::Group(g.clone()));
            }
        }
    }

    /// Shard `shard` has its first connection bound to `u`.
    pub(crate) fn uid_add(&self, u: &Uid, shard: usize) {
        if self.uids.add(u, shard) {
            if let Some(tap) = &self.tap {
                tap.hint(Hint::Uid(u.clone()));
            }
        }
    }

    /// Shard `shard` lost its last connection bound to `u`.
    pub(crate) fn uid_remove(&self, u: &Uid, shard: usize) {
        if self.uids.remove(u, shard) {
            if let Some(tap) = &self.tap {
                tap.hint(Hint::Uid(u.clone()));
            }
        }
    }

    pub(crate) fn release_slot(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// The shards that may hold recipients of `route`.
    pub(crate) fn shards_for(&self, route: &Route) -> ShardSet {
        match route {
            Route::All => ShardSet::all(self.links.len()),
            Route::Groups(groups) => {
                let mut set = ShardSet::default();
                for g in groups {
                    set.union(&self.groups.shards(g));
                }
                set
            }
            Route::Uids(uids) => {
                let mut set = ShardSet::default();
                for u in uids {
                    set.union(&self.uids.shards(u));
                }
                set
            }
            Route::Clients(ids) => {
                let mut set = ShardSet::default();
                for id in ids.iter().filter(|id| id.node() == self.id) {
                    if id.shard() < self.links.len() {
                        set.insert(id.shard());
                    }
                }
                set
            }
        }
    }

    /// Encode a batch of publishes (once each), give those addressed to groups with history
    /// their positions, and send the batch to every shard that may hold recipients except
    /// `skip` (see [`Node::send_publish`]). Returns the batch, the number of shards whose inbox
    /// was full, and whether the calling shard (`skip`) must apply the batch itself.
    ///
    /// With history, the positions are assigned and the batch queued to the shards under the
    /// history's per-group order (`HistoryBackend::append`), so every inbox holds a group's
    /// messages in offset order: the seam of a recovering join relies on it. A positioned
    /// batch from a shard goes through that shard's own inbox too (not applied at once), so
    /// it cannot overtake older messages of the group still waiting there.
    ///
    /// On a clustered node the batch is also handed to the cluster task for the other nodes
    /// (`tap_request`: non-zero asks them for a report); the last value returned is `false`
    /// when the cluster's outbound queue was full (counted there).
    ///
    /// A clustered node keeps group history in Redis: there a publish's groups with history
    /// are taken out of its route and handed to the cluster task (`HistoryJob::Append`), which
    /// appends and publishes each message positioned on the group's channel; every node, this
    /// one included, delivers it from the bus, so each node sees a group's messages in offset
    /// order. The positions are answered to `request` (an `Answer::Positions`) or, for a
    /// client's command, to `command`'s connection through its shard's inbox.
    pub(crate) fn publish(
        &self,
        batch: Vec<Publish>,
        skip: Option<usize>,
        mut request: Option<&mut Request>,
        tap_request: u64,
        command: Option<(ConnId, Option<RequestId>, &'static str)>,
    ) -> Published {
        let tap = |batch: &Arc<[Outgoing]>| match &self.tap {
            Some(tap) => tap.publish_with_request(batch, tap_request),
            None => true,
        };
        let mut outgoing: Vec<Outgoing> = batch
            .into_iter()
            .map(|p| Outgoing::new(super::core::route_of(p.to), p.exclude, p.message))
            .collect();
        let mut history = HistoryHandOff::None;
        if let (true, Some(tap)) = (self.history_on, &self.tap) {
            history = self.hand_off_appends(tap, &mut outgoing, request.as_deref_mut(), command);
        } else if self.history_on {
            let mut at = Vec::new();
            let mut messages = Vec::new();
            let mut groups = Vec::new();
            for (i, o) in outgoing.iter().enumerate() {
                if let Route::Groups(gs) = &o.route {
                    let with: Vec<_> = gs
                        .iter()
                        .filter_map(|g| self.history.limits_for(g).map(|l| (g.clone(), l)))
                        .collect();
                    if !with.is_empty() {
                        at.push(i);
                        messages.push(o.message.clone());
                        groups.push(with);
                    }
                }
            }
            if !at.is_empty() {
                let items: Vec<AppendItem<'_>> = groups
                    .into_iter()
                    .zip(&messages)
                    .map(|(groups, message)| AppendItem { groups, message })
                    .collect();
                let mut done = None;
                let mut pending = Some(outgoing);
                self.history.append(&items, std::time::Instant::now(), &mut |appended| {
                    let Some(mut outgoing) = pending.take() else { return };
                    for (&i, a) in at.iter().zip(appended) {
                        outgoing[i].positions = a.positions.into_boxed_slice();
                    }
                    let batch: Arc<[Outgoing]> = outgoing.into();
                    let tapped = tap(&batch);
                    let missed = self.send_publish(&batch, None, skip, request.take());
                    done = Some(Published {
                        batch,
                        missed,
                        local: false,
                        tapped,
                        history: HistoryHandOff::None,
                    });
                });
                return done.unwrap_or_else(|| unreachable!("append calls fan_out once"));
            }
        }
        let batch: Arc<[Outgoing]> = outgoing.into();
        let tapped = tap(&batch);
        let missed = self.send_publish(&batch, skip, None, request);
        Published { batch, missed, local: skip.is_some(), tapped, history }
    }

    /// Take the groups with history out of each publish's route and queue their appends to
    /// the cluster task (see [`Node::publish`]).
    fn hand_off_appends(
        &self,
        tap: &super::backplane::Tap,
        outgoing: &mut [Outgoing],
        request: Option<&mut Request>,
        command: Option<(ConnId, Option<RequestId>, &'static str)>,
    ) -> HistoryHandOff {
        let mut items = Vec::new();
        for (index, o) in outgoing.iter_mut().enumerate() {
            if let Route::Groups(gs) = &mut o.route {
                let mut with = Vec::new();
                gs.retain(|g| match self.history.limits_for(g) {
                    Some(l) => {
                        with.push((g.clone(), l));
                        false
                    }
                    None => true,
                });
                if !with.is_empty() {
                    items.push(super::backplane::AppendItem {
                        index,
                        groups: with,
                        message: o.message.clone(),
                        exclude: o.exclude.clone(),
                    });
                }
            }
        }
        if items.is_empty() {
            return HistoryHandOff::None;
        }
        let answer = match (command, request) {
            (Some((conn, req_id, cmd)), _) => AppendAnswer::Command { conn, req_id, cmd },
            (None, Some(req)) => AppendAnswer::Reply(req.reply()),
            (None, None) => AppendAnswer::Nobody,
        };
        match tap.history_job(HistoryJob::Append(items, answer)) {
            Ok(()) => HistoryHandOff::Queued,
            Err(job) => {
                let why = format!(
                    "the cluster's history queue is full ({} jobs): not appended, reached nobody \
                     through its groups with history",
                    tap.history_jobs_max()
                );
                if let HistoryJob::Append(_, AppendAnswer::Reply(r)) = job {
                    r.send(Answer::Positions(Err(why.clone())));
                }
                HistoryHandOff::Refused(why)
            }
        }
    }

    /// Send a batch of publishes to every shard that may hold recipients, except `skip` (the
    /// calling shard, which applies it itself). With `request`, each shard answers through it.
    /// Returns the shards whose inbox was full.
    /// `own` is the calling shard when it takes the batch through its own inbox: queued
    /// without a wake-up (the caller sets `Core::own_inbox`, so it drains before parking).
    pub(crate) fn send_publish(
        &self,
        batch: &Arc<[Outgoing]>,
        skip: Option<usize>,
        own: Option<usize>,
        mut request: Option<&mut Request>,
    ) -> usize {
        let mut shards = ShardSet::default();
        for o in batch.iter() {
            shards.union(&self.shards_for(&o.route));
        }
        let mut missed = 0;
        for i in shards.iter() {
            if Some(i) == skip {
                continue;
            }
            let reply = request.as_deref_mut().map(Request::reply);
            let msg = ShardMsg::Publish(batch.clone(), reply);
            let sent = if Some(i) == own {
                self.links[i].try_send_quiet(msg)
            } else {
                self.links[i].try_send(msg)
            };
            if let Err(msg) = sent {
                missed += 1;
                if let (Some(req), ShardMsg::Publish(_, Some(reply))) =
                    (request.as_deref_mut(), msg)
                {
                    req.mark_busy(reply);
                }
            }
        }
        missed
    }
}
