//! The recovery hold of a clustered node, per shard: live messages held aside for a member
//! whose history read is still in flight. Sans-I/O and generic over the member's id and the
//! message, so the shard and the tests share it.
//!
//! On one node, a recovering join reads the history and registers the member in one step
//! under the group's lock (`Seams`). In a cluster the history is in Redis and the read is
//! asynchronous (it runs on the control plane, never on a shard), so the member's shard
//! instead:
//!
//! 1. registers the member and starts a hold (`Holds::hold`) in the same loop turn: from then
//!    on every live message of the group that reaches the shard is held for that member
//!    (`Holds::offer`, which also says to skip the member in the live delivery);
//! 2. asks the control plane to read the history after the client's position (the control
//!    plane reads only once the group's channel is subscribed, so every message after the
//!    read reaches the shard and is held);
//! 3. when the read comes back, `Holds::resolve` says what to send: the replay, then the held
//!    messages above the read's newest offset `L` (the ones at or below `L` were replayed),
//!    with `recovered: true`, and records the seam `(member, group, L)` in `Seams` so live
//!    messages at or below `L` still on their way are skipped (the store may be ahead of the
//!    shard); or why it cannot (`recovered: false`): the read's own reason,
//!    the history store unreachable, the held messages over their bound, or the held
//!    messages not continuing the read (a gap, another epoch).
//!
//! The hold is bounded (`held_messages_max` per member and group): past it the held messages
//! are dropped (counted by the caller) and the recovery answers `recovered: false`.

use crate::ids::GroupId;

use super::{Position, Read, Stored, Unrecoverable};

/// One member's hold on one group.
#[derive(Debug)]
struct Hold<C, M> {
    member: C,
    group: GroupId,
    held: Vec<(Position, M)>,
    overflowed: bool,
}

/// The holds of one shard. Usually empty: a publish pays one `is_empty` check.
#[derive(Debug)]
pub struct Holds<C, M> {
    entries: Vec<Hold<C, M>>,
    held_messages_max: usize,
}

/// What a resolved hold sends, in order, after the join reply.
#[derive(Debug)]
pub struct Resolved<M> {
    /// The read's newest position (the reply's `position`), if the group keeps a history.
    pub position: Option<Position>,
    /// The replay (`Ok`, `recovered: true`), or why the position could not be recovered
    /// from (`recovered: false`).
    pub outcome: Result<Vec<Stored>, Unrecoverable>,
    /// Held live messages to send after the replay (or, unrecovered, after the reply): those
    /// above the read's newest offset, in order.
    pub live: Vec<(Position, M)>,
}

impl<C: Copy + Eq, M: Clone> Holds<C, M> {
    /// Holds of at most `held_messages_max` messages each.
    pub fn new(held_messages_max: usize) -> Self {
        Holds { entries: Vec::new(), held_messages_max: held_messages_max.max(1) }
    }

    /// Whether no member is waiting for a read.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Holds in place.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `member` waits for a read of `group`.
    pub fn holds(&self, member: C, group: &str) -> bool {
        self.entries.iter().any(|h| h.member == member && h.group.as_str() == group)
    }

    /// Start holding `group`'s live messages for `member` (replacing a hold it had).
    pub fn hold(&mut self, member: C, group: GroupId) {
        self.forget(member, Some(&group));
        self.entries.push(Hold { member, group, held: Vec::new(), overflowed: false });
    }

    /// A live message with `positions` is about to be delivered: it is held for each waiting
    /// member of one of its groups, and `skip(member)` says not to deliver it to them now.
    /// Returns how many held messages were dropped because a hold went over its bound.
    pub fn offer(
        &mut self,
        positions: &[(GroupId, Position)],
        message: &M,
        mut skip: impl FnMut(C),
    ) -> u64 {
        let mut dropped = 0;
        for h in &mut self.entries {
            let Some((_, p)) = positions.iter().find(|(g, _)| *g == h.group) else {
                continue;
            };
            skip(h.member);
            if h.overflowed {
                dropped += 1;
            } else if h.held.len() >= self.held_messages_max {
                dropped += h.held.len() as u64 + 1;
                h.held = Vec::new();
                h.overflowed = true;
            } else {
                h.held.push((*p, message.clone()));
            }
        }
        dropped
    }

    /// The read of `group` for `member` came back (`Err(Unavailable)` when it could not be
    /// made): end the hold and say what to send. `None` when there is no such hold (the member
    /// left or closed meanwhile).
    pub fn resolve(&mut self, member: C, group: &str, read: Read) -> Option<Resolved<M>> {
        let i =
            self.entries.iter().position(|h| h.member == member && h.group.as_str() == group)?;
        let h = self.entries.swap_remove(i);
        let position = read.position;
        // Held messages after the read's newest (all of them when the read says nothing).
        let live: Vec<(Position, M)> = match position {
            Some(top) => h
                .held
                .into_iter()
                .filter(|(p, _)| p.epoch != top.epoch || p.offset > top.offset)
                .collect(),
            None => h.held,
        };
        let outcome = match read.outcome {
            _ if h.overflowed => Err(Unrecoverable::HoldOverflow),
            Err(e) => Err(e),
            Ok((replay, _more)) => match position {
                None => Err(Unrecoverable::NoHistory),
                Some(top) => match continues(top, &live) {
                    true => Ok(replay),
                    false => Err(Unrecoverable::Interrupted),
                },
            },
        };
        Some(Resolved { position, outcome, live })
    }

    /// `member` left `group` (or closed: `None`): its hold ends, nothing is sent.
    pub fn forget(&mut self, member: C, group: Option<&str>) {
        if !self.entries.is_empty() {
            self.entries
                .retain(|h| h.member != member || group.is_some_and(|g| h.group.as_str() != g));
        }
    }

    /// `group` was dissolved.
    pub fn forget_group(&mut self, group: &str) {
        self.entries.retain(|h| h.group.as_str() != group);
    }
}

/// Whether the held messages continue the read exactly: same epoch, offsets `top + 1`,
/// `top + 2`, … with no gap.
fn continues<M>(top: Position, live: &[(Position, M)]) -> bool {
    live.iter()
        .enumerate()
        .all(|(i, (p, _))| p.epoch == top.epoch && p.offset == top.offset + 1 + i as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::history::Epoch;
    use crate::proto::Message;

    fn g(name: &str) -> GroupId {
        GroupId::new(name, 16).unwrap()
    }

    fn at(offset: u64) -> Position {
        Position { epoch: Epoch(1), offset }
    }

    fn stored(offsets: std::ops::RangeInclusive<u64>) -> Vec<Stored> {
        let now = Instant::now();
        offsets
            .map(|o| Stored { offset: o, message: Message::text(o.to_string()), at: now })
            .collect()
    }

    fn read_ok(top: u64, replay: Vec<Stored>) -> Read {
        Read { position: Some(at(top)), outcome: Ok((replay, false)) }
    }

    fn offsets<M>(live: &[(Position, M)]) -> Vec<u64> {
        live.iter().map(|(p, _)| p.offset).collect()
    }

    #[test]
    fn replay_then_the_held_messages_above_the_read_no_gap_no_duplicate() {
        let mut h: Holds<u32, &str> = Holds::new(100);
        h.hold(7, g("room"));
        let mut skipped = Vec::new();
        // Live messages 4..=8 arrive while the read runs; the read saw up to 6.
        for o in 4..=8 {
            h.offer(&[(g("room"), at(o))], &"m", |m| skipped.push(m));
        }
        assert_eq!(skipped, [7; 5], "held, not delivered live");
        h.offer(&[(g("other"), at(1))], &"x", |m| skipped.push(m));
        assert_eq!(skipped.len(), 5, "another group's message passes");
        let r = h.resolve(7, "room", read_ok(6, stored(3..=6))).unwrap();
        let replay = r.outcome.unwrap();
        assert_eq!(replay.iter().map(|s| s.offset).collect::<Vec<_>>(), [3, 4, 5, 6]);
        assert_eq!(offsets(&r.live), [7, 8]);
        assert!(h.is_empty());
        assert!(h.resolve(7, "room", read_ok(6, vec![])).is_none(), "resolved once");
    }

    #[test]
    fn nothing_held_or_everything_held_still_recovers() {
        let mut h: Holds<u32, ()> = Holds::new(10);
        h.hold(1, g("a"));
        let r = h.resolve(1, "a", read_ok(3, stored(2..=3))).unwrap();
        assert!(r.outcome.is_ok() && r.live.is_empty());
        h.hold(1, g("a"));
        h.offer(&[(g("a"), at(4))], &(), |_| {});
        let r = h.resolve(1, "a", read_ok(3, vec![])).unwrap();
        assert!(r.outcome.unwrap().is_empty());
        assert_eq!(offsets(&r.live), [4]);
    }

    #[test]
    fn the_reads_own_reason_passes_through_and_held_messages_follow() {
        let mut h: Holds<u32, ()> = Holds::new(10);
        h.hold(1, g("a"));
        h.offer(&[(g("a"), at(5))], &(), |_| {});
        h.offer(&[(g("a"), at(6))], &(), |_| {});
        let read = Read { position: Some(at(5)), outcome: Err(Unrecoverable::EpochChanged) };
        let r = h.resolve(1, "a", read).unwrap();
        assert_eq!(r.outcome.unwrap_err(), Unrecoverable::EpochChanged);
        assert_eq!(offsets(&r.live), [6], "live messages after the reply's position");
        h.hold(1, g("a"));
        h.offer(&[(g("a"), at(7))], &(), |_| {});
        let read = Read { position: None, outcome: Err(Unrecoverable::Unavailable) };
        let r = h.resolve(1, "a", read).unwrap();
        assert_eq!(r.outcome.unwrap_err(), Unrecoverable::Unavailable);
        assert_eq!(offsets(&r.live), [7]);
    }

    #[test]
    fn overflow_drops_the_held_messages_and_answers_unrecovered() {
        let mut h: Holds<u32, ()> = Holds::new(3);
        h.hold(1, g("a"));
        let mut dropped = 0;
        for o in 1..=5 {
            dropped += h.offer(&[(g("a"), at(o))], &(), |_| {});
        }
        assert_eq!(dropped, 5, "the three held, then each one offered");
        let r = h.resolve(1, "a", read_ok(0, vec![])).unwrap();
        assert_eq!(r.outcome.unwrap_err(), Unrecoverable::HoldOverflow);
        assert!(r.live.is_empty());
    }

    #[test]
    fn a_gap_or_another_epoch_after_the_read_is_not_a_recovery() {
        let mut h: Holds<u32, ()> = Holds::new(10);
        h.hold(1, g("a"));
        h.offer(&[(g("a"), at(9))], &(), |_| {});
        let r = h.resolve(1, "a", read_ok(6, stored(5..=6))).unwrap();
        assert_eq!(r.outcome.unwrap_err(), Unrecoverable::Interrupted, "7 and 8 missing");
        h.hold(1, g("a"));
        h.offer(&[(g("a"), Position { epoch: Epoch(2), offset: 1 })], &(), |_| {});
        let r = h.resolve(1, "a", read_ok(6, vec![])).unwrap();
        assert_eq!(r.outcome.unwrap_err(), Unrecoverable::Interrupted);
        assert_eq!(r.live.len(), 1, "the new epoch's message is still sent");
    }

    proptest::proptest! {
        /// The seam with an asynchronous read, against a model: `n` messages are published
        /// (offsets 1..=n, in order on the bus); the client saw up to `since`; the shard has
        /// received up to `s` when it registers the member and starts the hold; the read runs
        /// later and sees the store up to `l` (`s <= l`: the store is ahead of the shard);
        /// the rest arrive live, in order, some before and some after the read returns.
        /// Whatever the timing, the member gets exactly `since+1..=n`, in order, once each.
        #[test]
        fn replay_and_held_and_live_give_every_message_once_in_order(
            n in 0u64..40, since_f in 0.0f64..1.0, s_f in 0.0f64..1.0, l_f in 0.0f64..1.0,
            r_f in 0.0f64..1.0, held_max in 1usize..50,
        ) {
            let pick = |lo: u64, hi: u64, f: f64| lo + ((hi - lo) as f64 * f) as u64;
            let since = pick(0, n, since_f);
            let s = pick(0, n, s_f);
            let l = pick(s.max(since), n, l_f);
            // Messages the shard receives before the read returns: up to `r` (at least `s`).
            let r = pick(s, n, r_f);
            let mut h: Holds<u32, u64> = Holds::new(held_max);
            let mut got: Vec<u64> = Vec::new();
            h.hold(1, g("g"));
            for o in s + 1..=r {
                let mut skipped = false;
                h.offer(&[(g("g"), at(o))], &o, |_| skipped = true);
                proptest::prop_assert!(skipped, "held for the member, not delivered live");
            }
            let replay = stored_range(since + 1, l);
            let res = h.resolve(1, "g", read_ok(l, replay)).unwrap();
            match res.outcome {
                Ok(replay) => got.extend(replay.iter().map(|m| m.offset)),
                Err(e) => {
                    proptest::prop_assert_eq!(e, Unrecoverable::HoldOverflow);
                    proptest::prop_assert!((r - s) as usize > held_max);
                    return Ok(());
                }
            }
            got.extend(res.live.iter().map(|(p, m)| { assert_eq!(p.offset, *m); *m }));
            // After the hold, messages at or below the read's newest may still be on their
            // way (the store was ahead of the shard): the shard's `Seams` skip them.
            let mut seams = crate::history::Seams::default();
            seams.add(1u32, g("g"), l);
            for o in r + 1..=n {
                h.offer(&[(g("g"), at(o))], &o, |_| panic!("no hold left"));
                let mut skipped = false;
                seams.covered(&[(g("g"), at(o))], |_| true, |_| skipped = true);
                if !skipped {
                    got.push(o);
                }
            }
            proptest::prop_assert_eq!(got, (since + 1..=n).collect::<Vec<_>>());
        }
    }

    fn stored_range(from: u64, to: u64) -> Vec<Stored> {
        if from > to {
            return Vec::new();
        }
        stored(from..=to)
    }

    #[test]
    fn leaving_closing_or_dissolving_ends_the_hold() {
        let mut h: Holds<u32, ()> = Holds::new(10);
        h.hold(1, g("a"));
        h.hold(1, g("b"));
        h.hold(2, g("a"));
        assert!(h.holds(1, "a") && h.holds(1, "b"));
        h.forget(1, Some("a"));
        assert!(!h.holds(1, "a") && h.holds(1, "b") && h.holds(2, "a"));
        h.forget_group("a");
        assert!(!h.holds(2, "a"));
        h.forget(1, None);
        assert!(h.is_empty());
        let mut skipped = 0;
        h.offer(&[(g("b"), at(1))], &(), |_| skipped += 1);
        assert_eq!(skipped, 0);
    }
}
