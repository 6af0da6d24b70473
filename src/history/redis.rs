//! History and idempotency keys in Redis, shared by every node of a cluster: a client recovers
//! on whichever node it reconnects to, and a repeated idempotency key is caught whichever node
//! it reaches.
//!
//! Control plane only: every call here is `async` over a redis-rs connection and runs on a
//! control-plane tokio runtime (the cluster task, the HTTP API), never on a shard.
//!
//! # Keys (namespace `ns`, group `g`)
//!
//! The group's bus channel is `ns:g:<g>` (as the cluster names it). Its history lives beside
//! it, in the channel's hash slot (so one script may touch both on a Redis Cluster, and publish
//! on the channel with `SPUBLISH`):
//!
//! - `{ns:g:<g>}:h`: a stream, one entry per message; the entry id is `<offset>-1`, so
//!   "everything after offset N" is `XRANGE key (N+1)-0 +`. Fields: `k` (`t` text, `b`
//!   binary), `d` (the payload), `t` (Redis time in ms, for the age bound).
//! - `{ns:g:<g>}:m`: a hash, `e` (the epoch, 16 hex digits) and `o` (the last offset given).
//!
//! (When the channel name has a hash tag of its own, the keys are `ns:g:<g>:h` and `:m`, which
//! keep that tag.)
//!
//! # Appending (one atomic script, as Centrifugo does)
//!
//! [`RedisHistory::append`] runs [`APPEND_LUA`]: if the meta hash is missing (first message,
//! Redis restarted empty or flushed, or the group idle past [`META_TTL_MIN`]) it starts a new
//! epoch (the caller's fresh random one) and drops any stale stream; it increments the offset,
//! `XADD`s with `MAXLEN` (the rule's `messages_max`), trims the oldest entries past the
//! rule's age, refreshes both keys' expiry, and publishes the positioned message on the channel,
//! all in one step. Every subscriber therefore receives a group's messages in offset order,
//! and no message is in the stream without having been published or the other way round.
//!
//! # Reading
//!
//! [`READ_LUA`] reads the epoch, the last offset and the entries in one step (the same
//! missing-meta rule makes a new epoch, so a client's position from before a Redis restart is
//! answered `epoch changed`). Entries older than the rule's age are never returned: a position
//! whose next message aged out is `position older than the history keeps`.
//!
//! # Idempotency keys
//!
//! `ns:idem:<key>` holds `p` while a publish with the key is in flight and `a<answer>` once
//! answered, with `PX` = the window: claimed with `SET NX PX`, completed with `SET XX PX`,
//! released (publish failed) by a script that deletes it only while it is still `p`.
//!
//! # Bounds
//!
//! Per group: the rule's `messages_max` (`MAXLEN`) and `age_max` (trimmed on append, filtered
//! on read, key expiry). `history.groups_max`, `history.bytes_max` and
//! `history.idempotency_keys_max` bound this process's memory only; Redis's memory is bounded
//! by the rules, the keys' expiry and its own `maxmemory`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script, Value};

use super::stream::{ReadFrom, Stored, StreamLimits, Unrecoverable};
use super::{Claim, Epoch, Position, Read};
use crate::ids::GroupId;
use crate::proto::Message;

/// The epoch and last offset of a group outlive its messages by this much at least (so a
/// client whose last message aged out still recovers, with nothing to replay); past it, an
/// idle group's next message starts a new epoch.
pub const META_TTL_MIN: Duration = Duration::from_secs(24 * 3600);

/// The append script. KEYS: stream, meta, [channel when sharded]. ARGV: kind, data,
/// messages_max, age_ms, meta_ttl_ms, new epoch, channel ("" = no publish), sharded ("1"/"0"),
/// publish prefix. Returns {epoch, offset}. Each append inspects the 32 oldest entries for the
/// age bound (older ones go a few at a time; reads never return them anyway).
pub const APPEND_LUA: &str = r#"
local stream, meta = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
redis.call('XADD', stream, 'MAXLEN', ARGV[3], offset .. '-1', 'k', ARGV[1], 'd', ARGV[2], 't', now_ms)
local age_ms = tonumber(ARGV[4])
local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 32)
local keep = nil
for _, e in ipairs(head) do
  local ts = 0
  for i = 1, #e[2], 2 do
    if e[2][i] == 't' then ts = tonumber(e[2][i + 1]) end
  end
  if ts >= now_ms - age_ms then keep = e[1]; break end
end
if keep == nil and #head > 0 then keep = head[#head][1] end
if keep ~= nil then redis.call('XTRIM', stream, 'MINID', keep) end
redis.call('PEXPIRE', stream, age_ms)
redis.call('PEXPIRE', meta, ARGV[5])
if ARGV[7] ~= '' then
  local msg = ARGV[9] .. epoch .. ':' .. offset .. ':' .. ARGV[1] .. ARGV[2]
  if ARGV[8] == '1' then
    redis.call('SPUBLISH', ARGV[7], msg)
  else
    redis.call('PUBLISH', ARGV[7], msg)
  end
end
return {epoch, offset}
"#;

/// The read script. KEYS: stream, meta. ARGV: mode ("since"/"last"), epoch, offset (since) or
/// count (last), limit, age_ms, meta_ttl_ms, new epoch. Returns {epoch, top, status, more,
/// entries...}; status "ok", "epoch", "ahead", "old".
pub const READ_LUA: &str = r#"
local stream, meta = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now_ms - tonumber(ARGV[5])
local m = redis.call('HMGET', meta, 'e', 'o')
local epoch, top = m[1], tonumber(m[2])
if not epoch then
  epoch, top = ARGV[7], 0
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', meta, ARGV[6])
end
local function ts(e)
  for i = 1, #e[2], 2 do
    if e[2][i] == 't' then return tonumber(e[2][i + 1]) end
  end
  return 0
end
local limit = tonumber(ARGV[4])
local out = {}
local more = 0
if ARGV[1] == 'since' then
  local n = tonumber(ARGV[3])
  if ARGV[2] ~= epoch then return {epoch, top, 'epoch', 0} end
  if n > top then return {epoch, top, 'ahead', 0} end
  if n == top then return {epoch, top, 'ok', 0} end
  local entries = redis.call('XRANGE', stream, (n + 1) .. '-0', '+', 'COUNT', limit + 1)
  if #entries == 0 or entries[1][1] ~= (n + 1) .. '-1' or ts(entries[1]) < cutoff then
    return {epoch, top, 'old', 0}
  end
  for i, e in ipairs(entries) do
    if i > limit then more = 1; break end
    table.insert(out, e)
  end
else
  local want = math.min(tonumber(ARGV[3]), limit)
  local entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', want + 1)
  local fresh = {}
  for _, e in ipairs(entries) do
    if ts(e) < cutoff then break end
    table.insert(fresh, e)
  end
  if #fresh > want then more = 1; table.remove(fresh) end
  for i = #fresh, 1, -1 do table.insert(out, fresh[i]) end
end
local reply = {epoch, top, 'ok', more}
for _, e in ipairs(out) do table.insert(reply, e) end
return reply
"#;

/// Deletes an idempotency key only while it is still pending.
pub const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == 'p' then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// A connection to one Redis (`ConnectionManager`: reconnects by itself) or to a Redis Cluster
/// (routes each command by its keys' slot). Cheap to clone: both are multiplexed.
#[derive(Clone)]
pub enum RedisConn {
    /// One Redis.
    Single(redis::aio::ConnectionManager),
    /// A Redis Cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RedisConn {
    /// Connect to the first of `urls` (one Redis), or with `cluster` to the Redis Cluster they
    /// are seeds of. Must run on the tokio runtime that will use the connection (its driver
    /// task lives there).
    pub async fn connect(urls: &[String], cluster: bool) -> RedisResult<RedisConn> {
        let timeout = Duration::from_secs(2);
        match urls {
            [] => Err(err("no Redis URL")),
            [one, ..] if !cluster => {
                let client = redis::Client::open(one.as_str())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(2);
                Ok(RedisConn::Single(
                    redis::aio::ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            many => {
                let client = redis::cluster::ClusterClient::builder(many.to_vec())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()?;
                Ok(RedisConn::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where an append's positioned message goes besides the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOn {
    /// Nowhere (the caller delivers it itself).
    Nothing,
    /// `PUBLISH` on the group's channel (one Redis).
    Classic,
    /// `SPUBLISH` on the group's channel (a Redis Cluster: sharded pub/sub).
    Sharded,
}

/// Counters of the Redis backend (this node's calls).
#[derive(Debug, Default)]
pub struct RedisHistoryCounters {
    /// Messages appended.
    pub appends: AtomicU64,
    /// Appends or reads that failed (Redis unreachable or an error reply).
    pub errors: AtomicU64,
    /// Reads from a position that returned everything after it.
    pub recovered: AtomicU64,
    /// Reads from a position that could not.
    pub unrecovered: AtomicU64,
    /// Keyed publishes found to be duplicates.
    pub duplicates: AtomicU64,
}

/// History and idempotency keys in Redis. Cheap to clone (the connection is multiplexed).
#[derive(Clone)]
pub struct RedisHistory<C> {
    conn: C,
    ns: String,
    publish: PublishOn,
    /// Bytes put before the position in a published message (the bus's own framing).
    prefix: Bytes,
    window: Duration,
    append: Script,
    read: Script,
    release: Script,
    counters: std::sync::Arc<RedisHistoryCounters>,
}

/// A message as the append script publishes it: `<prefix><epoch>:<offset>:<kind><data>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Positioned {
    /// Its position in the group.
    pub position: Position,
    /// The payload.
    pub message: Message,
}

/// Parse a published message (after the caller's prefix). `None` when malformed.
pub fn decode_positioned(body: &[u8]) -> Option<Positioned> {
    let colon = body.iter().position(|&b| b == b':')?;
    let epoch: Epoch = std::str::from_utf8(&body[..colon]).ok()?.parse().ok()?;
    let rest = &body[colon + 1..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let offset: u64 = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let message = message_of(rest.get(colon + 1)?, &rest[colon + 2..])?;
    Some(Positioned { position: Position { epoch, offset }, message })
}

fn message_of(kind: &u8, data: &[u8]) -> Option<Message> {
    match kind {
        b't' => Some(Message::text(String::from_utf8(data.to_vec()).ok()?)),
        b'b' => Some(Message::Binary(Bytes::copy_from_slice(data))),
        _ => None,
    }
}

/// The hash-tagged key prefix sharing `channel`'s slot, or `None` when no key can (a channel
/// with a `}` but no valid hash tag of its own).
fn slot_prefix(channel: &str) -> Option<String> {
    if let Some(open) = channel.find('{') {
        if let Some(len) = channel[open + 1..].find('}') {
            if len > 0 {
                // The channel's own tag decides its slot; a suffix keeps it.
                return Some(channel.to_owned());
            }
        }
    }
    (!channel.contains('}')).then(|| format!("{{{channel}}}"))
}

/// A fresh random epoch (never 0).
fn fresh_epoch() -> Epoch {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Epoch(
        std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id())).max(1),
    )
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

fn err(msg: &str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected reply", msg.to_owned()))
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisHistory<C> {
    /// Over `conn`, keys under `namespace`, publishing appends as `publish` says with `prefix`
    /// before each message; idempotency keys kept for `window`.
    pub fn new(
        conn: C,
        namespace: &str,
        publish: PublishOn,
        prefix: Bytes,
        window: Duration,
    ) -> Self {
        RedisHistory {
            conn,
            ns: namespace.to_owned(),
            publish,
            prefix,
            window,
            append: Script::new(APPEND_LUA),
            read: Script::new(READ_LUA),
            release: Script::new(RELEASE_LUA),
            counters: Default::default(),
        }
    }

    /// This backend's counters.
    pub fn counters(&self) -> &RedisHistoryCounters {
        &self.counters
    }

    /// The group's bus channel (the cluster's naming: `ns:g:<group>`).
    pub fn channel(&self, group: &str) -> String {
        format!("{}:g:{group}", self.ns)
    }

    /// The group's stream and meta keys.
    pub fn keys(&self, group: &str) -> RedisResult<(String, String)> {
        let channel = self.channel(group);
        let p = slot_prefix(&channel)
            .ok_or_else(|| err("a group id with '}' and no hash tag cannot keep a history"))?;
        Ok((format!("{p}:h"), format!("{p}:m")))
    }

    fn idem_key(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.ns)
    }

    /// Append `message` to `group`'s history (bounded by `limits`), publish it positioned on
    /// the group's channel, and return its position: one atomic script.
    pub async fn append(
        &self,
        group: &str,
        limits: StreamLimits,
        message: &Message,
    ) -> RedisResult<Position> {
        self.append_with_prefix(group, limits, message, &self.prefix.clone()).await
    }

    /// [`RedisHistory::append`] with `prefix` instead of the backend's own before the
    /// published message (the bus adds per-message data there, e.g. an exclude list).
    pub async fn append_with_prefix(
        &self,
        group: &str,
        limits: StreamLimits,
        message: &Message,
        prefix: &[u8],
    ) -> RedisResult<Position> {
        let (stream, meta) = self.keys(group)?;
        let channel = self.channel(group);
        let (kind, data): (&str, &[u8]) = match message {
            Message::Text(t) => ("t", t.as_bytes()),
            Message::Binary(b) => ("b", b),
        };
        let mut inv = self.append.prepare_invoke();
        inv.key(&stream).key(&meta);
        if self.publish == PublishOn::Sharded {
            inv.key(&channel);
        }
        inv.arg(kind)
            .arg(data)
            .arg(limits.messages_max)
            .arg(millis(limits.age_max))
            .arg(millis(META_TTL_MIN.max(limits.age_max * 2)))
            .arg(fresh_epoch().to_string())
            .arg(if self.publish == PublishOn::Nothing { "" } else { channel.as_str() })
            .arg(if self.publish == PublishOn::Sharded { "1" } else { "0" })
            .arg(prefix);
        let mut conn = self.conn.clone();
        let r: RedisResult<(String, u64)> = inv.invoke_async(&mut conn).await;
        let (epoch, offset) = r.inspect_err(|_| {
            self.counters.errors.fetch_add(1, Relaxed);
        })?;
        self.counters.appends.fetch_add(1, Relaxed);
        let epoch = epoch.parse().map_err(|e: String| err(&e))?;
        Ok(Position { epoch, offset })
    }

    /// Append many messages in one round trip, in order: Redis runs a connection's commands
    /// in the order sent, so each group's messages get their offsets (and are published) in
    /// `items`' order. One result per item. Each append is an `EVAL` of the script's text, not
    /// `EVALSHA`: a script cache emptied by a Redis restart can never make one append of the
    /// batch fail while a later one succeeds (which would reorder them on retry). On a Redis
    /// Cluster (sharded publishing) a pipeline may not cross hash slots: there each group gets
    /// its own pipeline (its keys and channel share one slot), all sent concurrently.
    pub async fn append_many(&self, items: &[AppendRequest<'_>]) -> Vec<RedisResult<Position>> {
        let mut out: Vec<Option<RedisResult<Position>>> = items.iter().map(|_| None).collect();
        if self.publish == PublishOn::Sharded {
            let mut by_group: Vec<(&str, Vec<usize>)> = Vec::new();
            for (i, it) in items.iter().enumerate() {
                match by_group.iter_mut().find(|(g, _)| *g == it.group) {
                    Some((_, v)) => v.push(i),
                    None => by_group.push((it.group, vec![i])),
                }
            }
            let runs = by_group.iter().map(|(_, idx)| self.pipeline(items, idx));
            for (results, (_, idx)) in
                futures_util::future::join_all(runs).await.into_iter().zip(&by_group)
            {
                for (r, &i) in results.into_iter().zip(idx) {
                    out[i] = Some(r);
                }
            }
        } else {
            let idx: Vec<usize> = (0..items.len()).collect();
            for (r, i) in self.pipeline(items, &idx).await.into_iter().zip(idx) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| {
                let r = r.unwrap_or_else(|| Err(err("no reply for a pipelined append")));
                match &r {
                    Ok(_) => self.counters.appends.fetch_add(1, Relaxed),
                    Err(_) => self.counters.errors.fetch_add(1, Relaxed),
                };
                r
            })
            .collect()
    }

    /// One pipeline of `items[idx]`, in that order; one result per index.
    async fn pipeline(
        &self,
        items: &[AppendRequest<'_>],
        idx: &[usize],
    ) -> Vec<RedisResult<Position>> {
        let mut pipe = redis::pipe();
        let mut out: Vec<Option<RedisResult<Position>>> = Vec::with_capacity(idx.len());
        let mut sent = Vec::with_capacity(idx.len());
        for (k, it) in idx.iter().map(|&i| &items[i]).enumerate() {
            let (stream, meta) = match self.keys(it.group) {
                Ok(keys) => keys,
                Err(e) => {
                    out.push(Some(Err(e)));
                    continue;
                }
            };
            out.push(None);
            sent.push(k);
            let channel = self.channel(it.group);
            let (kind, data): (&str, &[u8]) = match it.message {
                Message::Text(t) => ("t", t.as_bytes()),
                Message::Binary(b) => ("b", b),
            };
            let sharded = self.publish == PublishOn::Sharded;
            let cmd = pipe.cmd("EVAL").arg(APPEND_LUA).arg(if sharded { 3 } else { 2 });
            cmd.arg(&stream).arg(&meta);
            if sharded {
                cmd.arg(&channel);
            }
            cmd.arg(kind)
                .arg(data)
                .arg(it.limits.messages_max)
                .arg(millis(it.limits.age_max))
                .arg(millis(META_TTL_MIN.max(it.limits.age_max * 2)))
                .arg(fresh_epoch().to_string())
                .arg(if self.publish == PublishOn::Nothing { "" } else { channel.as_str() })
                .arg(if sharded { "1" } else { "0" })
                .arg(it.prefix);
        }
        if !sent.is_empty() {
            let mut conn = self.conn.clone();
            match conn.req_packed_commands(&pipe, 0, sent.len()).await {
                Ok(values) => {
                    for (&k, v) in sent.iter().zip(values) {
                        out[k] = Some(parse_appended(v));
                    }
                }
                Err(e) => {
                    let (kind, text) = (e.kind(), e.to_string());
                    for &k in &sent {
                        out[k] = Some(Err((kind, "pipelined append failed", text.clone()).into()));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(err("no reply for a pipelined append"))))
            .collect()
    }

    /// Read `group`'s history (the same answers as the in-memory store's `read`): the newest
    /// position and the messages, or why a position cannot be recovered from.
    pub async fn read(
        &self,
        group: &GroupId,
        limits: StreamLimits,
        from: ReadFrom,
        limit: usize,
    ) -> RedisResult<Read> {
        let (stream, meta) = self.keys(group)?;
        let (mode, epoch, n) = match from {
            ReadFrom::Last(k) => ("last", String::new(), k as u64),
            ReadFrom::Since(p) => ("since", p.epoch.to_string(), p.offset),
        };
        let limit = limit.min(limits.messages_max).max(1);
        let mut conn = self.conn.clone();
        let reply: RedisResult<Vec<Value>> = self
            .read
            .key(&stream)
            .key(&meta)
            .arg(mode)
            .arg(epoch)
            .arg(n)
            .arg(limit)
            .arg(millis(limits.age_max))
            .arg(millis(META_TTL_MIN.max(limits.age_max * 2)))
            .arg(fresh_epoch().to_string())
            .invoke_async(&mut conn)
            .await;
        let reply = reply.inspect_err(|_| {
            self.counters.errors.fetch_add(1, Relaxed);
        })?;
        let read = parse_read(reply)?;
        if let ReadFrom::Since(_) = from {
            let c = if read.outcome.is_ok() {
                &self.counters.recovered
            } else {
                &self.counters.unrecovered
            };
            c.fetch_add(1, Relaxed);
        }
        Ok(read)
    }

    /// Check an idempotency key cluster-wide and claim it if new.
    pub async fn idempotency_claim(&self, key: &str) -> RedisResult<Claim<Bytes>> {
        let k = self.idem_key(key);
        let mut conn = self.conn.clone();
        for _ in 0..3 {
            let set: Option<String> = redis::cmd("SET")
                .arg(&k)
                .arg("p")
                .arg("NX")
                .arg("PX")
                .arg(millis(self.window))
                .query_async(&mut conn)
                .await?;
            if set.is_some() {
                return Ok(Claim::New);
            }
            let v: Option<Vec<u8>> = redis::cmd("GET").arg(&k).query_async(&mut conn).await?;
            match v.as_deref() {
                // Expired between the two calls: claim again.
                None => continue,
                Some(b"p") => return Ok(Claim::InProgress),
                Some([b'a', answer @ ..]) => {
                    self.counters.duplicates.fetch_add(1, Relaxed);
                    return Ok(Claim::Duplicate(Bytes::copy_from_slice(answer)));
                }
                Some(_) => return Err(err("idempotency key holds an unknown value")),
            }
        }
        Ok(Claim::InProgress)
    }

    /// Remember the answer of a claimed key for the window.
    pub async fn idempotency_complete(&self, key: &str, answer: &[u8]) -> RedisResult<()> {
        let mut v = Vec::with_capacity(answer.len() + 1);
        v.push(b'a');
        v.extend_from_slice(answer);
        let mut conn = self.conn.clone();
        let _: Option<String> = redis::cmd("SET")
            .arg(self.idem_key(key))
            .arg(v)
            .arg("XX")
            .arg("PX")
            .arg(millis(self.window))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Forget a claimed key whose publish failed (only while it is still pending).
    pub async fn idempotency_release(&self, key: &str) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self.release.key(self.idem_key(key)).invoke_async(&mut conn).await?;
        Ok(())
    }
}

/// One append of [`RedisHistory::append_many`].
#[derive(Debug, Clone, Copy)]
pub struct AppendRequest<'a> {
    /// The group.
    pub group: &'a str,
    /// Its rule's bounds.
    pub limits: StreamLimits,
    /// The message.
    pub message: &'a Message,
    /// Bytes before the published positioned message (see [`RedisHistory::append_with_prefix`]).
    pub prefix: &'a [u8],
}

/// The append script's reply `{epoch, offset}`.
fn parse_appended(v: Value) -> RedisResult<Position> {
    let (epoch, offset): (String, u64) = redis::from_owned_redis_value(v.extract_error()?)?;
    let epoch = epoch.parse().map_err(|e: String| err(&e))?;
    Ok(Position { epoch, offset })
}

fn parse_read(reply: Vec<Value>) -> RedisResult<Read> {
    use redis::FromRedisValue;
    let mut it = reply.into_iter();
    let mut next = || it.next().ok_or_else(|| err("short read reply"));
    let epoch: String = String::from_redis_value(&next()?)?;
    let epoch: Epoch = epoch.parse().map_err(|e: String| err(&e))?;
    let top = u64::from_redis_value(&next()?)?;
    let status = String::from_redis_value(&next()?)?;
    let more = u64::from_redis_value(&next()?)? == 1;
    let position = Some(Position { epoch, offset: top });
    let outcome = match status.as_str() {
        "epoch" => Err(Unrecoverable::EpochChanged),
        "ahead" => Err(Unrecoverable::Ahead),
        "old" => Err(Unrecoverable::TooOld),
        "ok" => {
            let now = Instant::now();
            let mut msgs = Vec::new();
            for v in it {
                let (id, fields): (String, Vec<Vec<u8>>) = FromRedisValue::from_redis_value(&v)?;
                let offset: u64 = id
                    .split_once('-')
                    .and_then(|(o, _)| o.parse().ok())
                    .ok_or_else(|| err("bad stream id"))?;
                let (mut kind, mut data) = (None, None);
                for pair in fields.chunks(2) {
                    match (pair[0].as_slice(), pair.get(1)) {
                        (b"k", Some(v)) => kind = v.first().copied(),
                        (b"d", Some(v)) => data = Some(v.as_slice()),
                        _ => {}
                    }
                }
                let message = kind
                    .zip(data)
                    .and_then(|(k, d)| message_of(&k, d))
                    .ok_or_else(|| err("bad stream entry"))?;
                msgs.push(Stored { offset, message, at: now });
            }
            Ok((msgs, more))
        }
        _ => return Err(err("unknown read status")),
    };
    Ok(Read { position, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positioned_messages_round_trip() {
        let m = decode_positioned(b"00000000000000ff:42:thello:world").unwrap();
        assert_eq!(m.position, Position { epoch: Epoch(255), offset: 42 });
        assert_eq!(m.message, Message::text("hello:world"));
        let m = decode_positioned(b"1:7:b\x00\x01").unwrap();
        assert_eq!(m.message, Message::Binary(Bytes::from_static(&[0, 1])));
        for bad in [&b""[..], b"zz:1:tx", b"1:x:tx", b"1:1:", b"1:1:qx", b"1:1:t\xff"] {
            assert_eq!(decode_positioned(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_share_the_channel_slot() {
        assert_eq!(slot_prefix("rc:g:room").as_deref(), Some("{rc:g:room}"));
        assert_eq!(slot_prefix("rc:g:a{b}c").as_deref(), Some("rc:g:a{b}c"));
        assert_eq!(slot_prefix("rc:g:{}x"), None);
        assert_eq!(slot_prefix("rc:g:a}b"), None);
    }
}
