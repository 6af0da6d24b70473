//! The HTTP push API: the control plane. Runs on its own thread with a current-thread tokio
//! runtime (axum), never on a shard and never with tokio-uring. It drives the node only
//! through the library's [`Handle`] (bounded inboxes, `try_send`): a full inbox answers 503.
//!
//! See `docs/api.md` for every endpoint.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::Handle;

/// Configuration of the control plane.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Address to listen on (default `127.0.0.1:2021`).
    pub listen: SocketAddr,
    /// Bearer token required on every request. Required when `listen` is not a loopback
    /// address: [`spawn`] refuses to start without one.
    pub token: Option<String>,
    /// Largest request body accepted; larger ones get 413.
    pub body_bytes_max: usize,
    /// Longest a request waits for the shards' answer before 503.
    pub shard_timeout: Duration,
    /// Longest group id or uid accepted, in bytes.
    pub group_id_bytes_max: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2021)),
            token: None,
            body_bytes_max: 1 << 20,
            shard_timeout: Duration::from_secs(5),
            group_id_bytes_max: 128,
        }
    }
}

/// A running control plane.
pub struct ApiServer {
    _todo: (),
}

impl ApiServer {
    /// The address it listens on (the real port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        todo!()
    }

    /// Stop accepting, finish in-flight requests, and wait for the thread to exit.
    pub fn shutdown(self) {
        todo!()
    }
}

/// Bind `config.listen` (errors are returned before any thread starts), then serve the API on
/// a new thread.
pub fn spawn(handle: Handle, config: ApiConfig) -> io::Result<ApiServer> {
    let _ = (handle, config);
    todo!()
}
