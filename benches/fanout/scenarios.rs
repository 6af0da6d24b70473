//! The scenario matrix, full and quick.

use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Kind {
    /// A fixed publish rate (messages per second, all publishers together).
    Fixed { rate: f64 },
    /// `--find-max`: the highest delivery rate whose p99 stays under the bound, stepping the
    /// publish rate up from `start_rate` by `factor` for at most `max_steps` steps.
    FindMax { p99_bound_ms: f64, start_rate: f64, factor: f64, max_steps: u32 },
    /// Resident memory per idle WebSocket connection.
    IdleRss,
    /// Connect storm: `ringcast-loadgen --connect-only` opens all connections as fast as the
    /// server takes them, `rounds` times (a fresh server each time).
    ConnectStorm { rounds: usize },
}

impl Kind {
    pub fn tag(&self) -> &'static str {
        match self {
            Kind::Fixed { .. } => "fixed_rate",
            Kind::FindMax { .. } => "find_max",
            Kind::IdleRss => "idle_rss",
            Kind::ConnectStorm { .. } => "connect_storm",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    /// File-name-safe identifier: `results/<name>.json`.
    pub name: String,
    pub kind: Kind,
    /// Subscriber connections (publishers are extra), or idle connections for `IdleRss`.
    pub subscribers: usize,
    pub payload: usize,
    /// Run length (fixed rate) or length of each find-max step; for `IdleRss`, how long the
    /// connections settle before RSS is read again.
    pub duration_s: f64,
    /// Unmeasured load before the first measured run/step (`--warmup`).
    pub warmup_s: f64,
    /// Longest wait for in-flight deliveries after the last send (`--drain-secs`).
    pub drain_s: f64,
    /// Hard limit for one load-generator (or idle-opener) process.
    pub timeout: Duration,
    /// `ringcast-loadgen --repeat`: the whole measurement this many times, median + spread.
    pub repeat: usize,
}

pub const PUBLISHERS: usize = 1;

pub fn payload_label(p: usize) -> String {
    if p >= 1024 && p % 1024 == 0 {
        format!("{}KiB", p / 1024)
    } else {
        format!("{p}B")
    }
}

pub fn payload_human(p: usize) -> String {
    if p >= 1024 && p % 1024 == 0 {
        format!("{} KiB", p / 1024)
    } else {
        format!("{p} B")
    }
}

impl Scenario {
    pub fn title(&self) -> String {
        let subs = thousands(self.subscribers as u64);
        let pl = payload_human(self.payload);
        match &self.kind {
            Kind::Fixed { rate } => format!("{subs} subscribers × {pl} @ {rate} msg/s"),
            Kind::FindMax { p99_bound_ms, .. } => {
                format!("{subs} subscribers × {pl}, find-max (p99 ≤ {p99_bound_ms} ms)")
            }
            Kind::IdleRss => format!("RSS per idle connection, {subs} connections"),
            Kind::ConnectStorm { .. } => format!("connect storm, {subs} connections"),
        }
    }
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Subscriber counts: (small, large).
pub fn sizes(quick: bool) -> (usize, usize) {
    if quick {
        (200, 1_000)
    } else {
        (1_000, 10_000)
    }
}

/// find-max bisections after the first confirmed failure (`--bisect-steps`): with 2× climbing
/// steps, 4 bisections leave the maximum bracketed within 2^(1/16) ≈ 4.4 %.
pub const BISECT_STEPS: usize = 4;

/// The fixed-rate latency scenario's delivery rate (deliveries/s) and subscribers.
pub fn high_rate(quick: bool) -> (f64, usize) {
    if quick {
        (200_000.0, 200)
    } else {
        (2_000_000.0, 1_000)
    }
}

/// Deliveries/s the first find-max step offers: low enough that the baseline meets the bound
/// there, so both servers have a best step (if a server misses the bound even there, the
/// harness retries once from a tenth of it).
pub const FIND_MAX_START_DELIVERIES: f64 = 10_000.0;

pub fn all(quick: bool) -> Vec<Scenario> {
    let (small, large) = sizes(quick);
    // (fixed run secs, find-max step secs, warm-up secs, drain secs, step factor, max steps,
    //  repetitions of the headline scenarios)
    let (fixed_secs, step_secs, warmup_s, drain_s, factor, max_steps, reps) =
        if quick { (2.0, 1.0, 0.5, 1.0, 3.0, 5, 2) } else { (10.0, 2.0, 1.0, 2.0, 2.0, 16, 3) };
    let rate = 20.0;
    let mut v = Vec::new();
    for &subs in &[small, large] {
        for &payload in &[64usize, 1024] {
            v.push(Scenario {
                name: format!("fixed-{subs}x{}", payload_label(payload)),
                kind: Kind::Fixed { rate },
                subscribers: subs,
                payload,
                duration_s: fixed_secs,
                warmup_s,
                drain_s,
                timeout: Duration::from_secs_f64(warmup_s + fixed_secs + drain_s + 90.0),
                repeat: 1,
            });
        }
    }
    // The headline fixed-rate latency: 2 M deliveries/s (1,000 subscribers × 2,000 msg/s).
    let (deliveries, subs) = high_rate(quick);
    let hr_secs = if quick { 2.0 } else { 5.0 };
    v.push(Scenario {
        name: format!("rate-{}-{subs}x64B", rate_label(deliveries)),
        kind: Kind::Fixed { rate: deliveries / subs as f64 },
        subscribers: subs,
        payload: 64,
        duration_s: hr_secs,
        warmup_s,
        drain_s,
        timeout: Duration::from_secs_f64((warmup_s + hr_secs + drain_s + 5.0) * reps as f64 + 90.0),
        repeat: reps,
    });
    for &subs in &[small, large] {
        for &payload in &[64usize, 1024] {
            // 50 ms for the small scenarios; 250 ms once each message fans out to 10,000.
            let p99_bound_ms = if subs == small { 50.0 } else { 250.0 };
            let start_rate = FIND_MAX_START_DELIVERIES / subs as f64;
            // Repetitions for the two headline scenarios of the results table.
            let headline = (subs == small && payload == 64) || (subs == large && payload == 1024);
            // (Quick mode: once; its fixed-rate scenario and connect storm still repeat.)
            let repeat = if headline && !quick { reps } else { 1 };
            let steps_max = max_steps as usize * 2 + BISECT_STEPS * 2;
            v.push(Scenario {
                name: format!("max-{subs}x{}", payload_label(payload)),
                kind: Kind::FindMax { p99_bound_ms, start_rate, factor, max_steps },
                subscribers: subs,
                payload,
                duration_s: step_secs,
                warmup_s,
                drain_s,
                timeout: Duration::from_secs_f64(
                    (warmup_s + (step_secs + drain_s + 1.0) * steps_max as f64) * repeat as f64
                        + 90.0,
                ),
                repeat,
            });
        }
    }
    v.push(Scenario {
        name: format!("idle-rss-{large}"),
        kind: Kind::IdleRss,
        subscribers: large,
        payload: 0,
        duration_s: 2.0,
        warmup_s: 0.0,
        drain_s: 0.0,
        timeout: Duration::from_secs(60),
        repeat: 1,
    });
    v.push(Scenario {
        name: format!("connect-{large}"),
        kind: Kind::ConnectStorm { rounds: reps },
        subscribers: large,
        payload: 64,
        duration_s: 0.0,
        warmup_s: 0.0,
        drain_s: 0.0,
        timeout: Duration::from_secs(90),
        repeat: 1,
    });
    v
}

/// `2M`, `200k`.
pub fn rate_label(r: f64) -> String {
    if r >= 1e6 && (r / 1e6).fract() == 0.0 {
        format!("{}M", r / 1e6)
    } else if r >= 1e3 && (r / 1e3).fract() == 0.0 {
        format!("{}k", r / 1e3)
    } else {
        format!("{r}")
    }
}
