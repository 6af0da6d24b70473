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
#[derive(Debug, Default)]
pub struct Router {
    _todo: (),
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Router::default()
    }

    /// Add `slot` to `group`, unless it is already in `groups_max` groups.
    pub fn join(&mut self, slot: Slot, group: &GroupId, groups_max: usize) -> Result<Joined, JoinError> {
        let _ = (slot, group, groups_max);
        todo!()
    }

    /// Remove `slot` from `group`.
    pub fn leave(&mut self, slot: Slot, group: &str) -> Left {
        let _ = (slot, group);
        todo!()
    }

    /// Remove every member of `group`; the removed slots (empty if the group had none here).
    pub fn dissolve(&mut self, group: &str) -> Vec<Slot> {
        let _ = group;
        todo!()
    }

    /// Bind `slot` to `uid` (replacing a previous binding).
    pub fn bind_uid(&mut self, slot: Slot, uid: &Uid) -> Bound {
        let _ = (slot, uid);
        todo!()
    }

    /// Unbind `slot` from its uid; the uid and whether it has no connection left here.
    pub fn unbind_uid(&mut self, slot: Slot) -> Option<(Uid, bool)> {
        let _ = slot;
        todo!()
    }

    /// Forget `slot` entirely (the connection closed): memberships and binding.
    pub fn close(&mut self, slot: Slot) -> Released {
        let _ = slot;
        todo!()
    }

    /// The recipients of `target` on this shard, minus `exclude`, each once. For
    /// [`Target::All`] nothing is written and [`Selection::Everyone`] is returned. `out` is
    /// cleared first. Costs O(members of the targets + excluded).
    pub fn recipients(&mut self, target: Target<'_>, exclude: &[Slot], out: &mut Vec<Slot>) -> Selection {
        let _ = (target, exclude, out);
        todo!()
    }

    /// Members of `group` on this shard (any order).
    pub fn members(&self, group: &str) -> &[Slot] {
        let _ = group;
        todo!()
    }

    /// Groups with members on this shard.
    pub fn groups(&self) -> impl Iterator<Item = &GroupId> + '_ {
        std::iter::empty()
    }

    /// Groups `slot` is a member of.
    pub fn groups_of(&self, slot: Slot) -> &[GroupId] {
        let _ = slot;
        todo!()
    }

    /// Whether `slot` is a member of `group`.
    pub fn is_member(&self, slot: Slot, group: &str) -> bool {
        let _ = (slot, group);
        todo!()
    }

    /// Slots bound to `uid` on this shard.
    pub fn uid_slots(&self, uid: &str) -> &[Slot] {
        let _ = uid;
        todo!()
    }

    /// The uid `slot` is bound to.
    pub fn uid_of(&self, slot: Slot) -> Option<&Uid> {
        let _ = slot;
        todo!()
    }

    /// Totals.
    pub fn counts(&self) -> Counts {
        todo!()
    }
}
