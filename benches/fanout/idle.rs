//! Idle-connection opener for the memory-per-connection measurement: opens N WebSocket
//! connections, prints `ready ok=N failed=M` on stdout, then holds them (reading nothing) until
//! its stdin closes or a time limit passes. The bench binary re-executes itself with
//! `RINGCAST_BENCH_ROLE=idle` to run this, pinned to the load generator's CPUs.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How many handshakes are in flight at once.
const CONCURRENCY: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(target: &str, connections: usize, hold: Duration) -> Result<()> {
    let addr: SocketAddr = target.parse().with_context(|| format!("bad address {target}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building tokio runtime")?;
    rt.block_on(async move {
        let results: Vec<Result<_>> = futures_util::stream::iter(0..connections)
            .map(|_| connect(addr))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut open = Vec::with_capacity(connections);
        let mut failed = 0usize;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(ws) => open.push(ws),
                Err(e) => {
                    failed += 1;
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            eprintln!("idle: {failed} connections failed, first error: {e:#}");
        }
        let mut out = std::io::stdout();
        writeln!(out, "ready ok={} failed={failed}", open.len())?;
        out.flush()?;
        // Hold until the harness closes our stdin (or dies), bounded by `hold`.
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(hold, async {
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        drop(open);
        Ok(())
    })
}

async fn connect(
    addr: SocketAddr,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (ws, _resp) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream).await?;
        Ok(ws)
    })
    .await
    .context("connect timed out")?
}
