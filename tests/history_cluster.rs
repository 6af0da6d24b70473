//! Idempotent publish across a cluster, end to end: a real redis-server, two real ringcast
//! nodes (`--cluster`), real WebSocket and HTTP clients. And the refusal of history rules in a
//! cluster until the Redis history backend is wired in.

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

#[test]
fn history_rules_and_a_cluster_are_refused_together_for_now() {
    let redis = Redis::start();
    let err = Node::try_start(BIN, &node_args(&redis.url(), &["--history-rule", "chat:*=10,1m"]))
        .err()
        .expect("the node must refuse to start");
    assert!(err.contains("history.rules") && err.contains("not supported together"), "{err}");
}
