//! Bad input gets the RFC answer and the node keeps serving; slow, silent and excess clients
//! are bounded.

mod common;

use std::time::Duration;

use common::*;
use ringcast::SlowConsumerPolicy;

/// After each abuse, a well-behaved client still connects and receives a broadcast.
async fn still_serving(node: &ringcast::Handle) {
    // The client sees 101 a moment before the shard registers it: publish until it arrives.
    let mut ws = connect(node.local_addr()).await;
    for _ in 0..50 {
        node.broadcast("still here").unwrap();
        if let Ok(msg) =
            tokio::time::timeout(Duration::from_millis(100), next_data(&mut ws, 1)).await
        {
            assert_eq!(msg.into_text().unwrap().as_str(), "still here");
            return;
        }
    }
    panic!("a fresh client never received a broadcast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshakes_get_http_errors() {
    let node = start(config());
    let addr = node.local_addr();
    let cases: &[(&str, String)] = &[
        ("426", "GET / HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("426", UPGRADE.replace("Version: 13", "Version: 8")),
        ("405", UPGRADE.replace("GET", "POST")),
        ("400", UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")),
        ("400", "\x16\x03\x01\x02\x00 not http at all\r\n\r\n".into()),
        ("431", format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000))),
    ];
    for (status, request) in cases {
        let mut raw = Raw::connect(addr);
        let head = raw.request(request.as_bytes());
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{request:?} got {head}");
        if *status == "426" {
            assert!(head.contains("Sec-WebSocket-Version: 13"));
        }
        assert!(raw.sees_eof(), "connection closed after the error");
    }
    still_serving(&node).await;
    assert!(node.metrics().handshakes_rejected >= cases.len() as u64);
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_rfc_close_codes() {
    let node = start(ringcast::Config { message_bytes_max: 1024, ..config() });
    let addr = node.local_addr();
    let cases: &[(&str, u8, Vec<u8>, bool, u16)] = &[
        ("unmasked frame", 0x81, b"hi".to_vec(), false, 1002),
        ("invalid UTF-8", 0x81, vec![0xce, 0xba, 0xff, 0xfe], true, 1007),
        ("oversized message", 0x82, vec![0u8; 2000], true, 1009),
        ("reserved opcode", 0x83, b"x".to_vec(), true, 1002),
        ("reserved bits", 0xc1, b"x".to_vec(), true, 1002),
        ("continuation without start", 0x80, b"x".to_vec(), true, 1002),
        ("fragmented ping", 0x09, b"x".to_vec(), true, 1002),
    ];
    for (what, first, payload, mask, code) in cases {
        let mut raw = Raw::upgrade(addr);
        raw.send_frame(*first, payload, *mask);
        assert_eq!(raw.expect_close(), *code, "{what}");
        assert!(raw.sees_eof(), "{what}: server closes TCP after its close frame");
    }
    // Oversized across fragments.
    let mut raw = Raw::upgrade(addr);
    raw.send_frame(0x02, &[0u8; 600], true);
    raw.send_frame(0x80, &[0u8; 600], true);
    assert_eq!(raw.expect_close(), 1009, "fragmented oversized message");
    still_serving(&node).await;
    assert!(node.metrics().protocol_errors > cases.len() as u64);
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_handshake_and_ping_from_client() {
    let node = start(config());
    let mut raw = Raw::upgrade(node.local_addr());
    raw.send_frame(0x89, b"are you there", true);
    assert_eq!(raw.read_frame(), Some((0xA, b"are you there".to_vec())), "pong echoes the ping");
    raw.send_frame(0x88, &1000u16.to_be_bytes(), true);
    assert_eq!(raw.expect_close(), 1000, "close is answered with the same code");
    assert!(raw.sees_eof());
    wait_until(5, "slot freed", || node.metrics().connections_open == 0);
    node.shutdown();
    node.join().unwrap();
}

/// A client that stops reading while 5 others read: the slow one is closed once over its
/// bound, the others receive every message in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_dropped_and_others_get_everything() {
    let node = start(ringcast::Config {
        outbox_bytes_max: 256 * 1024,
        close_timeout: Duration::from_millis(500),
        ..config()
    });
    let addr = node.local_addr();
    let slow = {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&addr.into()).unwrap();
        let mut raw = Raw::from_stream(sock.into());
        let head = raw.request(UPGRADE.as_bytes());
        assert!(head.starts_with("HTTP/1.1 101"));
        raw
    };
    let mut fast = Vec::new();
    for _ in 0..5 {
        fast.push(connect(addr).await);
    }
    wait_until(5, "clients registered", || node.metrics().connections_open == 6);
    const N: usize = 4000;
    let payload = "x".repeat(1000);
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let progress: Vec<Arc<AtomicUsize>> = (0..fast.len()).map(|_| Arc::default()).collect();
    let readers: Vec<_> = fast
        .into_iter()
        .zip(progress.clone())
        .map(|(mut ws, done)| {
            tokio::spawn(async move {
                for i in 0..N {
                    let t = next_data(&mut ws, 20).await.into_text().unwrap();
                    assert!(
                        t.starts_with(&format!("{i}:")),
                        "message {i} out of order: {}",
                        &t[..12]
                    );
                    done.store(i + 1, Ordering::Relaxed);
                }
                ws
            })
        })
        .collect();
    // Readers keep up (at most ~100 KB behind the publisher); the slow client reads nothing.
    for i in 0..N {
        while progress.iter().map(|p| p.load(Ordering::Relaxed)).min().unwrap() + 100 < i {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        node.broadcast(format!("{i}:{payload}")).unwrap();
    }
    let mut kept = Vec::new();
    for r in readers {
        kept.push(r.await.unwrap());
    }
    let m = node.metrics();
    assert_eq!(m.slow_consumer_disconnects, 1, "{m:?}");
    let mut slow = slow;
    assert!(slow.sees_eof(), "the slow client is disconnected");
    wait_until(5, "slow slot freed", || node.metrics().connections_open == 5);
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_policy_skips_messages_but_keeps_the_client() {
    let node = start(ringcast::Config {
        outbox_bytes_max: 32 * 1024,
        slow_consumer: SlowConsumerPolicy::Drop,
        ..config()
    });
    let addr = node.local_addr();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut slow = Raw::from_stream(sock.into());
    assert!(slow.request(UPGRADE.as_bytes()).starts_with("HTTP/1.1 101"));
    wait_until(5, "registered", || node.metrics().connections_open == 1);
    let payload = "y".repeat(1000);
    for i in 0..3000 {
        let _ = node.broadcast(format!("{i}:{payload}"));
    }
    wait_until(10, "drops counted", || node.metrics().slow_consumer_drops > 0);
    // Drain: what arrives is a gap-free prefix followed by later messages, all well-formed.
    let mut last = None;
    let mut got = 0;
    slow.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    while let Some((op, p)) = slow.read_frame() {
        assert_eq!(op, 1);
        let i: usize = std::str::from_utf8(&p).unwrap().split(':').next().unwrap().parse().unwrap();
        assert!(last.is_none_or(|l| i > l), "in order");
        last = Some(i);
        got += 1;
    }
    assert!(got > 0 && got < 3000, "some delivered, some skipped: {got}");
    assert_eq!(node.metrics().slow_consumer_disconnects, 0);
    assert_eq!(node.metrics().connections_open, 1, "still connected");
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_time_out_and_responsive_ones_stay() {
    let node = start(ringcast::Config {
        ping_interval: Some(Duration::from_millis(200)),
        idle_timeout: Duration::from_millis(700),
        close_timeout: Duration::from_millis(300),
        ..config()
    });
    let mut silent = Raw::upgrade(node.local_addr());
    let mut alive = connect(node.local_addr()).await;
    // tungstenite answers pings while we poll it.
    let poll = tokio::time::timeout(Duration::from_millis(1500), next_data(&mut alive, 2)).await;
    assert!(poll.is_err(), "no data expected, only pings");
    assert_eq!(silent.read_frame().map(|f| f.0), Some(0x9), "server pings");
    assert_eq!(silent.expect_close(), 1001, "idle timeout closes with 1001");
    assert!(silent.sees_eof());
    assert_eq!(node.metrics().idle_timeouts, 1);
    node.broadcast("alive?").unwrap();
    assert_eq!(next_data(&mut alive, 5).await.into_text().unwrap().as_str(), "alive?");
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_handshake_times_out() {
    let node =
        start(ringcast::Config { handshake_timeout: Duration::from_millis(300), ..config() });
    let mut raw = Raw::connect(node.local_addr());
    use std::io::Write;
    raw.stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = std::time::Instant::now();
    assert!(raw.sees_eof(), "an incomplete upgrade request is cut off");
    assert!(t.elapsed() < Duration::from_secs(5));
    still_serving(&node).await;
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_maximum_get_503() {
    let node = start(ringcast::Config { connections_max: 3, ..config() });
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(node.local_addr()).await);
    }
    let mut raw = Raw::connect(node.local_addr());
    let head = raw.request(UPGRADE.as_bytes());
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    wait_until(5, "refusal counted", || node.metrics().connections_refused_full == 1);
    drop(held.pop());
    wait_until(5, "slot freed", || node.metrics().connections_open == 2);
    let _again = connect(node.local_addr()).await;
    node.shutdown();
    node.join().unwrap();
}

/// Regression (Autobahn 9.x): the close reply must go out even when a big echo still fills the
/// outbox past its budget; it is not a slow consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reply_is_sent_behind_a_big_queued_echo() {
    let node = start(ringcast::Config {
        on_message: ringcast::OnMessage::Relay,
        outbox_bytes_max: 4 * 1024,
        message_bytes_max: 32 << 20,
        shards: 1,
        ..config()
    });
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&node.local_addr().into()).unwrap();
    let mut raw = Raw::from_stream(sock.into());
    assert!(raw.request(UPGRADE.as_bytes()).starts_with("HTTP/1.1 101"));
    // Larger than any kernel send buffer, so the echo is still queued when the close arrives.
    let big = vec![0x5a; 16 << 20];
    raw.send_frame(0x82, &big, true);
    std::thread::sleep(Duration::from_millis(200));
    raw.send_frame(0x88, &1000u16.to_be_bytes(), true);
    let echo = raw.read_frame().expect("echo");
    assert!(echo.0 == 0x2 && echo.1 == big, "the echo arrives whole");
    assert_eq!(raw.expect_close(), 1000, "then the close reply");
    assert!(raw.sees_eof());
    assert_eq!(node.metrics().slow_consumer_disconnects, 0);
    node.shutdown();
    node.join().unwrap();
}

/// Regression (Autobahn 3.2): a valid message and a violation in one read: the echo of the
/// valid message is delivered before the close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_a_violation_are_still_delivered() {
    let node =
        start(ringcast::Config { on_message: ringcast::OnMessage::Relay, shards: 1, ..config() });
    let mut raw = Raw::upgrade(node.local_addr());
    // Two frames in one write: a good text message, then one with a reserved bit.
    let mut both = frame(0x81, b"Hello, world!", true);
    both.extend(frame(0xc1, b"bad", true));
    std::io::Write::write_all(&mut raw.stream, &both).unwrap();
    assert_eq!(raw.read_frame(), Some((0x1, b"Hello, world!".to_vec())));
    assert_eq!(raw.expect_close(), 1002);
    node.shutdown();
    node.join().unwrap();
}
