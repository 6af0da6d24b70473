//! The baseline: a broadcast ("group chat") WebSocket server written the way a Rust developer
//! would write one without ringcast: tokio + tokio-tungstenite, one `tokio::sync::broadcast`
//! channel, one task per connection. Every Text/Binary message any client sends is relayed to
//! every open connection, sender included (the semantics of `ringcast serve --on-message relay`).
//!
//! It runs on a current-thread runtime because the benchmark gives the server one core. The
//! bench binary re-executes itself with `RINGCAST_BENCH_ROLE=baseline` to run this.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError};
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

async fn serve(addr: SocketAddr) -> Result<()> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("binding {addr}"))?;
    let listener = socket.listen(BACKLOG)?;
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
