//! The node's directory of interest: for each group (or uid), the set of shards that have at
//! least one local member. A publish to groups is sent only to those shards, not to every shard.
//!
//! Writes happen only when a shard gets its *first* member of a group or loses its *last* one,
//! and only that shard ever sets or clears its own bit, so updates never race each other. Reads
//! happen once per publish (not per recipient). The map is split into independently locked
//! stripes so shards touching different groups never contend; a lookup holds a read lock for one
//! hash probe.
//!
//! Ordering: a shard updates the directory *before* the join is acknowledged, so a publish that
//! starts after a join completed always reaches the new member's shard. A publish racing a join
//! may miss the joining member, as it would in any pub/sub system.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::RwLock;

/// Most shards a node may have (the width of [`ShardSet`]).
pub const SHARDS_MAX: usize = 256;

const STRIPES: usize = 64;

/// A set of shard indices.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct ShardSet([u64; SHARDS_MAX / 64]);

impl ShardSet {
    /// Every shard in `0..n`.
    pub fn all(n: usize) -> Self {
        let mut s = ShardSet::default();
        for i in 0..n.min(SHARDS_MAX) {
            s.insert(i);
        }
        s
    }

    /// Add shard `i`.
    pub fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Remove shard `i`.
    pub fn remove(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }

    /// Whether shard `i` is in the set.
    pub fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Union.
    pub fn union(&mut self, other: &ShardSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }

    /// Shard indices in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    w * 64 + b
                })
            })
        })
    }
}

/// Interest of shards in names (group ids, or uids).
pub(crate) struct Directory<K> {
    stripes: Vec<RwLock<HashMap<K, ShardSet>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K> Directory<K>
where
    K: Hash + Eq + Clone + std::borrow::Borrow<str>,
{
    pub(crate) fn new() -> Self {
        Directory {
            stripes: (0..STRIPES).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn stripe(&self, name: &str) -> &RwLock<HashMap<K, ShardSet>> {
        &self.stripes[(self.hasher.hash_one(name) as usize) % STRIPES]
    }

    /// Shard `shard` has its first member of `name`. Returns whether it is the node's first
    /// (no other shard had one): the cluster's "subscribe" signal.
    pub(crate) fn add(&self, name: &K, shard: usize) -> bool {
        let mut map = self.stripe(name.borrow()).write().unwrap_or_else(|e| e.into_inner());
        let set = map.entry(name.clone()).or_default();
        let first = set.is_empty();
        set.insert(shard);
        first
    }

    /// Shard `shard` lost its last member of `name`. Returns whether it was the node's last:
    /// the cluster's "unsubscribe" signal.
    pub(crate) fn remove(&self, name: &str, shard: usize) -> bool {
        let mut map = self.stripe(name).write().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = map.get_mut(name) {
            set.remove(shard);
            if set.is_empty() {
                map.remove(name);
                return true;
            }
        }
        false
    }

    /// Shards with members of `name`.
    pub(crate) fn shards(&self, name: &str) -> ShardSet {
        let map = self.stripe(name).read().unwrap_or_else(|e| e.into_inner());
        map.get(name).copied().unwrap_or_default()
    }

    /// Every name with at least one member on the node.
    pub(crate) fn names(&self) -> Vec<K> {
        let mut out = Vec::new();
        for s in &self.stripes {
            out.extend(s.read().unwrap_or_else(|e| e.into_inner()).keys().cloned());
        }
        out
    }

    /// Number of names with at least one member on the node.
    pub(crate) fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::GroupId;

    #[test]
    fn first_join_and_last_leave_drive_the_set() {
        let d: Directory<GroupId> = Directory::new();
        let g = GroupId::new("room", 64).unwrap();
        assert!(d.shards("room").is_empty());
        d.add(&g, 3);
        d.add(&g, 200);
        assert_eq!(d.shards("room").iter().collect::<Vec<_>>(), vec![3, 200]);
        assert_eq!(d.len(), 1);
        d.remove("room", 3);
        assert_eq!(d.shards("room").iter().collect::<Vec<_>>(), vec![200]);
        d.remove("room", 200);
        assert!(d.shards("room").is_empty());
        assert_eq!(d.len(), 0, "an empty entry is removed");
        assert!(d.names().is_empty());
    }

    #[test]
    fn shard_set_all_and_union() {
        let mut a = ShardSet::all(3);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        let mut b = ShardSet::default();
        b.insert(255);
        a.union(&b);
        assert!(a.contains(255) && a.contains(0) && !a.contains(3));
    }
}
