//! The cluster task's history work: a clustered node keeps group history in Redis
//! (`history::redis`), so a client recovers on whichever node it reconnects to.
//!
//! - **Appends** (a publish to groups with history, handed over by `Node::publish`): run one
//!   at a time, in queue order (one publisher's messages keep their order), each one atomic
//!   script that assigns the offset, stores the message and publishes it positioned on the
//!   group's channel. Every subscribed node, this one included, delivers it from the bus. The
//!   positions go back to whoever waits: a request's reply slot (HTTP API, `Handle`) or the
//!   client that sent the command (a frame through its shard's inbox).
//! - **Reads**, concurrently (at most [`READS_IN_FLIGHT_MAX`]): a recovering join's read waits
//!   until Redis confirmed this node's subscription to the group's channel, so every message
//!   after the read reaches the member's shard, which holds them meanwhile
//!   (`history::Holds`); the answer goes back through the shard's inbox.
//!
//! Never runs on a shard; shards only `try_send` jobs (`shard::backplane::Tap::history_job`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use super::interest::Channel;
use super::Inner;
use crate::command;
use crate::history::redis::{AppendRequest, RedisConn, RedisHistory};
use crate::history::{Read, Unrecoverable};
use crate::ids::ConnId;
use crate::shard::backplane::{AppendAnswer, AppendItem, HistoryJob, ReadAnswer, ReadJob};
use crate::shard::mesh::{Recovery, ShardMsg};
use crate::shard::reply::{Answer, Appended};

/// Reads in flight at once; past it the job queue waits (it is bounded: shards then see it
/// full and answer their clients at once).
const READS_IN_FLIGHT_MAX: usize = 64;

/// Append jobs drained into one Redis pipeline (one round trip).
const APPEND_JOBS_PER_TRIP: usize = 256;

/// How long an answer to a shard is retried while the shard's inbox is full.
const SHARD_ANSWER_PATIENCE: Duration = Duration::from_secs(1);

/// Run the history jobs until the queue closes.
pub(crate) async fn run(
    inner: Arc<Inner>,
    store: RedisHistory<RedisConn>,
    mut jobs: mpsc::Receiver<HistoryJob>,
) {
    let reads = Arc::new(Semaphore::new(READS_IN_FLIGHT_MAX));
    let mut buf = Vec::new();
    let mut appends = Vec::new();
    while jobs.recv_many(&mut buf, APPEND_JOBS_PER_TRIP).await > 0 {
        for job in buf.drain(..) {
            match job {
                HistoryJob::Append(items, answer) => appends.push((items, answer)),
                HistoryJob::Read(job) => {
                    let Ok(permit) = reads.clone().acquire_owned().await else { return };
                    let (inner, store) = (inner.clone(), store.clone());
                    tokio::spawn(async move {
                        read(&inner, &store, job).await;
                        drop(permit);
                    });
                }
            }
        }
        if !appends.is_empty() {
            let results = append(&inner, &store, &appends).await;
            for ((_, answer), result) in appends.drain(..).zip(results) {
                answer_append(&inner, answer, result).await;
            }
        }
    }
}

/// Append every job's items to each of their groups, in queue order, in one pipeline (one
/// Redis round trip for the whole drained batch). One answer per job: its positions, or why
/// it failed (a job fails when any of its appends did; the others may have been delivered).
async fn append(
    inner: &Inner,
    store: &RedisHistory<RedisConn>,
    jobs: &[(Vec<AppendItem>, AppendAnswer)],
) -> Vec<Appended> {
    let prefixes: Vec<Vec<Vec<u8>>> = jobs
        .iter()
        .map(|(items, _)| {
            items.iter().map(|it| super::wire::positioned_prefix(&it.exclude)).collect()
        })
        .collect();
    let mut requests = Vec::new();
    for ((items, _), prefixes) in jobs.iter().zip(&prefixes) {
        for (item, prefix) in items.iter().zip(prefixes) {
            for (group, limits) in &item.groups {
                requests.push(AppendRequest {
                    group,
                    limits: *limits,
                    message: &item.message,
                    prefix,
                });
            }
        }
    }
    let mut results = store.append_many(&requests).await.into_iter();
    let mut out = Vec::with_capacity(jobs.len());
    for (items, _) in jobs {
        let mut positions = Vec::with_capacity(items.len());
        let mut failed = None;
        for item in items {
            let mut at = Vec::with_capacity(item.groups.len());
            for (group, _) in &item.groups {
                match results.next() {
                    Some(Ok(p)) => {
                        inner.counters.history_appends.fetch_add(1, Relaxed);
                        at.push((group.clone(), p));
                    }
                    Some(Err(e)) => {
                        inner.counters.history_append_failed.fetch_add(1, Relaxed);
                        failed.get_or_insert_with(|| (group.clone(), e.to_string()));
                    }
                    None => {
                        inner.counters.history_append_failed.fetch_add(1, Relaxed);
                        failed.get_or_insert_with(|| (group.clone(), "no reply".to_owned()));
                    }
                }
            }
            positions.push((item.index, at));
        }
        out.push(match failed {
            None => Ok(positions),
            Some((group, e)) => {
                if let Some(suppressed) = inner.log.allow("history_append") {
                    tracing::warn!(
                        suppressed,
                        group = group.as_str(),
                        "cluster: appending to a group's history in Redis failed ({e}): not \
                         delivered through that group; the publisher is told (HTTP 503, an \
                         error frame)"
                    );
                }
                Err(format!(
                    "appending to group {:?}'s history in Redis failed ({e}); the message \
                     reached nobody through it",
                    group.as_str()
                ))
            }
        });
    }
    out
}

async fn answer_append(inner: &Inner, answer: AppendAnswer, result: Appended) {
    match answer {
        AppendAnswer::Nobody => {}
        AppendAnswer::Reply(r) => r.send(Answer::Positions(result)),
        AppendAnswer::Command { conn, req_id, cmd } => {
            let text = match result {
                Ok(at) => match req_id {
                    Some(rid) => {
                        let positions: Vec<_> = at.into_iter().flat_map(|(_, p)| p).collect();
                        command::with_positions(command::ok(&rid, cmd, None), &positions)
                    }
                    None => return,
                },
                Err(why) => command::error(req_id.as_ref(), Some(cmd), &why),
            };
            to_shard(inner, conn, ShardMsg::Control(conn, text)).await;
        }
    }
}

/// Read one group's history and answer whoever asked.
async fn read(inner: &Inner, store: &RedisHistory<RedisConn>, job: Box<ReadJob>) {
    let ReadJob { group, limits, from, limit, answer } = *job;
    let joining = matches!(answer, ReadAnswer::Join { .. });
    let ready = !joining || subscribed(inner, &Channel::Group(group.clone())).await;
    inner.counters.history_reads.fetch_add(1, Relaxed);
    let result = match ready {
        true => store.read(&group, limits, from, limit).await.map_err(|e| e.to_string()),
        false => Err(format!(
            "this node's subscription to the group's channel was not confirmed within {:?}",
            inner.cfg.query_timeout
        )),
    };
    if let Err(e) = &result {
        inner.counters.history_read_failed.fetch_add(1, Relaxed);
        if let Some(suppressed) = inner.log.allow("history_read") {
            tracing::warn!(
                suppressed,
                group = group.as_str(),
                "cluster: reading a group's history in Redis failed ({e}); a recovering client \
                 is answered recovered=false"
            );
        }
    }
    match answer {
        ReadAnswer::Join { conn, req_id, since } => {
            let read =
                result.unwrap_or(Read { position: None, outcome: Err(Unrecoverable::Unavailable) });
            let r = Recovery { conn, group, req_id, since, read };
            to_shard(inner, conn, ShardMsg::Recovered(Box::new(r))).await;
        }
        ReadAnswer::Command { conn, req_id, since_given, bytes_max } => {
            let text = match result {
                Ok(read) => {
                    command::history(req_id.as_ref(), &group, &read, since_given, bytes_max)
                }
                Err(e) => command::error(
                    req_id.as_ref(),
                    Some("history"),
                    &format!("history store unavailable: {e}"),
                ),
            };
            to_shard(inner, conn, ShardMsg::Control(conn, text)).await;
        }
        ReadAnswer::Caller(tx) => {
            let _ = tx.send(result);
        }
    }
}

/// Wait (at most the query timeout) until Redis confirmed this node's subscription to `ch`.
async fn subscribed(inner: &Inner, ch: &Channel) -> bool {
    let deadline = tokio::time::Instant::now() + inner.cfg.query_timeout;
    loop {
        let changed = inner.confirmed_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if inner.confirmed.lock().unwrap_or_else(|e| e.into_inner()).contains(ch) {
            return true;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return false;
        }
    }
}

/// Queue `msg` to `conn`'s shard, retrying for a while when its inbox is full (an answer a
/// client waits for is worth a short wait on the control plane; never on a shard).
async fn to_shard(inner: &Inner, conn: ConnId, msg: ShardMsg) {
    let node = inner.handle.node();
    let Some(link) = node.links.get(conn.shard()) else { return };
    let deadline = tokio::time::Instant::now() + SHARD_ANSWER_PATIENCE;
    let mut msg = msg;
    loop {
        match link.try_send(msg) {
            Ok(()) => return,
            Err(back) if tokio::time::Instant::now() < deadline => {
                msg = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => {
                inner.counters.history_answers_dropped.fetch_add(1, Relaxed);
                if let Some(suppressed) = inner.log.allow("history_answer") {
                    tracing::warn!(
                        suppressed,
                        shard = conn.shard(),
                        "cluster: a history answer was dropped: the shard's inbox stayed full \
                         for {SHARD_ANSWER_PATIENCE:?}"
                    );
                }
                return;
            }
        }
    }
}
