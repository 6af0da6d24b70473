//! Connect tokens: HS256 JWTs (RFC 7519) verified with `jsonwebtoken`, time passed in.
//!
//! Claims (see docs/api.md):
//! ```json
//! {"sub": "42", "exp": 1767225600, "join": ["room:*"], "publish": ["room:1"]}
//! ```
//! `sub` is the uid the connection is bound to (`""`: anonymous, no uid); `exp` is required;
//! `nbf`, `iat`, `iss` and `aud` are honoured when present (`iss`/`aud` against the
//! configuration). `join` and `publish` list the groups the client may join and publish to
//! with commands: an exact group id, a prefix ending in `*` (`room:*`), or `*` for any.
//!
//! Sans-I/O: no clock is read here; [`Verifier::verify`] takes the current Unix time.

use std::collections::HashSet;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::config::Secret;
use crate::ids::Uid;

/// Why a token was refused (each is answered with 401 and this text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, not HS256, or claims of the wrong shape.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match the node's secret.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` is now or in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer not accepted")]
    WrongIssuer,
    /// `aud` does not include the configured audience (or is present when none is).
    #[error("token audience not accepted")]
    WrongAudience,
    /// `sub` is not a valid uid (too long, control characters).
    #[error("token subject is not a valid uid")]
    BadSubject,
}

impl TokenError {
    /// The text sent in the 401 body.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "invalid token signature",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::WrongIssuer => "token issuer not accepted",
            TokenError::WrongAudience => "token audience not accepted",
            TokenError::BadSubject => "token subject is not a valid uid",
        }
    }
}

/// The claims ringcast reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The uid; `""` for an anonymous client with grants.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, Unix seconds (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience (a single string when minted by ringcast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Groups the client may join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<String>,
    /// Groups the client may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

/// `aud`: one string or a list (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "x"`
    One(String),
    /// `"aud": ["x", "y"]`
    Many(Vec<String>),
}

/// Group patterns from a token: exact ids, prefixes ending in `*`, or `*`. Plain strings, not
/// compiled globs: each connection holds its own, so they must stay small and cheap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Box<[Box<str>]>);

impl Patterns {
    /// From the claim's list.
    pub fn new(list: Vec<String>) -> Self {
        Patterns(list.into_iter().map(String::into_boxed_str).collect())
    }

    /// Whether `group` matches an entry.
    pub fn matches(&self, group: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => group.starts_with(prefix),
            None => **p == *group,
        })
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a verified token gives a connection; kept with the connection while it is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The uid to bind; `None` for `sub: ""`.
    pub uid: Option<Uid>,
    /// Groups it may join with `add_group`.
    pub join: Patterns,
    /// Groups it may publish to with `send_to_group`.
    pub publish: Patterns,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
}

impl TokenGrant {
    /// Whether the connection must be closed at `now_unix`, `grace_secs` after expiry.
    pub fn expired(&self, now_unix: u64, grace_secs: u64) -> bool {
        now_unix >= self.expires_at.saturating_add(grace_secs)
    }
}

impl crate::command::Grants for TokenGrant {
    fn may_join(&self, group: &str) -> bool {
        self.join.matches(group)
    }

    fn may_publish(&self, group: &str) -> bool {
        self.publish.matches(group)
    }
}

/// The node's verifier: the key and the validation rules, built once.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    uid_bytes_max: usize,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl Verifier {
    /// Only HS256 is accepted (`alg: none` and every other algorithm are refused).
    pub fn new(
        secret: &Secret,
        issuer: Option<String>,
        audience: Option<String>,
        uid_bytes_max: usize,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Time is checked by `verify` against the time passed in, not the library's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = false;
        if let Some(iss) = &issuer {
            validation.set_issuer(&[iss]);
        }
        Verifier {
            key: DecodingKey::from_secret(secret.expose()),
            validation,
            issuer,
            audience,
            uid_bytes_max,
        }
    }

    /// Verify `token` at `now_unix` (seconds since the epoch).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<TokenGrant, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::WrongIssuer,
                _ => TokenError::Malformed,
            },
        )?;
        let c = data.claims;
        if let Some(iss) = &self.issuer {
            if c.iss.as_deref() != Some(iss) {
                return Err(TokenError::WrongIssuer);
            }
        }
        let aud_ok = match (&self.audience, &c.aud) {
            (None, None) => true,
            (None, Some(_)) | (Some(_), None) => false,
            (Some(want), Some(Audience::One(a))) => a == want,
            (Some(want), Some(Audience::Many(list))) => list.iter().any(|a| a == want),
        };
        if !aud_ok {
            return Err(TokenError::WrongAudience);
        }
        if now_unix >= c.exp {
            return Err(TokenError::Expired);
        }
        if c.nbf.is_some_and(|nbf| nbf > now_unix) {
            return Err(TokenError::NotYetValid);
        }
        let uid = match c.sub.as_str() {
            "" => None,
            s => Some(Uid::new(s, self.uid_bytes_max).map_err(|_| TokenError::BadSubject)?),
        };
        Ok(TokenGrant {
            uid,
            join: Patterns::new(dedup(c.join)),
            publish: Patterns::new(dedup(c.publish)),
            expires_at: c.exp,
        })
    }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
    v
}

/// Sign `claims` with HS256 (the `ringcast token` subcommand, tests, applications in Rust).
pub fn mint(secret: &Secret, claims: &Claims) -> String {
    // Encoding JSON-serializable claims with an HMAC key cannot fail.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.expose()),
    )
    .expect("HS256 signing of plain claims")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123456789abcdef")
    }

    fn claims() -> Claims {
        Claims {
            sub: "42".into(),
            exp: NOW + 60,
            nbf: None,
            iat: Some(NOW),
            iss: None,
            aud: None,
            join: vec!["room:*".into(), "lobby".into()],
            publish: vec!["room:1".into()],
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(&secret(), None, None, 128)
    }

    #[test]
    fn a_valid_token_gives_its_uid_and_grants() {
        let g = verifier().verify(&mint(&secret(), &claims()), NOW).unwrap();
        assert_eq!(g.uid.as_ref().map(|u| u.as_str()), Some("42"));
        assert!(g.join.matches("room:7") && g.join.matches("lobby"));
        assert!(!g.join.matches("lobby2") && !g.join.matches("roo"));
        assert!(g.publish.matches("room:1") && !g.publish.matches("room:2"));
        assert_eq!(g.expires_at, NOW + 60);
        assert!(!g.expired(NOW + 59, 0) && g.expired(NOW + 60, 0));
        assert!(!g.expired(NOW + 60, 5) && g.expired(NOW + 65, 5));
    }

    #[test]
    fn time_is_the_one_passed_in() {
        let t = mint(&secret(), &claims());
        assert_eq!(verifier().verify(&t, NOW + 60), Err(TokenError::Expired));
        assert!(verifier().verify(&t, NOW + 59).is_ok());
        let later = Claims { nbf: Some(NOW + 10), ..claims() };
        let t = mint(&secret(), &later);
        assert_eq!(verifier().verify(&t, NOW), Err(TokenError::NotYetValid));
        assert!(verifier().verify(&t, NOW + 10).is_ok());
    }

    #[test]
    fn wrong_key_algorithm_or_shape_is_refused() {
        let other = Secret::new("another secret of 32 bytes or more!!");
        let t = mint(&other, &claims());
        assert_eq!(verifier().verify(&t, NOW), Err(TokenError::BadSignature));
        assert_eq!(verifier().verify("", NOW), Err(TokenError::Malformed));
        assert_eq!(verifier().verify("a.b.c", NOW), Err(TokenError::Malformed));
        // alg "none": header {"alg":"none","typ":"JWT"}, the claims, an empty signature.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_string(&claims()).unwrap())
        );
        assert_eq!(verifier().verify(&none, NOW), Err(TokenError::Malformed));
        // HS512 with the right secret is still refused: only HS256.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(),
            &EncodingKey::from_secret(secret().expose()),
        )
        .unwrap();
        assert_eq!(verifier().verify(&hs512, NOW), Err(TokenError::Malformed));
        // Missing exp.
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "1"}),
            &EncodingKey::from_secret(secret().expose()),
        )
        .unwrap();
        assert_eq!(verifier().verify(&no_exp, NOW), Err(TokenError::Malformed));
        // A tampered payload breaks the signature.
        let t = mint(&secret(), &claims());
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged =
            b64.encode(serde_json::to_string(&Claims { sub: "1".into(), ..claims() }).unwrap());
        parts[1] = &forged;
        assert_eq!(verifier().verify(&parts.join("."), NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn issuer_audience_and_subject_are_checked() {
        let v = Verifier::new(&secret(), Some("app".into()), Some("ringcast".into()), 8);
        let good = Claims {
            iss: Some("app".into()),
            aud: Some(Audience::Many(vec!["x".into(), "ringcast".into()])),
            ..claims()
        };
        assert!(v.verify(&mint(&secret(), &good), NOW).is_ok());
        let bad_iss = Claims { iss: Some("evil".into()), ..good.clone() };
        assert_eq!(v.verify(&mint(&secret(), &bad_iss), NOW), Err(TokenError::WrongIssuer));
        let no_iss = Claims { iss: None, ..good.clone() };
        assert_eq!(v.verify(&mint(&secret(), &no_iss), NOW), Err(TokenError::WrongIssuer));
        let bad_aud = Claims { aud: Some(Audience::One("other".into())), ..good.clone() };
        assert_eq!(v.verify(&mint(&secret(), &bad_aud), NOW), Err(TokenError::WrongAudience));
        let long_sub = Claims { sub: "123456789".into(), ..good.clone() };
        assert_eq!(v.verify(&mint(&secret(), &long_sub), NOW), Err(TokenError::BadSubject));
        // Without a configured audience, a token addressed to someone is refused.
        let aud = Claims { aud: Some(Audience::One("ringcast".into())), ..claims() };
        assert_eq!(verifier().verify(&mint(&secret(), &aud), NOW), Err(TokenError::WrongAudience));
        // Anonymous.
        let anon = Claims { sub: String::new(), ..claims() };
        assert_eq!(verifier().verify(&mint(&secret(), &anon), NOW).unwrap().uid, None);
    }

    #[test]
    fn patterns() {
        let p = Patterns::new(vec!["*".into()]);
        assert!(p.matches("") && p.matches("anything"));
        let p = Patterns::new(vec![]);
        assert!(!p.matches("a") && p.is_empty());
        let p = Patterns::new(vec!["a*".into(), "b".into()]);
        assert!(p.matches("a") && p.matches("abc") && p.matches("b") && !p.matches("bc"));
    }
}
