//! Fan-out macro benchmark: ringcast vs an in-tree tokio + tokio-tungstenite baseline server and
//! the registry peers people deploy (Node.js `ws` from npm, Python `websockets` from PyPI,
//! installed by the harness into `results/tmp/peers/`; a peer whose runtime is missing is
//! skipped and the results say so).
//!
//! `cargo bench --bench fanout` runs the full suite and writes `results/*.json`, `results/*.svg`
//! and `results/README.md`; `cargo bench --bench fanout -- --quick` (or `RINGCAST_BENCH_QUICK=1`)
//! runs a small version that writes to `results/quick/` and validates what it wrote. Extra
//! non-flag arguments select scenarios whose name contains them (the README is then rebuilt from
//! all JSON files present); `--report-only` rebuilds README.md and the charts from the JSON files
//! without running anything.
//!
//! The same binary, re-executed with `RINGCAST_BENCH_ROLE=baseline` (or `idle`), is the baseline
//! server (or the idle-connection opener). See `results/README.md` for the method.

#[path = "fanout/baseline.rs"]
mod baseline;
#[path = "fanout/charts.rs"]
mod charts;
#[path = "fanout/idle.rs"]
mod idle;
#[path = "fanout/peers.rs"]
mod peers;
#[path = "fanout/procs.rs"]
mod procs;
#[path = "fanout/report.rs"]
mod report;
#[path = "fanout/scenarios.rs"]
mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use procs::{Proc, Spec};
use scenarios::{Kind, Scenario};

pub const ROLE_ENV: &str = "RINGCAST_BENCH_ROLE";
pub const LISTEN_ENV: &str = "RINGCAST_BENCH_LISTEN";
/// The groups baseline's HTTP push API address (`RINGCAST_BENCH_ROLE=baseline-groups`).
pub const HTTP_LISTEN_ENV: &str = "RINGCAST_BENCH_HTTP_LISTEN";
const IDLE_TARGET_ENV: &str = "RINGCAST_BENCH_IDLE_TARGET";
const IDLE_CONNECTIONS_ENV: &str = "RINGCAST_BENCH_IDLE_CONNECTIONS";
const IDLE_HOLD_ENV: &str = "RINGCAST_BENCH_IDLE_HOLD_SECS";

/// How long a server may take to start listening.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// SIGTERM grace period for servers.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(6);

fn main() {
    let code = match std::env::var(ROLE_ENV).ok().as_deref() {
        Some("baseline") => role_baseline(),
        Some("baseline-groups") => role_baseline_groups(),
        Some("idle") => role_idle(),
        Some(other) => Err(anyhow::anyhow!("unknown {ROLE_ENV}={other}")),
        None => harness(),
    };
    if let Err(e) = code {
        eprintln!("fanout: error: {e:#}");
        procs::kill_all_children();
        std::process::exit(1);
    }
}

fn role_baseline() -> Result<()> {
    let listen = std::env::var(LISTEN_ENV).with_context(|| format!("{LISTEN_ENV} not set"))?;
    baseline::run(&listen)
}

/// The groups baseline (normally started by `benches/groups.rs`; any bench binary can be it).
fn role_baseline_groups() -> Result<()> {
    let listen = std::env::var(LISTEN_ENV).with_context(|| format!("{LISTEN_ENV} not set"))?;
    let http =
        std::env::var(HTTP_LISTEN_ENV).with_context(|| format!("{HTTP_LISTEN_ENV} not set"))?;
    baseline::run_groups(&listen, &http)
}

fn role_idle() -> Result<()> {
    let target = std::env::var(IDLE_TARGET_ENV).context("idle target not set")?;
    let n: usize = std::env::var(IDLE_CONNECTIONS_ENV).context("idle count not set")?.parse()?;
    let hold: u64 = std::env::var(IDLE_HOLD_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    idle::run(&target, n, Duration::from_secs(hold))
}

/// The servers under test: ringcast, the in-tree baseline, and the registry peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Ringcast,
    Baseline,
    NodeWs,
    PythonWebsockets,
}

impl Server {
    pub const ALL: [Server; 4] =
        [Server::Ringcast, Server::Baseline, Server::NodeWs, Server::PythonWebsockets];
    pub const PEERS: [Server; 2] = [Server::NodeWs, Server::PythonWebsockets];
    pub fn key(self) -> &'static str {
        match self {
            Server::Ringcast => "ringcast",
            Server::Baseline => "baseline",
            Server::NodeWs => "node-ws",
            Server::PythonWebsockets => "python-websockets",
        }
    }
}

/// Everything a run needs to know.
pub struct Config {
    pub quick: bool,
    pub workspace: PathBuf,
    pub out_dir: PathBuf,
    pub log_dir: PathBuf,
    pub server_cpus: Vec<usize>,
    pub loadgen_cpus: Vec<usize>,
    pub filters: Vec<String>,
    pub ringcast_bin: PathBuf,
    pub loadgen_bin: PathBuf,
    pub self_exe: PathBuf,
    /// The command that reproduces this run, for the README.
    pub bench_command: String,
    /// The `cargo build` commands run to get the binaries.
    pub build_commands: Vec<String>,
    /// Registry peers: how to start each, or why it is skipped.
    pub peers: Vec<(Server, std::result::Result<peers::Peer, String>)>,
}

fn harness() -> Result<()> {
    procs::install_cleanup_handlers()?;
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick_arg = args.iter().any(|a| a == "--quick");
    // Regenerate README.md and the charts from the JSON already there, running nothing.
    let report_only = args.iter().any(|a| a == "--report-only");
    let quick = quick_arg || procs::env_flag("RINGCAST_BENCH_QUICK");
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
        eprintln!("fanout: warning: server and load generator CPU sets overlap");
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
    bench_command.push_str("cargo bench --bench fanout");
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

    let peers: Vec<(Server, std::result::Result<peers::Peer, String>)> = if report_only {
        Vec::new()
    } else {
        Server::PEERS
            .into_iter()
            .map(|s| {
                let p = match s {
                    Server::NodeWs => peers::node_ws(&workspace),
                    _ => peers::python_websockets(&workspace),
                };
                match &p {
                    Ok(p) => eprintln!("fanout: peer {}: {}", s.key(), p.version),
                    Err(e) => eprintln!("fanout: peer {} SKIPPED: {e}", s.key()),
                }
                (s, p)
            })
            .collect()
    };
    let cfg = Config {
        peers,
        quick,
        workspace,
        out_dir,
        log_dir,
        server_cpus,
        loadgen_cpus,
        filters,
        ringcast_bin,
        loadgen_bin,
        self_exe: std::env::current_exe().context("current_exe")?,
        bench_command,
        build_commands,
    };
    let meta = report::Meta::collect(&cfg);
    eprintln!(
        "fanout: {} mode, server CPUs {}, load generator CPUs {}, results in {}",
        if quick { "quick" } else { "full" },
        procs::fmt_cpu_list(&cfg.server_cpus),
        procs::fmt_cpu_list(&cfg.loadgen_cpus),
        cfg.out_dir.display()
    );

    let selected: Vec<Scenario> = scenarios::all(quick)
        .into_iter()
        .filter(|s| cfg.filters.is_empty() || cfg.filters.iter().any(|f| s.name.contains(f)))
        .collect();
    if selected.is_empty() {
        bail!("no scenario matches {:?}", cfg.filters);
    }
    if report_only {
        report::write_readme(&cfg, &meta, None)?;
        let problems = report::validate(&cfg, &selected);
        for p in &problems {
            eprintln!("fanout: validation: {p}");
        }
        if !problems.is_empty() {
            bail!("{} validation problem(s) in {}", problems.len(), cfg.out_dir.display());
        }
        eprintln!("fanout: README and charts regenerated in {}", cfg.out_dir.display());
        return Ok(());
    }
    for sc in &selected {
        let t0 = Instant::now();
        eprintln!("fanout: == {} ({}) ==", sc.name, sc.title());
        let doc = run_scenario(&cfg, &meta, sc);
        let path = cfg.out_dir.join(format!("{}.json", sc.name));
        std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("fanout: {} done in {:.1}s: {}", sc.name, t0.elapsed().as_secs_f64(), {
            report::one_line_summary(&doc)
        });
    }

    let elapsed = started.elapsed();
    report::write_readme(&cfg, &meta, Some(elapsed))?;
    let problems = report::validate(&cfg, &selected);
    eprintln!(
        "fanout: finished in {:.1}s; README at {}",
        elapsed.as_secs_f64(),
        cfg.out_dir.join("README.md").display()
    );
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("fanout: validation: {p}");
        }
        bail!("{} validation problem(s) in {}", problems.len(), cfg.out_dir.display());
    }
    eprintln!("fanout: all {} result file(s) validated", selected.len());
    Ok(())
}

fn run_scenario(cfg: &Config, meta: &report::Meta, sc: &Scenario) -> Value {
    let mut per_server = serde_json::Map::new();
    for server in Server::ALL {
        if let Some((_, Err(why))) = cfg.peers.iter().find(|(s, _)| *s == server) {
            per_server
                .insert(server.key().into(), json!({ "server": server.key(), "skipped": why }));
            continue;
        }
        let res = match sc.kind {
            Kind::IdleRss => run_idle(cfg, sc, server),
            Kind::ConnectStorm { rounds } => run_storm(cfg, sc, server, rounds),
            Kind::Fixed { .. } => run_load(cfg, sc, server),
            Kind::FindMax { p99_bound_ms, start_rate, factor, max_steps } => {
                run_load(cfg, sc, server).and_then(|first| {
                    if report::met_bound(&first) != Some(false) {
                        return Ok(first);
                    }
                    // Even the first step missed the bound: start again ten times lower, once.
                    let retry_rate = start_rate / 10.0;
                    eprintln!(
                        "fanout: {} / {}: first step over the bound, retrying from {retry_rate} msg/s",
                        sc.name,
                        server.key()
                    );
                    let mut sc2 = sc.clone();
                    sc2.kind =
                        Kind::FindMax { p99_bound_ms, start_rate: retry_rate, factor, max_steps };
                    let mut second = run_load(cfg, &sc2, server)?;
                    second["first_attempt"] = json!({
                        "start_rate": start_rate,
                        "loadgen_command": first["loadgen_command"],
                        "report": first["report"],
                    });
                    Ok(second)
                })
            }
        };
        let v = match res {
            Ok(v) => v,
            Err(e) => {
                eprintln!("fanout: {} / {}: {e:#}", sc.name, server.key());
                json!({ "server": server.key(), "error": format!("{e:#}") })
            }
        };
        per_server.insert(server.key().into(), v);
    }
    let ringcast = per_server.get("ringcast").cloned().unwrap_or(Value::Null);
    let baseline = per_server.get("baseline").cloned().unwrap_or(Value::Null);
    let ratio = report::ratios(sc, &ringcast, &baseline);
    let (rate, find_max) = match sc.kind {
        Kind::Fixed { rate } => (json!(rate), Value::Null),
        Kind::FindMax { p99_bound_ms, start_rate, factor, max_steps } => (
            Value::Null,
            json!({
                "p99_bound_ms": p99_bound_ms,
                "start_rate": start_rate,
                "rate_step_factor": factor,
                "max_steps": max_steps,
            }),
        ),
        Kind::IdleRss | Kind::ConnectStorm { .. } => (json!(0), Value::Null),
    };
    let peer_versions: serde_json::Map<String, Value> = cfg
        .peers
        .iter()
        .map(|(s, p)| {
            (
                s.key().to_owned(),
                p.as_ref().map_or_else(|e| json!({"skipped": e}), |p| json!(p.version)),
            )
        })
        .collect();
    json!({
        "scenario": sc.name,
        "title": sc.title(),
        "kind": sc.kind.tag(),
        "mode": if cfg.quick { "quick" } else { "full" },
        "subscribers": sc.subscribers,
        "publishers": if matches!(sc.kind, Kind::IdleRss | Kind::ConnectStorm { .. }) {
            0
        } else {
            scenarios::PUBLISHERS
        },
        "payload": sc.payload,
        "rate": rate,
        "find_max": find_max,
        "duration_s": sc.duration_s,
        "warmup_s": sc.warmup_s,
        "drain_s": sc.drain_s,
        "cpus": {
            "server": procs::fmt_cpu_list(&cfg.server_cpus),
            "loadgen": procs::fmt_cpu_list(&cfg.loadgen_cpus),
        },
        "ringcast": ringcast,
        "baseline": baseline,
        "node-ws": per_server.get("node-ws").cloned().unwrap_or(Value::Null),
        "python-websockets": per_server.get("python-websockets").cloned().unwrap_or(Value::Null),
        "peers": peer_versions,
        "repeat": sc.repeat,
        "ratio": ratio,
        "bench_command": cfg.bench_command,
        "build_commands": cfg.build_commands,
        "git_commit": meta.git_commit,
        "date": report::utc_now(),
        "machine": meta.machine_json(),
    })
}

/// Starts one server on a fresh port, pinned to the server CPUs, and waits until it listens.
fn start_server(cfg: &Config, sc: &Scenario, server: Server) -> Result<(Proc, SocketAddr)> {
    let port = procs::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let log = cfg.log_dir.join(format!("{}-{}-server.log", sc.name, server.key()));
    let spec = match server {
        Server::Ringcast => Spec {
            name: format!("ringcast ({})", sc.name),
            program: &cfg.ringcast_bin,
            args: vec![
                "serve".into(),
                "--listen".into(),
                addr.to_string(),
                "--shards".into(),
                "1".into(),
                "--cpus".into(),
                cfg.server_cpus[0].to_string(),
                "--on-message".into(),
                "relay".into(),
                "--max-connections".into(),
                "16384".into(),
                "--no-api".into(),
            ],
            envs: vec![("RUST_LOG".into(), "info".into()), ("NO_COLOR".into(), "1".into())],
            cpus: &cfg.server_cpus,
            stdout_piped: false,
            stdin_piped: false,
            log: &log,
        },
        Server::NodeWs | Server::PythonWebsockets => {
            peer_spec(cfg, server, addr, &log, format!("{} ({})", server.key(), sc.name))?
        }
        Server::Baseline => Spec {
            name: format!("baseline ({})", sc.name),
            program: &cfg.self_exe,
            args: vec![],
            envs: vec![(ROLE_ENV.into(), "baseline".into()), (LISTEN_ENV.into(), addr.to_string())],
            cpus: &cfg.server_cpus,
            stdout_piped: false,
            stdin_piped: false,
            log: &log,
        },
    };
    let mut p = procs::spawn(&spec)?;
    procs::wait_listening(&mut p, addr, SERVER_START_TIMEOUT)?;
    Ok((p, addr))
}

/// The Spec of a registry peer listening on `addr`.
fn peer_spec<'a>(
    cfg: &'a Config,
    server: Server,
    addr: SocketAddr,
    log: &'a std::path::Path,
    name: String,
) -> Result<Spec<'a>> {
    let Some((_, Ok(peer))) = cfg.peers.iter().find(|(s, _)| *s == server) else {
        bail!("peer {} is not available", server.key());
    };
    let mut args = peer.args.clone();
    args.push(addr.ip().to_string());
    args.push(addr.port().to_string());
    Ok(Spec {
        name,
        program: &peer.program,
        args,
        envs: peer.envs.clone(),
        cpus: &cfg.server_cpus,
        stdout_piped: false,
        stdin_piped: false,
        log,
    })
}

/// The load generator's command line for a scenario.
fn loadgen_args(sc: &Scenario, addr: SocketAddr) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--url".into(),
        format!("ws://{addr}/"),
        "--connections".into(),
        sc.subscribers.to_string(),
        "--publishers".into(),
        scenarios::PUBLISHERS.to_string(),
        "--payload".into(),
        sc.payload.to_string(),
        "--duration".into(),
        format!("{}", sc.duration_s),
        "--warmup".into(),
        format!("{}", sc.warmup_s),
        "--drain-secs".into(),
        format!("{}", sc.drain_s),
        "--no-progress".into(),
        "--json".into(),
        "--repeat".into(),
        sc.repeat.to_string(),
    ];
    match sc.kind {
        Kind::Fixed { rate } => a.extend(["--rate".into(), rate.to_string()]),
        Kind::FindMax { p99_bound_ms, start_rate, factor, max_steps } => a.extend([
            "--find-max".into(),
            "--p99-bound-ms".into(),
            p99_bound_ms.to_string(),
            "--start-rate".into(),
            start_rate.to_string(),
            "--rate-step-factor".into(),
            factor.to_string(),
            "--max-steps".into(),
            max_steps.to_string(),
            "--step-retries".into(),
            "1".into(),
            "--bisect-steps".into(),
            scenarios::BISECT_STEPS.to_string(),
        ]),
        Kind::IdleRss | Kind::ConnectStorm { .. } => {
            unreachable!("idle and connect-storm scenarios run their own commands")
        }
    }
    a
}

fn run_load(cfg: &Config, sc: &Scenario, server: Server) -> Result<Value> {
    let (mut srv, addr) = start_server(cfg, sc, server)?;
    let server_cpus_allowed = procs::cpus_allowed(srv.pid());
    std::thread::sleep(Duration::from_millis(200));
    let rss_start = procs::rss_kib(srv.pid()).ok();
    let cpu0 = procs::cpu_seconds(srv.pid())?;
    let sys0 = procs::cpu_times(&cfg.server_cpus).ok();
    let lg_sys0 = procs::cpu_times(&cfg.loadgen_cpus).ok();
    let sys_t0 = Instant::now();
    let log = cfg.log_dir.join(format!("{}-{}-loadgen.log", sc.name, server.key()));
    let spec = Spec {
        name: format!("loadgen ({} / {})", sc.name, server.key()),
        program: &cfg.loadgen_bin,
        args: loadgen_args(sc, addr),
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
    // The load generator's own CPU time, sampled while it runs (it is gone once reaped).
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
    let sys_wall = sys_t0.elapsed().as_secs_f64();
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
    // What else ran on each side's CPUs meanwhile: a noise indicator for a shared machine.
    let server_cpus_load = match (sys0, sys1, server_cpu_s) {
        (Some(a), Some(b), Some(own)) => cpus_load_json(&b.since(&a), own, sys_wall),
        _ => Value::Null,
    };
    // The load generator's own CPU is sampled every 250 ms, so "other" may be slightly high.
    let loadgen_cpus_load = match (lg_sys0, lg_sys1) {
        (Some(a), Some(b)) => cpus_load_json(&b.since(&a), lg_cpu, sys_wall),
        _ => Value::Null,
    };
    Ok(json!({
        "server": server.key(),
        "server_command": srv.command_line,
        "loadgen_command": lg.command_line,
        "server_cpus_allowed": server_cpus_allowed,
        "loadgen_cpus_allowed": loadgen_cpus_allowed,
        "server_cpu_s": server_cpu_s,
        "server_cpu_util": server_cpu_s.map(|c| c / wall),
        "server_rss_kib": { "start": rss_start, "peak": peak_rss, "end": rss_end },
        "server_cpus_load": server_cpus_load,
        "loadgen_cpus_load": loadgen_cpus_load,
        "server_alive_after_run": server_alive,
        "server_exit": server_exit.to_string(),
        "wall_s": wall,
        "start_rate": match sc.kind {
            Kind::FindMax { start_rate, .. } => json!(start_rate),
            _ => Value::Null,
        },
        "report": report,
    }))
}

/// The load generator prints one JSON object on stdout; take the last line that parses.
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

fn run_idle(cfg: &Config, sc: &Scenario, server: Server) -> Result<Value> {
    let (mut srv, addr) = start_server(cfg, sc, server)?;
    let server_cpus_allowed = procs::cpus_allowed(srv.pid());
    std::thread::sleep(Duration::from_secs(1));
    let before = procs::rss_kib(srv.pid())?;
    let log = cfg.log_dir.join(format!("{}-{}-idle.log", sc.name, server.key()));
    let hold = sc.timeout.as_secs() + 30;
    let spec = Spec {
        name: format!("idle opener ({} / {})", sc.name, server.key()),
        program: &cfg.self_exe,
        args: vec![],
        envs: vec![
            (ROLE_ENV.into(), "idle".into()),
            (IDLE_TARGET_ENV.into(), addr.to_string()),
            (IDLE_CONNECTIONS_ENV.into(), sc.subscribers.to_string()),
            (IDLE_HOLD_ENV.into(), hold.to_string()),
        ],
        cpus: &cfg.loadgen_cpus,
        stdout_piped: true,
        stdin_piped: true,
        log: &log,
    };
    let t0 = Instant::now();
    let mut opener = procs::spawn(&spec)?;
    let opener_cpus_allowed = procs::cpus_allowed(opener.pid());
    let stdout = opener.child.stdout.take().context("opener stdout")?;
    let line = procs::read_line_timeout(stdout, sc.timeout)
        .with_context(|| format!("idle opener; log tail:\n{}", opener.log_tail(10)))?
        .with_context(|| format!("idle opener said nothing; log tail:\n{}", opener.log_tail(10)))?;
    let connect_s = t0.elapsed().as_secs_f64();
    let (ok, failed) = parse_ready(&line).with_context(|| format!("bad opener line {line:?}"))?;
    std::thread::sleep(Duration::from_secs_f64(sc.duration_s));
    let after = procs::rss_kib(srv.pid())?;
    let server_alive = srv.try_wait()?.is_none();
    // Close the opener's stdin: it drops its connections and exits.
    drop(opener.child.stdin.take());
    let opener_exit = opener.wait_timeout(Duration::from_secs(10))?;
    if opener_exit.is_none() {
        opener.terminate(Duration::from_secs(2))?;
    }
    srv.terminate(SERVER_STOP_GRACE)?;
    if !server_alive {
        bail!("server died while holding idle connections:\n{}", srv.log_tail(20));
    }
    if ok == 0 {
        bail!("no idle connection could be opened; log tail:\n{}", opener.log_tail(10));
    }
    let per_conn = (after as f64 - before as f64) / ok as f64;
    Ok(json!({
        "server": server.key(),
        "server_command": srv.command_line,
        "opener_command": opener.command_line,
        "server_cpus_allowed": server_cpus_allowed,
        "opener_cpus_allowed": opener_cpus_allowed,
        "connections_requested": sc.subscribers,
        "connections_open": ok,
        "connections_failed": failed,
        "connect_s": connect_s,
        "settle_s": sc.duration_s,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": per_conn,
    }))
}

/// Connect storm: `rounds` times, a fresh server and `ringcast-loadgen --connect-only` opening
/// every connection at once (no ramp limit, 512 handshakes in flight).
fn run_storm(cfg: &Config, sc: &Scenario, server: Server, rounds: usize) -> Result<Value> {
    let mut runs = Vec::new();
    for round in 0..rounds {
        let (mut srv, addr) = start_server(cfg, sc, server)?;
        std::thread::sleep(Duration::from_millis(200));
        let log = cfg.log_dir.join(format!("{}-{}-loadgen-{round}.log", sc.name, server.key()));
        let args: Vec<String> = vec![
            "--url".into(),
            format!("ws://{addr}/"),
            "--connections".into(),
            sc.subscribers.to_string(),
            "--connect-only".into(),
            "--ramp-rate".into(),
            "0".into(),
            "--max-inflight-handshakes".into(),
            "512".into(),
            "--connect-retries".into(),
            "8".into(),
            "--no-progress".into(),
            "--json".into(),
        ];
        let spec = Spec {
            name: format!("loadgen ({} / {})", sc.name, server.key()),
            program: &cfg.loadgen_bin,
            args,
            envs: vec![],
            cpus: &cfg.loadgen_cpus,
            stdout_piped: true,
            stdin_piped: false,
            log: &log,
        };
        let mut lg = procs::spawn(&spec)?;
        let stdout = procs::read_to_end_async(lg.child.stdout.take().context("loadgen stdout")?);
        let status = match lg.wait_timeout(sc.timeout)? {
            Some(st) => st,
            None => {
                lg.terminate(Duration::from_secs(2))?;
                srv.terminate(SERVER_STOP_GRACE)?;
                bail!("connect storm timed out; log tail:\n{}", lg.log_tail(20));
            }
        };
        let out = stdout.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
        let server_alive = srv.try_wait()?.is_none();
        srv.terminate(SERVER_STOP_GRACE)?;
        if !status.success() {
            bail!("load generator exited with {status}; log tail:\n{}", lg.log_tail(20));
        }
        let report = parse_report(&out)?;
        runs.push(json!({
            "server_command": srv.command_line,
            "loadgen_command": lg.command_line,
            "server_alive_after_run": server_alive,
            "report": report,
        }));
    }
    let figs = |ptr: &str| -> Vec<f64> {
        runs.iter().filter_map(|r| r.pointer(ptr).and_then(Value::as_f64)).collect()
    };
    Ok(json!({
        "server": server.key(),
        "rounds": runs.len(),
        "handshakes_per_sec": report::spread_json(&figs("/report/connect/handshakes_per_sec")),
        "connect_p50_us": report::spread_json(&figs("/report/connect/latency_us/p50")),
        "connect_p99_us": report::spread_json(&figs("/report/connect/latency_us/p99")),
        "failed": figs("/report/connect/failed").iter().sum::<f64>(),
        "retries": figs("/report/connect/retries").iter().sum::<f64>(),
        "runs": runs,
    }))
}

fn parse_ready(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("ready ")?;
    let mut ok = None;
    let mut failed = None;
    for kv in rest.split_whitespace() {
        match kv.split_once('=')? {
            ("ok", v) => ok = v.parse().ok(),
            ("failed", v) => failed = v.parse().ok(),
            _ => {}
        }
    }
    Some((ok?, failed?))
}

/// CPU use of a CPU set over `wall` seconds, and how much of it was not `own_cpu_s`.
fn cpus_load_json(d: &procs::CpuTimes, own_cpu_s: f64, wall: f64) -> Value {
    json!({
        "interval_s": wall,
        "tasks_cores": d.tasks / wall,
        "irq_cores": d.irq / wall,
        "steal_cores": d.steal / wall,
        "other_processes_cores": ((d.tasks - own_cpu_s) / wall).max(0.0),
    })
}
