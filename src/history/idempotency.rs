//! Idempotency keys: remember, for a window, what a keyed publish answered, so a repeat is
//! acknowledged with the same answer and not delivered again. Sans-I/O: time is passed in;
//! the caller holds whatever lock guards the table.
//!
//! A key is claimed before its publish is sent (`Pending`), then completed with the answer
//! (`Done`, remembered for `window` from then) or released when the publish failed so that a
//! retry may deliver. The table holds at most `keys_max` keys: past it the oldest is forgotten
//! early and counted, so memory stays bounded even under a flood of distinct keys; the same
//! happens past `bytes_max` bytes of keys and remembered answers (a batch's answer can be
//! large).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim<V> {
    /// The key is new (or its window passed): it is now pending; publish, then
    /// [`IdempotencyTable::complete`] or [`IdempotencyTable::release`].
    New,
    /// A publish with this key was answered within the window: this is its answer.
    Duplicate(V),
    /// A publish with this key is in flight right now.
    InProgress,
}

#[derive(Debug)]
enum State<V> {
    Pending,
    Done(V),
}

#[derive(Debug)]
struct Entry<V> {
    state: State<V>,
    /// Bytes counted for this key (its text plus its answer).
    cost: usize,
    expires: Instant,
    /// Matches the newest `order` record of this key (older records are stale).
    generation: u64,
}

/// Keys and their answers, bounded in count and time.
#[derive(Debug)]
pub struct IdempotencyTable<V> {
    map: HashMap<String, Entry<V>>,
    /// (expiry, key, generation), in expiry order: the window is the same for every key, so
    /// insertion order is expiry order.
    order: VecDeque<(Instant, String, u64)>,
    next_generation: u64,
    window: Duration,
    keys_max: usize,
    bytes_max: usize,
    bytes: usize,
    /// Keys forgotten before their window passed (count or byte bound).
    pub evicted_early: u64,
    /// Keys that expired normally.
    pub expired: u64,
}

impl<V: Clone> IdempotencyTable<V> {
    /// An empty table holding at most `keys_max` keys and `bytes_max` bytes.
    pub fn new(window: Duration, keys_max: usize, bytes_max: usize) -> Self {
        IdempotencyTable {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
            window,
            keys_max: keys_max.max(1),
            bytes_max,
            bytes: 0,
            evicted_early: 0,
            expired: 0,
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Check `key` and, if it is new, claim it.
    pub fn claim(&mut self, key: &str, now: Instant) -> Claim<V> {
        self.expire(now);
        if let Some(e) = self.map.get(key) {
            return match &e.state {
                State::Pending => Claim::InProgress,
                State::Done(v) => Claim::Duplicate(v.clone()),
            };
        }
        while self.map.len() >= self.keys_max {
            self.evict_oldest();
        }
        self.insert(key.to_owned(), State::Pending, key.len(), now);
        self.keep_bytes(key);
        Claim::New
    }

    /// The publish of a claimed key was answered: remember `answer` (counted as
    /// `answer_bytes`) for the window.
    pub fn complete(&mut self, key: &str, answer: V, answer_bytes: usize, now: Instant) {
        if self.map.contains_key(key) {
            self.insert(key.to_owned(), State::Done(answer), key.len() + answer_bytes, now);
            self.keep_bytes(key);
        }
    }

    /// Bytes held (keys and answers).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forget the oldest keys other than `keep` while over the byte bound.
    fn keep_bytes(&mut self, keep: &str) {
        while self.bytes > self.bytes_max && self.map.len() > 1 {
            let Some((_, oldest, _)) = self.order.front() else { break };
            if oldest == keep {
                // The newest key is the oldest record left: nothing else to free.
                break;
            }
            self.evict_oldest();
        }
    }

    /// The publish of a claimed key failed (nothing delivered): forget it, so a retry may
    /// deliver.
    pub fn release(&mut self, key: &str) {
        if matches!(self.map.get(key), Some(Entry { state: State::Pending, .. })) {
            self.remove(key);
        }
    }

    fn insert(&mut self, key: String, state: State<V>, cost: usize, now: Instant) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let expires = now + self.window;
        self.order.push_back((expires, key.clone(), generation));
        self.bytes += cost;
        if let Some(old) = self.map.insert(key, Entry { state, cost, expires, generation }) {
            self.bytes -= old.cost;
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.map.remove(key) {
            self.bytes -= e.cost;
        }
    }

    /// Forget every key whose window has passed.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            if *at > now {
                break;
            }
            let (_, key, generation) = self.order.pop_front().unwrap_or_else(|| unreachable!());
            if self.map.get(&key).is_some_and(|e| e.generation == generation) {
                self.remove(&key);
                self.expired += 1;
            }
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((_, key, generation)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|e| e.generation == generation) {
                self.remove(&key);
                self.evicted_early += 1;
                return;
            }
        }
        // Unreachable while map and order agree; never loop forever if they do not.
        self.map.clear();
        self.bytes = 0;
    }

    /// When `key` will be forgotten, if it is held.
    pub fn expires(&self, key: &str) -> Option<Instant> {
        self.map.get(key).map(|e| e.expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: Duration = Duration::from_secs(10);

    #[test]
    fn claim_complete_repeat_expire() {
        let t = Instant::now();
        let mut tab = IdempotencyTable::new(W, 10, 1 << 20);
        assert_eq!(tab.claim("k", t), Claim::New);
        assert_eq!(tab.claim("k", t), Claim::InProgress);
        tab.complete("k", 5u32, 4, t);
        assert_eq!(tab.claim("k", t + Duration::from_secs(9)), Claim::Duplicate(5));
        assert_eq!(tab.claim("k", t + W), Claim::New, "window passed");
        tab.release("k");
        assert_eq!(tab.claim("k", t + W), Claim::New, "released: a retry may deliver");
        assert_eq!(tab.expired, 1);
    }

    #[test]
    fn release_never_forgets_an_answer() {
        let t = Instant::now();
        let mut tab = IdempotencyTable::new(W, 10, 1 << 20);
        assert_eq!(tab.claim("k", t), Claim::New);
        tab.complete("k", 1u8, 1, t);
        tab.release("k");
        assert_eq!(tab.claim("k", t), Claim::Duplicate(1));
    }

    #[test]
    fn count_bound_forgets_the_oldest_and_counts_it() {
        let t = Instant::now();
        let mut tab = IdempotencyTable::new(W, 2, 1 << 20);
        for k in ["a", "b", "c"] {
            assert_eq!(tab.claim(k, t), Claim::New);
            tab.complete(k, (), 0, t);
        }
        assert_eq!(tab.len(), 2);
        assert_eq!(tab.evicted_early, 1);
        assert_eq!(tab.claim("a", t), Claim::New, "a was forgotten early");
        assert_eq!(tab.claim("c", t), Claim::Duplicate(()));
    }

    #[test]
    fn byte_bound_forgets_the_oldest_answers() {
        let t = Instant::now();
        let mut tab = IdempotencyTable::new(W, 100, 100);
        for k in ["a", "b", "c"] {
            assert_eq!(tab.claim(k, t), Claim::New);
            tab.complete(k, (), 40, t);
        }
        assert!(tab.bytes() <= 100, "{}", tab.bytes());
        assert_eq!(tab.evicted_early, 1);
        assert_eq!(tab.claim("a", t), Claim::New);
        // One answer larger than the bound is still remembered (alone).
        let mut tab = IdempotencyTable::new(W, 100, 10);
        assert_eq!(tab.claim("big", t), Claim::New);
        tab.complete("big", (), 500, t);
        assert_eq!(tab.claim("big", t), Claim::Duplicate(()));
    }

    proptest! {
        /// Against a model: within the window and the count bound, a completed key is a
        /// duplicate; the table never holds more than keys_max keys.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..6, 0u8..3, 0u64..30), 1..200)) {
            let t0 = Instant::now();
            let keys_max = 4;
            let mut tab = IdempotencyTable::new(W, keys_max, 1 << 20);
            let mut now = t0;
            // key -> (done, expires, insertion sequence)
            let mut model: HashMap<String, (bool, Instant, u64)> = HashMap::new();
            let mut seq = 0u64;
            for (k, op, dt) in ops {
                now += Duration::from_millis(dt * 100);
                let key = format!("k{k}");
                match op {
                    0 => {
                        let got = tab.claim(&key, now);
                        model.retain(|_, (_, exp, _)| *exp > now);
                        match model.get(&key) {
                            Some((true, _, _)) => prop_assert_eq!(got, Claim::Duplicate(())),
                            Some((false, _, _)) => prop_assert_eq!(got, Claim::InProgress),
                            None => {
                                prop_assert_eq!(got, Claim::New);
                                // Mirror the count bound: forget the oldest in the model too.
                                while model.len() >= keys_max {
                                    let oldest = model
                                        .iter()
                                        .min_by_key(|(_, (_, _, s))| *s)
                                        .map(|(k, _)| k.clone())
                                        .unwrap();
                                    model.remove(&oldest);
                                }
                                seq += 1;
                                model.insert(key, (false, now + W, seq));
                            }
                        }
                    }
                    1 => {
                        if model.contains_key(&key) {
                            seq += 1;
                            model.insert(key.clone(), (true, now + W, seq));
                        }
                        tab.complete(&key, (), 0, now);
                    }
                    _ => {
                        if matches!(model.get(&key), Some((false, _, _))) {
                            model.remove(&key);
                        }
                        tab.release(&key);
                    }
                }
                prop_assert!(tab.len() <= keys_max);
            }
        }
    }
}
