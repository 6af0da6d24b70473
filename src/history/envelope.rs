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
fn push_str(out: &mut String, s: &str) {
    // Serialising a `str` cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// The envelope's JSON text.
pub fn text(message: &Message, positions: &[(GroupId, Position)]) -> String {
    let payload = message.as_bytes().len();
    let mut out = String::with_capacity(48 + payload + payload / 8 + 64 * positions.len());
    out.push_str(r#"{"type":"message","#);
    match message {
        Message::Text(t) => {
            out.push_str(r#""data":"#);
            push_str(&mut out, t.as_str());
        }
        Message::Binary(b) => {
            out.push_str(r#""binary_base64":""#);
            base64::engine::general_purpose::STANDARD.encode_string(b, &mut out);
            out.push('"');
        }
    }
    if !positions.is_empty() {
        out.push_str(r#","positions":{"#);
        for (i, (g, p)) in positions.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_str(&mut out, g.as_str());
            out.push_str(&format!(r#":{{"epoch":"{}","offset":{}}}"#, p.epoch, p.offset));
        }
        out.push('}');
    }
    out.push('}');
    out
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
