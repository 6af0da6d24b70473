//! Identities: connections, nodes, groups and uids. A leaf module: it imports nothing of the
//! crate, and everything else imports it.
//!
//! Every id a client or an API caller sees is assigned by the server. A [`ConnId`] names one
//! connection on one node for the whole life of the process: its node, its shard, its slot on
//! that shard and the slot's generation (32 bits, bumped every time the slot is reused), so a
//! stale id never reaches a newer connection in the same slot. Its text form (the "client id")
//! is opaque to clients: 28 lowercase hex digits.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A node (one process). Generated at start-up unless pinned; part of every client id, so a
/// cluster can route a send to one client to the one node that holds it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeId(pub u32);

impl NodeId {
    /// A node id that is very unlikely to clash with another process's: the process id, the
    /// start time and std's per-process random hash keys, hashed.
    pub fn generate() -> NodeId {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.write_u128(now);
        let v = h.finish();
        NodeId((v ^ (v >> 32)) as u32)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A slot in a shard's connection table.
pub type Slot = u32;

/// A connection's id: node, shard, slot and the slot's generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    node: u32,
    shard: u16,
    slot: u32,
    generation: u32,
}

/// Length of a client id's text form.
pub const CLIENT_ID_LEN: usize = 28;

impl ConnId {
    /// Build an id (the shard layer does this when a connection opens).
    pub fn new(node: NodeId, shard: usize, slot: Slot, generation: u32) -> Self {
        debug_assert!(shard <= u16::MAX as usize);
        ConnId { node: node.0, shard: shard as u16, slot, generation }
    }

    /// The node that holds the connection.
    pub fn node(self) -> NodeId {
        NodeId(self.node)
    }

    /// The shard (Workerman's worker id) that owns the connection.
    pub fn shard(self) -> usize {
        usize::from(self.shard)
    }

    /// The slot on its shard.
    pub fn slot(self) -> Slot {
        self.slot
    }

    /// The slot's generation when the connection opened.
    pub fn generation(self) -> u32 {
        self.generation
    }

    /// Workerman's per-worker connection id (seed 003's `to_connection_id`): the slot and its
    /// generation in one integer. With [`ConnId::shard`] and the node, it names the connection.
    pub fn connection_number(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }

    /// Rebuild an id from seed 003's `(to_worker_id, to_connection_id)` pair on `node`.
    pub fn from_worker_pair(node: NodeId, worker: u16, connection: u64) -> Self {
        ConnId {
            node: node.0,
            shard: worker,
            slot: connection as u32,
            generation: (connection >> 32) as u32,
        }
    }

    /// The opaque text form clients and API callers see.
    pub fn client_id(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}{:04x}{:08x}{:08x}", self.node, self.shard, self.slot, self.generation)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({:08x}:{}:{}:{})", self.node, self.shard, self.slot, self.generation)
    }
}

/// A client id that is not one this server could have issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed client id (expected {CLIENT_ID_LEN} hex digits)")]
pub struct BadClientId;

impl FromStr for ConnId {
    type Err = BadClientId;

    fn from_str(s: &str) -> Result<Self, BadClientId> {
        if s.len() != CLIENT_ID_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadClientId);
        }
        let hex =
            |r: std::ops::Range<usize>| u32::from_str_radix(&s[r], 16).map_err(|_| BadClientId);
        Ok(ConnId {
            node: hex(0..8)?,
            shard: hex(8..12)? as u16,
            slot: hex(12..20)?,
            generation: hex(20..28)?,
        })
    }
}

/// Hard ceiling on a group id or uid, whatever the configuration says (a configured limit may
/// only be lower).
pub const NAME_BYTES_MAX: usize = 1024;

/// Why a group id or uid was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    /// Empty.
    #[error("must not be empty")]
    Empty,
    /// Longer than the limit.
    #[error("longer than {0} bytes")]
    TooLong(usize),
    /// Contains a control character.
    #[error("must not contain control characters")]
    Control,
}

fn check_name(s: &str, bytes_max: usize) -> Result<(), BadName> {
    let max = bytes_max.min(NAME_BYTES_MAX);
    if s.is_empty() {
        Err(BadName::Empty)
    } else if s.len() > max {
        Err(BadName::TooLong(max))
    } else if s.chars().any(char::is_control) {
        Err(BadName::Control)
    } else {
        Ok(())
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validate `s` against `bytes_max` (itself capped at [`NAME_BYTES_MAX`]).
            pub fn new(s: &str, bytes_max: usize) -> Result<Self, BadName> {
                check_name(s, bytes_max)?;
                Ok($name(Arc::from(s)))
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

name_type!(
    /// A group's name (Workerman's `group_id`): any non-empty text without control characters.
    GroupId
);
name_type!(
    /// An application user id bound to any number of connections (GatewayWorker's uid).
    Uid
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_round_trips_and_is_opaque_hex() {
        let id = ConnId::new(NodeId(0xdead_beef), 3, 70_000, u32::MAX);
        let text = id.client_id();
        assert_eq!(text.len(), CLIENT_ID_LEN);
        assert_eq!(text.parse::<ConnId>().unwrap(), id);
        assert_eq!(id.node(), NodeId(0xdead_beef));
        assert_eq!((id.shard(), id.slot(), id.generation()), (3, 70_000, u32::MAX));
    }

    #[test]
    fn generation_distinguishes_reused_slots() {
        let a = ConnId::new(NodeId(1), 0, 5, 1);
        let b = ConnId::new(NodeId(1), 0, 5, 2);
        assert_ne!(a, b);
        assert_ne!(a.client_id(), b.client_id());
    }

    #[test]
    fn worker_pair_round_trips() {
        let id = ConnId::new(NodeId(9), 1, 42, 7);
        assert_eq!(ConnId::from_worker_pair(NodeId(9), 1, id.connection_number()), id);
    }

    #[test]
    fn malformed_client_ids_are_refused() {
        for bad in ["", "abc", "zz000000000000000000000000000", &"0".repeat(29), &"g".repeat(28)] {
            assert!(bad.parse::<ConnId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(GroupId::new("room-1", 64).is_ok());
        assert_eq!(GroupId::new("", 64), Err(BadName::Empty));
        assert_eq!(GroupId::new("abcdef", 3), Err(BadName::TooLong(3)));
        assert_eq!(Uid::new("a\nb", 64), Err(BadName::Control));
        assert_eq!(Uid::new(&"x".repeat(5000), usize::MAX), Err(BadName::TooLong(NAME_BYTES_MAX)));
    }
}
