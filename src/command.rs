//! The client command protocol (`--on-message commands`): JSON text frames in, JSON text
//! frames out. Sans-I/O: it parses, checks permissions, rate-limits (time passed in) and
//! formats replies; it never touches a socket, a channel, a thread or the clock.
//!
//! Seed 004 works unchanged: `{"cmd":"add_group","group_id":"123"}` and
//! `{"cmd":"send_to_group","group_id":"123","message":"..."}`. A command that carries an `"id"`
//! (number or string) gets a reply echoing it (`{"type":"ok","id":..}`); without one, success
//! is silent, so seed clients see only the messages they asked for. Errors always get
//! `{"type":"error","reason":"..."}` (with `cmd` and `id` when known).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::config::{GroupPublishPolicy, JoinPolicy, Permissions};
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

/// Longest request id (its JSON text) accepted. The id is echoed in every reply to its
/// command, so it is bounded: a client cannot make the server send back a large frame per
/// command on top of its own.
pub const REQUEST_ID_BYTES_MAX: usize = 256;

/// Longest `cmd` echoed back. An unknown `cmd` longer than this is quoted truncated in the
/// reason and not echoed as the error frame's `cmd`, for the same reason as
/// [`REQUEST_ID_BYTES_MAX`].
pub const CMD_ECHO_BYTES_MAX: usize = 64;

/// Parse one text frame. The `message` field is the text members receive, exactly: a JSON
/// string is delivered as its (unescaped) content; any other JSON value as its compact JSON text.
///
/// A non-string `message` keeps the key order (and duplicate keys) the client sent, so what
/// members receive is the client's value, only without insignificant whitespace. Fields this
/// module does not know are ignored: seed clients may send more. A field given twice takes its
/// last value, as `serde_json::Value` would.
pub fn parse(text: &str, limits: ParseLimits) -> Result<Request, Rejected> {
    let root: Json<'_> = serde_json::from_str(text).map_err(|e| Rejected {
        id: None,
        cmd: None,
        reason: format!("malformed JSON: {e}"),
    })?;
    let Json::Object(fields) = root else {
        return Err(Rejected {
            id: None,
            cmd: None,
            reason: "malformed JSON: expected an object".to_owned(),
        });
    };
    let mut obj = Obj(fields);

    // Both are read before either is judged, so an error about one still carries the other.
    let id = read_id(&obj);
    let cmd = match obj.get("cmd") {
        None => Err(missing("cmd")),
        Some(Json::Str(s)) => Ok(s.clone().into_owned()),
        Some(_) => Err(must_be("cmd", "a string")),
    };
    let (id, cmd) = match (id, cmd) {
        (Ok(id), Ok(cmd)) => (id, cmd),
        (Err(reason), cmd) => {
            return Err(Rejected { id: None, cmd: cmd.ok().filter(|c| echoable(c)), reason })
        }
        (Ok(id), Err(reason)) => return Err(Rejected { id, cmd: None, reason }),
    };

    match parse_command(&cmd, &mut obj, limits) {
        Ok(command) => Ok(Request { id, cmd: command }),
        Err(reason) => Err(Rejected { id, cmd: echoable(&cmd).then_some(cmd), reason }),
    }
}

/// The command named `cmd`, from the fields of its object.
fn parse_command(cmd: &str, obj: &mut Obj<'_>, limits: ParseLimits) -> Result<Command, String> {
    match cmd {
        "add_group" => Ok(Command::AddGroup { group: group_field(obj, limits)? }),
        "leave_group" => Ok(Command::LeaveGroup { group: group_field(obj, limits)? }),
        "send_to_group" => {
            let groups = match one_or_many(obj, "group_id", "group_ids", limits)? {
                Targets::One(g) => vec![group_id(g, limits)?],
                Targets::Many(gs) => {
                    let mut out = Vec::with_capacity(gs.len());
                    for g in gs {
                        out.push(group_id(g, limits)?);
                    }
                    out
                }
            };
            let exclude = exclude_field(obj, limits)?;
            let message = message_field(obj)?;
            Ok(Command::SendToGroup { groups, message, exclude })
        }
        "send_to_all" => {
            let exclude = exclude_field(obj, limits)?;
            let message = message_field(obj)?;
            Ok(Command::SendToAll { message, exclude })
        }
        "send_to_client" => {
            let clients = match one_or_many(obj, "client_id", "client_ids", limits)? {
                Targets::One(c) => vec![c.to_owned()],
                Targets::Many(cs) => cs.into_iter().map(str::to_owned).collect(),
            };
            let message = message_field(obj)?;
            Ok(Command::SendToClient { clients, message })
        }
        "ping" => Ok(Command::Ping),
        other => Err(format!("unknown command {:?}", clip(other, CMD_ECHO_BYTES_MAX))),
    }
}

/// The optional `"id"`: a number or a string, kept as its JSON text.
fn read_id(obj: &Obj<'_>) -> Result<Option<RequestId>, String> {
    match obj.get("id") {
        None => Ok(None),
        Some(v @ (Json::Number(_) | Json::Str(_))) => {
            let text = v.to_json();
            if text.len() > REQUEST_ID_BYTES_MAX {
                Err(format!("\"id\" must be at most {REQUEST_ID_BYTES_MAX} bytes"))
            } else {
                Ok(Some(RequestId(text)))
            }
        }
        Some(_) => Err(must_be("id", "a number or a string")),
    }
}

/// A required single `group_id`.
fn group_field(obj: &Obj<'_>, limits: ParseLimits) -> Result<GroupId, String> {
    match obj.get("group_id") {
        None => Err(missing("group_id")),
        Some(Json::Str(s)) => group_id(s, limits),
        Some(_) => Err(must_be("group_id", "a string")),
    }
}

fn group_id(s: &str, limits: ParseLimits) -> Result<GroupId, String> {
    GroupId::new(s, limits.group_id_bytes_max).map_err(|e| format!("bad group_id: {e}"))
}

/// Targets given either as `one: "x"` or as `many: ["x", ..]`.
enum Targets<'o> {
    One(&'o str),
    /// Non-empty, at most `targets_max`, without duplicates (first occurrence kept), so one
    /// command never delivers the same message twice through a repeated target.
    Many(Vec<&'o str>),
}

fn one_or_many<'o>(
    obj: &'o Obj<'_>,
    one: &str,
    many: &str,
    limits: ParseLimits,
) -> Result<Targets<'o>, String> {
    match (obj.get(one), obj.get(many)) {
        (Some(_), Some(_)) => Err(format!("give \"{one}\" or \"{many}\", not both")),
        (None, None) => Err(missing(one)),
        (Some(Json::Str(s)), None) => Ok(Targets::One(s)),
        (Some(_), None) => Err(must_be(one, "a string")),
        (None, Some(v)) => {
            let list = string_list(many, v, limits)?;
            if list.is_empty() {
                return Err(format!("\"{many}\" must not be empty"));
            }
            let mut seen = HashSet::with_capacity(list.len());
            Ok(Targets::Many(list.into_iter().filter(|s| seen.insert(*s)).collect()))
        }
    }
}

/// The optional `exclude` list of client ids (their format is the caller's to check).
fn exclude_field(obj: &Obj<'_>, limits: ParseLimits) -> Result<Vec<String>, String> {
    match obj.get("exclude") {
        None => Ok(Vec::new()),
        Some(v) => Ok(string_list("exclude", v, limits)?.into_iter().map(str::to_owned).collect()),
    }
}

/// An array of at most `targets_max` strings.
fn string_list<'o>(
    name: &str,
    v: &'o Json<'_>,
    limits: ParseLimits,
) -> Result<Vec<&'o str>, String> {
    let Json::Array(items) = v else {
        return Err(must_be(name, "an array of strings"));
    };
    if items.len() > limits.targets_max {
        return Err(format!("\"{name}\" must have at most {} entries", limits.targets_max));
    }
    items
        .iter()
        .map(|item| match item {
            Json::Str(s) => Ok(&**s),
            _ => Err(must_be(name, "an array of strings")),
        })
        .collect()
}

/// The required `message`: a string's content, or any other value's compact JSON text.
fn message_field(obj: &mut Obj<'_>) -> Result<String, String> {
    match obj.take("message") {
        None => Err(missing("message")),
        Some(Json::Str(s)) => Ok(s.into_owned()),
        Some(other) => Ok(other.to_json()),
    }
}

fn missing(field: &str) -> String {
    format!("missing field \"{field}\"")
}

fn must_be(field: &str, what: &str) -> String {
    format!("\"{field}\" must be {what}")
}

fn echoable(cmd: &str) -> bool {
    cmd.len() <= CMD_ECHO_BYTES_MAX
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A JSON value that remembers its object keys in the order they were sent (the crate's
/// `serde_json` has no `preserve_order`), so a relayed `message` object reaches members as the
/// client wrote it. Strings borrow from the frame when they contain no escapes. `serde_json`
/// does all the parsing (and bounds the nesting depth); this is only the data model.
#[derive(Debug, Clone, PartialEq)]
enum Json<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl Json<'_> {
    /// Compact JSON text.
    fn to_json(&self) -> String {
        // Serialising this type cannot fail: every key is a string and numbers are finite.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::Str(v) => s.serialize_str(v),
            Json::Array(items) => s.collect_seq(items),
            Json::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(&**k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // serde_json never yields a non-finite float; map one to null as `Value` does.
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(key) = map.next_key::<Json<'de>>()? {
            let Json::Str(key) = key else {
                return Err(de::Error::custom("object key must be a string"));
            };
            fields.push((key, map.next_value()?));
        }
        Ok(Json::Object(fields))
    }
}

/// A command object's fields, in the order sent.
struct Obj<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

impl<'a> Obj<'a> {
    /// The field's last value.
    fn get(&self, name: &str) -> Option<&Json<'a>> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The field's last value, moved out (so a large `message` is not copied again).
    fn take(&mut self, name: &str) -> Option<Json<'a>> {
        let i = self.0.iter().rposition(|(k, _)| k == name)?;
        Some(self.0.swap_remove(i).1)
    }
}

/// A command refused by [`Permissions`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Rights one connection holds beyond the node's [`Permissions`] (its connect token's
/// grants, see `crate::auth`). They only ever add: a command is allowed when the node's policy
/// or the grants allow it.
pub trait Grants {
    /// Whether the connection may join `group` with `add_group`.
    fn may_join(&self, group: &str) -> bool;
    /// Whether the connection may publish to `group` with `send_to_group`.
    fn may_publish(&self, group: &str) -> bool;
}

/// No rights beyond the node's policy (an anonymous connection).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGrants;

impl Grants for NoGrants {
    fn may_join(&self, _: &str) -> bool {
        false
    }

    fn may_publish(&self, _: &str) -> bool {
        false
    }
}

/// Check `cmd` against the permissions and the connection's `grants`. `is_member(g)` tells
/// whether the connection is in group `g`; `groups_now` is how many groups it is in.
///
/// Joining is judged on the join policy (or a grant) first, whatever the membership: a group
/// that is not open to the client is refused even to a member the API put there. Past that, a
/// member may re-join (a no-op) even at `groups_per_connection_max`, since it adds nothing.
/// Grants never lift the limits.
pub fn check(
    perms: &Permissions,
    join: &JoinMatcher,
    cmd: &Command,
    is_member: impl Fn(&str) -> bool,
    groups_now: usize,
    grants: &dyn Grants,
) -> Result<(), Denied> {
    let deny = |reason: String| Err(Denied(reason));
    match cmd {
        Command::AddGroup { group } => {
            if !grants.may_join(group) {
                match &join.inner {
                    Join::Off => return deny("joining groups is not allowed".to_owned()),
                    Join::Matching(set) if !set.is_match(group.as_str()) => {
                        return deny(format!("group {:?} is not open to clients", group.as_str()))
                    }
                    Join::Matching(_) | Join::Any => {}
                }
            }
            if groups_now >= perms.groups_per_connection_max && !is_member(group) {
                return deny(format!(
                    "too many groups (at most {} per connection)",
                    perms.groups_per_connection_max
                ));
            }
            Ok(())
        }
        Command::LeaveGroup { .. } | Command::Ping => Ok(()),
        Command::SendToGroup { groups, .. } => {
            for g in groups {
                if grants.may_publish(g) {
                    continue;
                }
                match perms.publish_groups {
                    GroupPublishPolicy::Off => {
                        return deny(if groups.iter().all(|g| !grants.may_publish(g)) {
                            "publishing to groups is not allowed".to_owned()
                        } else {
                            format!("publishing to group {:?} is not allowed", g.as_str())
                        })
                    }
                    GroupPublishPolicy::Joined if !is_member(g) => {
                        return deny(format!("not a member of group {:?}", g.as_str()))
                    }
                    GroupPublishPolicy::Joined | GroupPublishPolicy::Any => {}
                }
            }
            Ok(())
        }
        Command::SendToAll { .. } if !perms.publish_all => {
            deny("publishing to all is not allowed".to_owned())
        }
        Command::SendToClient { .. } if !perms.publish_clients => {
            deny("sending to clients is not allowed".to_owned())
        }
        Command::SendToAll { .. } | Command::SendToClient { .. } => Ok(()),
    }
}

/// [`crate::config::JoinPolicy`] compiled once (glob patterns).
#[derive(Debug, Clone)]
pub struct JoinMatcher {
    inner: Join,
}

#[derive(Debug, Clone)]
enum Join {
    Off,
    Matching(GlobSet),
    Any,
}

impl JoinMatcher {
    /// Compile the policy; an invalid pattern is an error naming it.
    ///
    /// `*` matches any run of characters, `/` and `:` included: group ids are names, not
    /// paths, so `public:*` covers `public:a/b` too.
    pub fn new(policy: &crate::config::JoinPolicy) -> Result<Self, String> {
        let inner = match policy {
            JoinPolicy::Off => Join::Off,
            JoinPolicy::Any => Join::Any,
            JoinPolicy::Matching(patterns) => {
                let mut set = GlobSetBuilder::new();
                for p in patterns {
                    let glob = GlobBuilder::new(p)
                        .literal_separator(false)
                        .build()
                        .map_err(|e| format!("bad join pattern {p:?}: {}", e.kind()))?;
                    set.add(glob);
                }
                Join::Matching(set.build().map_err(|e| format!("bad join patterns: {e}"))?)
            }
        };
        Ok(JoinMatcher { inner })
    }

    /// Whether a client may join `group`.
    pub fn allows(&self, group: &str) -> bool {
        match &self.inner {
            Join::Off => false,
            Join::Matching(set) => set.is_match(group),
            Join::Any => true,
        }
    }
}

/// Appends `s` as a JSON string (quoted, escaped by serde_json).
fn push_json_str(out: &mut String, s: &str) {
    // Serialising a `str` cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// `{"type":"welcome","client_id":"..","worker_id":N,"connection_id":N}`
pub fn welcome(client_id: &str, worker_id: usize, connection_id: u64) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(r#"{"type":"welcome","client_id":"#);
    push_json_str(&mut out, client_id);
    out.push_str(&format!(r#","worker_id":{worker_id},"connection_id":{connection_id}}}"#));
    out
}

/// `{"type":"ok","cmd":"..","id":..}` (plus `"queued":N` when given).
///
/// `id` is inserted as it is: it must be JSON text, as [`parse`] makes it.
pub fn ok(id: &RequestId, cmd: &str, queued: Option<u64>) -> String {
    let mut out = String::with_capacity(48 + cmd.len() + id.0.len());
    out.push_str(r#"{"type":"ok","cmd":"#);
    push_json_str(&mut out, cmd);
    out.push_str(r#","id":"#);
    out.push_str(&id.0);
    if let Some(n) = queued {
        out.push_str(&format!(r#","queued":{n}"#));
    }
    out.push('}');
    out
}

/// `{"type":"pong"}` (with `"id"` when given).
pub fn pong(id: Option<&RequestId>) -> String {
    match id {
        None => r#"{"type":"pong"}"#.to_owned(),
        Some(id) => format!(r#"{{"type":"pong","id":{}}}"#, id.0),
    }
}

/// `{"type":"error","reason":"..","cmd":"..","id":..}` (`cmd` and `id` only when known).
pub fn error(id: Option<&RequestId>, cmd: Option<&str>, reason: &str) -> String {
    let mut out = String::with_capacity(64 + reason.len());
    out.push_str(r#"{"type":"error","reason":"#);
    push_json_str(&mut out, reason);
    if let Some(cmd) = cmd {
        out.push_str(r#","cmd":"#);
        push_json_str(&mut out, cmd);
    }
    if let Some(id) = id {
        out.push_str(r#","id":"#);
        out.push_str(&id.0);
    }
    out.push('}');
    out
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
///
/// The bucket holds `burst` tokens (at least one, so a positive rate always admits something)
/// and refills continuously from the time elapsed between calls, so no timer is needed.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Tokens available; fractional, as refill is continuous.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
    /// When the client was last told it is refused.
    last_notify: Option<Instant>,
    /// First refusal of the current flood streak.
    streak_start: Option<Instant>,
    /// Latest refusal (a full second after it, the streak is over).
    last_refusal: Option<Instant>,
}

/// Gap between refusal notices, and the quiet time that ends a flood streak.
const SECOND: Duration = Duration::from_secs(1);

impl RateLimiter {
    /// A full bucket at `now`.
    pub fn new(now: Instant, burst: u32) -> Self {
        RateLimiter {
            tokens: f64::from(burst.max(1)),
            last: now,
            last_notify: None,
            streak_start: None,
            last_refusal: None,
        }
    }

    /// Account one command at `now`.
    pub fn check(
        &mut self,
        now: Instant,
        rate: u32,
        burst: u32,
        close_after: Duration,
    ) -> RateDecision {
        if rate == 0 {
            return RateDecision::Allow;
        }
        // `now` going backwards (it should not) counts as no time passing.
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let capacity = f64::from(burst.max(1));
        self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(rate)).min(capacity);

        if self.last_refusal.is_some_and(|t| now.saturating_duration_since(t) >= SECOND) {
            self.streak_start = None;
        }

        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return RateDecision::Allow;
        }

        let streak_start = *self.streak_start.get_or_insert(now);
        self.last_refusal = Some(now);
        if now.saturating_duration_since(streak_start) > close_after {
            return RateDecision::Close;
        }
        let notify = self.last_notify.is_none_or(|t| now.saturating_duration_since(t) >= SECOND);
        if notify {
            self.last_notify = Some(now);
        }
        RateDecision::Refuse { notify }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupPublishPolicy, JoinPolicy, Permissions};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const LIMITS: ParseLimits = ParseLimits { group_id_bytes_max: 128, targets_max: 4 };

    fn g(s: &str) -> GroupId {
        GroupId::new(s, 128).unwrap()
    }

    fn parsed(text: &str) -> Request {
        parse(text, LIMITS).unwrap_or_else(|r| panic!("{text}: {r:?}"))
    }

    fn cmd(text: &str) -> Command {
        parsed(text).cmd
    }

    fn reject(text: &str) -> Rejected {
        match parse(text, LIMITS) {
            Ok(req) => panic!("{text}: accepted as {req:?}"),
            Err(r) => r,
        }
    }

    fn reason(text: &str) -> String {
        reject(text).reason
    }

    fn id(text: &str) -> RequestId {
        RequestId(text.to_owned())
    }

    fn json_of(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    // ---- parse: every command ----

    #[test]
    fn seed_004_strings_parse_as_sent() {
        assert_eq!(
            parsed(r#"{"cmd":"add_group", "group_id":"123"}"#),
            Request { id: None, cmd: Command::AddGroup { group: g("123") } }
        );
        assert_eq!(
            parsed(r#"{"cmd":"send_to_group", "group_id":"123", "message":"C'est le message"}"#),
            Request {
                id: None,
                cmd: Command::SendToGroup {
                    groups: vec![g("123")],
                    message: "C'est le message".to_owned(),
                    exclude: vec![],
                }
            }
        );
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(
            cmd(r#"{"cmd":"leave_group","group_id":"room"}"#),
            Command::LeaveGroup { group: g("room") }
        );
        assert_eq!(
            cmd(r#"{"cmd":"send_to_group","group_ids":["a","b"],"message":"m","exclude":["x"]}"#),
            Command::SendToGroup {
                groups: vec![g("a"), g("b")],
                message: "m".to_owned(),
                exclude: vec!["x".to_owned()],
            }
        );
        assert_eq!(
            cmd(r#"{"cmd":"send_to_all","message":"hi"}"#),
            Command::SendToAll { message: "hi".to_owned(), exclude: vec![] }
        );
        assert_eq!(
            cmd(r#"{"cmd":"send_to_all","message":"hi","exclude":["a","b"]}"#),
            Command::SendToAll { message: "hi".to_owned(), exclude: vec!["a".into(), "b".into()] }
        );
        assert_eq!(
            cmd(r#"{"cmd":"send_to_client","client_id":"c1","message":"m"}"#),
            Command::SendToClient { clients: vec!["c1".to_owned()], message: "m".to_owned() }
        );
        assert_eq!(
            cmd(r#"{"cmd":"send_to_client","client_ids":["c1","c2"],"message":"m"}"#),
            Command::SendToClient {
                clients: vec!["c1".to_owned(), "c2".to_owned()],
                message: "m".to_owned()
            }
        );
        assert_eq!(cmd(r#"{"cmd":"ping"}"#), Command::Ping);
        assert_eq!(cmd(" {\n\t\"cmd\" : \"ping\" } "), Command::Ping);
    }

    #[test]
    fn names_match_the_wire() {
        for text in [
            r#"{"cmd":"add_group","group_id":"g"}"#,
            r#"{"cmd":"leave_group","group_id":"g"}"#,
            r#"{"cmd":"send_to_group","group_id":"g","message":""}"#,
            r#"{"cmd":"send_to_all","message":""}"#,
            r#"{"cmd":"send_to_client","client_id":"c","message":""}"#,
            r#"{"cmd":"ping"}"#,
        ] {
            let wire = json_of(text)["cmd"].as_str().unwrap().to_owned();
            assert_eq!(cmd(text).name(), wire);
        }
    }

    #[test]
    fn extra_fields_are_ignored() {
        assert_eq!(
            cmd(r#"{"cmd":"add_group","group_id":"g","token":{"a":1},"x":[1,2]}"#),
            Command::AddGroup { group: g("g") }
        );
        assert_eq!(cmd(r#"{"cmd":"ping","group_id":5,"message":null}"#), Command::Ping);
    }

    #[test]
    fn duplicate_fields_take_the_last_value() {
        assert_eq!(
            cmd(r#"{"cmd":"nope","cmd":"add_group","group_id":"a","group_id":"b"}"#),
            Command::AddGroup { group: g("b") }
        );
    }

    #[test]
    fn repeated_targets_are_dropped() {
        assert_eq!(
            cmd(r#"{"cmd":"send_to_group","group_ids":["b","a","b","a"],"message":"m"}"#),
            Command::SendToGroup {
                groups: vec![g("b"), g("a")],
                message: "m".into(),
                exclude: vec![]
            }
        );
        assert_eq!(
            cmd(r#"{"cmd":"send_to_client","client_ids":["c","c"],"message":"m"}"#),
            Command::SendToClient { clients: vec!["c".into()], message: "m".into() }
        );
    }

    // ---- message ----

    fn message_of(text: &str) -> String {
        match cmd(text) {
            Command::SendToGroup { message, .. }
            | Command::SendToAll { message, .. }
            | Command::SendToClient { message, .. } => message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn string_message_is_delivered_as_its_content() {
        assert_eq!(
            message_of(r#"{"cmd":"send_to_all","message":"a \"q\" \\ \n \u00e9 \ud83d\ude00"}"#),
            "a \"q\" \\ \n é 😀"
        );
        assert_eq!(message_of(r#"{"cmd":"send_to_all","message":""}"#), "");
        // A string holding JSON stays that text, unparsed.
        assert_eq!(message_of(r#"{"cmd":"send_to_all","message":"{\"a\": 1}"}"#), r#"{"a": 1}"#);
    }

    #[test]
    fn other_messages_are_delivered_as_compact_json() {
        let m = message_of(
            r#"{"cmd":"send_to_all","message": { "z" : 1, "a" : [true, null, "x\"y"] , "m":{"k":1.5}} }"#,
        );
        assert_eq!(m, r#"{"z":1,"a":[true,null,"x\"y"],"m":{"k":1.5}}"#, "key order kept");
        assert_eq!(json_of(&m), json!({"z":1,"a":[true,null,"x\"y"],"m":{"k":1.5}}));
        assert_eq!(message_of(r#"{"cmd":"send_to_all","message":42}"#), "42");
        assert_eq!(message_of(r#"{"cmd":"send_to_all","message":-1.25e2}"#), "-125.0");
        assert_eq!(message_of(r#"{"cmd":"send_to_all","message":[]}"#), "[]");
        assert_eq!(message_of(r#"{"cmd":"send_to_all","message":false}"#), "false");
        assert_eq!(message_of(r#"{"cmd":"send_to_all","message":null}"#), "null");
        assert_eq!(
            message_of(r#"{"cmd":"send_to_all","message":{"\u0041":"\u0007"}}"#),
            r#"{"A":"\u0007"}"#
        );
    }

    // ---- ids ----

    #[test]
    fn ids_are_kept_as_json_text() {
        assert_eq!(parsed(r#"{"cmd":"ping","id":7}"#).id, Some(id("7")));
        assert_eq!(parsed(r#"{"id":"abc","cmd":"ping"}"#).id, Some(id(r#""abc""#)));
        assert_eq!(parsed(r#"{"cmd":"ping","id":-3}"#).id, Some(id("-3")));
        assert_eq!(parsed(r#"{"cmd":"ping","id":1.5}"#).id, Some(id("1.5")));
        assert_eq!(parsed(r#"{"cmd":"ping","id":"a\"b"}"#).id, Some(id(r#""a\"b""#)));
        assert_eq!(parsed(r#"{"cmd":"ping","id":""}"#).id, Some(id(r#""""#)));
        assert_eq!(parsed(r#"{"cmd":"ping"}"#).id, None);
    }

    #[test]
    fn bad_ids_are_rejected() {
        for bad in ["null", "true", "[1]", r#"{"a":1}"#] {
            let r = reject(&format!(r#"{{"cmd":"ping","id":{bad}}}"#));
            assert_eq!(r.reason, r#""id" must be a number or a string"#, "{bad}");
            assert_eq!((r.id, r.cmd.as_deref()), (None, Some("ping")));
        }
        let long = "x".repeat(REQUEST_ID_BYTES_MAX);
        let r = reject(&format!(r#"{{"cmd":"ping","id":"{long}"}}"#));
        assert_eq!(r.reason, format!(r#""id" must be at most {REQUEST_ID_BYTES_MAX} bytes"#));
        let fits = "x".repeat(REQUEST_ID_BYTES_MAX - 2);
        assert!(parse(&format!(r#"{{"cmd":"ping","id":"{fits}"}}"#), LIMITS).is_ok());
    }

    // ---- parse: every error path ----

    #[test]
    fn malformed_json_is_rejected_briefly() {
        for text in
            ["", "{", "not json", r#"{"cmd":"ping"} x"#, r#"{"cmd":'ping'}"#, "{\"cmd\":\"\u{0}\"}"]
        {
            let r = reject(text);
            assert!(r.reason.starts_with("malformed JSON: "), "{text:?}: {}", r.reason);
            assert!(r.reason.len() < 100, "{}", r.reason);
            assert_eq!((r.id, r.cmd), (None, None));
        }
        for text in ["[]", r#""cmd""#, "7", "null", r#"[{"cmd":"ping"}]"#] {
            assert_eq!(reason(text), "malformed JSON: expected an object", "{text}");
        }
    }

    #[test]
    fn cmd_must_be_a_known_string() {
        assert_eq!(reason("{}"), r#"missing field "cmd""#);
        let r = reject(r#"{"cmd":7,"id":1}"#);
        assert_eq!(
            r,
            Rejected { id: Some(id("1")), cmd: None, reason: r#""cmd" must be a string"#.into() }
        );
        let r = reject(r#"{"cmd":"foo","id":"x"}"#);
        assert_eq!(
            r,
            Rejected {
                id: Some(id(r#""x""#)),
                cmd: Some("foo".into()),
                reason: r#"unknown command "foo""#.into()
            }
        );
        assert_eq!(reason(r#"{"cmd":"Ping"}"#), r#"unknown command "Ping""#);
        assert_eq!(reason(r#"{"cmd":"a\"b"}"#), r#"unknown command "a\"b""#);
    }

    #[test]
    fn long_unknown_cmd_is_not_echoed() {
        let long = "é".repeat(CMD_ECHO_BYTES_MAX);
        let r = reject(&format!(r#"{{"cmd":"{long}"}}"#));
        assert_eq!(r.cmd, None);
        assert_eq!(r.reason, format!("unknown command \"{}\"", "é".repeat(CMD_ECHO_BYTES_MAX / 2)));
    }

    #[test]
    fn missing_and_ill_typed_fields() {
        let cases = [
            (r#"{"cmd":"add_group"}"#, r#"missing field "group_id""#),
            (r#"{"cmd":"add_group","group_id":123}"#, r#""group_id" must be a string"#),
            (r#"{"cmd":"leave_group"}"#, r#"missing field "group_id""#),
            (r#"{"cmd":"leave_group","group_id":null}"#, r#""group_id" must be a string"#),
            (r#"{"cmd":"add_group","group_id":""}"#, "bad group_id: must not be empty"),
            (
                r#"{"cmd":"add_group","group_id":"a\nb"}"#,
                "bad group_id: must not contain control characters",
            ),
            (r#"{"cmd":"send_to_group","message":"m"}"#, r#"missing field "group_id""#),
            (r#"{"cmd":"send_to_group","group_id":"g"}"#, r#"missing field "message""#),
            (
                r#"{"cmd":"send_to_group","group_id":["g"],"message":"m"}"#,
                r#""group_id" must be a string"#,
            ),
            (
                r#"{"cmd":"send_to_group","group_id":"g","group_ids":["g"],"message":"m"}"#,
                r#"give "group_id" or "group_ids", not both"#,
            ),
            (
                r#"{"cmd":"send_to_group","group_ids":"g","message":"m"}"#,
                r#""group_ids" must be an array of strings"#,
            ),
            (
                r#"{"cmd":"send_to_group","group_ids":["g",1],"message":"m"}"#,
                r#""group_ids" must be an array of strings"#,
            ),
            (
                r#"{"cmd":"send_to_group","group_ids":[],"message":"m"}"#,
                r#""group_ids" must not be empty"#,
            ),
            (
                r#"{"cmd":"send_to_group","group_ids":["a","b","c","d","e"],"message":"m"}"#,
                r#""group_ids" must have at most 4 entries"#,
            ),
            (
                r#"{"cmd":"send_to_group","group_ids":["a",""],"message":"m"}"#,
                "bad group_id: must not be empty",
            ),
            (
                r#"{"cmd":"send_to_group","group_id":"g","message":"m","exclude":"c"}"#,
                r#""exclude" must be an array of strings"#,
            ),
            (
                r#"{"cmd":"send_to_group","group_id":"g","message":"m","exclude":null}"#,
                r#""exclude" must be an array of strings"#,
            ),
            (
                r#"{"cmd":"send_to_all","message":"m","exclude":[1]}"#,
                r#""exclude" must be an array of strings"#,
            ),
            (
                r#"{"cmd":"send_to_all","message":"m","exclude":["1","2","3","4","5"]}"#,
                r#""exclude" must have at most 4 entries"#,
            ),
            (r#"{"cmd":"send_to_all"}"#, r#"missing field "message""#),
            (r#"{"cmd":"send_to_client","message":"m"}"#, r#"missing field "client_id""#),
            (r#"{"cmd":"send_to_client","client_id":"c"}"#, r#"missing field "message""#),
            (
                r#"{"cmd":"send_to_client","client_id":1,"message":"m"}"#,
                r#""client_id" must be a string"#,
            ),
            (
                r#"{"cmd":"send_to_client","client_ids":[],"message":"m"}"#,
                r#""client_ids" must not be empty"#,
            ),
            (
                r#"{"cmd":"send_to_client","client_ids":[null],"message":"m"}"#,
                r#""client_ids" must be an array of strings"#,
            ),
            (
                r#"{"cmd":"send_to_client","client_ids":["1","2","3","4","5"],"message":"m"}"#,
                r#""client_ids" must have at most 4 entries"#,
            ),
            (
                r#"{"cmd":"send_to_client","client_id":"c","client_ids":["c"],"message":"m"}"#,
                r#"give "client_id" or "client_ids", not both"#,
            ),
        ];
        for (text, want) in cases {
            let r = reject(text);
            assert_eq!(r.reason, want, "{text}");
            assert_eq!(r.cmd.as_deref(), json_of(text)["cmd"].as_str(), "{text}");
            assert_eq!(r.id, None);
        }
    }

    #[test]
    fn field_errors_carry_the_id() {
        let r = reject(r#"{"id":9,"cmd":"add_group"}"#);
        assert_eq!((r.id, r.cmd.as_deref()), (Some(id("9")), Some("add_group")));
    }

    #[test]
    fn group_id_length_follows_the_limit() {
        let max = "g".repeat(128);
        assert_eq!(
            cmd(&format!(r#"{{"cmd":"add_group","group_id":"{max}"}}"#)),
            Command::AddGroup { group: g(&max) }
        );
        assert_eq!(
            reason(&format!(r#"{{"cmd":"add_group","group_id":"{max}x"}}"#)),
            "bad group_id: longer than 128 bytes"
        );
        let tight = ParseLimits { group_id_bytes_max: 3, targets_max: 4 };
        assert_eq!(
            parse(r#"{"cmd":"add_group","group_id":"abcd"}"#, tight).unwrap_err().reason,
            "bad group_id: longer than 3 bytes"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = parse(&text, LIMITS);
        }

        #[test]
        fn parse_never_panics_on_json_ish_text(text in r#"[{}\[\]":,. a-z0-9_\\-]{0,80}"#) {
            let _ = parse(&text, LIMITS);
        }

        #[test]
        fn parse_never_panics_on_command_shapes(
            cmd in prop::sample::select(vec!["add_group", "leave_group", "send_to_group", "send_to_all", "send_to_client", "ping", "x"]),
            fields in prop::collection::vec(
                (
                    prop::sample::select(vec!["id", "group_id", "group_ids", "client_id", "client_ids", "message", "exclude"]),
                    prop::sample::select(vec!["null", "1", "\"\"", "\"g\"", "[]", "[\"a\"]", "[\"a\",\"\"]", "{}", "[1]", "true"]),
                ),
                0..6,
            ),
        ) {
            let mut text = format!(r#"{{"cmd":"{cmd}""#);
            for (k, v) in fields {
                text.push_str(&format!(r#","{k}":{v}"#));
            }
            text.push('}');
            match parse(&text, LIMITS) {
                Ok(req) => prop_assert_eq!(req.cmd.name(), cmd),
                Err(r) => prop_assert!(!r.reason.is_empty()),
            }
        }
    }

    // ---- check ----

    fn all_commands() -> Vec<Command> {
        vec![
            Command::AddGroup { group: g("123") },
            Command::LeaveGroup { group: g("123") },
            Command::SendToGroup { groups: vec![g("123")], message: "m".into(), exclude: vec![] },
            Command::SendToAll { message: "m".into(), exclude: vec![] },
            Command::SendToClient { clients: vec!["c".into()], message: "m".into() },
            Command::Ping,
        ]
    }

    fn allowed(
        perms: &Permissions,
        c: &Command,
        member_of: &[&str],
        groups_now: usize,
    ) -> Result<(), Denied> {
        let join = JoinMatcher::new(&perms.join).unwrap();
        check(perms, &join, c, |g| member_of.contains(&g), groups_now, &NoGrants)
    }

    #[test]
    fn default_permissions_allow_only_leave_and_ping() {
        let perms = Permissions::default();
        for c in all_commands() {
            let got = allowed(&perms, &c, &["123"], 1);
            match c {
                Command::LeaveGroup { .. } | Command::Ping => assert_eq!(got, Ok(()), "{c:?}"),
                _ => assert!(got.is_err(), "{c:?}"),
            }
        }
        let reasons: Vec<String> = all_commands()
            .iter()
            .filter_map(|c| allowed(&perms, c, &[], 0).err().map(|d| d.to_string()))
            .collect();
        assert_eq!(
            reasons,
            [
                "joining groups is not allowed",
                "publishing to groups is not allowed",
                "publishing to all is not allowed",
                "sending to clients is not allowed",
            ]
        );
    }

    #[test]
    fn demo_permissions_allow_seed_004() {
        let perms = Permissions::demo();
        for c in all_commands() {
            assert_eq!(allowed(&perms, &c, &[], 0), Ok(()), "{c:?}");
        }
        let join = JoinMatcher::new(&perms.join).unwrap();
        let mut joined: Vec<String> = Vec::new();
        for text in [
            r#"{"cmd":"add_group", "group_id":"123"}"#,
            r#"{"cmd":"send_to_group", "group_id":"123", "message":"C'est le message"}"#,
        ] {
            let req = parsed(text);
            check(
                &perms,
                &join,
                &req.cmd,
                |g| joined.iter().any(|j| j == g),
                joined.len(),
                &NoGrants,
            )
            .unwrap();
            if let Command::AddGroup { group } = req.cmd {
                joined.push(group.to_string());
            }
        }
    }

    /// Grants by exact name, for tests.
    struct Granted(&'static [&'static str], &'static [&'static str]);

    impl Grants for Granted {
        fn may_join(&self, group: &str) -> bool {
            self.0.contains(&group)
        }
        fn may_publish(&self, group: &str) -> bool {
            self.1.contains(&group)
        }
    }

    #[test]
    fn grants_add_to_the_policy_but_never_lift_limits() {
        let perms = Permissions { groups_per_connection_max: 2, ..Permissions::default() };
        let join = JoinMatcher::new(&perms.join).unwrap();
        let grants = Granted(&["a", "b", "c"], &["a"]);
        let add = |name: &str| Command::AddGroup { group: g(name) };
        let send = |names: &[&str]| Command::SendToGroup {
            groups: names.iter().map(|s| g(s)).collect(),
            message: "m".into(),
            exclude: vec![],
        };
        let chk = |c: &Command, n: usize| check(&perms, &join, c, |_| false, n, &grants);
        assert_eq!(chk(&add("a"), 0), Ok(()));
        assert_eq!(chk(&add("z"), 0).unwrap_err().0, "joining groups is not allowed");
        assert!(chk(&add("c"), 2).unwrap_err().0.starts_with("too many groups"));
        assert_eq!(chk(&send(&["a"]), 0), Ok(()));
        assert_eq!(chk(&send(&["b"]), 0).unwrap_err().0, "publishing to groups is not allowed");
        assert_eq!(
            chk(&send(&["a", "b"]), 0).unwrap_err().0,
            "publishing to group \"b\" is not allowed"
        );
        // With a policy that already allows, grants change nothing.
        let open = Permissions::demo();
        let join = JoinMatcher::new(&open.join).unwrap();
        assert_eq!(check(&open, &join, &add("z"), |_| false, 0, &grants), Ok(()));
        // Joined policy: a grant also covers a group the client is not in.
        let joined =
            Permissions { publish_groups: GroupPublishPolicy::Joined, ..Permissions::default() };
        let j = JoinMatcher::new(&joined.join).unwrap();
        assert_eq!(check(&joined, &j, &send(&["a", "m"]), |g| g == "m", 1, &grants), Ok(()));
        assert!(check(&joined, &j, &send(&["b"]), |_| false, 0, &grants).is_err());
    }

    #[test]
    fn group_publishing_policies() {
        let send = |groups: &[&str]| Command::SendToGroup {
            groups: groups.iter().map(|s| g(s)).collect(),
            message: "m".into(),
            exclude: vec![],
        };
        let mut perms =
            Permissions { publish_groups: GroupPublishPolicy::Joined, ..Permissions::default() };
        assert_eq!(allowed(&perms, &send(&["a", "b"]), &["a", "b"], 2), Ok(()));
        assert_eq!(
            allowed(&perms, &send(&["a", "b"]), &["a"], 1),
            Err(Denied(r#"not a member of group "b""#.into()))
        );
        assert!(allowed(&perms, &send(&["a"]), &[], 0).is_err());
        perms.publish_groups = GroupPublishPolicy::Any;
        assert_eq!(allowed(&perms, &send(&["a", "b"]), &[], 0), Ok(()));
        perms.publish_groups = GroupPublishPolicy::Off;
        assert!(allowed(&perms, &send(&["a"]), &["a"], 1).is_err());
    }

    #[test]
    fn all_and_client_publishing_follow_their_flags() {
        let all = Command::SendToAll { message: "m".into(), exclude: vec![] };
        let one = Command::SendToClient { clients: vec!["c".into()], message: "m".into() };
        let perms = Permissions { publish_all: true, ..Permissions::default() };
        assert_eq!(allowed(&perms, &all, &[], 0), Ok(()));
        assert!(allowed(&perms, &one, &[], 0).is_err());
        let perms = Permissions { publish_clients: true, ..Permissions::default() };
        assert!(allowed(&perms, &all, &[], 0).is_err());
        assert_eq!(allowed(&perms, &one, &[], 0), Ok(()));
    }

    #[test]
    fn joining_is_capped_except_for_rejoins() {
        let perms = Permissions { groups_per_connection_max: 2, ..Permissions::demo() };
        let add = |s: &str| Command::AddGroup { group: g(s) };
        assert_eq!(allowed(&perms, &add("b"), &["a"], 1), Ok(()));
        assert_eq!(
            allowed(&perms, &add("c"), &["a", "b"], 2),
            Err(Denied("too many groups (at most 2 per connection)".into()))
        );
        assert_eq!(allowed(&perms, &add("a"), &["a", "b"], 2), Ok(()), "re-join is a no-op");
        let leave = Command::LeaveGroup { group: g("c") };
        assert_eq!(allowed(&perms, &leave, &["a", "b"], 2), Ok(()));
    }

    #[test]
    fn joining_follows_the_patterns() {
        let perms = Permissions {
            join: JoinPolicy::Matching(vec!["public:*".into(), "room-?".into()]),
            ..Permissions::default()
        };
        let add = |s: &str| Command::AddGroup { group: g(s) };
        assert_eq!(allowed(&perms, &add("public:news"), &[], 0), Ok(()));
        assert_eq!(allowed(&perms, &add("room-7"), &[], 0), Ok(()));
        assert_eq!(
            allowed(&perms, &add("private:x"), &[], 0),
            Err(Denied(r#"group "private:x" is not open to clients"#.into()))
        );
        // The policy is judged before membership: no exception for members.
        assert!(allowed(&perms, &add("private:x"), &["private:x"], 1).is_err());
    }

    // ---- JoinMatcher ----

    #[test]
    fn glob_matching() {
        let m = JoinMatcher::new(&JoinPolicy::Matching(vec![
            "public:*".into(),
            "room-?".into(),
            "team/[ab]/*".into(),
            "{x,y}".into(),
            "*.chat".into(),
        ]))
        .unwrap();
        for yes in [
            "public:",
            "public:news",
            "public:a/b:c",
            "public:*",
            "room-1",
            "room-/",
            "team/a/x/y",
            "x",
            "y",
            "a/b.chat",
            "lobby:.chat",
        ] {
            assert!(m.allows(yes), "{yes}");
        }
        for no in [
            "Public:news",
            "public",
            "xpublic:a",
            "room-",
            "room-12",
            "team/c/x",
            "z",
            "chat",
            "a.chat.x",
        ] {
            assert!(!m.allows(no), "{no}");
        }
    }

    #[test]
    fn join_policy_extremes() {
        assert!(!JoinMatcher::new(&JoinPolicy::Off).unwrap().allows("a"));
        assert!(JoinMatcher::new(&JoinPolicy::Any).unwrap().allows("anything/at:all"));
        let none = JoinMatcher::new(&JoinPolicy::Matching(vec![])).unwrap();
        assert!(!none.allows("a"));
        let star = JoinMatcher::new(&JoinPolicy::Matching(vec!["*".into()])).unwrap();
        assert!(star.allows("a/b:c"));
    }

    #[test]
    fn invalid_pattern_is_named() {
        let err = JoinMatcher::new(&JoinPolicy::Matching(vec!["ok:*".into(), "bad[".into()]))
            .unwrap_err();
        assert!(err.contains(r#""bad[""#), "{err}");
    }

    // ---- replies ----

    #[test]
    fn replies_have_the_documented_form() {
        assert_eq!(
            welcome("00000001000000000005000000aa", 0, 730_144_440_325),
            r#"{"type":"welcome","client_id":"00000001000000000005000000aa","worker_id":0,"connection_id":730144440325}"#
        );
        assert_eq!(ok(&id("7"), "add_group", None), r#"{"type":"ok","cmd":"add_group","id":7}"#);
        assert_eq!(
            ok(&id(r#""a""#), "send_to_group", Some(3)),
            r#"{"type":"ok","cmd":"send_to_group","id":"a","queued":3}"#
        );
        assert_eq!(pong(Some(&id("7"))), r#"{"type":"pong","id":7}"#);
        assert_eq!(pong(None), r#"{"type":"pong"}"#);
        assert_eq!(
            error(Some(&id("1")), Some("x"), r#"unknown command "x""#),
            r#"{"type":"error","reason":"unknown command \"x\"","cmd":"x","id":1}"#
        );
        assert_eq!(error(None, None, "r"), r#"{"type":"error","reason":"r"}"#);
        assert_eq!(error(Some(&id("2")), None, "r"), r#"{"type":"error","reason":"r","id":2}"#);
        assert_eq!(error(None, Some("c"), "r"), r#"{"type":"error","reason":"r","cmd":"c"}"#);
    }

    #[test]
    fn replies_escape_what_they_echo() {
        let nasty = "q\"uote \\ back\nline \u{1} ctl é 😀 </script>";
        let text = format!(r#"{{"cmd":{},"id":{}}}"#, json!(nasty), json!(nasty));
        let r = reject(&text);
        let id = r.id.clone().unwrap();
        assert_eq!(r.cmd, Some(nasty.to_owned()));

        let out = error(Some(&id), r.cmd.as_deref(), &r.reason);
        assert_eq!(json_of(&out), json!({"type":"error","reason":r.reason,"cmd":nasty,"id":nasty}));
        assert!(r.reason.starts_with("unknown command "), "{}", r.reason);

        assert_eq!(
            json_of(&ok(&id, nasty, Some(0))),
            json!({"type":"ok","cmd":nasty,"id":nasty,"queued":0})
        );
        assert_eq!(json_of(&pong(Some(&id))), json!({"type":"pong","id":nasty}));
        assert_eq!(
            json_of(&welcome(nasty, 3, u64::MAX)),
            json!({"type":"welcome","client_id":nasty,"worker_id":3,"connection_id":u64::MAX})
        );
        // A parsed id round-trips through a reply whatever its form.
        for raw in ["0", "-1", "1.5", "1e3", r#""""#, r#""\u00e9""#, "18446744073709551615"] {
            let req = parsed(&format!(r#"{{"cmd":"ping","id":{raw}}}"#));
            let out = pong(req.id.as_ref());
            assert_eq!(json_of(&out)["id"], json_of(raw), "{raw}");
        }
    }

    // ---- rate limiter ----

    const CLOSE: Duration = Duration::from_secs(3);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_is_allowed_then_refused() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 5);
        for _ in 0..5 {
            assert_eq!(rl.check(t0, 10, 5, CLOSE), RateDecision::Allow);
        }
        assert_eq!(rl.check(t0, 10, 5, CLOSE), RateDecision::Refuse { notify: true });
        assert_eq!(rl.check(t0, 10, 5, CLOSE), RateDecision::Refuse { notify: false });
    }

    #[test]
    fn tokens_refill_at_the_rate_fractionally() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 1);
        assert_eq!(rl.check(t0, 10, 1, CLOSE), RateDecision::Allow);
        // 10/s: one token per 100 ms, accumulated across calls.
        assert!(matches!(rl.check(t0 + ms(50), 10, 1, CLOSE), RateDecision::Refuse { .. }));
        assert_eq!(rl.check(t0 + ms(100), 10, 1, CLOSE), RateDecision::Allow);
        assert!(matches!(rl.check(t0 + ms(150), 10, 1, CLOSE), RateDecision::Refuse { .. }));
        assert_eq!(rl.check(t0 + ms(200), 10, 1, CLOSE), RateDecision::Allow);
        // Never more than the burst, however long the pause.
        let t1 = t0 + Duration::from_secs(60);
        let mut rl = RateLimiter::new(t0, 3);
        let allowed = (0..10).filter(|_| rl.check(t1, 10, 3, CLOSE) == RateDecision::Allow).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn sustained_rate_is_allowed() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 1);
        for i in 0..1000 {
            assert_eq!(rl.check(t0 + ms(i * 100), 10, 1, CLOSE), RateDecision::Allow, "{i}");
        }
    }

    #[test]
    fn refusals_notify_once_per_second() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 1);
        assert_eq!(rl.check(t0, 1, 1, Duration::from_secs(60)), RateDecision::Allow);
        let mut notices = Vec::new();
        // 100 commands/s for 2.5 s at 1/s: mostly refused, told at 0 s, 1 s and 2 s.
        for i in 1..=250 {
            let t = t0 + ms(i * 10);
            if let RateDecision::Refuse { notify: true } =
                rl.check(t, 1, 1, Duration::from_secs(60))
            {
                notices.push(i * 10);
            }
        }
        assert_eq!(notices, [10, 1010, 2010]);
    }

    #[test]
    fn sustained_flood_is_closed() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 2);
        let mut first_refusal = None;
        let mut closed_at = None;
        for i in 0..1000 {
            let t = t0 + ms(i * 10);
            match rl.check(t, 10, 2, CLOSE) {
                RateDecision::Allow => {}
                RateDecision::Refuse { .. } => {
                    first_refusal.get_or_insert(t);
                }
                RateDecision::Close => {
                    closed_at = Some(t);
                    break;
                }
            }
        }
        let (first, closed) = (first_refusal.unwrap(), closed_at.expect("never closed"));
        assert!(closed - first > CLOSE && closed - first <= CLOSE + ms(10), "{:?}", closed - first);
    }

    #[test]
    fn a_quiet_second_ends_the_flood_streak() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 1);
        // Refused 2.5 s, quiet 1 s, refused 2.5 s more: never closed, since each streak is
        // shorter than `close_after`.
        let mut t = t0;
        for _ in 0..2 {
            for _ in 0..250 {
                t += ms(10);
                assert_ne!(rl.check(t, 1, 1, CLOSE), RateDecision::Close);
            }
            t += Duration::from_secs(1);
            // After the quiet second the bucket has refilled too.
            assert_eq!(rl.check(t, 1, 1, CLOSE), RateDecision::Allow);
        }
        // A pause shorter than a second does not end the streak.
        let mut rl = RateLimiter::new(t0, 1);
        let mut t = t0;
        let mut closed = false;
        for _ in 0..10 {
            for _ in 0..10 {
                t += ms(10);
                if rl.check(t, 1, 1, CLOSE) == RateDecision::Close {
                    closed = true;
                }
            }
            t += ms(900);
        }
        assert!(closed);
    }

    #[test]
    fn a_notice_follows_recovery() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 1);
        assert_eq!(rl.check(t0, 1, 1, CLOSE), RateDecision::Allow);
        assert_eq!(rl.check(t0 + ms(1), 1, 1, CLOSE), RateDecision::Refuse { notify: true });
        let t1 = t0 + ms(2001);
        assert_eq!(rl.check(t1, 1, 1, CLOSE), RateDecision::Allow);
        assert_eq!(rl.check(t1, 1, 1, CLOSE), RateDecision::Refuse { notify: true });
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 0);
        for _ in 0..100_000 {
            assert_eq!(rl.check(t0, 0, 0, Duration::ZERO), RateDecision::Allow);
        }
    }

    #[test]
    fn zero_burst_still_admits_the_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 0);
        assert_eq!(rl.check(t0, 1, 0, CLOSE), RateDecision::Allow);
        assert!(matches!(rl.check(t0, 1, 0, CLOSE), RateDecision::Refuse { .. }));
        assert_eq!(rl.check(t0 + Duration::from_secs(1), 1, 0, CLOSE), RateDecision::Allow);
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut rl = RateLimiter::new(t0, 1);
        assert_eq!(rl.check(t0, 1, 1, CLOSE), RateDecision::Allow);
        assert!(matches!(
            rl.check(t0 - Duration::from_secs(5), 1, 1, CLOSE),
            RateDecision::Refuse { .. }
        ));
    }
}
