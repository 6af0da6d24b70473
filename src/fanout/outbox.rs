//! One connection's queue of encoded frames, bounded in bytes.
//!
//! Frames are [`SharedFrame`]s: a broadcast's frame is the same allocation in every outbox.
//! The shard moves up to [`IOV_MAX`] frames out with [`Outbox::take_batch`] for one vectored
//! write and gives them back with [`Outbox::complete`], which requeues whatever the kernel did
//! not take (partial writes). Bytes in flight still count against the budget.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

/// Most iovecs one `writev` accepts on Linux.
pub const IOV_MAX: usize = 1024;

/// Told when the last recipient of a frame on a shard is done with it: every write carrying
/// it completed, or it was dropped (closed connection, discarded outbox). The shard implements
/// it to measure fan-out latency; this module never reads a clock.
pub trait FrameDone {
    /// The frame armed with [`SharedFrame::arm`] at `accepted` is released.
    fn frame_done(&self, accepted: std::time::Instant);
}

/// A frame as queued for one recipient: a shard-local refcount on the node-wide encoded
/// `Bytes`, plus how much of it was already written.
///
/// The node encodes a broadcast once into one `Bytes` (atomically refcounted, it crosses
/// threads). Each shard wraps it once in an `Rc`, so queueing it for a recipient is a plain
/// increment, and every recipient on every shard still points at the same buffer. When the
/// last clone on a shard goes (its last write completed), an armed frame tells its
/// [`FrameDone`]: one call per publish per shard, nothing per recipient.
#[derive(Clone)]
pub struct SharedFrame {
    inner: Rc<Inner>,
    start: usize,
}

struct Inner {
    bytes: Bytes,
    done: Cell<Option<(std::time::Instant, Rc<dyn FrameDone>)>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some((accepted, sink)) = self.done.take() {
            sink.frame_done(accepted);
        }
    }
}

impl std::fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFrame").field("len", &self.len()).finish()
    }
}

impl SharedFrame {
    /// Share `bytes` (one `Rc` allocation per shard per frame; clone it per recipient).
    pub fn new(bytes: Bytes) -> Self {
        SharedFrame { inner: Rc::new(Inner { bytes, done: Cell::new(None) }), start: 0 }
    }

    /// Call `sink.frame_done(accepted)` when the last clone of this frame is dropped.
    pub fn arm(&self, accepted: std::time::Instant, sink: Rc<dyn FrameDone>) {
        self.inner.done.set(Some((accepted, sink)));
    }

    /// Bytes not yet written.
    pub fn len(&self) -> usize {
        self.inner.bytes.len() - self.start
    }

    /// Whether everything was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The unwritten bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.inner.bytes[self.start..]
    }

    /// The whole encoded frame (the same buffer for every recipient).
    pub fn encoded(&self) -> &Bytes {
        &self.inner.bytes
    }

    fn advance(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
    }
}

impl From<Bytes> for SharedFrame {
    fn from(bytes: Bytes) -> Self {
        SharedFrame::new(bytes)
    }
}

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
    frames: VecDeque<SharedFrame>,
    /// Bytes queued plus bytes in flight; what the budget bounds.
    queued_bytes: usize,
}

impl Outbox {
    /// Queue `frame` unless that would take the outbox past `bytes_max`. A frame larger than
    /// the whole budget is still queued into an empty outbox, so every message is deliverable.
    pub fn push(&mut self, frame: SharedFrame, bytes_max: usize) -> SendStatus {
        if self.queued_bytes > 0 && self.queued_bytes + frame.len() > bytes_max {
            return SendStatus::OverBudget;
        }
        self.push_unbounded(frame);
        SendStatus::Queued
    }

    /// Queue a frame the protocol requires (our close frame) regardless of the budget.
    pub fn push_unbounded(&mut self, frame: SharedFrame) {
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
        let dropped: usize = self.frames.iter().map(SharedFrame::len).sum();
        self.queued_bytes -= dropped;
        self.frames = VecDeque::new();
    }

    /// Move up to [`IOV_MAX`] frames into `batch` (empty, reused) for one vectored write.
    pub fn take_batch(&mut self, batch: &mut Vec<SharedFrame>) {
        debug_assert!(batch.is_empty());
        let n = self.frames.len().min(IOV_MAX);
        batch.extend(self.frames.drain(..n));
    }

    /// The kernel took `written` bytes of `batch`: release them and requeue the rest, in order,
    /// ahead of anything queued meanwhile. Leaves `batch` empty for reuse.
    pub fn complete(&mut self, batch: &mut Vec<SharedFrame>, mut written: usize) {
        debug_assert!(written <= batch.iter().map(SharedFrame::len).sum::<usize>());
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
        if self.frames.is_empty() {
            // An emptied outbox holds no memory: most connections sit idle between messages
            // (and every one had its 101 here), and what an idle connection keeps is what a
            // million of them cost. The next push allocates again from the allocator's
            // per-thread cache (tens of nanoseconds, against microseconds for the write), and
            // the chunk freed here is the one the next connection's push reuses.
            self.frames = VecDeque::new();
        }
    }

    /// Give back frames that were taken but never written (the write failed before starting).
    pub fn abandon(&mut self, batch: &mut Vec<SharedFrame>) {
        self.complete(batch, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Message;

    fn f(v: Vec<u8>) -> SharedFrame {
        SharedFrame::new(Bytes::from(v))
    }

    #[test]
    fn encode_once_every_outbox_holds_the_same_allocation() {
        let encoded = Message::text("tick").encode();
        // Two shards, each wrapping the node's one encoding once.
        let shards = [SharedFrame::new(encoded.clone()), SharedFrame::new(encoded.clone())];
        let mut outboxes: Vec<Outbox> = (0..100).map(|_| Outbox::default()).collect();
        for (i, o) in outboxes.iter_mut().enumerate() {
            assert_eq!(o.push(shards[i % 2].clone(), 1 << 20), SendStatus::Queued);
        }
        let mut batch = Vec::new();
        for o in &mut outboxes {
            o.take_batch(&mut batch);
            assert_eq!(batch[0].as_slice().as_ptr(), encoded.as_ptr(), "a copy was made");
            batch.clear();
        }
    }

    #[test]
    fn budget_refuses_then_recovers() {
        let mut o = Outbox::default();
        assert_eq!(o.push(f(vec![0u8; 60]), 100), SendStatus::Queued);
        assert_eq!(o.push(f(vec![0u8; 60]), 100), SendStatus::OverBudget);
        let mut batch = Vec::new();
        o.take_batch(&mut batch);
        assert_eq!(o.queued_bytes(), 60, "in-flight bytes still count");
        o.complete(&mut batch, 60);
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(
            o.push(f(vec![0u8; 500]), 100),
            SendStatus::Queued,
            "oversized frame into an empty outbox"
        );
    }

    #[test]
    fn an_emptied_outbox_holds_no_memory() {
        let mut o = Outbox::default();
        let mut batch = Vec::new();
        // The connection's 101, written whole: an idle connection keeps nothing of it.
        o.push(f(b"HTTP/1.1 101".to_vec()), usize::MAX);
        o.take_batch(&mut batch);
        o.complete(&mut batch, 12);
        assert_eq!(o.frames.capacity(), 0);
        // A partial write keeps the queue; the write that empties it gives it back.
        for s in ["abc", "def"] {
            o.push(f(s.as_bytes().to_vec()), 100);
        }
        o.take_batch(&mut batch);
        o.complete(&mut batch, 4);
        assert!(o.frames.capacity() > 0);
        o.take_batch(&mut batch);
        o.complete(&mut batch, 2);
        assert_eq!((o.frames.capacity(), o.queued_bytes()), (0, 0));
        // So does dropping what is queued (a slow consumer being closed).
        o.push(f(b"xyz".to_vec()), 100);
        o.discard_queued();
        assert_eq!(o.frames.capacity(), 0);
    }

    #[test]
    fn partial_write_requeues_remainder_in_order() {
        let mut o = Outbox::default();
        for s in ["abc", "def", "ghi"] {
            o.push(f(s.as_bytes().to_vec()), 100);
        }
        let mut batch = Vec::new();
        o.take_batch(&mut batch);
        o.push(f(b"jkl".to_vec()), 100);
        o.complete(&mut batch, 4);
        o.take_batch(&mut batch);
        let rest: Vec<u8> = batch.iter().flat_map(|b| b.as_slice().iter().copied()).collect();
        assert_eq!(rest, b"efghijkl");
        assert_eq!(o.queued_bytes(), 8);
    }

    #[test]
    fn an_armed_frame_reports_once_when_its_last_write_completes() {
        use std::cell::RefCell;
        #[derive(Default)]
        struct Seen(RefCell<Vec<std::time::Instant>>);
        impl FrameDone for Seen {
            fn frame_done(&self, accepted: std::time::Instant) {
                self.0.borrow_mut().push(accepted);
            }
        }
        let seen = Rc::new(Seen::default());
        let t = std::time::Instant::now();
        let frame = f(b"abcdef".to_vec());
        let (mut a, mut b) = (Outbox::default(), Outbox::default());
        a.push(frame.clone(), 100);
        b.push(frame.clone(), 100);
        frame.arm(t, seen.clone());
        drop(frame);
        let mut batch = Vec::new();
        a.take_batch(&mut batch);
        a.complete(&mut batch, 6);
        assert!(seen.0.borrow().is_empty(), "b still holds it");
        b.take_batch(&mut batch);
        b.complete(&mut batch, 2); // partial: the remainder is requeued
        assert!(seen.0.borrow().is_empty());
        b.take_batch(&mut batch);
        b.complete(&mut batch, 4);
        assert_eq!(*seen.0.borrow(), vec![t]);
    }

    #[test]
    fn batches_are_capped_at_iov_max() {
        let mut o = Outbox::default();
        for _ in 0..IOV_MAX + 5 {
            o.push(f(b"x".to_vec()), usize::MAX);
        }
        let mut batch = Vec::new();
        o.take_batch(&mut batch);
        assert_eq!(batch.len(), IOV_MAX);
        assert_eq!(o.len(), 5);
    }
}
