//! Groups benchmark: the scenarios, the markdown section and validation of the JSON.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

/// How publishers reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishPath {
    /// `send_to_group` commands over WebSocket.
    Ws,
    /// The HTTP push API's seed form, `POST /?content=..&to_group=..`.
    HttpSeed,
    /// The HTTP push API's batch form, `POST /api/publish/batch`, this many per request.
    HttpBatch(usize),
}

impl PublishPath {
    /// The loadgen's `--publish` value.
    pub fn loadgen_flag(self) -> &'static str {
        match self {
            PublishPath::Ws => "ws",
            PublishPath::HttpSeed => "http",
            PublishPath::HttpBatch(_) => "http-batch",
        }
    }

    pub fn human(self) -> String {
        match self {
            PublishPath::Ws => "WebSocket `send_to_group`".into(),
            PublishPath::HttpSeed => "HTTP seed form `/?content=..&to_group=..`".into(),
            PublishPath::HttpBatch(n) => {
                format!("HTTP batch form `/api/publish/batch`, {n} per request")
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    /// `results/<name>.json`.
    pub name: String,
    pub publish: PublishPath,
    pub subscribers: usize,
    pub groups: usize,
    pub publishers: usize,
    pub payload: usize,
    pub p99_bound_ms: f64,
    /// First find-max rate, publishes/s.
    pub start_rate: f64,
    pub factor: f64,
    pub max_steps: u32,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub drain_s: f64,
    /// Hard limit for one load-generator process.
    pub timeout: Duration,
}

impl Scenario {
    pub fn group_size(&self) -> usize {
        self.subscribers / self.groups.max(1)
    }

    pub fn title(&self) -> String {
        format!(
            "{} subscribers in {} groups of {}, {} publishers, {}",
            thousands(self.subscribers as u64),
            thousands(self.groups as u64),
            self.group_size(),
            self.publishers,
            self.publish.human()
        )
    }

    /// Why a server cannot run this scenario at all, if it cannot.
    pub fn baseline_unsupported(&self) -> Option<&'static str> {
        match self.publish {
            PublishPath::HttpBatch(_) => Some(
                "the baseline has no batch endpoint (only the seed form), so the batch form is \
                 measured for ringcast only",
            ),
            _ => None,
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

pub const BATCH_SIZE: usize = 10;

pub fn all(quick: bool) -> Vec<Scenario> {
    // (subscribers, groups, step secs, warm-up, drain, start rate, factor, max steps)
    let (subs, groups, step_s, warmup_s, drain_s, start_rate, factor, max_steps) = if quick {
        (2_000, 200, 1.0, 0.5, 1.0, 500.0, 2.0, 6)
    } else {
        (10_000, 1_000, 3.0, 1.0, 2.0, 1_000.0, 1.25, 20)
    };
    [
        ("groups-ws", PublishPath::Ws),
        ("groups-http", PublishPath::HttpSeed),
        ("groups-http-batch", PublishPath::HttpBatch(BATCH_SIZE)),
    ]
    .into_iter()
    .map(|(name, publish)| Scenario {
        name: name.into(),
        publish,
        subscribers: subs,
        groups,
        publishers: 4,
        payload: 64,
        p99_bound_ms: 50.0,
        start_rate,
        factor,
        max_steps,
        duration_s: step_s,
        warmup_s,
        drain_s,
        timeout: Duration::from_secs_f64(
            warmup_s + (step_s + drain_s + 1.0) * f64::from(max_steps) + 90.0,
        ),
    })
    .collect()
}

// ---- reading runs -------------------------------------------------------------------------

fn f(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

fn report(run: &Value) -> Option<&Value> {
    run.get("report").filter(|r| r.is_object())
}

/// The best find-max step (None if no step met the bounds, or no run).
pub fn best(run: &Value) -> Option<&Value> {
    report(run)?.pointer("/find_max/best").filter(|b| b.is_object())
}

/// Publishes/s of a step: messages sent over the step's length.
pub fn publishes_per_sec(step: &Value) -> Option<f64> {
    Some(f(step, "/sent")? / f(step, "/duration_s")?.max(1e-9))
}

/// Every step met the bounds: the real maximum is higher than the best step.
pub fn hit_step_limit(run: &Value, max_steps: u32) -> Option<bool> {
    let steps = report(run)?.pointer("/find_max/steps")?.as_array()?;
    let ok = |s: &Value| {
        let expected = f(s, "/expected").unwrap_or(0.0);
        let bound = f(report(run)?, "/find_max/p99_bound_ms")?;
        Some(
            expected > 0.0
                && f(s, "/latency_us/p99")? <= bound * 1000.0
                && f(s, "/received")? >= 0.99 * expected,
        )
    };
    Some(steps.len() as u32 >= max_steps && steps.iter().all(|s| ok(s) == Some(true)))
}

/// Summary of a run's best step, stored next to the raw report.
pub fn summary(run: &Value, max_steps: u32) -> Value {
    let Some(b) = best(run) else {
        return json!({ "met_bound": false });
    };
    json!({
        "met_bound": true,
        "offered_rate": f(b, "/rate"),
        "publishes_per_sec": publishes_per_sec(b),
        "deliveries_per_sec": f(b, "/deliveries_per_sec"),
        "latency_us": b.get("latency_us"),
        "lost": f(b, "/lost"),
        "http_errors": b.pointer("/http/errors"),
        "http_status": b.pointer("/http/status"),
        "hit_step_limit": hit_step_limit(run, max_steps),
    })
}

// ---- meta ---------------------------------------------------------------------------------

fn command_output(cmd: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(cmd).args(args).current_dir(dir).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn git_commit(ws: &Path) -> String {
    let mut c =
        command_output("git", &["rev-parse", "HEAD"], ws).unwrap_or_else(|| "unknown".into());
    if command_output("git", &["status", "--porcelain", "--untracked-files=no"], ws)
        .is_some_and(|s| !s.is_empty())
    {
        c.push_str(" (plus uncommitted changes)");
    }
    c
}

pub fn machine(ws: &Path) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    json!({
        "cores": command_output("nproc", &["--all"], ws).unwrap_or_else(|| "unknown".into()),
        "cpu_model": cpu_model,
        "kernel": command_output("uname", &["-r"], ws).unwrap_or_else(|| "unknown".into()),
    })
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
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

// ---- markdown -----------------------------------------------------------------------------

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn opt(v: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    v.map(fmt).unwrap_or_else(|| "—".into())
}

/// A cell for a server that did not produce a measurement.
fn not_measured(run: &Value) -> Option<String> {
    if run.get("skipped").is_some() {
        return Some("not run (see below)".into());
    }
    if let Some(e) = run.get("error").and_then(Value::as_str) {
        return Some(format!("error: {}", e.lines().next().unwrap_or("").replace('|', "\\|")));
    }
    if run.is_null() {
        return Some("not run".into());
    }
    None
}

fn rate_cell(run: &Value, max_steps: u32, key: &str) -> String {
    if let Some(n) = not_measured(run) {
        return n;
    }
    match best(run) {
        None => "no step met the bound".into(),
        Some(b) => {
            let v = match key {
                "publishes" => publishes_per_sec(b),
                _ => f(b, "/deliveries_per_sec"),
            };
            let s = opt(v, human);
            if hit_step_limit(run, max_steps) == Some(true) {
                format!("≥ {s} (step limit)")
            } else {
                s
            }
        }
    }
}

fn lat_cell(run: &Value) -> String {
    if not_measured(run).is_some() {
        return "—".into();
    }
    let Some(b) = best(run) else { return "—".into() };
    format!(
        "{} / {} / {}",
        opt(f(b, "/latency_us/p50"), fmt_us),
        opt(f(b, "/latency_us/p99"), fmt_us),
        opt(f(b, "/latency_us/p999"), fmt_us)
    )
}

fn best_f(run: &Value, ptr: &str) -> Option<f64> {
    f(best(run)?, ptr)
}

/// A field of the report's top level: the best step, or the last one when none met the bound.
fn top_f(run: &Value, ptr: &str) -> Option<f64> {
    f(report(run)?, ptr)
}

/// The steps of a run as `rate→p99` pairs.
fn steps_line(run: &Value) -> String {
    if let Some(why) = run.get("skipped").and_then(Value::as_str) {
        return format!("not run: {why}");
    }
    if let Some(n) = not_measured(run) {
        return n;
    }
    let Some(steps) =
        report(run).and_then(|r| r.pointer("/find_max/steps")).and_then(Value::as_array)
    else {
        return "—".into();
    };
    steps
        .iter()
        .map(|s| {
            let errs = f(s, "/http/errors").filter(|e| *e > 0.0);
            format!(
                "{}/s → p99 {}, {:.1} % delivered{}",
                opt(publishes_per_sec(s), human),
                opt(f(s, "/latency_us/p99"), fmt_us),
                100.0 * f(s, "/received").unwrap_or(0.0)
                    / f(s, "/expected").unwrap_or(1.0).max(1.0),
                errs.map(|e| format!(", {e:.0} HTTP errors")).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub struct MdInput<'a> {
    pub quick: bool,
    pub docs: &'a [(Scenario, Option<Value>)],
    pub workspace: &'a Path,
    pub elapsed: Option<Duration>,
}

pub fn markdown(inp: &MdInput<'_>) -> String {
    let mut md = String::new();
    let w = &mut md;
    let Some(first) = inp.docs.first().map(|(s, _)| s) else { return md };
    let _ = writeln!(
        w,
        "## Groups: {} subscribers in {} groups of {}{}\n",
        thousands(first.subscribers as u64),
        thousands(first.groups as u64),
        first.group_size(),
        if inp.quick { " (quick mode)" } else { "" }
    );
    let _ = writeln!(
        w,
        "Generated by `benches/groups.rs`; do not edit by hand. Publishers send each message to \
         the next group in rotation; every member of that group must receive it. Find-max steps \
         the publish rate up by ×{} per step until p99 exceeds {} ms or fewer than 99 % of the \
         deliveries arrive; the tables show each server's best step. Targets for this scenario on \
         this machine, for context: uWebSockets' topics ~14k publishes/s, ringcast's aim ≥ 21k, \
         Workerman ~6k.\n",
        first.factor, first.p99_bound_ms
    );
    if inp.quick {
        let _ = writeln!(
            w,
            "> **Quick mode**: fewer connections, 1 s steps, few steps: a smoke test, not the \
             published figures.\n"
        );
    }
    let distinct = |key: &str| {
        let mut out: Vec<String> = Vec::new();
        for v in
            inp.docs.iter().filter_map(|(_, d)| d.as_ref()?.get(key)?.as_str().map(String::from))
        {
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    };
    let quote = |v: &[String]| v.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(w, "- Command: {}", quote(&distinct("bench_command")));
    let _ = writeln!(w, "- Git commit: {}", quote(&distinct("git_commit")));
    let mut dates = distinct("date");
    dates.sort();
    let took = inp
        .elapsed
        .map(|e| format!(" (this run took {:.0} s)", e.as_secs_f64()))
        .unwrap_or_default();
    match (dates.first(), dates.last()) {
        (Some(a), Some(b)) if a != b => {
            let _ = writeln!(w, "- Date: {a} to {b}{took}");
        }
        (Some(a), _) => {
            let _ = writeln!(w, "- Date: {a}{took}");
        }
        _ => {}
    }
    if let Some(d) = inp.docs.iter().find_map(|(_, d)| d.as_ref()) {
        let _ = writeln!(
            w,
            "- Machine: {} cores, {}, kernel {}; server on CPU {}, load generator on CPU {}\n",
            d.pointer("/machine/cores").and_then(Value::as_str).unwrap_or("?"),
            d.pointer("/machine/cpu_model").and_then(Value::as_str).unwrap_or("?"),
            d.pointer("/machine/kernel").and_then(Value::as_str).unwrap_or("?"),
            d.pointer("/cpus/server").and_then(Value::as_str).unwrap_or("?"),
            d.pointer("/cpus/loadgen").and_then(Value::as_str).unwrap_or("?"),
        );
    }

    let _ = writeln!(
        w,
        "| Publish path | ringcast publishes/s | baseline publishes/s | ratio | ringcast deliveries/s \
         | baseline deliveries/s | ringcast p50 / p99 / p99.9 | baseline p50 / p99 / p99.9 | \
         lost (ringcast / baseline) | HTTP non-2xx (ringcast / baseline) |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (sc, d) in inp.docs {
        let Some(d) = d else {
            let _ = writeln!(w, "| {} | not run | | | | | | | | |", sc.publish.human());
            continue;
        };
        let (r, b) = (&d["ringcast"], &d["baseline"]);
        let ratio = match (best(r).and_then(publishes_per_sec), best(b).and_then(publishes_per_sec))
        {
            (Some(x), Some(y)) if y > 0.0 => {
                let pre = if hit_step_limit(r, sc.max_steps) == Some(true) { "≥ " } else { "" };
                format!("{pre}{:.2}×", x / y)
            }
            _ => "—".into(),
        };
        let http_errs = |run: &Value| {
            if sc.publish == PublishPath::Ws {
                return "n/a".to_string();
            }
            opt(top_f(run, "/http/errors"), |v| format!("{v:.0}"))
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {ratio} | {} | {} | {} | {} | {} / {} | {} / {} |",
            sc.publish.human(),
            rate_cell(r, sc.max_steps, "publishes"),
            rate_cell(b, sc.max_steps, "publishes"),
            rate_cell(r, sc.max_steps, "deliveries"),
            rate_cell(b, sc.max_steps, "deliveries"),
            lat_cell(r),
            lat_cell(b),
            opt(top_f(r, "/lost"), |v| format!("{v:.0}")),
            opt(top_f(b, "/lost"), |v| format!("{v:.0}")),
            http_errs(r),
            http_errs(b),
        );
    }
    // Why some cells are empty, once each.
    let mut reasons: Vec<String> = Vec::new();
    for (_, d) in inp.docs {
        for server in ["ringcast", "baseline"] {
            if let Some(why) = d.as_ref().and_then(|d| d[server].get("skipped")?.as_str()) {
                let line = format!("{server}: {why}");
                if !reasons.contains(&line) {
                    reasons.push(line);
                }
            }
        }
    }
    if !reasons.is_empty() {
        let _ = writeln!(w, "\nNot run:\n");
        for r in &reasons {
            let _ = writeln!(w, "- {r}");
        }
    }
    let _ = writeln!(
        w,
        "\nPublishes/s = messages the publishers sent during the best step ÷ the step's length; \
         deliveries/s = messages received by subscribers ÷ the time from the step's start to its \
         last delivery. \"≥ … (step limit)\": the server met the bound at every step, so its \
         maximum is higher. Lost and HTTP non-2xx are those of the best step (of the last step \
         when none met the bound). HTTP non-2xx counts refused pushes (the load generator checks every \
         response); they would show up as losses too.\n"
    );

    let _ = writeln!(w, "### Find-max steps\n");
    for (sc, d) in inp.docs {
        let Some(d) = d else { continue };
        for server in ["ringcast", "baseline"] {
            let _ = writeln!(w, "- {} / {server}: {}", sc.name, steps_line(&d[server]));
        }
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "### CPU and noise\n");
    let _ = writeln!(
        w,
        "| Scenario | server | server CPU (of one core) | server CPU µs per delivery | irq+softirq on \
         server CPU | other processes on server / load generator CPUs | load generator cores used \
         (best step) | server peak RSS |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (sc, d) in inp.docs {
        let Some(d) = d else { continue };
        for server in ["ringcast", "baseline"] {
            let run = &d[server];
            if not_measured(run).is_some() {
                continue;
            }
            // Every measured step's deliveries (warm-up excluded, so this overstates the cost a
            // little: connecting and warming up cost CPU too).
            let delivered: Option<f64> = report(run)
                .and_then(|r| r.pointer("/find_max/steps")?.as_array())
                .map(|steps| steps.iter().filter_map(|s| f(s, "/received")).sum());
            let per_delivery = match (f(run, "/server_cpu_s"), delivered) {
                (Some(c), Some(d)) if d > 0.0 => Some(c / d * 1e6),
                _ => None,
            };
            let _ = writeln!(
                w,
                "| {} | {server} | {} | {} | {} | {} / {} cores | {} | {} |",
                sc.name,
                opt(f(run, "/server_cpu_util"), |v| format!("{:.0} %", v * 100.0)),
                opt(per_delivery, |v| format!("{v:.1}")),
                opt(f(run, "/server_cpus_load/irq_cores"), |v| format!("{v:.2} cores")),
                opt(f(run, "/server_cpus_load/other_processes_cores"), |v| format!("{v:.2}")),
                opt(f(run, "/loadgen_cpus_load/other_processes_cores"), |v| format!("{v:.2}")),
                opt(best_f(run, "/cpu/cores_used"), |v| format!("{v:.2}")),
                opt(f(run, "/server_rss_kib/peak"), |v| format!("{:.1} MiB", v / 1024.0)),
            );
        }
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "### Method\n");
    let _ = writeln!(
        w,
        "- **ringcast**: `ringcast serve --listen 127.0.0.1:PORT --shards 1 --cpus CPU --on-message \
         commands --demo --commands-per-sec 0 --api-listen 127.0.0.1:PORT2 --max-connections 16384` \
         (demo: clients may join and publish to any group; command rate limit off).\n\
         - **baseline**: the bench binary re-executed with `RINGCAST_BENCH_ROLE=baseline-groups` \
         (`benches/fanout/baseline.rs`): current-thread tokio runtime, tokio-tungstenite, seed 004's \
         `add_group` / `send_to_group` parsed with serde_json, a `std::sync::Mutex<HashMap<group, \
         HashMap<connection id, mpsc::Sender<Message>>>>`, one bounded tokio mpsc channel (capacity \
         {cap}) per connection (a full channel skips the message), `SinkExt::send` per message; an \
         axum endpoint on a second port for `/?content=..&to_group=..` answering `{{\"queued\":N}}`. \
         It has no batch endpoint.\n\
         - **Load generator**: `ringcast-loadgen --mode groups --group-count G --find-max` (subscriber \
         i joins group i mod G with `{{\"cmd\":\"add_group\",\"group_id\":\"gN\"}}` right after \
         connecting; a warm-up step lets the joins settle). WebSocket publishers send \
         `{{\"cmd\":\"send_to_group\",\"group_id\":\"gN\",\"message\":\"<text>\"}}`; HTTP publishers \
         pipeline requests on one keep-alive connection each and count every response's status. \
         See `docs/loadgen-contract.md`.\n\
         - Each (scenario, server) pair gets a freshly started server on fresh ports, pinned with \
         `sched_setaffinity` before exec; the servers run one after the other. If even the first \
         step misses the bound, the search is retried once from a tenth of the start rate.\n\
         - The machine is shared with other work: \"other processes\" above is CPU time used on \
         those CPUs by anything but the measured process; well above zero means the figure is less \
         reliable. Server CPU per delivery (utime + stime over the load generator's whole life ÷ \
         deliveries in all measured steps) is the figure least affected by such noise.\n",
        cap = crate::baseline::CHANNEL_CAPACITY
    );

    let _ = writeln!(w, "### Commands\n");
    let ws_prefix = format!("{}/", inp.workspace.display());
    let _ = writeln!(w, "```");
    let mut builds: Vec<String> = Vec::new();
    for (_, d) in inp.docs {
        for c in d
            .as_ref()
            .and_then(|d| d.get("build_commands")?.as_array().cloned())
            .unwrap_or_default()
        {
            if let Some(c) = c.as_str().map(String::from).filter(|c| !builds.contains(c)) {
                builds.push(c);
            }
        }
    }
    for c in &builds {
        let _ = writeln!(w, "{c}");
    }
    for (sc, d) in inp.docs {
        let Some(d) = d else { continue };
        let _ = writeln!(w, "# {}", sc.name);
        for server in ["ringcast", "baseline"] {
            for key in ["server_command", "loadgen_command"] {
                if let Some(c) = d[server].get(key).and_then(Value::as_str) {
                    let _ = writeln!(w, "{}", c.replace(&ws_prefix, ""));
                }
            }
        }
    }
    let _ = writeln!(w, "```");
    md
}

// ---- validation ---------------------------------------------------------------------------

/// Checks the fields the markdown relies on. A ringcast run skipped because the binary lacks
/// the groups flags is reported separately by the caller, not here.
pub fn validate(path: &Path, sc: &Scenario) -> Vec<String> {
    let mut problems = Vec::new();
    let doc = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => return vec![format!("{}: {e}", path.display())],
    };
    let mut need = |ok: bool, what: &str| {
        if !ok {
            problems.push(format!("{}: {what}", path.display()));
        }
    };
    need(doc["scenario"] == sc.name.as_str(), "scenario name");
    need(doc.get("git_commit").is_some_and(Value::is_string), "git_commit");
    need(doc.get("bench_command").is_some_and(Value::is_string), "bench_command");
    for server in ["ringcast", "baseline"] {
        let run = &doc[server];
        if run.get("skipped").is_some_and(Value::is_string) {
            continue;
        }
        if let Some(e) = run.get("error") {
            need(false, &format!("{server} run failed: {}", e.as_str().unwrap_or("?")));
            continue;
        }
        for key in ["server_command", "loadgen_command"] {
            need(run.get(key).is_some_and(Value::is_string), &format!("{server}.{key}"));
        }
        need(
            run.get("server_alive_after_run") == Some(&Value::Bool(true)),
            &format!("{server} server exited during the run"),
        );
        need(
            run.pointer("/report/find_max/steps").is_some_and(Value::is_array),
            &format!("{server}.report.find_max.steps"),
        );
        need(
            run.pointer("/report/groups/count").and_then(Value::as_u64) == Some(sc.groups as u64),
            &format!("{server}.report.groups.count"),
        );
        if sc.publish != PublishPath::Ws {
            need(
                run.pointer("/report/http/requests").is_some_and(Value::is_u64),
                &format!("{server}.report.http"),
            );
        }
        need(
            run.pointer("/report/connect/ok").and_then(Value::as_u64)
                == Some(sc.subscribers as u64),
            &format!("{server}: not every subscriber connected"),
        );
        // Protocol problems rather than overload: the server refused joins or publishes, or
        // refused HTTP pushes even at the lowest rate (wrong form, auth, missing endpoint).
        let replies = |k: &str| run.pointer(&format!("/report/groups/{k}")).and_then(Value::as_u64);
        need(
            replies("error_replies_subscribers") == Some(0)
                && replies("error_replies_publishers") == Some(0),
            &format!(
                "{server}: the server sent error replies: {}",
                run.pointer("/report/groups/first_error").and_then(Value::as_str).unwrap_or("?")
            ),
        );
        if sc.publish != PublishPath::Ws {
            let first = run.pointer("/report/find_max/steps/0");
            let errs = first.and_then(|s| s.pointer("/http/errors")).and_then(Value::as_u64);
            need(
                errs == Some(0),
                &format!(
                    "{server}: HTTP pushes refused at the lowest rate (statuses {})",
                    first.and_then(|s| s.pointer("/http/status")).unwrap_or(&Value::Null)
                ),
            );
        }
    }
    problems
}
