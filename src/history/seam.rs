//! The recovery seam, per shard: which recovering members must skip which live messages.
//! Sans-I/O and generic over the member's id, so the shard and the model test share it.
//!
//! When a member recovers group `g` from a position, its replay ends at `g`'s newest offset
//! `L` (read while `g`'s order was held, in the same step that registered the member). Live
//! messages of `g` at or below `L` may still be in the shard's inbox (queued before the join):
//! they were replayed (or seen before the disconnect), so they are skipped for that member.
//! The first message of `g` above `L` ends the seam: the inbox holds `g`'s messages in offset
//! order, so none at or below `L` can follow it.

use crate::ids::GroupId;

use super::Position;

/// Seams of one shard. Usually empty: a publish pays one `is_empty` check.
#[derive(Debug)]
pub struct Seams<C> {
    entries: Vec<(C, GroupId, u64)>,
}

impl<C> Default for Seams<C> {
    fn default() -> Self {
        Seams { entries: Vec::new() }
    }
}

impl<C: Copy + Eq> Seams<C> {
    /// `member` recovered `group` up to `offset` (the replay's last).
    pub fn add(&mut self, member: C, group: GroupId, offset: u64) {
        self.forget(member, Some(&group));
        self.entries.push((member, group, offset));
    }

    /// Whether no member is recovering.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seams held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// A live message with `positions` is about to be delivered: `skip(member)` for each
    /// recovering member whose replay covered it. Seams the message passed are forgotten, and
    /// so are those of members `alive` says are gone.
    pub fn covered(
        &mut self,
        positions: &[(GroupId, Position)],
        mut alive: impl FnMut(C) -> bool,
        mut skip: impl FnMut(C),
    ) {
        self.entries.retain(|(member, group, offset)| {
            let Some((_, p)) = positions.iter().find(|(g, _)| g == group) else {
                return true;
            };
            if p.offset > *offset {
                return false;
            }
            if !alive(*member) {
                return false;
            }
            skip(*member);
            true
        });
    }

    /// `member` left `group` (or closed: `None`).
    pub fn forget(&mut self, member: C, group: Option<&str>) {
        if !self.entries.is_empty() {
            self.entries.retain(|(m, g, _)| *m != member || group.is_some_and(|x| g.as_str() != x));
        }
    }

    /// `group` was dissolved.
    pub fn forget_group(&mut self, group: &str) {
        self.entries.retain(|(_, g, _)| g.as_str() != group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Epoch;

    #[test]
    fn skips_up_to_the_seam_then_forgets_it() {
        let g = GroupId::new("g", 8).unwrap();
        let h = GroupId::new("h", 8).unwrap();
        let at = |offset| Position { epoch: Epoch(1), offset };
        let mut s = Seams::default();
        s.add(7u32, g.clone(), 5);
        let mut skipped = Vec::new();
        s.covered(&[(h.clone(), at(1))], |_| true, |m| skipped.push(m));
        assert!(skipped.is_empty(), "another group's message");
        s.covered(&[(h.clone(), at(2)), (g.clone(), at(5))], |_| true, |m| skipped.push(m));
        assert_eq!(skipped, [7]);
        s.covered(&[(g.clone(), at(6))], |_| true, |m| skipped.push(m));
        assert_eq!(skipped, [7], "past the seam");
        assert!(s.is_empty());
        s.add(1, g.clone(), 3);
        s.add(2, g.clone(), 3);
        s.forget(1, Some("g"));
        s.covered(&[(g.clone(), at(2))], |m| m != 2, |m| skipped.push(m));
        assert!(s.is_empty(), "a member gone drops its seam");
    }
}
