//! Real Redis servers and real ringcast node processes for the cluster tests (and the README
//! and benchmark checks): each on free loopback ports, each stopped when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free loopback TCP port (bound then released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Skip guidance when redis-server is missing.
pub fn redis_available() -> bool {
    Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// A redis-server process on a loopback port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(free_port(), &[])
    }

    /// On `port`, with extra redis-server arguments (e.g. cluster mode).
    pub fn start_with(port: u16, extra: &[&str]) -> Redis {
        assert!(
            redis_available(),
            "redis-server not found: run ./scripts/install-test-deps.sh (installs redis-server \
             and redis-tools from Debian's packages)"
        );
        let dir =
            std::env::temp_dir().join(format!("ringcast-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r =
            Redis { port, child: None, dir, extra: extra.iter().map(|s| s.to_string()).collect() };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server on {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop it (SIGKILL: connections drop at once, as in a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    /// Subscribers of a classic channel (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> u64 {
        let (_, n): (String, u64) =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query(&mut self.conn()).unwrap();
        n
    }

    /// `calls` of one command in `INFO commandstats` (e.g. "publish").
    pub fn command_calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut self.conn()).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub fn reset_stats(&self) {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut self.conn()).unwrap();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three redis-server processes in cluster mode joined into a three-master Redis Cluster
/// (`redis-cli --cluster create`), no replicas.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = format!("nodes-{port}.conf");
            nodes.push(Redis::start_with(
                port,
                &["--cluster-enabled", "yes", "--cluster-config-file", &conf],
            ));
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (package redis-tools) is needed: ./scripts/install-test-deps.sh");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes.iter().all(|n| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut n.conn())
                    .is_ok_and(|s| s.contains("cluster_state:ok"))
            });
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    /// Comma-separated seed URLs.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }
}

/// A ringcast node process (the real binary).
pub struct Node {
    child: Option<Child>,
    pub ws: SocketAddr,
    pub api: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The daemon's arguments for a test node in demo mode on free loopback ports.
pub fn node_args(cluster: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
        "--demo",
        "--cluster",
        cluster,
        "--cluster-heartbeat-interval",
        "300ms",
        "--cluster-unsubscribe-linger",
        "500ms",
        "--shutdown-timeout",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

impl Node {
    /// Start `bin` with `args`; panics with its log if it does not come up.
    pub fn start(bin: &str, args: &[String]) -> Node {
        match Node::try_start(bin, args) {
            Ok(n) => n,
            Err(log) => panic!("node did not start:\n{log}"),
        }
    }

    /// Start, or the node's log if it exited or did not come up within 30 s.
    pub fn try_start(bin: &str, args: &[String]) -> Result<Node, String> {
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringcast");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(a) = line.split("HTTP API listening on ").nth(1) {
                        let _ = tx.send((true, a.trim().to_owned()));
                    } else if let Some(a) = line.split("listening on ").nth(1) {
                        let _ = tx.send((false, a.trim().to_owned()));
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let (mut ws, mut api) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while ws.is_none() || api.is_none() {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!("exited with {status}:\n{}", log.lock().unwrap().join("\n")));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("timed out:\n{}", log.lock().unwrap().join("\n")));
            }
            if let Ok((is_api, a)) = rx.recv_timeout(Duration::from_millis(50)) {
                let addr: SocketAddr = a.parse().unwrap();
                if is_api {
                    api = Some(addr);
                } else {
                    ws = Some(addr);
                }
            }
        }
        Ok(Node { child: Some(child), ws: ws.unwrap(), api: api.unwrap(), log })
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(s) = c.try_wait().unwrap() {
                    return s.success();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        false
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a node that is alive in presence for a while
    /// but answers nothing.
    pub fn pause(&self, stop: bool) {
        if let Some(c) = &self.child {
            let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: sending a signal to our own child by pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    pub fn log_contains(&self, s: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(s))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a TCP connect to `addr` succeeds.
pub fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
