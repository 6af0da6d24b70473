//! Fan-out across shards: every broadcast reaches every client exactly once, in publish order,
//! and is encoded once per node whatever the number of recipients.

mod common;

use std::time::Duration;

use common::*;
use ringcast::{Message, OnMessage};

const CLIENTS: usize = 200;
const MESSAGES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broadcast_reaches_every_client_once_in_order() {
    let node = start(config());
    let addr = node.local_addr();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connect(addr).await);
    }
    wait_until(10, "all clients registered", || node.metrics().connections_open == CLIENTS as u64);
    let per_shard: Vec<u64> = node.shard_metrics().iter().map(|m| m.connections_open).collect();
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "clients must spread over both shards: {per_shard:?}"
    );

    for i in 0..MESSAGES {
        node.broadcast(format!("m{i}")).unwrap();
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                for i in 0..MESSAGES {
                    let msg = next_data(&mut ws, 10).await;
                    assert_eq!(msg.into_text().unwrap().as_str(), format!("m{i}"));
                }
                // Exactly once: nothing more arrives.
                let extra =
                    tokio::time::timeout(Duration::from_millis(200), next_data(&mut ws, 1)).await;
                assert!(extra.is_err(), "duplicate delivery: {extra:?}");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let m = node.metrics();
    assert_eq!(m.frames_encoded, MESSAGES as u64, "each broadcast is encoded once per node");
    assert_eq!(m.deliveries, (MESSAGES * CLIENTS) as u64);
    assert_eq!(m.mesh_dropped, 0);
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reaches_clients_on_every_shard() {
    let node = start(ringcast::Config { on_message: OnMessage::Relay, ..config() });
    let addr = node.local_addr();
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(connect(addr).await);
    }
    wait_until(10, "clients registered", || node.metrics().connections_open == 40);
    use futures_util::SinkExt;
    for i in 0..20 {
        clients[0].send(format!("chat {i}").into()).await.unwrap();
    }
    clients[1]
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    for ws in clients.iter_mut() {
        let mut texts = Vec::new();
        let mut binary = None;
        while texts.len() < 20 || binary.is_none() {
            match next_data(ws, 10).await {
                tokio_tungstenite::tungstenite::Message::Text(t) => texts.push(t.to_string()),
                tokio_tungstenite::tungstenite::Message::Binary(b) => binary = Some(b.to_vec()),
                other => panic!("unexpected {other:?}"),
            }
        }
        let expected: Vec<String> = (0..20).map(|i| format!("chat {i}")).collect();
        assert_eq!(texts, expected, "one sender's messages arrive in order");
        assert_eq!(binary.unwrap(), vec![1, 2, 3], "binary stays binary");
    }
    let m = node.metrics();
    assert_eq!(m.messages_received, 21);
    assert_eq!(m.frames_encoded, 21, "one encode per relayed message, not per recipient");
    node.shutdown();
    node.join().unwrap();
}

/// A client that read its 101 gets every message published after it: the connection is
/// registered before its 101 is queued (a publish racing the 101's write once missed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_what_is_published_right_after_its_101() {
    use futures_util::SinkExt;
    let node = start(ringcast::Config { on_message: OnMessage::Relay, ..config() });
    let addr = node.local_addr();
    let mut sender = connect(addr).await;
    wait_until(10, "sender registered", || node.metrics().connections_open == 1);
    let mut clients = Vec::new();
    for i in 0..100 {
        // No wait between the 101 and the publish.
        let mut ws = connect(addr).await;
        sender.send(format!("after {i}").into()).await.unwrap();
        assert_eq!(
            next_data(&mut ws, 10).await,
            format!("after {i}").as_str().into(),
            "client {i}"
        );
        clients.push(ws);
    }
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_broadcasts_the_server_time() {
    let node =
        start(ringcast::Config { tick_interval: Some(Duration::from_millis(200)), ..config() });
    let mut a = connect(node.local_addr()).await;
    let mut b = connect(node.local_addr()).await;
    for ws in [&mut a, &mut b] {
        for _ in 0..2 {
            let t = next_data(ws, 5).await.into_text().unwrap();
            let secs: u64 = t.parse().expect("server time in seconds");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(now.abs_diff(secs) <= 2, "{secs} vs {now}");
        }
    }
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_one_connection_by_id() {
    use std::sync::{Arc, Mutex};
    let ids = Arc::new(Mutex::new(Vec::new()));
    let seen = ids.clone();
    let node = ringcast::Server::builder()
        .config(config())
        .on_connect(move |ctx, id, _| {
            seen.lock().unwrap().push(id);
            ctx.send(id, Message::text(format!("your id is {id}")));
        })
        .start()
        .unwrap();
    let mut a = connect(node.local_addr()).await;
    let mut b = connect(node.local_addr()).await;
    let a_hello = next_data(&mut a, 5).await.into_text().unwrap().to_string();
    let _ = next_data(&mut b, 5).await;
    let a_id: ringcast::ConnId = a_hello.rsplit(' ').next().unwrap().parse().unwrap();
    node.send_to(a_id, "only for a").unwrap();
    assert_eq!(next_data(&mut a, 5).await.into_text().unwrap().as_str(), "only for a");
    assert!(tokio::time::timeout(Duration::from_millis(300), next_data(&mut b, 1)).await.is_err());
    node.shutdown();
    node.join().unwrap();
}
