//! The baseline: an HTTP push endpoint written the way a Rust developer would without
//! ringcast. axum (`axum::serve`, a `Json` extractor) on a current-thread tokio runtime; a
//! `Mutex<HashMap<group, broadcast::Sender>>` in the state; WebSocket subscribers served by
//! tokio-tungstenite, one task each, subscribed to the group named in their upgrade path
//! (`/?group=bench`). `POST /api/publish` takes the same body as ringcast's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::{self, Message};

/// Messages a subscriber may fall behind before it skips ahead (counted as not delivered).
const CHANNEL_CAPACITY: usize = 1024;

#[derive(Default)]
struct AppState {
    groups: Mutex<HashMap<String, broadcast::Sender<Message>>>,
}

#[derive(Deserialize)]
struct PublishBody {
    data: String,
    to: To,
}

#[derive(Deserialize)]
struct To {
    groups: Vec<String>,
}

#[derive(Serialize)]
struct Published {
    queued: usize,
}

async fn publish(
    State(st): State<Arc<AppState>>,
    Json(body): Json<PublishBody>,
) -> Json<Published> {
    let msg = Message::text(body.data);
    let groups = st.groups.lock().unwrap();
    let mut queued = 0;
    for g in &body.to.groups {
        if let Some(tx) = groups.get(g) {
            queued += tx.send(msg.clone()).unwrap_or(0);
        }
    }
    Json(Published { queued })
}

/// Start the baseline on the calling thread's CPU: returns (HTTP address, WebSocket address).
pub fn start() -> (SocketAddr, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("baseline".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let state = Arc::new(AppState::default());
                let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send((http.local_addr().unwrap(), ws.local_addr().unwrap())).unwrap();
                let app =
                    Router::new().route("/api/publish", post(publish)).with_state(state.clone());
                tokio::spawn(async move { axum::serve(http, app).await.unwrap() });
                loop {
                    let (stream, _) = ws.accept().await.unwrap();
                    tokio::spawn(subscriber(stream, state.clone()));
                }
            });
        })
        .unwrap();
    rx.recv().unwrap()
}

// tungstenite's handshake callback type returns its (large) error response by value.
#[allow(clippy::result_large_err)]
async fn subscriber(stream: tokio::net::TcpStream, state: Arc<AppState>) {
    let _ = stream.set_nodelay(true);
    let mut group = String::new();
    let callback = |req: &tungstenite::handshake::server::Request,
                    resp: tungstenite::handshake::server::Response| {
        if let Some(q) = req.uri().query() {
            group = q.strip_prefix("group=").unwrap_or(q).to_owned();
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let mut rx = {
        let mut groups = state.groups.lock().unwrap();
        groups.entry(group).or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0).subscribe()
    };
    let (mut sink, mut source) = ws.split();
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(_)) => {}
                _ => break,
            },
            outgoing = rx.recv() => match outgoing {
                Ok(msg) => {
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}
