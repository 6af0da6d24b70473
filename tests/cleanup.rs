//! A closed connection leaves no trace. The real daemon (2 shards) gets 10,000 connections that
//! each join 10 random groups out of 1,000 (client commands) and are bound to uids and given a
//! session (HTTP API); then half of them close cleanly and half are reset. Every count returns to
//! zero and resident memory returns near its level before the wave; a second identical wave
//! does not grow it further (no leak).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{frame, Raw, UPGRADE};
use serde_json::Value;

const CONNECTIONS: usize = 10_000;
const GROUPS: usize = 1_000;
const GROUPS_PER_CONNECTION: usize = 10;

struct Daemon {
    child: Child,
    ws: SocketAddr,
    api: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon() -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--no-pin",
            "--demo",
            "--commands-per-sec",
            "0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ringcast");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send((line.contains("HTTP API"), addr.trim().to_owned()));
            }
        }
    });
    let (mut ws, mut api) = (None, None);
    while ws.is_none() || api.is_none() {
        let (is_api, addr) = rx.recv_timeout(Duration::from_secs(60)).expect("listening lines");
        let addr: SocketAddr = addr.parse().unwrap();
        if is_api {
            api = Some(addr);
        } else {
            ws = Some(addr);
        }
    }
    Daemon { child, ws: ws.unwrap(), api: api.unwrap() }
}

/// One HTTP/1.1 request on a keep-alive connection; (status, JSON body).
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        Http { stream, buf: Vec::new() }
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(req.as_bytes()).unwrap();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status: u16 = head[9..12].parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body: Vec<u8> = self.buf.drain(..end + 4 + len).skip(end + 4).collect();
                    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    return (status, v);
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "API closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn stats(http: &mut Http) -> (u64, u64, u64, u64) {
    let (status, v) = http.call("GET", "/api/stats", None);
    assert_eq!(status, 200, "{v}");
    let memberships: u64 =
        v["shards"].as_array().unwrap().iter().map(|s| s["memberships"].as_u64().unwrap()).sum();
    (
        v["connections"].as_u64().unwrap(),
        v["groups"].as_u64().unwrap(),
        v["uids"].as_u64().unwrap(),
        memberships,
    )
}

/// Tiny deterministic PRNG (xorshift), so the test needs no extra crate and is reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Open the wave: connect, read the welcome, join groups; bind uids and sessions by the API.
fn wave(d: &Daemon, http: &mut Http, rng: &mut Rng) -> Vec<Raw> {
    let mut clients = Vec::with_capacity(CONNECTIONS);
    let mut ids = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut raw = Raw::connect(d.ws);
        let head = raw.request(UPGRADE.as_bytes());
        assert!(head.starts_with("HTTP/1.1 101"), "connection {i}: {head}");
        let (op, welcome) = raw.read_frame().expect("welcome");
        assert_eq!(op, 0x1);
        let w: Value = serde_json::from_slice(&welcome).unwrap();
        ids.push(w["client_id"].as_str().unwrap().to_owned());
        let mut cmds = Vec::new();
        for _ in 0..GROUPS_PER_CONNECTION {
            let g = rng.below(GROUPS);
            let cmd = format!(r#"{{"cmd":"add_group","group_id":"g{g}"}}"#);
            cmds.extend(frame(0x81, cmd.as_bytes(), true));
        }
        raw.stream.write_all(&cmds).unwrap();
        clients.push(raw);
    }
    for (i, id) in ids.iter().enumerate() {
        let uid = serde_json::json!({ "uid": format!("user{}", i / 2) });
        let (status, v) = http.call("PUT", &format!("/api/clients/{id}/uid"), Some(&uid));
        assert_eq!(status, 200, "{v}");
        if i % 4 == 0 {
            let session = serde_json::json!({ "name": format!("n{i}"), "level": i });
            let (status, v) =
                http.call("PUT", &format!("/api/clients/{id}/session"), Some(&session));
            assert_eq!(status, 200, "{v}");
        }
    }
    clients
}

fn close_all(clients: Vec<Raw>) {
    for (i, mut c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            // Clean: close handshake, then FIN.
            c.send_frame(0x88, &1000u16.to_be_bytes(), true);
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        } else {
            // Reset: SO_LINGER 0 makes close() send RST.
            socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO)).unwrap();
        }
    }
}

fn wait_for_zero(http: &mut Http) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = stats(http);
        if s == (0, 0, 0, 0) {
            let (status, v) = http.call("GET", "/api/groups", None);
            assert_eq!(status, 200);
            assert_eq!(v["groups"].as_array().map(Vec::len), Some(0), "{v}");
            return;
        }
        assert!(Instant::now() < deadline, "counts never returned to zero: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ten_thousand_connections_leave_no_trace() {
    let d = daemon();
    let mut http = Http::connect(d.api);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(d.child.id());

    let clients = wave(&d, &mut http, &mut rng);
    let deadline = Instant::now() + Duration::from_secs(60);
    let full = loop {
        let s = stats(&mut http);
        if s.0 == CONNECTIONS as u64 && s.3 >= (CONNECTIONS * GROUPS_PER_CONNECTION * 9 / 10) as u64
        {
            break s;
        }
        assert!(Instant::now() < deadline, "wave never settled: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Random joins repeat a group now and then, so memberships are just under 100,000.
    assert!(full.1 > 990 && full.1 <= GROUPS as u64, "{full:?}");
    assert_eq!(full.2, (CONNECTIONS / 2) as u64, "uids");
    let peak = rss_kib(d.child.id());
    close_all(clients);
    wait_for_zero(&mut http);
    // Shards hand freed memory back to the OS once a burst of closes is over.
    let grown = peak.saturating_sub(before);
    let settle = Instant::now() + Duration::from_secs(5);
    while rss_kib(d.child.id()) > before + grown / 3 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_first = rss_kib(d.child.id());

    let clients = wave(&d, &mut http, &mut rng);
    close_all(clients);
    wait_for_zero(&mut http);
    let settle = Instant::now() + Duration::from_secs(5);
    while rss_kib(d.child.id()) > before + grown / 3 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_second = rss_kib(d.child.id());
    eprintln!(
        "RSS KiB: before {before}, with {CONNECTIONS} connections {peak}, after closing \
         {after_first}, after a second wave {after_second}"
    );
    assert!(grown > 0);
    // "Near its starting level": at most a third of what the wave took is still resident
    // (allocator fragmentation: 16-35 % in runs on this machine), after the first wave and
    // after a second one, so a leak of a sixth of the per-connection cost shows by the second.
    assert!(
        after_first <= before + grown / 3,
        "after closing: {after_first} KiB vs {before} before, {peak} at peak"
    );
    assert!(
        after_second <= before + grown / 3,
        "after a second wave: {after_second} KiB vs {before} before, {peak} at peak"
    );
}
