//! Idempotent publish across a cluster, end to end: a real redis-server, two real ringcast
//! nodes (`--cluster`), real WebSocket and HTTP clients. Positioned history messages appended
//! in Redis by the history's script reach members on every node. And the refusal of history
//! rules in a cluster until the Redis history backend is wired in completely.

mod cluster_util;
mod common;

use std::time::{Duration, Instant};

use cluster_util::*;
use common::{connect, next_data, Ws};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const BIN: &str = env!("CARGO_BIN_EXE_ringcast");

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

/// A client of `node` that joined `group` (its join acknowledged).
async fn member(node: &Node, group: &str) -> Ws {
    let mut ws = connect(node.ws).await;
    let welcome = next_data(&mut ws, 10).await;
    assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");
    let join = json!({"cmd": "add_group", "group_id": group, "id": 1});
    ws.send(WsMessage::text(join.to_string())).await.unwrap();
    let ok: Value = serde_json::from_str(next_data(&mut ws, 10).await.to_text().unwrap()).unwrap();
    assert_eq!(ok["type"], "ok", "{ok}");
    ws
}

async fn publish(node: &Node, data: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = http()
        .post(node.url("/api/publish"))
        .json(&json!({"data": data, "to": {"groups": ["room"]}}));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn text(ws: &mut Ws) -> String {
    next_data(ws, 10).await.to_text().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_sent_to_two_nodes_of_a_cluster_delivers_once() {
    let redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &[]));
    let b = Node::start(BIN, &node_args(&redis.url(), &[]));
    let mut on_a = member(&a, "room").await;
    let mut on_b = member(&b, "room").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.numsub("ringcast:g:room") < 2 {
        assert!(Instant::now() < deadline, "both nodes subscribed to the group");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, first) = publish(&a, "paid", Some("order-9")).await;
    assert_eq!(s, 200, "{first}");
    assert!(first.get("duplicate").is_none(), "{first}");
    assert_eq!(text(&mut on_a).await, "paid");
    assert_eq!(text(&mut on_b).await, "paid", "forwarded to the other node once");
    // The retry reaches the other node: acknowledged with the first answer, not delivered.
    let (s, again) = publish(&b, "paid", Some("order-9")).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["forwarded_to"], first["forwarded_to"], "the first node's answer");
    let (_, third) = publish(&a, "paid", Some("order-9")).await;
    assert_eq!(third["duplicate"], true);
    // Nothing else arrived: the next message on both nodes is the marker.
    publish(&b, "marker", None).await;
    assert_eq!(text(&mut on_a).await, "marker");
    assert_eq!(text(&mut on_b).await, "marker");
    let m: Value = http().get(b.url("/api/metrics")).send().await.unwrap().json().await.unwrap();
    assert_eq!(m["idempotency_duplicates"], 1, "{m}");
}

/// A client of `node` that joined `group` with the envelope (positions).
async fn enveloped_member(node: &Node, group: &str) -> Ws {
    let mut ws = connect(node.ws).await;
    let welcome = next_data(&mut ws, 10).await;
    assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");
    let join = json!({"cmd": "add_group", "group_id": group, "envelope": true, "id": 1});
    ws.send(WsMessage::text(join.to_string())).await.unwrap();
    let ok: Value = serde_json::from_str(next_data(&mut ws, 10).await.to_text().unwrap()).unwrap();
    assert_eq!(ok["type"], "ok", "{ok}");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positioned_messages_appended_in_redis_reach_members_on_every_node_in_order() {
    use ringcast::history::redis::{PublishOn, RedisHistory};
    use ringcast::history::StreamLimits;
    let redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &[]));
    let b = Node::start(BIN, &node_args(&redis.url(), &[]));
    let mut on_a = enveloped_member(&a, "room").await;
    let mut on_b = enveloped_member(&b, "room").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.numsub("ringcast:g:room") < 2 {
        assert!(Instant::now() < deadline, "both nodes subscribed to the group");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The history's append script, as a clustered node will run it: it assigns the position
    // and publishes the positioned message on the group's channel in one step.
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let history = RedisHistory::new(
        conn,
        "ringcast",
        PublishOn::Classic,
        bytes::Bytes::from_static(ringcast::cluster::wire::POSITIONED_PREFIX),
        Duration::from_secs(60),
    );
    let limits = StreamLimits { messages_max: 100, age_max: Duration::from_secs(60) };
    let mut positions = Vec::new();
    for i in 1..=20 {
        let m = ringcast::Message::text(format!("m{i}"));
        positions.push(history.append("room", limits, &m).await.unwrap());
    }
    // A malformed message on the channel is dropped and counted, not delivered.
    let mut c = redis.conn();
    let _: i64 =
        redis::cmd("PUBLISH").arg("ringcast:g:room").arg(b"\0hzz:1:tx").query(&mut c).unwrap();
    for ws in [&mut on_a, &mut on_b] {
        for (i, p) in positions.iter().enumerate() {
            let v: Value = serde_json::from_str(&text(ws).await).unwrap();
            assert_eq!(v["type"], "message", "{v}");
            assert_eq!(v["data"], format!("m{}", i + 1), "{v}");
            assert_eq!(v["positions"]["room"]["epoch"], p.epoch.to_string(), "{v}");
            assert_eq!(v["positions"]["room"]["offset"], p.offset, "{v}");
        }
    }
    // Nothing else arrived: the next message on both nodes is the marker.
    publish(&a, "marker", None).await;
    for ws in [&mut on_a, &mut on_b] {
        let v: Value = serde_json::from_str(&text(ws).await).unwrap();
        assert_eq!(v["data"], "marker", "{v}");
    }
    for node in [&a, &b] {
        let s: Value =
            http().get(node.url("/api/stats")).send().await.unwrap().json().await.unwrap();
        assert_eq!(s["cluster"]["backplane"]["counters"]["rejected_malformed"], 1, "{s}");
    }
}

#[test]
fn history_rules_and_a_cluster_are_refused_together_for_now() {
    let redis = Redis::start();
    let err = Node::try_start(BIN, &node_args(&redis.url(), &["--history-rule", "chat:*=10,1m"]))
        .err()
        .expect("the node must refuse to start");
    assert!(err.contains("history.rules") && err.contains("not supported together"), "{err}");
}
