//! Shared helpers for the integration tests: an in-process node on 127.0.0.1:0, real
//! WebSocket clients (tokio-tungstenite), and a raw TCP client for malformed input.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ringcast::{Config, Handle, Server};
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A test configuration: loopback, port 0, two unpinned shards.
pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin: false,
        // Clients left unpolled at the end of a test never answer our close.
        shutdown_timeout: Duration::from_secs(1),
        ..Config::default()
    }
}

pub fn start(config: Config) -> Handle {
    Server::builder().config(config).start().expect("start ringcast")
}

/// Wait until `f` holds, or panic after `secs`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub async fn connect(addr: SocketAddr) -> Ws {
    let (ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.expect("connect");
    assert_eq!(resp.status(), 101);
    ws
}

/// Next Text/Binary message (pings are answered by tungstenite), or panic after `secs`.
pub async fn next_data(ws: &mut Ws, secs: u64) -> WsMessage {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(secs), ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("stream ended")
            .expect("websocket error");
        if msg.is_text() || msg.is_binary() || msg.is_close() {
            return msg;
        }
    }
}

/// A raw TCP client that speaks WebSocket by hand, to send what a real client never would.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub const UPGRADE: &str =
    "GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { stream, buf: Vec::new() }
    }

    /// Send `request` and return the HTTP response head (status line and headers).
    pub fn request(&mut self, request: &[u8]) -> String {
        self.stream.write_all(request).unwrap();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(
                n > 0,
                "connection closed before the response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Wrap an already connected socket (e.g. one with a tiny receive buffer).
    pub fn from_stream(stream: TcpStream) -> Raw {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { stream, buf: Vec::new() }
    }

    pub fn upgrade(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        let head = raw.request(UPGRADE.as_bytes());
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw
    }

    /// Write one frame; `mask` as a client must, or not, to test the server.
    pub fn send_frame(&mut self, first_byte: u8, payload: &[u8], mask: bool) {
        self.stream.write_all(&frame(first_byte, payload, mask)).unwrap();
    }

    fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }

    /// Next frame from the server as (opcode, payload); `None` at EOF.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill(2) {
            return None;
        }
        assert_eq!(self.buf[1] & 0x80, 0, "server frames must not be masked");
        let (len, hdr) = match self.buf[1] & 0x7f {
            126 => {
                self.fill(4);
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.fill(10);
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if !self.fill(hdr + len) {
            return None;
        }
        let opcode = self.buf[0] & 0x0f;
        let payload = self.buf[hdr..hdr + len].to_vec();
        self.buf.drain(..hdr + len);
        Some((opcode, payload))
    }

    /// Read frames until a close frame; its code. Panics on EOF first.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.read_frame() {
                Some((0x8, p)) => return u16::from_be_bytes([p[0], p[1]]),
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Whether the server closes the TCP connection within the read timeout.
    pub fn sees_eof(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// One client frame's bytes (masked or not, to test the server).
pub fn frame(first_byte: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut f = vec![first_byte];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    if mask {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Build one of the crate's examples (debug) and return the path of its binary.
pub fn example_binary(name: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build --example");
    assert!(status.success());
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
    format!("{target}/debug/examples/{name}")
}
