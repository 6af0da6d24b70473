//! The subscribers' receive paths (io_uring and epoll) against a scripted server that writes
//! its frames in different ways: one write per message (one TCP segment each, like a server
//! that does not coalesce), everything pending in one write (like ringcast), or each frame cut
//! into pieces at every offset (frames split across receive completions). The server also
//! pings every subscriber (pongs must come back with the same payload) and can close them
//! (the close must be echoed with the same code).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringcast_loadgen::{run, Config, IoMode};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::Message;

/// (client id, control-frame payload) records shared with the server's threads.
type Log = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// One `write` per frame per client, TCP_NODELAY: one segment per message.
    PerMessage,
    /// Every frame pending for the broadcaster in one `write` per client.
    Coalesced,
    /// Each frame written in pieces of 1, 2, 3, … bytes (cycling), TCP_NODELAY.
    Split,
}

struct Client {
    id: u64,
    out: TcpStream,
    /// Sent at least one data message: a publisher (never pinged or closed by the server).
    publisher: Arc<AtomicBool>,
}

struct Server {
    addr: std::net::SocketAddr,
    /// (client id, payload) of every pong received.
    pongs: Log,
    /// (client id, payload) of every ping sent.
    pings: Log,
    /// (client id, close code) of every close frame received.
    closes: Arc<Mutex<Vec<(u64, u16)>>>,
}

/// Starts the scripted server. `pings`: ping every subscriber after each of the first
/// `pings` broadcast writes. `close_after`: after that many messages, close every subscriber with
/// 1001 (Going Away).
fn start(writes: Writes, pings: u64, close_after: Option<u64>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Arc<Mutex<Vec<Client>>> = Arc::default();
    let pongs: Log = Arc::default();
    let sent_pings: Log = Arc::default();
    let closes: Arc<Mutex<Vec<(u64, u16)>>> = Arc::default();
    let (tx, rx) = channel::<Vec<u8>>();
    {
        let clients = clients.clone();
        let (pongs, closes) = (pongs.clone(), closes.clone());
        thread::spawn(move || {
            for (id, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let (clients, pongs, closes, tx) =
                    (clients.clone(), pongs.clone(), closes.clone(), tx.clone());
                thread::spawn(move || serve(id as u64, stream, clients, pongs, closes, tx));
            }
        });
    }
    {
        let sent_pings = sent_pings.clone();
        thread::spawn(move || broadcast(rx, clients, writes, pings, close_after, sent_pings));
    }
    Server { addr, pongs, pings: sent_pings, closes }
}

fn serve(
    id: u64,
    stream: TcpStream,
    clients: Arc<Mutex<Vec<Client>>>,
    pongs: Log,
    closes: Arc<Mutex<Vec<(u64, u16)>>>,
    tx: Sender<Vec<u8>>,
) {
    stream.set_nodelay(true).unwrap();
    let out = stream.try_clone().unwrap();
    let Ok(mut ws) = tungstenite::accept(stream) else { return };
    let publisher = Arc::new(AtomicBool::new(false));
    clients.lock().unwrap().push(Client { id, out, publisher: publisher.clone() });
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => {
                publisher.store(true, Ordering::SeqCst);
                let mut frame = Vec::with_capacity(b.len() + 10);
                Frame::message(b, OpCode::Data(Data::Binary), true).format(&mut frame).unwrap();
                if tx.send(frame).is_err() {
                    return;
                }
            }
            Ok(Message::Pong(p)) => pongs.lock().unwrap().push((id, p.to_vec())),
            Ok(Message::Close(c)) => {
                closes.lock().unwrap().push((id, c.map_or(1005, |c| u16::from(c.code))));
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn write_to(c: &mut Client, bytes: &[u8], writes: Writes, cut: &mut usize) {
    if writes != Writes::Split {
        let _ = c.out.write_all(bytes);
        return;
    }
    let mut off = 0;
    while off < bytes.len() {
        *cut = *cut % 29 + 1;
        let end = (off + *cut).min(bytes.len());
        if c.out.write_all(&bytes[off..end]).is_err() {
            return;
        }
        off = end;
    }
}

fn broadcast(
    rx: Receiver<Vec<u8>>,
    clients: Arc<Mutex<Vec<Client>>>,
    writes: Writes,
    pings: u64,
    close_after: Option<u64>,
    sent_pings: Log,
) {
    let mut n = 0u64;
    let mut batches = 0u64;
    let mut cut = 0usize;
    let mut closed = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        if writes == Writes::Coalesced {
            thread::sleep(Duration::from_millis(2));
            batch.extend(rx.try_iter());
        }
        let mut clients = clients.lock().unwrap();
        let whole: Vec<u8> = batch.concat();
        for c in clients.iter_mut() {
            if writes == Writes::Coalesced {
                write_to(c, &whole, writes, &mut cut);
            } else {
                for f in &batch {
                    write_to(c, f, writes, &mut cut);
                }
            }
        }
        n += batch.len() as u64;
        batches += 1;
        if batches <= pings {
            for c in clients.iter_mut().filter(|c| !c.publisher.load(Ordering::SeqCst)) {
                let payload = format!("ping-{}-{n}", c.id).into_bytes();
                let mut f = Vec::new();
                Frame::ping(payload.clone()).format(&mut f).unwrap();
                write_to(c, &f, writes, &mut cut);
                sent_pings.lock().unwrap().push((c.id, payload));
            }
        }
        if !closed && close_after.is_some_and(|k| n >= k) {
            closed = true;
            for c in clients.iter_mut().filter(|c| !c.publisher.load(Ordering::SeqCst)) {
                let mut f = Vec::new();
                Frame::close(Some(CloseFrame { code: CloseCode::Away, reason: "bye".into() }))
                    .format(&mut f)
                    .unwrap();
                write_to(c, &f, writes, &mut cut);
            }
        }
    }
}

fn config(server: &Server, io: IoMode, payload: usize) -> Config {
    Config {
        url: format!("ws://{}/", server.addr),
        connections: 12,
        rate: 300.0,
        duration_s: 1.0,
        payload,
        threads: 2,
        // The scripted server lists a subscriber only after its 101 is written, so a
        // subscriber can still be unlisted when the load generator (which saw the 101) starts
        // publishing; messages of the warm-up are not counted, so a late listing costs nothing.
        warmup_s: 0.5,
        drain_s: 5.0,
        io,
        progress: Some(false),
        ..Config::default()
    }
}

fn uring_available() -> bool {
    match ringcast_loadgen::uring::RecvRing::new(1) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("io_uring unavailable here ({e}): only the epoll path is checked");
            false
        }
    }
}

fn io_modes() -> Vec<IoMode> {
    if uring_available() {
        vec![IoMode::Uring, IoMode::Epoll]
    } else {
        vec![IoMode::Epoll]
    }
}

/// Waits until `f` holds (the server's reader threads record asynchronously).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn check_every_delivery(writes: Writes, payload: usize) {
    for io in io_modes() {
        let server = start(writes, 5, None);
        let report = run(&config(&server, io, payload)).expect("load run");
        let r = &report.run;
        let what = format!("{writes:?}, {io:?}, {payload} B");
        assert_eq!(r.io.path, if io == IoMode::Uring { "io_uring" } else { "epoll" }, "{what}");
        assert_eq!(r.connect.ok, 12, "{what}");
        assert_eq!(r.sent, 300, "{what}");
        assert_eq!(r.expected, 300 * 12, "{what}");
        assert_eq!(r.received, r.expected, "{what}: {}", report.human());
        assert_eq!((r.lost, r.duplicates, r.reordered), (0, 0, 0), "{what}");
        assert!(r.cpu.s_per_million_deliveries > 0.0, "{what}");
        if io == IoMode::Uring {
            assert!(r.io.completions > 0, "{what}");
        }
        // Every ping came back as a pong with the same payload, on the same connection.
        let sent = server.pings.lock().unwrap().clone();
        assert_eq!(sent.len(), 5 * 12, "{what}");
        eventually("pongs", || server.pongs.lock().unwrap().len() >= sent.len());
        let mut got = server.pongs.lock().unwrap().clone();
        let mut want = sent.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn one_segment_per_message() {
    check_every_delivery(Writes::PerMessage, 64);
    check_every_delivery(Writes::PerMessage, 1024);
}

#[test]
fn coalesced_writes() {
    check_every_delivery(Writes::Coalesced, 64);
    check_every_delivery(Writes::Coalesced, 1024);
}

#[test]
fn frames_split_across_completions() {
    // Pieces of 1, 2, … 29 bytes (cycling) never line up with the frames: headers and 24-byte
    // prefixes are cut at every offset over the run.
    check_every_delivery(Writes::Split, 64);
    check_every_delivery(Writes::Split, 300);
}

#[test]
fn server_close_is_echoed_with_its_code() {
    for io in io_modes() {
        let server = start(Writes::PerMessage, 0, Some(50));
        // No warm-up here: the closes (after ~50 messages, ~170 ms) must fall in the measured
        // part to be counted.
        let report = run(&Config { warmup_s: 0.0, ..config(&server, io, 64) }).expect("load run");
        let r = &report.run;
        // Every subscriber was closed by the server after ~50 messages and counted as such.
        assert_eq!(r.extra.disconnected, 12, "{io:?}: {}", report.human());
        assert!(r.received < r.expected, "{io:?}");
        eventually("close echoes", || server.closes.lock().unwrap().len() >= 12);
        let closes = server.closes.lock().unwrap().clone();
        let away: Vec<_> = closes.iter().filter(|(_, code)| *code == 1001).collect();
        assert_eq!(away.len(), 12, "{io:?}: {closes:?}");
    }
}

/// The connect storm mode opens, measures and reports without publishing.
#[test]
fn connect_only_reports_handshake_rate_and_latency() {
    let server = start(Writes::PerMessage, 0, None);
    let cfg = Config {
        connections: 200,
        connect_only: true,
        ramp_rate: 0.0,
        max_inflight_handshakes: 64,
        ..config(&server, IoMode::Auto, 64)
    };
    let report = run(&cfg).expect("connect storm");
    assert!(report.connect_only);
    let c = &report.run.connect;
    assert_eq!((c.ok, c.failed), (200, 0));
    assert!(c.handshakes_per_sec > 0.0);
    assert!(c.latency_us.p50 > 0 && c.latency_us.p50 <= c.latency_us.p99);
    assert!(c.latency_us.p99 <= c.latency_us.max);
    assert_eq!(report.run.sent, 0);
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(v["connect_only"], true);
    assert!(v["connect"]["handshakes_per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["connect"]["latency_us"]["p99"].is_u64());
}
