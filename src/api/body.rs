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

/// `{"publishes": [ <publish>, ... ]}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchBody<'a> {
    #[serde(borrow)]
    pub(crate) publishes: Vec<PublishBody<'a>>,
}

/// `{"uid": ".."}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UidBody<'a> {
    #[serde(borrow)]
    pub(crate) uid: Cow<'a, str>,
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

fn list<T>(
    items: Vec<Text<'_>>,
    field: &str,
    mut parse: impl FnMut(&str, &dyn std::fmt::Display) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    if items.len() > TARGETS_MAX {
        return Err(format!("{field}: more than {TARGETS_MAX} entries"));
    }
    items.iter().enumerate().map(|(i, t)| parse(&t.0, &format_args!("{field}[{i}]"))).collect()
}

impl PublishBody<'_> {
    /// Validate and convert. `prefix` is prepended to field names (`publishes[3].`). `body` is
    /// the buffer this was deserialized from.
    pub(crate) fn into_publish(
        self,
        prefix: &str,
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
        let exclude = list(self.exclude, &format!("{prefix}exclude"), client_id)?;
        Ok(Publish { to, exclude, message })
    }
}

impl ToBody<'_> {
    fn into_to(self, prefix: &str, limits: Limits) -> Result<To, String> {
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
            let field = format!("{prefix}to.groups");
            return list(groups, &field, |s, f| group_id(s, f, limits)).map(To::Groups);
        }
        if let Some(clients) = self.clients {
            non_empty(&clients, "clients")?;
            return list(clients, &format!("{prefix}to.clients"), client_id).map(To::Clients);
        }
        let uids = self.uids.unwrap_or_default();
        non_empty(&uids, "uids")?;
        list(uids, &format!("{prefix}to.uids"), |s, f| uid(s, f, limits)).map(To::Uids)
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { name_bytes_max: 8 };

    fn publish(json: &str) -> Result<Publish, String> {
        let body = Bytes::copy_from_slice(json.as_bytes());
        let b: PublishBody<'_> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        b.into_publish("", &body, LIMITS)
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
    fn batch_items_are_prefixed() {
        let body =
            Bytes::from_static(br#"{"publishes":[{"data":"a","to":{"all":true}},{"data":"b"}]}"#);
        let b: BatchBody<'_> = serde_json::from_slice(&body).unwrap();
        let errs: Vec<String> = b
            .publishes
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| p.into_publish(&format!("publishes[{i}]."), &body, LIMITS).err())
            .collect();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("publishes[1].to: missing"), "{}", errs[0]);
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
