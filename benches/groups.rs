//! Groups benchmark: 10,000 subscribers in 1,000 groups of 10, publishers sending to the groups
//! in rotation over WebSocket (`send_to_group`) and through the HTTP push API (seed form, and
//! the batch form for ringcast only: the baseline has none). Find-max publishes/s and
//! deliveries/s with p99 ≤ 50 ms, ringcast (`--on-message commands --demo`) against the in-tree
//! tokio baseline's groups mode, side by side in one run: server pinned to CPU 0, load
//! generator to CPU 1.
//!
//! `cargo bench --bench groups` writes `results/groups-*.json` and `results/groups.md`;
//! `RINGCAST_BENCH_QUICK=1` (or `-- --quick`) a short version into `results/quick/`. Extra
//! non-flag arguments select scenarios whose name contains them. `--report-only` rebuilds the
//! markdown from the JSON. `RINGCAST_BENCH_SERVER_CPUS`, `RINGCAST_BENCH_LOADGEN_CPUS`,
//! `RINGCAST_BENCH_RINGCAST_BIN` and `RINGCAST_BENCH_LOADGEN_BIN` work as for `fanout`.
//!
//! Until `ringcast serve` has the groups flags (`--on-message commands`, `--demo`,
//! `--commands-per-sec`, `--api-listen`), the ringcast side is recorded as skipped (with the
//! reason) and only the baseline runs; `RINGCAST_BENCH_REQUIRE_RINGCAST=1` makes that an error.

// Shared with benches/fanout.rs: not every item is used by this binary.
#[allow(dead_code)]
#[path = "fanout/baseline.rs"]
mod baseline;
#[path = "fanout/groups_report.rs"]
mod groups_report;
#[allow(dead_code)]
#[path = "fanout/procs.rs"]
mod procs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use groups_report::{PublishPath, Scenario};
use procs::{Proc, Spec};

const ROLE_ENV: &str = "RINGCAST_BENCH_ROLE";
const LISTEN_ENV: &str = "RINGCAST_BENCH_LISTEN";
const HTTP_LISTEN_ENV: &str = "RINGCAST_BENCH_HTTP_LISTEN";
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);
const SERVER_STOP_GRACE: Duration = Duration::from_secs(6);

fn main() {
    let res = match std::env::var(ROLE_ENV).ok().as_deref() {
        Some("baseline-groups") => role_baseline(),
        Some(other) => Err(anyhow::anyhow!("unknown {ROLE_ENV}={other}")),
        None => harness(),
    };
    if let Err(e) = res {
        eprintln!("groups: error: {e:#}");
        procs::kill_all_children();
        std::process::exit(1);
    }
}

fn role_baseline() -> Result<()> {
    let ws = std::env::var(LISTEN_ENV).with_context(|| format!("{LISTEN_ENV} not set"))?;
    let http =
        std::env::var(HTTP_LISTEN_ENV).with_context(|| format!("{HTTP_LISTEN_ENV} not set"))?;
    baseline::run_groups(&ws, &http)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Ringcast,
    Baseline,
}

impl Server {
    const ALL: [Server; 2] = [Server::Ringcast, Server::Baseline];
    fn key(self) -> &'static str {
        match self {
            Server::Ringcast => "ringcast",
            Server::Baseline => "baseline",
        }
    }
}

struct Cfg {
    quick: bool,
    workspace: PathBuf,
    out_dir: PathBuf,
    log_dir: PathBuf,
    server_cpus: Vec<usize>,
    loadgen_cpus: Vec<usize>,
    ringcast_bin: PathBuf,
    loadgen_bin: PathBuf,
    self_exe: PathBuf,
    bench_command: String,
    build_commands: Vec<String>,
    /// Why ringcast cannot run the groups scenarios yet (its binary lacks the flags).
    ringcast_unsupported: Option<String>,
    git_commit: String,
    machine: Value,
}

fn harness() -> Result<()> {
    procs::install_cleanup_handlers()?;
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick_arg = args.iter().any(|a| a == "--quick");
    let report_only = args.iter().any(|a| a == "--report-only");
    let quick = quick_arg || procs::env_flag("RINGCAST_BENCH_QUICK");
    // `cargo bench` passes `--bench`; any other non-flag argument is a scenario filter.
    let filters: Vec<String> = args.iter().filter(|a| !a.starts_with('-')).cloned().collect();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out_dir =
        if quick { workspace.join("results").join("quick") } else { workspace.join("results") };
    let log_dir = workspace.join("results").join("tmp").join(if quick { "quick" } else { "full" });
    std::fs::create_dir_all(&out_dir)?;
    std::fs::create_dir_all(&log_dir)?;
    let server_cpus = procs::parse_cpu_list(
        &std::env::var("RINGCAST_BENCH_SERVER_CPUS").unwrap_or_else(|_| "0".into()),
    )
    .context("RINGCAST_BENCH_SERVER_CPUS")?;
    let loadgen_cpus = procs::parse_cpu_list(
        &std::env::var("RINGCAST_BENCH_LOADGEN_CPUS").unwrap_or_else(|_| "1".into()),
    )
    .context("RINGCAST_BENCH_LOADGEN_CPUS")?;
    if server_cpus.iter().any(|c| loadgen_cpus.contains(c)) {
        eprintln!("groups: warning: server and load generator CPU sets overlap");
    }

    let mut bench_command = String::new();
    for var in [
        "RINGCAST_BENCH_SERVER_CPUS",
        "RINGCAST_BENCH_LOADGEN_CPUS",
        "RINGCAST_BENCH_RINGCAST_BIN",
        "RINGCAST_BENCH_LOADGEN_BIN",
        "CARGO_TARGET_DIR",
    ] {
        if let Ok(v) = std::env::var(var) {
            bench_command.push_str(&format!("{var}={v} "));
        }
    }
    if quick && !quick_arg {
        bench_command.push_str("RINGCAST_BENCH_QUICK=1 ");
    }
    bench_command.push_str("cargo bench --bench groups");
    let mut extra: Vec<&str> = Vec::new();
    if quick_arg {
        extra.push("--quick");
    }
    extra.extend(filters.iter().map(String::as_str));
    if !extra.is_empty() {
        bench_command.push_str(" -- ");
        bench_command.push_str(&extra.join(" "));
    }

    let procs::Binaries { ringcast_bin, loadgen_bin, build_commands } =
        procs::Binaries::resolve(&workspace, report_only)?;
    let ringcast_unsupported =
        if report_only { None } else { ringcast_lacks_groups(&ringcast_bin) };
    if let Some(why) = &ringcast_unsupported {
        if procs::env_flag("RINGCAST_BENCH_REQUIRE_RINGCAST") {
            bail!("{why}");
        }
        eprintln!("groups: WARNING: {why}; measuring the baseline only");
    }
    let cfg = Cfg {
        quick,
        git_commit: groups_report::git_commit(&workspace),
        machine: groups_report::machine(&workspace),
        workspace,
        out_dir,
        log_dir,
        server_cpus,
        loadgen_cpus,
        ringcast_bin,
        loadgen_bin,
        self_exe: std::env::current_exe().context("current_exe")?,
        bench_command,
        build_commands,
        ringcast_unsupported,
    };
    let selected: Vec<Scenario> = groups_report::all(quick)
        .into_iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f)))
        .collect();
    if selected.is_empty() {
        bail!("no scenario matches {filters:?}");
    }
    eprintln!(
        "groups: {} mode, server CPUs {}, load generator CPUs {}, results in {}",
        if quick { "quick" } else { "full" },
        procs::fmt_cpu_list(&cfg.server_cpus),
        procs::fmt_cpu_list(&cfg.loadgen_cpus),
        cfg.out_dir.display()
    );
    if !report_only {
        for sc in &selected {
            let t0 = Instant::now();
            eprintln!("groups: == {} ({}) ==", sc.name, sc.title());
            let doc = run_scenario(&cfg, sc);
            let path = cfg.out_dir.join(format!("{}.json", sc.name));
            std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("groups: {} done in {:.1}s: {}", sc.name, t0.elapsed().as_secs_f64(), {
                one_line(&doc)
            });
        }
    }
    // The markdown covers every scenario whose JSON is present (a filtered run keeps the rest).
    let docs: Vec<(Scenario, Option<Value>)> = groups_report::all(quick)
        .into_iter()
        .map(|sc| {
            let doc = std::fs::read_to_string(cfg.out_dir.join(format!("{}.json", sc.name)))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            (sc, doc)
        })
        .collect();
    let elapsed = (!report_only).then(|| started.elapsed());
    let md = groups_report::markdown(&groups_report::MdInput {
        quick,
        docs: &docs,
        workspace: &cfg.workspace,
        elapsed,
    });
    let md_path = cfg.out_dir.join("groups.md");
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    let problems: Vec<String> = selected
        .iter()
        .flat_map(|sc| groups_report::validate(&cfg.out_dir.join(format!("{}.json", sc.name)), sc))
        .collect();
    eprintln!(
        "groups: finished in {:.1}s; markdown at {}",
        started.elapsed().as_secs_f64(),
        md_path.display()
    );
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("groups: validation: {p}");
        }
        bail!("{} validation problem(s) in {}", problems.len(), cfg.out_dir.display());
    }
    eprintln!("groups: all {} result file(s) validated", selected.len());
    Ok(())
}

/// `Some(reason)` when `ringcast serve --help` lacks a flag the groups scenarios need.
fn ringcast_lacks_groups(bin: &Path) -> Option<String> {
    let out = match Command::new(bin).args(["serve", "--help"]).output() {
        Ok(o) => o,
        Err(e) => return Some(format!("cannot run {} serve --help: {e}", bin.display())),
    };
    let help =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let missing: Vec<&str> = ["--api-listen", "--demo", "--commands-per-sec", "commands"]
        .into_iter()
        .filter(|f| !help.contains(f))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "this ringcast binary has no groups support yet (`ringcast serve --help` lacks {})",
            missing.join(", ")
        )
    })
}

fn one_line(doc: &Value) -> String {
    let mut s = String::new();
    for server in ["ringcast", "baseline"] {
        let run = &doc[server];
        if let Some(why) = run.get("skipped").and_then(Value::as_str) {
            s.push_str(&format!("{server}: skipped ({}); ", why.split(" (").next().unwrap_or(why)));
            continue;
        }
        if let Some(e) = run.get("error").and_then(Value::as_str) {
            s.push_str(&format!("{server}: ERROR {}; ", e.lines().next().unwrap_or("")));
            continue;
        }
        match groups_report::best(run) {
            Some(b) => s.push_str(&format!(
                "{server}: {:.0} publishes/s, {:.0} deliveries/s, p99 {:.1} ms; ",
                groups_report::publishes_per_sec(b).unwrap_or(f64::NAN),
                b["deliveries_per_sec"].as_f64().unwrap_or(f64::NAN),
                b["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN) / 1000.0
            )),
            None => s.push_str(&format!("{server}: no step met the bound; ")),
        }
    }
    s
}

fn run_scenario(cfg: &Cfg, sc: &Scenario) -> Value {
    let mut per = serde_json::Map::new();
    for server in Server::ALL {
        let skip = match server {
            Server::Ringcast => cfg.ringcast_unsupported.clone(),
            Server::Baseline => sc.baseline_unsupported().map(String::from),
        };
        let v = if let Some(why) = skip {
            json!({ "server": server.key(), "skipped": why })
        } else {
            match run_find_max(cfg, sc, server) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("groups: {} / {}: {e:#}", sc.name, server.key());
                    json!({ "server": server.key(), "error": format!("{e:#}") })
                }
            }
        };
        per.insert(server.key().into(), v);
    }
    let r = per.get("ringcast").cloned().unwrap_or(Value::Null);
    let b = per.get("baseline").cloned().unwrap_or(Value::Null);
    let pps = |run: &Value| groups_report::best(run).and_then(groups_report::publishes_per_sec);
    let ratio = match (pps(&r), pps(&b)) {
        (Some(x), Some(y)) if y > 0.0 => json!(x / y),
        _ => Value::Null,
    };
    let (publish, batch_size) = match sc.publish {
        PublishPath::Ws => ("ws", Value::Null),
        PublishPath::HttpSeed => ("http", json!(1)),
        PublishPath::HttpBatch(n) => ("http-batch", json!(n)),
    };
    json!({
        "scenario": sc.name,
        "title": sc.title(),
        "mode": if cfg.quick { "quick" } else { "full" },
        "subscribers": sc.subscribers,
        "groups": sc.groups,
        "group_size": sc.group_size(),
        "publishers": sc.publishers,
        "payload": sc.payload,
        "publish": publish,
        "batch_size": batch_size,
        "find_max": {
            "p99_bound_ms": sc.p99_bound_ms,
            "start_rate": sc.start_rate,
            "rate_step_factor": sc.factor,
            "max_steps": sc.max_steps,
        },
        "duration_s": sc.duration_s,
        "warmup_s": sc.warmup_s,
        "drain_s": sc.drain_s,
        "cpus": {
            "server": procs::fmt_cpu_list(&cfg.server_cpus),
            "loadgen": procs::fmt_cpu_list(&cfg.loadgen_cpus),
        },
        "ringcast": r,
        "baseline": b,
        "ratio": { "publishes_per_sec": ratio },
        "bench_command": cfg.bench_command,
        "build_commands": cfg.build_commands,
        "git_commit": cfg.git_commit,
        "date": groups_report::utc_now(),
        "machine": cfg.machine,
    })
}

/// One find-max search; if even its first step misses the bound, once more from a tenth.
fn run_find_max(cfg: &Cfg, sc: &Scenario, server: Server) -> Result<Value> {
    let first = run_load(cfg, sc, server)?;
    if groups_report::best(&first).is_some() {
        return Ok(first);
    }
    let mut sc2 = sc.clone();
    sc2.start_rate = sc.start_rate / 10.0;
    eprintln!(
        "groups: {} / {}: first step over the bound, retrying from {} publishes/s",
        sc.name,
        server.key(),
        sc2.start_rate
    );
    let mut second = run_load(cfg, &sc2, server)?;
    second["first_attempt"] = json!({
        "start_rate": sc.start_rate,
        "loadgen_command": first["loadgen_command"],
        "report": first["report"],
    });
    Ok(second)
}

fn start_server(
    cfg: &Cfg,
    sc: &Scenario,
    server: Server,
) -> Result<(Proc, SocketAddr, SocketAddr)> {
    let ws: SocketAddr = format!("127.0.0.1:{}", procs::free_port()?).parse()?;
    let mut http: SocketAddr = format!("127.0.0.1:{}", procs::free_port()?).parse()?;
    while http == ws {
        http = format!("127.0.0.1:{}", procs::free_port()?).parse()?;
    }
    let log = cfg.log_dir.join(format!("{}-{}-server.log", sc.name, server.key()));
    let spec = match server {
        Server::Ringcast => Spec {
            name: format!("ringcast ({})", sc.name),
            program: &cfg.ringcast_bin,
            args: ringcast_args(ws, http, cfg.server_cpus[0]),
            envs: vec![("RUST_LOG".into(), "info".into()), ("NO_COLOR".into(), "1".into())],
            cpus: &cfg.server_cpus,
            stdout_piped: false,
            stdin_piped: false,
            log: &log,
        },
        Server::Baseline => Spec {
            name: format!("baseline ({})", sc.name),
            program: &cfg.self_exe,
            args: vec![],
            envs: vec![
                (ROLE_ENV.into(), "baseline-groups".into()),
                (LISTEN_ENV.into(), ws.to_string()),
                (HTTP_LISTEN_ENV.into(), http.to_string()),
            ],
            cpus: &cfg.server_cpus,
            stdout_piped: false,
            stdin_piped: false,
            log: &log,
        },
    };
    let mut p = procs::spawn(&spec)?;
    procs::wait_listening(&mut p, ws, SERVER_START_TIMEOUT)?;
    procs::wait_listening(&mut p, http, SERVER_START_TIMEOUT)?;
    Ok((p, ws, http))
}

/// `ringcast serve` for the groups scenarios (see docs/loadgen-contract.md).
fn ringcast_args(ws: SocketAddr, http: SocketAddr, cpu: usize) -> Vec<String> {
    [
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
    .collect()
}

fn loadgen_args(sc: &Scenario, ws: SocketAddr, http: SocketAddr) -> Vec<String> {
    let mut a: Vec<String> = [
        "--url",
        &format!("ws://{ws}/"),
        "--connections",
        &sc.subscribers.to_string(),
        "--publishers",
        &sc.publishers.to_string(),
        "--payload",
        &sc.payload.to_string(),
        "--mode",
        "groups",
        "--group-count",
        &sc.groups.to_string(),
        "--publish",
        sc.publish.loadgen_flag(),
        "--duration",
        &sc.duration_s.to_string(),
        "--warmup",
        &sc.warmup_s.to_string(),
        "--drain-secs",
        &sc.drain_s.to_string(),
        "--find-max",
        "--p99-bound-ms",
        &sc.p99_bound_ms.to_string(),
        "--start-rate",
        &sc.start_rate.to_string(),
        "--rate-step-factor",
        &sc.factor.to_string(),
        "--max-steps",
        &sc.max_steps.to_string(),
        "--no-progress",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if sc.publish != PublishPath::Ws {
        a.extend(["--http-url".into(), format!("http://{http}/")]);
    }
    if let PublishPath::HttpBatch(n) = sc.publish {
        a.extend(["--batch-size".into(), n.to_string()]);
    }
    a
}

fn run_load(cfg: &Cfg, sc: &Scenario, server: Server) -> Result<Value> {
    let (mut srv, ws, http) = start_server(cfg, sc, server)?;
    let server_cpus_allowed = procs::cpus_allowed(srv.pid());
    std::thread::sleep(Duration::from_millis(200));
    let rss_start = procs::rss_kib(srv.pid()).ok();
    let cpu0 = procs::cpu_seconds(srv.pid())?;
    let sys0 = procs::cpu_times(&cfg.server_cpus).ok();
    let lg_sys0 = procs::cpu_times(&cfg.loadgen_cpus).ok();
    let log = cfg.log_dir.join(format!("{}-{}-loadgen.log", sc.name, server.key()));
    let spec = Spec {
        name: format!("loadgen ({} / {})", sc.name, server.key()),
        program: &cfg.loadgen_bin,
        args: loadgen_args(sc, ws, http),
        envs: vec![],
        cpus: &cfg.loadgen_cpus,
        stdout_piped: true,
        stdin_piped: false,
        log: &log,
    };
    let t0 = Instant::now();
    let mut lg = procs::spawn(&spec)?;
    let loadgen_cpus_allowed = procs::cpus_allowed(lg.pid());
    let stdout = procs::read_to_end_async(lg.child.stdout.take().context("loadgen stdout")?);
    let mut peak_rss = rss_start.unwrap_or(0);
    let mut lg_cpu = 0.0f64;
    let status = loop {
        if let Some(st) = lg.wait_timeout(Duration::from_millis(250))? {
            break st;
        }
        if let Ok(r) = procs::rss_kib(srv.pid()) {
            peak_rss = peak_rss.max(r);
        }
        if let Ok(c) = procs::cpu_seconds(lg.pid()) {
            lg_cpu = c;
        }
        if t0.elapsed() > sc.timeout {
            lg.terminate(Duration::from_secs(2))?;
            bail!(
                "load generator timed out after {:?}; log tail:\n{}",
                sc.timeout,
                lg.log_tail(20)
            );
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = procs::cpu_seconds(srv.pid()).ok();
    let sys1 = procs::cpu_times(&cfg.server_cpus).ok();
    let lg_sys1 = procs::cpu_times(&cfg.loadgen_cpus).ok();
    let rss_end = procs::rss_kib(srv.pid()).ok();
    let server_alive = srv.try_wait()?.is_none();
    let out = stdout.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    if !status.success() {
        bail!("load generator exited with {status}; log tail:\n{}", lg.log_tail(20));
    }
    let report = parse_report(&out).with_context(|| {
        format!("parsing load generator output; log tail:\n{}", lg.log_tail(10))
    })?;
    let server_exit = srv.terminate(SERVER_STOP_GRACE)?;
    let server_cpu_s = cpu1.map(|c| c - cpu0);
    let load = |a: Option<procs::CpuTimes>, b: Option<procs::CpuTimes>, own: Option<f64>| match (
        a, b, own,
    ) {
        (Some(a), Some(b), Some(own)) => {
            let d = b.since(&a);
            json!({
                "interval_s": wall,
                "tasks_cores": d.tasks / wall,
                "irq_cores": d.irq / wall,
                "steal_cores": d.steal / wall,
                "other_processes_cores": ((d.tasks - own) / wall).max(0.0),
            })
        }
        _ => Value::Null,
    };
    let mut run = json!({
        "server": server.key(),
        "server_command": srv.command_line,
        "loadgen_command": lg.command_line,
        "server_cpus_allowed": server_cpus_allowed,
        "loadgen_cpus_allowed": loadgen_cpus_allowed,
        "server_cpu_s": server_cpu_s,
        "server_cpu_util": server_cpu_s.map(|c| c / wall),
        "server_rss_kib": { "start": rss_start, "peak": peak_rss, "end": rss_end },
        "server_cpus_load": load(sys0, sys1, server_cpu_s),
        "loadgen_cpus_load": load(lg_sys0, lg_sys1, Some(lg_cpu)),
        "server_alive_after_run": server_alive,
        "server_exit": server_exit.to_string(),
        "wall_s": wall,
        "start_rate": sc.start_rate,
        "report": report,
    });
    run["best"] = groups_report::summary(&run, sc.max_steps);
    Ok(run)
}

fn parse_report(out: &str) -> Result<Value> {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(out.trim()) {
        return Ok(v);
    }
    out.lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(Value::is_object))
        .with_context(|| format!("no JSON object in load generator stdout ({} bytes)", out.len()))
}
