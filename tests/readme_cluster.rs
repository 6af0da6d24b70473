//! The README's "Running a cluster" section, run as written: every indented command line of the
//! section is taken from README.md, its ports mapped to free loopback ports, and executed
//! (redis-server, redis-cli, the ringcast daemon, the ws_client example, the curl pushes and
//! the group query), for the single-Redis session and for the Redis Cluster variant.

mod cluster_util;
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster_util::{free_port, reachable, Node};

/// The section's command lines (indented by four spaces), in order.
fn section_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start =
        readme.find("## Running a cluster").expect("README has a 'Running a cluster' section");
    let rest = &readme[start + 3..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    section.lines().filter_map(|l| l.strip_prefix("    ")).map(str::to_owned).collect()
}

/// Replace every port number of the README (four digits standing alone) by a free one.
fn map_ports(line: &str, ports: &mut HashMap<String, u16>) -> String {
    let mut out = String::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let is_digit = |j: usize| j < b.len() && b[j].is_ascii_digit();
        if is_digit(i) && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'.') {
            let mut j = i;
            while is_digit(j) {
                j += 1;
            }
            let n = &line[i..j];
            let standalone = j == b.len() || !(b[j].is_ascii_alphanumeric() || b[j] == b'.');
            if n.len() == 4 && standalone && (2020..=7999).contains(&n.parse::<u32>().unwrap()) {
                let p = *ports.entry(n.to_owned()).or_insert_with(free_port);
                out.push_str(&p.to_string());
            } else {
                out.push_str(n);
            }
            i = j;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Split a command line as a POSIX shell would for the simple quoting the README uses.
fn words(line: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, ' ') => {
                if !cur.is_empty() || any {
                    v.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.is_empty() || any {
        v.push(cur);
    }
    v
}

/// Daemonized redis-servers the session started: shut down when the test ends.
struct Shutdown(Vec<u16>);

impl Drop for Shutdown {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("redis-cli")
                .args(["-p", &p.to_string(), "shutdown", "nosave"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let addr: std::net::SocketAddr = host.parse().unwrap();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => body[a..=b].to_owned(),
        _ => body,
    };
    (status, body)
}

#[test]
fn the_readme_cluster_sessions_work_as_written() {
    assert!(cluster_util::redis_available(), "run ./scripts/install-test-deps.sh first");
    let dir = std::env::temp_dir().join(format!("ringcast-readme-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ports = HashMap::new();
    let mut redis_ports = Shutdown(Vec::new());
    let mut nodes: Vec<Node> = Vec::new();
    let mut client_lines = None;
    let mut group_answers = Vec::new();
    let mut ran = 0;
    for raw in section_commands() {
        let line = map_ports(&raw, &mut ports);
        let line = line.trim_end_matches('&').trim().to_owned();
        if line.starts_with("redis-server") || line.starts_with("for ") {
            for w in line.split(|c: char| !c.is_ascii_digit()) {
                if let Ok(p) = w.parse::<u16>() {
                    if ports.values().any(|v| *v == p) {
                        redis_ports.0.push(p);
                    }
                }
            }
            let st = Command::new("bash").arg("-c").arg(&line).current_dir(&dir).status().unwrap();
            assert!(st.success(), "{line}");
            for p in &redis_ports.0 {
                common::wait_until(10, "redis-server", || {
                    reachable(format!("127.0.0.1:{p}").parse().unwrap())
                });
            }
        } else if line.starts_with("redis-cli") {
            let out = Command::new("bash").arg("-c").arg(&line).current_dir(&dir).output().unwrap();
            assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stdout));
            std::thread::sleep(Duration::from_secs(2)); // the cluster settles its slots
        } else if line.starts_with("cargo build") {
            // The test harness already built the daemon and the examples.
        } else if let Some(args) = line.strip_prefix("target/release/ringcast ") {
            let mut a = words(args);
            a.extend(["--shards", "2", "--no-pin"].map(String::from));
            nodes.push(Node::start(env!("CARGO_BIN_EXE_ringcast"), &a));
        } else if let Some(args) = line.strip_prefix("target/release/examples/ws_client ") {
            let mut child = Command::new(common::example_binary("ws_client"))
                .args(words(args))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
            let welcome = rx.recv_timeout(Duration::from_secs(30)).expect("welcome");
            assert!(welcome.contains("welcome"), "{welcome}");
            std::thread::sleep(Duration::from_millis(500)); // the join crosses to Redis
            client_lines = Some((child, rx));
        } else if let Some(url) = line.strip_prefix("curl ") {
            let url = words(url).pop().unwrap();
            let (status, body) = http_get(&url);
            assert_eq!(status, 200, "{line}: {body}");
            if url.contains("/api/groups/") {
                group_answers.push(body);
            }
        } else if line.starts_with('{') {
            // The expected output shown in the README.
            continue;
        } else {
            panic!("the test does not know how to run README line {raw:?}");
        }
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} README commands ran");
    let (mut child, rx) = client_lines.expect("the README starts a client");
    for want in ["hello group", "hello everyone"] {
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), want);
    }
    let _ = child.kill();
    let _ = child.wait();
    let g: serde_json::Value = serde_json::from_str(&group_answers[0]).unwrap();
    assert_eq!(g["count"], 1, "{g}");
    assert_eq!(g["nodes_answered"].as_array().unwrap().len(), 2, "{g}");
    // The Redis Cluster variant's nodes are up on the sharded bus.
    assert_eq!(nodes.len(), 4);
    for n in &nodes[2..] {
        let (_, s) = http_get(&n.url("/api/stats"));
        let s: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(s["cluster"]["backplane"]["bus"], "sharded", "{s}");
        assert_eq!(s["cluster"]["backplane"]["state"], "up", "{s}");
        assert_eq!(s["cluster"]["nodes"].as_array().unwrap().len(), 2, "{s}");
    }
    drop(nodes);
    drop(redis_ports);
    let _ = std::fs::remove_dir_all(&dir);
}
