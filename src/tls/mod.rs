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

#[cfg(test)]
mod tests {
    //! In-memory pairs: a rustls client and our session, bytes moved by hand (no sockets).
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    struct Pki {
        dir: PathBuf,
        ca: CertificateDer<'static>,
    }

    /// A CA and a leaf for "localhost" signed by it, written as PEM into a fresh directory.
    fn pki(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("ringcast-tls-unit-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem() + &ca.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        Pki { dir, ca: ca.der().clone() }
    }

    fn acceptor(p: &Pki) -> TlsAcceptor {
        TlsAcceptor::new(&TlsConfig {
            cert_file: Some(p.dir.join("cert.pem")),
            key_file: Some(p.dir.join("key.pem")),
            listen: None,
        })
        .unwrap()
    }

    fn client(p: &Pki) -> ClientConnection {
        let mut roots = RootCertStore::empty();
        roots.add(p.ca.clone()).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap()
    }

    /// Move bytes both ways until neither side has anything to send; returns server plaintext.
    fn pump(c: &mut ClientConnection, s: &mut TlsSession) -> Vec<u8> {
        let mut plain = Vec::new();
        for _ in 0..16 {
            let mut to_server = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut to_server).unwrap();
            }
            if !to_server.is_empty() {
                s.handle_read(&to_server, &mut plain).unwrap();
            }
            let mut to_client = Vec::new();
            s.write_pending(&mut to_client);
            if !to_client.is_empty() {
                let mut rd = &to_client[..];
                while !rd.is_empty() {
                    c.read_tls(&mut rd).unwrap();
                    c.process_new_packets().unwrap();
                }
            }
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
        }
        plain
    }

    /// Feed ciphertext to the client, returning the plaintext it yields.
    fn client_read(c: &mut ClientConnection, cipher: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rd = cipher;
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
            match c.reader().read_to_end(&mut out) {
                Ok(_) => {}
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        out
    }

    #[test]
    fn handshake_then_both_directions_then_close_notify() {
        let p = pki("pair");
        let acc = acceptor(&p);
        let mut s = acc.session().unwrap();
        let mut c = client(&p);
        c.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let got = pump(&mut c, &mut s);
        assert!(!s.is_handshaking() && !c.is_handshaking());
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
        s.handshake_done();
        assert!(s.describe().contains("TLS"), "{}", s.describe());

        // A batch of small frames, shared buffers, encrypted in as few records as fit.
        let frames: Vec<Vec<u8>> = (0..200u8).map(|i| vec![i; 64]).collect();
        let mut parts: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let mut cipher = Vec::new();
        s.encrypt(&mut parts, &mut cipher).unwrap();
        let plain_len = 200 * 64;
        // One record per 16 KiB, 22 bytes overhead each (TLS 1.3): not 200 records.
        assert!(cipher.len() < plain_len + 2 * 22 + 1, "{} bytes for {plain_len}", cipher.len());
        assert_eq!(client_read(&mut c, &cipher), frames.concat());

        // A message larger than one record.
        let big = vec![7u8; 40_000];
        let mut out = Vec::new();
        s.encrypt(&mut [IoSlice::new(&big)], &mut out).unwrap();
        assert_eq!(client_read(&mut c, &out), big);

        // Client-initiated key update: the server owes its own, and traffic continues.
        c.refresh_traffic_keys().unwrap();
        c.writer().write_all(b"after update").unwrap();
        let got = pump(&mut c, &mut s);
        assert_eq!(got, b"after update");
        let mut out = Vec::new();
        s.encrypt(&mut [IoSlice::new(b"still here")], &mut out).unwrap();
        assert_eq!(client_read(&mut c, &out), b"still here");

        // Peer's close_notify is a clean EOF.
        c.send_close_notify();
        let mut to_server = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        let mut plain = Vec::new();
        assert!(s.handle_read(&to_server, &mut plain).unwrap().peer_closed);
        s.send_close_notify();
        assert!(s.close_notify_sent() && s.wants_write());
        let _ = std::fs::remove_dir_all(&p.dir);
    }

    #[test]
    fn garbage_is_a_tls_error_with_an_alert() {
        let p = pki("garbage");
        let mut s = acceptor(&p).session().unwrap();
        let mut plain = Vec::new();
        assert!(s.handle_read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut plain).is_err());
        assert!(plain.is_empty());
        let mut alert = Vec::new();
        s.write_pending(&mut alert);
        assert_eq!(alert.first(), Some(&0x15), "an alert record: {alert:?}");
        let _ = std::fs::remove_dir_all(&p.dir);
    }

    #[test]
    fn every_split_of_the_client_flight_gives_the_same_plaintext() {
        let p = pki("split");
        let acc = acceptor(&p);
        let mut s = acc.session().unwrap();
        let mut c = client(&p);
        pump(&mut c, &mut s);
        let msg: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        c.writer().write_all(&msg).unwrap();
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        for step in [1, 5, 17, 100, 1000] {
            let mut s2 = acc.session().unwrap();
            let mut c2 = client(&p);
            pump(&mut c2, &mut s2);
            c2.writer().write_all(&msg).unwrap();
            let mut wire2 = Vec::new();
            while c2.wants_write() {
                c2.write_tls(&mut wire2).unwrap();
            }
            let mut plain = Vec::new();
            for chunk in wire2.chunks(step) {
                s2.handle_read(chunk, &mut plain).unwrap();
            }
            assert_eq!(plain, msg, "step {step}");
        }
        let _ = std::fs::remove_dir_all(&p.dir);
    }

    #[test]
    fn reload_swaps_the_certificate_and_keeps_it_on_error() {
        let p = pki("reload");
        let acc = acceptor(&p);
        let before = acc.store().leaf();
        // A new pair in place: the reload serves it.
        let q = pki("reload-new");
        std::fs::copy(q.dir.join("cert.pem"), p.dir.join("cert.pem")).unwrap();
        std::fs::copy(q.dir.join("key.pem"), p.dir.join("key.pem")).unwrap();
        acc.store().reload().unwrap();
        assert_ne!(acc.store().leaf(), before);
        assert_eq!(acc.store().reloads(), 1);
        // A key that does not match: refused, the new certificate stays.
        let r = pki("reload-other");
        std::fs::copy(r.dir.join("key.pem"), p.dir.join("key.pem")).unwrap();
        let err = acc.store().reload().unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        let current = acc.store().leaf();
        assert_ne!(current, before);
        // An unreadable file names itself.
        std::fs::write(p.dir.join("cert.pem"), "not pem").unwrap();
        let err = acc.store().reload().unwrap_err().to_string();
        assert!(err.contains("cert.pem"), "{err}");
        assert_eq!(acc.store().leaf(), current);
        for d in [&p.dir, &q.dir, &r.dir] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
