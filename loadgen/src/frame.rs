//! Incremental WebSocket frame reading over split buffers, and masked client frame writing.
//!
//! The receive path never buffers whole frames: it parses each header in place with
//! `tungstenite::protocol::frame::FrameHeader::parse`, hands the caller only the payload
//! *prefix* it needs (24 bytes of a binary frame, up to [`TEXT_PREFIX`] bytes of a text
//! frame, all of a control frame) and skips the rest of the payload as it streams by. The only
//! state kept between reads is a small inline array holding an incomplete header + prefix.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::codec::{HEADER_LEN, TEXT_SCAN_BYTES};

/// Bytes of a text frame's payload handed to the caller (enough to find the hex header).
pub const TEXT_PREFIX: usize = TEXT_SCAN_BYTES;
/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;
/// Longest frame header (RFC 6455 §5.2).
const MAX_HEADER: usize = 14;
/// Capacity of the carry-over array: a header plus the largest prefix we ever need.
pub const PENDING_CAP: usize = MAX_HEADER + TEXT_PREFIX;

/// One parsed frame, with the part of its payload the caller asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent<'a> {
    /// A binary data frame (first fragment or whole message); `prefix` is its first 24 bytes,
    /// or empty when the payload is shorter than that.
    Binary(&'a [u8]),
    /// A text data frame; `prefix` is its first [`TEXT_PREFIX`] bytes, or all of it when
    /// shorter (so short replies such as `{"type":"error",..}` can be recognised).
    Text(&'a [u8]),
    /// A continuation fragment (ignored by the generator).
    Continuation,
    /// A ping with its payload (to be echoed in a pong).
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame with its payload (status code + reason).
    Close(&'a [u8]),
}

/// Why a stream of frames could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// `FrameHeader::parse` rejected the header (e.g. reserved opcode).
    BadHeader(String),
    /// The server masked a frame (forbidden by RFC 6455 §5.1).
    MaskedServerFrame,
    /// A control frame over 125 bytes or fragmented.
    BadControl,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::BadHeader(e) => write!(f, "bad frame header: {e}"),
            ProtoError::MaskedServerFrame => f.write_str("server sent a masked frame"),
            ProtoError::BadControl => f.write_str("oversized or fragmented control frame"),
        }
    }
}

/// Per-connection frame reader state: a carried-over incomplete header/prefix and the number
/// of payload bytes still to skip.
#[derive(Clone)]
pub struct FrameParser {
    pending: [u8; PENDING_CAP],
    pending_len: u16,
    skip: u64,
}

impl Default for FrameParser {
    fn default() -> Self {
        Self { pending: [0; PENDING_CAP], pending_len: 0, skip: 0 }
    }
}

impl std::fmt::Debug for FrameParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameParser")
            .field("pending_len", &self.pending_len)
            .field("skip", &self.skip)
            .finish()
    }
}

/// Outcome of looking at the start of a buffer for one frame.
enum Step {
    /// Not enough bytes for the header plus the payload prefix the caller needs.
    NeedMore,
    /// A frame: `hlen` header bytes, `need` prefix bytes handed out, `len` payload bytes.
    Frame { hlen: usize, need: usize, len: u64, opcode: OpCode },
}

/// Parses one frame header at the start of `data` and decides how much of the payload must
/// be contiguous with it.
#[inline]
fn step(data: &[u8]) -> Result<Step, ProtoError> {
    let mut cur = Cursor::new(data);
    let (header, len) = match FrameHeader::parse(&mut cur) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(Step::NeedMore),
        Err(e) => return Err(ProtoError::BadHeader(e.to_string())),
    };
    if header.mask.is_some() {
        return Err(ProtoError::MaskedServerFrame);
    }
    let hlen = cur.position() as usize;
    let need = match header.opcode {
        OpCode::Data(Data::Binary) => {
            if len >= HEADER_LEN as u64 {
                HEADER_LEN
            } else {
                0
            }
        }
        // All of a short text frame (error replies are short), the first TEXT_PREFIX bytes of
        // a long one.
        OpCode::Data(Data::Text) => len.min(TEXT_PREFIX as u64) as usize,
        OpCode::Data(_) => 0,
        OpCode::Control(_) => {
            if len > MAX_CONTROL as u64 || !header.is_final {
                return Err(ProtoError::BadControl);
            }
            len as usize
        }
    };
    if data.len() - hlen < need {
        return Ok(Step::NeedMore);
    }
    Ok(Step::Frame { hlen, need, len, opcode: header.opcode })
}

#[inline]
fn event(opcode: OpCode, prefix: &[u8]) -> FrameEvent<'_> {
    match opcode {
        OpCode::Data(Data::Binary) => FrameEvent::Binary(prefix),
        OpCode::Data(Data::Text) => FrameEvent::Text(prefix),
        OpCode::Data(_) => FrameEvent::Continuation,
        OpCode::Control(Control::Ping) => FrameEvent::Ping(prefix),
        OpCode::Control(Control::Pong) => FrameEvent::Pong,
        OpCode::Control(_) => FrameEvent::Close(prefix),
    }
}

impl FrameParser {
    /// Bytes carried over from earlier input (an incomplete header + prefix; never payload
    /// that is only skipped).
    pub fn pending_len(&self) -> usize {
        usize::from(self.pending_len)
    }

    /// Parses the frames in `data`, which continues the byte stream of earlier calls,
    /// calling `on_frame` for each frame whose header and needed prefix are complete.
    ///
    /// `data` is read in place wherever it lives (a read buffer, a kernel-provided buffer):
    /// nothing is copied except when a frame's header + prefix straddles two calls, and then
    /// only those at most [`PENDING_CAP`] bytes are kept; payload beyond the prefix is
    /// skipped, never stored.
    pub fn feed<F>(&mut self, data: &[u8], mut on_frame: F) -> Result<(), ProtoError>
    where
        F: FnMut(FrameEvent<'_>),
    {
        let mut pos = 0usize;
        let end = data.len();
        if self.pending_len > 0 {
            // Complete the straddling header + prefix in the carry-over array.
            let old = usize::from(self.pending_len);
            let take = (PENDING_CAP - old).min(end);
            self.pending[old..old + take].copy_from_slice(&data[..take]);
            let have = old + take;
            match step(&self.pending[..have])? {
                Step::NeedMore => {
                    // PENDING_CAP fits any header + prefix, so only a short `data` gets here.
                    debug_assert_eq!(take, end);
                    self.pending_len = have as u16;
                    return Ok(());
                }
                Step::Frame { hlen, need, len, opcode } => {
                    let used = hlen + need; // > old: `old` bytes alone were incomplete
                    on_frame(event(opcode, &self.pending[hlen..used]));
                    pos = used - old;
                    self.pending_len = 0;
                    self.skip = len - need as u64;
                }
            }
        }
        while pos < end {
            if self.skip > 0 {
                let take = self.skip.min((end - pos) as u64);
                pos += take as usize;
                self.skip -= take;
                continue;
            }
            match step(&data[pos..])? {
                Step::NeedMore => break,
                Step::Frame { hlen, need, len, opcode } => {
                    let body = pos + hlen;
                    on_frame(event(opcode, &data[body..body + need]));
                    let consumed = len.min((end - body) as u64);
                    pos = body + consumed as usize;
                    self.skip = len - consumed;
                }
            }
        }
        let rest = end - pos;
        debug_assert!(rest < PENDING_CAP);
        self.pending[..rest].copy_from_slice(&data[pos..]);
        self.pending_len = rest as u16;
        Ok(())
    }
}

/// XORs `buf` with the 4-byte WebSocket mask (starting at mask offset 0).
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let m = u32::from_ne_bytes(mask);
    let mut chunks = buf.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ m;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Appends one masked, final client frame of `len` payload bytes to `out`: the header is
/// written by tungstenite's `FrameHeader::format`, the payload by `fill` directly into `out`
/// (no intermediate buffer), then masked in place. No allocation once `out` has capacity.
#[inline]
pub fn push_masked_frame(
    out: &mut Vec<u8>,
    opcode: OpCode,
    len: usize,
    mask: [u8; 4],
    fill: impl FnOnce(&mut [u8]),
) {
    let header = FrameHeader { is_final: true, opcode, mask: Some(mask), ..FrameHeader::default() };
    header.format(len as u64, out).expect("writing to a Vec cannot fail");
    let start = out.len();
    out.resize(start + len, 0);
    fill(&mut out[start..]);
    apply_mask(&mut out[start..], mask);
}

/// Appends a masked frame carrying `payload` (pong, close, add_group commands).
pub fn push_masked_bytes(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    push_masked_frame(out, opcode, payload.len(), mask, |dst| dst.copy_from_slice(payload));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{write_binary_message, write_text_message, MsgHeader};
    use tungstenite::protocol::frame::Frame;

    /// What a test observes, owned.
    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Ev {
        Binary(Vec<u8>),
        Text(Vec<u8>),
        Cont,
        Ping(Vec<u8>),
        Pong,
        Close(Vec<u8>),
    }

    fn own(e: FrameEvent<'_>) -> Ev {
        match e {
            FrameEvent::Binary(p) => Ev::Binary(p.to_vec()),
            FrameEvent::Text(p) => Ev::Text(p.to_vec()),
            FrameEvent::Continuation => Ev::Cont,
            FrameEvent::Ping(p) => Ev::Ping(p.to_vec()),
            FrameEvent::Pong => Ev::Pong,
            FrameEvent::Close(p) => Ev::Close(p.to_vec()),
        }
    }

    /// A server-side (unmasked) stream of assorted frames, built with tungstenite itself.
    fn server_stream() -> (Vec<u8>, Vec<Ev>) {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        let mut push = |f: Frame, ev: Ev| {
            f.format(&mut bytes).unwrap();
            want.push(ev);
        };
        for (i, size) in [24usize, 64, 125, 126, 1000, 65_535, 65_536, 200_000].iter().enumerate() {
            let mut p = vec![0u8; *size];
            let h = MsgHeader { stream: i as u32, seq: i as u64 * 3, send_ns: 99 };
            write_binary_message(&h, &mut p);
            let prefix = p[..24].to_vec();
            push(Frame::message(p, OpCode::Data(Data::Binary), true), Ev::Binary(prefix));
        }
        push(Frame::message(vec![1u8; 10], OpCode::Data(Data::Binary), true), Ev::Binary(vec![]));
        push(Frame::ping(b"abc".to_vec()), Ev::Ping(b"abc".to_vec()));
        let mut t = vec![0u8; 1000];
        write_text_message(&MsgHeader { stream: 1, seq: 2, send_ns: 3 }, &mut t);
        let tp = t[..TEXT_PREFIX].to_vec();
        push(Frame::message(t, OpCode::Data(Data::Text), true), Ev::Text(tp));
        let short = b"short text, still over forty-eight bytes long!!!".to_vec();
        assert!(short.len() >= 48);
        push(Frame::message(short.clone(), OpCode::Data(Data::Text), true), Ev::Text(short));
        push(
            Frame::message(b"hi".to_vec(), OpCode::Data(Data::Text), true),
            Ev::Text(b"hi".to_vec()),
        );
        push(Frame::message(vec![0u8; 5], OpCode::Data(Data::Binary), false), Ev::Binary(vec![]));
        push(Frame::message(vec![0u8; 5], OpCode::Data(Data::Continue), true), Ev::Cont);
        push(Frame::pong(vec![]), Ev::Pong);
        push(Frame::message(vec![0u8; 0], OpCode::Data(Data::Binary), true), Ev::Binary(vec![]));
        push(Frame::close(None), Ev::Close(vec![]));
        (bytes, want)
    }

    /// Feeds `stream` through the parser in pieces of `chunk(i)` bytes, each copied into a
    /// buffer of its own (as completions land in different provided buffers).
    fn feed(stream: &[u8], mut chunk: impl FnMut(usize) -> usize) -> Vec<Ev> {
        let mut parser = FrameParser::default();
        let mut got = Vec::new();
        let mut off = 0;
        let mut i = 0;
        while off < stream.len() {
            let n = chunk(i).max(1).min(stream.len() - off);
            let piece = stream[off..off + n].to_vec();
            off += n;
            i += 1;
            parser.feed(&piece, |e| got.push(own(e))).unwrap();
            assert!(parser.pending_len() < PENDING_CAP);
        }
        assert_eq!(parser.skip, 0);
        assert_eq!(parser.pending_len, 0);
        got
    }

    #[test]
    fn split_at_every_offset() {
        let (s, want) = server_stream();
        // Every single split point, and every pair of split points over the first frames.
        for cut in 0..=s.len().min(70_000) {
            let mut p = FrameParser::default();
            let mut got = Vec::new();
            p.feed(&s[..cut], |e| got.push(own(e))).unwrap();
            p.feed(&s[cut..], |e| got.push(own(e))).unwrap();
            assert_eq!(got, want, "split at {cut}");
        }
        let head = 400;
        for a in 0..head {
            for b in a..head {
                let mut p = FrameParser::default();
                let mut got = Vec::new();
                for part in [&s[..a], &s[a..b], &s[b..]] {
                    p.feed(part, |e| got.push(own(e))).unwrap();
                }
                assert_eq!(got, want, "splits at {a}, {b}");
            }
        }
    }

    #[test]
    fn carry_over_keeps_only_header_and_prefix() {
        // A 1 KiB binary frame cut right after its 4-byte header: nothing is kept; cut in
        // the middle of its 24-byte prefix: only header + the prefix bytes seen so far.
        let mut p = vec![0u8; 1024];
        write_binary_message(&MsgHeader { stream: 0, seq: 7, send_ns: 1 }, &mut p);
        let mut bytes = Vec::new();
        Frame::message(p, OpCode::Data(Data::Binary), true).format(&mut bytes).unwrap();
        let mut parser = FrameParser::default();
        parser.feed(&bytes[..4], |_| panic!("no frame yet")).unwrap();
        assert_eq!(parser.pending_len(), 4);
        parser.feed(&bytes[4..14], |_| panic!("no frame yet")).unwrap();
        assert_eq!(parser.pending_len(), 14);
        let mut n = 0;
        parser.feed(&bytes[14..500], |_| n += 1).unwrap();
        assert_eq!((n, parser.pending_len()), (1, 0));
        assert_eq!(parser.skip, (bytes.len() - 500) as u64);
    }

    #[test]
    fn whole_buffer() {
        let (s, want) = server_stream();
        assert_eq!(feed(&s, |_| usize::MAX), want);
    }

    #[test]
    fn byte_by_byte() {
        let (s, want) = server_stream();
        assert_eq!(feed(&s, |_| 1), want);
    }

    #[test]
    fn every_fixed_split_size() {
        let (s, want) = server_stream();
        for size in [2, 3, 5, 7, 13, 23, 24, 25, 100, 127, 1000, 4096, 65_536] {
            assert_eq!(feed(&s, |_| size), want, "chunk size {size}");
        }
    }

    #[test]
    fn pseudo_random_splits() {
        let (s, want) = server_stream();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..50 {
            let got = feed(&s, |_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 700) as usize + 1
            });
            assert_eq!(got, want);
        }
    }

    #[test]
    fn masked_server_frame_is_an_error() {
        let mut bytes = Vec::new();
        push_masked_bytes(&mut bytes, OpCode::Data(Data::Binary), &[0u8; 30], [1, 2, 3, 4]);
        let mut p = FrameParser::default();
        assert_eq!(p.feed(&bytes, |_| {}), Err(ProtoError::MaskedServerFrame));
    }

    #[test]
    fn reserved_opcode_is_an_error() {
        let mut p = FrameParser::default();
        assert!(matches!(p.feed(&[0x83, 0x00], |_| {}), Err(ProtoError::BadHeader(_))));
    }

    #[test]
    fn masked_client_frames_unmask_to_payload() {
        for len in [0usize, 1, 3, 4, 5, 24, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut out = Vec::new();
            let mask = [0xde, 0xad, 0xbe, 0xef];
            push_masked_bytes(&mut out, OpCode::Data(Data::Binary), &payload, mask);
            let mut cur = Cursor::new(&out[..]);
            let (h, n) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            assert_eq!(n as usize, len);
            assert_eq!(h.mask, Some(mask));
            assert!(h.is_final);
            let start = cur.position() as usize;
            let mut body = out[start..].to_vec();
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
        }
    }
}
