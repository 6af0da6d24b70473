//! TLS for `wss://`: rustls's buffered sans-I/O API (`ServerConnection` with `read_tls`,
//! `process_new_packets`, `write_tls`) wrapped for a shard that does its own I/O.
//!
//! Deliberately absent: sockets, io_uring, threads and clocks. The shard driver hands
//! [`TlsSession`] the ciphertext it read and gets plaintext back; it hands it plaintext frames
//! to send and gets ciphertext to write. The [`CertStore`] is the certificate resolver every
//! handshake asks, so a reload (`SIGHUP`) swaps the certificate for new handshakes while
//! established sessions keep theirs.
//!
//! Why the buffered API rather than `UnbufferedServerConnection`: the buffered one handles the
//! handshake, alerts, key updates, session tickets and close_notify in one tested state machine
//! that we only feed and drain, and `Writer::write_vectored` already encrypts a whole batch of
//! queued frames (many small broadcast frames) into as few records as fit 16 KiB, reading
//! straight from the shared frame buffers. What it costs over the unbuffered API is one
//! `Vec` per record inside rustls and one copy of the ciphertext into our write buffer; both
//! are measured in `results/tls.md` and small next to the AEAD itself.

mod config;

use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};

pub use config::TlsConfig;

/// A certificate or key that could not be put in service. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or holds no valid PEM of the expected kind.
    #[error("{path}: {what}: {reason}")]
    File { path: PathBuf, what: &'static str, reason: String },
    /// The private key does not belong to the certificate (or is of an unsupported type).
    #[error("{key} does not fit {cert}: {reason}")]
    Key { cert: PathBuf, key: PathBuf, reason: String },
    /// TLS is not configured on this node.
    #[error("TLS is not enabled (set tls.cert_file and tls.key_file)")]
    NotEnabled,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The certificate in service, swappable at run time. Every handshake asks it once.
#[derive(Debug)]
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    reloads: AtomicU64,
}

impl CertStore {
    /// Load both files now; an error names the file and what is wrong with it.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_certified_key(cert_file, key_file, &provider)?;
        Ok(CertStore {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            current: RwLock::new(key),
            reloads: AtomicU64::new(0),
        })
    }

    /// Read both files again and, if they load and match, serve them to new handshakes. On
    /// error the certificate in service is kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = read_certified_key(&self.cert_file, &self.key_file, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Successful reloads since start-up.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// The leaf certificate in service (DER).
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).cert[0].clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn read_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_err =
        |path: &Path, what, reason: String| TlsError::File { path: path.to_owned(), what, reason };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file_err(cert_file, "certificate chain", e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert_file, "certificate chain", e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(cert_file, "certificate chain", "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| file_err(key_file, "private key", e.to_string()))?;
    let key_err = |reason: String| TlsError::Key {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        reason,
    };
    let signing =
        provider.key_provider.load_private_key(key).map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(key_err(e.to_string())),
    }
    Ok(Arc::new(certified))
}

/// What every shard needs to start TLS sessions: one `ServerConfig` (shared, read-only) whose
/// certificate resolver is the reloadable [`CertStore`].
#[derive(Debug, Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    store: Arc<CertStore>,
}

impl TlsAcceptor {
    /// Load the certificate and key named in `cfg` (which must be enabled).
    pub fn new(cfg: &TlsConfig) -> Result<Self, TlsError> {
        let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) else {
            return Err(TlsError::NotEnabled);
        };
        let store = Arc::new(CertStore::load(cert, key)?);
        let config = ServerConfig::builder_with_provider(store.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        Ok(TlsAcceptor { config: Arc::new(config), store })
    }

    /// A session for one accepted connection.
    pub fn session(&self) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: ServerConnection::new(self.config.clone())?,
            close_notify_sent: false,
        })
    }

    /// The reloadable certificate.
    pub fn store(&self) -> &CertStore {
        &self.store
    }
}

/// Outcome of feeding ciphertext to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadOutcome {
    /// The peer sent close_notify: no more plaintext will come (a clean TLS EOF).
    pub peer_closed: bool,
}

/// One connection's TLS state: ciphertext in, plaintext out, and the reverse.
#[derive(Debug)]
pub struct TlsSession {
    conn: ServerConnection,
    close_notify_sent: bool,
}

impl TlsSession {
    /// Decrypt `input` (everything one read returned), appending the plaintext to `plain`.
    ///
    /// On `Err` the session is dead; an alert for the peer may be waiting in
    /// [`TlsSession::write_pending`].
    pub fn handle_read(
        &mut self,
        mut input: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<ReadOutcome, rustls::Error> {
        let mut outcome = ReadOutcome::default();
        // Never call read_tls with an empty slice: rustls takes that as EOF.
        while !input.is_empty() {
            match self.conn.read_tls(&mut input) {
                // close_notify was received: whatever follows is ignored.
                Ok(0) => break,
                Ok(_) => {}
                // Reading from a slice fails only when rustls's plaintext buffer is full, and
                // it is drained below after every record batch.
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
            let state = self.conn.process_new_packets()?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = plain.len();
                plain.resize(start + n, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plain[start..])
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            }
            if state.peer_has_closed() {
                outcome.peer_closed = true;
                break;
            }
        }
        Ok(outcome)
    }

    /// Still in the TLS handshake.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Called once the handshake is done: the outbox bounds what we encrypt, so rustls's own
    /// output buffer needs no second limit.
    pub fn handshake_done(&mut self) {
        self.conn.set_buffer_limit(None);
    }

    /// TLS records (handshake messages, alerts, key updates, close_notify) wait to be written.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Append every record waiting to be written to `out`.
    pub fn write_pending(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(out).unwrap_or(0) == 0 {
                break;
            }
        }
    }

    /// Encrypt `parts` in order (as few records as fit, up to 16 KiB each) and append every
    /// pending record to `out`.
    pub fn encrypt(&mut self, mut parts: &mut [IoSlice<'_>], out: &mut Vec<u8>) -> io::Result<()> {
        while !parts.is_empty() {
            let n = self.conn.writer().write_vectored(parts)?;
            if n == 0 {
                // Only with a buffer limit (during the handshake): flush and go on.
                if !self.conn.wants_write() {
                    return Err(io::Error::other("TLS session accepts no more data"));
                }
                self.write_pending(out);
                continue;
            }
            IoSlice::advance_slices(&mut parts, n);
        }
        self.write_pending(out);
        Ok(())
    }

    /// Queue close_notify (after which nothing more is encrypted).
    pub fn send_close_notify(&mut self) {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            self.conn.send_close_notify();
        }
    }

    /// Whether close_notify was queued.
    pub fn close_notify_sent(&self) -> bool {
        self.close_notify_sent
    }

    /// Negotiated protocol version and cipher suite, for logs.
    pub fn describe(&self) -> String {
        match (self.conn.protocol_version(), self.conn.negotiated_cipher_suite()) {
            (Some(v), Some(s)) => format!("{v:?} {:?}", s.suite()),
            _ => "handshaking".to_owned(),
        }
    }
}
