//! The load generator's message format (see `docs/loadgen-contract.md`).
//!
//! Binary form (plain mode over WebSocket):
//!
//! ```text
//! offset 0  : b"RCLG"      magic
//! offset 4  : stream id    u32 LE (the contract's "publisher id")
//! offset 8  : sequence     u64 LE, from 0 per stream, +1 per message
//! offset 16 : send time    u64 LE, ns since the generator's process-wide start instant
//! offset 24 : padding up to --payload bytes
//! ```
//!
//! Text form (groups mode and the HTTP push API, where the payload travels inside a JSON or
//! query string): the same 24 header bytes written as 48 lowercase hex ASCII characters
//! (so it starts with `52434c47`, the hex of `RCLG`), followed by `x` padding up to
//! `max(--payload, 48)` characters. Receivers look for the hex magic in the first
//! [`TEXT_SCAN_BYTES`] bytes of a text frame, so a server may deliver the bare string or wrap
//! it in a JSON envelope.

/// The 4-byte magic at the start of every binary message.
pub const MAGIC: [u8; 4] = *b"RCLG";
/// Size of the binary header; also the minimum `--payload`.
pub const HEADER_LEN: usize = 24;
/// Size of the hex-encoded header of the text form.
pub const HEX_HEADER_LEN: usize = 2 * HEADER_LEN;
/// The hex encoding of [`MAGIC`], which starts every text-form header.
pub const HEX_MAGIC: &[u8; 8] = b"52434c47";
/// How many leading bytes of a text frame are searched for the hex header.
pub const TEXT_SCAN_BYTES: usize = 320;

/// One decoded load generator header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgHeader {
    /// Stream id: the publisher index in plain mode, `publisher * groups + group` in groups
    /// mode.
    pub stream: u32,
    /// Per-stream sequence number.
    pub seq: u64,
    /// Send time in nanoseconds since the generator's start instant.
    pub send_ns: u64,
}

impl MsgHeader {
    /// Writes the 24 header bytes into `out[..24]`.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_LEN`].
    #[inline]
    pub fn write_binary(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.stream.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.send_ns.to_le_bytes());
    }

    /// Writes the 48 hex characters of the text form into `out[..48]`.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEX_HEADER_LEN`].
    #[inline]
    pub fn write_hex(&self, out: &mut [u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut raw = [0u8; HEADER_LEN];
        self.write_binary(&mut raw);
        for (i, b) in raw.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
    }

    /// Parses the binary form; `None` if too short or the magic is missing.
    #[inline]
    pub fn parse_binary(payload: &[u8]) -> Option<Self> {
        if payload.len() < HEADER_LEN || payload[0..4] != MAGIC {
            return None;
        }
        Some(Self::from_raw(payload[..HEADER_LEN].try_into().ok()?))
    }

    /// Parses the text form: the hex header must start within the first [`TEXT_SCAN_BYTES`]
    /// bytes of `text` (fast path: at offset 0). `None` if absent or malformed.
    #[inline]
    pub fn parse_text(text: &[u8]) -> Option<Self> {
        let scan = &text[..text.len().min(TEXT_SCAN_BYTES)];
        if scan.len() < HEX_HEADER_LEN {
            return None;
        }
        let start = if scan.starts_with(HEX_MAGIC) {
            0
        } else {
            scan.windows(HEX_MAGIC.len()).position(|w| w.eq_ignore_ascii_case(HEX_MAGIC))?
        };
        let hex = scan.get(start..start + HEX_HEADER_LEN)?;
        let mut raw = [0u8; HEADER_LEN];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            raw[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(Self::from_raw(&raw))
    }

    #[inline]
    fn from_raw(raw: &[u8; HEADER_LEN]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[o..o + 8]);
            u64::from_le_bytes(b)
        };
        MsgHeader { stream: u32_at(4), seq: u64_at(8), send_ns: u64_at(16) }
    }
}

#[inline]
fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Length of the text-form message string for a given `--payload`.
pub fn text_len(payload: usize) -> usize {
    payload.max(HEX_HEADER_LEN)
}

/// Fills `out` (length = [`text_len`]) with the text form: hex header then `x` padding.
#[inline]
pub fn write_text_message(h: &MsgHeader, out: &mut [u8]) {
    h.write_hex(&mut out[..HEX_HEADER_LEN]);
    out[HEX_HEADER_LEN..].fill(b'x');
}

/// Fills `out` (length = `--payload`) with the binary form: header then zero padding.
#[inline]
pub fn write_binary_message(h: &MsgHeader, out: &mut [u8]) {
    h.write_binary(&mut out[..HEADER_LEN]);
    out[HEADER_LEN..].fill(0);
}

/// JSON text of an `add_group` command.
pub fn add_group_json(group: &str) -> String {
    format!(r#"{{"cmd":"add_group","group_id":{}}}"#, json_string(group))
}

/// The constant parts around the message string of a `send_to_group` command:
/// `prefix + message + suffix` is the whole JSON text.
pub fn send_to_group_parts(group: &str) -> (Vec<u8>, Vec<u8>) {
    let prefix =
        format!(r#"{{"cmd":"send_to_group","group_id":{},"message":""#, json_string(group));
    (prefix.into_bytes(), b"\"}".to_vec())
}

/// `s` as a JSON string literal, quotes included.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Percent-encodes a query-string component (RFC 3986 unreserved characters pass through).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: MsgHeader = MsgHeader { stream: 7, seq: 0x0102_0304_0506_0708, send_ns: 123_456_789 };

    #[test]
    fn binary_roundtrip_with_padding() {
        let mut buf = vec![0xAAu8; 64];
        write_binary_message(&H, &mut buf);
        assert_eq!(&buf[..4], b"RCLG");
        assert_eq!(&buf[4..8], &7u32.to_le_bytes());
        assert_eq!(&buf[8..16], &H.seq.to_le_bytes());
        assert_eq!(&buf[16..24], &H.send_ns.to_le_bytes());
        assert!(buf[24..].iter().all(|&b| b == 0));
        assert_eq!(MsgHeader::parse_binary(&buf), Some(H));
        assert_eq!(MsgHeader::parse_binary(&buf[..24]), Some(H));
    }

    #[test]
    fn binary_rejects_short_or_foreign() {
        let mut buf = [0u8; 24];
        H.write_binary(&mut buf);
        assert_eq!(MsgHeader::parse_binary(&buf[..23]), None);
        buf[0] = b'X';
        assert_eq!(MsgHeader::parse_binary(&buf), None);
        assert_eq!(MsgHeader::parse_binary(b"hello world, not a loadgen message"), None);
    }

    #[test]
    fn text_roundtrip_bare_and_wrapped() {
        let mut msg = vec![0u8; text_len(30)];
        assert_eq!(msg.len(), 48);
        write_text_message(&H, &mut msg);
        assert!(msg.starts_with(HEX_MAGIC));
        assert_eq!(MsgHeader::parse_text(&msg), Some(H));

        let mut long = vec![0u8; text_len(100)];
        write_text_message(&H, &mut long);
        assert!(long[48..].iter().all(|&b| b == b'x'));
        assert_eq!(MsgHeader::parse_text(&long), Some(H));

        // A server that wraps the message in a JSON envelope is fine too.
        let (pre, suf) = send_to_group_parts("room \"1\"");
        let mut json = pre.clone();
        json.extend_from_slice(&long);
        json.extend_from_slice(&suf);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["cmd"], "send_to_group");
        assert_eq!(v["group_id"], "room \"1\"");
        assert_eq!(MsgHeader::parse_text(&json), Some(H));

        // Upper-case hex is accepted.
        let upper = msg.to_ascii_uppercase();
        assert_eq!(MsgHeader::parse_text(&upper), Some(H));
    }

    #[test]
    fn text_rejects_foreign() {
        assert_eq!(MsgHeader::parse_text(b"{\"cmd\":\"ping\"}"), None);
        let mut msg = vec![0u8; 48];
        write_text_message(&H, &mut msg);
        msg[20] = b'z';
        assert_eq!(MsgHeader::parse_text(&msg), None);
        assert_eq!(MsgHeader::parse_text(&msg[..47]), None);
        // Magic too far in.
        let mut far = vec![b' '; TEXT_SCAN_BYTES];
        far.extend_from_slice(&msg);
        assert_eq!(MsgHeader::parse_text(&far), None);
    }

    #[test]
    fn add_group_is_valid_json() {
        let v: serde_json::Value = serde_json::from_str(&add_group_json("g1")).unwrap();
        assert_eq!(v["cmd"], "add_group");
        assert_eq!(v["group_id"], "g1");
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("a b/c~"), "a%20b%2Fc~");
    }
}
