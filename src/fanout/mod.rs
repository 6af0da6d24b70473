//! I/O-free fan-out pieces: the per-connection outbox with its byte budget.
//!
//! Deliberately absent: sockets, threads, channels and clocks. The policy applied when an
//! outbox is over budget (disconnect or skip) belongs to the shard, not here.

pub mod outbox;

pub use outbox::{FrameDone, Outbox, SendStatus, SharedFrame};
