//! The inter-node format: what one node sends the others over the Redis bus. Compact, binary,
//! versioned; sans-I/O (no Redis, no tokio, no clock).
//!
//! Every message starts with the same 14-byte header:
//!
//! ```text
//! version u8 | kind u8 | origin node u32 | sequence u64      (big-endian)
//! ```
//!
//! `version` is [`VERSION`]; a node drops a message of another version (counted as
//! `cluster.rejected_version`, logged). `sequence` counts the origin's messages, so gaps and
//! reordering are visible when debugging. The bodies:
//!
//! ```text
//! Publish: request u64 (0: no report wanted) | target | exclude | frame
//!   target  = tag u8 (0 all, 1 groups, 2 uids, 3 clients) | count u16 | items
//!             (a name is len u16 + UTF-8; a client is node u32 shard u16 slot u32 gen u32)
//!   exclude = count u16 | clients
//!   frame   = the rest: ONE unmasked final WebSocket frame (text or binary), exactly as the
//!             origin encoded it, so a receiving node queues these very bytes and encodes
//!             nothing; it is validated (header, length, UTF-8 for text) before use.
//! Query:   request u64 | tag u8 (0 stats, 1 group, 2 uid, 3 client, 4 operation) | name or
//!          client; an operation is client | JSON (the rest: join/leave a group, bind/unbind
//!          a uid, set a session, close, forwarded to the node that holds the client)
//! Answer:  request u64 | JSON body (the rest; control-plane traffic, small and rare)
//! Report:  request u64 | queued u64 | slow consumers u64
//! Interest: request u64 (0) | flags u8 (1: replace, this starts the sender's whole set;
//!             2: reply with yours) | added | removed
//!   added, removed = count u16 | items (tag u8: 1 group, 2 uid | name)
//! ```

use bytes::{Buf, BufMut, Bytes};

use super::interest::Channel;
use crate::ids::{ConnId, GroupId, NodeId, Uid, NAME_BYTES_MAX};

/// The format version this build speaks.
pub const VERSION: u8 = 1;

/// What starts a positioned history message on a group's channel: published by the Redis
/// append script (`history::redis`, its `prefix`), not by a node, so it has no header; the
/// rest is `<epoch>:<offset>:<kind><data>` (`history::redis::decode_positioned`). Version 0
/// is never a node's, so it cannot be mistaken for an [`Envelope`].
pub const POSITIONED_PREFIX: &[u8] = b"\0h";

/// A positioned history message with an exclude list: `\0x<client id>,<client id>\n` then
/// what follows [`POSITIONED_PREFIX`]. Each node skips the listed clients it holds.
pub const POSITIONED_EXCLUDING_PREFIX: &[u8] = b"\0x";

/// The prefix the append script puts before a positioned message excluding `exclude`.
pub fn positioned_prefix(exclude: &[ConnId]) -> Vec<u8> {
    if exclude.is_empty() {
        return POSITIONED_PREFIX.to_vec();
    }
    let mut out = POSITIONED_EXCLUDING_PREFIX.to_vec();
    for (i, id) in exclude.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.push(b'\n');
    out
}

/// A positioned message's exclude list and the rest, or `Err` when malformed.
pub type SplitPositioned<'a> = Result<(Vec<ConnId>, &'a [u8]), ()>;

/// Split a bus payload that is a positioned history message into its exclude list and the
/// rest (for `history::redis::decode_positioned`). `None`: not one; `Some(Err(()))`: one,
/// malformed.
pub fn split_positioned(payload: &[u8]) -> Option<SplitPositioned<'_>> {
    if let Some(body) = payload.strip_prefix(POSITIONED_PREFIX) {
        return Some(Ok((Vec::new(), body)));
    }
    let rest = payload.strip_prefix(POSITIONED_EXCLUDING_PREFIX)?;
    let parse = || -> SplitPositioned<'_> {
        let nl = rest.iter().position(|&b| b == b'\n').ok_or(())?;
        let list = std::str::from_utf8(&rest[..nl]).map_err(|_| ())?;
        let ids = list
            .split(',')
            .map(|s| s.parse::<ConnId>().map_err(|_| ()))
            .collect::<Result<_, _>>()?;
        Ok((ids, &rest[nl + 1..]))
    };
    Some(parse())
}

/// Bytes of the common header.
pub const HEADER_BYTES: usize = 14;

/// Bytes of one client id on the wire.
const CLIENT_BYTES: usize = 14;

/// Most names or client ids one target (or exclude list) may carry.
pub const ITEMS_MAX: usize = u16::MAX as usize;

/// Who a publish is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of every node.
    All,
    /// Members of any of these groups.
    Groups(Vec<GroupId>),
    /// Connections bound to any of these uids.
    Uids(Vec<Uid>),
    /// These connections (all on the node the message is sent to).
    Clients(Vec<ConnId>),
}

/// A question to other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Connection, group and uid counts.
    Stats,
    /// A group's members.
    Group(GroupId),
    /// A uid's connections.
    Uid(Uid),
    /// One connection (sent to its node only).
    Client(ConnId),
    /// An operation on a connection, for the node that holds it; `op` is JSON (control-plane
    /// traffic, small and rare), checked by the receiver.
    Op {
        /// The connection.
        client: ConnId,
        /// The operation, JSON.
        op: Bytes,
    },
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A publish: `frame` is one encoded WebSocket frame.
    Publish {
        /// Non-zero: the origin wants a [`Body::Report`] with this request id.
        request: u64,
        /// Who receives it.
        target: Target,
        /// Connections that must not receive it.
        exclude: Vec<ConnId>,
        /// The frame, validated.
        frame: Bytes,
    },
    /// A query; answered with [`Body::Answer`] on the origin's node channel.
    Query {
        /// The origin's request id.
        request: u64,
        /// The question.
        query: Query,
    },
    /// A query's answer (JSON).
    Answer {
        /// The request it answers.
        request: u64,
        /// JSON text.
        json: Bytes,
    },
    /// The sender's group and uid subscriptions changed (or, with `replace`, here is the
    /// whole set, possibly followed by more messages without `replace`).
    Interest {
        /// Forget what the sender announced before: `added` starts its whole set.
        replace: bool,
        /// Answer with your whole set on the sender's node channel (it just started or came
        /// back).
        reply: bool,
        /// Channels subscribed (group and uid channels only).
        added: Vec<Channel>,
        /// Channels unsubscribed.
        removed: Vec<Channel>,
    },
    /// What a publish did on the answering node.
    Report {
        /// The publish's request id.
        request: u64,
        /// Connections it was queued to.
        queued: u64,
        /// Recipients skipped or disconnected for a full outbox.
        slow_consumers: u64,
    },
}

/// One bus message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node that sent it.
    pub origin: NodeId,
    /// The origin's message counter.
    pub sequence: u64,
    /// The content.
    pub body: Body,
}

/// Why a bus message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its own fields say.
    #[error("truncated message")]
    Truncated,
    /// Another format version.
    #[error("incompatible format version {0} (this node speaks {VERSION})")]
    Version(u8),
    /// An unknown message kind or tag.
    #[error("unknown message kind or tag {0}")]
    UnknownTag(u8),
    /// A group id or uid that is empty, too long, or not valid text.
    #[error("invalid group id or uid")]
    BadName,
    /// The WebSocket frame is not one unmasked final text/binary frame of the right length.
    #[error("invalid WebSocket frame")]
    BadFrame,
    /// Bytes after the end of a message that has a fixed end.
    #[error("trailing bytes")]
    Trailing,
    /// More items than [`ITEMS_MAX`].
    #[error("too many names or clients")]
    TooMany,
    /// A reserved field is not zero.
    #[error("reserved field not zero")]
    Reserved,
}

impl Envelope {
    /// Append the encoded message to `out`. Fails only when a list is longer than
    /// [`ITEMS_MAX`] or a name longer than [`NAME_BYTES_MAX`] (ids made by this crate never are).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let kind = match &self.body {
            Body::Publish { .. } => 1,
            Body::Query { .. } => 2,
            Body::Answer { .. } => 3,
            Body::Report { .. } => 4,
            Body::Interest { .. } => 5,
        };
        out.put_u8(VERSION);
        out.put_u8(kind);
        out.put_u32(self.origin.0);
        out.put_u64(self.sequence);
        match &self.body {
            Body::Publish { request, target, exclude, frame } => {
                out.put_u64(*request);
                match target {
                    Target::All => {
                        out.put_u8(0);
                        out.put_u16(0);
                    }
                    Target::Groups(g) => {
                        out.put_u8(1);
                        put_names(out, g.iter().map(|g| g.as_str()), g.len())?;
                    }
                    Target::Uids(u) => {
                        out.put_u8(2);
                        put_names(out, u.iter().map(|u| u.as_str()), u.len())?;
                    }
                    Target::Clients(c) => {
                        out.put_u8(3);
                        put_clients(out, c)?;
                    }
                }
                put_clients(out, exclude)?;
                out.put_slice(frame);
            }
            Body::Query { request, query } => {
                out.put_u64(*request);
                match query {
                    Query::Stats => out.put_u8(0),
                    Query::Group(g) => {
                        out.put_u8(1);
                        put_name(out, g)?;
                    }
                    Query::Uid(u) => {
                        out.put_u8(2);
                        put_name(out, u)?;
                    }
                    Query::Client(c) => {
                        out.put_u8(3);
                        put_client(out, *c);
                    }
                    Query::Op { client, op } => {
                        out.put_u8(4);
                        put_client(out, *client);
                        out.put_slice(op);
                    }
                }
            }
            Body::Answer { request, json } => {
                out.put_u64(*request);
                out.put_slice(json);
            }
            Body::Report { request, queued, slow_consumers } => {
                out.put_u64(*request);
                out.put_u64(*queued);
                out.put_u64(*slow_consumers);
            }
            Body::Interest { replace, reply, added, removed } => {
                out.put_u64(0);
                out.put_u8(u8::from(*replace) | u8::from(*reply) << 1);
                put_channels(out, added)?;
                put_channels(out, removed)?;
            }
        }
        Ok(())
    }

    /// Decode one message. `msg` is shared, not copied: a publish's frame is a slice of it.
    pub fn decode(msg: Bytes) -> Result<Envelope, WireError> {
        let mut b = msg.clone();
        if b.is_empty() {
            return Err(WireError::Truncated);
        }
        let version = b.get_u8();
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        need(&b, HEADER_BYTES - 1)?;
        let kind = b.get_u8();
        let origin = NodeId(b.get_u32());
        let sequence = b.get_u64();
        need(&b, 8)?;
        let request = b.get_u64();
        let body = match kind {
            1 => {
                need(&b, 1)?;
                let target = match b.get_u8() {
                    0 => {
                        need(&b, 2)?;
                        if b.get_u16() != 0 {
                            return Err(WireError::Trailing);
                        }
                        Target::All
                    }
                    1 => Target::Groups(get_names(&mut b)?),
                    2 => Target::Uids(get_names(&mut b)?),
                    3 => Target::Clients(get_clients(&mut b)?),
                    t => return Err(WireError::UnknownTag(t)),
                };
                let exclude = get_clients(&mut b)?;
                check_frame(&b)?;
                Body::Publish { request, target, exclude, frame: b }
            }
            2 => {
                need(&b, 1)?;
                let query = match b.get_u8() {
                    0 => Query::Stats,
                    1 => Query::Group(get_name(&mut b)?),
                    2 => Query::Uid(get_name(&mut b)?),
                    3 => Query::Client(get_client(&mut b)?),
                    4 => {
                        let client = get_client(&mut b)?;
                        if b.is_empty() {
                            return Err(WireError::Truncated);
                        }
                        Query::Op { client, op: std::mem::take(&mut b) }
                    }
                    t => return Err(WireError::UnknownTag(t)),
                };
                if !b.is_empty() {
                    return Err(WireError::Trailing);
                }
                Body::Query { request, query }
            }
            3 => Body::Answer { request, json: b },
            4 => {
                need(&b, 16)?;
                let (queued, slow_consumers) = (b.get_u64(), b.get_u64());
                if !b.is_empty() {
                    return Err(WireError::Trailing);
                }
                Body::Report { request, queued, slow_consumers }
            }
            5 => {
                // The request field is reserved here: zero, so every message has one encoding.
                if request != 0 {
                    return Err(WireError::Reserved);
                }
                need(&b, 1)?;
                let flags = b.get_u8();
                if flags > 3 {
                    return Err(WireError::UnknownTag(flags));
                }
                let added = get_channels(&mut b)?;
                let removed = get_channels(&mut b)?;
                if !b.is_empty() {
                    return Err(WireError::Trailing);
                }
                Body::Interest { replace: flags & 1 != 0, reply: flags & 2 != 0, added, removed }
            }
            k => return Err(WireError::UnknownTag(k)),
        };
        Ok(Envelope { origin, sequence, body })
    }
}

fn need(b: &Bytes, n: usize) -> Result<(), WireError> {
    if b.len() < n {
        Err(WireError::Truncated)
    } else {
        Ok(())
    }
}

fn put_name(out: &mut Vec<u8>, s: &str) -> Result<(), WireError> {
    if s.len() > NAME_BYTES_MAX {
        return Err(WireError::BadName);
    }
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_names<'a>(
    out: &mut Vec<u8>,
    names: impl Iterator<Item = &'a str>,
    n: usize,
) -> Result<(), WireError> {
    if n > ITEMS_MAX {
        return Err(WireError::TooMany);
    }
    out.put_u16(n as u16);
    for s in names {
        put_name(out, s)?;
    }
    Ok(())
}

/// Group and uid channels (others cannot be announced: a bad name is refused).
fn put_channels(out: &mut Vec<u8>, chans: &[Channel]) -> Result<(), WireError> {
    if chans.len() > ITEMS_MAX {
        return Err(WireError::TooMany);
    }
    out.put_u16(chans.len() as u16);
    for ch in chans {
        match ch {
            Channel::Group(g) => {
                out.put_u8(1);
                put_name(out, g)?;
            }
            Channel::Uid(u) => {
                out.put_u8(2);
                put_name(out, u)?;
            }
            Channel::All | Channel::Node(_) => return Err(WireError::BadName),
        }
    }
    Ok(())
}

fn get_channels(b: &mut Bytes) -> Result<Vec<Channel>, WireError> {
    need(b, 2)?;
    let n = b.get_u16() as usize;
    // Each item takes at least 4 bytes (tag, length, one byte of name).
    need(b, n * 4)?;
    (0..n)
        .map(|_| {
            need(b, 1)?;
            match b.get_u8() {
                1 => Ok(Channel::Group(get_name(b)?)),
                2 => Ok(Channel::Uid(get_name(b)?)),
                t => Err(WireError::UnknownTag(t)),
            }
        })
        .collect()
}

fn put_client(out: &mut Vec<u8>, c: ConnId) {
    out.put_u32(c.node().0);
    out.put_u16(c.shard() as u16);
    out.put_u32(c.slot());
    out.put_u32(c.generation());
}

fn put_clients(out: &mut Vec<u8>, c: &[ConnId]) -> Result<(), WireError> {
    if c.len() > ITEMS_MAX {
        return Err(WireError::TooMany);
    }
    out.put_u16(c.len() as u16);
    for id in c {
        put_client(out, *id);
    }
    Ok(())
}

fn get_str(b: &mut Bytes) -> Result<String, WireError> {
    need(b, 2)?;
    let n = b.get_u16() as usize;
    need(b, n)?;
    let raw = b.split_to(n);
    String::from_utf8(raw.to_vec()).map_err(|_| WireError::BadName)
}

fn get_name<T: NameLike>(b: &mut Bytes) -> Result<T, WireError> {
    let s = get_str(b)?;
    T::parse(&s)
}

trait NameLike: Sized {
    fn parse(s: &str) -> Result<Self, WireError>;
}

impl NameLike for GroupId {
    fn parse(s: &str) -> Result<Self, WireError> {
        GroupId::new(s, NAME_BYTES_MAX).map_err(|_| WireError::BadName)
    }
}

impl NameLike for Uid {
    fn parse(s: &str) -> Result<Self, WireError> {
        Uid::new(s, NAME_BYTES_MAX).map_err(|_| WireError::BadName)
    }
}

fn get_names<T: NameLike>(b: &mut Bytes) -> Result<Vec<T>, WireError> {
    need(b, 2)?;
    let n = b.get_u16() as usize;
    // Each name takes at least 3 bytes: refuse a count the message cannot hold before
    // allocating for it.
    need(b, n * 3)?;
    (0..n).map(|_| get_name(b)).collect()
}

fn get_client(b: &mut Bytes) -> Result<ConnId, WireError> {
    need(b, CLIENT_BYTES)?;
    let node = NodeId(b.get_u32());
    let shard = b.get_u16() as usize;
    let (slot, generation) = (b.get_u32(), b.get_u32());
    Ok(ConnId::new(node, shard, slot, generation))
}

fn get_clients(b: &mut Bytes) -> Result<Vec<ConnId>, WireError> {
    need(b, 2)?;
    let n = b.get_u16() as usize;
    need(b, n * CLIENT_BYTES)?;
    (0..n).map(|_| get_client(b)).collect()
}

/// One unmasked final text or binary frame filling `f` exactly; text must be UTF-8.
fn check_frame(f: &[u8]) -> Result<(), WireError> {
    if f.len() < 2 {
        return Err(WireError::BadFrame);
    }
    let text = match f[0] {
        0x81 => true,
        0x82 => false,
        _ => return Err(WireError::BadFrame),
    };
    if f[1] & 0x80 != 0 {
        return Err(WireError::BadFrame);
    }
    let (len, header) = match f[1] & 0x7f {
        126 if f.len() >= 4 => (u64::from(u16::from_be_bytes([f[2], f[3]])), 4),
        127 if f.len() >= 10 => {
            (u64::from_be_bytes(f[2..10].try_into().map_err(|_| WireError::BadFrame)?), 10)
        }
        126 | 127 => return Err(WireError::BadFrame),
        n => (u64::from(n), 2),
    };
    if (f.len() - header) as u64 != len {
        return Err(WireError::BadFrame);
    }
    if text && std::str::from_utf8(&f[header..]).is_err() {
        return Err(WireError::BadFrame);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Message;

    fn g(s: &str) -> GroupId {
        GroupId::new(s, 128).unwrap()
    }

    fn round_trip(e: &Envelope) -> Vec<u8> {
        let mut out = Vec::new();
        e.encode(&mut out).unwrap();
        assert_eq!(Envelope::decode(Bytes::from(out.clone())).unwrap(), *e);
        out
    }

    #[test]
    fn a_group_publish_is_compact_and_byte_exact() {
        let e = Envelope {
            origin: NodeId(0x0102_0304),
            sequence: 7,
            body: Body::Publish {
                request: 0,
                target: Target::Groups(vec![g("room")]),
                exclude: vec![],
                frame: Message::text("hi").encode(),
            },
        };
        let out = round_trip(&e);
        let mut want = vec![1, 1, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 7];
        want.extend_from_slice(&[0; 8]); // request
        want.extend_from_slice(&[1, 0, 1, 0, 4, b'r', b'o', b'o', b'm']); // target
        want.extend_from_slice(&[0, 0]); // exclude
        want.extend_from_slice(&[0x81, 2, b'h', b'i']); // frame
        assert_eq!(out, want);
        assert_eq!(out.len(), HEADER_BYTES + 8 + 9 + 2 + 4);
    }

    #[test]
    fn every_kind_round_trips() {
        let c = ConnId::new(NodeId(9), 3, 70_000, u32::MAX);
        for body in [
            Body::Publish {
                request: 5,
                target: Target::All,
                exclude: vec![c],
                frame: Message::binary(vec![0u8; 70_000]).encode(),
            },
            Body::Publish {
                request: 0,
                target: Target::Uids(vec![Uid::new("u1", 64).unwrap()]),
                exclude: vec![],
                frame: Message::text("é".repeat(100)).encode(),
            },
            Body::Publish {
                request: 0,
                target: Target::Clients(vec![c, c]),
                exclude: vec![],
                frame: Message::text("").encode(),
            },
            Body::Query { request: 1, query: Query::Stats },
            Body::Query { request: 2, query: Query::Group(g("a")) },
            Body::Query { request: 3, query: Query::Uid(Uid::new("x", 9).unwrap()) },
            Body::Query { request: 4, query: Query::Client(c) },
            Body::Query {
                request: 5,
                query: Query::Op { client: c, op: Bytes::from_static(b"{\"close\":{}}") },
            },
            Body::Answer { request: 4, json: Bytes::from_static(b"{\"a\":1}") },
            Body::Report { request: 4, queued: 10, slow_consumers: 1 },
            Body::Interest {
                replace: true,
                reply: true,
                added: vec![Channel::Group(g("a")), Channel::Uid(Uid::new("u", 9).unwrap())],
                removed: vec![Channel::Group(g("b"))],
            },
            Body::Interest { replace: false, reply: false, added: vec![], removed: vec![] },
        ] {
            round_trip(&Envelope { origin: NodeId(1), sequence: u64::MAX, body });
        }
    }

    #[test]
    fn another_version_is_refused() {
        let e = Envelope {
            origin: NodeId(1),
            sequence: 1,
            body: Body::Query { request: 1, query: Query::Stats },
        };
        let mut out = Vec::new();
        e.encode(&mut out).unwrap();
        out[0] = 2;
        assert_eq!(Envelope::decode(out.into()), Err(WireError::Version(2)));
    }

    #[test]
    fn bad_frames_are_refused() {
        let publish = |frame: &[u8]| {
            let e = Envelope {
                origin: NodeId(1),
                sequence: 1,
                body: Body::Publish {
                    request: 0,
                    target: Target::All,
                    exclude: vec![],
                    frame: Bytes::copy_from_slice(frame),
                },
            };
            let mut out = Vec::new();
            e.encode(&mut out).unwrap();
            Envelope::decode(out.into())
        };
        assert!(publish(&[0x81, 2, b'o', b'k']).is_ok());
        for bad in [
            &[][..],
            &[0x81, 3, b'o', b'k'],          // short
            &[0x81, 1, b'o', b'k'],          // long
            &[0x01, 2, b'o', b'k'],          // not final
            &[0x89, 2, b'o', b'k'],          // ping
            &[0x81, 0x82, 0, 0, 0, 0, 1, 2], // masked
            &[0x81, 2, 0xff, 0xfe],          // text, not UTF-8
            &[0x82, 126, 0],                 // truncated extended length
        ] {
            assert_eq!(publish(bad), Err(WireError::BadFrame), "{bad:?}");
        }
    }

    #[test]
    fn bad_names_and_tags_are_refused() {
        let mut m = vec![1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        m.extend_from_slice(&[0; 8]);
        let with = |tail: &[u8]| {
            let mut v = m.clone();
            v.extend_from_slice(tail);
            Envelope::decode(v.into())
        };
        assert_eq!(with(&[1, 0, 1, 0, 0, 0, 0, 0x81, 0]), Err(WireError::BadName)); // empty
        assert_eq!(with(&[1, 0, 1, 0, 1, 7, 0, 0, 0x81, 0]), Err(WireError::BadName)); // control
        assert_eq!(with(&[9]), Err(WireError::UnknownTag(9)));
        assert_eq!(with(&[1, 0xff, 0xff, 0, 1]), Err(WireError::Truncated));
        let mut interest = m.clone();
        interest[1] = 5;
        interest[HEADER_BYTES + 7] = 1; // the reserved request field
        interest.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert_eq!(Envelope::decode(interest.clone().into()), Err(WireError::Reserved));
        interest[HEADER_BYTES + 7] = 0;
        assert!(Envelope::decode(interest.into()).is_ok());
        let mut k = m.clone();
        k[1] = 77;
        assert_eq!(Envelope::decode(k.into()), Err(WireError::UnknownTag(77)));
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::proto::Message;

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9:é-]{1,20}"
    }

    fn client() -> impl Strategy<Value = ConnId> {
        (any::<u32>(), any::<u16>(), any::<u32>(), any::<u32>())
            .prop_map(|(n, s, slot, g)| ConnId::new(NodeId(n), s as usize, slot, g))
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            Just(Target::All),
            proptest::collection::vec(name(), 1..5).prop_map(|v| Target::Groups(
                v.iter().map(|s| GroupId::new(s, 128).unwrap()).collect()
            )),
            proptest::collection::vec(name(), 1..5)
                .prop_map(|v| Target::Uids(v.iter().map(|s| Uid::new(s, 128).unwrap()).collect())),
            proptest::collection::vec(client(), 1..5).prop_map(Target::Clients),
        ]
    }

    proptest! {
        #[test]
        fn publishes_round_trip(
            origin in any::<u32>(),
            sequence in any::<u64>(),
            request in any::<u64>(),
            target in target(),
            exclude in proptest::collection::vec(client(), 0..4),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            text in any::<bool>(),
        ) {
            let message = if text {
                Message::text(String::from_utf8_lossy(&payload).into_owned())
            } else {
                Message::binary(payload)
            };
            let e = Envelope {
                origin: NodeId(origin),
                sequence,
                body: Body::Publish { request, target, exclude, frame: message.encode() },
            };
            let mut out = Vec::new();
            e.encode(&mut out).unwrap();
            prop_assert_eq!(Envelope::decode(Bytes::from(out.clone())).unwrap(), e);
            // Every truncation is refused, never a panic.
            for cut in 0..out.len() {
                prop_assert!(Envelope::decode(Bytes::copy_from_slice(&out[..cut])).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Envelope::decode(Bytes::from(bytes));
        }
    }
}
