//! Where the HTTP API keeps idempotency keys: in the node's own store (one node), or in Redis
//! shared by every node ([`RedisKeysConfig`]), so a repeated key is recognised whichever node
//! it reaches. Redis is called from the API's own runtime (the control plane), never a shard.

use std::time::Duration;

use bytes::Bytes;

use super::error::ApiError;
use crate::history::redis::{PublishOn, RedisConn, RedisHistory};
use crate::history::Claim;
use crate::Handle;

/// Idempotency keys in Redis, shared by the nodes that use the same Redis and namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisKeysConfig {
    /// One Redis URL, or the seed URLs of a Redis Cluster.
    pub urls: Vec<String>,
    /// `urls` are a Redis Cluster's nodes (else the first is one Redis).
    pub redis_cluster: bool,
    /// Key prefix: keys are `<namespace>:idem:<key>` (a cluster's namespace).
    pub namespace: String,
    /// How long a key is remembered after its publish was answered.
    pub window: Duration,
}

/// The API's idempotency store.
#[derive(Clone)]
pub(crate) enum Keys {
    Node(Handle),
    /// The shared store, and the node (whose counters include the duplicates found here).
    Redis(Box<RedisHistory<RedisConn>>, Handle),
}

impl Keys {
    /// The node's store, or Redis when configured (connected here, on the API's runtime).
    pub(crate) async fn new(
        handle: &Handle,
        redis: Option<&RedisKeysConfig>,
    ) -> std::io::Result<Keys> {
        let Some(cfg) = redis else { return Ok(Keys::Node(handle.clone())) };
        let conn = RedisConn::connect(&cfg.urls, cfg.redis_cluster).await.map_err(|e| {
            std::io::Error::other(format!(
                "idempotency keys: connecting to Redis ({}): {e}",
                cfg.urls.join(", ")
            ))
        })?;
        Ok(Keys::Redis(
            Box::new(RedisHistory::new(
                conn,
                &cfg.namespace,
                PublishOn::Nothing,
                Bytes::new(),
                cfg.window,
            )),
            handle.clone(),
        ))
    }

    /// Check `key` and claim it if new. Redis unreachable: 503 (the publisher retries; nothing
    /// was published).
    pub(crate) async fn claim(&self, key: &str) -> Result<Claim<Bytes>, ApiError> {
        match self {
            Keys::Node(h) => Ok(h.idempotency_claim(key)),
            Keys::Redis(r, h) => {
                let claim = r.idempotency_claim(key).await.map_err(|e| {
                    ApiError::unavailable(format!(
                        "idempotency keys unavailable (Redis: {e}); nothing was published, retry"
                    ))
                })?;
                if matches!(claim, Claim::Duplicate(_)) {
                    h.count_idempotency_duplicate();
                }
                Ok(claim)
            }
        }
    }

    /// Remember the answer of a claimed key.
    pub(crate) async fn complete(&self, key: &str, answer: &[u8]) {
        match self {
            Keys::Node(h) => h.idempotency_complete(key, Bytes::copy_from_slice(answer)),
            Keys::Redis(r, _) => {
                if let Err(e) = r.idempotency_complete(key, answer).await {
                    // The key stays claimed until its window passes: a repeat gets 409, never a
                    // second delivery.
                    tracing::warn!(
                        "idempotency key not completed in Redis ({e}); it stays claimed"
                    );
                }
            }
        }
    }

    /// Forget a claimed key whose publish did not happen (in the background for Redis: this
    /// runs from `Drop`).
    pub(crate) fn release(&self, key: String) {
        match self {
            Keys::Node(h) => h.idempotency_release(&key),
            Keys::Redis(r, _) => {
                let r = (**r).clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = r.idempotency_release(&key).await {
                            tracing::warn!(
                                "idempotency key not released in Redis ({e}); it expires with its \
                                 window"
                            );
                        }
                    });
                }
            }
        }
    }
}
