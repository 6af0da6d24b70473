//! A tiny blocking WebSocket relay for tests and demos: every Text/Binary message any client
//! sends is sent to every connected client (sender included), like `ringcast serve
//! --on-message relay`. std threads + tungstenite's blocking server; one reader and one
//! writer thread per client. Not fast: it exists to check the generator's accounting.
//!
//! [`start_with`] adds what the groups protocol needs for tests: a welcome frame on connect,
//! error replies to `add_group`, and an HTTP push endpoint speaking ringcast's three forms
//! (seed `?content=`, `POST /api/publish`, `POST /api/publish/batch`), optionally requiring a
//! bearer token or refusing every Nth request with 503. It still sends every message to every
//! client: the generator must itself ignore other groups' messages.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

/// A running relay.
pub struct Relay {
    /// Where it listens (127.0.0.1, OS-chosen port).
    pub addr: SocketAddr,
    /// Messages received from clients (WebSocket messages and HTTP pushes).
    pub messages_in: Arc<AtomicU64>,
    /// Where the HTTP push endpoint listens, if started with [`start_with_http`].
    pub http_addr: Option<SocketAddr>,
    /// The first [`RECORDED`] HTTP requests, byte for byte (head and body).
    pub http_requests: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    clients: Clients,
}

/// How many raw HTTP requests a relay keeps.
pub const RECORDED: usize = 16;

/// Extra behaviour for [`start_with`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Start the HTTP push endpoint.
    pub http: bool,
    /// Send `{"type":"welcome",...}` to each client on connect, like `ringcast serve
    /// --on-message commands`.
    pub welcome: bool,
    /// Answer every `add_group` command with `{"type":"error",...}` (and relay it no further).
    pub reject_joins: bool,
    /// Require `Authorization: Bearer TOKEN` on HTTP requests (401 otherwise).
    pub token: Option<String>,
    /// Answer every Nth HTTP request `503` without publishing it.
    pub fail_every: Option<u64>,
}

/// Everything a connection handler needs.
#[derive(Clone)]
struct Shared {
    clients: Clients,
    messages_in: Arc<AtomicU64>,
    opts: Arc<Options>,
    http_requests: Arc<Mutex<Vec<Vec<u8>>>>,
    http_count: Arc<AtomicU64>,
}

impl Relay {
    /// `ws://ADDR/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock the accept loops.
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.http_addr {
            let _ = TcpStream::connect(a);
        }
    }
}

type Clients = Arc<Mutex<Vec<Sender<Arc<Vec<u8>>>>>>;

/// Starts a relay on `127.0.0.1:0`.
pub fn start() -> Relay {
    start_on("127.0.0.1:0")
}

/// Starts a relay on `addr`.
pub fn start_on(addr: &str) -> Relay {
    start_full(addr, Options::default())
}

/// Starts a relay on `127.0.0.1:0` plus an HTTP push endpoint on another port: every request
/// in one of ringcast's forms (keep-alive, pipelining fine) is answered `200 OK` with
/// `{"queued":N}` (batch: `{"results":[...]}`) and its text is sent to every WebSocket client
/// as a text message.
pub fn start_with_http() -> Relay {
    start_with(Options { http: true, ..Options::default() })
}

/// Starts a relay on `127.0.0.1:0` with `opts`.
pub fn start_with(opts: Options) -> Relay {
    start_full("127.0.0.1:0", opts)
}

fn start_full(addr: &str, opts: Options) -> Relay {
    let listener = TcpListener::bind(addr).expect("bind relay");
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Shared {
        clients: Arc::default(),
        messages_in: Arc::new(AtomicU64::new(0)),
        opts: Arc::new(opts),
        http_requests: Arc::default(),
        http_count: Arc::default(),
    };
    accept_loop(listener, stop.clone(), shared.clone(), serve);
    let http_addr = shared.opts.http.then(|| {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind http");
        let a = l.local_addr().unwrap();
        accept_loop(l, stop.clone(), shared.clone(), serve_http);
        a
    });
    Relay {
        addr,
        messages_in: shared.messages_in,
        http_addr,
        http_requests: shared.http_requests,
        stop,
        clients: shared.clients,
    }
}

/// Accepts until `stop`, handing each connection to `handler` on its own thread.
fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    shared: Shared,
    handler: fn(TcpStream, Shared),
) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let shared = shared.clone();
            thread::spawn(move || handler(stream, shared));
        }
    });
}

fn text_frame(text: &[u8]) -> Arc<Vec<u8>> {
    let mut bytes = Vec::with_capacity(text.len() + 10);
    Frame::message(text.to_vec(), OpCode::Data(Data::Text), true).format(&mut bytes).unwrap();
    Arc::new(bytes)
}

/// Sends `text` to every client; returns how many got it.
fn publish(shared: &Shared, text: &[u8]) -> usize {
    shared.messages_in.fetch_add(1, Ordering::Relaxed);
    let bytes = text_frame(text);
    let mut clients = shared.clients.lock().unwrap();
    clients.retain(|c| c.send(bytes.clone()).is_ok());
    clients.len()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_http(stream: TcpStream, shared: Shared) {
    let Ok(mut out) = stream.try_clone() else { return };
    let mut rd = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut raw = line.as_bytes().to_vec();
        let target = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut content_length = 0usize;
        let mut auth = None;
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            raw.extend_from_slice(h.as_bytes());
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("authorization") {
                    auth = Some(v.trim().to_owned());
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if rd.read_exact(&mut body).is_err() {
            return;
        }
        raw.extend_from_slice(&body);
        {
            let mut rec = shared.http_requests.lock().unwrap();
            if rec.len() < RECORDED {
                rec.push(raw);
            }
        }
        let n = shared.http_count.fetch_add(1, Ordering::Relaxed) + 1;
        let (status, reply) = if shared
            .opts
            .token
            .as_ref()
            .is_some_and(|t| auth.as_deref() != Some(format!("Bearer {t}").as_str()))
        {
            ("401 Unauthorized", r#"{"error":"bad token"}"#.to_owned())
        } else if shared.opts.fail_every.is_some_and(|k| n % k == 0) {
            ("503 Service Unavailable", r#"{"error":"busy"}"#.to_owned())
        } else {
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            if path.ends_with("/api/publish/batch") || path.ends_with("/api/publish") {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let items: Vec<serde_json::Value> = match v.get("publishes") {
                    Some(p) => p.as_array().cloned().unwrap_or_default(),
                    None => vec![v.clone()],
                };
                let results: Vec<String> = items
                    .iter()
                    .map(|it| match it["data"].as_str() {
                        Some(d) => format!(r#"{{"queued":{}}}"#, publish(&shared, d.as_bytes())),
                        None => r#"{"error":"missing data"}"#.to_owned(),
                    })
                    .collect();
                if v.get("publishes").is_some() {
                    ("200 OK", format!(r#"{{"results":[{}]}}"#, results.join(",")))
                } else {
                    ("200 OK", results.concat())
                }
            } else {
                let content = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("content="))
                    .map(percent_decode)
                    .unwrap_or_default();
                ("200 OK", format!(r#"{{"queued":{}}}"#, publish(&shared, content.as_bytes())))
            }
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn serve(stream: TcpStream, shared: Shared) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tungstenite::accept(stream) else { return };
    let Ok(mut raw) = ws.get_ref().try_clone() else { return };
    let (tx, rx) = channel::<Arc<Vec<u8>>>();
    if shared.opts.welcome {
        let _ = tx.send(text_frame(
            br#"{"type":"welcome","client_id":"52434c4752434c4752434c475243","worker_id":0,"connection_id":7}"#,
        ));
    }
    let me = tx.clone();
    shared.clients.lock().unwrap().push(tx);
    thread::spawn(move || {
        for frame in rx {
            if raw.write_all(&frame).is_err() {
                break;
            }
        }
    });
    loop {
        let (opcode, payload) = match ws.read() {
            Ok(Message::Binary(b)) => (OpCode::Data(Data::Binary), b),
            Ok(Message::Text(t)) => (OpCode::Data(Data::Text), tungstenite::Bytes::from(t)),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        shared.messages_in.fetch_add(1, Ordering::Relaxed);
        if shared.opts.reject_joins && payload.windows(17).any(|w| w == br#""cmd":"add_group""#) {
            let _ = me.send(text_frame(br#"{"type":"error","reason":"join refused"}"#));
            continue;
        }
        let mut bytes = Vec::with_capacity(payload.len() + 10);
        Frame::message(payload, opcode, true).format(&mut bytes).unwrap();
        let bytes = Arc::new(bytes);
        shared.clients.lock().unwrap().retain(|c| c.send(bytes.clone()).is_ok());
    }
    // Let tungstenite finish the close handshake if one is pending.
    let _ = ws.flush();
}
