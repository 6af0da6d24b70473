//! Observability: the Prometheus collector over a node's published counters, and readiness.
//!
//! Nothing here runs on a shard. The collector reads what the shards already publish (their
//! counters once per loop turn, their health and fan-out latency histograms; see
//! [`crate::metrics`]) at scrape time, with relaxed atomic loads: a scrape takes no lock a
//! shard could wait on and adds nothing to the hot path. The control plane (`/metrics`,
//! `/readyz` in [`crate::api`]) owns one [`Observability`].
//!
//! # Extension points (cluster, auth, TLS...)
//!
//! A subsystem that has state worth exporting or that readiness must wait for adds it here,
//! before the API starts:
//!
//! ```ignore
//! let mut obs = ringcast::observe::Observability::default();
//! // Metrics: any prometheus-client `Collector`. Encode a metric only when it is meaningful
//! // (a node without a backplane exports no backplane metrics at all, rather than a fake 0).
//! obs.add_collector(cluster.collector());
//! // Readiness: `/readyz` is 503 until every check passes; the error names what is missing.
//! obs.add_readiness_check("backplane", move || cluster.ready());
//! api_config.observability = obs;
//! ```
//!
//! The cluster backplane does exactly this in `ringcast::cluster::Cluster::observe` (check
//! `backplane`, metrics `ringcast_cluster_*`), called by the daemon before the API starts.
//!
//! The built-in check, `shards`, passes when every shard is accepting (listener open, not
//! shutting down, accepts not paused after an accept error), its loop ran housekeeping in the
//! last [`HEARTBEAT_STALE`], and the node is below `connections_max`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::metrics::{LatencySnapshot, LATENCY_BUCKETS_NS};
use crate::Handle;

/// A shard whose loop has not run housekeeping (every 250 ms) for this long is stalled, and the
/// node is not ready.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(3);

/// One readiness condition: `Ok` when satisfied, else why not (one short sentence).
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Short name shown in `/readyz`, e.g. `"backplane"`.
    fn name(&self) -> &str;
    /// Whether the condition holds now. Called on the control-plane thread at each probe: it
    /// must not block (read an atomic, not the network).
    fn check(&self) -> Result<(), String>;
}

struct FnCheck<F> {
    name: String,
    f: F,
}

impl<F: Fn() -> Result<(), String> + Send + Sync + 'static> ReadinessCheck for FnCheck<F> {
    fn name(&self) -> &str {
        &self.name
    }
    fn check(&self) -> Result<(), String> {
        (self.f)()
    }
}

/// What the control plane exports beyond the node itself, and what readiness waits for.
/// Cheap to clone (shared parts).
#[derive(Clone, Default)]
pub struct Observability {
    collectors: Vec<Arc<dyn Collector>>,
    checks: Vec<Arc<dyn ReadinessCheck>>,
}

impl fmt::Debug for Observability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observability")
            .field("collectors", &self.collectors.len())
            .field("checks", &self.checks.iter().map(|c| c.name().to_owned()).collect::<Vec<_>>())
            .finish()
    }
}

impl Observability {
    /// Export more metrics at every scrape.
    pub fn add_collector(&mut self, collector: impl Collector) {
        self.collectors.push(Arc::new(collector));
    }

    /// Make readiness wait for `check`.
    pub fn add_readiness_check(
        &mut self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.checks.push(Arc::new(FnCheck { name: name.into(), f: check }));
    }

    /// A registry with the node's metrics, then every added collector.
    pub fn registry(&self, handle: &Handle, limits: NodeLimits) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(NodeCollector { handle: handle.clone(), limits }));
        for c in &self.collectors {
            registry.register_collector(Box::new(Shared(c.clone())));
        }
        registry
    }

    /// Evaluate readiness: the shards, then every added check.
    pub fn readiness(&self, handle: &Handle) -> Readiness {
        let mut checks = vec![CheckResult::from("shards", shards_ready(handle))];
        for c in &self.checks {
            checks.push(CheckResult::from(c.name(), c.check()));
        }
        Readiness { ready: checks.iter().all(|c| c.ok), checks }
    }
}

/// The `/readyz` answer.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Every check passed.
    pub ready: bool,
    /// Each check, in order.
    pub checks: Vec<CheckResult>,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CheckResult {
    fn from(name: &str, r: Result<(), String>) -> Self {
        CheckResult { name: name.to_owned(), ok: r.is_ok(), error: r.err() }
    }
}

/// Every shard accepts, recently ran its loop, and the node has room.
fn shards_ready(handle: &Handle) -> Result<(), String> {
    let mut problems = Vec::new();
    for (i, h) in handle.shard_health().iter().enumerate() {
        if !h.accepting {
            problems.push(format!("shard {i} is not accepting"));
        }
        match h.heartbeat_age {
            None => problems.push(format!("shard {i} has not started its loop")),
            Some(age) if age > HEARTBEAT_STALE => {
                problems.push(format!("shard {i} stalled: no loop pass for {age:.1?}"))
            }
            Some(_) => {}
        }
    }
    if handle.connections() >= handle.connections_max() {
        problems.push(format!("node full: {} connections (connections_max)", handle.connections()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Configured bounds exported beside their gauges, so alerts can use ratios.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeLimits {
    /// `Config::inbox_events_max`.
    pub inbox_events_max: usize,
    /// `Config::outbox_bytes_max` (per connection).
    pub outbox_bytes_max: usize,
}

#[derive(Debug)]
struct Shared(Arc<dyn Collector>);

impl Collector for Shared {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }
}

/// Reads the node at scrape time.
struct NodeCollector {
    handle: Handle,
    limits: NodeLimits,
}

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

pub(crate) fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

pub(crate) fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One gauge per shard, labelled `shard`.
fn shard_gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = i64>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (i, v) in values.enumerate() {
        let shard = i.to_string();
        ConstGauge::new(v).encode(m.encode_family(&[("shard", shard.as_str())])?)?;
    }
    Ok(())
}

/// One counter family with a `label` taking each value of `values`.
pub(crate) fn labelled_counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (v, n) in values {
        ConstCounter::new(*n).encode(m.encode_family(&[(label, *v)])?)?;
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &LatencySnapshot,
) -> fmt::Result {
    // Per-bucket (non-cumulative) counts: the encoder accumulates them into `le` buckets.
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| (LATENCY_BUCKETS_NS.get(i).map_or(f64::INFINITY, |ns| *ns as f64 / 1e9), *n))
        .collect();
    // The count is the buckets' total, so `+Inf` and `_count` always agree in one scrape.
    let count = h.buckets.iter().sum();
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum_ns as f64 / 1e9,
        count,
        &buckets,
        None,
    )
}

pub(crate) fn as_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let h = &self.handle;
        let shards = h.shard_metrics();
        let m = h.metrics();
        let e = &mut e;

        shard_gauges(
            e,
            "ringcast_connections",
            "Open WebSocket connections, per shard.",
            shards.iter().map(|c| c.connections_open as i64),
        )?;
        gauge(
            e,
            "ringcast_connections_max",
            "Connection limit of the node (after clamping to the open-file limit).",
            as_i64(h.connections_max()),
        )?;
        shard_gauges(
            e,
            "ringcast_shard_accepting",
            "1 when the shard is accepting connections (listening, accepts not paused).",
            h.shard_health().iter().map(|s| i64::from(s.accepting)),
        )?;
        counter(e, "ringcast_accepts", "TCP connections accepted.", m.connections_accepted)?;
        counter(
            e,
            "ringcast_accept_errors",
            "accept() failures (EMFILE...); accepting pauses 100 ms after each.",
            m.accept_errors,
        )?;
        labelled_counters(
            e,
            "ringcast_handshake_rejections",
            "Upgrades refused: full (node at connections_max, 503), unauthorized (token, 401), \
             forbidden (origin, 403), rate_limited (per-address handshake rate, 429), per_ip \
             (per-address connection limit, 429) or invalid (malformed, too large, timed out, \
             aborted, failed TLS handshake).",
            "reason",
            &[
                ("full", m.connections_refused_full),
                ("unauthorized", m.handshakes_unauthorized),
                ("forbidden", m.handshakes_forbidden),
                ("rate_limited", m.handshakes_rate_limited),
                ("per_ip", m.connections_refused_per_ip),
                (
                    "invalid",
                    m.handshakes_rejected.saturating_sub(
                        m.connections_refused_full
                            + m.handshakes_unauthorized
                            + m.handshakes_forbidden
                            + m.handshakes_rate_limited
                            + m.connections_refused_per_ip,
                    ),
                ),
            ],
        )?;
        counter(
            e,
            "ringcast_connections_authenticated",
            "Connections opened with a valid connect token (uid bound, grants applied).",
            m.connections_authenticated,
        )?;
        counter(
            e,
            "ringcast_token_expiry_closes",
            "Connections closed with 4001 because their token expired (after the grace).",
            m.token_expiry_closes,
        )?;
        counter(
            e,
            "ringcast_ip_table_evictions",
            "Per-address handshake-rate entries forgotten early to bound the table (a flood \
             from many addresses).",
            m.ip_table_evictions,
        )?;
        labelled_counters(
            e,
            "ringcast_tls_handshakes",
            "TLS handshakes on wss:// listeners: completed or failed.",
            "result",
            &[("completed", m.tls_handshakes), ("failed", m.tls_handshakes_failed)],
        )?;
        counter(
            e,
            "ringcast_tls_errors",
            "Established TLS sessions ended by a TLS error (bad record, decryption failure).",
            m.tls_errors,
        )?;
        labelled_counters(
            e,
            "ringcast_closes",
            "WebSocket connections closed, by reason.",
            "reason",
            &[
                ("peer", m.closes_by_peer),
                ("server", m.closes_by_server),
                ("slow_consumer", m.slow_consumer_disconnects),
                ("protocol_error", m.protocol_errors),
                ("idle_timeout", m.idle_timeouts),
                ("command_flood", m.command_flood_closes),
                ("aborted", m.connections_aborted),
            ],
        )?;
        counter(
            e,
            "ringcast_messages_received",
            "Messages received from clients.",
            m.messages_received,
        )?;
        counter(
            e,
            "ringcast_received_bytes",
            "Bytes read from client sockets (after the handshake).",
            m.bytes_received,
        )?;
        counter(
            e,
            "ringcast_deliveries",
            "Messages queued to a connection (one per recipient per message).",
            m.deliveries,
        )?;
        counter(
            e,
            "ringcast_written_bytes",
            "Bytes the kernel accepted from our writes.",
            m.bytes_written,
        )?;
        counter(
            e,
            "ringcast_frames_encoded",
            "Frames encoded (once per publish, whatever the fan-out).",
            m.frames_encoded,
        )?;
        counter(e, "ringcast_writes", "Vectored writes submitted.", m.writes)?;
        counter(
            e,
            "ringcast_frames_written",
            "Frames submitted in vectored writes (divide by ringcast_writes_total for frames \
             per write).",
            m.frames_written,
        )?;
        counter(
            e,
            "ringcast_slow_consumer_drops",
            "Messages skipped for a connection over outbox_bytes_max (drop policy).",
            m.slow_consumer_drops,
        )?;
        counter(
            e,
            "ringcast_slow_consumer_disconnects",
            "Connections closed with 1008 for exceeding outbox_bytes_max (disconnect policy).",
            m.slow_consumer_disconnects,
        )?;
        counter(
            e,
            "ringcast_mesh_dropped",
            "Cross-shard events lost because a shard inbox was full (inbox_events_max).",
            m.mesh_dropped,
        )?;
        counter(
            e,
            "ringcast_mesh_received",
            "Cross-shard events applied by shards.",
            m.mesh_received,
        )?;
        shard_gauges(
            e,
            "ringcast_inbox_events",
            "Events waiting in each shard's cross-shard inbox.",
            h.inbox_depths().into_iter().map(as_i64),
        )?;
        gauge(
            e,
            "ringcast_inbox_events_max",
            "Capacity of each shard's inbox (inbox_events_max).",
            as_i64(self.limits.inbox_events_max),
        )?;
        shard_gauges(
            e,
            "ringcast_outbox_bytes",
            "Bytes queued in the shard's outboxes, sampled every 250 ms.",
            shards.iter().map(|c| c.outbox_bytes as i64),
        )?;
        gauge(
            e,
            "ringcast_outbox_bytes_max",
            "Bound on one connection's outbox (outbox_bytes_max).",
            as_i64(self.limits.outbox_bytes_max),
        )?;
        let (groups, uids) = h.directory_sizes();
        gauge(
            e,
            "ringcast_groups",
            "Groups with at least one member on the node.",
            as_i64(groups),
        )?;
        gauge(
            e,
            "ringcast_uids",
            "Uids bound to at least one connection of the node.",
            as_i64(uids),
        )?;
        counter(e, "ringcast_commands_received", "Client commands received.", m.commands_received)?;
        counter(
            e,
            "ringcast_commands_rejected",
            "Client commands answered with an error (malformed, forbidden, refused).",
            m.commands_rejected,
        )?;
        counter(
            e,
            "ringcast_commands_rate_limited",
            "Client commands dropped by the per-connection rate limit.",
            m.commands_rate_limited,
        )?;
        counter(
            e,
            "ringcast_cluster_recoveries",
            "Clustered node: recovering joins answered recovered=true (history read in Redis).",
            m.recoveries,
        )?;
        counter(
            e,
            "ringcast_cluster_recoveries_failed",
            "Clustered node: recovering joins answered recovered=false.",
            m.recoveries_failed,
        )?;
        counter(
            e,
            "ringcast_cluster_recovery_held_dropped",
            "Clustered node: live messages dropped from a recovering member's hold past \
             history.recovery_held_messages_max.",
            m.recovery_held_dropped,
        )?;
        let mut latency = LatencySnapshot::default();
        for s in h.shard_fanout_latency() {
            latency += s;
        }
        histogram(
            e,
            "ringcast_fanout_latency_seconds",
            "Publish accepted by the node to the last write of it completed, one observation \
             per publish per shard that queued it.",
            &latency,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_checks_gate_readiness() {
        let mut obs = Observability::default();
        obs.add_readiness_check("backplane", || Err("not subscribed".into()));
        assert_eq!(obs.checks.len(), 1);
        assert_eq!(obs.checks[0].name(), "backplane");
        assert_eq!(obs.checks[0].check(), Err("not subscribed".to_owned()));
        assert!(format!("{obs:?}").contains("backplane"));
    }
}
