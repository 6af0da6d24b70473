//! Idempotent publish across a cluster, end to end: a real redis-server, two real ringcast
//! nodes (`--cluster`), real WebSocket and HTTP clients. Positioned history messages appended
//! in Redis by the history's script reach members on every node. With history rules, a
//! clustered node keeps the history in Redis: a client recovers on another node, while
//! publishes continue, with no gap and no duplicate; overflow and a Redis restarted empty
//! answer `recovered: false`; commands and the HTTP API read and write the shared history.

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
    wait_numsub(&redis, "ringcast:g:room", 2).await;
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
    let (ws, ok) = join_with(node, group, None).await;
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
    wait_numsub(&redis, "ringcast:g:room", 2).await;
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

const RULES: [&str; 4] = ["--history-rule", "room*=1000,10m", "--history-rule", "tiny*=5,10m"];

/// A client of `node` that joined `group` with the envelope, `since` a position if given;
/// returns the join reply too.
async fn join_with(node: &Node, group: &str, since: Option<(&str, u64)>) -> (Ws, Value) {
    let mut ws = connect(node.ws).await;
    let welcome = next_data(&mut ws, 10).await;
    assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");
    let mut join = json!({"cmd": "add_group", "group_id": group, "envelope": true, "id": 1});
    if let Some((epoch, offset)) = since {
        join["since"] = json!({"epoch": epoch, "offset": offset});
    }
    ws.send(WsMessage::text(join.to_string())).await.unwrap();
    let ok: Value = serde_json::from_str(&text(&mut ws).await).unwrap();
    (ws, ok)
}

async fn publish_to(node: &Node, group: &str, data: &str) -> Value {
    let r = http()
        .post(node.url("/api/publish"))
        .json(&json!({"data": data, "to": {"groups": [group]}}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

/// The next enveloped message: its data and offset in `group`.
async fn positioned(ws: &mut Ws, group: &str) -> (String, u64, String) {
    let v: Value = serde_json::from_str(&text(ws).await).unwrap();
    assert_eq!(v["type"], "message", "{v}");
    let p = &v["positions"][group];
    (
        v["data"].as_str().unwrap().to_owned(),
        p["offset"].as_u64().unwrap_or_else(|| panic!("no position: {v}")),
        p["epoch"].as_str().unwrap().to_owned(),
    )
}

async fn wait_numsub(redis: &Redis, channel: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.numsub(channel) < n {
        assert!(Instant::now() < deadline, "{n} nodes subscribed to {channel}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_on_another_node_while_publishes_continue() {
    let redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &RULES));
    let b = Node::start(BIN, &node_args(&redis.url(), &RULES));
    let (mut client, ok) = join_with(&a, "room", None).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let epoch = ok["epoch"].as_str().expect("the join gives the group's epoch").to_owned();
    assert_eq!(ok["offset"], 0, "a new group: {ok}");
    let (mut watcher, _) = join_with(&b, "room", None).await;
    wait_numsub(&redis, "ringcast:g:room", 2).await;

    // Publishes alternate between the two nodes, continuing through the reconnect.
    const TOTAL: u64 = 300;
    let (pa, pb) = (a.url("/api/publish"), b.url("/api/publish"));
    let publisher = tokio::spawn(async move {
        let mut offsets = Vec::new();
        for i in 1..=TOTAL {
            let url = if i % 2 == 0 { &pa } else { &pb };
            let r = http()
                .post(url)
                .json(&json!({"data": format!("m{i}"), "to": {"groups": ["room"]}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            offsets.push(v["positions"]["room"]["offset"].as_u64().expect("a position"));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        offsets
    });
    // The client sees the first messages, in order, then loses its connection.
    let mut last = 0;
    while last < 60 {
        let (data, offset, e) = positioned(&mut client, "room").await;
        assert_eq!(
            (data, offset, e.as_str()),
            (format!("m{}", last + 1), last + 1, epoch.as_str())
        );
        last = offset;
    }
    drop(client);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // It reconnects to the other node with its last position.
    let (mut client, ok) = join_with(&b, "room", Some((&epoch, last))).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    let replayed = ok["replayed"].as_u64().unwrap();
    assert!(replayed > 0, "messages were published while it was away: {ok}");
    // Exactly every message after its position, in order, replay and live with no seam.
    while last < TOTAL {
        let (data, offset, e) = positioned(&mut client, "room").await;
        assert_eq!(
            (data, offset, e.as_str()),
            (format!("m{}", last + 1), last + 1, epoch.as_str()),
            "no gap and no duplicate"
        );
        last = offset;
    }
    let offsets = publisher.await.unwrap();
    assert_eq!(offsets, (1..=TOTAL).collect::<Vec<_>>(), "each publish's reply has its position");
    // The watcher on the other node saw the same sequence.
    for i in 1..=TOTAL {
        let (data, offset, _) = positioned(&mut watcher, "room").await;
        assert_eq!((data, offset), (format!("m{i}"), i));
    }
    // Nothing more: the next message is the marker.
    publish_to(&a, "room", "marker").await;
    assert_eq!(positioned(&mut client, "room").await.0, "marker");
    let m: Value = http().get(b.url("/api/stats")).send().await.unwrap().json().await.unwrap();
    let c = &m["cluster"]["backplane"]["counters"];
    assert!(c["history_reads"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(c["history_append_failed"], 0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_and_a_lost_history_answer_recovered_false() {
    let mut redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &RULES));
    let b = Node::start(BIN, &node_args(&redis.url(), &RULES));
    let (mut member, ok) = join_with(&a, "tiny", None).await;
    let epoch = ok["epoch"].as_str().unwrap().to_owned();
    wait_numsub(&redis, "ringcast:g:tiny", 1).await;
    for i in 1..=12 {
        publish_to(&b, "tiny", &format!("t{i}")).await;
    }
    for i in 1..=12 {
        assert_eq!(positioned(&mut member, "tiny").await.1, i);
    }
    // The history keeps 5: a client that saw only the first message cannot recover.
    let (_, ok) = join_with(&b, "tiny", Some((&epoch, 1))).await;
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_eq!(ok["reason"], "position older than the history keeps", "{ok}");
    // One that saw the 8th can: it gets 9..12.
    let (mut late, ok) = join_with(&b, "tiny", Some((&epoch, 8))).await;
    assert_eq!((ok["recovered"].as_bool(), ok["replayed"].as_u64()), (Some(true), Some(4)), "{ok}");
    for i in 9..=12 {
        assert_eq!(positioned(&mut late, "tiny").await, (format!("t{i}"), i, epoch.clone()));
    }
    // Redis down: a publish to a group with history is refused (it would reach nobody), and a
    // recovering client is told its position could not be recovered.
    redis.stop();
    let r = http()
        .post(b.url("/api/publish"))
        .json(&json!({"data": "lost", "to": {"groups": ["tiny"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    let (_, ok) = join_with(&a, "tiny", Some((&epoch, 12))).await;
    assert_eq!(
        (ok["recovered"].as_bool(), ok["reason"].as_str()),
        (Some(false), Some("history store unavailable")),
        "{ok}"
    );
    // Redis restarts empty: the history's continuity is lost, a new epoch begins.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (_, ok) = loop {
        let (ws, ok) = join_with(&a, "tiny", Some((&epoch, 12))).await;
        if ok["reason"] != "history store unavailable" || Instant::now() > deadline {
            break (ws, ok);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_eq!(ok["reason"], "epoch changed", "{ok}");
    assert_ne!(ok["epoch"], epoch.as_str(), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_the_http_api_read_and_write_the_shared_history() {
    let redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &RULES));
    let b = Node::start(BIN, &node_args(&redis.url(), &RULES));
    let (mut sender, ok) = join_with(&a, "room", None).await;
    let epoch = ok["epoch"].as_str().unwrap().to_owned();
    let (mut other, _) = join_with(&b, "room", None).await;
    wait_numsub(&redis, "ringcast:g:room", 2).await;
    // A client's send_to_group is answered with the position Redis assigned.
    let cmd = json!({"cmd": "send_to_group", "group_id": "room", "message": "hello", "id": 7});
    sender.send(WsMessage::text(cmd.to_string())).await.unwrap();
    let mut got_reply = false;
    let mut got_message = false;
    while !(got_reply && got_message) {
        let v: Value = serde_json::from_str(&text(&mut sender).await).unwrap();
        match v["type"].as_str() {
            Some("ok") => {
                assert_eq!((v["id"].as_u64(), v["cmd"].as_str()), (Some(7), Some("send_to_group")));
                assert_eq!(v["positions"]["room"]["offset"], 1, "{v}");
                got_reply = true;
            }
            Some("message") => {
                assert_eq!(
                    (v["data"].as_str(), v["positions"]["room"]["offset"].as_u64()),
                    (Some("hello"), Some(1))
                );
                got_message = true;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(positioned(&mut other, "room").await, ("hello".to_owned(), 1, epoch.clone()));
    // An exclude list holds across nodes: the excluded client on the other node is skipped.
    let mut excluded = connect(b.ws).await;
    let welcome: Value =
        serde_json::from_str(next_data(&mut excluded, 10).await.to_text().unwrap()).unwrap();
    let excluded_id = welcome["client_id"].as_str().unwrap().to_owned();
    let join = json!({"cmd": "add_group", "group_id": "room", "envelope": true, "id": 1});
    excluded.send(WsMessage::text(join.to_string())).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text(&mut excluded).await).unwrap()["type"], "ok");
    let r = http()
        .post(a.url("/api/publish"))
        .json(&json!({"data": "not for you", "to": {"groups": ["room"]}, "exclude": [excluded_id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    publish_to(&b, "room", "two").await;
    assert_eq!(positioned(&mut other, "room").await.0, "not for you");
    assert_eq!(positioned(&mut other, "room").await.0, "two");
    assert_eq!(positioned(&mut sender, "room").await.0, "not for you");
    assert_eq!(positioned(&mut sender, "room").await.0, "two");
    assert_eq!(positioned(&mut excluded, "room").await, ("two".to_owned(), 3, epoch.clone()));
    // The history command on the other node, and the HTTP API on both, read Redis.
    let h = json!({"cmd": "history", "group_id": "room", "limit": 10, "id": 3});
    other.send(WsMessage::text(h.to_string())).await.unwrap();
    let v: Value = serde_json::from_str(&text(&mut other).await).unwrap();
    assert_eq!(v["type"], "history", "{v}");
    let data: Vec<&str> =
        v["messages"].as_array().unwrap().iter().map(|m| m["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["hello", "not for you", "two"], "{v}");
    for node in [&a, &b] {
        let r = http().get(node.url("/api/groups/room/history?limit=1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (v["epoch"].as_str(), v["offset"].as_u64()),
            (Some(epoch.as_str()), Some(3)),
            "{v}"
        );
        assert_eq!(v["messages"][0]["data"], "two", "{v}");
    }
    let r = http().get(a.url("/api/groups/plain/history")).send().await.unwrap();
    assert_eq!(r.status(), 404, "a group without a rule keeps no history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_client_recovers_on_another_node() {
    // Sharded pub/sub: each group's stream, meta and channel share one hash slot, so the
    // append script runs on the Redis shard that owns the group and SPUBLISHes there.
    let rc = RedisCluster::start();
    let args = || {
        let mut v = node_args(&rc.urls(), &["--cluster-bus", "sharded"]);
        v.extend(RULES.iter().map(|s| s.to_string()));
        v
    };
    let a = Node::start(BIN, &args());
    let b = Node::start(BIN, &args());
    // Several groups, so they land on different Redis shards.
    let groups = ["room-a", "room-b", "room-c", "room-d"];
    let mut members = Vec::new();
    for g in groups {
        let (ws, ok) = join_with(&a, g, None).await;
        members.push((ws, ok["epoch"].as_str().unwrap().to_owned()));
    }
    // No wait needed: a join to a group with history is answered only once Redis confirmed
    // the node's subscription to the group's channel.
    for i in 1..=6 {
        for g in groups {
            let v = publish_to(&b, g, &format!("{g}-{i}")).await;
            assert_eq!(v["positions"][g]["offset"], i, "{v}");
        }
    }
    for ((ws, _), g) in members.iter_mut().zip(groups) {
        for i in 1..=6 {
            assert_eq!(positioned(ws, g).await.0, format!("{g}-{i}"));
        }
    }
    // Each client saw 2 of them, then reconnects to the other node.
    for ((ws, epoch), g) in members.into_iter().zip(groups) {
        drop(ws);
        let (mut again, ok) = join_with(&b, g, Some((&epoch, 2))).await;
        assert_eq!(
            (ok["recovered"].as_bool(), ok["replayed"].as_u64()),
            (Some(true), Some(4)),
            "{ok}"
        );
        for i in 3..=6 {
            assert_eq!(positioned(&mut again, g).await, (format!("{g}-{i}"), i, epoch.clone()));
        }
        publish_to(&a, g, "live").await;
        assert_eq!(positioned(&mut again, g).await.0, "live");
    }
}
