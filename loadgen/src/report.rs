//! The run report: the `--json` schema of `docs/loadgen-contract.md`, plus a human table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Connect phase results (subscriber connections).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectStats {
    /// Subscriber connections that completed the WebSocket handshake.
    pub ok: u64,
    /// Subscriber connections that failed after all retries.
    pub failed: u64,
    /// Seconds from the first connect attempt until every connection was open or failed.
    pub secs: f64,
}

/// Fan-out latency percentiles in microseconds (receive time - send time).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct LatencyUs {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// The generator's own CPU use during the measured step.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuStats {
    pub user_s: f64,
    pub sys_s: f64,
    pub wall_s: f64,
    /// (user + sys) / wall.
    pub cores_used: f64,
    pub threads: usize,
    /// True when the generator itself was the bottleneck (cores_used >= 0.9 x usable cores).
    pub saturated: bool,
}

/// One measured run (or find-max step): every top-level field of the contract but find_max.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunStats {
    pub url: String,
    pub connections: usize,
    pub publishers: usize,
    /// Offered rate (messages/s, all publishers together) of this run.
    pub rate: f64,
    pub duration_s: f64,
    pub payload: usize,
    pub connect: ConnectStats,
    /// Messages sent by the publishers.
    pub sent: u64,
    /// Deliveries expected: each message times the subscribers that should get it.
    pub expected: u64,
    /// Deliveries received (duplicates included).
    pub received: u64,
    pub deliveries_per_sec: f64,
    pub latency_us: LatencyUs,
    /// expected - distinct deliveries received.
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub cpu: CpuStats,
    /// HTTP push API responses; present only when publishing over HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpStats>,
    /// Groups-mode facts; present only in groups mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<GroupStats>,
    /// Diagnostics for the human table only (not part of the JSON contract).
    #[serde(skip)]
    pub extra: Extra,
}

/// What the HTTP push API answered during one run / step (`"http"` in the JSON).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct HttpStats {
    /// Request form: `seed`, `json` or `batch`.
    pub form: String,
    /// Messages per request (1 except for the batch form).
    pub batch_size: usize,
    /// Requests written during the step.
    pub requests: u64,
    /// Responses read during the step (pipelined responses to the previous step's last
    /// requests may land in the next step).
    pub responses: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Responses with any other status: refused pushes.
    pub errors: u64,
    /// Responses by status code, e.g. `{"200": 950, "503": 50}`.
    pub status: BTreeMap<String, u64>,
    /// Sum of the `"queued":N` numbers in 2xx bodies (recipients the server queued for).
    pub queued: u64,
    /// `"error"` members inside 2xx bodies (e.g. refused publishes of a batch).
    pub item_errors: u64,
    /// HTTP connections the server closed during the step.
    pub connections_closed: u64,
    /// Connections whose responses could not be parsed (counting stopped there).
    pub unparsable: u64,
}

/// Groups-mode facts (`"groups"` in the JSON).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct GroupStats {
    /// Number of groups.
    pub count: usize,
    /// Fewest / most subscriber connections per group (among those that connected).
    pub members_min: u64,
    pub members_max: u64,
    /// `{"type":"error",..}` frames received by subscribers since connecting (e.g. a refused
    /// `add_group`): cumulative over the whole run, not per step.
    pub error_replies_subscribers: u64,
    /// `{"type":"error",..}` frames received by publisher connections since connecting (e.g.
    /// a rate-limited `send_to_group`): cumulative.
    pub error_replies_publishers: u64,
    /// The first error frame seen (up to 200 bytes).
    pub first_error: Option<String>,
}

/// Human-only diagnostics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extra {
    /// Largest lateness of a publisher send against its schedule.
    pub max_send_lag_ms: f64,
    /// Subscriber connections closed during the step.
    pub disconnected: u64,
    /// HTTP publish responses (2xx, other) when publishing over HTTP (also in `RunStats::http`).
    pub http: Option<(u64, u64)>,
    /// Whether this step met the find-max bounds.
    pub met_bounds: bool,
}

/// `find_max` object of the contract.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FindMax {
    pub p99_bound_ms: f64,
    pub steps: Vec<RunStats>,
    pub best: Option<RunStats>,
}

/// The whole report: top-level fields describe the run (or find-max's best / last step).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    #[serde(flatten)]
    pub run: RunStats,
    pub find_max: Option<FindMax>,
}

impl Report {
    /// The one-line JSON object of `--json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// The human-readable table printed without `--json`.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if let Some(fm) = &self.find_max {
            let _ = writeln!(s, "find-max: p99 bound {} ms, >= 99% delivered", fm.p99_bound_ms);
            let _ = writeln!(
                s,
                "  {:>12} {:>12} {:>14} {:>9} {:>9} {:>9} {:>8} {:>6}",
                "rate msg/s",
                "expected",
                "deliveries/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "lost",
                "ok"
            );
            for st in &fm.steps {
                let _ = writeln!(
                    s,
                    "  {:>12.1} {:>12} {:>14.0} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>6}",
                    st.rate,
                    st.expected,
                    st.deliveries_per_sec,
                    ms(st.latency_us.p50),
                    ms(st.latency_us.p99),
                    ms(st.latency_us.max),
                    st.lost,
                    if st.extra.met_bounds { "yes" } else { "no" }
                );
            }
            match &fm.best {
                Some(b) => {
                    let _ = writeln!(
                        s,
                        "highest sustainable: {:.0} deliveries/s at {:.1} msg/s offered",
                        b.deliveries_per_sec, b.rate
                    );
                }
                None => {
                    let _ = writeln!(s, "no step met the bounds; details of the last step:");
                }
            }
            s.push('\n');
        }
        s.push_str(&human_run(&self.run));
        s
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn human_run(r: &RunStats) -> String {
    let mut s = String::new();
    let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "  {k:<22} {v}");
    };
    row("target", r.url.clone());
    row(
        "load",
        format!(
            "{} subscribers, {} publisher(s), {:.1} msg/s for {:.1} s, {} B payload",
            r.connections, r.publishers, r.rate, r.duration_s, r.payload
        ),
    );
    row(
        "connect",
        format!("{} ok, {} failed in {:.2} s", r.connect.ok, r.connect.failed, r.connect.secs),
    );
    row("messages sent", r.sent.to_string());
    row(
        "deliveries",
        format!(
            "{} received of {} expected ({:.3}%)",
            r.received,
            r.expected,
            pct(r.received, r.expected)
        ),
    );
    row("deliveries/s", format!("{:.0}", r.deliveries_per_sec));
    let l = &r.latency_us;
    row(
        "latency (ms)",
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            l.mean / 1000.0
        ),
    );
    row("lost / dup / reordered", format!("{} / {} / {}", r.lost, r.duplicates, r.reordered));
    if r.extra.disconnected > 0 {
        row(
            "disconnected",
            format!("{} subscriber(s) closed during the run", r.extra.disconnected),
        );
    }
    if let Some(h) = &r.http {
        let status: Vec<String> = h.status.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        row(
            "http",
            format!(
                "{} form x{}: {} requests, {} responses ({} 2xx, {} other{}), queued {}",
                h.form,
                h.batch_size,
                h.requests,
                h.responses,
                h.ok,
                h.errors,
                if status.is_empty() { String::new() } else { format!("; {}", status.join(", ")) },
                h.queued
            ),
        );
        if h.item_errors > 0 || h.connections_closed > 0 || h.unparsable > 0 {
            row(
                "http problems",
                format!(
                    "{} refused items in 2xx bodies, {} connections closed, {} unparsable",
                    h.item_errors, h.connections_closed, h.unparsable
                ),
            );
        }
    }
    if let Some(g) = &r.groups {
        row(
            "groups",
            format!("{} groups of {}..{} subscribers", g.count, g.members_min, g.members_max),
        );
        if g.error_replies_subscribers + g.error_replies_publishers > 0 {
            row(
                "error replies",
                format!(
                    "{} to subscribers, {} to publishers; first: {}",
                    g.error_replies_subscribers,
                    g.error_replies_publishers,
                    g.first_error.as_deref().unwrap_or("?")
                ),
            );
        }
    }
    row("max send lag", format!("{:.3} ms behind schedule", r.extra.max_send_lag_ms));
    let c = &r.cpu;
    row(
        "generator cpu",
        format!(
            "user {:.2} s, sys {:.2} s over {:.2} s wall = {:.2} cores ({} threads)",
            c.user_s, c.sys_s, c.wall_s, c.cores_used, c.threads
        ),
    );
    if c.saturated {
        let _ = writeln!(
            s,
            "WARNING: the load generator itself was saturated ({:.2} cores busy of {} threads): \
             these numbers measure the generator, not the server.",
            c.cores_used, c.threads
        );
    }
    if r.extra.max_send_lag_ms > 100.0 {
        let _ = writeln!(
            s,
            "WARNING: publishers fell {:.0} ms behind schedule (sent late, never skipped).",
            r.extra.max_send_lag_ms
        );
    }
    if let Some(h) = r.http.as_ref().filter(|h| h.errors + h.item_errors + h.unparsable > 0) {
        let _ = writeln!(
            s,
            "WARNING: the HTTP push API refused {} request(s) and {} batch item(s){}.",
            h.errors,
            h.item_errors,
            if h.unparsable > 0 { " (some responses could not be parsed)" } else { "" }
        );
    }
    s
}
