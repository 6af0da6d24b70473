//! The upgrade phase's I/O, plain or TLS, over the shard's io_uring reads and writes.
//!
//! For a `wss://` connection the TLS handshake runs first, then the HTTP upgrade request and
//! our answer go through the session; afterwards the connection's reads and writes are driven
//! by the event loop (`Core::on_read`, `Core::start_tls_write`). Ring-facing and thin: the
//! protocol work is `crate::tls::TlsSession`'s.

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::conn::TlsConn;

/// Ciphertext read size during the handshake (a ClientHello, a client Finished plus the
/// upgrade request all fit).
const HANDSHAKE_READ_BYTES: usize = 4096;

/// Why the upgrade phase's I/O stopped.
#[derive(Debug)]
pub(crate) enum IoStop {
    /// EOF, reset, or the peer's close_notify.
    Gone,
    /// A TLS error (bad record, handshake failure); an alert was sent when possible.
    Tls(rustls::Error),
}

/// One connection during its upgrade: the stream, and its TLS session for `wss://`.
pub(crate) struct UpgradeIo<'a> {
    pub(crate) stream: &'a TcpStream,
    pub(crate) tls: Option<Box<TlsConn>>,
    cipher: Vec<u8>,
}

impl<'a> UpgradeIo<'a> {
    pub(crate) fn new(stream: &'a TcpStream, tls: Option<Box<TlsConn>>) -> Self {
        UpgradeIo { stream, tls, cipher: Vec::new() }
    }

    /// Whether this is TLS and its handshake is complete.
    pub(crate) fn tls_established(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| !t.session.is_handshaking())
    }

    /// Read more of the upgrade request, appending plaintext to `plain` (whose capacity the
    /// caller bounds; TLS adds at most one read's worth of records on top).
    pub(crate) async fn read(&mut self, plain: &mut Vec<u8>, max: usize) -> Result<(), IoStop> {
        let Some(tls) = self.tls.as_mut() else {
            let len = plain.len();
            if len == plain.capacity() {
                plain.reserve(plain.capacity().min(max + 1 - len).max(1));
            }
            let (res, slice) = self.stream.read(std::mem::take(plain).slice(len..)).await;
            *plain = slice.into_inner();
            return match res {
                Ok(0) | Err(_) => Err(IoStop::Gone),
                Ok(_) => Ok(()),
            };
        };
        let before = plain.len();
        loop {
            let mut cipher = std::mem::take(&mut self.cipher);
            cipher.clear();
            cipher.reserve(HANDSHAKE_READ_BYTES);
            let (res, cipher) = self.stream.read(cipher).await;
            let n = match res {
                Ok(0) | Err(_) => return Err(IoStop::Gone),
                Ok(n) => n,
            };
            let outcome = tls.session.handle_read(&cipher[..n], plain);
            // Our handshake flight, session tickets, or the alert for a failure.
            let mut out = cipher;
            out.clear();
            tls.session.write_pending(&mut out);
            if !out.is_empty() {
                let (res, out) = self.stream.write_all(out).await;
                self.cipher = out;
                if res.is_err() {
                    return Err(IoStop::Gone);
                }
            } else {
                self.cipher = out;
            }
            match outcome {
                Err(e) => return Err(IoStop::Tls(e)),
                Ok(o) if o.peer_closed => return Err(IoStop::Gone),
                Ok(_) if plain.len() > before => return Ok(()),
                Ok(_) => {}
            }
        }
    }

    /// Write `bytes` (our 101 or an HTTP error), encrypted for `wss://`.
    pub(crate) async fn write(&mut self, bytes: Vec<u8>) -> Option<()> {
        let bytes = match self.tls.as_mut() {
            None => bytes,
            Some(tls) => {
                let mut out = std::mem::take(&mut self.cipher);
                out.clear();
                tls.session.encrypt(&mut [std::io::IoSlice::new(&bytes)], &mut out).ok()?;
                out
            }
        };
        let (res, _) = self.stream.write_all(bytes).await;
        res.ok()
    }

    /// After an HTTP error: close_notify for TLS, then FIN.
    pub(crate) async fn finish(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.session.send_close_notify();
            let mut out = Vec::new();
            tls.session.write_pending(&mut out);
            let _ = self.stream.write_all(out).await;
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}
