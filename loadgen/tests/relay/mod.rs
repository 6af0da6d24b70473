//! A tiny blocking WebSocket relay for tests and demos: every Text/Binary message any client
//! sends is sent to every connected client (sender included), like `ringcast serve
//! --on-message relay`. std threads + tungstenite's blocking server; one reader and one
//! writer thread per client. Not fast: it exists to check the generator's accounting.

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
    stop: Arc<AtomicBool>,
    clients: Clients,
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
    let listener = TcpListener::bind(addr).expect("bind relay");
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let messages_in = Arc::new(AtomicU64::new(0));
    let clients: Clients = Arc::default();
    accept_loop(listener, stop.clone(), clients.clone(), messages_in.clone(), serve);
    Relay { addr, messages_in, http_addr: None, stop, clients }
}

/// Accepts until `stop`, handing each connection to `handler` on its own thread.
fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    clients: Clients,
    messages_in: Arc<AtomicU64>,
    handler: fn(TcpStream, Clients, Arc<AtomicU64>),
) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let clients = clients.clone();
            let messages_in = messages_in.clone();
            thread::spawn(move || handler(stream, clients, messages_in));
        }
    });
}

/// Starts a relay on `127.0.0.1:0` plus an HTTP push endpoint on another port: every
/// `POST /...?content=TEXT[&group_id=G] HTTP/1.1` (keep-alive, pipelining fine) is answered
/// `200 OK` and TEXT is sent to every WebSocket client as a text message.
pub fn start_with_http() -> Relay {
    let mut relay = start();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind http");
    relay.http_addr = Some(listener.local_addr().unwrap());
    accept_loop(
        listener,
        relay.stop.clone(),
        relay.clients.clone(),
        relay.messages_in.clone(),
        serve_http,
    );
    relay
}

fn serve_http(stream: TcpStream, clients: Clients, messages_in: Arc<AtomicU64>) {
    let Ok(mut out) = stream.try_clone() else { return };
    let mut rd = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if rd.read_exact(&mut body).is_err() {
            return;
        }
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let content = query.split('&').find_map(|kv| kv.strip_prefix("content=")).unwrap_or("");
        messages_in.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::with_capacity(content.len() + 10);
        Frame::message(content.as_bytes().to_vec(), OpCode::Data(Data::Text), true)
            .format(&mut bytes)
            .unwrap();
        let bytes = Arc::new(bytes);
        clients.lock().unwrap().retain(|c| c.send(bytes.clone()).is_ok());
        if out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
            return;
        }
    }
}

fn serve(stream: TcpStream, clients: Clients, messages_in: Arc<AtomicU64>) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tungstenite::accept(stream) else { return };
    let Ok(mut raw) = ws.get_ref().try_clone() else { return };
    let (tx, rx) = channel::<Arc<Vec<u8>>>();
    clients.lock().unwrap().push(tx);
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
        messages_in.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::with_capacity(payload.len() + 10);
        Frame::message(payload, opcode, true).format(&mut bytes).unwrap();
        let bytes = Arc::new(bytes);
        clients.lock().unwrap().retain(|c| c.send(bytes.clone()).is_ok());
    }
    // Let tungstenite finish the close handshake if one is pending.
    let _ = ws.flush();
}
