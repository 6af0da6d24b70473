//! The vocabulary of the library API (and, through it, of the HTTP API): what a publish is
//! addressed to, and what operations and queries answer. Plain data: no I/O, no threads.
//!
//! Parity with GatewayWorker's `Gateway` class: send to all, to groups, to client ids, to uids,
//! each with an exclude list; membership, uid binding, sessions, close; presence queries.

use serde::{Deserialize, Serialize};

use crate::history::Position;
use crate::ids::{ConnId, GroupId, Uid};
use crate::proto::Message;

/// A per-connection session (GatewayWorker's `$_SESSION`): a small JSON object, bounded by
/// `Config::session_bytes_max`, freed with the connection.
pub type Session = serde_json::Map<String, serde_json::Value>;

/// Who a publish is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// Every connection of the node.
    All,
    /// Members of any of these groups (each member once, whatever the number of its groups).
    Groups(Vec<GroupId>),
    /// These connections.
    Clients(Vec<ConnId>),
    /// Connections bound to any of these uids (each once).
    Uids(Vec<Uid>),
}

/// One message to publish: encoded once, queued to every recipient as the same bytes.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Who receives it.
    pub to: To,
    /// Connections that must not receive it even if `to` selects them.
    pub exclude: Vec<ConnId>,
    /// The message.
    pub message: Message,
}

impl Publish {
    /// A publish with no exclusions.
    pub fn new(to: To, message: impl Into<Message>) -> Self {
        Publish { to, exclude: Vec::new(), message: message.into() }
    }
}

/// What a publish did on this node.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    /// Connections on this node it was queued to (after exclusions, slow-consumer refusals not
    /// counted). 0 means it reached nobody here.
    pub queued: u64,
    /// Shards that should have received it but whose inbox was full (counted in
    /// `mesh_dropped`): their recipients did not get it.
    pub shards_missed: u32,
    /// Recipients skipped or disconnected because their outbox was full.
    pub slow_consumers: u64,
    /// The position assigned in each target group with history (none for other publishes),
    /// as `{"group": {"epoch": "..", "offset": N}}`.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "positions_map")]
    pub positions: Vec<(GroupId, Position)>,
}

fn positions_map<S: serde::Serializer>(v: &[(GroupId, Position)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(g, p)| (g.as_str(), p)))
}

/// What an operation on one connection did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Done; the state changed.
    Done,
    /// Nothing to change (already a member, not a member, not bound...).
    Unchanged,
    /// No such connection on this node (closed, or never existed).
    NoSuchClient,
    /// Refused by a limit; the reason says which.
    Refused(String),
}

/// A group as the node sees it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Members on this node.
    pub count: u64,
    /// Their client ids.
    pub clients: Vec<String>,
    /// Distinct uids bound to members.
    pub uids: Vec<String>,
}

/// One connection as the node sees it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Whether it is connected to this node.
    pub online: bool,
    /// The uid it is bound to.
    pub uid: Option<String>,
    /// The groups it is in.
    pub groups: Vec<String>,
    /// Its session.
    pub session: Session,
}

/// A uid as the node sees it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidInfo {
    /// Whether any connection is bound to it on this node.
    pub online: bool,
    /// The connections bound to it.
    pub clients: Vec<String>,
}

/// Totals for one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    /// Shard index.
    pub shard: usize,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Groups with members on this shard.
    pub groups: u64,
    /// Group memberships on this shard.
    pub memberships: u64,
    /// Uids with connections on this shard.
    pub uids: u64,
}

/// Node totals.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The node's id.
    pub node_id: String,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Distinct groups with at least one member on the node.
    pub groups: u64,
    /// Distinct uids with at least one connection on the node.
    pub uids: u64,
    /// Per shard.
    pub shards: Vec<ShardStats>,
}

/// Why a request to the shards got no complete answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A shard's inbox was full: try again later (HTTP 503).
    #[error("a shard's inbox is full; retry later")]
    Busy,
    /// The shards did not answer in time (HTTP 503).
    #[error("the shards did not answer in time")]
    Timeout,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
    /// A clustered node could not append to a group's history in Redis (HTTP 503): the
    /// message reached nobody through that group.
    #[error("history store unavailable: {0}")]
    HistoryUnavailable(String),
}
