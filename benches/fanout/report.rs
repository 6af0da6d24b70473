//! Results: ratios, the README (tables, goals, charts, commands) and validation of the JSON.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::charts::{self, fmt_us, human, Series};
use crate::scenarios::{self, Kind, Scenario};
use crate::{procs, Config};

/// Facts about the machine and the tree, gathered once.
pub struct Meta {
    pub git_commit: String,
    pub cores: String,
    pub cpu_model: String,
    pub kernel: String,
    pub memory: String,
}

fn command_output(cmd: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(cmd).args(args).current_dir(dir).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Meta {
    pub fn collect(cfg: &Config) -> Meta {
        let ws = &cfg.workspace;
        let mut git_commit =
            command_output("git", &["rev-parse", "HEAD"], ws).unwrap_or_else(|| "unknown".into());
        if let Some(st) =
            command_output("git", &["status", "--porcelain", "--untracked-files=no"], ws)
        {
            if !st.is_empty() {
                git_commit.push_str(" (plus uncommitted changes)");
            }
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
            })
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        Meta {
            git_commit,
            cores: command_output("nproc", &["--all"], ws).unwrap_or_else(|| "unknown".into()),
            cpu_model,
            kernel: command_output("uname", &["-r"], ws).unwrap_or_else(|| "unknown".into()),
            memory,
        }
    }

    pub fn machine_json(&self) -> Value {
        json!({
            "cores": self.cores,
            "cpu_model": self.cpu_model,
            "kernel": self.kernel,
            "memory": self.memory,
        })
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ---- reading runs -------------------------------------------------------------------------

fn f(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

/// The loadgen report of a run (`None` if the run failed).
fn report(run: &Value) -> Option<&Value> {
    run.get("report").filter(|r| r.is_object())
}

/// For find-max runs: did some step meet the bound?
pub fn met_bound(run: &Value) -> Option<bool> {
    let fm = report(run)?.get("find_max")?;
    if fm.is_null() {
        return None;
    }
    Some(!fm.get("best").is_none_or(Value::is_null))
}

/// Deliveries/s of a run; for find-max the best step's (None if no step met the bound).
pub fn dps(run: &Value) -> Option<f64> {
    let r = report(run)?;
    match met_bound(run) {
        Some(false) => None,
        _ => f(r, "/deliveries_per_sec"),
    }
}

/// A find-max step met the load generator's bounds: p99 within the bound and at least 99% of
/// the expected deliveries received (the loadgen's own rule; it does not print the verdict).
pub fn step_ok(step: &Value, bound_ms: f64) -> bool {
    let expected = f(step, "/expected").unwrap_or(0.0);
    expected > 0.0
        && f(step, "/latency_us/p99").is_some_and(|p| p <= bound_ms * 1000.0)
        && f(step, "/received").is_some_and(|r| r >= 0.99 * expected)
}

/// For find-max runs: every step met the bounds, so the search stopped at its step limit and
/// the server's real maximum is higher than the best step.
pub fn hit_step_limit(run: &Value) -> Option<bool> {
    let fm = report(run)?.get("find_max").filter(|v| v.is_object())?;
    let bound = f(fm, "/p99_bound_ms")?;
    let steps = fm.get("steps")?.as_array()?;
    Some(!steps.is_empty() && steps.iter().all(|s| step_ok(s, bound)))
}

/// Deliveries the load generator measured over the whole run: every find-max step, or the one
/// fixed-rate run (warm-up excluded).
fn measured_deliveries(run: &Value) -> Option<f64> {
    let r = report(run)?;
    match r.pointer("/find_max/steps").and_then(Value::as_array) {
        Some(steps) => Some(steps.iter().filter_map(|st| f(st, "/received")).sum()),
        None => f(r, "/received"),
    }
}

fn lat(run: &Value, p: &str) -> Option<f64> {
    f(report(run)?, &format!("/latency_us/{p}"))
}

fn lost(run: &Value) -> Option<f64> {
    f(report(run)?, "/lost")
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Median, min, max and spread of `values` as JSON (`null` when empty).
pub fn spread_json(values: &[f64]) -> Value {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Value::Null;
    }
    let median = v[(v.len() - 1) / 2];
    let (min, max) = (v[0], v[v.len() - 1]);
    json!({
        "median": median,
        "min": min,
        "max": max,
        "spread_pct": if median > 0.0 { 100.0 * (max - min) / median } else { 0.0 },
        "values": values,
    })
}

/// The servers of a result document, in table order.
pub const SERVERS: [&str; 4] = ["ringcast", "baseline", "node-ws", "python-websockets"];

pub fn ratios(sc: &Scenario, ringcast: &Value, baseline: &Value) -> Value {
    match sc.kind {
        Kind::ConnectStorm { .. } => json!({
            "handshakes_per_sec": div(
                f(ringcast, "/handshakes_per_sec/median"),
                f(baseline, "/handshakes_per_sec/median"),
            ),
        }),
        Kind::IdleRss => json!({
            "kib_per_connection_baseline_over_ringcast": div(
                f(baseline, "/kib_per_connection"),
                f(ringcast, "/kib_per_connection").map(|v| v.max(0.001)),
            ),
        }),
        _ => json!({
            "deliveries_per_sec": div(dps(ringcast), dps(baseline)),
            "p99_baseline_over_ringcast": div(lat(baseline, "p99"), lat(ringcast, "p99")),
            // When ringcast never broke the bound the ratio is a lower bound.
            "ringcast_hit_step_limit": hit_step_limit(ringcast),
            "baseline_hit_step_limit": hit_step_limit(baseline),
        }),
    }
}

pub fn one_line_summary(doc: &Value) -> String {
    let mut s = String::new();
    for server in SERVERS {
        let run = &doc[server];
        if let Some(err) = run.get("error").and_then(Value::as_str) {
            let first = err.lines().next().unwrap_or("");
            let _ = write!(s, "{server}: ERROR {first}; ");
            continue;
        }
        if let Some(why) = run.get("skipped").and_then(Value::as_str) {
            let _ = write!(s, "{server}: skipped ({why}); ");
            continue;
        }
        if doc["kind"] == "connect_storm" {
            let _ = write!(
                s,
                "{server}: {:.0} handshakes/s, connect p99 {}; ",
                f(run, "/handshakes_per_sec/median").unwrap_or(f64::NAN),
                f(run, "/connect_p99_us/median").map(fmt_us).unwrap_or_default()
            );
        } else if doc["kind"] == "idle_rss" {
            let _ = write!(
                s,
                "{server}: {:.2} KiB/conn; ",
                f(run, "/kib_per_connection").unwrap_or(f64::NAN)
            );
        } else {
            let _ = write!(
                s,
                "{server}: {} deliveries/s p99 {} lost {}; ",
                dps(run).map(human).unwrap_or_else(|| "none met bound".into()),
                lat(run, "p99").map(fmt_us).unwrap_or_default(),
                lost(run).unwrap_or(f64::NAN)
            );
        }
    }
    s
}

// ---- README -------------------------------------------------------------------------------

fn load_docs(cfg: &Config) -> Vec<(Scenario, Option<Value>)> {
    scenarios::all(cfg.quick)
        .into_iter()
        .map(|sc| {
            let path = cfg.out_dir.join(format!("{}.json", sc.name));
            let doc = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            (sc, doc)
        })
        .collect()
}

fn opt(v: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    v.map(fmt).unwrap_or_else(|| "—".into())
}

fn ratio_s(v: Option<f64>) -> String {
    opt(v, |r| if r >= 10.0 { format!("{r:.1}×") } else { format!("{r:.2}×") })
}

/// The find-max ratio cell: `≥` when ringcast never broke the bound (its real maximum is
/// higher), `≤` when the baseline never did.
fn fm_ratio_s(d: &Value) -> String {
    let r = f(d, "/ratio/deliveries_per_sec");
    let rc_limit = d.pointer("/ratio/ringcast_hit_step_limit").and_then(Value::as_bool);
    let bl_limit = d.pointer("/ratio/baseline_hit_step_limit").and_then(Value::as_bool);
    match (r, rc_limit, bl_limit) {
        (None, _, _) => "—".into(),
        (Some(_), Some(true), Some(true)) => format!("{} (both hit the step limit)", ratio_s(r)),
        (Some(_), Some(true), _) => format!("≥ {}", ratio_s(r)),
        (Some(_), _, Some(true)) => format!("≤ {}", ratio_s(r)),
        _ => ratio_s(r),
    }
}

/// Goal check for a find-max ratio: a lower bound below the target is inconclusive.
fn fm_goal(d: Option<&Value>, target: f64) -> Option<bool> {
    let d = d?;
    let r = f(d, "/ratio/deliveries_per_sec")?;
    let rc_limit = d.pointer("/ratio/ringcast_hit_step_limit").and_then(Value::as_bool);
    let bl_limit = d.pointer("/ratio/baseline_hit_step_limit").and_then(Value::as_bool);
    match (r >= target, rc_limit, bl_limit) {
        (true, _, Some(true)) => None,
        (false, Some(true), _) => None,
        (met, _, _) => Some(met),
    }
}

fn run_cell_error(run: &Value) -> Option<String> {
    run.get("error").and_then(Value::as_str).map(|e| {
        let first = e.lines().next().unwrap_or("error");
        format!("error: {}", first.replace('|', "\\|"))
    })
}

fn latency_triplet(run: &Value) -> String {
    if let Some(e) = run_cell_error(run) {
        return e;
    }
    format!(
        "{} / {} / {}",
        opt(lat(run, "p50"), fmt_us),
        opt(lat(run, "p99"), fmt_us),
        opt(lat(run, "p999"), fmt_us)
    )
}

fn check(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "?",
    }
}

/// Distinct values of a string field over all result files, in scenario order.
fn distinct(docs: &[(Scenario, Option<Value>)], key: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in docs.iter().filter_map(|(_, d)| d.as_ref()?.get(key)?.as_str().map(str::to_string)) {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

pub fn write_readme(cfg: &Config, meta: &Meta, elapsed: Option<Duration>) -> Result<()> {
    let docs = load_docs(cfg);
    let doc_of =
        |name: &str| docs.iter().find(|(s, _)| s.name == name).and_then(|(_, d)| d.clone());
    let (small, large) = scenarios::sizes(cfg.quick);
    let mut md = String::new();
    let w = &mut md;

    let title = if cfg.quick {
        "ringcast fan-out benchmark (quick mode)"
    } else {
        "ringcast fan-out benchmark"
    };
    let _ = writeln!(w, "# {title}\n");
    let _ = writeln!(
        w,
        "Generated by `benches/fanout.rs`; do not edit by hand. ringcast (`ringcast serve --on-message relay`) \
         against an in-tree baseline broadcast server (tokio + tokio-tungstenite, see *Method*), \
         same machine, same run, same load generator (`ringcast-loadgen`).\n"
    );
    if cfg.quick {
        let _ = writeln!(
            w,
            "> **Quick mode**: {small} and {} subscribers, short runs and few find-max steps. \
             These numbers are a smoke test, not the published figures (those are in `../README.md`).\n",
            scenarios::thousands(large as u64)
        );
    }
    // Command, commit and dates come from the result files, which may stem from several runs
    // (a run with a scenario filter rewrites only the files it selects).
    let commands = distinct(&docs, "bench_command");
    let commits = distinct(&docs, "git_commit");
    let mut dates = distinct(&docs, "date");
    dates.sort();
    let quote = |v: &[String]| v.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(w, "- Command: {}", quote(&commands));
    let _ = writeln!(w, "- Git commit: {}", quote(&commits));
    let took =
        elapsed.map(|e| format!(" (this run took {:.0} s)", e.as_secs_f64())).unwrap_or_default();
    match (dates.first(), dates.last()) {
        (Some(a), Some(b)) if a != b => {
            let _ = writeln!(w, "- Date: {a} to {b}{took}");
        }
        (Some(a), _) => {
            let _ = writeln!(w, "- Date: {a}{took}");
        }
        _ => {}
    }
    let _ = writeln!(
        w,
        "- Machine: {} cores (`nproc`), {}, {} RAM, kernel {} (`uname -r`)",
        meta.cores, meta.cpu_model, meta.memory, meta.kernel
    );
    let _ = writeln!(
        w,
        "- CPU sets: server on CPU {} (ringcast with `--shards 1 --cpus {}`; both servers pinned with \
         `sched_setaffinity` before exec), load generator on CPU {} \
         (`RINGCAST_BENCH_SERVER_CPUS` / `RINGCAST_BENCH_LOADGEN_CPUS`)\n",
        procs::fmt_cpu_list(&cfg.server_cpus),
        cfg.server_cpus[0],
        procs::fmt_cpu_list(&cfg.loadgen_cpus)
    );
    if cfg.out_dir.join("groups.md").is_file() {
        let _ = writeln!(
            w,
            "Groups (subscribers in groups of 10, published to over WebSocket commands and the HTTP \
             push API) are benchmarked separately by `cargo bench --bench groups`: [groups.md](groups.md).\n"
        );
    }

    // ---- goals
    let max_small_64 = doc_of(&format!("max-{small}x64B"));
    let max_large_1k = doc_of(&format!("max-{large}x1KiB"));
    let fixed_large_64 = doc_of(&format!("fixed-{large}x64B"));
    let idle = doc_of(&format!("idle-rss-{large}"));
    let _ = writeln!(w, "## Goals\n");
    let _ = writeln!(w, "| Goal | Target | Measured | Met |");
    let _ = writeln!(w, "| --- | --- | --- | --- |");
    {
        let _ = writeln!(
            w,
            "| Deliveries/s vs baseline, {} × 64 B find-max | ≥ 10× | {} | {} |",
            scenarios::thousands(small as u64),
            max_small_64.as_ref().map(fm_ratio_s).unwrap_or_else(|| "not run".into()),
            check(fm_goal(max_small_64.as_ref(), 10.0))
        );
        let bound =
            max_large_1k.as_ref().and_then(|d| f(d, "/find_max/p99_bound_ms")).unwrap_or(250.0);
        let _ = writeln!(
            w,
            "| Deliveries/s vs baseline, {} × 1 KiB find-max (p99 ≤ {bound} ms) | ≥ 4× | {} | {} |",
            scenarios::thousands(large as u64),
            max_large_1k.as_ref().map(fm_ratio_s).unwrap_or_else(|| "not run".into()),
            check(fm_goal(max_large_1k.as_ref(), 4.0))
        );
        let (measured, ok) = match &fixed_large_64 {
            Some(d) => {
                let rp = lat(&d["ringcast"], "p99");
                let bp = lat(&d["baseline"], "p99");
                let rl = lost(&d["ringcast"]);
                let ok = match (rp, bp, rl) {
                    (Some(rp), Some(bp), Some(rl)) => Some(rp * 4.0 <= bp && rl == 0.0),
                    _ => None,
                };
                (
                    format!(
                        "ringcast p99 {} vs baseline {} (baseline ÷ ringcast = {}), ringcast lost {}",
                        opt(rp, fmt_us),
                        opt(bp, fmt_us),
                        ratio_s(div(bp, rp)),
                        opt(rl, |v| format!("{v:.0}"))
                    ),
                    ok,
                )
            }
            None => ("not run".into(), None),
        };
        let _ = writeln!(
            w,
            "| p99 at {} × 64 B, 20 msg/s | ≤ ¼ of baseline's, nothing lost | {measured} | {} |",
            scenarios::thousands(large as u64),
            check(ok)
        );
        let kib = idle.as_ref().and_then(|d| f(d, "/ringcast/kib_per_connection"));
        let _ = writeln!(
            w,
            "| ringcast RSS per idle connection ({} connections) | ≤ 1 KiB | {} | {} |",
            scenarios::thousands(large as u64),
            opt(kib, |v| format!("{v:.2} KiB")),
            check(kib.map(|v| v <= 1.0))
        );
        // Load generator saturation over every run.
        let mut saturated = Vec::new();
        let mut known = 0;
        for (sc, d) in &docs {
            let Some(d) = d else { continue };
            for server in ["ringcast", "baseline"] {
                if let Some(s) = d[server].pointer("/report/cpu/saturated").and_then(Value::as_bool)
                {
                    known += 1;
                    if s {
                        saturated.push(format!("{}/{server}", sc.name));
                    }
                }
            }
        }
        let (measured, ok) = if known == 0 {
            ("no load-generator report".to_string(), None)
        } else if saturated.is_empty() {
            (format!("not saturated in any of {known} runs"), Some(true))
        } else {
            (format!("saturated in {}: {}", saturated.len(), saturated.join(", ")), Some(false))
        };
        let _ = writeln!(
            w,
            "| Load generator not CPU-saturated (`cpu.saturated`) | no run saturated | {measured} | {} |\n",
            check(ok)
        );
        let mut noisy: Vec<(String, f64)> = Vec::new();
        for (sc, d) in &docs {
            let Some(d) = d else { continue };
            for server in ["ringcast", "baseline"] {
                for (side, key) in
                    [("server", "server_cpus_load"), ("loadgen", "loadgen_cpus_load")]
                {
                    if let Some(o) = f(&d[server], &format!("/{key}/other_processes_cores")) {
                        if o > 0.1 {
                            noisy.push((format!("{}/{server} ({side} CPUs)", sc.name), o));
                        }
                    }
                }
            }
        }
        let _ =
            writeln!(w, "? = not run, or inconclusive (a \"≥\" lower bound below the target).\n");
        if !noisy.is_empty() {
            let worst = noisy.iter().map(|n| n.1).fold(0.0, f64::max);
            let _ = writeln!(
                w,
                "**Noise:** other processes used more than 0.1 of a core on the server's or the load \
                 generator's CPUs during {} run(s) (up to {worst:.2} cores: {}); those figures are \
                 less reliable.\n",
                noisy.len(),
                noisy.iter().map(|n| n.0.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        if !saturated.is_empty() {
            let _ = writeln!(
                w,
                "Where the load generator saturated its CPU, the measured rate is bounded by the load \
                 generator, so ringcast's figure (and the ratio) there is a lower bound.\n"
            );
        }
    }

    every_server_sections(w, &docs);

    // ---- find-max table
    let _ = writeln!(w, "## Find-max: highest deliveries/s with p99 within the bound\n");
    let _ = writeln!(
        w,
        "| Scenario | p99 bound | ringcast deliveries/s | baseline deliveries/s | ratio | \
         ringcast p50 / p99 / p99.9 | baseline p50 / p99 / p99.9 | lost (ringcast / baseline) |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (sc, d) in docs.iter().filter(|(s, _)| matches!(s.kind, Kind::FindMax { .. })) {
        let Some(d) = d else {
            let _ = writeln!(w, "| {} | | not run | | | | | |", sc.title());
            continue;
        };
        let cell = |run: &Value| {
            run_cell_error(run).unwrap_or_else(|| match (met_bound(run), hit_step_limit(run)) {
                (Some(false), _) => "no step met the bound".into(),
                (_, Some(true)) => format!("≥ {} (step limit)", opt(dps(run), human)),
                _ => opt(dps(run), human),
            })
        };
        let bound = f(d, "/find_max/p99_bound_ms").map(|b| format!("{b} ms")).unwrap_or_default();
        let _ = writeln!(
            w,
            "| {} × {} | {bound} | {} | {} | {} | {} | {} | {} / {} |",
            scenarios::thousands(sc.subscribers as u64),
            scenarios::payload_human(sc.payload),
            cell(&d["ringcast"]),
            cell(&d["baseline"]),
            fm_ratio_s(d),
            latency_triplet(&d["ringcast"]),
            latency_triplet(&d["baseline"]),
            opt(lost(&d["ringcast"]), |v| format!("{v:.0}")),
            opt(lost(&d["baseline"]), |v| format!("{v:.0}")),
        );
    }
    let _ = writeln!(
        w,
        "\nRatio = ringcast deliveries/s ÷ baseline deliveries/s at each server's best step (the \
         step with the most deliveries/s whose p99 was within the bound with ≥ 99 % delivered). \
         Latencies and losses are those of the best step. \"≥\": the server met the bound at every \
         step up to the step limit, so its real maximum is higher.\n"
    );

    // ---- fixed-rate table
    let _ = writeln!(w, "## Fixed rate: latency at 20 msg/s\n");
    let _ = writeln!(
        w,
        "| Scenario | deliveries/s (ringcast / baseline) | ringcast p50 / p99 / p99.9 | \
         baseline p50 / p99 / p99.9 | lost (ringcast / baseline) | p99 ratio (baseline ÷ ringcast) |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- |");
    for (sc, d) in docs.iter().filter(|(s, _)| matches!(s.kind, Kind::Fixed { .. })) {
        let Some(d) = d else {
            let _ = writeln!(w, "| {} | not run | | | | |", sc.title());
            continue;
        };
        let _ = writeln!(
            w,
            "| {} × {} | {} / {} | {} | {} | {} / {} | {} |",
            scenarios::thousands(sc.subscribers as u64),
            scenarios::payload_human(sc.payload),
            opt(dps(&d["ringcast"]), human),
            opt(dps(&d["baseline"]), human),
            latency_triplet(&d["ringcast"]),
            latency_triplet(&d["baseline"]),
            opt(lost(&d["ringcast"]), |v| format!("{v:.0}")),
            opt(lost(&d["baseline"]), |v| format!("{v:.0}")),
            ratio_s(f(d, "/ratio/p99_baseline_over_ringcast")),
        );
    }
    let _ = writeln!(
        w,
        "\nLost = sent × subscribers − distinct deliveries received by the end of the drain window \
         ({} s after the last send, per the load generator's `--drain-secs`), so a server that falls \
         seconds behind shows losses even if it would deliver everything eventually; latency \
         percentiles cover the deliveries that arrived.\n",
        docs.iter()
            .find(|(s, _)| matches!(s.kind, Kind::Fixed { .. }))
            .map(|(s, _)| s.drain_s)
            .unwrap_or(2.0)
    );

    // ---- idle RSS
    let _ = writeln!(w, "## Resident memory per idle connection\n");
    let _ = writeln!(
        w,
        "| Connections | ringcast KiB/conn | baseline KiB/conn | ratio (baseline ÷ ringcast) | \
         ringcast RSS before → after | baseline RSS before → after |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- |");
    if let Some(d) = &idle {
        let kib = |run: &Value| {
            run_cell_error(run)
                .unwrap_or_else(|| opt(f(run, "/kib_per_connection"), |v| format!("{v:.2}")))
        };
        let ba = |run: &Value| {
            format!(
                "{} → {} KiB ({} open)",
                opt(f(run, "/rss_before_kib"), |v| format!("{v:.0}")),
                opt(f(run, "/rss_after_kib"), |v| format!("{v:.0}")),
                opt(f(run, "/connections_open"), |v| format!("{v:.0}")),
            )
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            scenarios::thousands(large as u64),
            kib(&d["ringcast"]),
            kib(&d["baseline"]),
            ratio_s(f(d, "/ratio/kib_per_connection_baseline_over_ringcast")),
            ba(&d["ringcast"]),
            ba(&d["baseline"]),
        );
    } else {
        let _ = writeln!(w, "| {} | not run | | | | |", scenarios::thousands(large as u64));
    }
    let _ = writeln!(
        w,
        "\n(VmRSS after − VmRSS before) ÷ connections open, read from `/proc/PID/status` once the \
         server has listened for 1 s and again 2 s after the last connection's handshake.\n"
    );

    // ---- charts
    let _ = writeln!(w, "## Charts\n");
    match draw_charts(cfg, &docs) {
        Ok(files) => {
            for (file, alt) in files {
                let _ = writeln!(w, "![{alt}]({file})\n");
            }
        }
        Err(e) => {
            let _ = writeln!(w, "Charts could not be drawn: {e:#}\n");
        }
    }

    // ---- CPU table
    let _ = writeln!(w, "## CPU use per run\n");
    let _ = writeln!(
        w,
        "| Scenario | server | load generator cores used | load generator saturated | \
         server CPU (of one core) | server CPU µs per delivery | irq+softirq on server CPUs | \
         other processes on server / load generator CPUs | server peak RSS | \
         allowed CPUs (server / load generator) |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (sc, d) in &docs {
        let Some(d) = d else { continue };
        if d["kind"] == "idle_rss" || d["kind"] == "connect_storm" {
            continue;
        }
        for server in SERVERS {
            let run = &d[server];
            if run.get("error").is_some() || run.get("report").is_none() {
                continue;
            }
            let others = format!(
                "{} / {} cores",
                opt(f(run, "/server_cpus_load/other_processes_cores"), |v| format!("{v:.2}")),
                opt(f(run, "/loadgen_cpus_load/other_processes_cores"), |v| format!("{v:.2}")),
            );
            let _ = writeln!(
                w,
                "| {} | {server} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                sc.name,
                opt(f(run, "/report/cpu/cores_used"), |v| format!("{v:.2}")),
                run.pointer("/report/cpu/saturated").map(|v| v.to_string()).unwrap_or_default(),
                opt(f(run, "/server_cpu_util"), |v| format!("{:.0} %", v * 100.0)),
                opt(div(f(run, "/server_cpu_s"), measured_deliveries(run)), |v| format!(
                    "{:.1}",
                    v * 1e6
                )),
                opt(f(run, "/server_cpus_load/irq_cores"), |v| format!("{v:.2} cores")),
                others,
                opt(f(run, "/server_rss_kib/peak"), |v| format!("{:.1} MiB", v / 1024.0)),
                run["server_cpus_allowed"].as_str().unwrap_or("?"),
                run["loadgen_cpus_allowed"].as_str().unwrap_or("?"),
            );
        }
    }
    let _ = writeln!(w);

    // ---- method
    let _ = writeln!(w, "## Method\n");
    let _ = writeln!(
        w,
        "- **ringcast**: `ringcast serve --listen 127.0.0.1:PORT --shards 1 --cpus {cpu} --on-message relay \
         --max-connections 16384`, other flags at their defaults.\n\
         - **baseline**: the bench binary re-executed with `RINGCAST_BENCH_ROLE=baseline`: a current-thread \
         tokio runtime, `tokio_tungstenite::accept_async`, one task per connection that `select!`s between \
         the socket and a `tokio::sync::broadcast` receiver (capacity {cap}); every Text/Binary message \
         is `send`ed to the channel, every received one is written with `SinkExt::send`. A receiver that \
         lags by more than the capacity skips ahead (the load generator counts those messages as lost). \
         `TCP_NODELAY` is set, listen backlog {backlog}, tokio-tungstenite's default `WebSocketConfig` \
         (its 128 KiB read buffer per connection dominates the baseline's memory per connection). \
         `SinkExt::send` flushes, so the baseline makes one `write(2)` per message per connection; \
         that, not tokio, is most of its cost per delivery.\n\
         - **Load generator**: `ringcast-loadgen --json` ({pubs} publisher connection + N subscriber \
         connections; a message is a delivery when a subscriber receives it; latency is receive time − \
         send time on one monotonic clock). Fixed-rate runs publish 20 msg/s in all; find-max runs step \
         the rate up until p99 exceeds the bound and report the best step that met it.\n\
         - Each (scenario, server) pair gets a freshly started server on a fresh port; the two servers \
         run one after the other, never at the same time. Server CPU is the server's utime + stime \
         (from `/proc/PID/stat`) over the load generator's whole life (connect, warm-up, every \
         step, drain); per delivery it is divided by the deliveries measured (warm-up excluded), \
         so it slightly overstates the cost.\n\
         - **Idle memory**: the bench binary re-executed with `RINGCAST_BENCH_ROLE=idle` (pinned to the \
         load generator CPUs) opens the connections, completes the handshakes and then reads nothing.\n\
         - The machine is shared with other work, so expect run-to-run noise of several per cent. \
         \"Other processes\" is the CPUs' user + system time from `/proc/stat` minus the server's \
         (or the load generator's) own, over the run: anything well above zero means something \
         else competed for those CPUs. \"irq+softirq\" is interrupt and softirq time on the server \
         CPUs: loopback TCP processing, which the kernel does not charge to the server process, \
         so the server's real cost per delivery is higher than its process CPU shows.\n",
        cpu = cfg.server_cpus[0],
        cap = crate::baseline::CHANNEL_CAPACITY,
        backlog = crate::baseline::BACKLOG,
        pubs = scenarios::PUBLISHERS,
    );

    // ---- how to run
    let _ = writeln!(w, "## Running it\n");
    let _ = writeln!(
        w,
        "```\n\
         cargo bench --bench fanout                  # full suite -> results/*.json, *.svg, README.md\n\
         cargo bench --bench fanout -- --quick       # small and short -> results/quick/, validated\n\
         cargo bench --bench fanout -- max-1000      # only scenarios whose name contains max-1000\n\
         cargo bench --bench fanout -- --report-only # rebuild README.md and charts from the JSON\n\
         ```\n\n\
         `RINGCAST_BENCH_QUICK=1` is the same as `--quick`. `RINGCAST_BENCH_SERVER_CPUS` (default \
         `0`) and `RINGCAST_BENCH_LOADGEN_CPUS` (default `1`) take CPU lists such as `0`, `2-3`, \
         `0,2`. `RINGCAST_BENCH_RINGCAST_BIN` / `RINGCAST_BENCH_LOADGEN_BIN` use prebuilt binaries \
         instead of running `cargo build --release`. Server, load generator and idle-opener logs \
         go to `results/tmp/` (ignored by git).\n"
    );

    // ---- commands
    let _ = writeln!(w, "## Commands\n");
    let _ = writeln!(w, "Binaries were built with:\n\n```");
    let builds: Vec<String> = docs
        .iter()
        .filter_map(|(_, d)| d.as_ref()?.get("build_commands")?.as_array().cloned())
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .fold(Vec::new(), |mut acc, c| {
            if !acc.contains(&c) {
                acc.push(c);
            }
            acc
        });
    for c in &builds {
        let _ = writeln!(w, "{c}");
    }
    if builds.is_empty() {
        let _ = writeln!(
            w,
            "(prebuilt binaries given by RINGCAST_BENCH_RINGCAST_BIN / RINGCAST_BENCH_LOADGEN_BIN)"
        );
    }
    let _ = writeln!(w, "```\n");
    let _ = writeln!(
        w,
        "Per scenario, relative to the workspace root (ports differ per run; the JSON files hold \
         the exact lines). `taskset -c` stands for the CPU set the harness applies with \
         `sched_setaffinity` in the child before exec.\n"
    );
    let ws_prefix = format!("{}/", cfg.workspace.display());
    let _ = writeln!(w, "```");
    for (sc, d) in &docs {
        let Some(d) = d else { continue };
        let _ = writeln!(w, "# {}", sc.name);
        for server in SERVERS {
            let run = d[server].pointer("/runs/0").unwrap_or(&d[server]);
            for key in ["server_command", "loadgen_command", "opener_command"] {
                if let Some(c) = run.get(key).and_then(Value::as_str) {
                    let _ = writeln!(w, "{}", c.replace(&ws_prefix, ""));
                }
            }
        }
    }
    let _ = writeln!(w, "```");

    let path = cfg.out_dir.join("README.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A spread cell: `median [min–max]` (or the single value).
fn spread_cell(run: &Value, ptr: &str, fmt: impl Fn(f64) -> String) -> String {
    match (
        f(run, &format!("{ptr}/median")),
        f(run, &format!("{ptr}/min")),
        f(run, &format!("{ptr}/max")),
    ) {
        (Some(m), Some(a), Some(b))
            if run
                .pointer(&format!("{ptr}/values"))
                .and_then(Value::as_array)
                .is_some_and(|v| v.len() > 1) =>
        {
            format!("{} [{}–{}]", fmt(m), fmt(a), fmt(b))
        }
        (Some(m), _, _) => fmt(m),
        _ => "—".into(),
    }
}

/// Why a server has no figure in a document: skipped, failed, or not run.
fn absent(run: &Value) -> Option<String> {
    if run.is_null() {
        return Some("not run".into());
    }
    if let Some(why) = run.get("skipped").and_then(Value::as_str) {
        return Some(format!("skipped: {why}"));
    }
    if let Some(e) = run.get("error").and_then(Value::as_str) {
        return Some(format!("error: {}", e.lines().next().unwrap_or("")));
    }
    None
}

/// The load generator's repeat object of a run, with a single-run fallback.
fn rep(run: &Value) -> Option<&Value> {
    report(run)?.get("repeat").filter(|r| r.is_object())
}

/// Deliveries/s of a run with its spread over repetitions.
fn dps_cell(run: &Value) -> String {
    if let Some(a) = absent(run) {
        return a;
    }
    if met_bound(run) == Some(false) {
        return "no rate met the bound".into();
    }
    let hit_limit = hit_step_limit(run) == Some(true);
    let ge = if hit_limit { "≥ " } else { "" };
    match (rep(run), dps(run)) {
        (Some(r), _) => format!("{ge}{}", spread_cell(r, "/deliveries_per_sec", human)),
        (None, Some(v)) => format!("{ge}{}", human(v)),
        (None, None) => "no step met the bound".into(),
    }
}

fn us_per_delivery_cell(run: &Value) -> String {
    if absent(run).is_some() || report(run).is_none() {
        return "—".into();
    }
    if f(run, "/report/received") == Some(0.0) {
        return "— (nothing received)".into();
    }
    let sat = run.pointer("/report/cpu/saturated") == Some(&Value::Bool(true));
    let v = match rep(run) {
        Some(r) => spread_cell(r, "/s_per_million_deliveries", |v| format!("{v:.2}")),
        None => opt(f(run, "/report/cpu/s_per_million_deliveries"), |v| format!("{v:.2}")),
    };
    format!("{v}{}", if sat { " (saturated)" } else { "" })
}

/// Tables with every server (ringcast, the baseline and the registry peers), with the spread
/// over `--repeat` repetitions, the load generator's own CPU per delivery, the connect storm.
fn every_server_sections(w: &mut String, docs: &[(Scenario, Option<Value>)]) {
    let present = |k: &str| docs.iter().any(|(s, d)| d.is_some() && s.kind.tag() == k);
    let peers_line = docs
        .iter()
        .rev()
        .find_map(|(_, d)| d.as_ref()?.get("peers").filter(|p| p.is_object()).cloned());
    let _ = writeln!(w, "## Every server: ringcast, baseline and registry peers\n");
    let _ = writeln!(
        w,
        "Registry peers are installed by the harness (Node.js `ws` from npm, Python `websockets` \
         from PyPI) and run the few lines of broadcast their docs show \
         (`benches/fanout/peers/`), pinned to the server CPU like the others. {}\n",
        match &peers_line {
            Some(p) => SERVERS[2..]
                .iter()
                .map(|k| match &p[*k] {
                    Value::String(v) => format!("{k}: {v}."),
                    other => format!(
                        "{k}: skipped ({}).",
                        other.get("skipped").and_then(Value::as_str).unwrap_or("not run")
                    ),
                })
                .collect::<Vec<_>>()
                .join(" "),
            None => String::new(),
        }
    );
    let _ = writeln!(
        w,
        "Figures are `median [min–max]` over the load generator's `--repeat` repetitions (same \
         connections, whole measurement repeated); servers run one after another in one harness \
         invocation, so ratios come from the same run. The load generator's receive path is \
         io_uring (multishot recv over provided buffers) unless a row says otherwise.\n"
    );
    if present("find_max") {
        let _ = writeln!(w, "### Find-max deliveries/s (p99 within the bound, ≥ 99 % delivered)\n");
        let _ = writeln!(w, "| Scenario | p99 bound | repetitions | {} |", SERVERS.join(" | "));
        let _ = writeln!(w, "| --- | --- | --- |{}", " --- |".repeat(SERVERS.len()));
        for (sc, d) in docs {
            let (Kind::FindMax { p99_bound_ms, .. }, Some(d)) = (&sc.kind, d) else { continue };
            let cells: Vec<String> = SERVERS.iter().map(|k| dps_cell(&d[*k])).collect();
            let _ = writeln!(
                w,
                "| {} × {} | {p99_bound_ms} ms | {} | {} |",
                scenarios::thousands(sc.subscribers as u64),
                scenarios::payload_human(sc.payload),
                d["repeat"].as_u64().unwrap_or(1),
                cells.join(" | ")
            );
        }
        let factor = docs
            .iter()
            .find_map(|(s, _)| match s.kind {
                Kind::FindMax { factor, .. } => Some(factor),
                _ => None,
            })
            .unwrap_or(2.0);
        let _ = writeln!(
            w,
            "\nEach find-max climbs in {factor}× steps, retries a failing step once, then bisects \
             {} times (geometric midpoint) between the last passing and the first twice-failing \
             rate, which brackets the maximum within {:.1} %. \"≥\": the server met the bound at \
             every step up to the step limit, so its maximum is higher.\n",
            scenarios::BISECT_STEPS,
            (factor.powf(1.0 / f64::from(1u32 << scenarios::BISECT_STEPS)) - 1.0) * 100.0
        );
    }
    for (sc, d) in docs {
        let (Kind::Fixed { rate }, Some(d)) = (&sc.kind, d) else { continue };
        if sc.repeat <= 1 {
            continue;
        }
        let _ = writeln!(
            w,
            "### Fixed rate: {} deliveries/s offered ({} subscribers × {rate} msg/s, {})\n",
            human(rate * sc.subscribers as f64),
            scenarios::thousands(sc.subscribers as u64),
            scenarios::payload_human(sc.payload)
        );
        let _ = writeln!(
            w,
            "| server | deliveries/s received | p50 | p99 | p99.9 (median rep) | lost (median rep) | \
             load generator µs/delivery |"
        );
        let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- | --- |");
        for k in SERVERS {
            let run = &d[k];
            if let Some(a) = absent(run) {
                let _ = writeln!(w, "| {k} | {a} | | | | | |");
                continue;
            }
            let (p50, p99) = match rep(run) {
                Some(r) => (spread_cell(r, "/p50_us", fmt_us), spread_cell(r, "/p99_us", fmt_us)),
                None => (opt(lat(run, "p50"), fmt_us), opt(lat(run, "p99"), fmt_us)),
            };
            if f(run, "/report/received") == Some(0.0) {
                let _ = writeln!(
                    w,
                    "| {k} | none of the measured messages arrived within the drain window \
                     (still delivering the warm-up's backlog) | | | | {} | — |",
                    opt(lost(run), |v| format!("{v:.0}"))
                );
                continue;
            }
            let _ = writeln!(
                w,
                "| {k} | {} | {p50} | {p99} | {} | {} | {} |",
                dps_cell(run),
                opt(lat(run, "p999"), fmt_us),
                opt(lost(run), |v| format!("{v:.0}")),
                us_per_delivery_cell(run)
            );
        }
        let _ = writeln!(
            w,
            "\nA server that cannot keep up falls behind: its latencies grow with the backlog and \
             what has not arrived 2 s after the last send counts as lost.\n"
        );
    }
    if present("idle_rss") {
        let _ = writeln!(w, "### Resident memory per idle connection\n");
        let _ = writeln!(w, "| Connections | {} |", SERVERS.join(" | "));
        let _ = writeln!(w, "| --- |{}", " --- |".repeat(SERVERS.len()));
        for (sc, d) in docs {
            let (Kind::IdleRss, Some(d)) = (&sc.kind, d) else { continue };
            let cells: Vec<String> = SERVERS
                .iter()
                .map(|k| {
                    absent(&d[*k]).unwrap_or_else(|| {
                        opt(f(&d[*k], "/kib_per_connection"), |v| format!("{v:.2} KiB"))
                    })
                })
                .collect();
            let _ = writeln!(
                w,
                "| {} | {} |",
                scenarios::thousands(sc.subscribers as u64),
                cells.join(" | ")
            );
        }
        let _ = writeln!(w);
    }
    if present("connect_storm") {
        for (sc, d) in docs {
            let (Kind::ConnectStorm { .. }, Some(d)) = (&sc.kind, d) else { continue };
            let _ = writeln!(
                w,
                "### Connect storm: {} connections at once\n",
                scenarios::thousands(sc.subscribers as u64)
            );
            let _ = writeln!(
                w,
                "`ringcast-loadgen --connect-only --ramp-rate 0 --max-inflight-handshakes 512`: \
                 every connection opened as fast as the server takes it (a fresh server per \
                 round); connect latency = first attempt to verified `101`, retries included.\n"
            );
            let _ = writeln!(
                w,
                "| server | rounds | handshakes/s | connect p50 | connect p99 | failed | retries |"
            );
            let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- | --- |");
            for k in SERVERS {
                let run = &d[k];
                if let Some(a) = absent(run) {
                    let _ = writeln!(w, "| {k} | {a} | | | | | |");
                    continue;
                }
                let _ = writeln!(
                    w,
                    "| {k} | {} | {} | {} | {} | {} | {} |",
                    run["rounds"].as_u64().unwrap_or(0),
                    spread_cell(run, "/handshakes_per_sec", |v| format!("{v:.0}")),
                    spread_cell(run, "/connect_p50_us", fmt_us),
                    spread_cell(run, "/connect_p99_us", fmt_us),
                    opt(f(run, "/failed"), |v| format!("{v:.0}")),
                    opt(f(run, "/retries"), |v| format!("{v:.0}")),
                );
            }
            let _ = writeln!(w);
        }
    }
    let invocations = if distinct(docs, "bench_command").len() > 1 {
        "The run was split into several harness invocations (`cargo bench --bench fanout -- \
         NAME` per scenario group; each JSON file records its command, commit and date). Within \
         a scenario all servers ran back to back in one invocation."
    } else {
        "Every scenario, and every server within it, ran back to back in one harness \
         invocation (the command above)."
    };
    let _ = writeln!(
        w,
        "**Reading these figures.** {invocations} At 10,000 subscribers every \
         message becomes 10,000 TCP segments arriving at once, and the load generator's kernel \
         receive work for that burst (≈ 5–9 µs per delivery on its one core) is part of every \
         server's p99 there: the 10,000 × 1 KiB maximum is bounded by the burst the single \
         load-generator core can absorb within the 250 ms bound as much as by the server. \
         Servers that cannot fan one message out to 10,000 connections within 250 ms meet the \
         bound at no rate.\n"
    );
    // The load generator's own cost against each server.
    let _ = writeln!(w, "### Load generator CPU per delivery (µs, = CPU seconds per million)\n");
    let _ = writeln!(
        w,
        "The load generator's own user + system CPU during the measured step (for find-max: the \
         best step) ÷ deliveries received. \"saturated\": its process used ≥ 0.9 of its cores or \
         its busiest thread ≥ 0.9 of one core, so the figure next to it describes the load \
         generator as much as the server.\n"
    );
    let _ = writeln!(w, "| Scenario | {} | receive path |", SERVERS.join(" | "));
    let _ = writeln!(w, "| --- |{} --- |", " --- |".repeat(SERVERS.len()));
    for (sc, d) in docs {
        let Some(d) = d else { continue };
        if matches!(sc.kind, Kind::IdleRss | Kind::ConnectStorm { .. }) {
            continue;
        }
        let cells: Vec<String> = SERVERS.iter().map(|k| us_per_delivery_cell(&d[*k])).collect();
        let path = SERVERS
            .iter()
            .filter_map(|k| {
                let io = d[*k].pointer("/report/io")?;
                Some(match io["path"].as_str()? {
                    "io_uring" => format!(
                        "io_uring{}{}",
                        if io["incremental_buffers"] == true {
                            ", incremental buffers"
                        } else {
                            ""
                        },
                        match io["recv_batch_us"].as_u64() {
                            Some(b) if b > 0 => format!(", batch {b} µs"),
                            _ => String::new(),
                        }
                    ),
                    p => format!("{p} ({})", io["fallback_reason"].as_str().unwrap_or("")),
                })
            })
            .next()
            .unwrap_or_else(|| "epoll (older load generator)".into());
        let _ = writeln!(w, "| {} | {} | {path} |", sc.name, cells.join(" | "));
    }
    let _ = writeln!(w);
}

/// Draws every chart; returns (relative file name, alt text) pairs.
fn draw_charts(cfg: &Config, docs: &[(Scenario, Option<Value>)]) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    // Deliveries/s vs connections, find-max best steps.
    let mut series = Vec::new();
    for (server, payload, color) in [
        ("ringcast", 64, charts::RINGCAST),
        ("ringcast", 1024, charts::RINGCAST_LIGHT),
        ("baseline", 64, charts::BASELINE),
        ("baseline", 1024, charts::BASELINE_LIGHT),
    ] {
        let mut points: Vec<(f64, f64)> = docs
            .iter()
            .filter(|(s, _)| matches!(s.kind, Kind::FindMax { .. }) && s.payload == payload)
            .filter_map(|(s, d)| Some((s.subscribers as f64, dps(&d.as_ref()?[server])?)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            series.push(charts::Series {
                label: format!("{server}, {}", scenarios::payload_human(payload)),
                color,
                points,
            });
        }
    }
    if !series.is_empty() {
        let name = "deliveries.svg";
        charts::deliveries_vs_connections(
            &cfg.out_dir.join(name),
            "Find-max deliveries/s vs subscriber connections",
            &series,
        )?;
        files.push((name.to_string(), "deliveries/s vs connections, both servers".to_string()));
    }
    // The find-max search: p99 against deliveries/s for every step.
    let mut panels = Vec::new();
    for (sc, d) in docs {
        let (Kind::FindMax { p99_bound_ms, .. }, Some(d)) = (&sc.kind, d) else { continue };
        let mut series = Vec::new();
        for (server, color) in [("ringcast", charts::RINGCAST), ("baseline", charts::BASELINE)] {
            let points: Vec<(f64, f64)> = d[server]
                .pointer("/report/find_max/steps")
                .and_then(Value::as_array)
                .map(|steps| {
                    steps
                        .iter()
                        .filter_map(|st| {
                            Some((
                                f(st, "/deliveries_per_sec")?,
                                f(st, "/latency_us/p99")?.max(1.0),
                            ))
                        })
                        .filter(|p| p.0 > 0.0)
                        .collect()
                })
                .unwrap_or_default();
            if !points.is_empty() {
                series.push(Series { label: server.to_string(), color, points });
            }
        }
        if !series.is_empty() {
            panels.push(charts::Panel {
                title: format!(
                    "{} × {}, find-max steps",
                    scenarios::thousands(sc.subscribers as u64),
                    scenarios::payload_human(sc.payload)
                ),
                series,
                bound_us: p99_bound_ms * 1000.0,
            });
        }
    }
    if !panels.is_empty() {
        let name = "find-max-steps.svg";
        charts::find_max_steps(&cfg.out_dir.join(name), &panels)?;
        files.push((name.to_string(), "p99 latency vs deliveries/s at every find-max step".into()));
    }
    // Latency percentiles per scenario.
    for (sc, d) in docs {
        let Some(d) = d else { continue };
        if matches!(sc.kind, Kind::IdleRss | Kind::ConnectStorm { .. }) {
            continue;
        }
        let mut series = Vec::new();
        for (server, color) in [("ringcast", charts::RINGCAST), ("baseline", charts::BASELINE)] {
            let run = &d[server];
            let points: Vec<(f64, f64)> = ["p50", "p90", "p99", "p999"]
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((i as f64, lat(run, p)?)))
                .collect();
            if !points.is_empty() {
                let label = match met_bound(run) {
                    Some(false) => format!("{server} (no step met the bound: last step)"),
                    _ => server.to_string(),
                };
                series.push(Series { label, color, points });
            }
        }
        if series.is_empty() {
            continue;
        }
        let bound = f(d, "/find_max/p99_bound_ms").map(|ms| ms * 1000.0);
        let suffix = if bound.is_some() { " (best step)" } else { "" };
        let name = format!("latency-{}.svg", sc.name);
        charts::latency_percentiles(
            &cfg.out_dir.join(&name),
            &format!("{}{suffix}", sc.title()),
            &series,
            bound,
        )?;
        files.push((name, format!("latency percentiles, {}", sc.title())));
    }
    Ok(files)
}

// ---- validation ---------------------------------------------------------------------------

/// Re-reads every JSON this run wrote and checks the fields the README and CI rely on.
pub fn validate(cfg: &Config, selected: &[Scenario]) -> Vec<String> {
    let mut problems = Vec::new();
    for sc in selected {
        let path = cfg.out_dir.join(format!("{}.json", sc.name));
        let doc = match std::fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(anyhow::Error::from))
        {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let mut need = |ok: bool, what: &str| {
            if !ok {
                problems.push(format!("{}: {what}", path.display()));
            }
        };
        need(doc["scenario"] == sc.name.as_str(), "scenario name");
        need(doc["kind"] == sc.kind.tag(), "kind");
        need(doc.pointer("/cpus/server").is_some_and(Value::is_string), "cpus.server");
        need(doc.pointer("/cpus/loadgen").is_some_and(Value::is_string), "cpus.loadgen");
        need(doc.get("ratio").is_some_and(Value::is_object), "ratio object");
        need(doc.get("git_commit").is_some_and(Value::is_string), "git_commit");
        for server in SERVERS {
            let run = &doc[server];
            let peer = server != "ringcast" && server != "baseline";
            if peer && (run.is_null() || run.get("skipped").is_some()) {
                continue; // the README says why
            }
            if let Some(e) = run.get("error") {
                let msg = format!("{server} run failed: {}", e.as_str().unwrap_or("?"));
                if peer && cfg.quick {
                    // A registry peer's trouble is reported, not a harness failure in CI.
                    eprintln!("fanout: warning: {}: {msg}", path.display());
                } else {
                    need(false, &msg);
                }
                continue;
            }
            if let Kind::ConnectStorm { .. } = sc.kind {
                let num = |p: &str| run.pointer(p).is_some_and(Value::is_number);
                for p in ["/handshakes_per_sec/median", "/connect_p99_us/median", "/failed"] {
                    need(num(p), &format!("{server}{}", p.replace('/', ".")));
                }
                continue;
            }
            let num = |p: &str| run.pointer(p).is_some_and(Value::is_number);
            need(
                run.get("server_command").is_some_and(Value::is_string),
                &format!("{server}.server_command"),
            );
            match sc.kind {
                Kind::IdleRss => {
                    for p in [
                        "/kib_per_connection",
                        "/rss_before_kib",
                        "/rss_after_kib",
                        "/connections_open",
                    ] {
                        need(num(p), &format!("{server}{}", p.replace('/', ".")));
                    }
                }
                _ => {
                    need(
                        run.get("loadgen_command").is_some_and(Value::is_string),
                        &format!("{server}.loadgen_command"),
                    );
                    need(
                        run.get("server_alive_after_run") == Some(&Value::Bool(true)),
                        &format!("{server} server exited during the run"),
                    );
                    for p in [
                        "/report/deliveries_per_sec",
                        "/report/sent",
                        "/report/expected",
                        "/report/received",
                        "/report/lost",
                        "/report/connect/ok",
                        "/report/latency_us/p50",
                        "/report/latency_us/p90",
                        "/report/latency_us/p99",
                        "/report/latency_us/p999",
                    ] {
                        need(num(p), &format!("{server}{}", p.replace('/', ".")));
                    }
                    need(
                        run.pointer("/report/cpu/saturated").is_some_and(Value::is_boolean),
                        &format!("{server}.report.cpu.saturated"),
                    );
                    if matches!(sc.kind, Kind::FindMax { .. }) {
                        need(
                            run.pointer("/report/find_max/steps").is_some_and(Value::is_array),
                            &format!("{server}.report.find_max.steps"),
                        );
                        need(
                            run.pointer("/report/find_max/best").is_some(),
                            &format!("{server}.report.find_max.best"),
                        );
                    }
                }
            }
        }
    }
    let readme = cfg.out_dir.join("README.md");
    match std::fs::read_to_string(&readme) {
        Ok(text) => {
            // Every chart the README references must exist next to it.
            for part in text.split("](").skip(1) {
                if let Some(file) = part.split(')').next().filter(|f| f.ends_with(".svg")) {
                    if !cfg.out_dir.join(file).is_file() {
                        problems.push(format!("README references missing {file}"));
                    }
                }
            }
        }
        Err(e) => problems.push(format!("{}: {e}", readme.display())),
    }
    problems
}
