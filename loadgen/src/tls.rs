//! `wss://` mode (`--url wss://... --tls-ca CA.pem`): a small, separate client for measuring
//! a server's TLS broadcast cost, kept apart from the plain-text workers on purpose.
//!
//! One thread: connections are opened one after another with blocking sockets (TCP, TLS
//! handshake with rustls, WebSocket upgrade), then switched to non-blocking and driven by one
//! mio loop. One extra connection publishes binary messages at `--rate` on an absolute
//! schedule (open loop); each message carries its send time (ns on this process's clock) and a
//! sequence number, the server relays it to everyone, and every subscriber records
//! `receive - send` in an HDR histogram. Messages sent during the warm-up are delivered but
//! not measured. The report's field names match the plain mode's JSON for the fields it has.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};

/// What one `wss://` run does.
#[derive(Debug, Clone)]
pub struct TlsRun {
    /// `wss://host:port/path`.
    pub url: String,
    /// PEM file with the CA (or self-signed certificate) to trust.
    pub ca_file: PathBuf,
    /// Subscriber connections (the publisher comes on top).
    pub connections: usize,
    /// Messages per second.
    pub rate: f64,
    /// Measured seconds of publishing.
    pub duration_s: f64,
    /// Unmeasured seconds of publishing first.
    pub warmup_s: f64,
    /// Bytes per message (at least 16: send time and sequence number).
    pub payload: usize,
    /// Seconds to wait after the last send for deliveries still in flight.
    pub drain_s: f64,
}

/// What a `wss://` run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsReport {
    pub mode: &'static str,
    pub connections: usize,
    pub rate: f64,
    pub payload: usize,
    /// Messages published during the measured window.
    pub sent: u64,
    /// `sent × connections`.
    pub expected: u64,
    /// Measured deliveries that arrived.
    pub received: u64,
    pub lost: u64,
    pub deliveries_per_sec: f64,
    pub latency_us: Latency,
    /// Client CPU seconds (user + system) of the measured window and drain.
    pub client_cpu_s: f64,
}

/// Fan-out latency percentiles, microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

struct Conn {
    sock: mio::net::TcpStream,
    tls: ClientConnection,
    /// Decrypted bytes not yet parsed as frames.
    plain: Vec<u8>,
}

const PUBLISHER: usize = usize::MAX;

/// Run a `wss://` measurement.
pub fn run(cfg: &TlsRun) -> Result<TlsReport> {
    if cfg.payload < 16 {
        bail!("--payload must be at least 16 bytes in wss:// mode");
    }
    if cfg.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let rest = cfg.url.strip_prefix("wss://").ok_or_else(|| anyhow!("not a wss:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("{authority} resolves to nothing"))?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).to_owned();
    let config = client_config(cfg)?;
    let name = ServerName::try_from(host.clone()).context("server name")?;

    let mut poll = Poll::new()?;
    let mut conns: Vec<Conn> = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let mut c = open(addr, &host, path, &config, name.clone())
            .with_context(|| format!("connection {i}"))?;
        poll.registry().register(&mut c.sock, Token(i), Interest::READABLE)?;
        conns.push(c);
    }
    let mut publisher = open(addr, &host, path, &config, name)?;
    poll.registry().register(&mut publisher.sock, Token(PUBLISHER), Interest::READABLE)?;

    let clock = Instant::now();
    let mut hist = Histogram::<u64>::new(3)?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut frame = Vec::with_capacity(cfg.payload + 14);
    let interval_ns = 1e9 / cfg.rate;
    let start_ns = now_ns(clock) + 50_000_000;
    let measure_from_ns = start_ns + (cfg.warmup_s * 1e9) as u64;
    let stop_ns = measure_from_ns + (cfg.duration_s * 1e9) as u64;
    let (mut sent_total, mut sent_measured, mut received) = (0u64, 0u64, 0u64);
    let mut cpu_start = None;
    let mut drain_until_ns = None;
    loop {
        let now = now_ns(clock);
        // Publish everything due (open loop: late sends go out at once, none skipped).
        while drain_until_ns.is_none() {
            let due = start_ns + (sent_total as f64 * interval_ns) as u64;
            if due >= stop_ns {
                drain_until_ns = Some(now + (cfg.drain_s * 1e9) as u64);
                break;
            }
            if due > now {
                break;
            }
            let send_ns = now_ns(clock);
            if send_ns >= measure_from_ns {
                if cpu_start.is_none() {
                    cpu_start = Some(cpu_seconds());
                }
                sent_measured += 1;
            }
            masked_binary(&mut frame, send_ns, sent_total, cfg.payload);
            publisher.tls.writer().write_all(&frame)?;
            flush(&mut publisher)?;
            sent_total += 1;
        }
        let expected = sent_measured * cfg.connections as u64;
        if let Some(until) = drain_until_ns {
            if received >= expected || now >= until {
                break;
            }
        }
        let next_due = start_ns + (sent_total as f64 * interval_ns) as u64;
        let timeout_ns = match drain_until_ns {
            Some(until) => until.saturating_sub(now).min(10_000_000),
            None => next_due.saturating_sub(now),
        };
        poll.poll(&mut events, Some(Duration::from_nanos(timeout_ns)))?;
        for ev in events.iter() {
            let c = match ev.token() {
                Token(PUBLISHER) => &mut publisher,
                Token(i) => &mut conns[i],
            };
            let measuring = ev.token() != Token(PUBLISHER);
            read_all(c, &mut buf, |send_ns| {
                if measuring && send_ns >= measure_from_ns {
                    received += 1;
                    let _ = hist.record((now_ns(clock).saturating_sub(send_ns)) / 1000);
                }
            })?;
        }
    }
    let cpu = cpu_start.map_or(0.0, |s| cpu_seconds() - s);
    let expected = sent_measured * cfg.connections as u64;
    let q = |p: f64| hist.value_at_quantile(p) as f64;
    Ok(TlsReport {
        mode: "wss",
        connections: cfg.connections,
        rate: cfg.rate,
        payload: cfg.payload,
        sent: sent_measured,
        expected,
        received,
        lost: expected.saturating_sub(received),
        deliveries_per_sec: received as f64 / cfg.duration_s.max(1e-9),
        latency_us: Latency { p50: q(0.5), p99: q(0.99), p999: q(0.999), max: hist.max() as f64 },
        client_cpu_s: cpu,
    })
}

fn client_config(cfg: &TlsRun) -> Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&cfg.ca_file)
        .with_context(|| format!("reading {}", cfg.ca_file.display()))?
    {
        roots.add(cert.with_context(|| format!("parsing {}", cfg.ca_file.display()))?)?;
    }
    Ok(Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// TCP connect, TLS handshake and WebSocket upgrade, blocking; then non-blocking for mio.
fn open(
    addr: SocketAddr,
    host: &str,
    path: &str,
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<Conn> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = ClientConnection::new(config.clone(), name)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut plain = Vec::new();
    {
        let mut stream = rustls::Stream::new(&mut tls, &mut sock);
        stream.write_all(request.as_bytes())?;
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                bail!("closed during the upgrade");
            }
            plain.extend_from_slice(&chunk[..n]);
            if let Some(i) = plain.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if plain.len() > 16 * 1024 {
                bail!("upgrade response head too large");
            }
        };
        if !plain.starts_with(b"HTTP/1.1 101") {
            bail!("upgrade refused: {}", String::from_utf8_lossy(&plain[..end]));
        }
        plain.drain(..end);
    }
    sock.set_read_timeout(None)?;
    sock.set_nonblocking(true)?;
    Ok(Conn { sock: mio::net::TcpStream::from_std(sock), tls, plain })
}

/// Read until the socket would block; decrypt; call `on_message` with each binary message's
/// send time.
fn read_all(c: &mut Conn, buf: &mut [u8], mut on_message: impl FnMut(u64)) -> Result<()> {
    loop {
        let n = match c.sock.read(buf) {
            Ok(0) => bail!("server closed a connection"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            c.tls.read_tls(&mut rd)?;
            let state = c.tls.process_new_packets()?;
            let k = state.plaintext_bytes_to_read();
            if k > 0 {
                let start = c.plain.len();
                c.plain.resize(start + k, 0);
                c.tls.reader().read_exact(&mut c.plain[start..])?;
            }
        }
        let used = parse_frames(&c.plain, &mut on_message);
        c.plain.drain(..used);
    }
    if c.tls.wants_write() {
        flush(c)?;
    }
    Ok(())
}

/// Server frames (unmasked); returns the bytes consumed.
fn parse_frames(mut p: &[u8], on_message: &mut impl FnMut(u64)) -> usize {
    let total = p.len();
    while p.len() >= 2 {
        let opcode = p[0] & 0x0f;
        let (len, hdr) = match p[1] & 0x7f {
            126 if p.len() >= 4 => (u16::from_be_bytes([p[2], p[3]]) as usize, 4),
            127 if p.len() >= 10 => (u64::from_be_bytes(p[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if p.len() < hdr + len {
            break;
        }
        if opcode == 2 && len >= 8 {
            on_message(u64::from_le_bytes(p[hdr..hdr + 8].try_into().unwrap()));
        }
        p = &p[hdr + len..];
    }
    total - p.len()
}

/// A masked binary client frame: send time, sequence number, zero padding.
fn masked_binary(out: &mut Vec<u8>, send_ns: u64, seq: u64, payload: usize) {
    out.clear();
    out.push(0x82);
    match payload {
        0..=125 => out.push(0x80 | payload as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload as u64).to_be_bytes());
        }
    }
    let mask = (seq as u32 ^ 0x5bd1_e995).to_be_bytes();
    out.extend_from_slice(&mask);
    let body = out.len();
    out.extend_from_slice(&send_ns.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.resize(body + payload, 0);
    for (i, b) in out[body..].iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Write every pending TLS record (briefly spinning if the socket buffer is full).
fn flush(c: &mut Conn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.tls.wants_write() {
        match c.tls.write_tls(&mut c.sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("publisher socket blocked for 5 s");
                }
                std::thread::yield_now();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn now_ns(clock: Instant) -> u64 {
    clock.elapsed().as_nanos() as u64
}

fn cpu_seconds() -> f64 {
    let t = crate::sys::CpuTimes::now();
    t.user_s + t.sys_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_parser() {
        let mut f = Vec::new();
        masked_binary(&mut f, 42, 7, 64);
        // Unmask into what a server would relay (same payload, no mask).
        let mask: [u8; 4] = f[2..6].try_into().unwrap();
        let payload: Vec<u8> = f[6..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        let mut relayed = vec![0x82, 64];
        relayed.extend_from_slice(&payload);
        relayed.extend_from_slice(&[0x89, 0]); // a ping, ignored
        relayed.extend_from_slice(&[0x82, 126, 0]); // incomplete
        let mut seen = Vec::new();
        let used = parse_frames(&relayed, &mut |t| seen.push(t));
        assert_eq!(seen, vec![42]);
        assert_eq!(used, 66 + 2);
    }
}
