//! Who may open a WebSocket, and what a connection may do with commands beyond the node's
//! policy: connect tokens (HS256 JWTs), the `Origin` allowlist, per-address limits.
//!
//! Sans-I/O: nothing here reads a clock (the current time is an argument), touches a socket,
//! a channel or a thread; the secret file is read once at start-up by
//! [`AuthConfig::resolve_secret`]. The shard driver (`src/shard/`) calls [`Policy::admit`] on
//! each parsed upgrade request and keeps the [`IpTable`]s behind locks.
//!
//! Deliberately absent: HTTP parsing (that is `proto::handshake`), routing (the shard binds the
//! token's uid through its `Router`), command parsing (`command` asks a [`crate::command::Grants`]).
//!
//! # Where the token goes
//! - the query parameter `token`: `ws://host/?token=<JWT>`, or
//! - a `Sec-WebSocket-Protocol` entry `ringcast.token.<JWT>`, offered beside the real
//!   subprotocol `ringcast` (browsers: `new WebSocket(url, ["ringcast", "ringcast.token." +
//!   jwt])`). The server echoes `ringcast` when offered, never the token entry.
//!
//! # How token grants combine with [`crate::config::Permissions`]
//! The node's permissions apply to every client, anonymous or not. A token can only add: a
//! command is allowed if the node's policy allows it *or* the token grants it (`join` for
//! `add_group`, `publish` for `send_to_group`). Limits are not grants: `groups_per_connection_max`
//! and the id length limits hold whatever the token says. The token is signed with the node's
//! secret, so it carries the application's authority, as the HTTP API does.

pub mod config;
pub mod ip;
pub mod origin;
pub mod token;

pub use config::{AuthConfig, AuthMode, Secret};
pub use ip::{IpKey, IpTable, RateVerdict};
pub use origin::OriginMatcher;
pub use token::{Claims, TokenError, TokenGrant, Verifier};

/// The query parameter carrying a token.
pub const TOKEN_PARAM: &str = "token";
/// The subprotocol the server echoes when a client offers it.
pub const SUBPROTOCOL: &str = "ringcast";
/// Prefix of the `Sec-WebSocket-Protocol` entry carrying a token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "ringcast.token.";
/// Close code for a connection whose token expired (private-use range 4000-4999, RFC 6455
/// §7.4.2; 4001 mirrors HTTP 401).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// What [`Policy::admit`] looks at in an upgrade request.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeRequest<'a> {
    /// Request path and query, e.g. `/?token=..`.
    pub path: &'a str,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// Every `Sec-WebSocket-Protocol` header value, joined with `,`.
    pub protocols: Option<&'a str>,
}

/// An upgrade the policy admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The verified token, if one was presented (and auth is not off).
    pub grant: Option<TokenGrant>,
    /// The subprotocol to echo in the 101 (only ever [`SUBPROTOCOL`]).
    pub protocol: Option<&'static str>,
    /// The path with any `token` parameter removed: what applications (`ConnInfo::path`) and
    /// logs see, so a credential never travels further than this check.
    pub path: String,
}

/// Why an upgrade is refused, as the HTTP status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401: token missing (required mode), malformed, badly signed, expired...
    Unauthorized(&'static str),
    /// 403: the `Origin` is not allowed.
    Forbidden(&'static str),
}

/// [`AuthConfig`] compiled: the verifier (with the secret), the origin matcher, the limits.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    mode: AuthMode,
    verifier: Option<Verifier>,
    origins: OriginMatcher,
    /// Seconds an expired connection may stay open.
    pub expiry_grace_secs: u64,
    /// 0: unlimited.
    pub connections_per_ip_max: usize,
    /// 0.0: unlimited.
    pub handshakes_per_ip_per_sec: f64,
    /// Bucket size.
    pub handshakes_per_ip_burst: f64,
    /// Buckets remembered, over all stripes.
    pub ips_tracked_max: usize,
}

impl Policy {
    /// Validate and compile; reads `secret_file` if set. `uid_bytes_max` bounds a token's `sub`.
    pub fn new(c: &AuthConfig, uid_bytes_max: usize) -> Result<Policy, String> {
        c.validate()?;
        let secret = if c.mode == AuthMode::Off { None } else { c.resolve_secret()? };
        Ok(Policy {
            mode: c.mode,
            verifier: secret
                .map(|s| Verifier::new(&s, c.issuer.clone(), c.audience.clone(), uid_bytes_max)),
            origins: OriginMatcher::new(&c.origins_allowed)?,
            expiry_grace_secs: c.expiry_grace.as_secs(),
            connections_per_ip_max: c.connections_per_ip_max,
            handshakes_per_ip_per_sec: f64::from(c.handshakes_per_ip_per_sec),
            handshakes_per_ip_burst: f64::from(c.handshake_burst()),
            ips_tracked_max: c.ips_tracked_max,
        })
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Decide on a parsed upgrade request at `now_unix` (seconds since the epoch): the origin
    /// (403), then the token (401). Pure.
    pub fn admit(&self, req: &UpgradeRequest<'_>, now_unix: u64) -> Result<Admission, Refusal> {
        if !self.origins.allows(req.origin) {
            return Err(Refusal::Forbidden("origin not allowed"));
        }
        let mut protocol = None;
        let mut tokens: Vec<&str> = Vec::new();
        for entry in req.protocols.into_iter().flat_map(|p| p.split(',')).map(str::trim) {
            if entry == SUBPROTOCOL {
                protocol = Some(SUBPROTOCOL);
            } else if let Some(t) = entry.strip_prefix(TOKEN_PROTOCOL_PREFIX) {
                tokens.push(t);
            }
        }
        let (path, query_tokens) = split_token(req.path);
        let all: Vec<&str> =
            tokens.iter().copied().chain(query_tokens.iter().map(|t| &**t)).collect();
        let grant = match (self.mode, &self.verifier, all.as_slice()) {
            (AuthMode::Off, _, _) => None,
            (_, _, [_, _, ..]) => return Err(Refusal::Unauthorized("more than one token")),
            (AuthMode::Required, _, []) => return Err(Refusal::Unauthorized("token required")),
            (AuthMode::Optional, _, []) => None,
            (_, None, [_]) => return Err(Refusal::Unauthorized("tokens are not configured")),
            (_, Some(v), [t]) => {
                Some(v.verify(t, now_unix).map_err(|e| Refusal::Unauthorized(e.reason()))?)
            }
        };
        Ok(Admission { grant, protocol, path })
    }
}

/// `path` without its `token` query parameters, and their (decoded) values.
fn split_token(path: &str) -> (String, Vec<String>) {
    let Some((base, query)) = path.split_once('?') else { return (path.to_owned(), Vec::new()) };
    let mut kept: Vec<&str> = Vec::new();
    let mut tokens = Vec::new();
    for pair in query.split('&') {
        let mut parsed = form_urlencoded::parse(pair.as_bytes());
        match parsed.next() {
            Some((k, v)) if k == TOKEN_PARAM => tokens.push(v.into_owned()),
            _ => kept.push(pair),
        }
    }
    if tokens.is_empty() {
        return (path.to_owned(), tokens);
    }
    let path = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (path, tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: u64 = 1_800_000_000;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123456789abcdef")
    }

    fn policy(mode: AuthMode, origins: &[&str]) -> Policy {
        let c = AuthConfig {
            mode,
            secret: Some(secret()),
            origins_allowed: origins.iter().map(|s| s.to_string()).collect(),
            expiry_grace: Duration::from_secs(3),
            ..Default::default()
        };
        Policy::new(&c, 128).unwrap()
    }

    fn token(sub: &str, exp: u64) -> String {
        token::mint(
            &secret(),
            &Claims {
                sub: sub.into(),
                exp,
                nbf: None,
                iat: None,
                iss: None,
                aud: None,
                join: vec!["a".into()],
                publish: vec![],
            },
        )
    }

    fn req<'a>(
        path: &'a str,
        origin: Option<&'a str>,
        protocols: Option<&'a str>,
    ) -> UpgradeRequest<'a> {
        UpgradeRequest { path, origin, protocols }
    }

    #[test]
    fn modes() {
        let t = token("7", NOW + 10);
        let q = format!("/?token={t}");
        let off = policy(AuthMode::Off, &[]);
        let a = off.admit(&req(&q, None, None), NOW).unwrap();
        assert_eq!(a.grant, None, "off ignores tokens");
        assert_eq!(a.path, "/");
        let opt = policy(AuthMode::Optional, &[]);
        assert_eq!(opt.admit(&req("/", None, None), NOW).unwrap().grant, None);
        let g = opt.admit(&req(&q, None, None), NOW).unwrap().grant.unwrap();
        assert_eq!(g.uid.unwrap().as_str(), "7");
        assert_eq!(
            opt.admit(&req("/?token=junk", None, None), NOW),
            Err(Refusal::Unauthorized("malformed token")),
            "a bad token is never downgraded to anonymous"
        );
        let req_mode = policy(AuthMode::Required, &[]);
        assert_eq!(
            req_mode.admit(&req("/", None, None), NOW),
            Err(Refusal::Unauthorized("token required"))
        );
        assert_eq!(
            req_mode.admit(&req(&q, None, None), NOW + 10),
            Err(Refusal::Unauthorized("token expired"))
        );
        assert_eq!(policy(AuthMode::Off, &[]).expiry_grace_secs, 3);
    }

    #[test]
    fn token_in_the_subprotocol_and_echo() {
        let t = token("7", NOW + 10);
        let p = policy(AuthMode::Required, &[]);
        let protos = format!("ringcast, ringcast.token.{t}");
        let a = p.admit(&req("/x?a=1", None, Some(&protos)), NOW).unwrap();
        assert_eq!(a.protocol, Some("ringcast"));
        assert_eq!(a.path, "/x?a=1");
        assert!(a.grant.is_some());
        let only_token = format!("ringcast.token.{t}");
        let a = p.admit(&req("/", None, Some(&only_token)), NOW).unwrap();
        assert_eq!(a.protocol, None, "the token entry is never echoed");
        let twice = format!("/?token={t}");
        assert_eq!(
            p.admit(&req(&twice, None, Some(&protos)), NOW),
            Err(Refusal::Unauthorized("more than one token"))
        );
        // Without auth, the subprotocol is still echoed when offered.
        let off = policy(AuthMode::Off, &[]);
        assert_eq!(
            off.admit(&req("/", None, Some("chat, ringcast")), NOW).unwrap().protocol,
            Some("ringcast")
        );
        assert_eq!(off.admit(&req("/", None, Some("chat")), NOW).unwrap().protocol, None);
    }

    #[test]
    fn token_is_removed_from_the_path() {
        assert_eq!(split_token("/a?x=1&token=abc&y=2"), ("/a?x=1&y=2".into(), vec!["abc".into()]));
        assert_eq!(split_token("/?token=a%2Eb"), ("/".into(), vec!["a.b".into()]));
        assert_eq!(split_token("/?tokens=1"), ("/?tokens=1".into(), vec![]));
        assert_eq!(split_token("/"), ("/".into(), vec![]));
    }

    #[test]
    fn origin_is_checked_first() {
        let p = policy(AuthMode::Required, &["https://app.test"]);
        assert_eq!(
            p.admit(&req("/", Some("https://evil.test"), None), NOW),
            Err(Refusal::Forbidden("origin not allowed"))
        );
        assert_eq!(
            p.admit(&req("/", Some("https://app.test"), None), NOW),
            Err(Refusal::Unauthorized("token required"))
        );
    }
}
