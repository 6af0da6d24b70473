//! Cluster benchmark, side by side in one run: one node alone vs three nodes behind one Redis
//! (classic pub/sub), subscribers spread over the nodes, publishes entering at one node.
//!
//! Reports, interleaved and repeated (spread = min..max over repetitions):
//! - deliveries/s and fan-out latency (p50, p99) at fixed offered loads;
//! - the latency the Redis hop adds at low load (one subscriber on another node vs on the
//!   publishing node, 200 publishes/s);
//! - Redis's own counters per publish (`INFO commandstats` PUBLISH calls, `INFO stats`
//!   output bytes) for a group that lives on one node and a group that spans all three.
//!
//! Placement: every server process (ringcast nodes, redis-server) on CPU 0, this process
//! (publisher and subscribers, one thread) on CPU 1. `RINGCAST_BENCH_QUICK=1`: one short
//! repetition (CI). Run: `cargo bench --bench cluster`.

#[path = "../tests/cluster_util/mod.rs"]
mod cluster_util;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cluster_util::{Node, Redis};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const BIN: &str = env!("CARGO_BIN_EXE_ringcast");

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn node_args(cluster: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--cpus",
        "0",
        "--demo",
        "--commands-per-sec",
        "0",
        "--welcome",
        "off",
        "--ping-interval",
        "0s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(url) = cluster {
        v.extend([
            "--cluster".into(),
            url.into(),
            "--cluster-unsubscribe-linger".into(),
            "60s".into(),
            // Groups `hbench*` keep a history (in Redis, on a clustered node).
            "--history-rule".into(),
            "hbench*=10000,1m".into(),
        ]);
    }
    v
}

async fn connect(node: &Node) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{}/", node.ws)).await.expect("connect").0
}

async fn join(ws: &mut Ws, group: &str) {
    let cmd = format!(r#"{{"cmd":"add_group","group_id":"{group}","id":1}}"#);
    ws.send(WsMessage::text(cmd)).await.unwrap();
    loop {
        if let Some(Ok(WsMessage::Text(t))) = ws.next().await {
            if t.contains("\"ok\"") {
                return;
            }
        }
    }
}

struct Point {
    deliveries_per_sec: f64,
    expected: u64,
    received: u64,
    p50_us: f64,
    p99_us: f64,
}

/// Publish `rate`/s for `secs` into `publisher`'s group `group` (open loop); every subscriber
/// records send→receive latency (one clock: this process).
async fn run_point(
    publisher: &mut Ws,
    subs: Vec<Ws>,
    group: &str,
    rate: u64,
    secs: f64,
) -> (Point, Vec<Ws>) {
    let t0 = Instant::now();
    let hist = Rc::new(RefCell::new(Histogram::<u64>::new(3).unwrap()));
    let total = (rate as f64 * secs) as u64;
    let n_subs = subs.len() as u64;
    let local = tokio::task::LocalSet::new();
    let mut handles = Vec::new();
    for mut ws in subs {
        let hist = hist.clone();
        handles.push(local.spawn_local(async move {
            let mut got = 0u64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs + 3.0);
            while got < total {
                match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(WsMessage::Text(t)))) => {
                        if let Some(ns) = t.strip_prefix("t").and_then(|s| s.parse::<u64>().ok()) {
                            let now = t0.elapsed().as_nanos() as u64;
                            let _ = hist.borrow_mut().record(now.saturating_sub(ns) / 1000);
                            got += 1;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            (ws, got)
        }));
    }
    let publish = async {
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        for i in 0..total {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let ts = t0.elapsed().as_nanos();
            let cmd =
                format!(r#"{{"cmd":"send_to_group","group_id":"{group}","message":"t{ts}"}}"#);
            publisher.send(WsMessage::text(cmd)).await.unwrap();
        }
    };
    let started = Instant::now();
    let (subs, received) = local
        .run_until(async move {
            publish.await;
            let mut subs = Vec::new();
            let mut received = 0;
            for h in handles {
                let (ws, got) = h.await.unwrap();
                subs.push(ws);
                received += got;
            }
            (subs, received)
        })
        .await;
    let elapsed = started.elapsed().as_secs_f64().max(secs);
    let h = hist.borrow();
    (
        Point {
            deliveries_per_sec: received as f64 / elapsed,
            expected: total * n_subs,
            received,
            p50_us: h.value_at_quantile(0.5) as f64,
            p99_us: h.value_at_quantile(0.99) as f64,
        },
        subs,
    )
}

/// One table row: the points' deliveries/s, p50 and p99 (median and spread), share delivered.
fn row(name: &str, rate: u64, r: &[Point]) -> String {
    let d: Vec<f64> = r.iter().map(|p| p.deliveries_per_sec).collect();
    let p50: Vec<f64> = r.iter().map(|p| p.p50_us).collect();
    let p99: Vec<f64> = r.iter().map(|p| p.p99_us).collect();
    let got: u64 = r.iter().map(|p| p.received).sum();
    let want: u64 = r.iter().map(|p| p.expected).sum();
    format!(
        "| {name} | {rate} | {} | {} | {} | {:.2} % |\n",
        spread(&d),
        spread(&p50),
        spread(&p99),
        100.0 * got as f64 / want.max(1) as f64
    )
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(0.0, f64::max);
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = s[s.len() / 2];
    if v.len() == 1 {
        format!("{med:.0}")
    } else {
        format!("{med:.0} ({min:.0}..{max:.0})")
    }
}

fn redis_info_u64(redis: &Redis, section: &str, key: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(&mut redis.conn()).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn received_counter(node: &Node) -> u64 {
    let url = node.url("/api/stats");
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = &resp[resp.find('{').unwrap()..=resp.rfind('}').unwrap()];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["cluster"]["backplane"]["counters"]["received"].as_u64().unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / harness probes: nothing to list
    }
    let quick = std::env::var("RINGCAST_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (reps, secs) = if quick { (1, 2.0) } else { (3, 5.0) };
    let redis = {
        let r = Redis::start();
        let pid = redis_info_u64(&r, "server", "process_id") as i32;
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        r
    };
    eprintln!("cluster bench: redis on 127.0.0.1:{}", redis.port);
    let single = Node::start(BIN, &node_args(None));
    let cluster: Vec<Node> =
        (0..3).map(|_| Node::start(BIN, &node_args(Some(&redis.url())))).collect();
    pin_self(1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let subs_n = 150;
        let mut out = String::new();
        out.push_str(&format!(
            "ringcast cluster benchmark: {subs_n} subscribers of one group, publishes (client \
             command send_to_group) entering at one node; {reps} interleaved repetition(s) of \
             {secs} s per point; median (min..max)\n\n"
        ));
        // Subscribers: all on the single node / 50 on each cluster node.
        let mut single_subs = Vec::new();
        for _ in 0..subs_n {
            let mut ws = connect(&single).await;
            join(&mut ws, "bench").await;
            single_subs.push(ws);
        }
        let mut cluster_subs = Vec::new();
        for i in 0..subs_n {
            let mut ws = connect(&cluster[i % 3]).await;
            join(&mut ws, "bench").await;
            cluster_subs.push(ws);
        }
        eprintln!("cluster bench: {subs_n} + {subs_n} subscribers connected");
        let mut single_pub = connect(&single).await;
        let mut cluster_pub = connect(&cluster[0]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        out.push_str("| setup | offered publishes/s | deliveries/s | p50 µs | p99 µs | delivered |\n|---|---|---|---|---|---|\n");
        for rate in [200u64, 1000, 2000] {
            let mut res: [Vec<Point>; 2] = [Vec::new(), Vec::new()];
            eprintln!("cluster bench: {rate} publishes/s");
            for _ in 0..reps {
                let (p, s) = run_point(&mut single_pub, std::mem::take(&mut single_subs), "bench", rate, secs).await;
                single_subs = s;
                res[0].push(p);
                let (p, s) = run_point(&mut cluster_pub, std::mem::take(&mut cluster_subs), "bench", rate, secs).await;
                cluster_subs = s;
                res[1].push(p);
            }
            for (name, r) in [("1 node", &res[0]), ("3 nodes + Redis", &res[1])] {
                out.push_str(&row(name, rate, r));
            }
        }

        // History in Redis: the same traffic to a group with a history rule (each publish
        // appended by the publishing node's cluster task, one Lua script that also publishes
        // it positioned; every node, the publisher's included, delivers it from Redis) vs a
        // group without.
        for ws in cluster_subs.iter_mut() {
            join(ws, "hbench").await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        out.push_str(
            "\nHistory in Redis, 3 nodes: the same subscribers in a group with a history rule \
             (`hbench`, appended in Redis) vs without (`bench`), interleaved:\n\n\
             | group | offered publishes/s | deliveries/s | p50 µs | p99 µs | delivered |\n\
             |---|---|---|---|---|---|\n",
        );
        for rate in [200u64, 1000, 2000] {
            let mut res: [Vec<Point>; 2] = [Vec::new(), Vec::new()];
            eprintln!("cluster bench: history, {rate} publishes/s");
            for _ in 0..reps {
                for (i, g) in ["bench", "hbench"].into_iter().enumerate() {
                    let subs = std::mem::take(&mut cluster_subs);
                    let (p, s) = run_point(&mut cluster_pub, subs, g, rate, secs).await;
                    cluster_subs = s;
                    res[i].push(p);
                }
            }
            out.push_str(&row("no history", rate, &res[0]));
            out.push_str(&row("history in Redis", rate, &res[1]));
        }
        drop(single_subs);
        drop(cluster_subs);

        // The Redis hop at low load: one subscriber on the publishing node vs on another.
        let mut local_sub = connect(&cluster[0]).await;
        join(&mut local_sub, "hop-local").await;
        let mut remote_sub = connect(&cluster[1]).await;
        join(&mut remote_sub, "hop-remote").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (mut l, mut r) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let (p, mut s) = run_point(&mut cluster_pub, vec![local_sub], "hop-local", 200, secs).await;
            local_sub = s.pop().unwrap();
            l.push(p);
            let (p, mut s) = run_point(&mut cluster_pub, vec![remote_sub], "hop-remote", 200, secs).await;
            remote_sub = s.pop().unwrap();
            r.push(p);
        }
        out.push_str("\nLatency the Redis hop adds at low load (200 publishes/s, one subscriber):\n\n| path | p50 µs | p99 µs |\n|---|---|---|\n");
        for (name, v) in [("same node (no Redis)", &l), ("other node (via Redis)", &r)] {
            let p50: Vec<f64> = v.iter().map(|p| p.p50_us).collect();
            let p99: Vec<f64> = v.iter().map(|p| p.p99_us).collect();
            out.push_str(&format!("| {name} | {} | {} |\n", spread(&p50), spread(&p99)));
        }
        let hop: Vec<f64> = l.iter().zip(&r).map(|(a, b)| b.p50_us - a.p50_us).collect();
        out.push_str(&format!("\nRedis hop, p50 difference: {} µs\n", spread(&hop)));

        // Redis's own counters per publish: a group on one node vs a group on all three.
        let mut one = connect(&cluster[1]).await;
        join(&mut one, "on-one").await;
        let mut all = Vec::new();
        for n in &cluster {
            let mut ws = connect(n).await;
            join(&mut ws, "on-all").await;
            all.push(ws);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        out.push_str("\nRedis messages per publish (Redis `INFO commandstats` / `INFO stats`, 1000 publishes of 64 B entering at node 1):\n\n| group lives on | PUBLISH calls / publish | Redis output bytes / publish | bus messages received per node (1, 2, 3) |\n|---|---|---|---|\n");
        let payload = "x".repeat(64);
        for (group, label) in [("on-one", "node 2 only"), ("on-all", "all three nodes")] {
            redis.reset_stats();
            let before_out = redis_info_u64(&redis, "stats", "total_net_output_bytes");
            let before_rx: Vec<u64> = cluster.iter().map(received_counter).collect();
            for _ in 0..1000 {
                let cmd = format!(r#"{{"cmd":"send_to_group","group_id":"{group}","message":"{payload}"}}"#);
                cluster_pub.send(WsMessage::text(cmd)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let calls = redis.command_calls("publish");
            let out_bytes = redis_info_u64(&redis, "stats", "total_net_output_bytes") - before_out;
            let rx: Vec<u64> = cluster.iter().map(received_counter).zip(before_rx).map(|(a, b)| a - b).collect();
            out.push_str(&format!(
                "| {label} | {:.2} | {:.0} | {} |\n",
                calls as f64 / 1000.0,
                out_bytes as f64 / 1000.0,
                rx.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        drop((one, all, local_sub, remote_sub));
        println!("{out}");
    });
}
