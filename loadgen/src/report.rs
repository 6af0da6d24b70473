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
    /// Subscriber handshakes completed per second, from the first attempt to the last
    /// handshake (the connect-storm figure).
    pub handshakes_per_sec: f64,
    /// Per subscriber connection: first connect attempt to verified `101` response
    /// (retries included), in µs.
    pub latency_us: LatencyUs,
    /// Attempts beyond each connection's first (refused, reset, timed out, rejected).
    pub retries: u64,
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
    /// The busiest worker thread's own CPU seconds / wall seconds (one thread cannot use
    /// more than 1.0, whatever the process total says).
    pub busiest_thread_cores: f64,
    /// Generator CPU seconds (user + sys) per million deliveries received, which is also
    /// µs of generator CPU per delivery.
    pub s_per_million_deliveries: f64,
    /// True when the generator itself may have been the bottleneck: the process used
    /// ≥ 0.9 of its usable cores, or its busiest worker thread ≥ 0.9 of one core. The
    /// latency and the rate then describe the generator, not the server.
    pub saturated: bool,
}

/// The receive path the subscribers used.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct IoStats {
    /// `io_uring` (multishot recv, provided buffers) or `epoll`.
    pub path: String,
    /// Provided buffers consumed incrementally (`IOU_PBUF_RING_INC`, kernel ≥ 6.12).
    pub incremental_buffers: bool,
    /// The ring runs with `SINGLE_ISSUER | DEFER_TASKRUN`.
    pub defer_taskrun: bool,
    /// Longest a wait held completions back to batch wake-ups (µs; 0 = off or unsupported).
    /// Measured latencies include up to this much of the generator's own delay.
    pub recv_batch_us: u64,
    /// Provided buffers per worker and their size.
    pub buffers: u32,
    pub buffer_bytes: u32,
    /// Why epoll was used instead of io_uring, if it was.
    pub fallback_reason: Option<String>,
    /// Receive completions during the run/step, and mean bytes per completion.
    pub completions: u64,
    pub bytes_per_completion: f64,
    /// Completions that found the buffer ring empty (cumulative; each re-arms the receive).
    pub enobufs: u64,
}

/// One figure over the repetitions of `--repeat`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max - min) / median, in percent.
    pub spread_pct: f64,
    pub values: Vec<f64>,
}

impl Spread {
    /// Median (the lower middle value for an even count), min, max of `values`.
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self::default();
        }
        let median = v[(v.len() - 1) / 2];
        let (min, max) = (v[0], v[v.len() - 1]);
        let spread_pct = if median > 0.0 { 100.0 * (max - min) / median } else { 0.0 };
        Self { median, min, max, spread_pct, values: values.to_vec() }
    }
}

/// `repeat` object: the whole measurement ran `n` times over the same connections.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Repeat {
    pub n: usize,
    /// Which repetition (0-based) the top-level fields describe: the median one.
    pub reported: usize,
    /// Best (find-max) or measured deliveries/s of each repetition.
    pub deliveries_per_sec: Spread,
    pub p50_us: Spread,
    pub p99_us: Spread,
    pub s_per_million_deliveries: Spread,
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
    pub io: IoStats,
    /// find-max: how this step came about (`climb`, `retry` of a failed step, `bisect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_kind: Option<String>,
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
    /// Every step in the order run: climbing steps, retries of failed steps, bisections.
    pub steps: Vec<RunStats>,
    pub best: Option<RunStats>,
    /// Lowest offered rate (msg/s) that failed twice in a row, if any: the maximum lies
    /// between `best.rate` and this.
    pub failed_rate: Option<f64>,
}

/// The whole report: top-level fields describe the run (or find-max's best / last step).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    #[serde(flatten)]
    pub run: RunStats,
    pub find_max: Option<FindMax>,
    /// `--connect-only`: connections were opened and closed, nothing published.
    pub connect_only: bool,
    /// `--repeat N` with N > 1: the spread over repetitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Repeat>,
}

impl Report {
    /// The one-line JSON object of `--json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// The human-readable table printed without `--json`.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if self.connect_only {
            let c = &self.run.connect;
            let l = &c.latency_us;
            let _ = writeln!(s, "  {:<22} {}", "target", self.run.url);
            let _ = writeln!(
                s,
                "  {:<22} {} ok, {} failed, {} retries in {:.2} s = {:.0} handshakes/s",
                "connect storm", c.ok, c.failed, c.retries, c.secs, c.handshakes_per_sec
            );
            let _ = writeln!(
                s,
                "  {:<22} p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                "connect latency (ms)",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            );
            return s;
        }
        if let Some(r) = &self.repeat {
            let d = &r.deliveries_per_sec;
            let _ = writeln!(
                s,
                "repeat x{}: deliveries/s median {:.0} (min {:.0}, max {:.0}, spread {:.1}%), \
                 p99 median {:.3} ms, generator CPU {:.2} µs/delivery; details of repetition {}:",
                r.n,
                d.median,
                d.min,
                d.max,
                d.spread_pct,
                r.p99_us.median / 1000.0,
                r.s_per_million_deliveries.median,
                r.reported + 1
            );
        }
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
                    "  {:>12.1} {:>12} {:>14.0} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>6} {}",
                    st.rate,
                    st.expected,
                    st.deliveries_per_sec,
                    ms(st.latency_us.p50),
                    ms(st.latency_us.p99),
                    ms(st.latency_us.max),
                    st.lost,
                    if st.extra.met_bounds { "yes" } else { "no" },
                    st.step_kind.as_deref().unwrap_or("")
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
            "user {:.2} s, sys {:.2} s over {:.2} s wall = {:.2} cores ({} threads, busiest \
             {:.2}); {:.2} s per million deliveries",
            c.user_s,
            c.sys_s,
            c.wall_s,
            c.cores_used,
            c.threads,
            c.busiest_thread_cores,
            c.s_per_million_deliveries
        ),
    );
    let io = &r.io;
    row(
        "receive path",
        if io.path == "io_uring" {
            format!(
                "io_uring multishot recv, {} x {} KiB provided buffers{}{}, batch {} µs; \
                 {:.0} B/completion, {} ENOBUFS",
                io.buffers,
                io.buffer_bytes / 1024,
                if io.incremental_buffers { ", incremental" } else { "" },
                if io.defer_taskrun { ", DEFER_TASKRUN" } else { "" },
                io.recv_batch_us,
                io.bytes_per_completion,
                io.enobufs
            )
        } else {
            format!("epoll ({})", io.fallback_reason.as_deref().unwrap_or("?"))
        },
    );
    if c.saturated {
        let _ = writeln!(
            s,
            "WARNING: the load generator itself was saturated ({:.2} cores busy of {} threads, \
             busiest thread {:.2}): these numbers measure the generator, not the server.",
            c.cores_used, c.threads, c.busiest_thread_cores
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
