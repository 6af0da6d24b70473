//! One group's history: a bounded ring of messages with positions. Sans-I/O: no locks, no
//! clock (time is passed in), no sockets; the store around it decides which lock guards it.
//!
//! Positions: `top` is the offset of the last message assigned (0 before the first). Offsets
//! grow by one per message and never repeat within an epoch. A message may be evicted (count,
//! age or the store's byte budget); what is retained is always a contiguous run of offsets
//! ending at `top` (possibly empty), so "everything after N" is recoverable exactly when
//! N + 1 is at least the first retained offset.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::proto::Message;

use super::{Epoch, Position};

/// Fixed cost counted per stored message on top of its bytes (entry, deque slot, refcounts).
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Bounds of one group's history (from the first matching rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Messages kept.
    pub messages_max: usize,
    /// Age past which a message is evicted.
    pub age_max: Duration,
}

/// One stored message. Cloning shares its buffers.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its offset in the group.
    pub offset: u64,
    /// The message as published (its enveloped frame is built only when it is replayed, so
    /// a publish with no enveloped reader never pays for one).
    pub message: Message,
    /// When it was stored.
    pub at: Instant,
}

impl Stored {
    /// Bytes counted against the store's budget.
    pub fn cost(&self) -> usize {
        self.message.as_bytes().len() + ENTRY_OVERHEAD_BYTES
    }
}

/// What an eviction pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Messages removed.
    pub messages: u64,
    /// Their cost in bytes.
    pub bytes: usize,
}

impl std::ops::AddAssign for Evicted {
    fn add_assign(&mut self, o: Evicted) {
        self.messages += o.messages;
        self.bytes += o.bytes;
    }
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The newest `n` messages.
    Last(usize),
    /// Everything after this position (the last one the reader saw).
    Since(Position),
}

/// Why a read from a position could not return everything after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecoverable {
    /// The epoch differs: the history restarted (process restart, group forgotten).
    EpochChanged,
    /// Messages after the position were evicted (count, age or bytes).
    TooOld,
    /// The position is past the newest message (not one this history gave out).
    Ahead,
    /// The group keeps no history.
    NoHistory,
    /// The connection is already a member: it has been receiving the group's messages live
    /// (leave the group first to recover from a position).
    AlreadyMember,
    /// The history store (Redis, in a cluster) could not be reached or answered an error.
    Unavailable,
    /// More live messages arrived while the history was being read than the node holds for
    /// a recovering member (`held_messages_max`).
    HoldOverflow,
    /// The live messages that arrived while the history was being read do not continue it
    /// (a gap, or another epoch): some were lost between the store and this node.
    Interrupted,
}

impl Unrecoverable {
    /// The reason as sent to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            Unrecoverable::EpochChanged => "epoch changed",
            Unrecoverable::TooOld => "position older than the history keeps",
            Unrecoverable::Ahead => "position ahead of the history",
            Unrecoverable::NoHistory => "group keeps no history",
            Unrecoverable::AlreadyMember => "already a member of the group",
            Unrecoverable::Unavailable => "history store unavailable",
            Unrecoverable::HoldOverflow => "too many live messages while recovering",
            Unrecoverable::Interrupted => "live messages interrupted while recovering",
        }
    }
}

/// One group's history.
#[derive(Debug)]
pub struct Stream {
    epoch: Epoch,
    top: u64,
    entries: VecDeque<Stored>,
    bytes: usize,
    limits: StreamLimits,
    /// Last publish (or creation): the store forgets the stalest group first.
    pub(crate) touched: Instant,
}

impl Stream {
    /// An empty history in a new epoch.
    pub fn new(epoch: Epoch, limits: StreamLimits, now: Instant) -> Self {
        Stream { epoch, top: 0, entries: VecDeque::new(), bytes: 0, limits, touched: now }
    }

    /// Position of the newest message (offset 0 before the first).
    pub fn position(&self) -> Position {
        Position { epoch: self.epoch, offset: self.top }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no message is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Assign the next position (step one of an append; [`Stream::push`] stores the message).
    pub fn assign(&mut self, now: Instant) -> Position {
        self.top += 1;
        self.touched = now;
        self.position()
    }

    /// Store the message of the position just assigned, then evict past the count and age
    /// bounds.
    pub fn push(&mut self, stored: Stored, now: Instant) -> Evicted {
        debug_assert_eq!(stored.offset, self.top, "push follows assign");
        self.bytes += stored.cost();
        self.entries.push_back(stored);
        let mut ev = self.expire(now);
        while self.entries.len() > self.limits.messages_max {
            ev += self.pop_oldest();
        }
        ev
    }

    /// Evict messages older than the age bound.
    pub fn expire(&mut self, now: Instant) -> Evicted {
        let mut ev = Evicted::default();
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) >= self.limits.age_max)
        {
            ev += self.pop_oldest();
        }
        ev
    }

    /// Evict the oldest message (none when empty).
    pub fn pop_oldest(&mut self) -> Evicted {
        match self.entries.pop_front() {
            Some(e) => {
                let bytes = e.cost();
                self.bytes -= bytes;
                Evicted { messages: 1, bytes }
            }
            None => Evicted::default(),
        }
    }

    /// First offset still held (`top + 1` when nothing is).
    fn first_offset(&self) -> u64 {
        self.entries.front().map_or(self.top + 1, |e| e.offset)
    }

    /// Up to `limit` messages from `from`, oldest first, and whether more follow. Call
    /// [`Stream::expire`] first so nothing past its age is returned.
    pub fn read(&self, from: ReadFrom, limit: usize) -> Result<(Vec<Stored>, bool), Unrecoverable> {
        let start = match from {
            ReadFrom::Last(n) => self.entries.len().saturating_sub(n),
            ReadFrom::Since(p) => {
                if p.epoch != self.epoch {
                    return Err(Unrecoverable::EpochChanged);
                }
                if p.offset > self.top {
                    return Err(Unrecoverable::Ahead);
                }
                let first = self.first_offset();
                if p.offset + 1 < first {
                    return Err(Unrecoverable::TooOld);
                }
                // Offsets are contiguous: the entry after `p` is at this index.
                (p.offset + 1 - first) as usize
            }
        };
        let end = self.entries.len().min(start.saturating_add(limit));
        let out: Vec<Stored> = self.entries.range(start..end).cloned().collect();
        Ok((out, end < self.entries.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(offset: u64, at: Instant) -> Stored {
        let text = format!("m{offset}");
        Stored { offset, message: Message::text(text), at }
    }

    fn append(s: &mut Stream, now: Instant) -> Evicted {
        let p = s.assign(now);
        s.push(stored(p.offset, now), now)
    }

    fn offsets(v: &[Stored]) -> Vec<u64> {
        v.iter().map(|e| e.offset).collect()
    }

    const LIMITS: StreamLimits = StreamLimits { messages_max: 3, age_max: Duration::from_secs(10) };

    #[test]
    fn count_bound_and_recovery_edges() {
        let t = Instant::now();
        let e = Epoch(7);
        let mut s = Stream::new(e, LIMITS, t);
        assert_eq!(s.position(), Position { epoch: e, offset: 0 });
        let at = |offset| ReadFrom::Since(Position { epoch: e, offset });
        assert_eq!(s.read(at(0), 10).unwrap().0.len(), 0, "nothing missed yet");
        for _ in 0..5 {
            append(&mut s, t);
        }
        assert_eq!(s.len(), 3);
        assert_eq!(offsets(&s.read(ReadFrom::Last(2), 10).unwrap().0), [4, 5]);
        assert_eq!(offsets(&s.read(at(2), 10).unwrap().0), [3, 4, 5]);
        assert_eq!(offsets(&s.read(at(3), 1).unwrap().0), [4]);
        assert!(s.read(at(3), 1).unwrap().1, "more follow");
        assert_eq!(s.read(at(5), 10).unwrap().0.len(), 0);
        assert_eq!(s.read(at(1), 10).unwrap_err(), Unrecoverable::TooOld);
        assert_eq!(s.read(at(6), 10).unwrap_err(), Unrecoverable::Ahead);
        let other = ReadFrom::Since(Position { epoch: Epoch(8), offset: 5 });
        assert_eq!(s.read(other, 10).unwrap_err(), Unrecoverable::EpochChanged);
    }

    #[test]
    fn age_bound_keeps_the_position() {
        let t = Instant::now();
        let mut s = Stream::new(Epoch(1), LIMITS, t);
        append(&mut s, t);
        append(&mut s, t + Duration::from_secs(5));
        let ev = s.expire(t + Duration::from_secs(11));
        assert_eq!(ev.messages, 1);
        assert_eq!(s.len(), 1);
        let ev = s.expire(t + Duration::from_secs(20));
        assert_eq!(ev.messages, 1);
        assert_eq!(s.bytes(), 0);
        // Everything aged out: a reader who saw the last message missed nothing...
        let p = s.position();
        assert_eq!(p.offset, 2);
        assert!(s.read(ReadFrom::Since(p), 10).unwrap().0.is_empty());
        // ...one who did not, cannot recover.
        let before = Position { offset: 1, ..p };
        assert_eq!(s.read(ReadFrom::Since(before), 10).unwrap_err(), Unrecoverable::TooOld);
    }
}
