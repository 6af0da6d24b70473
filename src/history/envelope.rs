//! The enveloped form of a message, for members who opted in (`"envelope":true`): a JSON text
//! frame carrying the payload and, for groups with history, its position in each:
//!
//! `{"type":"message","data":"hello","positions":{"chat":{"epoch":"…","offset":42}}}`
//!
//! A binary payload travels as `"binary_base64"` instead of `"data"`. Pure: built once per
//! publish, shared by every enveloped recipient.

use base64::Engine as _;
use bytes::Bytes;

use crate::ids::GroupId;
use crate::proto::Message;

use super::Position;

/// Append `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a `str` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The envelope's JSON text.
pub fn text(message: &Message, positions: &[(GroupId, Position)]) -> String {
    use std::io::Write as _;
    let payload = message.as_bytes().len();
    let mut out = Vec::with_capacity(48 + payload + payload / 8 + 64 * positions.len());
    out.extend_from_slice(br#"{"type":"message","#);
    match message {
        Message::Text(t) => {
            out.extend_from_slice(br#""data":"#);
            push_str(&mut out, t.as_str());
        }
        Message::Binary(b) => {
            out.extend_from_slice(br#""binary_base64":""#);
            let mut s = String::new();
            base64::engine::general_purpose::STANDARD.encode_string(b, &mut s);
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
    }
    if !positions.is_empty() {
        out.extend_from_slice(br#","positions":{"#);
        for (i, (g, p)) in positions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_str(&mut out, g.as_str());
            // Writing into a Vec cannot fail.
            let _ = write!(out, r#":{{"epoch":"{}","offset":{}}}"#, p.epoch, p.offset);
        }
        out.push(b'}');
    }
    out.push(b'}');
    // Only valid UTF-8 was written (JSON text of `str`s, ASCII otherwise).
    String::from_utf8(out).unwrap_or_default()
}

/// The envelope as one encoded server frame.
pub fn frame(message: &Message, positions: &[(GroupId, Position)]) -> Bytes {
    Message::text(text(message, positions)).encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Epoch;

    #[test]
    fn envelopes_are_json_with_positions() {
        let g = GroupId::new("chat \"1\"", 64).unwrap();
        let p = Position { epoch: Epoch(0xab), offset: 42 };
        let v: serde_json::Value =
            serde_json::from_str(&text(&Message::text("hé\n"), &[(g, p)])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","data":"hé\n",
                "positions":{"chat \"1\"":{"epoch":"00000000000000ab","offset":42}}})
        );
        let v: serde_json::Value =
            serde_json::from_str(&text(&Message::binary(vec![0u8, 255]), &[])).unwrap();
        assert_eq!(v, serde_json::json!({"type":"message","binary_base64":"AP8="}));
    }
}
