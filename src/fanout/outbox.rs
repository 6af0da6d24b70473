//! One connection's queue of encoded frames, bounded in bytes.
//!
//! Frames are refcounted `Bytes`: a broadcast's frame is the same allocation in every outbox.
//! The shard moves up to [`IOV_MAX`] frames out with [`Outbox::take_batch`] for one vectored
//! write and gives them back with [`Outbox::complete`], which requeues whatever the kernel did
//! not take (partial writes). Bytes in flight still count against the budget.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

/// Most iovecs one `writev` accepts on Linux.
pub const IOV_MAX: usize = 1024;

/// Capacity an empty outbox keeps; beyond it, an emptied queue gives its memory back.
const IDLE_CAPACITY_FRAMES: usize = 4;

/// Outcome of [`Outbox::push`] (uWebSockets' send status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Queued.
    Queued,
    /// Not queued: the outbox would exceed its budget. The caller applies its policy.
    OverBudget,
}

/// A connection's pending frames.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Bytes>,
    /// Bytes queued plus bytes in flight; what the budget bounds.
    queued_bytes: usize,
}

impl Outbox {
    /// Queue `frame` unless that would take the outbox past `bytes_max`. A frame larger than
    /// the whole budget is still queued into an empty outbox, so every message is deliverable.
    pub fn push(&mut self, frame: Bytes, bytes_max: usize) -> SendStatus {
        if self.queued_bytes > 0 && self.queued_bytes + frame.len() > bytes_max {
            return SendStatus::OverBudget;
        }
        self.push_unbounded(frame);
        SendStatus::Queued
    }

    /// Queue a frame the protocol requires (our close frame) regardless of the budget.
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.queued_bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Whether no frame waits to be written (frames in flight are not counted).
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames waiting to be written.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Bytes queued plus bytes in flight.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Drop every frame not yet in flight (a slow consumer about to be closed).
    pub fn discard_queued(&mut self) {
        let dropped: usize = self.frames.iter().map(Bytes::len).sum();
        self.queued_bytes -= dropped;
        self.frames.clear();
        self.frames.shrink_to(IDLE_CAPACITY_FRAMES);
    }

    /// Move up to [`IOV_MAX`] frames into `batch` (empty, reused) for one vectored write.
    pub fn take_batch(&mut self, batch: &mut Vec<Bytes>) {
        debug_assert!(batch.is_empty());
        let n = self.frames.len().min(IOV_MAX);
        batch.extend(self.frames.drain(..n));
    }

    /// The kernel took `written` bytes of `batch`: release them and requeue the rest, in order,
    /// ahead of anything queued meanwhile. Leaves `batch` empty for reuse.
    pub fn complete(&mut self, batch: &mut Vec<Bytes>, mut written: usize) {
        debug_assert!(written <= batch.iter().map(Bytes::len).sum::<usize>());
        self.queued_bytes -= written;
        let mut done = 0;
        for frame in batch.iter_mut() {
            if written >= frame.len() {
                written -= frame.len();
                done += 1;
            } else {
                frame.advance(written);
                break;
            }
        }
        for frame in batch.drain(done..).rev() {
            self.frames.push_front(frame);
        }
        batch.clear();
        if self.frames.is_empty() && self.frames.capacity() > IDLE_CAPACITY_FRAMES {
            self.frames.shrink_to(IDLE_CAPACITY_FRAMES);
        }
    }

    /// Give back frames that were taken but never written (the write failed before starting).
    pub fn abandon(&mut self, batch: &mut Vec<Bytes>) {
        self.complete(batch, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Message;

    #[test]
    fn encode_once_every_outbox_holds_the_same_allocation() {
        let frame = Message::text("tick").encode();
        let mut outboxes: Vec<Outbox> = (0..100).map(|_| Outbox::default()).collect();
        for o in &mut outboxes {
            assert_eq!(o.push(frame.clone(), 1 << 20), SendStatus::Queued);
        }
        let mut batch = Vec::new();
        for o in &mut outboxes {
            o.take_batch(&mut batch);
            assert_eq!(batch[0].as_ptr(), frame.as_ptr(), "a copy was made");
            batch.clear();
        }
    }

    #[test]
    fn budget_refuses_then_recovers() {
        let mut o = Outbox::default();
        assert_eq!(o.push(Bytes::from(vec![0u8; 60]), 100), SendStatus::Queued);
        assert_eq!(o.push(Bytes::from(vec![0u8; 60]), 100), SendStatus::OverBudget);
        let mut batch = Vec::new();
        o.take_batch(&mut batch);
        assert_eq!(o.queued_bytes(), 60, "in-flight bytes still count");
        o.complete(&mut batch, 60);
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(
            o.push(Bytes::from(vec![0u8; 500]), 100),
            SendStatus::Queued,
            "oversized frame into an empty outbox"
        );
    }

    #[test]
    fn partial_write_requeues_remainder_in_order() {
        let mut o = Outbox::default();
        for s in ["abc", "def", "ghi"] {
            o.push(Bytes::from(s), 100);
        }
        let mut batch = Vec::new();
        o.take_batch(&mut batch);
        o.push(Bytes::from("jkl"), 100);
        o.complete(&mut batch, 4);
        o.take_batch(&mut batch);
        let rest: Vec<u8> = batch.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(rest, b"efghijkl");
        assert_eq!(o.queued_bytes(), 8);
    }

    #[test]
    fn batches_are_capped_at_iov_max() {
        let mut o = Outbox::default();
        for _ in 0..IOV_MAX + 5 {
            o.push(Bytes::from_static(b"x"), usize::MAX);
        }
        let mut batch = Vec::new();
        o.take_batch(&mut batch);
        assert_eq!(batch.len(), IOV_MAX);
        assert_eq!(o.len(), 5);
    }
}
