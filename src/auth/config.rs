//! [`AuthConfig`]: every setting of connect authentication, the origin allowlist and the per-IP
//! limits, as one plain serde struct (the `[auth]` section of the configuration file).
//!
//! Deliberately absent: the CLI (its flags live in `main.rs`) and the compiled form (see
//! [`super::Policy`]). The only I/O here is [`AuthConfig::resolve_secret`], which reads the
//! secret file once at start-up.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Shortest HMAC secret accepted, in bytes: RFC 7518 §3.2 requires a key at least as long as
/// the hash output (256 bits for HS256).
pub const SECRET_BYTES_MIN: usize = 32;

/// Environment variable holding the HMAC secret (the secret is never a CLI flag: flags are
/// visible to every user in `ps`).
pub const SECRET_ENV: &str = "RINGCAST_AUTH_SECRET";

/// Whether WebSocket clients must present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Tokens are not looked at: every client is anonymous and gets the node's
    /// [`crate::config::Permissions`] only. The default, and what `--demo` uses.
    #[default]
    Off,
    /// A client may present a token; without one it is anonymous. A token that is present
    /// but invalid or expired is refused (401), never downgraded to anonymous.
    Optional,
    /// Every client must present a valid token, or its upgrade is refused with 401.
    Required,
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::Off => "off",
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        })
    }
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(AuthMode::Off),
            "optional" => Ok(AuthMode::Optional),
            "required" => Ok(AuthMode::Required),
            other => Err(format!("unknown auth mode {other:?} (off, optional, required)")),
        }
    }
}

/// The HMAC secret. Its `Debug` never shows the bytes, so printing a configuration (or a log
/// line with one in it) cannot leak it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wrap raw secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// The bytes, for the signer and the verifier only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted, {} bytes>)", self.0.len())
    }
}

/// Printed configurations (`check-config`) show that a secret is set, never the secret.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Secret(s.into_bytes()))
    }
}

/// Connect authentication, origin allowlist and per-IP limits (`[auth]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// off (default), optional or required; see [`AuthMode`].
    pub mode: AuthMode,
    /// The HS256 secret (at least [`SECRET_BYTES_MIN`] bytes). Prefer `secret_file` or the
    /// `RINGCAST_AUTH_SECRET` environment variable to writing it in a file others read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// A file holding the secret (one trailing newline is ignored). Exclusive with `secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// How long past its token's `exp` an open connection may stay before it is closed with
    /// 4001 "token expired" (checked on the shard's housekeeping tick, every 250 ms). A token
    /// already expired at the upgrade is refused whatever the grace.
    #[serde(deserialize_with = "humantime_duration", serialize_with = "humantime_text")]
    pub expiry_grace: Duration,
    /// When set, a token's `iss` must equal it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When set, a token's `aud` must contain it; when unset, a token carrying `aud` is
    /// refused (it was meant for someone else).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Origins allowed to open WebSockets: exact origins (`https://app.example.com`) or glob
    /// patterns (`https://*.example.com`), compared case-insensitively. Empty: any origin. A
    /// request without `Origin` (not a browser) is always allowed: the allowlist protects
    /// browsers' users from other sites (cross-site WebSocket hijacking), and any other client
    /// can send whatever `Origin` it likes.
    pub origins_allowed: Vec<String>,
    /// Open connections one IP address (IPv6: one /64) may hold on this node; 0: unlimited.
    pub connections_per_ip_max: usize,
    /// Sustained upgrade requests per second one IP address (IPv6: one /64) may make; 0:
    /// unlimited. Refusals get 429.
    pub handshakes_per_ip_per_sec: u32,
    /// Upgrade requests one address may make in a burst above the sustained rate; 0: twice
    /// `handshakes_per_ip_per_sec`.
    pub handshakes_per_ip_burst: u32,
    /// Addresses whose handshake rate is remembered at once (bounded memory under a flood
    /// from many addresses): past it, the addresses closest to a full bucket are forgotten
    /// first, so an address being limited is the last one forgotten.
    pub ips_tracked_max: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Off,
            secret: None,
            secret_file: None,
            expiry_grace: Duration::ZERO,
            issuer: None,
            audience: None,
            origins_allowed: Vec::new(),
            connections_per_ip_max: 0,
            handshakes_per_ip_per_sec: 0,
            handshakes_per_ip_burst: 0,
            ips_tracked_max: 65_536,
        }
    }
}

impl AuthConfig {
    /// Check the settings together; the error names the setting. Does no I/O (a secret file
    /// is read by [`AuthConfig::resolve_secret`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.secret.is_some() && self.secret_file.is_some() {
            return Err("auth: give either secret (or RINGCAST_AUTH_SECRET) or secret_file, \
                        not both"
                .into());
        }
        if self.mode != AuthMode::Off && self.secret.is_none() && self.secret_file.is_none() {
            return Err(format!(
                "auth.mode is {} but no secret: set {SECRET_ENV} or auth.secret_file",
                self.mode
            ));
        }
        if let Some(s) = &self.secret {
            check_secret_len(s)?;
        }
        if self.issuer.as_deref() == Some("") || self.audience.as_deref() == Some("") {
            return Err("auth.issuer and auth.audience must not be empty when set".into());
        }
        super::origin::OriginMatcher::new(&self.origins_allowed)?;
        if self.handshakes_per_ip_per_sec > 0 && self.ips_tracked_max < super::ip::STRIPES {
            return Err(format!(
                "auth.ips_tracked_max must be at least {} when handshakes_per_ip_per_sec is set",
                super::ip::STRIPES
            ));
        }
        Ok(())
    }

    /// The secret: `secret` itself, or the content of `secret_file` (one trailing newline
    /// removed). `Ok(None)` when neither is set.
    pub fn resolve_secret(&self) -> Result<Option<Secret>, String> {
        let secret = match (&self.secret, &self.secret_file) {
            (Some(s), _) => s.clone(),
            (None, Some(path)) => {
                let mut bytes = std::fs::read(path).map_err(|e| {
                    format!("auth.secret_file: cannot read {}: {e}", path.display())
                })?;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                Secret::new(bytes)
            }
            (None, None) => return Ok(None),
        };
        check_secret_len(&secret)?;
        Ok(Some(secret))
    }

    /// The burst actually used: `handshakes_per_ip_burst`, or twice the rate when 0.
    pub fn handshake_burst(&self) -> u32 {
        if self.handshakes_per_ip_burst > 0 {
            self.handshakes_per_ip_burst
        } else {
            self.handshakes_per_ip_per_sec.saturating_mul(2).max(1)
        }
    }
}

fn humantime_text<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn check_secret_len(s: &Secret) -> Result<(), String> {
    if s.len() < SECRET_BYTES_MIN {
        return Err(format!(
            "auth secret is {} bytes; HS256 needs at least {SECRET_BYTES_MIN} (RFC 7518 3.2)",
            s.len()
        ));
    }
    Ok(())
}

fn humantime_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_valid() {
        let c = AuthConfig::default();
        assert_eq!(c.mode, AuthMode::Off);
        c.validate().unwrap();
    }

    #[test]
    fn deserializes_and_rejects_unknown_keys() {
        let c: AuthConfig = serde_json::from_str(
            r#"{"mode":"required","secret":"0123456789abcdef0123456789abcdef",
                "expiry_grace":"30s","origins_allowed":["https://*.example.com"],
                "connections_per_ip_max":10,"handshakes_per_ip_per_sec":5}"#,
        )
        .unwrap();
        assert_eq!(c.mode, AuthMode::Required);
        assert_eq!(c.expiry_grace, Duration::from_secs(30));
        assert_eq!(c.handshake_burst(), 10);
        c.validate().unwrap();
        let err = serde_json::from_str::<AuthConfig>(r#"{"modes":"off"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn secret_never_shows_in_debug() {
        let c = AuthConfig {
            secret: Some(Secret::new("super-secret-value-that-is-long-enough")),
            ..Default::default()
        };
        let text = format!("{c:?}");
        assert!(!text.contains("super-secret"), "{text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn validation_names_the_problem() {
        let need = AuthConfig { mode: AuthMode::Required, ..Default::default() };
        assert!(need.validate().unwrap_err().contains("RINGCAST_AUTH_SECRET"));
        let short = AuthConfig { secret: Some(Secret::new("short")), ..Default::default() };
        assert!(short.validate().unwrap_err().contains("at least 32"));
        let both = AuthConfig {
            secret: Some(Secret::new([7u8; 32])),
            secret_file: Some("/x".into()),
            ..Default::default()
        };
        assert!(both.validate().unwrap_err().contains("not both"));
        let bad_origin =
            AuthConfig { origins_allowed: vec!["https://[".into()], ..Default::default() };
        assert!(bad_origin.validate().is_err());
    }

    #[test]
    fn secret_file_is_read_without_its_newline() {
        let path = std::env::temp_dir().join(format!("ringcast-secret-{}", std::process::id()));
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let c = AuthConfig { secret_file: Some(path.clone()), ..Default::default() };
        let s = c.resolve_secret().unwrap().unwrap();
        assert_eq!(s.expose(), b"0123456789abcdef0123456789abcdef");
        std::fs::remove_file(&path).unwrap();
        assert!(c.resolve_secret().unwrap_err().contains("cannot read"));
    }
}
