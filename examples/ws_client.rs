//! A tiny WebSocket client for trying ringcast from a terminal (what seeds 003 and 004 do in a
//! browser console): connects, sends each command given on the command line, then prints every
//! text frame it receives, one per line, until the server closes or `--for` elapses.
//!
//!     cargo run --example ws_client -- ws://127.0.0.1:2020/ '{"cmd":"add_group","group_id":"123"}'
//!     cargo run --example ws_client -- --for 5s ws://127.0.0.1:2020/

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut run_for = None;
    if let Some(i) = args.iter().position(|a| a == "--for") {
        let d = args.get(i + 1).ok_or("--for needs a duration, e.g. 5s")?;
        run_for = Some(humantime::parse_duration(d)?);
        args.drain(i..i + 2);
    }
    let url = args.first().cloned().unwrap_or_else(|| "ws://127.0.0.1:2020/".into());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    eprintln!("connected to {url}");
    for cmd in &args[1.min(args.len())..] {
        ws.send(Message::text(cmd.as_str())).await?;
    }
    let receive = async {
        while let Some(msg) = ws.next().await {
            match msg? {
                Message::Text(t) => println!("{t}"),
                Message::Binary(b) => println!("<{} binary bytes>", b.len()),
                Message::Close(c) => {
                    eprintln!("closed: {c:?}");
                    break;
                }
                _ => {}
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    match run_for {
        Some(d) => {
            let _ = tokio::time::timeout(d.max(Duration::from_millis(1)), receive).await;
        }
        None => receive.await?,
    }
    Ok(())
}
