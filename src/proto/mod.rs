//! RFC 6455 for the server side: our thin layer over tungstenite, driven over in-memory buffers.
//!
//! I/O-free: nothing here imports tokio, tokio_uring or crossbeam, and nothing reads a clock.
//! `handshake` turns request bytes into response bytes, `frame` builds server frames once,
//! `codec` turns inbound bytes into messages plus the control frames we owe the peer.

pub mod codec;
pub mod frame;
pub mod handshake;

pub use codec::{Codec, Inbound};
pub use frame::{CloseCode, Message};
