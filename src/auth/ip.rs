//! Per-address state: open connections per address and a handshake token bucket per address,
//! in a table of bounded size. Sans-I/O: time is passed in; no lock here (the shard layer
//! puts [`STRIPES`] of these behind mutexes, touched only at handshake and close).
//!
//! An IPv6 client usually owns a whole /64, so IPv6 addresses are keyed by their /64 prefix
//! (otherwise one host could take 2^64 "addresses"); IPv4 (and IPv4-mapped IPv6) by address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Independent tables (each with its own lock in the shard layer) the node spreads addresses
/// over, so shards handshaking at once rarely wait for each other.
pub const STRIPES: usize = 16;

/// An address as the limits see it: an IPv4 address, or the /64 prefix of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(u64);

impl IpKey {
    /// The key of `ip`. IPv4 keys carry the top bit, which is in `8000::/1`, a range no IPv6
    /// unicast source address uses, so the two kinds never collide.
    pub fn of(ip: IpAddr) -> IpKey {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => IpKey(1 << 63 | u64::from(u32::from(v4))),
            IpAddr::V6(v6) => IpKey((u128::from(v6) >> 64) as u64),
        }
    }

    /// Which of the [`STRIPES`] tables holds this key.
    pub fn stripe(self) -> usize {
        (self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % STRIPES
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left at `at`.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(burst)
    }
}

/// One table: open connections per key (an entry exists only while the count is above 0, so
/// it is bounded by the open connections) and handshake buckets (bounded by `buckets_max`).
#[derive(Debug)]
pub struct IpTable {
    open: HashMap<IpKey, u32>,
    buckets: HashMap<IpKey, Bucket>,
    buckets_max: usize,
}

/// The outcome of [`IpTable::handshake`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateVerdict {
    /// Whether the handshake may proceed.
    pub allowed: bool,
    /// Buckets forgotten before they were full to make room (counted as `ip_table_evictions`).
    pub evicted: usize,
}

impl IpTable {
    /// A table remembering at most `buckets_max` buckets (at least 1).
    pub fn new(buckets_max: usize) -> Self {
        IpTable { open: HashMap::new(), buckets: HashMap::new(), buckets_max: buckets_max.max(1) }
    }

    /// A handshake from `key` at `now`: take a token from its bucket (`rate` per second,
    /// holding at most `burst`), or refuse.
    pub fn handshake(&mut self, key: IpKey, now: Instant, rate: f64, burst: f64) -> RateVerdict {
        let mut evicted = 0;
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.buckets_max {
            evicted = self.make_room(now, rate, burst);
        }
        let b = self.buckets.entry(key).or_insert(Bucket { tokens: burst, at: now });
        let level = b.level(now, rate, burst);
        let allowed = level >= 1.0;
        *b = Bucket { tokens: if allowed { level - 1.0 } else { level }, at: now.max(b.at) };
        RateVerdict { allowed, evicted }
    }

    /// Make room for new buckets: drop every bucket that has refilled (the same as not being
    /// tracked); if that frees less than an eighth of the table, also drop the fullest ones
    /// until it does. So a sweep (O(n)) happens at most once per `buckets_max / 8` new
    /// addresses, and the addresses being limited (emptiest buckets) are kept longest.
    /// Returns how many not-yet-full buckets were dropped.
    fn make_room(&mut self, now: Instant, rate: f64, burst: f64) -> usize {
        self.buckets.retain(|_, b| b.level(now, rate, burst) < burst);
        let target = self.buckets_max - (self.buckets_max / 8).max(1);
        if self.buckets.len() <= target {
            return 0;
        }
        let excess = self.buckets.len() - target;
        let mut levels: Vec<(f64, IpKey)> =
            self.buckets.iter().map(|(k, b)| (b.level(now, rate, burst), *k)).collect();
        levels.select_nth_unstable_by(excess - 1, |a, b| b.0.total_cmp(&a.0));
        for (_, k) in &levels[..excess] {
            self.buckets.remove(k);
        }
        excess
    }

    /// A connection from `key` wants to open: count it unless `key` already has `max` open.
    pub fn open(&mut self, key: IpKey, max: usize) -> bool {
        let n = self.open.entry(key).or_insert(0);
        if (*n as usize) < max {
            *n += 1;
            true
        } else {
            if *n == 0 {
                self.open.remove(&key);
            }
            false
        }
    }

    /// A connection from `key` closed.
    pub fn close(&mut self, key: IpKey) {
        if let Some(n) = self.open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&key);
            }
        } else {
            debug_assert!(false, "close without open for {key:?}");
        }
    }

    /// Open connections counted for `key`.
    pub fn open_count(&self, key: IpKey) -> u32 {
        self.open.get(&key).copied().unwrap_or(0)
    }

    /// Buckets remembered now.
    pub fn buckets_len(&self) -> usize {
        self.buckets.len()
    }

    /// Addresses with open connections now.
    pub fn open_len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    fn v4(n: u32) -> IpKey {
        IpKey::of(IpAddr::V4(Ipv4Addr::from(n)))
    }

    #[test]
    fn keys() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::of(a), IpKey::of(b), "same /64");
        assert_ne!(IpKey::of(a), IpKey::of(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
        assert_eq!(IpKey::of(mapped), IpKey::of("10.1.2.3".parse().unwrap()));
        assert_ne!(IpKey::of(IpAddr::V6(Ipv6Addr::LOCALHOST)), v4(0));
        assert!(IpKey::of(a).stripe() < STRIPES);
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut t = IpTable::new(100);
        let k = v4(1);
        for _ in 0..4 {
            assert!(t.handshake(k, t0, 2.0, 4.0).allowed);
        }
        assert!(!t.handshake(k, t0, 2.0, 4.0).allowed);
        // Half a second later: one token back.
        let t1 = t0 + Duration::from_millis(500);
        assert!(t.handshake(k, t1, 2.0, 4.0).allowed);
        assert!(!t.handshake(k, t1, 2.0, 4.0).allowed);
        // Other addresses are independent.
        assert!(t.handshake(v4(2), t1, 2.0, 4.0).allowed);
        // A clock that goes backwards (time passed in) never adds tokens.
        assert!(!t.handshake(k, t0, 2.0, 4.0).allowed);
    }

    #[test]
    fn open_counts_per_address() {
        let mut t = IpTable::new(10);
        let k = v4(7);
        assert!(t.open(k, 2) && t.open(k, 2));
        assert!(!t.open(k, 2));
        assert!(t.open(v4(8), 2));
        t.close(k);
        assert_eq!(t.open_count(k), 1);
        assert!(t.open(k, 2));
        t.close(k);
        t.close(k);
        assert_eq!(t.open_len(), 1, "no entry is kept for an address with nothing open");
        assert!(!t.open(v4(9), 0));
        assert_eq!(t.open_len(), 1);
    }

    #[test]
    fn table_stays_bounded_and_keeps_limited_addresses() {
        let t0 = Instant::now();
        let mut t = IpTable::new(64);
        // Address 0 is being limited: its bucket is empty.
        let hot = v4(0);
        while t.handshake(hot, t0, 1.0, 3.0).allowed {}
        let mut evicted = 0;
        for i in 1..10_000u32 {
            let v = t.handshake(v4(i), t0, 1.0, 3.0);
            assert!(v.allowed);
            evicted += v.evicted;
            assert!(t.buckets_len() <= 64);
        }
        assert!(evicted > 0);
        assert!(!t.handshake(hot, t0, 1.0, 3.0).allowed, "the limited address was kept");
        // Once buckets refill they are swept without counting as evictions.
        let later = t0 + Duration::from_secs(10);
        let v = t.handshake(v4(20_000), later, 1.0, 3.0);
        assert_eq!(v.evicted, 0);
        assert!(t.buckets_len() <= 2);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap as Model;

        #[derive(Debug, Clone)]
        enum Op {
            Handshake(u8, u16),
            Open(u8),
            Close(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..40, 0u16..500).prop_map(|(k, dt)| Op::Handshake(k, dt)),
                (0u8..40).prop_map(Op::Open),
                (0u8..40).prop_map(Op::Close),
            ]
        }

        proptest! {
            /// Open counts match a plain map; the bucket table never exceeds its bound; and
            /// while nothing is evicted, no address gets more than burst + rate x elapsed.
            #[test]
            fn table_matches_model(ops in prop::collection::vec(op(), 0..400), max in 1usize..64) {
                let (rate, burst) = (5.0, 3.0);
                let t0 = Instant::now();
                let mut now = t0;
                let mut table = IpTable::new(max);
                let mut open: Model<u8, u32> = Model::new();
                let mut allowed: Model<u8, u32> = Model::new();
                let mut evicted_any = false;
                for op in ops {
                    match op {
                        Op::Handshake(k, dt) => {
                            now += Duration::from_millis(u64::from(dt));
                            let v = table.handshake(v4(u32::from(k)), now, rate, burst);
                            evicted_any |= v.evicted > 0;
                            if v.allowed {
                                *allowed.entry(k).or_default() += 1;
                            }
                            if !evicted_any {
                                let limit = burst + rate * now.duration_since(t0).as_secs_f64();
                                let got = allowed.get(&k).copied().unwrap_or(0);
                                prop_assert!(f64::from(got) <= limit + 1e-9, "{got} > {limit}");
                            }
                            prop_assert!(table.buckets_len() <= max);
                        }
                        Op::Open(k) => {
                            let n = open.entry(k).or_default();
                            let ok = table.open(v4(u32::from(k)), 3);
                            prop_assert_eq!(ok, *n < 3);
                            if ok {
                                *n += 1;
                            }
                        }
                        Op::Close(k) => {
                            if open.get(&k).copied().unwrap_or(0) > 0 {
                                table.close(v4(u32::from(k)));
                                *open.get_mut(&k).unwrap() -= 1;
                            }
                        }
                    }
                    let nonzero = open.values().filter(|n| **n > 0).count();
                    prop_assert_eq!(table.open_len(), nonzero);
                }
                for (k, n) in open {
                    prop_assert_eq!(table.open_count(v4(u32::from(k))), n);
                }
            }
        }
    }
}
