//! The backplane in `/metrics`: state, queue depths and bounds (in messages), drops by reason,
//! bad bus input by reason, and the traffic counters. Read at scrape time from the atomics the
//! cluster task already keeps (no lock but the short subscription-table one for its size).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::{BackplaneState, Cluster};
use crate::observe::{as_i64, counter, gauge, labelled_counters};

#[derive(Debug)]
pub(crate) struct ClusterCollector(pub(crate) Cluster);

impl Collector for ClusterCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let e = &mut e;
        let st = self.0.status();
        let c = &st.counters;
        let mut m = e.encode_descriptor(
            "ringcast_cluster_backplane_state",
            "1 for the backplane's current state (connecting, up, down), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for (name, s) in [
            ("connecting", BackplaneState::Connecting),
            ("up", BackplaneState::Up),
            ("down", BackplaneState::Down),
        ] {
            ConstGauge::new(i64::from(st.state == s))
                .encode(m.encode_family(&[("state", name)])?)?;
        }
        gauge(
            e,
            "ringcast_cluster_ready",
            "1 when the backplane is connected and this node's channels are subscribed (the \
             backplane check of /readyz).",
            i64::from(self.0.is_ready()),
        )?;
        gauge(
            e,
            "ringcast_cluster_nodes",
            "Live nodes in presence (this one included).",
            as_i64(st.nodes.len()),
        )?;
        gauge(
            e,
            "ringcast_cluster_subscriptions",
            "Redis channels subscribed (or lingering before an unsubscribe).",
            as_i64(st.subscriptions as usize),
        )?;
        gauge(
            e,
            "ringcast_cluster_subscriptions_pending",
            "Redis channels wanted but not subscribed yet.",
            as_i64(st.subscriptions_pending as usize),
        )?;
        let (out, out_max) = self.0.outbound_queue();
        gauge(
            e,
            "ringcast_cluster_outbound_messages",
            "Local publishes waiting to go to Redis.",
            as_i64(out),
        )?;
        gauge(
            e,
            "ringcast_cluster_outbound_messages_max",
            "Bound of the outbound queue (cluster.outbound_messages_max).",
            as_i64(out_max),
        )?;
        let (hist, hist_max) = self.0.history_queue();
        gauge(
            e,
            "ringcast_cluster_history_jobs",
            "History appends and reads waiting for the cluster task (history kept in Redis).",
            as_i64(hist),
        )?;
        gauge(
            e,
            "ringcast_cluster_history_jobs_max",
            "Bound of the history job queue (cluster.outbound_messages_max jobs).",
            as_i64(hist_max),
        )?;
        let (inb, inb_max) = self.0.inbound_queue();
        gauge(
            e,
            "ringcast_cluster_inbound_messages",
            "Messages from Redis waiting to be applied on this node.",
            as_i64(inb),
        )?;
        gauge(
            e,
            "ringcast_cluster_inbound_messages_max",
            "Bound of the inbound queue (cluster.inbound_messages_max).",
            as_i64(inb_max),
        )?;
        labelled_counters(
            e,
            "ringcast_cluster_messages_dropped",
            "Messages that did not cross nodes, by reason: outbound_full (outbound queue at its \
             bound), publish_failed (Redis down or failing), inbound_full (inbound queue at its \
             bound).",
            "reason",
            &[
                ("outbound_full", c.outbound_dropped),
                ("publish_failed", c.publish_failed),
                ("inbound_full", c.inbound_dropped),
            ],
        )?;
        labelled_counters(
            e,
            "ringcast_cluster_bus_rejected",
            "Bad bus input dropped, by reason: version (another format version), malformed \
             (truncated, bad names or frame), unknown_node (sender absent from presence, or a \
             client of another node).",
            "reason",
            &[
                ("version", c.rejected_version),
                ("malformed", c.rejected_malformed),
                ("unknown_node", c.rejected_unknown_node),
            ],
        )?;
        for (name, help, v) in [
            ("ringcast_cluster_published", "Messages sent to Redis (one per publish and channel).", c.published),
            ("ringcast_cluster_received", "Bus messages received from Redis.", c.received),
            ("ringcast_cluster_delivered", "Remote publishes handed to this node's shards.", c.delivered),
            (
                "ringcast_cluster_skipped_duplicate",
                "Remote publishes received on a second channel of the same message, not delivered again.",
                c.skipped_duplicate,
            ),
            ("ringcast_cluster_subscribes", "Channels subscribed.", c.subscribes),
            ("ringcast_cluster_unsubscribes", "Channels unsubscribed.", c.unsubscribes),
            ("ringcast_cluster_disconnects", "Times the backplane went down.", c.disconnects),
            ("ringcast_cluster_reconnects", "Times it came back (everything re-subscribed).", c.reconnects),
            ("ringcast_cluster_queries", "Cluster-wide queries asked by this node.", c.queries),
            (
                "ringcast_cluster_query_nodes_missing",
                "Nodes that did not answer a query in time (summed over queries).",
                c.query_nodes_missing,
            ),
            ("ringcast_cluster_queries_answered", "Queries from other nodes answered.", c.queries_answered),
            ("ringcast_cluster_node_id_clashes", "Another live process claimed this node's id.", c.node_id_clashes),
            ("ringcast_cluster_history_appends", "Messages appended to a group's history in Redis.", c.history_appends),
            (
                "ringcast_cluster_history_append_failed",
                "History appends that failed (Redis down or erroring): those messages reached nobody through their groups with history; the publisher was told.",
                c.history_append_failed,
            ),
            ("ringcast_cluster_history_reads", "History reads made in Redis (recoveries, history commands, the HTTP API).", c.history_reads),
            (
                "ringcast_cluster_history_read_failed",
                "History reads that failed (Redis down or erroring, or the group's channel not subscribed in time).",
                c.history_read_failed,
            ),
            ("ringcast_cluster_history_jobs_dropped", "History jobs refused because their queue was full.", c.history_jobs_dropped),
            (
                "ringcast_cluster_history_answers_dropped",
                "History answers to a shard dropped after its inbox stayed full for a second.",
                c.history_answers_dropped,
            ),
        ] {
            counter(e, name, help, v)?;
        }
        Ok(())
    }
}
