//! Request bodies and query strings, turned into the library's vocabulary ([`Publish`],
//! [`To`], [`GroupId`], ...). Pure: no I/O, no node, no HTTP types beyond `Bytes`. Every
//! refusal names the field it is about (`to.groups[2]: longer than 128 bytes`).
//!
//! Bodies are deserialized with serde derive structs that borrow from the request body, and a
//! text message whose JSON string has no escape is sliced out of the body without a copy.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use tungstenite::Utf8Bytes;

use crate::addressing::{Publish, To};
use crate::ids::{ConnId, GroupId, NodeId, Uid};
use crate::proto::Message;

/// Publishes one `POST /api/publish/batch` may carry.
pub const BATCH_PUBLISHES_MAX: usize = 10_000;
/// Entries one target list (`to.groups`, `to.clients`, `to.uids`, `exclude`) may hold.
pub const TARGETS_MAX: usize = 10_000;

/// Limits the parser applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Longest group id or uid, in bytes.
    pub(crate) name_bytes_max: usize,
}

/// A string that borrows from the body when it can (serde only borrows a `Cow` that is a field
/// of its own, hence the newtype for list items).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct Text<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

/// `{"data": "..", "to": {..}, "exclude": [..]}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishBody<'a> {
    /// A text message.
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
    /// A binary message, base64 (standard alphabet, padded).
    #[serde(borrow, default)]
    binary_base64: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<ToBody<'a>>,
    #[serde(borrow, default)]
    exclude: Vec<Text<'a>>,
    /// A repeat with the same key within the idempotency window is acknowledged and not
    /// delivered again (the `Idempotency-Key` header does the same for a whole request).
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
    /// `"local"` (the default: answer with this node's count) or `"nodes"` (also wait, at
    /// most the cluster's query timeout, for each receiving node's count). Single publishes
    /// only.
    #[serde(borrow, default)]
    ack: Option<Cow<'a, str>>,
}

/// An idempotency key: 1 to 256 bytes, no control characters.
pub(crate) fn idempotency_key(s: &str, field: &dyn std::fmt::Display) -> Result<String, String> {
    use crate::history::config::IDEMPOTENCY_KEY_BYTES_MAX;
    if s.is_empty() || s.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(format!("{field}: must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{field}: must not contain control characters"));
    }
    Ok(s.to_owned())
}

/// What a publish's answer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    /// This node's count only; other nodes are named in `forwarded_to`, not waited for.
    Local,
    /// Each node it was forwarded to reports its count (bounded by the query timeout).
    Nodes,
}

/// Exactly one of its fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToBody<'a> {
    #[serde(default)]
    all: Option<bool>,
    #[serde(borrow, default)]
    groups: Option<Vec<Text<'a>>>,
    #[serde(borrow, default)]
    clients: Option<Vec<Text<'a>>>,
    #[serde(borrow, default)]
    uids: Option<Vec<Text<'a>>>,
}

/// Why a batch body was refused.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// Not JSON, or not of the batch's shape (serde's message, with the position).
    Json(serde_json::Error),
    /// A publish was refused (its message names it: `publishes[3].to: missing`), or there
    /// were too many.
    Invalid(String),
}

/// Parse `{"publishes": [ <publish>, ... ]}` straight into [`Publish`]es: each item is
/// validated as soon as it is read, nothing but the result is kept, and reading stops at the
/// first invalid item or past [`BATCH_PUBLISHES_MAX`].
///
/// Also returns each publish's idempotency key (`None` for most), in order.
pub(crate) fn parse_batch(body: &Bytes, limits: Limits) -> Result<Parsed, BatchError> {
    use serde::de::DeserializeSeed as _;
    // A publish takes at least ~40 bytes of JSON: a capacity that rarely needs to grow.
    let mut out = Vec::with_capacity((body.len() / 40).min(BATCH_PUBLISHES_MAX));
    let mut keys = Vec::new();
    let mut invalid = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = batch::Batch { body, limits, out: &mut out, keys: &mut keys, invalid: &mut invalid };
    let parsed = seed.deserialize(&mut de).and_then(|()| de.end());
    match (parsed, invalid) {
        (_, Some(msg)) => Err(BatchError::Invalid(msg)),
        (Err(e), None) => Err(BatchError::Json(e)),
        (Ok(()), None) => Ok((out, keys)),
    }
}

/// Publishes and their idempotency keys (`keys` is empty when no item has one).
pub(crate) type Parsed = (Vec<Publish>, Vec<Option<String>>);

mod batch {
    use std::fmt;

    use bytes::Bytes;
    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

    use super::{idempotency_key, Limits, Prefix, PublishBody, BATCH_PUBLISHES_MAX};
    use crate::addressing::Publish;

    /// The top-level object.
    pub(super) struct Batch<'a> {
        pub(super) body: &'a Bytes,
        pub(super) limits: Limits,
        pub(super) out: &'a mut Vec<Publish>,
        pub(super) keys: &'a mut Vec<Option<String>>,
        /// Set when an item is refused (serde's error then only stops the parse).
        pub(super) invalid: &'a mut Option<String>,
    }

    impl<'de> DeserializeSeed<'de> for Batch<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Batch<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(r#"an object {"publishes": [...]}"#)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Batch { body, limits, out, keys, invalid } = self;
            let mut seen = false;
            while let Some(key) = map.next_key::<&str>()? {
                if key != "publishes" {
                    return Err(de::Error::unknown_field(key, &["publishes"]));
                }
                if seen {
                    return Err(de::Error::duplicate_field("publishes"));
                }
                seen = true;
                map.next_value_seed(Items {
                    body,
                    limits,
                    out: &mut *out,
                    keys: &mut *keys,
                    invalid: &mut *invalid,
                })?;
            }
            if !seen {
                return Err(de::Error::missing_field("publishes"));
            }
            Ok(())
        }
    }

    /// The `publishes` array.
    struct Items<'a> {
        body: &'a Bytes,
        limits: Limits,
        out: &'a mut Vec<Publish>,
        keys: &'a mut Vec<Option<String>>,
        invalid: &'a mut Option<String>,
    }

    impl<'de> DeserializeSeed<'de> for Items<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Items<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of publishes")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while let Some(mut item) = seq.next_element::<PublishBody<'de>>()? {
                if i == BATCH_PUBLISHES_MAX {
                    *self.invalid =
                        Some(format!("publishes: more than {BATCH_PUBLISHES_MAX} entries"));
                    return Err(de::Error::custom("too many publishes"));
                }
                if let Some(k) = item.idempotency_key.take() {
                    let field = format_args!("publishes[{i}].idempotency_key");
                    match idempotency_key(&k, &field) {
                        Ok(k) => {
                            self.keys.resize(i, None);
                            self.keys.push(Some(k));
                        }
                        Err(msg) => {
                            *self.invalid = Some(msg);
                            return Err(de::Error::custom("invalid publish"));
                        }
                    }
                }
                if item.ack.is_some() {
                    *self.invalid = Some(format!(
                        "publishes[{i}].ack: only a single publish (POST /api/publish) takes ack"
                    ));
                    return Err(de::Error::custom("ack in a batch"));
                }
                match item.into_publish(Prefix(Some(i)), self.body, self.limits) {
                    Ok(p) => self.out.push(p),
                    Err(msg) => {
                        *self.invalid = Some(msg);
                        return Err(de::Error::custom("invalid publish"));
                    }
                }
                i += 1;
            }
            Ok(())
        }
    }
}

/// `{"uid": ".."}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UidBody<'a> {
    #[serde(borrow)]
    pub(crate) uid: Cow<'a, str>,
}

/// `since_epoch=&since_offset=&limit=` of a history query: the position (both or neither)
/// and the limit (default 100, 1 to 1000).
pub(crate) fn history_params(
    query: Option<&str>,
) -> Result<(Option<crate::history::Position>, usize), String> {
    use crate::command::{HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX};
    let (mut epoch, mut offset, mut limit) = (None, None, HISTORY_LIMIT_DEFAULT);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "since_epoch" => epoch = Some(v.parse().map_err(|e| format!("since_epoch: {e}"))?),
            "since_offset" => {
                offset = Some(
                    v.parse::<u64>().map_err(|_| format!("since_offset: not an offset: {v:?}"))?,
                )
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=HISTORY_LIMIT_MAX).contains(n))
                    .ok_or_else(|| format!("limit: must be between 1 and {HISTORY_LIMIT_MAX}"))?
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    let since = match (epoch, offset) {
        (Some(epoch), Some(offset)) => Some(crate::history::Position { epoch, offset }),
        (None, None) => None,
        _ => return Err("since_epoch and since_offset: give both or neither".into()),
    };
    Ok((since, limit))
}

/// A client id from a path, a query or a body; `field` names it in the error.
pub(crate) fn client_id(s: &str, field: &dyn std::fmt::Display) -> Result<ConnId, String> {
    s.parse::<ConnId>().map_err(|e| format!("{field}: {e}"))
}

/// A group id, validated against the limit.
pub(crate) fn group_id(
    s: &str,
    field: &dyn std::fmt::Display,
    limits: Limits,
) -> Result<GroupId, String> {
    GroupId::new(s, limits.name_bytes_max).map_err(|e| format!("{field}: {e}"))
}

/// A uid, validated against the limit.
pub(crate) fn uid(s: &str, field: &dyn std::fmt::Display, limits: Limits) -> Result<Uid, String> {
    Uid::new(s, limits.name_bytes_max).map_err(|e| format!("{field}: {e}"))
}

/// The text of a message: sliced out of `body` when serde borrowed it, else the owned string.
fn text(s: Cow<'_, str>, body: &Bytes) -> Utf8Bytes {
    match s {
        Cow::Borrowed(b) if !b.is_empty() => {
            Utf8Bytes::try_from(body.slice_ref(b.as_bytes())).unwrap_or_else(|_| Utf8Bytes::from(b))
        }
        Cow::Borrowed(b) => Utf8Bytes::from(b),
        Cow::Owned(s) => Utf8Bytes::from(s),
    }
}

/// Where a publish sits in its request, for error messages: nothing for `POST /api/publish`,
/// `publishes[3].` in a batch. Formatted only when there is an error to report.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Prefix(pub(crate) Option<usize>);

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(i) => write!(f, "publishes[{i}]."),
            None => Ok(()),
        }
    }
}

fn list<T>(
    items: Vec<Text<'_>>,
    prefix: Prefix,
    field: &str,
    mut parse: impl FnMut(&str, &dyn std::fmt::Display) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    if items.len() > TARGETS_MAX {
        return Err(format!("{prefix}{field}: more than {TARGETS_MAX} entries"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, t)| parse(&t.0, &format_args!("{prefix}{field}[{i}]")))
        .collect()
}

impl PublishBody<'_> {
    /// The idempotency key, validated (taken out, so `into_publish` does not see it).
    pub(crate) fn take_key(&mut self) -> Result<Option<String>, String> {
        match self.idempotency_key.take() {
            None => Ok(None),
            Some(k) => idempotency_key(&k, &"idempotency_key").map(Some),
        }
    }

    /// The `ack` field, checked.
    pub(crate) fn ack(&self) -> Result<Ack, String> {
        match self.ack.as_deref() {
            None | Some("local") => Ok(Ack::Local),
            Some("nodes") => Ok(Ack::Nodes),
            Some(other) => Err(format!("ack: {other:?} is not \"local\" or \"nodes\"")),
        }
    }

    /// Validate and convert. `prefix` is prepended to field names in errors. `body` is the
    /// buffer this was deserialized from.
    pub(crate) fn into_publish(
        self,
        prefix: Prefix,
        body: &Bytes,
        limits: Limits,
    ) -> Result<Publish, String> {
        let message = match (self.data, self.binary_base64) {
            (Some(d), None) => Message::Text(text(d, body)),
            (None, Some(b)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|e| format!("{prefix}binary_base64: {e}"))?;
                Message::Binary(Bytes::from(bytes))
            }
            (None, None) => {
                return Err(format!("{prefix}data: missing (or give binary_base64)"));
            }
            (Some(_), Some(_)) => {
                return Err(format!("{prefix}data: give either data or binary_base64, not both"));
            }
        };
        let to = match self.to {
            None => {
                return Err(format!(
                    "{prefix}to: missing ({{\"all\":true}} reaches every connection)"
                ))
            }
            Some(to) => to.into_to(prefix, limits)?,
        };
        let exclude = list(self.exclude, prefix, "exclude", client_id)?;
        Ok(Publish { to, exclude, message })
    }
}

impl ToBody<'_> {
    fn into_to(self, prefix: Prefix, limits: Limits) -> Result<To, String> {
        let given = usize::from(self.all.is_some())
            + usize::from(self.groups.is_some())
            + usize::from(self.clients.is_some())
            + usize::from(self.uids.is_some());
        if given != 1 {
            return Err(format!("{prefix}to: exactly one of all, groups, clients, uids"));
        }
        let non_empty = |v: &Vec<Text<'_>>, field: &str| {
            if v.is_empty() {
                Err(format!("{prefix}to.{field}: must not be empty"))
            } else {
                Ok(())
            }
        };
        if let Some(all) = self.all {
            return if all { Ok(To::All) } else { Err(format!("{prefix}to.all: must be true")) };
        }
        if let Some(groups) = self.groups {
            non_empty(&groups, "groups")?;
            return list(groups, prefix, "to.groups", |s, f| group_id(s, f, limits))
                .map(To::Groups);
        }
        if let Some(clients) = self.clients {
            non_empty(&clients, "clients")?;
            return list(clients, prefix, "to.clients", client_id).map(To::Clients);
        }
        let uids = self.uids.unwrap_or_default();
        non_empty(&uids, "uids")?;
        list(uids, prefix, "to.uids", |s, f| uid(s, f, limits)).map(To::Uids)
    }
}

/// Seed 003's parameters (`GET /?content=..&to_worker_id=..&to_connection_id=..`), plus
/// `to_client_id` and `to_group` (each may repeat). Unknown parameters are ignored, as PHP
/// does; a repeated single-valued parameter keeps its last value, as PHP does.
#[derive(Debug, Default)]
pub(crate) struct SeedParams {
    content: Option<String>,
    to_worker_id: Option<String>,
    to_connection_id: Option<String>,
    to_client_id: Vec<String>,
    to_group: Vec<String>,
}

impl SeedParams {
    /// Add the parameters of a query string or an `application/x-www-form-urlencoded` body.
    /// Invalid UTF-8 in a value becomes U+FFFD (a text frame must be UTF-8).
    pub(crate) fn extend(&mut self, form: &[u8]) {
        for (k, v) in form_urlencoded::parse(form) {
            match &*k {
                "content" => self.content = Some(v.into_owned()),
                "to_worker_id" => self.to_worker_id = Some(v.into_owned()),
                "to_connection_id" => self.to_connection_id = Some(v.into_owned()),
                "to_client_id" => self.to_client_id.push(v.into_owned()),
                "to_group" => self.to_group.push(v.into_owned()),
                _ => {}
            }
        }
    }

    /// Validate and convert; `node` is this node (the seed's worker/connection pair names a
    /// connection of the node that answers).
    pub(crate) fn into_publish(self, node: NodeId, limits: Limits) -> Result<Publish, String> {
        let content = match self.content {
            Some(c) if !c.is_empty() => c,
            _ => return Err("content: missing or empty".into()),
        };
        let pair = match (self.to_worker_id, self.to_connection_id) {
            (None, None) => None,
            (Some(w), Some(c)) => {
                let worker: u16 =
                    w.parse().map_err(|_| format!("to_worker_id: not a shard number: {w:?}"))?;
                let conn: u64 = c
                    .parse()
                    .map_err(|_| format!("to_connection_id: not a connection number: {c:?}"))?;
                Some(ConnId::from_worker_pair(node, worker, conn))
            }
            (Some(_), None) => return Err("to_connection_id: missing (with to_worker_id)".into()),
            (None, Some(_)) => return Err("to_worker_id: missing (with to_connection_id)".into()),
        };
        let forms = usize::from(pair.is_some())
            + usize::from(!self.to_client_id.is_empty())
            + usize::from(!self.to_group.is_empty());
        if forms > 1 {
            return Err("to_group: give one of to_group, to_client_id, or to_worker_id with \
                 to_connection_id"
                .into());
        }
        let too_many = |v: &Vec<String>, field: &str| {
            if v.len() > TARGETS_MAX {
                Err(format!("{field}: more than {TARGETS_MAX} values"))
            } else {
                Ok(())
            }
        };
        too_many(&self.to_client_id, "to_client_id")?;
        too_many(&self.to_group, "to_group")?;
        let to = if let Some(id) = pair {
            To::Clients(vec![id])
        } else if !self.to_client_id.is_empty() {
            To::Clients(
                self.to_client_id
                    .iter()
                    .map(|s| client_id(s, &"to_client_id"))
                    .collect::<Result<_, _>>()?,
            )
        } else if !self.to_group.is_empty() {
            To::Groups(
                self.to_group
                    .iter()
                    .map(|s| group_id(s, &"to_group", limits))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            To::All
        };
        Ok(Publish::new(to, Message::Text(Utf8Bytes::from(content))))
    }
}

/// `DELETE /api/clients/{id}?code=&reason=`: the close code (default 1000; 1000 or
/// 3000–4999) and reason (at most 123 bytes, so the close frame fits a control frame).
pub(crate) fn close_params(query: Option<&str>) -> Result<(u16, String), String> {
    let mut code = None;
    let mut reason = String::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "code" if v.is_empty() => code = None,
            "code" => {
                code = Some(v.parse::<u16>().map_err(|_| format!("code: not a number: {v:?}"))?)
            }
            "reason" => reason = v.into_owned(),
            _ => {}
        }
    }
    let code = code.unwrap_or(1000);
    if code != 1000 && !(3000..=4999).contains(&code) {
        return Err(format!("code: {code} is not 1000 or 3000-4999"));
    }
    if reason.len() > 123 {
        return Err(format!("reason: {} bytes, over the limit of 123", reason.len()));
    }
    Ok((code, reason))
}

/// Run every request-body and query parser of the API on `data`, as the routes do (for the
/// fuzz targets and property tests: none of them may panic, whatever the bytes). Returns how
/// many parsers accepted it.
#[doc(hidden)]
pub fn parse_any_body(data: &[u8], name_bytes_max: usize) -> usize {
    let limits = Limits { name_bytes_max };
    let body = Bytes::copy_from_slice(data);
    let mut accepted = 0;
    if let Ok(p) = serde_json::from_slice::<PublishBody<'_>>(&body) {
        accepted += usize::from(p.into_publish(Prefix(None), &body, limits).is_ok());
    }
    accepted += usize::from(parse_batch(&body, limits).is_ok());
    if let Ok(u) = serde_json::from_slice::<UidBody<'_>>(&body) {
        accepted += usize::from(uid(&u.uid, &"uid", limits).is_ok());
    }
    accepted += usize::from(serde_json::from_slice::<crate::addressing::Session>(&body).is_ok());
    let mut seed = SeedParams::default();
    seed.extend(data);
    accepted += usize::from(seed.into_publish(NodeId(1), limits).is_ok());
    if let Ok(text) = std::str::from_utf8(data) {
        accepted += usize::from(close_params(Some(text)).is_ok());
        accepted += usize::from(client_id(text, &"client_id").is_ok());
        accepted += usize::from(group_id(text, &"group", limits).is_ok());
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { name_bytes_max: 8 };

    fn publish(json: &str) -> Result<Publish, String> {
        let body = Bytes::copy_from_slice(json.as_bytes());
        let b: PublishBody<'_> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        b.into_publish(Prefix(None), &body, LIMITS)
    }

    fn id(n: u32) -> String {
        ConnId::new(NodeId(7), 1, n, 3).client_id()
    }

    #[test]
    fn every_target_form_parses() {
        let p = publish(r#"{"data":"hi","to":{"all":true}}"#).unwrap();
        assert_eq!(p.to, To::All);
        assert_eq!(p.message, Message::text("hi"));
        let p = publish(r#"{"data":"hi","to":{"groups":["a","b"]}}"#).unwrap();
        assert_eq!(
            p.to,
            To::Groups(vec![GroupId::new("a", 8).unwrap(), GroupId::new("b", 8).unwrap()])
        );
        let json =
            format!(r#"{{"data":"x","to":{{"clients":["{}"]}},"exclude":["{}"]}}"#, id(1), id(2));
        let p = publish(&json).unwrap();
        assert_eq!(p.to, To::Clients(vec![id(1).parse().unwrap()]));
        assert_eq!(p.exclude, vec![id(2).parse().unwrap()]);
        let p = publish(r#"{"data":"x","to":{"uids":["u1"]}}"#).unwrap();
        assert_eq!(p.to, To::Uids(vec![Uid::new("u1", 8).unwrap()]));
    }

    #[test]
    fn text_is_delivered_as_sent_escapes_included() {
        let p = publish(r#"{"data":"a\"b\n\u00e9","to":{"all":true}}"#).unwrap();
        assert_eq!(p.message, Message::text("a\"b\né"));
        let p = publish(r#"{"data":"","to":{"all":true}}"#).unwrap();
        assert_eq!(p.message, Message::text(""));
        let p = publish(r#"{"data":"unescaped é","to":{"all":true}}"#).unwrap();
        assert_eq!(p.message, Message::text("unescaped é"));
    }

    #[test]
    fn binary_base64_is_a_binary_frame() {
        let p = publish(r#"{"binary_base64":"AAEC/w==","to":{"all":true}}"#).unwrap();
        assert_eq!(p.message, Message::binary(vec![0u8, 1, 2, 255]));
        let e = publish(r#"{"binary_base64":"!!","to":{"all":true}}"#).unwrap_err();
        assert!(e.starts_with("binary_base64: "), "{e}");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (r#"{"to":{"all":true}}"#, "data: missing"),
            (r#"{"data":"x","binary_base64":"","to":{"all":true}}"#, "data: give either"),
            (r#"{"data":"x"}"#, "to: missing"),
            (r#"{"data":"x","to":{}}"#, "to: exactly one"),
            (r#"{"data":"x","to":{"all":true,"groups":["a"]}}"#, "to: exactly one"),
            (r#"{"data":"x","to":{"all":false}}"#, "to.all: must be true"),
            (r#"{"data":"x","to":{"groups":[]}}"#, "to.groups: must not be empty"),
            (r#"{"data":"x","to":{"groups":["ok","waytoolong"]}}"#, "to.groups[1]: longer than 8"),
            (r#"{"data":"x","to":{"groups":[""]}}"#, "to.groups[0]: must not be empty"),
            (r#"{"data":"x","to":{"uids":["a\nb"]}}"#, "to.uids[0]: must not contain control"),
            (r#"{"data":"x","to":{"clients":["nope"]}}"#, "to.clients[0]: malformed client id"),
            (r#"{"data":"x","to":{"all":true},"exclude":["zz"]}"#, "exclude[0]: malformed"),
            (r#"{"data":"x","to":{"all":true},"exlude":[]}"#, "unknown field `exlude`"),
            (r#"{"data":"x","to":{"everyone":true}}"#, "unknown field `everyone`"),
            (r#"{"data":5,"to":{"all":true}}"#, "invalid type: integer"),
        ];
        for (json, want) in cases {
            let e = publish(json).unwrap_err();
            assert!(e.starts_with(want) || e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn target_lists_are_bounded() {
        let groups: Vec<String> = (0..=TARGETS_MAX).map(|i| format!("\"g{}\"", i % 10)).collect();
        let json = format!(r#"{{"data":"x","to":{{"groups":[{}]}}}}"#, groups.join(","));
        assert!(publish(&json).unwrap_err().contains("more than 10000"));
    }

    #[test]
    fn batches_parse_item_by_item() {
        let batch = |json: &str| parse_batch(&Bytes::copy_from_slice(json.as_bytes()), LIMITS);
        let ok = batch(
            r#"{"publishes":[{"data":"a","to":{"all":true}},{"data":"b","to":{"uids":["u"]}}]}"#,
        )
        .unwrap()
        .0;
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].message, Message::text("b"));
        assert!(batch(r#"{"publishes":[]}"#).unwrap().0.is_empty());
        let (ps, keys) = batch(
            r#"{"publishes":[{"data":"a","to":{"all":true}},{"data":"b","to":{"all":true},"idempotency_key":"k"}]}"#,
        )
        .unwrap();
        assert_eq!((ps.len(), keys), (2, vec![None, Some("k".to_owned())]));
        let invalid = |json: &str| match batch(json) {
            Err(BatchError::Invalid(m)) => m,
            other => panic!("{json}: {other:?}"),
        };
        let json_error = |json: &str| match batch(json) {
            Err(BatchError::Json(e)) => e.to_string(),
            other => panic!("{json}: {other:?}"),
        };
        let m = invalid(r#"{"publishes":[{"data":"a","to":{"all":true}},{"data":"b"}]}"#);
        assert!(m.starts_with("publishes[1].to: missing"), "{m}");
        let m = invalid(r#"{"publishes":[{"data":"a","to":{"groups":["waytoolong"]}}]}"#);
        assert!(m.starts_with("publishes[0].to.groups[0]: longer than 8"), "{m}");
        let many = vec![r#"{"data":"x","to":{"all":true}}"#; BATCH_PUBLISHES_MAX + 1].join(",");
        let m = invalid(&format!(r#"{{"publishes":[{many}]}}"#));
        assert_eq!(m, "publishes: more than 10000 entries");
        let m = invalid(r#"{"publishes":[{"data":"a","to":{"all":true},"idempotency_key":""}]}"#);
        assert!(m.starts_with("publishes[0].idempotency_key: must be 1 to 256"), "{m}");
        assert!(json_error(r#"{}"#).contains("missing field `publishes`"));
        assert!(json_error(r#"{"publishes":[],"x":1}"#).contains("unknown field `x`"));
        assert!(json_error(r#"{"publishes":{}}"#).contains("invalid type"));
        assert!(json_error(r#"{"publishes":[{"data":"a","to":{"all":true},"typo":1}]}"#)
            .contains("unknown field `typo`"));
        assert!(json_error(r#"{"publishes":[]} trailing"#).contains("trailing"));
        assert!(json_error(r#"{"publishes":[{"data":"#).contains("EOF"));
    }

    fn seed(q: &str) -> Result<Publish, String> {
        let mut s = SeedParams::default();
        s.extend(q.as_bytes());
        s.into_publish(NodeId(7), LIMITS)
    }

    #[test]
    fn seed_forms() {
        let p = seed("content=hello+world%21").unwrap();
        assert_eq!((p.to, p.message), (To::All, Message::text("hello world!")));
        let want = ConnId::new(NodeId(7), 1, 42, 3);
        let p = seed(&format!(
            "to_worker_id=1&to_connection_id={}&content=x",
            want.connection_number()
        ))
        .unwrap();
        assert_eq!(p.to, To::Clients(vec![want]));
        let p = seed(&format!("content=x&to_client_id={}&to_client_id={}", id(1), id(2))).unwrap();
        assert_eq!(p.to, To::Clients(vec![id(1).parse().unwrap(), id(2).parse().unwrap()]));
        let p = seed("content=x&to_group=a&to_group=b&unknown=1").unwrap();
        assert_eq!(
            p.to,
            To::Groups(vec![GroupId::new("a", 8).unwrap(), GroupId::new("b", 8).unwrap()])
        );
        // Last value wins, as in PHP.
        assert_eq!(seed("content=a&content=b").unwrap().message, Message::text("b"));
    }

    #[test]
    fn seed_refusals_name_the_parameter() {
        let cases = [
            ("", "content: missing"),
            ("content=", "content: missing or empty"),
            ("content=x&to_worker_id=1", "to_connection_id: missing"),
            ("content=x&to_connection_id=1", "to_worker_id: missing"),
            ("content=x&to_worker_id=a&to_connection_id=1", "to_worker_id: not a shard"),
            ("content=x&to_worker_id=70000&to_connection_id=1", "to_worker_id: not a shard"),
            ("content=x&to_worker_id=1&to_connection_id=-1", "to_connection_id: not a conn"),
            ("content=x&to_client_id=abc", "to_client_id: malformed"),
            ("content=x&to_group=", "to_group: must not be empty"),
            ("content=x&to_group=a&to_client_id=abc", "to_group: give one of"),
        ];
        for (q, want) in cases {
            let e = seed(q).unwrap_err();
            assert!(e.starts_with(want), "{q}: {e}");
        }
    }

    #[test]
    fn close_codes_and_reasons() {
        assert_eq!(close_params(None), Ok((1000, String::new())));
        assert_eq!(close_params(Some("code=&reason=")), Ok((1000, String::new())));
        assert_eq!(close_params(Some("code=4001&reason=bye+now")), Ok((4001, "bye now".into())));
        assert_eq!(close_params(Some("code=3000")).unwrap().0, 3000);
        for bad in ["code=1001", "code=2999", "code=5000", "code=x", "code=-1"] {
            assert!(close_params(Some(bad)).unwrap_err().starts_with("code: "), "{bad}");
        }
        let long = format!("reason={}", "r".repeat(124));
        assert!(close_params(Some(&long)).unwrap_err().starts_with("reason: 124 bytes"));
        assert!(close_params(Some(&format!("reason={}", "r".repeat(123)))).is_ok());
    }
}
