//! HTTP push API macro benchmark: how many publish requests (and messages) per second the
//! control plane turns into deliveries, against a closed-loop keep-alive HTTP/1.1 client.
//!
//! `cargo bench --bench http` (5 s per measurement; `RINGCAST_BENCH_QUICK=1` or `-- --quick`:
//! 2 s, written to `results/quick/`). `RINGCAST_BENCH_SECS`, `RINGCAST_BENCH_RUNS` (default 3)
//! and `RINGCAST_BENCH_CONNS` (default 32) override the defaults; `RINGCAST_BENCH_ONLY=text` runs
//! only the scenarios whose name contains it.
//!
//! Server side, on CPU 0: a ringcast node with one pinned shard, its API thread (it inherits
//! the affinity of the thread that spawns it), and the baseline (`http/baseline.rs`). Client
//! side, on CPU 1: one current-thread tokio runtime with the HTTP connections and 10 raw
//! WebSocket subscribers in group `bench`, which only count the bytes they receive (no frame
//! parsing, so they cost little). Every measurement checks the subscribers received every
//! message: `delivered` is frames received over messages acknowledged × 10.
//!
//! Scenarios, interleaved across runs so slow drift on a shared machine spreads over all:
//! single `POST /api/publish`; the same pipelined 16 deep; `POST /api/publish/batch` of 100 and
//! of 1000; and the baseline's single publish.

#[path = "http/baseline.rs"]
mod baseline;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ringcast::api::{self, ApiConfig};
use ringcast::{Config, Server, SlowConsumerPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SUBSCRIBERS: usize = 10;
const GROUP: &str = "bench";
/// A group with one member (the first subscriber): a batch to it is one delivery per message,
/// so the batch endpoint's messages/s are measured with every message delivered.
const SOLO: &str = "solo";
/// 16 bytes: every frame is 18 bytes on the wire (2-byte header), so bytes count frames.
const PAYLOAD: &str = "0123456789abcdef";
const FRAME_BYTES: u64 = 2 + PAYLOAD.len() as u64;
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Ringcast,
    Baseline,
}

#[derive(Clone, Debug)]
struct Scenario {
    name: &'static str,
    target: Target,
    /// Publishes per request (1: `/api/publish`; 0: `GET /healthz`, no publish).
    batch: usize,
    /// Requests written before reading their responses.
    depth: usize,
    /// The group published to: `bench` (10 subscribers) or one with no member, to measure
    /// the API and routing without the deliveries.
    group: &'static str,
}

fn scenarios() -> Vec<Scenario> {
    let only = std::env::var("RINGCAST_BENCH_ONLY").unwrap_or_default();
    let all = vec![
        Scenario {
            name: "ringcast single",
            target: Target::Ringcast,
            batch: 1,
            depth: 1,
            group: GROUP,
        },
        Scenario {
            name: "ringcast single, pipelined x16",
            target: Target::Ringcast,
            batch: 1,
            depth: 16,
            group: GROUP,
        },
        Scenario {
            name: "ringcast batch 100",
            target: Target::Ringcast,
            batch: 100,
            depth: 1,
            group: GROUP,
        },
        Scenario {
            name: "ringcast batch 1000",
            target: Target::Ringcast,
            batch: 1000,
            depth: 1,
            group: GROUP,
        },
        Scenario {
            name: "baseline single (axum + broadcast)",
            target: Target::Baseline,
            batch: 1,
            depth: 1,
            group: GROUP,
        },
        Scenario {
            name: "reference: GET /healthz (HTTP only)",
            target: Target::Ringcast,
            batch: 0,
            depth: 1,
            group: "nobody",
        },
        Scenario {
            name: "ringcast batch 1000, group of 1 subscriber",
            target: Target::Ringcast,
            batch: 1000,
            depth: 1,
            group: SOLO,
        },
        Scenario {
            name: "ringcast batch 1000, group without members",
            target: Target::Ringcast,
            batch: 1000,
            depth: 1,
            group: "nobody",
        },
    ];
    all.into_iter().filter(|s| s.name.contains(only.as_str())).collect()
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("RINGCAST_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let secs = env_num("RINGCAST_BENCH_SECS").unwrap_or(if quick { 2 } else { 5 });
    let runs = env_num("RINGCAST_BENCH_RUNS").unwrap_or(3).max(1) as usize;
    let conns = env_num("RINGCAST_BENCH_CONNS").unwrap_or(32).max(1) as usize;
    let duration = Duration::from_secs(secs);

    let parallelism = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut cpus: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    cpus.sort_unstable();
    let server_cpu = cpus.first().copied().unwrap_or(0);
    let client_cpu = cpus.get(1).copied();
    // Threads inherit the creating thread's affinity: the API thread and the baseline run on
    // the server CPU, like the pinned shard.
    core_affinity::set_for_current(core_affinity::CoreId { id: server_cpu });

    let node = Server::builder()
        .config(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 1,
            cpus: Some(vec![server_cpu]),
            pin: true,
            welcome: Some(true),
            ping_interval: None,
            outbox_bytes_max: 64 << 20,
            slow_consumer: SlowConsumerPolicy::Drop,
            ..Config::default()
        })
        .start()
        .context("starting the node")?;
    let api = api::spawn(
        node.clone(),
        ApiConfig { listen: "127.0.0.1:0".parse().unwrap(), ..ApiConfig::default() },
    )?;
    let (baseline_http, baseline_ws) = baseline::start();
    let addrs = Addrs { ws: node.local_addr(), api: api.local_addr(), baseline_http, baseline_ws };

    eprintln!(
        "http bench: server CPU {server_cpu}, client CPU {}, {conns} connections, {secs} s x {runs} runs",
        client_cpu.map_or("(unpinned)".to_owned(), |c| c.to_string())
    );
    let client = std::thread::Builder::new().name("bench-client".into()).spawn(move || {
        if let Some(c) = client_cpu {
            core_affinity::set_for_current(core_affinity::CoreId { id: c });
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(drive(addrs, duration, runs, conns))
    })?;
    let results = client.join().map_err(|_| anyhow::anyhow!("bench client panicked"))??;
    let drops = node.metrics().slow_consumer_drops;
    api.shutdown();
    node.shutdown();
    node.join()?;

    let report =
        report(&results, quick, secs, runs, conns, (parallelism, server_cpu, client_cpu), drops);
    println!("{report}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    let dir = if quick { dir.join("quick") } else { dir };
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("http.md"), report)?;
    eprintln!("wrote {}", dir.join("http.md").display());
    Ok(())
}

#[derive(Clone, Copy)]
struct Addrs {
    ws: SocketAddr,
    api: SocketAddr,
    baseline_http: SocketAddr,
    baseline_ws: SocketAddr,
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    requests_per_sec: f64,
    messages_per_sec: f64,
    /// Frames the subscribers received over messages acknowledged × subscribers.
    delivered: f64,
    errors: u64,
}

async fn drive(
    addrs: Addrs,
    duration: Duration,
    runs: usize,
    conns: usize,
) -> Result<Vec<(Scenario, Vec<Sample>)>> {
    let ringcast_rx = Arc::new(AtomicU64::new(0));
    let baseline_rx = Arc::new(AtomicU64::new(0));
    for i in 0..SUBSCRIBERS {
        let id = subscribe(addrs.ws, "/", true, ringcast_rx.clone()).await?;
        let groups: &[&str] = if i == 0 { &[GROUP, SOLO] } else { &[GROUP] };
        for g in groups {
            let (status, body) =
                call(addrs.api, "PUT", &format!("/api/groups/{g}/clients/{id}"), "").await?;
            if status != 200 {
                bail!("joining group {g}: {status} {body}");
            }
        }
        subscribe(addrs.baseline_ws, &format!("/?group={GROUP}"), false, baseline_rx.clone())
            .await?;
    }
    let mut results: Vec<(Scenario, Vec<Sample>)> =
        scenarios().into_iter().map(|s| (s, Vec::new())).collect();
    for run in 0..runs {
        for (s, samples) in results.iter_mut() {
            let (addr, rx) = match s.target {
                Target::Ringcast => (addrs.api, &ringcast_rx),
                Target::Baseline => (addrs.baseline_http, &baseline_rx),
            };
            let sample = measure(addr, s, duration, conns, rx).await?;
            eprintln!(
                "run {}/{runs} {:<36} {:>10.0} req/s {:>11.0} msg/s  delivered {:.4}  errors {}",
                run + 1,
                s.name,
                sample.requests_per_sec,
                sample.messages_per_sec,
                sample.delivered,
                sample.errors
            );
            samples.push(sample);
        }
    }
    Ok(results)
}

fn request_bytes(s: &Scenario) -> Vec<u8> {
    if s.batch == 0 {
        return "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(s.depth).into_bytes();
    }
    let one = format!(r#"{{"data":"{PAYLOAD}","to":{{"groups":["{}"]}}}}"#, s.group);
    let (path, body) = if s.batch == 1 {
        ("/api/publish", one)
    } else {
        let items = vec![one; s.batch].join(",");
        ("/api/publish/batch", format!(r#"{{"publishes":[{items}]}}"#))
    };
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    req.repeat(s.depth).into_bytes()
}

async fn measure(
    addr: SocketAddr,
    s: &Scenario,
    duration: Duration,
    conns: usize,
    rx: &AtomicU64,
) -> Result<Sample> {
    let req: Arc<[u8]> = request_bytes(s).into();
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rx_start = rx.load(Relaxed);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (req, ok, errors, stop, depth) =
            (req.clone(), ok.clone(), errors.clone(), stop.clone(), s.depth);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = closed_loop(addr, &req, depth, &ok, &errors, &stop).await {
                eprintln!("bench connection: {e:#}");
                errors.fetch_add(1, Relaxed);
            }
        }));
    }
    tokio::time::sleep(WARMUP).await;
    let (ok0, t0) = (ok.load(Relaxed), Instant::now());
    tokio::time::sleep(duration).await;
    let (ok1, elapsed) = (ok.load(Relaxed), t0.elapsed());
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    // Every request acknowledged (warm-up and stragglers included) must reach every
    // subscriber: wait until they have it all, or their counter stops moving for a second.
    let members = match s.group {
        GROUP => SUBSCRIBERS as u64,
        SOLO => 1,
        _ => 0,
    };
    let expected_frames = ok.load(Relaxed) * s.batch as u64 * members;
    let received = || (rx.load(Relaxed) - rx_start) / FRAME_BYTES;
    let (mut last, mut still_since) = (received(), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(10);
    while received() < expected_frames
        && still_since.elapsed() < Duration::from_secs(1)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if received() != last {
            (last, still_since) = (received(), Instant::now());
        }
    }
    let got_frames = received();
    let requests = (ok1 - ok0) as f64 / elapsed.as_secs_f64();
    Ok(Sample {
        requests_per_sec: requests,
        messages_per_sec: requests * s.batch as f64,
        delivered: if expected_frames == 0 {
            f64::NAN
        } else {
            got_frames as f64 / expected_frames as f64
        },
        errors: errors.load(Relaxed),
    })
}

/// One keep-alive connection: write `depth` requests, read `depth` responses, again.
async fn closed_loop(
    addr: SocketAddr,
    req: &[u8],
    depth: usize,
    ok: &AtomicU64,
    errors: &AtomicU64,
    stop: &AtomicBool,
) -> Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(64 * 1024);
    while !stop.load(Relaxed) {
        s.write_all(req).await?;
        for _ in 0..depth {
            let status = read_response(&mut s, &mut buf).await?;
            if status == 200 {
                ok.fetch_add(1, Relaxed);
            } else {
                errors.fetch_add(1, Relaxed);
            }
        }
    }
    Ok(())
}

/// Read one HTTP/1.1 response (Content-Length framed) from `s`; its status.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    loop {
        if let Some(head_end) = find(buf, b"\r\n\r\n") {
            let head = &buf[..head_end];
            let status: u16 = std::str::from_utf8(head.get(9..12).unwrap_or_default())?.parse()?;
            let len = content_length(head).context("response without Content-Length")?;
            let total = head_end + 4 + len;
            if buf.len() >= total {
                buf.drain(..total);
                return Ok(status);
            }
        }
        let old = buf.len();
        buf.resize(old + 16 * 1024, 0);
        let n = s.read(&mut buf[old..]).await?;
        buf.truncate(old + n);
        if n == 0 {
            bail!("server closed the connection");
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
    })
}

/// A raw WebSocket subscriber: upgrade, then count every byte received. With `welcome`, read
/// ringcast's welcome frame first and return the client id.
async fn subscribe(
    addr: SocketAddr,
    path: &str,
    welcome: bool,
    rx: Arc<AtomicU64>,
) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let upgrade = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(upgrade.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed during the upgrade");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        bail!("upgrade refused: {}", String::from_utf8_lossy(&buf[..head_end]));
    }
    buf.drain(..head_end);
    let mut id = String::new();
    if welcome {
        // One short text frame: 2-byte header (length < 126) then the JSON.
        while buf.len() < 2 || buf.len() < 2 + (buf[1] & 0x7f) as usize {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed before the welcome frame");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let len = (buf[1] & 0x7f) as usize;
        let v: serde_json::Value = serde_json::from_slice(&buf[2..2 + len])?;
        id = v["client_id"].as_str().context("welcome without client_id")?.to_owned();
        buf.drain(..2 + len);
    }
    rx.fetch_add(buf.len() as u64, Relaxed);
    tokio::spawn(async move {
        let mut big = vec![0u8; 256 * 1024];
        while let Ok(n) = s.read(&mut big).await {
            if n == 0 {
                break;
            }
            rx.fetch_add(n as u64, Relaxed);
        }
    });
    Ok(id)
}

/// One request on a fresh connection (set-up only).
async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let status = read_response(&mut s, &mut buf).await?;
    Ok((status, String::from_utf8_lossy(&buf).into_owned()))
}

fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else {
        format!("{:.1} k", x / 1e3)
    }
}

fn report(
    results: &[(Scenario, Vec<Sample>)],
    quick: bool,
    secs: u64,
    runs: usize,
    conns: usize,
    (parallelism, server_cpu, client_cpu): (usize, usize, Option<usize>),
    slow_consumer_drops: u64,
) -> String {
    let cmd = if quick {
        "RINGCAST_BENCH_QUICK=1 cargo bench --bench http"
    } else {
        "cargo bench --bench http"
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let mut out = String::new();
    out.push_str("# HTTP push API throughput\n\n");
    out.push_str(&format!("Command: `{cmd}`\n\n"));
    out.push_str(&format!(
        "Machine: {} CPUs available, {cpu_model}, Linux {}. Server (ringcast's one shard, its API thread, \
         and the baseline) on CPU {server_cpu}; client on CPU {}. Load average (1 min) when \
         the run ended: {} (other work on the machine shows here; anything above the bench's \
         own ~1.5 competes for the same two CPUs).\n\n",
        parallelism,
        kernel.trim(),
        client_cpu.map_or("(unpinned)".to_owned(), |c| c.to_string()),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".into()),
    ));
    out.push_str(&format!(
        "Closed loop: {conns} keep-alive HTTP/1.1 connections, each writing one request (or 16, \
         pipelined) and reading its response before the next; {secs} s per measurement after a \
         {} ms warm-up; {runs} runs, scenarios interleaved. Each publish is a {}-byte text \
         message to group `{GROUP}`, which has {SUBSCRIBERS} WebSocket subscribers on the \
         client CPU (the \"group of 1 subscriber\" rows publish to group `{SOLO}`, whose one \
         member is the first of them); `delivered` is frames they received over messages \
         acknowledged x members (n/a for the group without members, which measures the API \
         and the routing without deliveries).\n\n",
        WARMUP.as_millis(),
        PAYLOAD.len()
    ));
    out.push_str("| scenario | requests/s, median (min–max) | messages/s, median (min–max) | delivered (min) | errors |\n");
    out.push_str("|---|---|---|---|---|\n");
    for (s, samples) in results {
        let (rm, rlo, rhi) =
            median_min_max(&samples.iter().map(|x| x.requests_per_sec).collect::<Vec<_>>());
        let (mm, mlo, mhi) =
            median_min_max(&samples.iter().map(|x| x.messages_per_sec).collect::<Vec<_>>());
        let delivered = samples.iter().map(|x| x.delivered).fold(f64::INFINITY, f64::min);
        let errors: u64 = samples.iter().map(|x| x.errors).sum();
        out.push_str(&format!(
            "| {} | {} ({}–{}) | {} | {} | {errors} |\n",
            s.name,
            fmt_rate(rm),
            fmt_rate(rlo),
            fmt_rate(rhi),
            if mm == 0.0 {
                "–".to_owned()
            } else {
                format!("{} ({}–{})", fmt_rate(mm), fmt_rate(mlo), fmt_rate(mhi))
            },
            if delivered.is_finite() { format!("{delivered:.4}") } else { "n/a".into() }
        ));
    }
    out.push_str(&format!(
        "\nringcast slow-consumer drops over the whole run: {slow_consumer_drops} (policy `drop`, \
         outbox bound 64 MiB).\n\nEvery run, per scenario:\n\n```\n"
    ));
    for (s, samples) in results {
        let rates: Vec<String> =
            samples.iter().map(|x| format!("{:.0}", x.requests_per_sec)).collect();
        out.push_str(&format!("{:<44} req/s: {}\n", s.name, rates.join(", ")));
    }
    out.push_str("```\n");
    out.push_str(&reading(results));
    out
}

/// The goals, met or not, and what bounds each figure; computed from the medians.
fn reading(results: &[(Scenario, Vec<Sample>)]) -> String {
    let median = |name: &str, f: fn(&Sample) -> f64| {
        results
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, v)| median_min_max(&v.iter().map(f).collect::<Vec<_>>()).0)
    };
    let req = |name| median(name, |x| x.requests_per_sec);
    let msg = |name| median(name, |x| x.messages_per_sec);
    let mut out = String::from("\n## Reading the figures\n\n| Goal | Target | Measured (median) | Met |\n|---|---|---|---|\n");
    let mut goal = |what: &str, target: f64, got: Option<f64>| {
        if let Some(g) = got {
            let met = if g >= target { "yes" } else { "no" };
            out.push_str(&format!(
                "| {what} | ≥ {} | {} | {met} |\n",
                fmt_rate(target),
                fmt_rate(g)
            ));
        }
    };
    goal("single publish requests/s (keep-alive, no pipelining)", 50e3, req("ringcast single"));
    goal("single publish requests/s, pipelined x16", 50e3, req("ringcast single, pipelined x16"));
    goal(
        "batch messages/s (1000 per request, each delivered to 1 subscriber)",
        1e6,
        msg("ringcast batch 1000, group of 1 subscriber"),
    );
    goal("batch messages/s (1000 per request, 10 subscribers)", 1e6, msg("ringcast batch 1000"));
    goal(
        "batch messages/s (1000 per request, API and routing only)",
        1e6,
        msg("ringcast batch 1000, group without members"),
    );
    if let (Some(r), Some(b)) = (req("ringcast single"), req("baseline single (axum + broadcast)"))
    {
        out.push_str(&format!(
            "\nringcast single ÷ baseline single: {:.1}x requests/s, both delivering every message \
             to the same 10 subscribers.\n",
            r / b
        ));
    }
    if let (Some(r), Some(h)) = (req("ringcast single"), req("reference: GET /healthz (HTTP only)"))
    {
        out.push_str(&format!(
            "\nWhat bounds each figure:\n\n\
             - **The HTTP layer.** `GET /healthz` (hyper, no publish, no shard) is the ceiling of a \
             non-pipelined keep-alive request on this CPU with this client: one `recvfrom` and one \
             `sendto` per request, most of it kernel time on loopback. A single publish reaches \
             {:.0} % of it, sharing the CPU with the shard that delivers its 10 frames. The API \
             thread makes one `recvfrom` and one `sendto` per request and one shard wake-up per \
             batch of requests (group commit), and no other syscall.\n\
             - **The deliveries.** A publish to the group is 10 deliveries: batch 1000 at \
             {} messages/s is {} deliveries/s on the one server CPU, which the API shares with \
             the shard. Batches to a group of one subscriber carry 1000 frames to one socket \
             per request (one vectored write), so they measure the endpoint with every message \
             delivered; the same batches to a group without members show the API's own \
             ceiling (JSON parsing, validation, encoding, routing).\n\
             - **The machine.** Two vCPUs shared with other work; the spread column is the \
             noise. Compare rows of one run, not runs of different days.\n",
            100.0 * r / h,
            msg("ringcast batch 1000").map_or("?".into(), fmt_rate),
            msg("ringcast batch 1000").map_or("?".into(), |m| fmt_rate(m * SUBSCRIBERS as f64)),
        ));
    }
    out
}
