//! Operating the daemon: the configuration layer (file, environment, flags; errors with the
//! key and line; check-config; the example config), `/metrics` scraped from a running daemon
//! with traffic, `/healthz` and `/readyz`, JSON logs. Real binary, real sockets, real
//! WebSocket clients.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{connect, next_data, wait_until};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const BIN: &str = env!("CARGO_BIN_EXE_ringcast");

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/ringcast.toml")
}

/// A file in a fresh directory under the system temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringcast-ops-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `ringcast` with no RINGCAST_* or RUST_LOG from the test's own environment.
fn ringcast() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("RINGCAST_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn check_config(path: &Path, extra: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = ringcast()
        .arg("check-config")
        .arg(path)
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn effective(stdout: &str) -> toml::Table {
    toml::from_str(stdout).unwrap_or_else(|e| panic!("check-config output is not TOML: {e}"))
}

#[test]
fn the_example_config_is_accepted_and_matches_the_defaults() {
    let (ok, out, err) = check_config(&example_config(), &[], &[]);
    assert!(ok, "dist/ringcast.toml rejected: {err}");
    assert!(err.contains("is valid"), "{err}");
    let example = effective(&out);
    // The example documents the defaults: it must behave exactly like no file at all.
    let empty = TempFile::new("empty.toml", "");
    let (ok, out, err) = check_config(&empty.0, &[], &[]);
    assert!(ok, "{err}");
    assert_eq!(example, effective(&out), "dist/ringcast.toml drifted from the defaults");
    for section in ["server", "limits", "timeouts", "commands", "api", "log", "auth", "cluster"] {
        assert!(example.contains_key(section), "no [{section}] in the effective config");
    }
}

#[test]
fn the_cluster_section_is_checked_and_overridden_by_flags_and_env() {
    let file = TempFile::new(
        "ringcast.toml",
        "[cluster]\nurls = [\"redis://:hunter2secret@127.0.0.1:6379\"]\nquery_timeout = \"250ms\"\n\
         namespace = \"prod\"\n",
    );
    let (ok, out, err) = check_config(
        &file.0,
        &["--cluster-namespace", "flagged"],
        &[("RINGCAST_CLUSTER_QUERY_TIMEOUT", "750ms"), ("RINGCAST_CLUSTER_BUS", "classic")],
    );
    assert!(ok, "{err}");
    assert!(!out.contains("hunter2secret"), "a Redis password is never printed: {out}");
    let t = effective(&out);
    let c = t["cluster"].as_table().unwrap();
    assert_eq!(c["urls"][0].as_str(), Some("redis://:***@127.0.0.1:6379"));
    assert_eq!(c["namespace"].as_str(), Some("flagged"), "flag beats file");
    assert_eq!(c["query_timeout"].as_str(), Some("750ms"), "env beats file");
    assert_eq!(c["heartbeat_interval"].as_str(), Some("1s"), "default");
    // Bad values name the key and the line; unknown keys are refused.
    let bad =
        TempFile::new("bad.toml", "[cluster]\nbus = \"classic\"\nheartbeat_interval = \"1ms\"\n");
    let (ok, _, err) = check_config(&bad.0, &[], &[]);
    assert!(!ok);
    assert!(err.contains("cluster.heartbeat_interval") && err.contains("line 3"), "{err}");
    let bad = TempFile::new("bad.toml", "[cluster]\nurls = [\"http://127.0.0.1:6379\"]\n");
    let (ok, _, err) = check_config(&bad.0, &[], &[]);
    assert!(!ok && err.contains("cluster.urls") && err.contains("redis://"), "{err}");
    let bad = TempFile::new("bad.toml", "[cluster]\nurl = \"redis://127.0.0.1:6379\"\n");
    let (ok, _, err) = check_config(&bad.0, &[], &[]);
    assert!(!ok && err.contains("url"), "{err}");
    // Several URLs need the sharded bus; from the environment the error names the variable.
    let empty = TempFile::new("empty.toml", "");
    let (ok, _, err) = check_config(
        &empty.0,
        &[],
        &[("RINGCAST_CLUSTER", "redis://127.0.0.1:7001,redis://127.0.0.1:7002")],
    );
    assert!(!ok && err.contains("sharded") && err.contains("RINGCAST_CLUSTER"), "{err}");
    let (ok, out, err) = check_config(
        &empty.0,
        &["--cluster-bus", "sharded", "--cluster-outbound-messages-max", "9"],
        &[("RINGCAST_CLUSTER", "redis://127.0.0.1:7001,redis://127.0.0.1:7002")],
    );
    assert!(ok, "{err}");
    let t = effective(&out);
    assert_eq!(t["cluster"]["urls"].as_array().unwrap().len(), 2);
    assert_eq!(t["cluster"]["outbound_messages_max"].as_integer(), Some(9));
    let (ok, _, err) = check_config(&empty.0, &["--cluster-inbound-messages-max", "0"], &[]);
    assert!(!ok && err.contains("--cluster-inbound-messages-max"), "{err}");
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let file = TempFile::new(
        "ringcast.toml",
        "[limits]\noutbox_bytes_max = 1000\nmessage_bytes_max = 2000\nsession_bytes_max = 3000\n\
         [commands]\nper_sec = 7\n",
    );
    let (ok, out, err) = check_config(
        &file.0,
        &["--outbox-bytes-max", "4000"],
        &[("RINGCAST_OUTBOX_BYTES_MAX", "5000"), ("RINGCAST_MESSAGE_BYTES_MAX", "6000")],
    );
    assert!(ok, "{err}");
    let t = effective(&out);
    let limits = t["limits"].as_table().unwrap();
    assert_eq!(limits["outbox_bytes_max"].as_integer(), Some(4000), "flag beats env and file");
    assert_eq!(limits["message_bytes_max"].as_integer(), Some(6000), "env beats file");
    assert_eq!(limits["session_bytes_max"].as_integer(), Some(3000), "file beats default");
    assert_eq!(limits["header_bytes_max"].as_integer(), Some(8192), "default");
    assert_eq!(t["commands"]["per_sec"].as_integer(), Some(7));
    let (ok, out, err) = check_config(&file.0, &["--history-recovery-held-messages-max", "5"], &[]);
    assert!(ok, "{err}");
    assert_eq!(effective(&out)["history"]["recovery_held_messages_max"].as_integer(), Some(5));
    // Old spellings are hidden aliases of the new flags.
    let (ok, out, err) = check_config(&file.0, &["--max-connections", "77", "--tick", "9s"], &[]);
    assert!(ok, "{err}");
    let t = effective(&out);
    assert_eq!(t["limits"]["connections_max"].as_integer(), Some(77));
    assert_eq!(t["server"]["tick_interval"].as_str(), Some("9s"));
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_the_line() {
    let file = TempFile::new(
        "bad.toml",
        "# a comment\n[server]\nlisten = \"127.0.0.1:0\"\n\n[limits]\nmax_connections = 10\n",
    );
    let (ok, _, err) = check_config(&file.0, &[], &[]);
    assert!(!ok);
    assert!(err.contains("max_connections") && err.contains("line 6"), "{err}");
    let file = TempFile::new("bad.toml", "[log]\nformat = \"json\"\n[server]\nbogus = 1\n");
    let (ok, _, err) = check_config(&file.0, &[], &[]);
    assert!(!ok);
    assert!(err.contains("bogus") && err.contains("line 4"), "{err}");
    let file =
        TempFile::new("bad.toml", "[timeouts]\nping_interval = \"30s\"\nidle_timeout = \"20s\"\n");
    let (ok, _, err) = check_config(&file.0, &[], &[]);
    assert!(!ok);
    assert!(err.contains("timeouts.idle_timeout") && err.contains("line 3"), "{err}");
    // A value from the environment is blamed on its variable.
    let (ok, _, err) =
        check_config(&example_config(), &[], &[("RINGCAST_GROUP_ID_BYTES_MAX", "0")]);
    assert!(!ok);
    assert!(
        err.contains("limits.group_id_bytes_max") && err.contains("RINGCAST_GROUP_ID_BYTES_MAX"),
        "{err}"
    );
}

#[test]
fn the_daemon_does_not_start_on_an_invalid_config() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let file = TempFile::new(
        "bad.toml",
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[limits]\noutbox_bytes_max = -1\n"),
    );
    let start = Instant::now();
    let out = ringcast()
        .args(["serve", "--no-pin", "--config"])
        .arg(&file.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "exit status {:?}", out.status);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("outbox_bytes_max") && err.contains("line 4"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
    // And a file that does not exist.
    let out =
        ringcast().args(["serve", "--config", "/nonexistent/ringcast.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ringcast.toml"));
}

/// A daemon started from a config file; its stderr lines on a channel.
struct Daemon {
    child: Child,
    ws: SocketAddr,
    api: SocketAddr,
    lines: Receiver<String>,
    _file: TempFile,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address at the end of a log line ("listening on ADDR"), human or JSON.
fn listening(line: &str) -> Option<(bool, SocketAddr)> {
    let message = if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        v["fields"]["message"].as_str()?.to_owned()
    } else {
        line.to_owned()
    };
    let addr = message.split("listening on ").nth(1)?.trim().parse().ok()?;
    Some((message.contains("HTTP API"), addr))
}

fn daemon(config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let file = TempFile::new("ringcast.toml", config);
    let mut child = ringcast()
        .args(["serve", "--config"])
        .arg(&file.0)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcast");
    let (tx, lines) = channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut ws, mut api) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while ws.is_none() || api.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line =
            lines.recv_timeout(left).unwrap_or_else(|_| panic!("no listening lines: {seen:?}"));
        if let Some((is_api, addr)) = listening(&line) {
            if is_api {
                api = Some(addr);
            } else {
                ws = Some(addr);
            }
        }
        seen.push(line);
    }
    Daemon { child, ws: ws.unwrap(), api: api.unwrap(), lines, _file: file }
}

/// `GET path` with an optional bearer token: (status, content type, body).
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8(resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, ctype, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
}

/// A parsed Prometheus text exposition: `name{labels}` → value, plus the declared types.
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let (mut samples, mut types) = (HashMap::new(), HashMap::new());
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                types.insert(name.to_owned(), kind.to_owned());
            } else if line.starts_with('#') || line.trim().is_empty() {
                continue;
            } else {
                let (series, value) = line.rsplit_once(' ').expect("sample line");
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
                };
                assert!(
                    series.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_'),
                    "bad series {series:?}"
                );
                assert!(samples.insert(series.to_owned(), value).is_none(), "duplicate {series}");
            }
        }
        Scrape { samples, types }
    }

    fn get(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("no series {series}"))
    }

    /// Sum of every series of the family `name` (any labels).
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (status, ctype, body) = get(addr, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain"), "content type {ctype}");
    assert!(ctype.contains("version=0.0.4"), "content type {ctype}");
    Scrape::parse(&body)
}

/// A relay-mode daemon on free loopback ports, two unpinned shards, plus `extra` config.
fn relay_daemon(extra: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\npin = false\non_message = \"relay\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\n[timeouts]\nshutdown_timeout = \"1s\"\n{extra}"
    );
    daemon(&config, args, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_from_a_running_daemon_move_with_traffic() {
    let d = relay_daemon("", &[], &[]);
    let before = scrape(d.api);
    assert_eq!(before.types["ringcast_connections"], "gauge");
    assert_eq!(before.types["ringcast_deliveries_total"], "counter");
    assert_eq!(before.types["ringcast_fanout_latency_seconds"], "histogram");
    assert_eq!(before.sum("ringcast_connections"), 0.0);
    assert_eq!(before.get("ringcast_shard_accepting{shard=\"0\"}"), 1.0);
    assert_eq!(before.get("ringcast_shard_accepting{shard=\"1\"}"), 1.0);
    assert_eq!(before.get("ringcast_fanout_latency_seconds_count"), 0.0);
    // Nothing about a backplane on a single node: the metric exists only when meaningful.
    assert!(!before.samples.keys().any(|k| k.contains("backplane")));

    const CLIENTS: usize = 20;
    const EACH: usize = 5;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connect(d.ws).await);
    }
    let api = d.api;
    wait_until(10, "20 connections in /metrics", || {
        scrape(api).sum("ringcast_connections") == CLIENTS as f64
    });
    let s = scrape(d.api);
    assert!(s.get("ringcast_connections{shard=\"0\"}") > 0.0, "SO_REUSEPORT spread");
    assert!(s.get("ringcast_connections{shard=\"1\"}") > 0.0, "SO_REUSEPORT spread");
    assert!(s.get("ringcast_accepts_total") >= CLIENTS as f64);

    // Relay: every message goes to every connection, sender included.
    for (i, ws) in clients.iter_mut().enumerate() {
        for j in 0..EACH {
            ws.send(WsMessage::text(format!("m{i}-{j}"))).await.unwrap();
        }
    }
    for ws in clients.iter_mut() {
        for _ in 0..CLIENTS * EACH {
            assert!(next_data(ws, 20).await.is_text());
        }
    }
    let published = (CLIENTS * EACH) as f64;
    let delivered = published * CLIENTS as f64;
    // Counters are published at the end of a loop turn, and a frame's latency is recorded
    // when its last write's completion is processed: both can trail the clients' reads.
    wait_until(10, "counters published", || {
        let s = scrape(api);
        s.get("ringcast_deliveries_total") >= delivered
            && s.get("ringcast_fanout_latency_seconds_count") >= published * 2.0
    });
    let s = scrape(d.api);
    assert_eq!(s.get("ringcast_messages_received_total"), published);
    assert_eq!(s.get("ringcast_deliveries_total"), delivered);
    assert_eq!(s.get("ringcast_frames_encoded_total"), published, "encoded once per publish");
    assert!(s.get("ringcast_received_bytes_total") > before.get("ringcast_received_bytes_total"));
    let frame_bytes = 2.0 + 3.0; // "mI-J" is 4 or 5 bytes, plus a 2-byte header
    assert!(s.get("ringcast_written_bytes_total") >= delivered * frame_bytes);
    assert!(s.get("ringcast_writes_total") > 0.0);
    assert!(s.get("ringcast_frames_written_total") >= delivered);
    assert!(s.get("ringcast_frames_written_total") >= s.get("ringcast_writes_total"));
    // One fan-out latency observation per publish per shard that queued it (both shards
    // have members); its buckets are cumulative and end at +Inf = count.
    let count = s.get("ringcast_fanout_latency_seconds_count");
    assert_eq!(count, published * 2.0, "one observation per publish per shard");
    assert_eq!(s.get("ringcast_fanout_latency_seconds_bucket{le=\"+Inf\"}"), count);
    let mut buckets: Vec<(f64, f64)> = s
        .samples
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("ringcast_fanout_latency_seconds_bucket{le=\"")?;
            let le = le.strip_suffix("\"}")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(buckets.len(), 20, "19 bounds, 10 us to 10 s, and +Inf");
    assert_eq!(buckets[0].0, 0.00001);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "buckets are cumulative: {buckets:?}");
    let sum = s.get("ringcast_fanout_latency_seconds_sum");
    assert!(sum > 0.0 && sum / count < 5.0, "mean fan-out latency {}", sum / count);
    assert_eq!(s.get("ringcast_slow_consumer_disconnects_total"), 0.0);
    assert_eq!(s.get("ringcast_mesh_dropped_total"), 0.0);
    assert_eq!(s.get("ringcast_inbox_events_max"), 65536.0);
    assert!(s.sum("ringcast_inbox_events") >= 0.0);

    // Five clients leave with a close handshake: counted as closes by the peer.
    for mut ws in clients.drain(..5) {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next_msg().await {}
    }
    wait_until(10, "closes counted", || {
        let s = scrape(api);
        s.get("ringcast_closes_total{reason=\"peer\"}") == 5.0
            && s.sum("ringcast_connections") == (CLIENTS - 5) as f64
    });
    let s = scrape(d.api);
    assert_eq!(s.get("ringcast_closes_total{reason=\"aborted\"}"), 0.0);
    assert!(s.get("ringcast_api_requests_total") > 0.0);
    drop(clients);
}

trait NextMsg {
    async fn next_msg(
        &mut self,
    ) -> Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>;
}

impl NextMsg for common::Ws {
    async fn next_msg(
        &mut self,
    ) -> Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
        use futures_util::StreamExt;
        tokio::time::timeout(Duration::from_secs(5), self.next()).await.ok().flatten()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_shards_and_a_full_node_and_needs_no_token() {
    let d =
        relay_daemon("[limits]\nconnections_max = 2\n", &[], &[("RINGCAST_API_TOKEN", "s3cret")]);
    let (status, ctype, body) = get(d.api, "/readyz", None);
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["checks"][0]["name"], "shards");
    assert_eq!(get(d.api, "/healthz", None).0, 200);
    // /metrics is behind the token like the rest of the API.
    assert_eq!(get(d.api, "/metrics", None).0, 401);
    assert_eq!(get(d.api, "/metrics", Some("s3cret")).0, 200);
    // At connections_max the node refuses upgrades: not ready.
    let _a = connect(d.ws).await;
    let _b = connect(d.ws).await;
    let api = d.api;
    wait_until(10, "/readyz 503 when full", || get(api, "/readyz", None).0 == 503);
    let (_, _, body) = get(d.api, "/readyz", None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    assert!(v["checks"][0]["error"].as_str().unwrap().contains("node full"), "{body}");
    drop(_a);
    wait_until(10, "/readyz 200 again", || get(api, "/readyz", None).0 == 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_configures_the_running_daemon_and_env_overrides_it() {
    // File: 100-byte messages; environment: 200. The environment wins: 150 bytes pass,
    // 250 bytes close with 1009.
    let d = relay_daemon(
        "[limits]\nmessage_bytes_max = 100\n",
        &[],
        &[("RINGCAST_MESSAGE_BYTES_MAX", "200")],
    );
    let mut ws = connect(d.ws).await;
    ws.send(WsMessage::text("x".repeat(150))).await.unwrap();
    assert_eq!(next_data(&mut ws, 10).await.into_text().unwrap().len(), 150);
    ws.send(WsMessage::text("x".repeat(250))).await.unwrap();
    match next_data(&mut ws, 10).await {
        WsMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let mut d = relay_daemon("[log]\nformat = \"json\"\n", &[], &[]);
    // A notable event after start-up: a client that breaks the protocol is a debug line,
    // so at the default level only start-up and shutdown lines appear.
    let ws = connect(d.ws).await;
    drop(ws);
    // SAFETY: sending a signal to our own child by pid.
    assert_eq!(unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) }, 0);
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut lines = Vec::new();
    while let Ok(line) = d.lines.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    assert!(!lines.is_empty());
    let mut messages = Vec::new();
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
        messages.push(v["fields"]["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(messages.iter().any(|m| m == "shutting down gracefully"), "{messages:?}");
    assert!(messages.iter().any(|m| m == "stopped"), "{messages:?}");
    // Never one line per connection or message at the default level.
    assert!(lines.len() < 20, "{lines:#?}");
}
