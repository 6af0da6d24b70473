//! One connection's inbound protocol state: tungstenite's `WebSocketContext`, fed from memory.
//!
//! The shard reads bytes with io_uring and hands them to [`Codec::handle_read`]; tungstenite
//! reassembles fragments, validates UTF-8, enforces the size limit and answers pings and closes.
//! The control frames it owes the peer come back in `out`, which the shard queues in order with
//! everything else it sends. Broadcast data frames never pass through here (they are encoded
//! once per node, see `frame`).
//!
//! The context is created on the first inbound byte: a subscriber that never speaks costs no
//! protocol state at all.

use std::io::{self, Read, Write};

use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message as WsMessage;

use super::frame::{CloseCode, Message};

/// tungstenite's internal read chunk: small, because each connection that ever spoke keeps it.
const CODEC_READ_CHUNK_BYTES: usize = 256;

/// What the peer did, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A complete Text or Binary message.
    Message(Message),
    /// The close handshake finished (or the peer started it and our reply is in `out`):
    /// flush `out`, then close the socket.
    Closed,
}

/// Why a connection is failed, and the close code it gets (RFC 6455 §7.4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 1002 protocol error, 1007 invalid UTF-8, 1009 too big, 1011 internal.
    pub code: CloseCode,
    /// A short reason for the close frame and the log.
    pub reason: &'static str,
}

/// Inbound state of one WebSocket connection (server role).
#[derive(Debug, Default)]
pub struct Codec {
    ctx: Option<Box<WebSocketContext>>,
}

/// In-memory stream: reads drain `input`, writes append to `out`.
struct Wire<'a> {
    input: &'a [u8],
    out: &'a mut Vec<u8>,
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.len().min(buf.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Codec {
    fn context(&mut self, message_bytes_max: usize) -> &mut WebSocketContext {
        self.ctx.get_or_insert_with(|| {
            let config = WebSocketConfig::default()
                .read_buffer_size(CODEC_READ_CHUNK_BYTES)
                .write_buffer_size(0)
                .max_message_size(Some(message_bytes_max))
                .max_frame_size(Some(message_bytes_max));
            Box::new(WebSocketContext::new(Role::Server, Some(config)))
        })
    }

    /// Feed bytes read from the socket. Events go to `on_event`; frames owed to the peer
    /// (pongs, the close reply) are appended to `out`. On `Err`, fail the connection with
    /// [`Codec::close`] using the failure's code.
    pub fn handle_read(
        &mut self,
        input: &[u8],
        message_bytes_max: usize,
        out: &mut Vec<u8>,
        mut on_event: impl FnMut(Inbound),
    ) -> Result<(), Failure> {
        let ctx = self.context(message_bytes_max);
        if !ctx.can_read() {
            // The peer's close was received and `Closed` reported by the read that completed
            // it: what the peer sends after its close frame means nothing (RFC 6455 §5.5.1),
            // and `Closed` is reported once, however the bytes were split into reads (found
            // by the `codec` fuzz target; tests/fuzz_props.rs REGRESSIONS).
            return Ok(());
        }
        let mut wire = Wire { input, out };
        loop {
            match ctx.read(&mut wire) {
                Ok(WsMessage::Text(t)) => on_event(Inbound::Message(Message::Text(t))),
                Ok(WsMessage::Binary(b)) => on_event(Inbound::Message(Message::Binary(b))),
                Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)) => {}
                Ok(WsMessage::Close(_)) => {} // the reply (if any) is written on the next read
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    on_event(Inbound::Closed);
                    return Ok(());
                }
                Err(e) => return Err(failure(&e)),
            }
        }
    }

    /// Start the close handshake (or fail the connection) with `code`: the close frame is
    /// appended to `out`. Does nothing if a close frame was already sent.
    pub fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
        message_bytes_max: usize,
        out: &mut Vec<u8>,
    ) {
        let ctx = self.context(message_bytes_max);
        if !ctx.can_write() {
            return;
        }
        let frame = CloseFrame { code, reason: reason.to_owned().into() };
        let mut wire = Wire { input: &[], out };
        // Writing to memory cannot fail; a refusal means the handshake already ended.
        let _ = ctx.close(&mut wire, Some(frame));
    }

    /// Whether data frames may still be sent (no close frame sent or received).
    pub fn can_write(&self) -> bool {
        self.ctx.as_ref().is_none_or(|c| c.can_write())
    }
}

fn failure(e: &WsError) -> Failure {
    match e {
        WsError::Utf8(_) => Failure { code: CloseCode::Invalid, reason: "invalid UTF-8 in text" },
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            Failure { code: CloseCode::Size, reason: "message too big" }
        }
        WsError::Capacity(_) => Failure { code: CloseCode::Size, reason: "message too big" },
        WsError::Protocol(_) => Failure { code: CloseCode::Protocol, reason: "protocol error" },
        _ => Failure { code: CloseCode::Error, reason: "internal error" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame;

    fn masked(opcode: OpCode, payload: &[u8], fin: bool) -> Vec<u8> {
        let header = tungstenite::protocol::frame::FrameHeader {
            is_final: fin,
            opcode,
            mask: Some([1, 2, 3, 4]),
            ..Default::default()
        };
        let f = Frame::from_payload(header, payload.to_vec().into());
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    fn feed(c: &mut Codec, bytes: &[u8]) -> (Vec<Inbound>, Vec<u8>, Result<(), Failure>) {
        let mut out = Vec::new();
        let mut ev = Vec::new();
        let r = c.handle_read(bytes, 1024, &mut out, |e| ev.push(e));
        (ev, out, r)
    }

    #[test]
    fn masked_text_split_at_every_offset() {
        let wire = masked(OpCode::Data(Data::Text), b"hello world", true);
        for cut in 0..wire.len() {
            let mut c = Codec::default();
            let (a, _, ra) = feed(&mut c, &wire[..cut]);
            let (b, _, rb) = feed(&mut c, &wire[cut..]);
            assert!(ra.is_ok() && rb.is_ok());
            let all: Vec<_> = a.into_iter().chain(b).collect();
            assert_eq!(all, vec![Inbound::Message(Message::text("hello world"))], "cut {cut}");
        }
    }

    #[test]
    fn fragments_reassemble() {
        let mut wire = masked(OpCode::Data(Data::Text), b"hel", false);
        wire.extend(masked(OpCode::Data(Data::Continue), b"lo", true));
        let (ev, _, r) = feed(&mut Codec::default(), &wire);
        r.unwrap();
        assert_eq!(ev, vec![Inbound::Message(Message::text("hello"))]);
    }

    #[test]
    fn ping_gets_a_pong() {
        let ping = masked(
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
            b"hi",
            true,
        );
        let (ev, out, r) = feed(&mut Codec::default(), &ping);
        r.unwrap();
        assert!(ev.is_empty());
        assert_eq!(out, vec![0x8a, 0x02, b'h', b'i']);
    }

    #[test]
    fn violations_map_to_close_codes() {
        let mut unmasked = Vec::new();
        Frame::message(b"x".to_vec(), OpCode::Data(Data::Text), true)
            .format(&mut unmasked)
            .unwrap();
        assert_eq!(feed(&mut Codec::default(), &unmasked).2.unwrap_err().code, CloseCode::Protocol);

        let bad_utf8 = masked(OpCode::Data(Data::Text), &[0xff, 0xfe], true);
        assert_eq!(feed(&mut Codec::default(), &bad_utf8).2.unwrap_err().code, CloseCode::Invalid);

        let big = masked(OpCode::Data(Data::Binary), &[0u8; 2000], true);
        assert_eq!(feed(&mut Codec::default(), &big).2.unwrap_err().code, CloseCode::Size);

        let reserved = masked(OpCode::Data(Data::Reserved(3)), b"x", true);
        assert_eq!(feed(&mut Codec::default(), &reserved).2.unwrap_err().code, CloseCode::Protocol);
    }

    #[test]
    fn peer_close_is_answered_then_reported() {
        let close = masked(
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Close),
            &[0x03, 0xe8],
            true,
        );
        let mut c = Codec::default();
        let (ev, out, r) = feed(&mut c, &close);
        r.unwrap();
        assert_eq!(ev, vec![Inbound::Closed]);
        assert_eq!(out, vec![0x88, 0x02, 0x03, 0xe8]);
        assert!(!c.can_write());
    }

    #[test]
    fn our_close_then_their_reply() {
        let mut c = Codec::default();
        let mut out = Vec::new();
        c.close(CloseCode::Away, "bye", 1024, &mut out);
        assert_eq!(out, vec![0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
        assert!(!c.can_write());
        let reply = masked(
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Close),
            &[0x03, 0xe9],
            true,
        );
        let (ev, out, r) = feed(&mut c, &reply);
        r.unwrap();
        assert_eq!(ev, vec![Inbound::Closed]);
        assert!(out.is_empty());
    }
}
