//! The Redis side of the backplane, behind one small interface: classic pub/sub on one Redis
//! (tokio `ConnectionManager`, RESP3, one multiplexed connection for commands and pushes) or
//! sharded pub/sub on a Redis Cluster (`cluster-async`, `SSUBSCRIBE`/`SPUBLISH`).
//!
//! Pushes (pub/sub messages, disconnection notices) go through the bounded `push` queue the
//! caller hands in: the client crate's own push channel is unbounded, so this module never
//! uses it; a full queue drops the push and counts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, IntoConnectionInfo, PushInfo, RedisResult};
use tokio::sync::mpsc;

use super::config::{BusMode, ClusterConfig};

/// A connection to the bus. Cheap to clone (every clone shares one multiplexed connection).
#[derive(Clone)]
pub(crate) enum Bus {
    Classic(ConnectionManager),
    Sharded(ClusterConnection),
}

/// Connect; pushes go to `push` (bounded), overflow is counted in `push_dropped`.
pub(crate) async fn connect(
    cfg: &ClusterConfig,
    push: mpsc::Sender<PushInfo>,
    push_dropped: Arc<AtomicU64>,
) -> RedisResult<Bus> {
    let sender = move |info: PushInfo| -> Result<(), ()> {
        if push.try_send(info).is_err() {
            push_dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    };
    let timeout = Duration::from_secs(2);
    match cfg.bus {
        BusMode::Classic => {
            let mut info = cfg.urls[0].as_str().into_connection_info()?;
            info.redis.protocol = redis::ProtocolVersion::RESP3;
            let client = redis::Client::open(info)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_push_sender(sender)
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout)
                .set_number_of_retries(2)
                .set_factor(50)
                .set_max_delay(cfg.reconnect_delay_max.as_millis() as u64);
            Ok(Bus::Classic(ConnectionManager::new_with_config(client, config).await?))
        }
        BusMode::Sharded => {
            let client = redis::cluster::ClusterClient::builder(cfg.urls.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(sender)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .max_retry_wait(cfg.reconnect_delay_max.as_millis() as u64)
                .build()?;
            Ok(Bus::Sharded(client.get_async_connection().await?))
        }
    }
}

impl Bus {
    /// Run one command.
    pub(crate) async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            Bus::Classic(c) => cmd.query_async(c).await,
            Bus::Sharded(c) => cmd.query_async(c).await,
        }
    }

    /// Publish every message in order, many per round trip; the number of subscribers that
    /// received each (the nodes interested).
    pub(crate) async fn publish(&mut self, msgs: &[(String, Vec<u8>)]) -> RedisResult<Vec<u64>> {
        match self {
            Bus::Classic(c) => {
                let mut pipe = redis::pipe();
                for (ch, payload) in msgs {
                    pipe.cmd("PUBLISH").arg(ch).arg(payload);
                }
                pipe.query_async(c).await
            }
            Bus::Sharded(c) => {
                // Each SPUBLISH goes to the Redis shard owning its channel's slot. The futures
                // are submitted in order to the connection's single request queue, so messages
                // to one channel keep their order.
                let futs = msgs.iter().map(|(ch, payload)| {
                    let mut c = c.clone();
                    let cmd = redis::cmd("SPUBLISH").arg(ch).arg(payload).clone();
                    async move { cmd.query_async::<u64>(&mut c).await }
                });
                futures_util::future::join_all(futs).await.into_iter().collect()
            }
        }
    }

    /// Subscribe to channels.
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match self {
            Bus::Classic(c) => c.subscribe(channels).await,
            Bus::Sharded(c) => {
                let futs = channels.iter().map(|ch| {
                    let mut c = c.clone();
                    let ch = ch.clone();
                    async move { c.ssubscribe(ch).await }
                });
                futures_util::future::join_all(futs).await.into_iter().collect()
            }
        }
    }

    /// Unsubscribe from channels.
    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match self {
            Bus::Classic(c) => c.unsubscribe(channels).await,
            Bus::Sharded(c) => {
                let futs = channels.iter().map(|ch| {
                    let mut c = c.clone();
                    let ch = ch.clone();
                    async move { c.sunsubscribe(ch).await }
                });
                futures_util::future::join_all(futs).await.into_iter().collect()
            }
        }
    }
}
