//! The baseline: a broadcast ("group chat") WebSocket server written the way a Rust developer
//! would write one without ringcast: tokio + tokio-tungstenite, one `tokio::sync::broadcast`
//! channel, one task per connection. Every Text/Binary message any client sends is relayed to
//! every open connection, sender included (the semantics of `ringcast serve --on-message relay`).
//!
//! It runs on a current-thread runtime because the benchmark gives the server one core. The
//! bench binary re-executes itself with `RINGCAST_BENCH_ROLE=baseline` to run this.
//!
//! [`run_groups`] (`RINGCAST_BENCH_ROLE=baseline-groups`) is the same developer adding groups
//! without ringcast: seed 004's two commands (`add_group`, `send_to_group`) parsed with
//! serde_json, a shared `HashMap<group, HashMap<connection id, mpsc::Sender<Message>>>` behind
//! a `std::sync::Mutex`, one bounded channel per connection (a full channel skips the message
//! and counts it), cleanup on close; plus an axum HTTP push endpoint on a second port taking
//! the seed form `/?content=..&to_group=..` and answering `{"queued":N}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_tungstenite::tungstenite::Message;

/// Capacity of the broadcast channel: messages a slow connection may fall behind before it
/// skips ahead (and the load generator counts the skipped ones as lost).
pub const CHANNEL_CAPACITY: usize = 1024;
/// Listen backlog, so 10,000 clients connecting at once are not dropped.
pub const BACKLOG: u32 = 4096;

pub fn run(listen: &str) -> Result<()> {
    let addr: SocketAddr =
        listen.parse().with_context(|| format!("bad listen address {listen}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building tokio runtime")?;
    rt.block_on(serve(addr))
}

fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(BACKLOG)?)
}

async fn serve(addr: SocketAddr) -> Result<()> {
    let listener = listen(addr)?;
    let (tx, _) = broadcast::channel::<Message>(CHANNEL_CAPACITY);
    eprintln!("baseline: listening on {addr}");
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("baseline: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, tx).await {
                eprintln!("baseline: connection: {e}");
            }
        });
    }
}

async fn connection(stream: TcpStream, tx: broadcast::Sender<Message>) -> Result<()> {
    stream.set_nodelay(true)?;
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let (mut sink, mut source) = ws.split();
    let mut rx = tx.subscribe();
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(msg @ (Message::Binary(_) | Message::Text(_)))) => {
                    // No receivers is not an error for a chat room.
                    let _ = tx.send(msg);
                }
                // Pings are answered by tungstenite itself; pongs and raw frames are ignored.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
            outgoing = rx.recv() => match outgoing {
                Ok(msg) => {
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                // Fell behind by more than the channel capacity: skip ahead, like a chat would.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
        }
    }
    Ok(())
}

// ---- groups ----------------------------------------------------------------------------------

/// The two commands of seed 004.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Command {
    AddGroup { group_id: String },
    SendToGroup { group_id: String, message: String },
}

/// Every connection's sender, by group and overall.
#[derive(Default)]
struct Registry {
    next_id: u64,
    all: HashMap<u64, mpsc::Sender<Message>>,
    groups: HashMap<String, HashMap<u64, mpsc::Sender<Message>>>,
}

#[derive(Default)]
struct Hub {
    registry: Mutex<Registry>,
    /// Messages skipped because a connection's channel was full.
    skipped: AtomicU64,
}

impl Hub {
    /// Queues `msg` for every sender; returns how many took it.
    fn deliver(&self, senders: &HashMap<u64, mpsc::Sender<Message>>, msg: &Message) -> usize {
        let mut queued = 0;
        for tx in senders.values() {
            match tx.try_send(msg.clone()) {
                Ok(()) => queued += 1,
                Err(TrySendError::Full(_)) => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
        queued
    }

    fn send_to_group(&self, group: &str, msg: Message) -> usize {
        let reg = self.registry.lock().unwrap();
        reg.groups.get(group).map_or(0, |members| self.deliver(members, &msg))
    }

    fn send_to_all(&self, msg: Message) -> usize {
        let reg = self.registry.lock().unwrap();
        self.deliver(&reg.all, &msg)
    }
}

/// Runs the groups baseline: WebSocket on `ws_listen`, HTTP push API on `http_listen`.
pub fn run_groups(ws_listen: &str, http_listen: &str) -> Result<()> {
    let ws: SocketAddr =
        ws_listen.parse().with_context(|| format!("bad listen address {ws_listen}"))?;
    let http: SocketAddr =
        http_listen.parse().with_context(|| format!("bad listen address {http_listen}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building tokio runtime")?;
    rt.block_on(serve_groups(ws, http))
}

async fn serve_groups(ws_addr: SocketAddr, http_addr: SocketAddr) -> Result<()> {
    let hub = Arc::new(Hub::default());
    let app = Router::new().route("/", get(http_push).post(http_push)).with_state(hub.clone());
    let http = listen(http_addr)?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(http, app).await {
            eprintln!("baseline: http: {e}");
        }
    });
    // Report skipped messages (full channels) once a second while the count grows.
    let watch = hub.clone();
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = watch.skipped.load(Ordering::Relaxed);
            if now != last {
                eprintln!("baseline: {now} message(s) skipped on full channels so far");
                last = now;
            }
        }
    });
    let listener = listen(ws_addr)?;
    eprintln!("baseline: groups: listening on {ws_addr}, HTTP push API on {http_addr}");
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("baseline: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = group_connection(stream, hub).await {
                eprintln!("baseline: connection: {e}");
            }
        });
    }
}

async fn group_connection(stream: TcpStream, hub: Arc<Hub>) -> Result<()> {
    stream.set_nodelay(true)?;
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(CHANNEL_CAPACITY);
    let id = {
        let mut reg = hub.registry.lock().unwrap();
        reg.next_id += 1;
        let id = reg.next_id;
        reg.all.insert(id, tx.clone());
        id
    };
    let mut joined: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Command>(&text) {
                    Ok(Command::AddGroup { group_id }) => {
                        if !joined.contains(&group_id) {
                            let mut reg = hub.registry.lock().unwrap();
                            reg.groups.entry(group_id.clone()).or_default().insert(id, tx.clone());
                            joined.push(group_id);
                        }
                    }
                    Ok(Command::SendToGroup { group_id, message }) => {
                        hub.send_to_group(&group_id, Message::text(message));
                    }
                    Err(e) => {
                        let reply = json!({ "type": "error", "reason": e.to_string() });
                        if sink.send(Message::text(reply.to_string())).await.is_err() {
                            break;
                        }
                    }
                },
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
            Some(msg) = rx.recv() => {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
        }
    }
    let mut reg = hub.registry.lock().unwrap();
    reg.all.remove(&id);
    for g in joined {
        if let Some(members) = reg.groups.get_mut(&g) {
            members.remove(&id);
            if members.is_empty() {
                reg.groups.remove(&g);
            }
        }
    }
    Ok(())
}

/// The seed form of the HTTP push API.
#[derive(Debug, Deserialize)]
struct PushQuery {
    content: String,
    to_group: Option<String>,
    to_client_id: Option<String>,
}

async fn http_push(
    State(hub): State<Arc<Hub>>,
    Query(q): Query<PushQuery>,
) -> (StatusCode, Json<Value>) {
    if q.to_client_id.is_some() {
        let body = json!({ "error": "to_client_id is not supported by the baseline" });
        return (StatusCode::BAD_REQUEST, Json(body));
    }
    let msg = Message::text(q.content);
    let queued = match &q.to_group {
        Some(g) => hub.send_to_group(g, msg),
        None => hub.send_to_all(msg),
    };
    (StatusCode::OK, Json(json!({ "queued": queued })))
}
