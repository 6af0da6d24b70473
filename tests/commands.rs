//! The client command protocol over real sockets (`--on-message commands`): seed 004 unchanged,
//! every command, errors as frames (never a disconnect), permissions, group caps, rate limits,
//! cross-shard group sends with exclusions and de-duplication, and id reuse safety.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use ringcast::config::{GroupPublishPolicy, JoinPolicy, Permissions};
use ringcast::{Config, ConnId, OnMessage};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn commands(perms: Permissions) -> Config {
    Config { on_message: OnMessage::Commands, permissions: perms, ..config() }
}

/// A connected client that has read its welcome frame.
struct Client {
    ws: Ws,
    id: String,
    shard: u64,
}

async fn client(addr: std::net::SocketAddr) -> Client {
    let mut ws = connect(addr).await;
    let w = json(&mut ws).await;
    assert_eq!(w["type"], "welcome", "{w}");
    let id = w["client_id"].as_str().unwrap().to_owned();
    let shard = w["worker_id"].as_u64().unwrap();
    assert_eq!(id.len(), 28);
    Client { ws, id, shard }
}

/// Clients until both shards have at least `per_shard` of them.
async fn clients_on_both_shards(addr: std::net::SocketAddr, per_shard: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..200 {
        out.push(client(addr).await);
        let on = |s| out.iter().filter(|c| c.shard == s).count();
        if on(0) >= per_shard && on(1) >= per_shard {
            out.sort_by_key(|c| c.shard);
            return out;
        }
    }
    panic!("connections did not spread over both shards");
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(WsMessage::text(text)).await.unwrap();
}

async fn text(ws: &mut Ws) -> String {
    match next_data(ws, 5).await {
        WsMessage::Text(t) => t.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn json(ws: &mut Ws) -> Value {
    serde_json::from_str(&text(ws).await).unwrap()
}

async fn silent(ws: &mut Ws) {
    let r = tokio::time::timeout(Duration::from_millis(300), next_data(ws, 1)).await;
    assert!(r.is_err(), "unexpected frame: {r:?}");
}

/// Round trip through the server so earlier commands of this connection are applied.
async fn sync(ws: &mut Ws) {
    send(ws, r#"{"cmd":"ping","id":"sync"}"#).await;
    let v = json(ws).await;
    assert_eq!(v, serde_json::json!({"type":"pong","id":"sync"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_works_unchanged_across_shards() {
    let node = start(commands(Permissions::demo()));
    let mut cs = clients_on_both_shards(node.local_addr(), 2).await;
    let (a, rest) = cs.split_first_mut().unwrap();
    let b = rest.last_mut().unwrap();
    assert_ne!(a.shard, b.shard);
    // Seed 004's exact strings, spaces included.
    send(&mut a.ws, r#"{"cmd":"add_group", "group_id":"123"}"#).await;
    send(&mut b.ws, r#"{"cmd":"add_group", "group_id":"123"}"#).await;
    sync(&mut a.ws).await;
    sync(&mut b.ws).await;
    send(&mut a.ws, r#"{"cmd":"send_to_group", "group_id":"123", "message":"C'est le message"}"#)
        .await;
    assert_eq!(text(&mut a.ws).await, "C'est le message");
    assert_eq!(text(&mut b.ws).await, "C'est le message");
    for c in rest.iter_mut().rev().skip(1) {
        silent(&mut c.ws).await;
    }
    let m = node.metrics();
    assert_eq!(m.deliveries, 2);
    assert_eq!(m.commands_rejected, 0);
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_and_its_reply() {
    let node = start(commands(Permissions::demo()));
    let mut cs = clients_on_both_shards(node.local_addr(), 2).await;
    let n = cs.len();
    let ids: Vec<String> = cs.iter().map(|c| c.id.clone()).collect();
    // With an id, success is acknowledged.
    send(&mut cs[0].ws, r#"{"cmd":"add_group","group_id":"g","id":1}"#).await;
    assert_eq!(
        json(&mut cs[0].ws).await,
        serde_json::json!({"type":"ok","cmd":"add_group","id":1})
    );
    send(&mut cs[n - 1].ws, r#"{"cmd":"add_group","group_id":"g","id":"x"}"#).await;
    assert_eq!(json(&mut cs[n - 1].ws).await["id"], "x");
    // send_to_client, to a client on the other shard.
    let to = &ids[n - 1];
    send(
        &mut cs[0].ws,
        &format!(r#"{{"cmd":"send_to_client","client_id":"{to}","message":"psst"}}"#),
    )
    .await;
    assert_eq!(text(&mut cs[n - 1].ws).await, "psst");
    // send_to_all with an exclusion: everyone but the excluded one.
    let ex = &ids[1];
    send(&mut cs[0].ws, &format!(r#"{{"cmd":"send_to_all","message":"all","exclude":["{ex}"]}}"#))
        .await;
    for (i, c) in cs.iter_mut().enumerate() {
        if i == 1 {
            silent(&mut c.ws).await;
        } else {
            assert_eq!(text(&mut c.ws).await, "all");
        }
    }
    // A non-string message is delivered as its JSON text.
    send(&mut cs[0].ws, r#"{"cmd":"send_to_group","group_id":"g","message":{"k":[1,2]}}"#).await;
    assert_eq!(text(&mut cs[0].ws).await, r#"{"k":[1,2]}"#);
    assert_eq!(text(&mut cs[n - 1].ws).await, r#"{"k":[1,2]}"#);
    // leave_group stops delivery.
    send(&mut cs[n - 1].ws, r#"{"cmd":"leave_group","group_id":"g"}"#).await;
    sync(&mut cs[n - 1].ws).await;
    send(&mut cs[0].ws, r#"{"cmd":"send_to_group","group_id":"g","message":"after"}"#).await;
    assert_eq!(text(&mut cs[0].ws).await, "after");
    silent(&mut cs[n - 1].ws).await;
    // ping without id.
    send(&mut cs[0].ws, r#"{"cmd":"ping"}"#).await;
    assert_eq!(json(&mut cs[0].ws).await, serde_json::json!({"type":"pong"}));
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_two_target_groups_receives_once_on_every_shard() {
    let node = start(commands(Permissions::demo()));
    let mut cs = clients_on_both_shards(node.local_addr(), 2).await;
    let n = cs.len();
    // First and last (different shards) join both groups; the second joins only g2.
    for i in [0, n - 1] {
        send(&mut cs[i].ws, r#"{"cmd":"add_group","group_id":"g1"}"#).await;
        send(&mut cs[i].ws, r#"{"cmd":"add_group","group_id":"g2"}"#).await;
        sync(&mut cs[i].ws).await;
    }
    send(&mut cs[1].ws, r#"{"cmd":"add_group","group_id":"g2"}"#).await;
    sync(&mut cs[1].ws).await;
    let ex = cs[1].id.clone();
    send(&mut cs[0].ws, r#"{"cmd":"send_to_group","group_ids":["g1","g2"],"message":"once"}"#)
        .await;
    for i in [0, 1, n - 1] {
        assert_eq!(text(&mut cs[i].ws).await, "once");
        silent(&mut cs[i].ws).await;
    }
    // Exclusion on a group send.
    let cmd =
        format!(r#"{{"cmd":"send_to_group","group_id":"g2","message":"x","exclude":["{ex}"]}}"#);
    send(&mut cs[0].ws, &cmd).await;
    assert_eq!(text(&mut cs[0].ws).await, "x");
    assert_eq!(text(&mut cs[n - 1].ws).await, "x");
    silent(&mut cs[1].ws).await;
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_error_frames_and_the_connection_stays() {
    let node = start(commands(Permissions::demo()));
    let mut c = client(node.local_addr()).await;
    let cases = [
        ("not json", "malformed JSON"),
        (r#"{"cmd":"fly"}"#, "unknown command"),
        (r#"{"group_id":"g"}"#, "missing field \"cmd\""),
        (r#"{"cmd":"add_group"}"#, "missing field \"group_id\""),
        (r#"{"cmd":"send_to_client","client_id":"nope","message":"m"}"#, "bad client id"),
    ];
    for (input, reason) in cases {
        send(&mut c.ws, input).await;
        let v = json(&mut c.ws).await;
        assert_eq!(v["type"], "error", "{input}: {v}");
        assert!(v["reason"].as_str().unwrap().contains(reason), "{input}: {v}");
    }
    let long = "x".repeat(200);
    send(&mut c.ws, &format!(r#"{{"cmd":"add_group","group_id":"{long}","id":9}}"#)).await;
    let v = json(&mut c.ws).await;
    assert_eq!((v["type"].as_str(), v["id"].as_i64()), (Some("error"), Some(9)), "{v}");
    c.ws.send(WsMessage::binary(vec![1u8, 2, 3])).await.unwrap();
    assert!(json(&mut c.ws).await["reason"].as_str().unwrap().contains("JSON text"));
    sync(&mut c.ws).await;
    assert_eq!(node.metrics().commands_rejected, 7);
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_permissions_are_safe() {
    let node = start(commands(Permissions::default()));
    let mut c = client(node.local_addr()).await;
    for (cmd, reason) in [
        (r#"{"cmd":"add_group","group_id":"g"}"#, "joining groups is not allowed"),
        (r#"{"cmd":"send_to_group","group_id":"g","message":"m"}"#, "not allowed"),
        (r#"{"cmd":"send_to_all","message":"m"}"#, "not allowed"),
    ] {
        send(&mut c.ws, cmd).await;
        let v = json(&mut c.ws).await;
        assert_eq!(v["type"], "error");
        assert!(v["reason"].as_str().unwrap().contains(reason), "{v}");
    }
    assert_eq!(node.metrics().deliveries, 0);
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_patterns_joined_only_publishing_and_group_caps() {
    let perms = Permissions {
        join: JoinPolicy::Matching(vec!["public:*".into()]),
        publish_groups: GroupPublishPolicy::Joined,
        groups_per_connection_max: 2,
        ..Permissions::default()
    };
    let node = start(commands(perms));
    let mut c = client(node.local_addr()).await;
    send(&mut c.ws, r#"{"cmd":"add_group","group_id":"private"}"#).await;
    assert!(json(&mut c.ws).await["reason"].as_str().unwrap().contains("not open"));
    send(&mut c.ws, r#"{"cmd":"add_group","group_id":"public:a"}"#).await;
    send(&mut c.ws, r#"{"cmd":"add_group","group_id":"public:b"}"#).await;
    send(&mut c.ws, r#"{"cmd":"add_group","group_id":"public:c"}"#).await;
    assert!(json(&mut c.ws).await["reason"].as_str().unwrap().contains("too many groups"));
    send(&mut c.ws, r#"{"cmd":"send_to_group","group_id":"public:c","message":"m"}"#).await;
    assert!(json(&mut c.ws).await["reason"].as_str().unwrap().contains("not a member"));
    send(&mut c.ws, r#"{"cmd":"send_to_group","group_id":"public:a","message":"mine"}"#).await;
    assert_eq!(text(&mut c.ws).await, "mine");
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_floods_are_limited_then_closed_with_1008() {
    let node = start(Config {
        commands_per_sec: 20,
        commands_burst: 20,
        commands_flood_close_after: Duration::from_millis(600),
        ..commands(Permissions::demo())
    });
    let mut c = client(node.local_addr()).await;
    // A burst of 60 pings: 20 answered, the rest dropped with one rate-limit error.
    for _ in 0..60 {
        send(&mut c.ws, r#"{"cmd":"ping"}"#).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), next_data(&mut c.ws, 1)).await {
            Ok(WsMessage::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert!(v["reason"].as_str().unwrap().contains("rate limited"));
                        limited += 1
                    }
                    _ => panic!("{v}"),
                }
            }
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    assert!((20..=22).contains(&pongs), "pongs {pongs}");
    assert_eq!(limited, 1, "one notice per second");
    assert!(node.metrics().commands_rate_limited >= 38);
    // Keep flooding: closed with 1008 once the flood outlasts 600 ms.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let code = loop {
        assert!(std::time::Instant::now() < deadline, "never closed");
        if c.ws.send(WsMessage::text(r#"{"cmd":"ping"}"#)).await.is_err() {
            break None;
        }
        match tokio::time::timeout(Duration::from_millis(20), next_data(&mut c.ws, 1)).await {
            Ok(WsMessage::Close(Some(f))) => break Some(u16::from(f.code)),
            _ => continue,
        }
    };
    assert_eq!(code, Some(1008));
    assert_eq!(node.metrics().command_flood_closes, 1);
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_client_id_never_reaches_the_slot_reuser() {
    let node = start(Config { shards: 1, ..commands(Permissions::demo()) });
    let first = client(node.local_addr()).await;
    let stale = first.id.clone();
    drop(first);
    wait_until(5, "first connection gone", || node.metrics().connections_open == 0);
    // The next connection reuses the slot with a new generation.
    let mut second = client(node.local_addr()).await;
    let (a, b): (ConnId, ConnId) = (stale.parse().unwrap(), second.id.parse().unwrap());
    assert_eq!(a.slot(), b.slot(), "slot reused");
    assert_ne!(a.generation(), b.generation());
    node.send_to(a, "for the old one").unwrap();
    silent(&mut second.ws).await;
    node.send_to(b, "for the new one").unwrap();
    assert_eq!(text(&mut second.ws).await, "for the new one");
    node.shutdown();
    node.join().unwrap();
}
