//! The history and idempotency metrics on `/metrics`: a prometheus-client collector the daemon
//! adds with [`crate::observe::Observability::add_collector`]. It reads the backend's counters
//! (relaxed atomics) at scrape time, on the control-plane thread; nothing per publish.
//!
//! History series are exported only when some group keeps a history (a node without rules has
//! no history to describe); the idempotency series always (any node takes keyed publishes).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::observe::{counter, gauge, labelled_counters};
use crate::Handle;

/// Exports [`super::HistoryCounters`] of a running node.
pub struct HistoryCollector {
    handle: Handle,
    bytes_max: usize,
    groups_max: usize,
}

impl HistoryCollector {
    /// A collector over `handle`'s history, with the configured bounds exported beside their
    /// gauges (for ratio alerts).
    pub fn new(handle: Handle, config: &super::HistoryConfig) -> Self {
        HistoryCollector { handle, bytes_max: config.bytes_max, groups_max: config.groups_max }
    }
}

impl fmt::Debug for HistoryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryCollector").finish_non_exhaustive()
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for HistoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let h = self.handle.history_counters();
        let e = &mut encoder;
        if self.handle.history_enabled() {
            counter(
                e,
                "ringcast_history_appends",
                "Messages appended to a group's history (one per group with history per publish).",
                h.history_messages_stored,
            )?;
            gauge(
                e,
                "ringcast_history_bytes",
                "Bytes all histories hold now.",
                int(h.history_bytes),
            )?;
            gauge(
                e,
                "ringcast_history_bytes_max",
                "Bound on the bytes all histories may hold (history.bytes_max).",
                int(self.bytes_max as u64),
            )?;
            gauge(
                e,
                "ringcast_history_groups",
                "Groups with a history now.",
                int(h.history_groups),
            )?;
            gauge(
                e,
                "ringcast_history_groups_max",
                "Bound on the groups with a history (history.groups_max).",
                int(self.groups_max as u64),
            )?;
            let by_bytes = h.history_messages_evicted_bytes;
            labelled_counters(
                e,
                "ringcast_history_evictions",
                "Messages evicted from histories, by the bound that evicted them (count or age \
                 of their rule, or history.bytes_max).",
                "reason",
                &[
                    ("count_or_age", h.history_messages_evicted.saturating_sub(by_bytes)),
                    ("bytes", by_bytes),
                ],
            )?;
            counter(
                e,
                "ringcast_history_groups_evicted",
                "Groups forgotten to stay within history.groups_max (their next message starts a \
                 new epoch).",
                h.history_groups_evicted,
            )?;
            labelled_counters(
                e,
                "ringcast_history_recoveries",
                "Joins and history reads from a position: ok (everything after it was returned) \
                 or failed (recovered: false).",
                "result",
                &[("ok", h.history_recovered), ("failed", h.history_unrecovered)],
            )?;
        }
        counter(
            e,
            "ringcast_idempotency_duplicates",
            "Keyed publishes answered as duplicates (not delivered again).",
            h.idempotency_duplicates,
        )?;
        counter(
            e,
            "ringcast_idempotency_keys_evicted",
            "Idempotency keys forgotten before their window passed (history.idempotency_keys_max).",
            h.idempotency_keys_evicted,
        )?;
        gauge(
            e,
            "ringcast_idempotency_keys",
            "Idempotency keys remembered now.",
            int(h.idempotency_keys),
        )?;
        Ok(())
    }
}
