//! Routing: who on this shard receives a publish. Sans-I/O (uWebSockets' topic tree, quinn's
//! protocol core): it knows slots, group ids and uids; never sockets, channels, clocks, threads
//! or JSON. One `Router` per shard, owned and mutated by that shard only.
//!
//! It holds, for the connections of one shard that use them:
//! - group membership (group → member slots) and its reverse (slot → groups), so a group send
//!   costs O(members) and a close costs O(the connection's groups);
//! - uid bindings (uid → slots) and the reverse (slot → uid);
//! - presence counts.
//!
//! A connection that never joins a group nor binds a uid costs nothing here.
//!
//! The outcomes of `join`/`leave`/`bind_uid`/`close` report when this shard's *first* member of
//! a group (or uid) arrived or its *last* one left, so the shard can keep the node's
//! per-group set of interested shards up to date.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::ids::{GroupId, Slot, Uid};

/// What a publish is addressed to, as far as one shard is concerned. Client ids have already
/// been resolved to local slots by the shard (it checks the generation).
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Every connection of the shard. The router does not list every open connection (the
    /// shard iterates its own table); see [`Selection::Everyone`].
    All,
    /// Members of any of these groups (a member of several receives once).
    Groups(&'a [GroupId]),
    /// Connections bound to any of these uids (once each).
    Uids(&'a [Uid]),
    /// These slots (once each).
    Slots(&'a [Slot]),
}

/// Result of [`Router::recipients`].
#[derive(Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every open connection of the shard except the `exclude` slots passed in.
    Everyone,
    /// Exactly the slots written to `out` (no duplicates, excluded slots removed).
    Listed,
}

/// Outcome of [`Router::join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// The slot was already a member: nothing changed.
    Already,
    /// The slot joined; `first` is true when it is the group's first member on this shard.
    Added { first: bool },
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The connection is already in `groups_max` groups.
    #[error("too many groups for one connection (at most {0})")]
    TooManyGroups(usize),
}

/// Outcome of [`Router::leave`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// The slot was not a member.
    NotMember,
    /// The slot left; `last` is true when the group has no member left on this shard.
    Removed { last: bool },
}

/// Outcome of [`Router::bind_uid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// True when the slot is the uid's first connection on this shard.
    pub first: bool,
    /// The uid the slot was bound to before, if any and different, and whether that uid has
    /// no connection left on this shard.
    pub previous: Option<(Uid, bool)>,
}

/// What a closing connection left behind, for interest bookkeeping.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// Groups that lost their last member on this shard.
    pub emptied_groups: Vec<GroupId>,
    /// The uid the connection was bound to, and whether it has no connection left here.
    pub uid: Option<(Uid, bool)>,
}

/// Totals for stats and memory accounting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Groups with at least one member on this shard.
    pub groups: usize,
    /// Memberships (sum of group sizes).
    pub memberships: usize,
    /// Uids with at least one connection on this shard.
    pub uids: usize,
    /// Connections bound to a uid.
    pub bound: usize,
}

/// One shard's routing tables.
///
/// Layout (every membership is stored twice, each copy knowing where the other one is, so
/// removing it is O(1) from either side):
/// - `groups`: name → `Group`, whose `members[i]` is a slot and `back[i]` the position of
///   this group in that slot's `Conn::groups`;
/// - `conns`: slot → `Conn`, only for slots that joined a group or bound a uid; its
///   `groups[j]` is a (shared) group name and `at[j]` the slot's position in that group's
///   `members`;
/// - `uids`: uid → slots, with the slot's position kept in `Conn::uid_at`.
///
/// Names are stored once per distinct group or uid: the map key and every reverse entry are
/// clones of one `Arc<str>`.
#[derive(Debug, Default)]
pub struct Router {
    /// Keyed by client-chosen names, so it keeps std's keyed (DoS-resistant) hasher.
    groups: HashMap<GroupId, Group>,
    uids: HashMap<Uid, Vec<Slot>>,
    /// Keyed by server-assigned slots, so a cheap multiplicative hash is safe.
    conns: HashMap<Slot, Conn, BuildHasherDefault<SlotHasher>>,
    memberships: usize,
    bound: usize,
    /// `stamp[slot] == epoch` means "already written (or excluded) during this `recipients`
    /// call": O(1) de-duplication without a hash set. Grown lazily to the largest slot seen.
    stamp: Vec<u32>,
    /// Bumped once per de-duplicating `recipients` call; never 0 while in use, so freshly
    /// grown (zeroed) stamp entries never read as "seen".
    epoch: u32,
}

/// A group's members on this shard, in two parallel vectors so [`Router::members`] can lend
/// `members` as a plain slice.
#[derive(Debug, Default)]
struct Group {
    members: Vec<Slot>,
    /// `back[i]`: index of this group in `conns[members[i]].groups`.
    back: Vec<u32>,
}

/// Routing state of one slot that uses groups or uids.
#[derive(Debug, Default)]
struct Conn {
    /// Groups the slot is in: clones of the `groups` map keys (shared names).
    groups: Vec<GroupId>,
    /// `at[j]`: index of the slot in `groups[groups[j]].members`.
    at: Vec<u32>,
    /// The bound uid (a clone of the `uids` map key).
    uid: Option<Uid>,
    /// Index of the slot in `uids[uid]`; meaningless while `uid` is `None`.
    uid_at: u32,
}

impl Conn {
    /// A slot without groups or uid is dropped from `conns`, so idle connections cost nothing.
    fn is_unused(&self) -> bool {
        self.groups.is_empty() && self.uid.is_none()
    }
}

/// Hasher for slot keys. Slots are indexes the server hands out (never client input), so
/// hash flooding is not a concern and SipHash's ~20 ns per lookup is wasted on a hot path
/// (`leave`, `close` and `dissolve` do one lookup per membership touched).
#[derive(Debug, Default, Clone, Copy)]
struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not used for `u32` keys; kept correct for any other input.
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing; folding the high half down also spreads strided slots over the
        // low bits hashbrown uses for the bucket index (the top bits feed its tag byte).
        let h = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Whether two stored names are the same allocation. Every name stored in `Conn::groups` is a
/// clone of its map key, so identity is equality there, and costs no string comparison.
fn same_name(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b)
}

/// `swap_remove` that also gives memory back once a vector has shrunk to a quarter of its
/// capacity (a room that once had 100,000 members and now has 3 should not keep 400 KB).
/// Halving at a quarter keeps the amortised cost O(1).
fn swap_remove_shrinking<T>(v: &mut Vec<T>, i: usize) -> T {
    let x = v.swap_remove(i);
    if v.capacity() > 64 && v.len() < v.capacity() / 4 {
        v.shrink_to(v.capacity() / 2);
    }
    x
}

/// Mark `slot` as seen in the current epoch; true if it was not seen yet.
fn first_sighting(stamp: &mut Vec<u32>, epoch: u32, slot: Slot) -> bool {
    let i = slot as usize;
    if i >= stamp.len() {
        // Slots are dense indexes into the shard's connection table, so this is at most one
        // `u32` per table entry, allocated by the first send that reaches the slot.
        stamp.resize(i + 1, 0);
    }
    let fresh = stamp[i] != epoch;
    stamp[i] = epoch;
    fresh
}

/// Above this many excluded slots, a single-group (or single-uid) send de-duplicates with the
/// stamp vector instead of a linear `contains` per member.
const EXCLUDE_SCAN_MAX: usize = 4;

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Router::default()
    }

    /// Add `slot` to `group`, unless it is already in `groups_max` groups.
    ///
    /// Re-joining a group the slot is already in is [`Joined::Already`], even at the cap, so a
    /// repeated join is idempotent rather than an error.
    pub fn join(
        &mut self,
        slot: Slot,
        group: &GroupId,
        groups_max: usize,
    ) -> Result<Joined, JoinError> {
        let conn = self.conns.get(&slot);
        if let (Some(conn), Some((name, _))) = (conn, self.groups.get_key_value(group.as_str())) {
            if conn.groups.iter().any(|g| same_name(g, name)) {
                return Ok(Joined::Already);
            }
        }
        if conn.map_or(0, |c| c.groups.len()) >= groups_max {
            return Err(JoinError::TooManyGroups(groups_max));
        }
        // Cloning the caller's `GroupId` is a refcount increment; on an existing group the
        // stored name is the map key's, so there is one allocation per distinct name.
        let (name, entry, first) = match self.groups.entry(group.clone()) {
            Entry::Occupied(e) => (e.key().clone(), e.into_mut(), false),
            Entry::Vacant(e) => (e.key().clone(), e.insert(Group::default()), true),
        };
        let conn = self.conns.entry(slot).or_default();
        // Positions fit in `u32`: a group holds distinct `u32` slots, and a slot's groups are
        // bounded by `groups_max`.
        entry.back.push(conn.groups.len() as u32);
        conn.at.push(entry.members.len() as u32);
        entry.members.push(slot);
        conn.groups.push(name);
        self.memberships += 1;
        Ok(Joined::Added { first })
    }

    /// Remove `slot` from `group`.
    pub fn leave(&mut self, slot: Slot, group: &str) -> Left {
        let Some((name, _)) = self.groups.get_key_value(group) else {
            return Left::NotMember;
        };
        let Some(conn) = self.conns.get_mut(&slot) else {
            return Left::NotMember;
        };
        let Some(j) = conn.groups.iter().position(|g| same_name(g, name)) else {
            return Left::NotMember;
        };
        let name = conn.groups.swap_remove(j);
        let i = conn.at.swap_remove(j) as usize;
        if let (Some(moved), Some(&moved_at)) = (conn.groups.get(j), conn.at.get(j)) {
            // The slot's last group moved to `j`: repoint that group's back index.
            let moved = self.groups.get_mut(moved.as_str()).expect("reverse entry has a group");
            moved.back[moved_at as usize] = j as u32;
        }
        if conn.is_unused() {
            self.conns.remove(&slot);
        }
        let last = self.unlink_member(&name, i);
        Left::Removed { last }
    }

    /// Remove the member at `members[i]` of group `name` (its `Conn` side is already gone);
    /// drop the group when it empties. True when it emptied.
    fn unlink_member(&mut self, name: &str, i: usize) -> bool {
        self.memberships -= 1;
        let group = self.groups.get_mut(name).expect("member of a live group");
        if group.members.len() == 1 {
            self.groups.remove(name);
            return true;
        }
        swap_remove_shrinking(&mut group.members, i);
        swap_remove_shrinking(&mut group.back, i);
        if let (Some(&moved), Some(&moved_j)) = (group.members.get(i), group.back.get(i)) {
            // The group's last member moved to `i`: repoint that slot's index into the group.
            let conn = self.conns.get_mut(&moved).expect("member has routing state");
            conn.at[moved_j as usize] = i as u32;
        }
        false
    }

    /// Remove every member of `group`; the removed slots (empty if the group had none here).
    pub fn dissolve(&mut self, group: &str) -> Vec<Slot> {
        let Some(Group { members, back }) = self.groups.remove(group) else {
            return Vec::new();
        };
        for (&slot, &j) in members.iter().zip(&back) {
            let conn = self.conns.get_mut(&slot).expect("member has routing state");
            let j = j as usize;
            conn.groups.swap_remove(j);
            conn.at.swap_remove(j);
            if let (Some(moved), Some(&moved_at)) = (conn.groups.get(j), conn.at.get(j)) {
                let moved = self.groups.get_mut(moved.as_str()).expect("reverse entry has a group");
                moved.back[moved_at as usize] = j as u32;
            }
            if conn.is_unused() {
                self.conns.remove(&slot);
            }
        }
        self.memberships -= members.len();
        members
    }

    /// Bind `slot` to `uid` (replacing a previous binding).
    ///
    /// Binding again to the uid it already has changes nothing: `first: false, previous: None`.
    pub fn bind_uid(&mut self, slot: Slot, uid: &Uid) -> Bound {
        let previous = match self.conns.get(&slot).and_then(|c| c.uid.as_ref()) {
            Some(current) if current.as_str() == uid.as_str() => {
                return Bound { first: false, previous: None };
            }
            Some(_) => self.unbind_uid(slot),
            None => None,
        };
        let (name, slots, first) = match self.uids.entry(uid.clone()) {
            Entry::Occupied(e) => (e.key().clone(), e.into_mut(), false),
            Entry::Vacant(e) => (e.key().clone(), e.insert(Vec::new()), true),
        };
        let conn = self.conns.entry(slot).or_default();
        conn.uid = Some(name);
        conn.uid_at = slots.len() as u32;
        slots.push(slot);
        self.bound += 1;
        Bound { first, previous }
    }

    /// Unbind `slot` from its uid; the uid and whether it has no connection left here.
    pub fn unbind_uid(&mut self, slot: Slot) -> Option<(Uid, bool)> {
        let conn = self.conns.get_mut(&slot)?;
        let uid = conn.uid.take()?;
        let at = conn.uid_at as usize;
        if conn.is_unused() {
            self.conns.remove(&slot);
        }
        let last = self.unlink_bound(&uid, at);
        Some((uid, last))
    }

    /// Remove `uids[uid][at]` (its `Conn` side is already gone); drop the uid when it empties.
    /// True when it emptied.
    fn unlink_bound(&mut self, uid: &str, at: usize) -> bool {
        self.bound -= 1;
        let slots = self.uids.get_mut(uid).expect("bound uid is in the map");
        if slots.len() == 1 {
            self.uids.remove(uid);
            return true;
        }
        swap_remove_shrinking(slots, at);
        if let Some(&moved) = slots.get(at) {
            self.conns.get_mut(&moved).expect("bound slot has routing state").uid_at = at as u32;
        }
        false
    }

    /// Forget `slot` entirely (the connection closed): memberships and binding.
    pub fn close(&mut self, slot: Slot) -> Released {
        let Some(conn) = self.conns.remove(&slot) else {
            return Released::default();
        };
        let mut released = Released::default();
        for (name, &i) in conn.groups.into_iter().zip(&conn.at) {
            if self.unlink_member(&name, i as usize) {
                released.emptied_groups.push(name);
            }
        }
        if let Some(uid) = conn.uid {
            let last = self.unlink_bound(&uid, conn.uid_at as usize);
            released.uid = Some((uid, last));
        }
        released
    }

    /// Start a de-duplicating pass: a new epoch, and the excluded slots pre-marked as seen.
    fn begin_pass(&mut self, exclude: &[Slot]) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // After 2^32 passes an old stamp could equal the new epoch: start afresh.
            self.stamp.fill(0);
            self.epoch = 1;
        }
        for &slot in exclude {
            first_sighting(&mut self.stamp, self.epoch, slot);
        }
        self.epoch
    }

    /// Write `slots` (distinct already) minus `exclude` to `out`, cheaply when `exclude` is
    /// short: a copy, then a scan of a few excluded slots per member. `None` when `exclude` is
    /// too long for that to pay.
    fn copy_distinct(slots: &[Slot], exclude: &[Slot], out: &mut Vec<Slot>) -> Option<Selection> {
        if exclude.len() > EXCLUDE_SCAN_MAX {
            return None;
        }
        out.extend_from_slice(slots);
        if !exclude.is_empty() {
            out.retain(|s| !exclude.contains(s));
        }
        Some(Selection::Listed)
    }

    /// The recipients of `target` on this shard, minus `exclude`, each once. For
    /// [`Target::All`] nothing is written and [`Selection::Everyone`] is returned. `out` is
    /// cleared first. Costs O(members of the targets + excluded).
    pub fn recipients(
        &mut self,
        target: Target<'_>,
        exclude: &[Slot],
        out: &mut Vec<Slot>,
    ) -> Selection {
        out.clear();
        match target {
            Target::All => Selection::Everyone,
            Target::Groups(names) => {
                if let [name] = names {
                    // One group: its members are distinct already.
                    let members = self.members(name);
                    if let Some(done) = Self::copy_distinct(members, exclude, out) {
                        return done;
                    }
                }
                let epoch = self.begin_pass(exclude);
                for name in names {
                    if let Some(group) = self.groups.get(name.as_str()) {
                        for &slot in &group.members {
                            if first_sighting(&mut self.stamp, epoch, slot) {
                                out.push(slot);
                            }
                        }
                    }
                }
                Selection::Listed
            }
            Target::Uids(names) => {
                if let [name] = names {
                    let slots = self.uid_slots(name);
                    if let Some(done) = Self::copy_distinct(slots, exclude, out) {
                        return done;
                    }
                }
                let epoch = self.begin_pass(exclude);
                for name in names {
                    if let Some(slots) = self.uids.get(name.as_str()) {
                        for &slot in slots {
                            if first_sighting(&mut self.stamp, epoch, slot) {
                                out.push(slot);
                            }
                        }
                    }
                }
                Selection::Listed
            }
            Target::Slots(slots) => {
                // Not necessarily known here (the shard validated them): listed as given, once.
                let epoch = self.begin_pass(exclude);
                out.extend(
                    slots.iter().copied().filter(|&s| first_sighting(&mut self.stamp, epoch, s)),
                );
                Selection::Listed
            }
        }
    }

    /// Members of `group` on this shard (any order).
    pub fn members(&self, group: &str) -> &[Slot] {
        self.groups.get(group).map_or(&[], |g| &g.members)
    }

    /// Groups with members on this shard.
    pub fn groups(&self) -> impl Iterator<Item = &GroupId> + '_ {
        self.groups.keys()
    }

    /// Groups `slot` is a member of.
    pub fn groups_of(&self, slot: Slot) -> &[GroupId] {
        self.conns.get(&slot).map_or(&[], |c| &c.groups)
    }

    /// Whether `slot` is a member of `group`. O(the slot's groups), no hashing of `group`.
    pub fn is_member(&self, slot: Slot, group: &str) -> bool {
        self.groups_of(slot).iter().any(|g| g.as_str() == group)
    }

    /// Slots bound to `uid` on this shard.
    pub fn uid_slots(&self, uid: &str) -> &[Slot] {
        self.uids.get(uid).map_or(&[], |v| v)
    }

    /// The uid `slot` is bound to.
    pub fn uid_of(&self, slot: Slot) -> Option<&Uid> {
        self.conns.get(&slot).and_then(|c| c.uid.as_ref())
    }

    /// Give back capacity left over from a larger past (after a mass disconnect): hash maps
    /// do not shrink as entries are removed. Keeps what the current contents need.
    pub fn shrink_to_fit(&mut self) {
        self.groups.shrink_to_fit();
        self.uids.shrink_to_fit();
        self.conns.shrink_to_fit();
        let highest = self.conns.keys().max().map_or(0, |&s| s as usize + 1);
        self.stamp.truncate(highest);
        self.stamp.shrink_to_fit();
    }

    /// Totals.
    pub fn counts(&self) -> Counts {
        Counts {
            groups: self.groups.len(),
            memberships: self.memberships,
            uids: self.uids.len(),
            bound: self.bound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn g(s: &str) -> GroupId {
        GroupId::new(s, 64).unwrap()
    }

    fn u(s: &str) -> Uid {
        Uid::new(s, 64).unwrap()
    }

    fn sorted(v: &[Slot]) -> Vec<Slot> {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    }

    fn names(v: &[GroupId]) -> Vec<&str> {
        let mut v: Vec<&str> = v.iter().map(|g| g.as_str()).collect();
        v.sort_unstable();
        v
    }

    fn select(r: &mut Router, target: Target<'_>, exclude: &[Slot]) -> Vec<Slot> {
        let mut out = vec![999_999];
        assert_eq!(r.recipients(target, exclude, &mut out), Selection::Listed);
        let set: HashSet<Slot> = out.iter().copied().collect();
        assert_eq!(set.len(), out.len(), "duplicates in {out:?}");
        sorted(&out)
    }

    #[test]
    fn join_reports_first_member_and_already() {
        let mut r = Router::new();
        assert_eq!(r.join(1, &g("a"), 8), Ok(Joined::Added { first: true }));
        assert_eq!(r.join(2, &g("a"), 8), Ok(Joined::Added { first: false }));
        assert_eq!(r.join(1, &g("a"), 8), Ok(Joined::Already));
        assert_eq!(sorted(r.members("a")), [1, 2]);
        assert_eq!(names(r.groups_of(1)), ["a"]);
        assert!(r.is_member(1, "a") && r.is_member(2, "a"));
        assert!(!r.is_member(3, "a") && !r.is_member(1, "b"));
        assert_eq!(r.counts(), Counts { groups: 1, memberships: 2, uids: 0, bound: 0 });
    }

    #[test]
    fn join_shares_the_group_name() {
        let mut r = Router::new();
        r.join(1, &g("room"), 8).unwrap();
        r.join(2, &g("room"), 8).unwrap();
        let key = r.groups().next().unwrap();
        assert!(same_name(key, &r.groups_of(1)[0]));
        assert!(same_name(key, &r.groups_of(2)[0]));
    }

    #[test]
    fn join_cap_refuses_new_groups_but_not_rejoins() {
        let mut r = Router::new();
        assert_eq!(r.join(1, &g("a"), 2), Ok(Joined::Added { first: true }));
        assert_eq!(r.join(1, &g("b"), 2), Ok(Joined::Added { first: true }));
        assert_eq!(r.join(1, &g("c"), 2), Err(JoinError::TooManyGroups(2)));
        assert_eq!(r.join(1, &g("a"), 2), Ok(Joined::Already));
        assert_eq!(r.join(2, &g("a"), 0), Err(JoinError::TooManyGroups(0)));
        assert_eq!(r.counts(), Counts { groups: 2, memberships: 2, uids: 0, bound: 0 });
        assert!(r.members("c").is_empty());
    }

    #[test]
    fn leave_reports_last_member_and_not_member() {
        let mut r = Router::new();
        r.join(1, &g("a"), 8).unwrap();
        r.join(2, &g("a"), 8).unwrap();
        assert_eq!(r.leave(3, "a"), Left::NotMember);
        assert_eq!(r.leave(1, "zz"), Left::NotMember);
        assert_eq!(r.leave(1, "a"), Left::Removed { last: false });
        assert_eq!(r.leave(1, "a"), Left::NotMember);
        assert_eq!(r.leave(2, "a"), Left::Removed { last: true });
        assert_eq!(r.groups().count(), 0);
        assert_eq!(r.counts(), Counts::default());
        // Nothing left behind for slots that no longer use anything.
        assert!(r.conns.is_empty());
    }

    #[test]
    fn leave_keeps_indexes_right_after_swaps() {
        let mut r = Router::new();
        for slot in 0..6 {
            for name in ["a", "b", "c"] {
                r.join(slot, &g(name), 8).unwrap();
            }
        }
        // Remove from the middle of both a group's members and a slot's groups.
        assert_eq!(r.leave(2, "b"), Left::Removed { last: false });
        assert_eq!(r.leave(0, "a"), Left::Removed { last: false });
        assert_eq!(r.leave(5, "c"), Left::Removed { last: false });
        assert_eq!(sorted(r.members("a")), [1, 2, 3, 4, 5]);
        assert_eq!(sorted(r.members("b")), [0, 1, 3, 4, 5]);
        assert_eq!(sorted(r.members("c")), [0, 1, 2, 3, 4]);
        assert_eq!(names(r.groups_of(2)), ["a", "c"]);
        assert_eq!(names(r.groups_of(0)), ["b", "c"]);
        // Every remaining membership must still be removable in O(1) with the right outcome.
        for slot in 0..6 {
            for name in ["a", "b", "c"] {
                let _ = r.leave(slot, name);
            }
        }
        assert_eq!(r.counts(), Counts::default());
        assert!(r.conns.is_empty());
    }

    #[test]
    fn dissolve_removes_group_everywhere() {
        let mut r = Router::new();
        for slot in [1, 2, 3] {
            r.join(slot, &g("a"), 8).unwrap();
            r.join(slot, &g("b"), 8).unwrap();
        }
        r.bind_uid(3, &u("x"));
        assert_eq!(sorted(&r.dissolve("a")), [1, 2, 3]);
        assert!(r.dissolve("a").is_empty());
        assert!(r.dissolve("nope").is_empty());
        assert!(r.members("a").is_empty());
        for slot in [1, 2, 3] {
            assert_eq!(names(r.groups_of(slot)), ["b"]);
            assert!(!r.is_member(slot, "a"));
        }
        assert_eq!(r.counts(), Counts { groups: 1, memberships: 3, uids: 1, bound: 1 });
        // The group can be created again from scratch.
        assert_eq!(r.join(1, &g("a"), 8), Ok(Joined::Added { first: true }));
        assert_eq!(sorted(&r.dissolve("b")), [1, 2, 3]);
        assert_eq!(sorted(&r.dissolve("a")), [1]);
        assert_eq!(r.uid_of(3), Some(&u("x")));
        assert_eq!(r.conns.len(), 1, "only the bound slot keeps state");
    }

    #[test]
    fn bind_reports_first_previous_and_rebind() {
        let mut r = Router::new();
        assert_eq!(r.bind_uid(1, &u("x")), Bound { first: true, previous: None });
        assert_eq!(r.bind_uid(2, &u("x")), Bound { first: false, previous: None });
        // Same uid again: nothing changes.
        assert_eq!(r.bind_uid(1, &u("x")), Bound { first: false, previous: None });
        assert_eq!(sorted(r.uid_slots("x")), [1, 2]);
        // Moving to another uid reports the old one, not emptied.
        assert_eq!(r.bind_uid(1, &u("y")), Bound { first: true, previous: Some((u("x"), false)) });
        // ... and emptied.
        assert_eq!(r.bind_uid(2, &u("y")), Bound { first: false, previous: Some((u("x"), true)) });
        assert!(r.uid_slots("x").is_empty());
        assert_eq!(sorted(r.uid_slots("y")), [1, 2]);
        assert_eq!(r.uid_of(1), Some(&u("y")));
        assert_eq!(r.counts(), Counts { groups: 0, memberships: 0, uids: 1, bound: 2 });
    }

    #[test]
    fn unbind_reports_last() {
        let mut r = Router::new();
        assert_eq!(r.unbind_uid(1), None);
        r.bind_uid(1, &u("x"));
        r.bind_uid(2, &u("x"));
        r.bind_uid(3, &u("x"));
        assert_eq!(r.unbind_uid(1), Some((u("x"), false)));
        assert_eq!(r.unbind_uid(1), None);
        assert_eq!(r.uid_of(1), None);
        assert_eq!(sorted(r.uid_slots("x")), [2, 3]);
        assert_eq!(r.unbind_uid(3), Some((u("x"), false)));
        assert_eq!(r.unbind_uid(2), Some((u("x"), true)));
        assert_eq!(r.counts(), Counts::default());
        assert!(r.conns.is_empty());
    }

    #[test]
    fn unbind_keeps_group_state() {
        let mut r = Router::new();
        r.join(1, &g("a"), 8).unwrap();
        r.bind_uid(1, &u("x"));
        assert_eq!(r.unbind_uid(1), Some((u("x"), true)));
        assert_eq!(names(r.groups_of(1)), ["a"]);
        assert_eq!(r.members("a"), [1]);
    }

    #[test]
    fn close_releases_everything() {
        let mut r = Router::new();
        r.join(1, &g("a"), 8).unwrap();
        r.join(1, &g("b"), 8).unwrap();
        r.join(1, &g("c"), 8).unwrap();
        r.join(2, &g("b"), 8).unwrap();
        r.bind_uid(1, &u("x"));
        r.bind_uid(2, &u("x"));
        let mut released = r.close(1);
        released.emptied_groups.sort();
        assert_eq!(
            released,
            Released { emptied_groups: vec![g("a"), g("c")], uid: Some((u("x"), false)) }
        );
        assert_eq!(r.close(1), Released::default());
        assert!(r.groups_of(1).is_empty());
        assert_eq!(r.uid_of(1), None);
        assert_eq!(r.members("b"), [2]);
        assert_eq!(
            r.close(2),
            Released { emptied_groups: vec![g("b")], uid: Some((u("x"), true)) }
        );
        assert_eq!(r.counts(), Counts::default());
        assert!(r.conns.is_empty() && r.groups.is_empty() && r.uids.is_empty());
    }

    #[test]
    fn close_of_an_unknown_slot_is_empty() {
        let mut r = Router::new();
        assert_eq!(r.close(7), Released::default());
        r.bind_uid(7, &u("x"));
        assert_eq!(r.close(7), Released { emptied_groups: vec![], uid: Some((u("x"), true)) });
    }

    #[test]
    fn recipients_all_writes_nothing() {
        let mut r = Router::new();
        r.join(1, &g("a"), 8).unwrap();
        let mut out = vec![5, 6];
        assert_eq!(r.recipients(Target::All, &[1], &mut out), Selection::Everyone);
        assert!(out.is_empty());
    }

    #[test]
    fn recipients_of_groups_are_deduplicated_and_excluded() {
        let mut r = Router::new();
        for slot in 0..10 {
            r.join(slot, &g("even-or-odd"), 8).unwrap();
            if slot % 2 == 0 {
                r.join(slot, &g("even"), 8).unwrap();
            }
        }
        let (both, even) = ([g("even-or-odd"), g("even")], [g("even")]);
        assert_eq!(select(&mut r, Target::Groups(&both), &[]), (0..10).collect::<Vec<_>>());
        assert_eq!(select(&mut r, Target::Groups(&both), &[3, 4, 77]), [0, 1, 2, 5, 6, 7, 8, 9]);
        // Single group: fast path, with and without a short exclude list, and a long one.
        assert_eq!(select(&mut r, Target::Groups(&even), &[]), [0, 2, 4, 6, 8]);
        assert_eq!(select(&mut r, Target::Groups(&even), &[2]), [0, 4, 6, 8]);
        assert_eq!(select(&mut r, Target::Groups(&even), &[0, 1, 2, 3, 4, 5, 6]), [8]);
        // The same group twice, and an unknown one.
        let twice = [g("even"), g("nope"), g("even")];
        assert_eq!(select(&mut r, Target::Groups(&twice), &[]), [0, 2, 4, 6, 8]);
        assert!(select(&mut r, Target::Groups(&[g("nope")]), &[]).is_empty());
        assert!(select(&mut r, Target::Groups(&[]), &[]).is_empty());
    }

    #[test]
    fn recipients_of_uids_and_slots() {
        let mut r = Router::new();
        r.bind_uid(1, &u("x"));
        r.bind_uid(2, &u("x"));
        r.bind_uid(3, &u("y"));
        assert_eq!(select(&mut r, Target::Uids(&[u("x")]), &[]), [1, 2]);
        assert_eq!(select(&mut r, Target::Uids(&[u("x")]), &[1]), [2]);
        assert_eq!(select(&mut r, Target::Uids(&[u("x"), u("y"), u("x")]), &[2]), [1, 3]);
        assert!(select(&mut r, Target::Uids(&[u("z")]), &[]).is_empty());
        // Slots need not be known to the router; duplicates and excluded ones are dropped.
        assert_eq!(select(&mut r, Target::Slots(&[9, 1, 9, 40_000, 1, 5]), &[5]), [1, 9, 40_000]);
        assert!(select(&mut r, Target::Slots(&[]), &[1]).is_empty());
    }

    #[test]
    fn recipients_survive_epoch_wrap() {
        let mut r = Router::new();
        r.join(1, &g("a"), 8).unwrap();
        r.join(2, &g("b"), 8).unwrap();
        r.join(2, &g("a"), 8).unwrap();
        let both = [g("a"), g("b")];
        assert_eq!(select(&mut r, Target::Groups(&both), &[]), [1, 2]);
        // Stamps left by a pass 2^32 passes ago carry the epoch the counter wraps to (1):
        // they must not read as "seen" after the wrap.
        r.epoch = u32::MAX;
        r.stamp[1] = 1;
        r.stamp[2] = 1;
        for _ in 0..5 {
            assert_eq!(select(&mut r, Target::Groups(&both), &[]), [1, 2]);
            assert_eq!(select(&mut r, Target::Slots(&[2, 2, 1]), &[]), [1, 2]);
        }
        assert_eq!(r.epoch, 10, "0 is skipped on the wrap");
    }

    #[test]
    fn shrinks_after_mass_leave() {
        let mut r = Router::new();
        for slot in 0..10_000 {
            r.join(slot, &g("big"), 8).unwrap();
        }
        for slot in 3..10_000 {
            r.leave(slot, "big");
        }
        assert_eq!(sorted(r.members("big")), [0, 1, 2]);
        assert!(r.groups["big"].members.capacity() <= 128);
    }

    /// An operation in the model-based test. Slots, group and uid indexes are small so that
    /// collisions (re-joins, shared groups, shared uids) are frequent.
    #[derive(Debug, Clone)]
    enum Op {
        Join(Slot, usize, usize),
        Leave(Slot, usize),
        Dissolve(usize),
        Bind(Slot, usize),
        Unbind(Slot),
        Close(Slot),
        ToAll(Vec<Slot>),
        ToGroups(Vec<usize>, Vec<Slot>),
        ToUids(Vec<usize>, Vec<Slot>),
        ToSlots(Vec<Slot>, Vec<Slot>),
    }

    const SLOTS: Slot = 16;
    const GROUPS: usize = 6;
    const UIDS: usize = 4;
    /// Slots a `Target::Slots` or `exclude` may name that the router never saw.
    const SLOTS_ANY: Slot = SLOTS + 8;

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::collection::vec;
        use proptest::prelude::*;
        let slot = 0..SLOTS;
        let any_slot = 0..SLOTS_ANY;
        prop_oneof![
            8 => (slot.clone(), 0..GROUPS, 0..=GROUPS).prop_map(|(s, g, max)| Op::Join(s, g, max)),
            3 => (slot.clone(), 0..GROUPS).prop_map(|(s, g)| Op::Leave(s, g)),
            1 => (0..GROUPS).prop_map(Op::Dissolve),
            4 => (slot.clone(), 0..UIDS).prop_map(|(s, u)| Op::Bind(s, u)),
            2 => slot.clone().prop_map(Op::Unbind),
            2 => slot.prop_map(Op::Close),
            1 => vec(any_slot.clone(), 0..3).prop_map(Op::ToAll),
            3 => (vec(0..GROUPS, 0..4), vec(any_slot.clone(), 0..7))
                .prop_map(|(g, x)| Op::ToGroups(g, x)),
            2 => (vec(0..UIDS, 0..4), vec(any_slot.clone(), 0..3))
                .prop_map(|(u, x)| Op::ToUids(u, x)),
            2 => (vec(any_slot.clone(), 0..8), vec(any_slot, 0..3))
                .prop_map(|(s, x)| Op::ToSlots(s, x)),
        ]
    }

    /// The obviously-correct reference.
    #[derive(Default)]
    struct Model {
        groups: HashMap<String, HashSet<Slot>>,
        uids: HashMap<Slot, String>,
    }

    impl Model {
        fn groups_of(&self, slot: Slot) -> HashSet<String> {
            self.groups.iter().filter(|(_, m)| m.contains(&slot)).map(|(n, _)| n.clone()).collect()
        }

        fn uid_slots(&self, uid: &str) -> HashSet<Slot> {
            self.uids.iter().filter(|(_, u)| u.as_str() == uid).map(|(&s, _)| s).collect()
        }

        /// Remove `slot`'s binding; the uid and whether it emptied.
        fn unbind(&mut self, slot: Slot) -> Option<(Uid, bool)> {
            let old = self.uids.remove(&slot)?;
            let last = self.uid_slots(&old).is_empty();
            Some((u(&old), last))
        }
    }

    fn set_of(v: &[Slot]) -> HashSet<Slot> {
        let set: HashSet<Slot> = v.iter().copied().collect();
        assert_eq!(set.len(), v.len(), "duplicates in {v:?}");
        set
    }

    fn check(r: &Router, m: &Model, gnames: &[GroupId], unames: &[Uid]) {
        for name in gnames {
            let want = m.groups.get(name.as_str()).cloned().unwrap_or_default();
            assert_eq!(set_of(r.members(name)), want, "members({name})");
            for slot in 0..SLOTS {
                assert_eq!(
                    r.is_member(slot, name),
                    want.contains(&slot),
                    "is_member({slot}, {name})"
                );
            }
        }
        let live: HashSet<&str> = r.groups().map(|g| g.as_str()).collect();
        let want: HashSet<&str> = m.groups.keys().map(|k| k.as_str()).collect();
        assert_eq!(live, want, "groups()");
        for slot in 0..SLOTS_ANY {
            let of: Vec<String> = r.groups_of(slot).iter().map(|g| g.to_string()).collect();
            let set: HashSet<String> = of.iter().cloned().collect();
            assert_eq!(set.len(), of.len(), "duplicates in groups_of({slot})");
            assert_eq!(set, m.groups_of(slot), "groups_of({slot})");
            assert_eq!(r.uid_of(slot).map(|u| u.as_str()), m.uids.get(&slot).map(|s| s.as_str()));
        }
        for uid in unames {
            assert_eq!(set_of(r.uid_slots(uid)), m.uid_slots(uid), "uid_slots({uid})");
        }
        let distinct_uids: HashSet<&String> = m.uids.values().collect();
        let want = Counts {
            groups: m.groups.len(),
            memberships: m.groups.values().map(HashSet::len).sum(),
            uids: distinct_uids.len(),
            bound: m.uids.len(),
        };
        assert_eq!(r.counts(), want);
        // Slots without groups or uid keep no state.
        assert!(r.conns.values().all(|c| !c.is_unused()));
    }

    fn expected(candidates: impl IntoIterator<Item = Slot>, exclude: &[Slot]) -> HashSet<Slot> {
        candidates.into_iter().filter(|s| !exclude.contains(s)).collect()
    }

    fn apply(r: &mut Router, m: &mut Model, op: Op, gnames: &[GroupId], unames: &[Uid]) {
        let mut out = vec![123];
        match op {
            Op::Join(slot, gi, max) => {
                let name = &gnames[gi];
                let members = m.groups.get(name.as_str());
                let want = if members.is_some_and(|s| s.contains(&slot)) {
                    Ok(Joined::Already)
                } else if m.groups_of(slot).len() >= max {
                    Err(JoinError::TooManyGroups(max))
                } else {
                    let first = members.is_none();
                    m.groups.entry(name.to_string()).or_default().insert(slot);
                    Ok(Joined::Added { first })
                };
                assert_eq!(r.join(slot, name, max), want);
            }
            Op::Leave(slot, gi) => {
                let name = gnames[gi].as_str();
                let removed = m.groups.get_mut(name).is_some_and(|members| members.remove(&slot));
                let want = if removed {
                    let last = m.groups[name].is_empty();
                    if last {
                        m.groups.remove(name);
                    }
                    Left::Removed { last }
                } else {
                    Left::NotMember
                };
                assert_eq!(r.leave(slot, name), want);
            }
            Op::Dissolve(gi) => {
                let name = gnames[gi].as_str();
                let want = m.groups.remove(name).unwrap_or_default();
                assert_eq!(set_of(&r.dissolve(name)), want);
            }
            Op::Bind(slot, ui) => {
                let uid = &unames[ui];
                let want = if m.uids.get(&slot).is_some_and(|s| s == uid.as_str()) {
                    Bound { first: false, previous: None }
                } else {
                    let previous = m.unbind(slot);
                    let first = m.uid_slots(uid).is_empty();
                    m.uids.insert(slot, uid.to_string());
                    Bound { first, previous }
                };
                assert_eq!(r.bind_uid(slot, uid), want);
            }
            Op::Unbind(slot) => {
                let want = m.unbind(slot);
                assert_eq!(r.unbind_uid(slot), want);
            }
            Op::Close(slot) => {
                let mut emptied: Vec<GroupId> = Vec::new();
                m.groups.retain(|name, members| {
                    if members.remove(&slot) && members.is_empty() {
                        emptied.push(g(name));
                        return false;
                    }
                    true
                });
                emptied.sort();
                let uid = m.unbind(slot);
                let mut got = r.close(slot);
                got.emptied_groups.sort();
                assert_eq!(got, Released { emptied_groups: emptied, uid });
            }
            Op::ToAll(exclude) => {
                assert_eq!(r.recipients(Target::All, &exclude, &mut out), Selection::Everyone);
                assert!(out.is_empty());
            }
            Op::ToGroups(gis, exclude) => {
                let target: Vec<GroupId> = gis.iter().map(|&i| gnames[i].clone()).collect();
                let want = expected(
                    target
                        .iter()
                        .flat_map(|n| m.groups.get(n.as_str()).into_iter().flatten().copied()),
                    &exclude,
                );
                assert_eq!(
                    r.recipients(Target::Groups(&target), &exclude, &mut out),
                    Selection::Listed
                );
                assert_eq!(set_of(&out), want);
            }
            Op::ToUids(uis, exclude) => {
                let target: Vec<Uid> = uis.iter().map(|&i| unames[i].clone()).collect();
                let want = expected(target.iter().flat_map(|uid| m.uid_slots(uid)), &exclude);
                assert_eq!(
                    r.recipients(Target::Uids(&target), &exclude, &mut out),
                    Selection::Listed
                );
                assert_eq!(set_of(&out), want);
            }
            Op::ToSlots(slots, exclude) => {
                let want = expected(slots.iter().copied(), &exclude);
                assert_eq!(
                    r.recipients(Target::Slots(&slots), &exclude, &mut out),
                    Selection::Listed
                );
                assert_eq!(set_of(&out), want);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn router_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
            // Fresh `Arc`s per call, as callers pass: the router must not rely on identity of
            // the caller's names.
            let gnames = || (0..GROUPS).map(|i| g(&format!("g{i}"))).collect::<Vec<_>>();
            let unames = || (0..UIDS).map(|i| u(&format!("u{i}"))).collect::<Vec<_>>();
            let mut r = Router::new();
            let mut m = Model::default();
            for op in ops {
                apply(&mut r, &mut m, op, &gnames(), &unames());
                check(&r, &m, &gnames(), &unames());
            }
        }
    }
}
