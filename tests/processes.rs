//! The shipped programs as a user runs them: the daemon binary (signals, CLI) and the seed
//! examples, each as a real process on a loopback port.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Kills the child if the test fails half-way.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawn and wait for its "listening on ADDR" line (stdout for examples, stderr for the daemon).
fn spawn(mut cmd: Command, from_stderr: bool) -> (Proc, SocketAddr) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).env("RUST_LOG", "info");
    let mut child = cmd.spawn().expect("spawn");
    let out: Box<dyn std::io::Read + Send> = if from_stderr {
        Box::new(child.stderr.take().unwrap())
    } else {
        Box::new(child.stdout.take().unwrap())
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("HTTP API") {
                continue;
            }
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("no 'listening on' line");
    (Proc(child), addr.parse().expect("address"))
}

fn example(name: &str) -> Command {
    Command::new(example_binary(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_1001_to_every_client_and_exits_zero() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--no-pin", "--no-api"]);
    let (mut proc, addr) = spawn(cmd, true);
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(connect(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SAFETY: sending a signal to our own child by pid.
    assert_eq!(unsafe { libc::kill(proc.0.id() as i32, libc::SIGTERM) }, 0);
    for ws in clients.iter_mut() {
        match next_data(ws, 10).await {
            WsMessage::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    // Clients answer the close (tungstenite does it on the next poll) and go away.
    for mut ws in clients {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "daemon did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn serve_help_documents_every_flag() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_ringcast")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--shards",
        "--cpus",
        "--no-pin",
        "--on-message",
        "--tick-interval",
        "--connections-max",
        "--message-bytes-max",
        "--header-bytes-max",
        "--outbox-bytes-max",
        "--slow-consumer",
        "--ping-interval",
        "--idle-timeout",
        "--handshake-timeout",
        "--close-timeout",
        "--shutdown-timeout",
        "--inbox-events-max",
        "--stats-interval",
        "--demo",
        "--welcome",
        "--client-join",
        "--client-publish-groups",
        "--client-publish-all",
        "--client-publish-clients",
        "--groups-per-connection-max",
        "--group-id-bytes-max",
        "--commands-per-sec",
        "--commands-burst",
        "--session-bytes-max",
        "--node-id",
        "--api-listen",
        "--api-token",
        "--api-body-bytes-max",
        "--no-api",
        "--config",
        "--api-token-file",
        "--log-format",
        "--log-level",
    ] {
        assert!(help.contains(flag), "{flag} missing from serve --help:\n{help}");
    }
    // Old spellings are hidden aliases: they parse (tests/ops.rs) but are not advertised.
    for old in ["--max-connections", "--max-message-bytes", "--mesh-capacity"] {
        assert!(!help.contains(old), "{old} shown in serve --help");
    }
    assert!(help.contains("[default: 0.0.0.0:2020]"));
}

#[test]
fn bad_flags_fail_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ping-interval",
            "30s",
            "--idle-timeout",
            "10s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--idle-timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_relay_mode_is_a_group_chat() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
        "--on-message",
        "relay",
        "--no-api",
    ]);
    let (_proc, addr) = spawn(cmd, true);
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.send("hello from a".into()).await.unwrap();
    for ws in [&mut a, &mut b] {
        assert_eq!(next_data(ws, 5).await.into_text().unwrap().as_str(), "hello from a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_timer_broadcast_sends_the_time() {
    let mut cmd = example("timer_broadcast");
    cmd.args(["127.0.0.1:0", "150ms"]);
    let (_proc, addr) = spawn(cmd, false);
    let mut ws = connect(addr).await;
    for _ in 0..2 {
        let t: u64 = next_data(&mut ws, 5).await.into_text().unwrap().parse().unwrap();
        assert!(t > 1_700_000_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_group_chat_relays_to_everyone() {
    let mut cmd = example("group_chat");
    cmd.arg("127.0.0.1:0");
    let (_proc, addr) = spawn(cmd, false);
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    clients[2].send("hi all".into()).await.unwrap();
    for ws in clients.iter_mut() {
        assert_eq!(next_data(ws, 5).await.into_text().unwrap().as_str(), "hi all");
    }
}

/// With its descriptors exhausted the daemon neither spins on `accept` (EMFILE) nor stops
/// serving once descriptors free up, and it logs the capacity the limit leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_pauses_accepting_without_spinning() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--shards", "1", "--no-pin", "--no-api"]);
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limits.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 128, rlim_max: 128 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).env("RUST_LOG", "info");
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr: SocketAddr = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("daemon log");
        log.push(line.clone());
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().parse().unwrap();
        }
    };
    assert!(log.iter().any(|l| l.contains("connection capacity")), "capacity logged: {log:?}");

    // Half-open clients (TCP connected, no upgrade request) hold one descriptor each on the
    // server until the handshake timeout; 200 of them exhaust a 128-descriptor table.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(std::net::TcpStream::connect(addr).unwrap());
    }
    std::thread::sleep(Duration::from_millis(500));
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let before = cpu(proc.0.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu(proc.0.id()) - before;
    assert!(used < 0.5, "accept loop spun: {used:.2} s of CPU in 2 s while out of descriptors");
    let mut seen = Vec::new();
    while let Ok(line) = rx.try_recv() {
        seen.push(line);
    }
    assert!(seen.iter().any(|l| l.contains("accept failed")), "EMFILE is logged: {seen:?}");

    // Descriptors come back: the daemon serves again.
    drop(idle);
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(Ok((ws, _))) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio_tungstenite::connect_async(format!("ws://{addr}/")),
        )
        .await
        {
            drop(ws);
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the daemon accepts again once descriptors are free");
}
