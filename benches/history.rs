//! History benchmark (issue 10): what history costs on the publish path, and how long a client
//! that missed 10,000 messages takes to recover.
//!
//! 1. Cost: the groups scenarios of `benches/groups.rs` (subscribers in groups, publishers
//!    over WebSocket `send_to_group` and over the HTTP batch API, find-max with p99 ≤ 50 ms)
//!    against `ringcast serve` without history and with `--history-rule 'g*=1000,10m'` (every
//!    group keeps its last 1,000 messages: each publish gets a position and is stored). Rounds interleave off/on (alternating which goes first), so
//!    the VM's noise hits both alike; the ratio per round and its spread are reported.
//!    Subscribers are plain (no envelope): the loadgen reads its timestamp from the payload.
//! 2. Recovery: one client joins a group with `"envelope":true`, notes its position and
//!    disconnects; 10,000 messages of 64 bytes are published (HTTP batches); the client
//!    reconnects with `since` and the time from sending `add_group` to holding the 10,000th
//!    replayed message is measured, five times.
//!
//! Server on CPU 0 (one shard), load generator and recovery client on CPU 1. `cargo bench
//! --bench history` writes `results/history.json` and `results/history.md`;
//! `RINGCAST_BENCH_QUICK=1` a short version into `results/quick/`. `RINGCAST_BENCH_ROUNDS`
//! sets the rounds (default 3; 1 in quick mode).

// Shared with benches/groups.rs and benches/fanout.rs: not every item is used here.
#[allow(dead_code)]
#[path = "fanout/baseline.rs"]
mod baseline;
#[allow(dead_code)]
#[path = "fanout/groups_report.rs"]
mod groups_report;
#[allow(dead_code)]
#[path = "fanout/procs.rs"]
mod procs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use groups_report::{PublishPath, Scenario};
use procs::{Proc, Spec};

const HISTORY_RULE: &str = "g*=1000,10m";
/// The recovery client's groups: room for the 10,000 messages it misses.
const RECOVERY_RULE: &str = "r*=20000,10m";

/// How one cost run loads the server.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Step the rate up until p99 > 50 ms (or loss): the best step's deliveries/s.
    FindMax,
    /// A fixed publish rate: server CPU per delivery.
    Fixed(f64),
}
const RECOVERY_MESSAGES: usize = 10_000;
const RECOVERY_REPEATS: usize = 5;

struct Cfg {
    rounds: usize,
    out_dir: PathBuf,
    log_dir: PathBuf,
    server_cpus: Vec<usize>,
    loadgen_cpus: Vec<usize>,
    ringcast_bin: PathBuf,
    loadgen_bin: PathBuf,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("history: error: {e:#}");
        procs::kill_all_children();
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    procs::install_cleanup_handlers()?;
    let quick = std::env::args().any(|a| a == "--quick") || procs::env_flag("RINGCAST_BENCH_QUICK");
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out_dir =
        if quick { workspace.join("results").join("quick") } else { workspace.join("results") };
    let log_dir =
        workspace.join("results").join("tmp").join(if quick { "history-quick" } else { "history" });
    std::fs::create_dir_all(&out_dir)?;
    std::fs::create_dir_all(&log_dir)?;
    let cpus = |var: &str, default: &str| {
        procs::parse_cpu_list(&std::env::var(var).unwrap_or_else(|_| default.into()))
            .with_context(|| var.to_owned())
    };
    let bins = procs::Binaries::resolve(&workspace, false)?;
    let rounds = std::env::var("RINGCAST_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let cfg = Cfg {
        rounds,
        out_dir,
        log_dir,
        server_cpus: cpus("RINGCAST_BENCH_SERVER_CPUS", "0")?,
        loadgen_cpus: cpus("RINGCAST_BENCH_LOADGEN_CPUS", "1")?,
        ringcast_bin: bins.ringcast_bin,
        loadgen_bin: bins.loadgen_bin,
    };
    let started = Instant::now();
    let all = groups_report::all(quick);
    let ws = all.iter().find(|s| s.publish == PublishPath::Ws).context("groups-ws")?.clone();
    let batch = all
        .iter()
        .find(|s| matches!(s.publish, PublishPath::HttpBatch(_)))
        .context("groups-http-batch")?
        .clone();
    let mut find_max = ws.clone();
    if !quick {
        // Start below ringcast's known maximum (results/groups.md, ~9.3k publishes/s) and
        // step by 10 % (7k .. 12.4k publishes/s), 2 s per step: finer than groups.rs's 25 %
        // steps, and the whole run stays under 10 minutes.
        (find_max.start_rate, find_max.factor, find_max.max_steps, find_max.duration_s) =
            (7_000.0, 1.1, 7, 2.0);
    }
    let fixed = |sc: &Scenario, rate: f64| {
        let mut sc = sc.clone();
        sc.duration_s = if quick { 3.0 } else { 10.0 };
        sc.timeout = Duration::from_secs(120);
        (sc, Mode::Fixed(if quick { rate / 4.0 } else { rate }))
    };
    let scenarios = vec![(find_max, Mode::FindMax), fixed(&ws, 5_000.0), fixed(&batch, 8_000.0)];
    let mut cost = Vec::new();
    for (sc, mode) in &scenarios {
        let mut rounds = Vec::new();
        for round in 0..cfg.rounds {
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            let mut r = serde_json::Map::new();
            for history in order {
                let key = if history { "on" } else { "off" };
                eprintln!("history: {} round {} history {key}", sc.name, round + 1);
                let run = run_load(&cfg, sc, *mode, history)
                    .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
                eprintln!("history:   {}", one_line(&run));
                r.insert(key.into(), run);
            }
            let key = match mode {
                Mode::FindMax => "/best/deliveries_per_sec",
                Mode::Fixed(_) => "/cpu_us_per_delivery",
            };
            let v = |k: &str| r[k].pointer(key).and_then(Value::as_f64);
            let ratio = match (v("on"), v("off")) {
                (Some(on), Some(off)) if off > 0.0 => json!(on / off),
                _ => Value::Null,
            };
            r.insert("ratio_on_off".into(), ratio);
            rounds.push(Value::Object(r));
        }
        let (mode_name, rate) = match mode {
            Mode::FindMax => ("find-max", Value::Null),
            Mode::Fixed(rate) => ("fixed", json!(rate)),
        };
        cost.push(json!({
            "scenario": sc.name,
            "title": sc.title(),
            "mode": mode_name,
            "publishes_per_sec": rate,
            "duration_s": sc.duration_s,
            "rounds": rounds,
        }));
    }
    eprintln!("history: recovery of {RECOVERY_MESSAGES} missed messages");
    let recovery = recovery(&cfg).unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
    let doc = json!({
        "mode": if quick { "quick" } else { "full" },
        "history_rule": HISTORY_RULE,
        "cost": cost,
        "recovery": recovery,
        "bench_command": format!("{}cargo bench --bench history",
            if quick { "RINGCAST_BENCH_QUICK=1 " } else { "" }),
        "build_commands": bins.build_commands,
        "git_commit": groups_report::git_commit(&workspace),
        "date": groups_report::utc_now(),
        "machine": groups_report::machine(&workspace),
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    std::fs::write(cfg.out_dir.join("history.json"), serde_json::to_string_pretty(&doc)? + "\n")?;
    std::fs::write(cfg.out_dir.join("history.md"), markdown(&doc))?;
    eprintln!(
        "history: done in {:.0}s, {}",
        started.elapsed().as_secs_f64(),
        cfg.out_dir.display()
    );
    // A run that failed is recorded above, then fails the bench (CI runs the quick version).
    let failed = doc.to_string().matches("\"error\":").count();
    if failed > 0 {
        bail!("{failed} run(s) failed; see {}", cfg.out_dir.join("history.json").display());
    }
    Ok(())
}

fn one_line(run: &Value) -> String {
    if let Some(e) = run.get("error") {
        return format!("ERROR {e}");
    }
    if let Some(c) = run["cpu_us_per_delivery"].as_f64() {
        return format!(
            "{:.0} deliveries/s, p99 {:.1} ms, {c:.3} µs server CPU per delivery",
            run["report"]["deliveries_per_sec"].as_f64().unwrap_or(f64::NAN),
            run["report"]["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        );
    }
    let b = &run["best"];
    format!(
        "{:.0} deliveries/s, p99 {:.1} ms, server CPU {:.2} s",
        b["deliveries_per_sec"].as_f64().unwrap_or(f64::NAN),
        b["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        run["server_cpu_s"].as_f64().unwrap_or(f64::NAN)
    )
}

fn server_args(ws: SocketAddr, http: SocketAddr, cpu: usize, history: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "serve",
        "--listen",
        &ws.to_string(),
        "--shards",
        "1",
        "--cpus",
        &cpu.to_string(),
        "--on-message",
        "commands",
        "--demo",
        "--commands-per-sec",
        "0",
        "--api-listen",
        &http.to_string(),
        "--max-connections",
        "16384",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if history {
        a.extend(["--history-rule".into(), HISTORY_RULE.into()]);
        a.extend(["--history-rule".into(), RECOVERY_RULE.into()]);
    }
    a
}

fn start_server(cfg: &Cfg, name: &str, history: bool) -> Result<(Proc, SocketAddr, SocketAddr)> {
    let ws: SocketAddr = format!("127.0.0.1:{}", procs::free_port()?).parse()?;
    let mut http: SocketAddr = format!("127.0.0.1:{}", procs::free_port()?).parse()?;
    while http == ws {
        http = format!("127.0.0.1:{}", procs::free_port()?).parse()?;
    }
    let log = cfg.log_dir.join(format!("{name}-server.log"));
    let spec = Spec {
        name: format!("ringcast ({name})"),
        program: &cfg.ringcast_bin,
        args: server_args(ws, http, cfg.server_cpus[0], history),
        envs: vec![("RUST_LOG".into(), "warn".into())],
        cpus: &cfg.server_cpus,
        stdout_piped: false,
        stdin_piped: false,
        log: &log,
    };
    let mut p = procs::spawn(&spec)?;
    procs::wait_listening(&mut p, ws, Duration::from_secs(20))?;
    procs::wait_listening(&mut p, http, Duration::from_secs(20))?;
    Ok((p, ws, http))
}

fn loadgen_args(sc: &Scenario, mode: Mode, ws: SocketAddr, http: SocketAddr) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--url".into(),
        format!("ws://{ws}/"),
        "--connections".into(),
        sc.subscribers.to_string(),
        "--publishers".into(),
        sc.publishers.to_string(),
        "--payload".into(),
        sc.payload.to_string(),
        "--mode".into(),
        "groups".into(),
        "--group-count".into(),
        sc.groups.to_string(),
        "--publish".into(),
        sc.publish.loadgen_flag().into(),
        "--duration".into(),
        sc.duration_s.to_string(),
        "--warmup".into(),
        sc.warmup_s.to_string(),
        "--drain-secs".into(),
        sc.drain_s.to_string(),
        "--no-progress".into(),
        "--json".into(),
    ];
    match mode {
        Mode::FindMax => a.extend([
            "--find-max".into(),
            "--p99-bound-ms".into(),
            sc.p99_bound_ms.to_string(),
            "--start-rate".into(),
            sc.start_rate.to_string(),
            "--rate-step-factor".into(),
            sc.factor.to_string(),
            "--max-steps".into(),
            sc.max_steps.to_string(),
        ]),
        Mode::Fixed(rate) => a.extend(["--rate".into(), rate.to_string()]),
    }
    if sc.publish != PublishPath::Ws {
        a.extend(["--http-url".into(), format!("http://{http}/")]);
    }
    if let PublishPath::HttpBatch(n) = sc.publish {
        a.extend(["--batch-size".into(), n.to_string()]);
    }
    a
}

fn run_load(cfg: &Cfg, sc: &Scenario, mode: Mode, history: bool) -> Result<Value> {
    let name = format!("{}-{}", sc.name, if history { "on" } else { "off" });
    let (mut srv, ws, http) = start_server(cfg, &name, history)?;
    std::thread::sleep(Duration::from_millis(200));
    let cpu0 = procs::cpu_seconds(srv.pid())?;
    let log = cfg.log_dir.join(format!("{name}-loadgen.log"));
    let spec = Spec {
        name: format!("loadgen ({name})"),
        program: &cfg.loadgen_bin,
        args: loadgen_args(sc, mode, ws, http),
        envs: vec![],
        cpus: &cfg.loadgen_cpus,
        stdout_piped: true,
        stdin_piped: false,
        log: &log,
    };
    let t0 = Instant::now();
    let mut lg = procs::spawn(&spec)?;
    let stdout = procs::read_to_end_async(lg.child.stdout.take().context("loadgen stdout")?);
    let status = loop {
        if let Some(st) = lg.wait_timeout(Duration::from_millis(250))? {
            break st;
        }
        if t0.elapsed() > sc.timeout {
            lg.terminate(Duration::from_secs(2))?;
            bail!("load generator timed out; log tail:\n{}", lg.log_tail(20));
        }
    };
    let cpu1 = procs::cpu_seconds(srv.pid()).ok();
    let out = stdout.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    if !status.success() {
        bail!("load generator exited with {status}; log tail:\n{}", lg.log_tail(20));
    }
    let report = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(Value::is_object))
        .context("no JSON report from the load generator")?;
    let metrics: Value = http_get(http, "/api/metrics").unwrap_or(Value::Null);
    srv.terminate(Duration::from_secs(6))?;
    let mut run = json!({
        "history": history,
        "server_command": srv.command_line,
        "loadgen_command": lg.command_line,
        "server_cpu_s": cpu1.map(|c| c - cpu0),
        "wall_s": t0.elapsed().as_secs_f64(),
        "report": report,
        "history_counters": {
            "history_messages_stored": metrics["history_messages_stored"],
            "history_messages_evicted": metrics["history_messages_evicted"],
            "history_bytes": metrics["history_bytes"],
            "deliveries": metrics["deliveries"],
            "mesh_dropped": metrics["mesh_dropped"],
        },
    });
    match mode {
        Mode::FindMax => run["best"] = groups_report::summary(&run, sc.max_steps),
        Mode::Fixed(_) => {
            let deliveries = metrics["deliveries"].as_f64().unwrap_or(0.0);
            let cpu = run["server_cpu_s"].as_f64().unwrap_or(f64::NAN);
            run["cpu_us_per_delivery"] =
                if deliveries > 0.0 { json!(cpu * 1e6 / deliveries) } else { Value::Null };
        }
    }
    Ok(run)
}

/// A blocking GET returning JSON (HTTP/1.0-style: one request per connection).
fn http_get(addr: SocketAddr, path: &str) -> Result<Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let (a, b) = (body.find('{').context("no JSON")?, body.rfind('}').context("no JSON")?);
    Ok(serde_json::from_str(&body[a..=b])?)
}

// ---- recovery ---------------------------------------------------------------------------------

fn recovery(cfg: &Cfg) -> Result<Value> {
    let (srv, ws, http) = start_server(cfg, "recovery", true)?;
    // This process plays the client: pin it to the load generator's CPUs.
    if let Some(&cpu) = cfg.loadgen_cpus.first() {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut times_ms = Vec::new();
    for i in 0..RECOVERY_REPEATS {
        let ms = rt.block_on(recover_once(ws, http, &format!("r-recovery-{i}")))?;
        eprintln!("history:   recovery {}: {ms:.1} ms", i + 1);
        times_ms.push(ms);
    }
    let server_command = srv.command_line.clone();
    drop(srv);
    let mut sorted = times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(json!({
        "messages": RECOVERY_MESSAGES,
        "payload_bytes": 64,
        "times_ms": times_ms,
        "min_ms": sorted.first(),
        "median_ms": sorted.get(sorted.len() / 2),
        "max_ms": sorted.last(),
        "server_command": server_command,
    }))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Result<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("timed out")?
            .context("closed")??;
        if let WsMessage::Text(t) = m {
            return Ok(serde_json::from_str(t.as_str())?);
        }
    }
}

async fn recover_once(ws_addr: SocketAddr, http: SocketAddr, group: &str) -> Result<f64> {
    let url = format!("ws://{ws_addr}/");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    next_json(&mut ws).await?; // welcome
    let join = json!({"cmd":"add_group","group_id":group,"envelope":true});
    ws.send(WsMessage::text(join.to_string())).await?;
    let reply = next_json(&mut ws).await?;
    let (epoch, offset) = (reply["epoch"].clone(), reply["offset"].clone());
    ws.close(None).await?;
    drop(ws);
    let client = reqwest::Client::builder().no_proxy().build()?;
    let payload = "x".repeat(64);
    for _ in 0..RECOVERY_MESSAGES / 1000 {
        let publishes: Vec<Value> =
            (0..1000).map(|_| json!({"data":payload,"to":{"groups":[group]}})).collect();
        let r = client
            .post(format!("http://{http}/api/publish/batch"))
            .json(&json!({ "publishes": publishes }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("batch publish: {}", r.status());
        }
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    next_json(&mut ws).await?; // welcome
    let join = json!({"cmd":"add_group","group_id":group,"since":{"epoch":epoch,"offset":offset}});
    let t0 = Instant::now();
    ws.send(WsMessage::text(join.to_string())).await?;
    let reply = next_json(&mut ws).await?;
    if reply["recovered"] != true || reply["replayed"] != RECOVERY_MESSAGES {
        bail!("not recovered: {reply}");
    }
    let mut n = 0;
    while n < RECOVERY_MESSAGES {
        let m = next_json(&mut ws).await?;
        if m["type"] == "message" {
            n += 1;
        }
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

// ---- report -----------------------------------------------------------------------------------

fn markdown(doc: &Value) -> String {
    let mut s = String::new();
    s.push_str("# History: cost on the publish path, and recovery time\n\n");
    s.push_str(&format!(
        "Generated by `{}` (`/work/bin/cpu-exclusive` around it on the shared VM), commit {}, \
         {}. Server: one shard pinned to CPU 0; load generator and recovery client on CPU 1. \
         History on means `--history-rule '{}'`: every group keeps its last 1,000 messages, \
         each publish gets a position and is stored. \
         Subscribers are plain (no envelope). Fixed-rate runs: server CPU seconds over the \
         whole run (connection set-up and joins included, the same for off and on) ÷ the \
         deliveries the server made.\n\n",
        doc["bench_command"].as_str().unwrap_or(""),
        doc["git_commit"].as_str().unwrap_or(""),
        doc["date"].as_str().unwrap_or(""),
        doc["history_rule"].as_str().unwrap_or("")
    ));
    for c in doc["cost"].as_array().into_iter().flatten() {
        let fixed = c["mode"] == "fixed";
        if fixed {
            s.push_str(&format!(
                "## {}: {}, fixed {} publishes/s for {} s: server CPU per delivery\n\n\
                 | round | off: µs/delivery | on: µs/delivery | on/off | off: deliveries/s | on: \
                 deliveries/s | off p99 ms | on p99 ms |\n|---|---|---|---|---|---|---|---|\n",
                c["scenario"].as_str().unwrap_or(""),
                c["title"].as_str().unwrap_or(""),
                c["publishes_per_sec"],
                c["duration_s"]
            ));
        } else {
            s.push_str(&format!(
                "## {}: {}, find-max (p99 ≤ 50 ms): best step\n\n| round | off: \
                 deliveries/s | on: deliveries/s | on/off | off p99 ms | on p99 ms |\n\
                 |---|---|---|---|---|---|\n",
                c["scenario"].as_str().unwrap_or(""),
                c["title"].as_str().unwrap_or("")
            ));
        }
        let mut ratios = Vec::new();
        for (i, r) in c["rounds"].as_array().into_iter().flatten().enumerate() {
            let f0 = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.0}"));
            let f1 = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}"));
            let f3 = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
            let ratio = r["ratio_on_off"].as_f64();
            if let Some(x) = ratio {
                ratios.push(x);
            }
            if fixed {
                let cpu = |k: &str| r[k]["cpu_us_per_delivery"].as_f64();
                let d = |k: &str| r[k]["report"]["deliveries_per_sec"].as_f64();
                let p = |k: &str| r[k]["report"]["latency_us"]["p99"].as_f64().map(|v| v / 1000.0);
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    i + 1,
                    f3(cpu("off")),
                    f3(cpu("on")),
                    f3(ratio),
                    f0(d("off")),
                    f0(d("on")),
                    f1(p("off")),
                    f1(p("on"))
                ));
            } else {
                let d = |k: &str| r[k]["best"]["deliveries_per_sec"].as_f64();
                let p = |k: &str| r[k]["best"]["latency_us"]["p99"].as_f64().map(|v| v / 1000.0);
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    i + 1,
                    f0(d("off")),
                    f0(d("on")),
                    f3(ratio),
                    f1(p("off")),
                    f1(p("on"))
                ));
            }
        }
        if !ratios.is_empty() {
            ratios.sort_by(f64::total_cmp);
            s.push_str(&format!(
                "\non/off over {} round(s): {:.3} … {:.3} (median {:.3}).\n\n",
                ratios.len(),
                ratios[0],
                ratios[ratios.len() - 1],
                ratios[ratios.len() / 2]
            ));
        }
    }
    let r = &doc["recovery"];
    s.push_str(&format!(
        "\n## Recovery of {} missed messages ({} B each)\n\nTime from sending \
         `add_group` with `since` to holding the last replayed message, {} runs: min {:.1} ms, \
         median {:.1} ms, max {:.1} ms (all: {}).\n",
        r["messages"],
        r["payload_bytes"],
        r["times_ms"].as_array().map_or(0, Vec::len),
        r["min_ms"].as_f64().unwrap_or(f64::NAN),
        r["median_ms"].as_f64().unwrap_or(f64::NAN),
        r["max_ms"].as_f64().unwrap_or(f64::NAN),
        r["times_ms"]
    ));
    s
}
