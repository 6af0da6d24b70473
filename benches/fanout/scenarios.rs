//! The scenario matrix, full and quick.

use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Kind {
    /// A fixed publish rate (messages per second, all publishers together).
    Fixed { rate: f64 },
    /// `--find-max`: the highest delivery rate whose p99 stays under the bound.
    FindMax { p99_bound_ms: f64, max_steps: u32 },
    /// Resident memory per idle WebSocket connection.
    IdleRss,
}

impl Kind {
    pub fn tag(&self) -> &'static str {
        match self {
            Kind::Fixed { .. } => "fixed_rate",
            Kind::FindMax { .. } => "find_max",
            Kind::IdleRss => "idle_rss",
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
    /// Run length (fixed rate) or length of each find-max step.
    pub duration_s: f64,
    /// Hard limit for one load-generator (or idle-opener) process.
    pub timeout: Duration,
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

pub fn all(quick: bool) -> Vec<Scenario> {
    let (small, large) = sizes(quick);
    let fixed_secs = if quick { 3.0 } else { 10.0 };
    let step_secs = if quick { 1.0 } else { 3.0 };
    let max_steps = if quick { 4 } else { 12 };
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
                timeout: Duration::from_secs_f64(fixed_secs * 3.0 + 60.0),
            });
        }
    }
    for &subs in &[small, large] {
        for &payload in &[64usize, 1024] {
            // 50 ms for the small scenarios; 250 ms once each message fans out to 10,000.
            let p99_bound_ms = if subs == small { 50.0 } else { 250.0 };
            v.push(Scenario {
                name: format!("max-{subs}x{}", payload_label(payload)),
                kind: Kind::FindMax { p99_bound_ms, max_steps },
                subscribers: subs,
                payload,
                duration_s: step_secs,
                timeout: Duration::from_secs_f64(
                    (step_secs + 5.0) * f64::from(max_steps) * 2.0 + 60.0,
                ),
            });
        }
    }
    v.push(Scenario {
        name: format!("idle-rss-{large}"),
        kind: Kind::IdleRss,
        subscribers: large,
        payload: 0,
        duration_s: 2.0,
        timeout: Duration::from_secs(60),
    });
    v
}
