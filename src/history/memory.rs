//! The single-node backend: every group's history in this process's memory, bounded in groups,
//! messages, age and bytes; idempotency keys in a bounded table.
//!
//! Groups are spread over striped mutexes (a publish to one group locks one stripe; a batch
//! locks the stripes it needs in ascending order, so two batches never deadlock). Positions
//! are assigned and the publish is handed to the shards (`fan_out`) under the same locks: a
//! shard's inbox therefore holds a group's messages in offset order, which is what makes the
//! recovery seam exact (see [`super::HistoryBackend`]).
//!
//! Epochs: each group's history gets a fresh epoch when it is created: at start-up (every
//! history is empty after a restart) and after the group was forgotten to stay within
//! `groups_max`. A group whose messages all aged out keeps its epoch and offset, so a client
//! that saw its last message still recovers (with nothing to replay).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use crate::ids::GroupId;

use super::stream::{Evicted, Stream};
use super::{
    AppendItem, Appended, Claim, Epoch, HistoryBackend, HistoryConfig, HistoryCounters,
    IdempotencyTable, Read, ReadFrom, Rules, Stored, StreamLimits, Unrecoverable,
};

const STRIPES_MAX: usize = 64;

type Stripe = HashMap<GroupId, Stream>;

/// History and idempotency keys of one node, in memory.
pub struct MemoryHistory {
    rules: Rules,
    stripes: Box<[Mutex<Stripe>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Groups one stripe may hold: `groups_max` split over the stripes.
    stripe_groups_max: usize,
    bytes_max: usize,
    bytes: AtomicUsize,
    groups: AtomicUsize,
    epoch_base: u64,
    epochs_made: AtomicU64,
    /// Next stripe [`MemoryHistory::sweep`] visits.
    sweep_next: AtomicUsize,
    idempotency: Mutex<IdempotencyTable<Bytes>>,
    stored: AtomicU64,
    evicted: AtomicU64,
    evicted_bytes: AtomicU64,
    groups_evicted: AtomicU64,
    recovered: AtomicU64,
    unrecovered: AtomicU64,
    duplicates: AtomicU64,
}

/// splitmix64: spreads consecutive numbers over the whole u64 range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl MemoryHistory {
    /// A store for `config` (validate it first; an invalid pattern is an error here too).
    pub fn new(config: &HistoryConfig) -> Result<Self, String> {
        let rules = Rules::new(&config.rules)?;
        let stripes = STRIPES_MAX.min(config.groups_max.max(1));
        let hasher = std::collections::hash_map::RandomState::new();
        // Random per process (RandomState is seeded from the OS), mixed with the clock: a
        // restarted node never reuses an epoch of its previous life.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let epoch_base = hasher.hash_one((nanos, std::process::id()));
        Ok(MemoryHistory {
            rules,
            stripes: (0..stripes).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher,
            stripe_groups_max: config.groups_max.div_ceil(stripes).max(1),
            bytes_max: config.bytes_max,
            bytes: AtomicUsize::new(0),
            groups: AtomicUsize::new(0),
            epoch_base,
            epochs_made: AtomicU64::new(0),
            sweep_next: AtomicUsize::new(0),
            idempotency: Mutex::new(IdempotencyTable::new(
                config.idempotency_window,
                config.idempotency_keys_max,
                super::config::IDEMPOTENCY_BYTES_MAX,
            )),
            stored: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            groups_evicted: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            unrecovered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        })
    }

    fn stripe_of(&self, group: &str) -> usize {
        (self.hasher.hash_one(group) as usize) % self.stripes.len()
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Stripe> {
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_epoch(&self) -> Epoch {
        let n = self.epochs_made.fetch_add(1, Relaxed);
        Epoch(mix(self.epoch_base.wrapping_add(n)).max(1))
    }

    fn account(&self, ev: Evicted) {
        if ev.messages > 0 {
            self.evicted.fetch_add(ev.messages, Relaxed);
            self.bytes.fetch_sub(ev.bytes, Relaxed);
        }
    }

    /// `group`'s stream in `stripe`, created (with a new epoch) when absent; forgets the
    /// stripe's stalest group first when the stripe is full.
    fn stream<'s>(
        &self,
        stripe: &'s mut Stripe,
        group: &GroupId,
        limits: StreamLimits,
        now: Instant,
    ) -> &'s mut Stream {
        if !stripe.contains_key(group.as_str()) {
            while stripe.len() >= self.stripe_groups_max {
                let Some(stalest) =
                    stripe.iter().min_by_key(|(_, s)| s.touched).map(|(g, _)| g.clone())
                else {
                    break;
                };
                if let Some(s) = stripe.remove(&stalest) {
                    self.evicted.fetch_add(s.len() as u64, Relaxed);
                    self.bytes.fetch_sub(s.bytes(), Relaxed);
                    self.groups.fetch_sub(1, Relaxed);
                    self.groups_evicted.fetch_add(1, Relaxed);
                }
            }
            self.groups.fetch_add(1, Relaxed);
            stripe.insert(group.clone(), Stream::new(self.new_epoch(), limits, now));
        }
        stripe.get_mut(group.as_str()).unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Store one message in `stream` and keep every bound.
    fn store(&self, stream: &mut Stream, stored: Stored, now: Instant) {
        let cost = stored.cost();
        self.bytes.fetch_add(cost, Relaxed);
        self.stored.fetch_add(1, Relaxed);
        let ev = stream.push(stored, now);
        self.account(ev);
        // The byte bound: this group's oldest messages go first (possibly the new one: its
        // position stays assigned; a reader from before it then gets `recovered: false`).
        while self.bytes.load(Relaxed) > self.bytes_max && !stream.is_empty() {
            let ev = stream.pop_oldest();
            self.evicted_bytes.fetch_add(ev.messages, Relaxed);
            self.account(ev);
        }
    }
}

impl HistoryBackend for MemoryHistory {
    fn limits_for(&self, group: &str) -> Option<StreamLimits> {
        self.rules.limits_for(group)
    }

    fn append(
        &self,
        items: &[AppendItem<'_>],
        now: Instant,
        fan_out: &mut dyn FnMut(Vec<Appended>),
    ) {
        // Lock every stripe the batch needs, in ascending order.
        let mut needed: Vec<usize> =
            items.iter().flat_map(|it| it.groups.iter().map(|(g, _)| self.stripe_of(g))).collect();
        needed.sort_unstable();
        needed.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Stripe>)> =
            needed.iter().map(|&i| (i, self.lock(i))).collect();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let mut positions = Vec::with_capacity(item.groups.len());
            for (g, limits) in &item.groups {
                let i = self.stripe_of(g);
                let k = guards
                    .binary_search_by_key(&i, |(j, _)| *j)
                    .unwrap_or_else(|_| unreachable!("every stripe of the batch is locked"));
                let stream = self.stream(&mut guards[k].1, g, *limits, now);
                positions.push((g.clone(), stream.assign(now)));
            }
            // Detached once, shared by the item's groups: the history's byte budget counts
            // the payload, so what it stores must not keep the request body (or read buffer)
            // the message was parsed from alive.
            let kept = item.message.detached();
            for (g, p) in &positions {
                let i = self.stripe_of(g);
                let k = guards
                    .binary_search_by_key(&i, |(j, _)| *j)
                    .unwrap_or_else(|_| unreachable!("every stripe of the batch is locked"));
                if let Some(stream) = guards[k].1.get_mut(g.as_str()) {
                    let stored = Stored { offset: p.offset, message: kept.clone(), at: now };
                    self.store(stream, stored, now);
                }
            }
            out.push(Appended { positions });
        }
        fan_out(out);
        drop(guards);
    }

    fn read(
        &self,
        group: &GroupId,
        from: ReadFrom,
        limit: usize,
        now: Instant,
        while_held: &mut dyn FnMut(&Read),
    ) -> Read {
        let Some(limits) = self.rules.limits_for(group) else {
            let read = Read { position: None, outcome: Err(Unrecoverable::NoHistory) };
            if matches!(from, ReadFrom::Since(_)) {
                self.unrecovered.fetch_add(1, Relaxed);
            }
            while_held(&read);
            return read;
        };
        let i = self.stripe_of(group);
        let mut stripe = self.lock(i);
        let stream = self.stream(&mut stripe, group, limits, now);
        let ev = stream.expire(now);
        self.account(ev);
        let read = Read { position: Some(stream.position()), outcome: stream.read(from, limit) };
        if matches!(from, ReadFrom::Since(_)) {
            let c = if read.outcome.is_ok() { &self.recovered } else { &self.unrecovered };
            c.fetch_add(1, Relaxed);
        }
        while_held(&read);
        read
    }

    fn idempotency_claim(&self, key: &str, now: Instant) -> Claim<Bytes> {
        let claim = self.idempotency.lock().unwrap_or_else(|e| e.into_inner()).claim(key, now);
        if matches!(claim, Claim::Duplicate(_)) {
            self.duplicates.fetch_add(1, Relaxed);
        }
        claim
    }

    fn idempotency_complete(&self, key: &str, answer: Bytes, now: Instant) {
        let cost = answer.len();
        self.idempotency.lock().unwrap_or_else(|e| e.into_inner()).complete(key, answer, cost, now);
    }

    fn idempotency_release(&self, key: &str) {
        self.idempotency.lock().unwrap_or_else(|e| e.into_inner()).release(key);
    }

    fn count_duplicate(&self) {
        self.duplicates.fetch_add(1, Relaxed);
    }

    fn sweep(&self, now: Instant) {
        if !self.rules.is_empty() {
            // A quarter of the stripes per call.
            let n = self.stripes.len().div_ceil(4);
            for _ in 0..n {
                let i = self.sweep_next.fetch_add(1, Relaxed) % self.stripes.len();
                let mut stripe = self.lock(i);
                for s in stripe.values_mut() {
                    let ev = s.expire(now);
                    self.account(ev);
                }
            }
        }
        self.idempotency.lock().unwrap_or_else(|e| e.into_inner()).expire(now);
    }

    fn counters(&self) -> HistoryCounters {
        let (keys, keys_evicted) = {
            let t = self.idempotency.lock().unwrap_or_else(|e| e.into_inner());
            (t.len() as u64, t.evicted_early)
        };
        HistoryCounters {
            history_messages_stored: self.stored.load(Relaxed),
            history_messages_evicted: self.evicted.load(Relaxed),
            history_messages_evicted_bytes: self.evicted_bytes.load(Relaxed),
            history_groups_evicted: self.groups_evicted.load(Relaxed),
            history_bytes: self.bytes.load(Relaxed) as u64,
            history_groups: self.groups.load(Relaxed) as u64,
            history_recovered: self.recovered.load(Relaxed),
            history_unrecovered: self.unrecovered.load(Relaxed),
            idempotency_duplicates: self.duplicates.load(Relaxed),
            idempotency_keys_evicted: keys_evicted,
            idempotency_keys: keys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{HistoryRule, Position};
    use crate::proto::Message;
    use std::time::Duration;

    fn config(messages: usize) -> HistoryConfig {
        HistoryConfig {
            rules: vec![HistoryRule {
                pattern: "h:*".into(),
                messages_max: messages,
                age_max: Duration::from_secs(60),
            }],
            ..Default::default()
        }
    }

    fn g(s: &str) -> GroupId {
        GroupId::new(s, 64).unwrap()
    }

    fn publish(h: &MemoryHistory, groups: &[&str], text: &str, now: Instant) -> Vec<Position> {
        let msg = Message::text(text.to_owned());
        let item = AppendItem {
            groups: groups.iter().filter_map(|s| h.limits_for(s).map(|l| (g(s), l))).collect(),
            message: &msg,
        };
        let mut got = Vec::new();
        h.append(std::slice::from_ref(&item), now, &mut |a| {
            got = a[0].positions.iter().map(|(_, p)| *p).collect()
        });
        got
    }

    #[test]
    fn a_stored_message_does_not_keep_its_request_body_alive() {
        let t = Instant::now();
        let h = MemoryHistory::new(&config(10)).unwrap();
        // A message parsed without copying: a slice of a large request body.
        let body = bytes::Bytes::from(vec![b'x'; 1 << 20]);
        let slice = body.slice(100..116);
        let msg = Message::text(tungstenite::Utf8Bytes::try_from(slice).unwrap());
        let item = AppendItem {
            groups: ["h:a", "h:b"].iter().map(|s| (g(s), h.limits_for(s).unwrap())).collect(),
            message: &msg,
        };
        h.append(std::slice::from_ref(&item), t, &mut |_| {});
        let body_range = body.as_ptr_range();
        for group in ["h:a", "h:b"] {
            let read = h.read(&g(group), ReadFrom::Last(10), 10, t, &mut |_| {});
            let (msgs, _) = read.outcome.unwrap();
            let stored = msgs[0].message.as_bytes();
            assert_eq!(stored, &body[100..116]);
            assert!(
                !body_range.contains(&stored.as_ptr()),
                "{group}: the stored message is a view into the 1 MiB body"
            );
        }
    }

    #[test]
    fn positions_epochs_and_recovery() {
        let t = Instant::now();
        let h = MemoryHistory::new(&config(2)).unwrap();
        assert!(h.limits_for("other").is_none());
        let p1 = publish(&h, &["h:a", "other"], "1", t);
        assert_eq!(p1.len(), 1, "only groups with history get positions");
        assert_eq!(p1[0].offset, 1);
        let p2 = publish(&h, &["h:a", "h:b"], "2", t);
        assert_eq!((p2[0].offset, p2[1].offset), (2, 1));
        assert_eq!(p2[0].epoch, p1[0].epoch);
        assert_ne!(p2[0].epoch, p2[1].epoch, "each group's history has its own epoch");
        publish(&h, &["h:a"], "3", t);
        let read = h.read(&g("h:a"), ReadFrom::Since(p1[0]), 10, t, &mut |_| {});
        let (msgs, more) = read.outcome.unwrap();
        assert_eq!(msgs.iter().map(|m| m.offset).collect::<Vec<_>>(), [2, 3]);
        assert!(!more);
        let too_old = Position { offset: 0, ..p1[0] };
        let read = h.read(&g("h:a"), ReadFrom::Since(too_old), 10, t, &mut |_| {});
        assert_eq!(read.outcome.unwrap_err(), Unrecoverable::TooOld);
        // A restarted node (a new store) has new epochs.
        let h2 = MemoryHistory::new(&config(2)).unwrap();
        let read = h2.read(&g("h:a"), ReadFrom::Since(p1[0]), 10, t, &mut |_| {});
        assert_eq!(read.outcome.unwrap_err(), Unrecoverable::EpochChanged);
        let c = h.counters();
        assert_eq!((c.history_messages_stored, c.history_messages_evicted), (4, 1));
        assert_eq!((c.history_recovered, c.history_unrecovered), (1, 1));
    }

    #[test]
    fn bytes_and_groups_are_bounded() {
        let t = Instant::now();
        let mut c = config(1000);
        c.bytes_max = 4096;
        c.groups_max = 1;
        let h = MemoryHistory::new(&c).unwrap();
        let big = "x".repeat(1000);
        for _ in 0..10 {
            publish(&h, &["h:a"], &big, t);
        }
        let k = h.counters();
        assert!(k.history_bytes <= 4096, "{k:?}");
        assert!(k.history_messages_evicted_bytes > 0);
        // A second group forgets the stalest one: it comes back in a new epoch.
        let first = publish(&h, &["h:a"], "a", t)[0];
        publish(&h, &["h:b"], "b", t + Duration::from_secs(1));
        assert_eq!(h.counters().history_groups, 1);
        assert_eq!(h.counters().history_groups_evicted, 1);
        let again = publish(&h, &["h:a"], "a", t + Duration::from_secs(4))[0];
        assert_ne!(again.epoch, first.epoch);
        assert_eq!(again.offset, 1);
    }
}
