//! The cluster's settings: one struct, `[cluster]` in the configuration file, `--cluster*` on
//! the command line. Plain data plus `validate()`; nothing here touches Redis.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which Redis pub/sub the backplane uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusMode {
    /// One Redis (or a primary with replicas): `SUBSCRIBE` / `PUBLISH`.
    #[default]
    Classic,
    /// Redis Cluster (Redis ≥ 7): `SSUBSCRIBE` / `SPUBLISH`, so each channel lives on the
    /// Redis shard that owns its hash slot and the bus itself scales across Redis shards.
    Sharded,
}

/// Clustering over Redis. Off (`urls` empty) by default: a node needs no Redis at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis URLs (`redis://[user:password@]host:port`); several are seed nodes of a Redis
    /// Cluster. Empty: clustering is off. Printed (`check-config`) with passwords redacted.
    #[serde(serialize_with = "redacted_urls")]
    pub urls: Vec<String>,
    /// Classic pub/sub on one Redis, or sharded pub/sub on a Redis Cluster.
    pub bus: BusMode,
    /// Prefix of every channel and key, so several ringcast clusters can share one Redis.
    pub namespace: String,
    /// How often a node refreshes its presence entry. A node that stops (SIGKILL, lost
    /// network) vanishes from presence within three of these.
    #[serde(with = "humantime_serde_compat")]
    pub heartbeat_interval: Duration,
    /// How long a node keeps a group's (or uid's) subscription after its last local member
    /// left, so members coming and going quickly cause no subscribe/unsubscribe churn.
    #[serde(with = "humantime_serde_compat")]
    pub unsubscribe_linger: Duration,
    /// Longest a cluster-wide query waits for the other nodes' answers; nodes that have not
    /// answered by then are reported missing.
    #[serde(with = "humantime_serde_compat")]
    pub query_timeout: Duration,
    /// Publishes waiting to go to Redis (shards and handles hand them over without ever
    /// blocking); past it they are dropped and counted (`cluster.outbound_dropped`).
    pub outbound_messages_max: usize,
    /// Bus messages received from Redis waiting to be applied; past it they are dropped and
    /// counted (`cluster.inbound_dropped`).
    pub inbound_messages_max: usize,
    /// Interest changes (first local member / last local member) waiting for the cluster
    /// task; past it the task resynchronises from the directory instead (nothing is lost).
    pub interest_events_max: usize,
    /// Publishes sent to Redis in one round trip at most.
    pub batch_messages_max: usize,
    /// Longest reconnect back-off after Redis fails.
    #[serde(with = "humantime_serde_compat")]
    pub reconnect_delay_max: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            urls: Vec::new(),
            bus: BusMode::Classic,
            namespace: "ringcast".into(),
            heartbeat_interval: Duration::from_secs(1),
            unsubscribe_linger: Duration::from_secs(5),
            query_timeout: Duration::from_millis(500),
            outbound_messages_max: 64 * 1024,
            inbound_messages_max: 64 * 1024,
            interest_events_max: 64 * 1024,
            batch_messages_max: 1024,
            reconnect_delay_max: Duration::from_secs(2),
        }
    }
}

impl ClusterConfig {
    /// Whether clustering is on.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// Check every field; the error says which and why.
    pub fn validate(&self) -> Result<(), String> {
        self.check().map_err(|(key, m)| format!("cluster.{key}: {m}"))
    }

    /// Check every field (also when clustering is off, so a file is right before it is
    /// switched on): the key at fault and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for u in &self.urls {
            if !u.starts_with("redis://") {
                return Err((
                    "urls",
                    format!(
                        "{:?} must start with redis:// (TLS to Redis, rediss://, is not built in)",
                        redact_url(u)
                    ),
                ));
            }
        }
        if self.bus == BusMode::Classic && self.urls.len() > 1 {
            return Err((
                "urls",
                "classic pub/sub takes one Redis URL; several URLs are the seed nodes of a \
                 Redis Cluster (set the bus to sharded)"
                    .into(),
            ));
        }
        if self.namespace.is_empty()
            || self.namespace.len() > 64
            || !self.namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(("namespace", "must be 1 to 64 characters of [A-Za-z0-9-_.]".into()));
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(("heartbeat_interval", "must be at least 100ms".into()));
        }
        if self.query_timeout.is_zero() {
            return Err(("query_timeout", "must be longer than 0s".into()));
        }
        if self.reconnect_delay_max < Duration::from_millis(10) {
            return Err(("reconnect_delay_max", "must be at least 10ms".into()));
        }
        for (name, v) in [
            ("outbound_messages_max", self.outbound_messages_max),
            ("inbound_messages_max", self.inbound_messages_max),
            ("interest_events_max", self.interest_events_max),
            ("batch_messages_max", self.batch_messages_max),
        ] {
            if v == 0 {
                return Err((name, "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// The URLs as `check-config` prints them: a password (`redis://user:secret@host`) becomes
/// `***`, so the effective configuration never shows it.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(x) => x,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

fn redacted_urls<S: serde::Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(|u| redact_url(u)))
}

/// Durations as humantime strings ("1s", "500ms") in the configuration file.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}): write e.g. \"1s\" or \"500ms\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_valid() {
        let c = ClusterConfig::default();
        assert!(!c.enabled());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let on = |f: &dyn Fn(&mut ClusterConfig)| {
            let mut c =
                ClusterConfig { urls: vec!["redis://127.0.0.1:6379".into()], ..Default::default() };
            f(&mut c);
            c.validate()
        };
        assert!(on(&|_| {}).is_ok());
        assert!(on(&|c| c.urls = vec!["http://x".into()]).unwrap_err().contains("redis://"));
        assert!(on(&|c| c.urls.push("redis://b:1".into())).unwrap_err().contains("sharded"));
        assert!(on(&|c| c.namespace = "a b".into()).is_err());
        assert!(on(&|c| c.heartbeat_interval = Duration::from_millis(1)).is_err());
        assert!(on(&|c| c.batch_messages_max = 0).unwrap_err().contains("batch_messages_max"));
    }

    #[test]
    fn deserializes_as_a_config_section() {
        let c: ClusterConfig = serde_json::from_str(
            r#"{"urls":["redis://127.0.0.1:7001"],"bus":"sharded","heartbeat_interval":"250ms"}"#,
        )
        .unwrap();
        assert_eq!(c.bus, BusMode::Sharded);
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.namespace, "ringcast", "unset keys keep their defaults");
        let e = serde_json::from_str::<ClusterConfig>(r#"{"url":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn passwords_are_never_printed() {
        assert_eq!(redact_url("redis://u:pw@h:1"), "redis://u:***@h:1");
        assert_eq!(redact_url("redis://pw@h:1"), "redis://***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        let c = ClusterConfig { urls: vec!["redis://:s3cret@h:1".into()], ..Default::default() };
        let text = serde_json::to_string(&c).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
    }
}
