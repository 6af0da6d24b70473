//! Server frames, built once. Server frames are never masked (RFC 6455 §5.1), so the same bytes
//! serve every recipient: a broadcast's frame is one `Bytes` shared by refcount.

use bytes::{BufMut, Bytes, BytesMut};
pub use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::Utf8Bytes;

/// An application message: what clients send and what the node publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A UTF-8 text message (validated on the way in).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<Utf8Bytes>) -> Self {
        Message::Text(s.into())
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Message::Binary(b.into())
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// A copy that owns exactly its payload, for holders that keep a message long (a group's
    /// history). A message parsed without copying is a slice of a larger buffer (an HTTP
    /// request body with a thousand publishes, a read buffer of pipelined commands) and would
    /// keep all of it alive, outside any byte budget that counts the payload.
    pub fn detached(&self) -> Message {
        match self {
            Message::Text(t) => Message::Text(Utf8Bytes::from(t.as_str().to_owned())),
            Message::Binary(b) => Message::Binary(Bytes::copy_from_slice(b)),
        }
    }

    /// The payload as text, if it is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t.as_str()),
            Message::Binary(_) => None,
        }
    }

    /// Encode this message as one unmasked, final server frame.
    pub fn encode(&self) -> Bytes {
        match self {
            Message::Text(t) => encode(OpCode::Data(Data::Text), t.as_bytes()),
            Message::Binary(b) => encode(OpCode::Data(Data::Binary), b),
        }
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.to_owned().into())
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s.into())
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(b.into())
    }
}

/// Header and payload of one unmasked final frame, in one allocation.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader { is_final: true, opcode, ..FrameHeader::default() };
    let len = payload.len() as u64;
    let mut out = BytesMut::with_capacity(header.len(len) + payload.len());
    header.format(len, &mut (&mut out).writer()).expect("writing to memory cannot fail");
    out.put_slice(payload);
    out.freeze()
}

/// A ping frame carrying `payload` (at most 125 bytes).
pub fn ping(payload: &[u8]) -> Bytes {
    debug_assert!(payload.len() <= 125);
    encode(OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping), payload)
}

/// A close frame with `code` and a short reason (truncated to fit the 125-byte control limit).
pub fn close(code: CloseCode, reason: &str) -> Bytes {
    let mut reason = reason;
    while reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&u16::from(code).to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(OpCode::Control(tungstenite::protocol::frame::coding::Control::Close), &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_section_5_7_unmasked_text() {
        // "A single-frame unmasked text message"
        assert_eq!(
            &Message::text("Hello").encode()[..],
            &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']
        );
    }

    #[test]
    fn lengths_use_the_shortest_form() {
        assert_eq!(&Message::binary(vec![0u8; 125]).encode()[..2], &[0x82, 125]);
        assert_eq!(&Message::binary(vec![0u8; 126]).encode()[..4], &[0x82, 126, 0, 126]);
        let big = Message::binary(vec![7u8; 70_000]).encode();
        assert_eq!(&big[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(big.len(), 10 + 70_000);
    }

    #[test]
    fn close_frame_carries_code_and_bounded_reason() {
        let f = close(CloseCode::Away, "bye");
        assert_eq!(&f[..], &[0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
        let long = close(CloseCode::Policy, &"é".repeat(100));
        assert!(long.len() <= 2 + 125);
        assert!(std::str::from_utf8(&long[4..]).is_ok());
    }
}
