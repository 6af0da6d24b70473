//! The HTTP push API: the control plane. Runs on its own thread (`ringcast-api`) with a
//! current-thread tokio runtime (hyper + axum's router), never on a shard and never with
//! tokio-uring. It drives the node only through the library's [`Handle`] (bounded inboxes,
//! `try_send`): a full inbox answers 503.
//!
//! - `mod.rs`: configuration, start-up checks (the token rule), the accept loop, shutdown.
//! - `service.rs`: per request, before and after routing: auth, counters, rate-limited logs.
//! - `routes.rs`: the endpoints.
//! - `body.rs`: request bodies and query strings into the library's types (pure).
//! - `coalesce.rs`: the single publishes of one scheduler tick go to the node as one batch.
//! - `error.rs`: every error as `{"error":"..."}` with its status.
//! - `stats.rs`: the API's own counters and log budget.
//! - `demo.rs`: the demo page (`--demo`), embedded from `demo/`.
//!
//! See `docs/api.md` for every endpoint.

mod body;
mod coalesce;
mod demo;
mod error;
mod keys;
mod observe;
mod routes;
mod service;
mod stats;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};

#[doc(hidden)]
pub use body::parse_any_body;
pub use body::{BATCH_PUBLISHES_MAX, TARGETS_MAX};
pub use error::{ApiError, ErrorKind};
pub use keys::RedisKeysConfig;
pub use stats::ApiStats;

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
    /// Open HTTP connections at once; past it, accepting waits for one to close (the kernel's
    /// backlog holds the rest). Bounded so a connection flood cannot exhaust descriptors.
    pub connections_max: usize,
    /// Time a client has to send a request's headers (slowloris bound: auth is checked only
    /// once the headers are in); also the longest a keep-alive connection may sit idle between
    /// requests (hyper starts this timer as soon as it waits for the next request head). 60 s:
    /// longer than most publishers leave a pooled connection idle.
    pub header_read_timeout: Duration,
    /// Time [`ApiServer::shutdown`] lets in-flight requests finish before dropping them.
    pub shutdown_timeout: Duration,
    /// The cluster backplane, when the node is clustered: queries answer cluster-wide and
    /// `/api/stats` shows the backplane.
    pub cluster: Option<crate::cluster::Cluster>,
    /// Serve the demo page at `/` (the daemon's `--demo`): a page that connects to the node's
    /// WebSocket listener, joins groups, chats and pushes through this API. The page and its
    /// assets need no token (they hold no node data); the page asks for the token when one is
    /// set. Off: `/` is only seed 003's pusher.
    pub demo_page: bool,
    /// Extra metrics collectors and readiness checks (see [`crate::observe`]).
    pub observability: crate::observe::Observability,
    /// The node's configured bounds, exported beside their gauges in `/metrics`.
    pub node_limits: crate::observe::NodeLimits,
    /// Keep idempotency keys in Redis, shared by every node using it (a cluster); `None`: in
    /// the node's own store. Connected when the API starts ([`spawn`] fails if it cannot).
    pub idempotency_redis: Option<RedisKeysConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2021)),
            token: None,
            body_bytes_max: 1 << 20,
            shard_timeout: Duration::from_secs(5),
            group_id_bytes_max: 128,
            connections_max: 1024,
            header_read_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(5),
            cluster: None,
            demo_page: false,
            observability: Default::default(),
            node_limits: Default::default(),
            idempotency_redis: None,
        }
    }
}

/// A running control plane. Dropping it shuts it down too.
pub struct ApiServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<routes::Shared>,
}

impl ApiServer {
    /// The address it listens on (the real port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The API's counters: requests, errors by kind, publishes.
    pub fn stats(&self) -> ApiStats {
        self.shared.counters.snapshot()
    }

    /// Stop accepting, finish in-flight requests (at most `shutdown_timeout`), and wait for
    /// the thread to exit.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the HTTP API thread panicked");
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Refuse a configuration that would expose the node: a non-loopback address without a token
/// (or with an empty one), or a zero limit.
fn check(config: &ApiConfig) -> io::Result<()> {
    let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if config.token.as_deref() == Some("") {
        return invalid("the HTTP API token must not be empty".into());
    }
    if config.token.is_none() && !config.listen.ip().to_canonical().is_loopback() {
        return invalid(format!(
            "the HTTP API would listen on {} (not a loopback address) without a token: \
             set a bearer token (--api-token or RINGCAST_API_TOKEN) or listen on 127.0.0.1",
            config.listen
        ));
    }
    if config.body_bytes_max == 0 || config.connections_max == 0 || config.group_id_bytes_max == 0 {
        return invalid(
            "the HTTP API's body_bytes_max, connections_max and group_id_bytes_max must be \
             at least 1"
                .into(),
        );
    }
    Ok(())
}

/// Bind `config.listen` (errors are returned before any thread starts), then serve the API on
/// a new thread.
pub fn spawn(handle: Handle, config: ApiConfig) -> io::Result<ApiServer> {
    check(&config)?;
    let listener = bind(config.listen)?;
    let local_addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    // Connected on the API's runtime (where the connection's task will run), from a helper
    // thread: `spawn` may itself be called from inside another runtime.
    let keys = std::thread::scope(|sc| {
        sc.spawn(|| runtime.block_on(keys::Keys::new(&handle, config.idempotency_redis.as_ref())))
            .join()
    })
    .map_err(|_| io::Error::other("idempotency keys: connecting to Redis panicked"))??;
    let demo = config.demo_page.then(|| {
        let ws = handle.local_addr();
        demo::Page::new(ws, handle.tls_local_addr() == Some(ws), config.token.is_some())
    });
    let shared = Arc::new(routes::Shared {
        handle,
        keys,
        demo,
        limits: body::Limits { name_bytes_max: config.group_id_bytes_max },
        shard_timeout: config.shard_timeout,
        body_bytes_max: config.body_bytes_max,
        counters: Default::default(),
        coalescer: Default::default(),
        cluster: config.cluster.clone(),
        registry: Default::default(),
        observability: config.observability.clone(),
    });
    let mut registry = config.observability.registry(&shared.handle, config.node_limits);
    registry.register_collector(Box::new(observe::ApiCollector(Arc::downgrade(&shared))));
    let _ = shared.registry.set(registry);
    let service = service::ApiService {
        app: routes::router(shared.clone()),
        shared: shared.clone(),
        auth: Arc::new(service::Auth::new(config.token.as_deref(), config.demo_page)),
        log: Arc::new(stats::LogLimiter::new(1000)),
    };
    let (stop, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new().name("ringcast-api".into()).spawn(move || {
        runtime.block_on(serve(listener, service, stop_rx, config));
        // Dropping the runtime here cancels connections still open past shutdown_timeout.
    })?;
    Ok(ApiServer { local_addr, stop, thread: Some(thread), shared })
}

/// A non-blocking listener with SO_REUSEADDR and a backlog for bursts of publishers.
fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

async fn serve(
    listener: tokio::net::TcpListener,
    service: service::ApiService,
    mut stop: watch::Receiver<bool>,
    config: ApiConfig,
) {
    let shared = service.shared.clone();
    tokio::spawn(shared.coalescer.clone().run(shared.handle.clone(), shared.shard_timeout));
    // Tokio wakes its driver (an eventfd write) whenever a timer is registered ahead of the
    // wheel's next known expiry, which with an empty wheel is every time: hyper's per-request
    // header timer would cost a syscall per request. A timer that is always pending, at most
    // 1 s away, keeps those registrations (60 s out) behind it. Idle cost: one wake-up a second.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let slots_max = config.connections_max.min(1 << 20);
    let slots = Arc::new(Semaphore::new(slots_max));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true)
        // Pipelined requests get their responses in one write.
        .pipeline_flush(true);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; one line a second.
                    if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!("api: accept failed: {e}");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        service
            .shared
            .counters
            .connections_accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let http = http.clone();
        let service = service.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => {}
            }
            // Finish the request in flight, then close (idle connections close at once).
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    let all = u32::try_from(slots_max).unwrap_or(u32::MAX);
    if tokio::time::timeout(config.shutdown_timeout, slots.acquire_many(all)).await.is_err() {
        tracing::warn!(
            "api: connections still open after {:?}; dropping them",
            config.shutdown_timeout
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_rule_at_start_up() {
        let cfg = |listen: &str, token: Option<&str>| ApiConfig {
            listen: listen.parse().unwrap(),
            token: token.map(str::to_owned),
            ..ApiConfig::default()
        };
        assert!(check(&cfg("127.0.0.1:0", None)).is_ok());
        assert!(check(&cfg("[::1]:0", None)).is_ok());
        assert!(check(&cfg("[::ffff:127.0.0.1]:0", None)).is_ok());
        assert!(check(&cfg("0.0.0.0:0", Some("t"))).is_ok());
        for (listen, token) in
            [("0.0.0.0:0", None), ("[::]:0", None), ("10.0.0.1:0", None), ("127.0.0.1:0", Some(""))]
        {
            let e = check(&cfg(listen, token)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{listen}");
        }
        let e = check(&cfg("0.0.0.0:0", None)).unwrap_err();
        assert!(e.to_string().contains("without a token"), "{e}");
    }
}
