//! Per-(subscriber, stream) sequence tracking: duplicates and reorders, 16 bytes per pair.
//!
//! `next` is one past the highest sequence number seen; bit `i` of `window` says whether
//! `next - 1 - i` has been seen (a 64-message sliding window). Losses are not counted here:
//! they are `expected - (received - duplicates)` over a whole step, which also covers
//! messages that never arrive at all (no gap is ever "closed").

/// What one observed sequence number was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// Exactly the next one expected.
    InOrder,
    /// Newer than expected: the numbers in between are (so far) missing.
    Gap,
    /// Older than the newest seen and not seen before (or too old to tell: > 64 behind).
    Reordered,
    /// Seen before (within the 64-message window).
    Duplicate,
}

/// Tracks one stream's sequence numbers as seen by one subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTracker {
    next: u64,
    window: u64,
}

impl SeqTracker {
    /// Records `seq` and classifies it. O(1), no allocation.
    #[inline]
    pub fn observe(&mut self, seq: u64) -> SeqOutcome {
        if seq == self.next {
            self.next += 1;
            self.window = (self.window << 1) | 1;
            SeqOutcome::InOrder
        } else if seq > self.next {
            let shift = seq - self.next + 1;
            self.window = if shift >= 64 { 1 } else { (self.window << shift) | 1 };
            self.next = seq + 1;
            SeqOutcome::Gap
        } else {
            let behind = self.next - 1 - seq;
            if behind >= 64 {
                return SeqOutcome::Reordered;
            }
            let bit = 1u64 << behind;
            if self.window & bit != 0 {
                SeqOutcome::Duplicate
            } else {
                self.window |= bit;
                SeqOutcome::Reordered
            }
        }
    }
}

/// Counters accumulated from [`SeqOutcome`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqCounts {
    /// Deliveries counted (including duplicates).
    pub received: u64,
    /// Deliveries seen before.
    pub duplicates: u64,
    /// Deliveries older than the newest seen from that stream.
    pub reordered: u64,
}

impl SeqCounts {
    /// Adds one outcome.
    #[inline]
    pub fn add(&mut self, o: SeqOutcome) {
        self.received += 1;
        match o {
            SeqOutcome::Duplicate => self.duplicates += 1,
            SeqOutcome::Reordered => self.reordered += 1,
            SeqOutcome::InOrder | SeqOutcome::Gap => {}
        }
    }

    /// Distinct deliveries.
    pub fn unique(&self) -> u64 {
        self.received - self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> SeqCounts {
        let mut t = SeqTracker::default();
        let mut c = SeqCounts::default();
        for &s in seqs {
            c.add(t.observe(s));
        }
        c
    }

    #[test]
    fn in_order() {
        let seqs: Vec<u64> = (0..1000).collect();
        let c = run(&seqs);
        assert_eq!(c, SeqCounts { received: 1000, duplicates: 0, reordered: 0 });
    }

    #[test]
    fn loss_is_expected_minus_unique() {
        // 0..100 without 10, 11 and 50: 97 unique of 100 expected.
        let seqs: Vec<u64> = (0..100).filter(|s| ![10, 11, 50].contains(s)).collect();
        let c = run(&seqs);
        assert_eq!(c.unique(), 97);
        assert_eq!(c.duplicates + c.reordered, 0);
        assert_eq!(100 - c.unique(), 3);
    }

    #[test]
    fn duplicates() {
        let c = run(&[0, 1, 1, 2, 0, 3, 3, 3]);
        assert_eq!(c.received, 8);
        assert_eq!(c.duplicates, 4);
        assert_eq!(c.reordered, 0);
        assert_eq!(c.unique(), 4);
    }

    #[test]
    fn reorders_then_duplicate_of_reordered() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0), SeqOutcome::InOrder);
        assert_eq!(t.observe(2), SeqOutcome::Gap);
        assert_eq!(t.observe(1), SeqOutcome::Reordered);
        assert_eq!(t.observe(1), SeqOutcome::Duplicate);
        assert_eq!(t.observe(3), SeqOutcome::InOrder);
        let c = run(&[0, 2, 1, 1, 3, 5, 4, 6]);
        assert_eq!(c, SeqCounts { received: 8, duplicates: 1, reordered: 2 });
    }

    #[test]
    fn window_edges() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(100), SeqOutcome::Gap); // starting mid-stream is fine
        assert_eq!(t.observe(100 - 63), SeqOutcome::Reordered);
        assert_eq!(t.observe(100 - 63), SeqOutcome::Duplicate);
        assert_eq!(t.observe(100), SeqOutcome::Duplicate);
        // 64 behind the newest is out of the window: counted as a reorder.
        assert_eq!(t.observe(100 - 64), SeqOutcome::Reordered);
        // A big jump clears the window.
        assert_eq!(t.observe(1000), SeqOutcome::Gap);
        assert_eq!(t.observe(999), SeqOutcome::Reordered);
        assert_eq!(t.observe(1000), SeqOutcome::Duplicate);
        // A jump of exactly 63 keeps the old newest at bit 63.
        let mut t = SeqTracker::default();
        t.observe(0);
        assert_eq!(t.observe(63), SeqOutcome::Gap);
        assert_eq!(t.observe(0), SeqOutcome::Duplicate);
        assert_eq!(t.observe(1), SeqOutcome::Reordered);
    }
}
