//! `TlsConfig`: the `[tls]` section. Plain data plus one `validate()`; loading the files is
//! `super::CertStore`'s job.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the node serves `wss://`.
///
/// TLS is on when both `cert_file` and `key_file` are set. Where it is served follows what an
/// nginx or Centrifugo operator expects:
/// * without `listen`, the main WebSocket listener speaks TLS only (`wss://` on `--listen`);
/// * with `listen`, the main listener stays plain `ws://` and a second listener on this address
///   serves `wss://` (both reach the same node, groups and broadcasts).
///
/// `SIGHUP` (or `Handle::reload_tls`) reloads both files: new handshakes use the new
/// certificate, established connections keep theirs. A reload that fails (unreadable file,
/// key not matching the certificate) is logged and the old certificate stays in service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first (nginx's `ssl_certificate`).
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: Option<PathBuf>,
    /// A separate address for `wss://`; `None` puts TLS on the main listener.
    pub listen: Option<SocketAddr>,
}

impl TlsConfig {
    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// Checks that the settings make sense together (not that the files load: that happens at
    /// start-up, with an error naming the file).
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err("tls.cert_file is set but tls.key_file is not".into()),
            (None, Some(_)) => return Err("tls.key_file is set but tls.cert_file is not".into()),
            _ => {}
        }
        if self.listen.is_some() && !self.enabled() {
            return Err("tls.listen needs tls.cert_file and tls.key_file".into());
        }
        for (key, path) in [("tls.cert_file", &self.cert_file), ("tls.key_file", &self.key_file)] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(format!("{key} is empty"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_missing_half() {
        assert_eq!(TlsConfig::default().validate(), Ok(()));
        assert!(!TlsConfig::default().enabled());
        let only_cert = TlsConfig { cert_file: Some("c.pem".into()), ..Default::default() };
        assert!(only_cert.validate().unwrap_err().contains("tls.key_file"));
        let only_key = TlsConfig { key_file: Some("k.pem".into()), ..Default::default() };
        assert!(only_key.validate().unwrap_err().contains("tls.cert_file"));
        let listen_only =
            TlsConfig { listen: Some("127.0.0.1:1".parse().unwrap()), ..Default::default() };
        assert!(listen_only.validate().unwrap_err().contains("tls.listen"));
        let both = TlsConfig {
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            ..Default::default()
        };
        assert!(both.enabled());
        assert_eq!(both.validate(), Ok(()));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<TlsConfig>(r#"{"cert_file":"a","certfile":"b"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("certfile"), "{err}");
        let ok: TlsConfig =
            serde_json::from_str(r#"{"cert_file":"a","key_file":"b","listen":"127.0.0.1:2443"}"#)
                .unwrap();
        assert!(ok.enabled());
    }
}
