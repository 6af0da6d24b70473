//! The client command protocol (`--on-message commands`): JSON text frames in, JSON text
//! frames out. Sans-I/O: it parses, checks permissions, rate-limits (time passed in) and
//! formats replies; it never touches a socket, a channel, a thread or the clock.
//!
//! Seed 004 works unchanged: `{"cmd":"add_group","group_id":"123"}` and
//! `{"cmd":"send_to_group","group_id":"123","message":"..."}`. A command that carries an `"id"`
//! (number or string) gets a reply echoing it (`{"type":"ok","id":..}`); without one, success
//! is silent, so seed clients see only the messages they asked for. Errors always get
//! `{"type":"error","reason":"..."}` (with `cmd` and `id` when known).

use std::time::{Duration, Instant};

use crate::config::Permissions;
use crate::ids::GroupId;

/// A request id as the client sent it: kept as its JSON text (a number or a string), echoed
/// verbatim in the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `{"cmd":"add_group","group_id":"g"}`
    AddGroup { group: GroupId },
    /// `{"cmd":"leave_group","group_id":"g"}`
    LeaveGroup { group: GroupId },
    /// `{"cmd":"send_to_group","group_id":"g","message":"..."}`; `group_ids: [..]` for several;
    /// optional `exclude: [client ids]`.
    SendToGroup { groups: Vec<GroupId>, message: String, exclude: Vec<String> },
    /// `{"cmd":"send_to_all","message":"..."}`; optional `exclude`.
    SendToAll { message: String, exclude: Vec<String> },
    /// `{"cmd":"send_to_client","client_id":"..","message":".."}`; `client_ids: [..]` for several.
    SendToClient { clients: Vec<String>, message: String },
    /// `{"cmd":"ping"}`: always answered with `{"type":"pong"}`.
    Ping,
}

impl Command {
    /// The command's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::AddGroup { .. } => "add_group",
            Command::LeaveGroup { .. } => "leave_group",
            Command::SendToGroup { .. } => "send_to_group",
            Command::SendToAll { .. } => "send_to_all",
            Command::SendToClient { .. } => "send_to_client",
            Command::Ping => "ping",
        }
    }
}

/// A parsed command and its optional request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the reply, when present.
    pub id: Option<RequestId>,
    /// What to do.
    pub cmd: Command,
}

/// A command that could not be parsed: answered with an error frame, never a disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The request id, if it could be read.
    pub id: Option<RequestId>,
    /// The `cmd` field, if it could be read.
    pub cmd: Option<String>,
    /// Human-readable reason, e.g. `missing field "group_id"`.
    pub reason: String,
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Longest group id, in bytes.
    pub group_id_bytes_max: usize,
    /// Most groups or clients one command may address.
    pub targets_max: usize,
}

/// Parse one text frame. The `message` field is the text members receive, exactly: a JSON
/// string is delivered as its (unescaped) content; any other JSON value as its compact JSON text.
pub fn parse(text: &str, limits: ParseLimits) -> Result<Request, Rejected> {
    let _ = (text, limits);
    todo!()
}

/// A command refused by [`Permissions`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Check `cmd` against the permissions. `is_member(g)` tells whether the connection is in
/// group `g`; `groups_now` is how many groups it is in.
pub fn check(
    perms: &Permissions,
    join: &JoinMatcher,
    cmd: &Command,
    is_member: impl Fn(&str) -> bool,
    groups_now: usize,
) -> Result<(), Denied> {
    let _ = (perms, join, cmd, is_member, groups_now);
    todo!()
}

/// [`crate::config::JoinPolicy`] compiled once (glob patterns).
#[derive(Debug, Clone)]
pub struct JoinMatcher {
    _todo: (),
}

impl JoinMatcher {
    /// Compile the policy; an invalid pattern is an error naming it.
    pub fn new(policy: &crate::config::JoinPolicy) -> Result<Self, String> {
        let _ = policy;
        todo!()
    }

    /// Whether a client may join `group`.
    pub fn allows(&self, group: &str) -> bool {
        let _ = group;
        todo!()
    }
}

/// `{"type":"welcome","client_id":"..","worker_id":N,"connection_id":N}`
pub fn welcome(client_id: &str, worker_id: usize, connection_id: u64) -> String {
    let _ = (client_id, worker_id, connection_id);
    todo!()
}

/// `{"type":"ok","cmd":"..","id":..}` (plus `"queued":N` when given).
pub fn ok(id: &RequestId, cmd: &str, queued: Option<u64>) -> String {
    let _ = (id, cmd, queued);
    todo!()
}

/// `{"type":"pong"}` (with `"id"` when given).
pub fn pong(id: Option<&RequestId>) -> String {
    let _ = id;
    todo!()
}

/// `{"type":"error","reason":"..","cmd":"..","id":..}` (`cmd` and `id` only when known).
pub fn error(id: Option<&RequestId>, cmd: Option<&str>, reason: &str) -> String {
    let _ = (id, cmd, reason);
    todo!()
}

/// What the rate limiter decided for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Run it.
    Allow,
    /// Drop it (counted). `notify`: send the client an error frame (at most one per second).
    Refuse {
        /// Whether to tell the client this time.
        notify: bool,
    },
    /// The client kept flooding for `close_after`: close it with 1008.
    Close,
}

/// Per-connection token bucket: `rate` commands/s sustained, `burst` above it. A client still
/// refused `close_after` after its first refusal (with no full second without refusal in
/// between) is to be closed. `rate == 0` means unlimited.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    _todo: (),
}

impl RateLimiter {
    /// A full bucket at `now`.
    pub fn new(now: Instant, burst: u32) -> Self {
        let _ = (now, burst);
        todo!()
    }

    /// Account one command at `now`.
    pub fn check(&mut self, now: Instant, rate: u32, burst: u32, close_after: Duration) -> RateDecision {
        let _ = (now, rate, burst, close_after);
        todo!()
    }
}
