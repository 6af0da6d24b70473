//! Clustering end to end: real redis-server processes (one Redis with classic pub/sub, and a
//! three-master Redis Cluster with sharded pub/sub) started on free loopback ports, real
//! ringcast node processes, real WebSocket and HTTP clients. Every process is stopped when
//! its guard drops.

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

async fn get(node: &Node, path: &str) -> Value {
    let r = http().get(node.url(path)).send().await.unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

async fn post(node: &Node, path: &str, body: Value) -> Value {
    let r = http().post(node.url(path)).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "POST {path}: {}", r.status());
    r.json().await.unwrap()
}

async fn publish(node: &Node, data: &str, to: Value, exclude: &[&str]) -> Value {
    post(node, "/api/publish", json!({"data": data, "to": to, "exclude": exclude})).await
}

/// Connect and read the welcome frame: the client id.
async fn client(node: &Node) -> (Ws, String) {
    let mut ws = connect(node.ws).await;
    let welcome: Value = match next_data(&mut ws, 10).await {
        WsMessage::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected the welcome, got {other:?}"),
    };
    (ws, welcome["client_id"].as_str().unwrap().to_owned())
}

async fn command(ws: &mut Ws, cmd: Value) {
    ws.send(WsMessage::text(cmd.to_string())).await.unwrap();
}

async fn expect_text(ws: &mut Ws, want: &str) {
    match next_data(ws, 10).await {
        WsMessage::Text(t) => assert_eq!(t.as_str(), want),
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

/// Wait until `f` holds (polling), or panic.
async fn wait_for(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_numsub(redis: &Redis, channel: &str, n: u64) {
    let what = format!("{n} subscriber(s) on {channel}");
    wait_for(10, &what, async || redis.numsub(channel) == n).await;
}

/// `/readyz`: the status code and the body.
async fn readyz(node: &Node) -> (u16, Value) {
    let r = http().get(node.url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// One sample of `/metrics` (a metric name with its labels, e.g.
/// `ringcast_cluster_messages_dropped_total{reason="publish_failed"}`), if present.
async fn metric(node: &Node, sample: &str) -> Option<f64> {
    let text = http().get(node.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

async fn backplane(node: &Node) -> Value {
    get(node, "/api/stats").await["cluster"]["backplane"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_redis_route_every_kind_of_publish() {
    let redis = Redis::start();
    let nodes: Vec<Node> =
        (0..3).map(|_| Node::start(BIN, &node_args(&redis.url(), &[]))).collect();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (mut a1, a1_id) = client(a).await;
    let (mut a2, _a2_id) = client(a).await;
    let (mut b1, b1_id) = client(b).await;
    let (mut c1, c1_id) = client(c).await;
    for ws in [&mut a1, &mut b1, &mut c1] {
        command(ws, json!({"cmd": "add_group", "group_id": "room"})).await;
    }
    // Interest-based routing: the three nodes with a member subscribe, nobody else.
    wait_numsub(&redis, "ringcast:g:room", 3).await;
    assert_eq!(redis.numsub("ringcast:all"), 3);
    assert_eq!(redis.numsub("ringcast:g:elsewhere"), 0);

    // A group publish entering at A reaches the members on A, B and C.
    let r = publish(a, "g1", json!({"groups": ["room"]}), &[]).await;
    assert_eq!(r["queued"], 1, "the local part of the report: {r}");
    for ws in [&mut a1, &mut b1, &mut c1] {
        expect_text(ws, "g1").await;
    }
    // A broadcast entering at B (seed 003's form) reaches everyone on every node.
    let r = http().get(b.url("/?content=all1")).send().await.unwrap();
    assert!(r.status().is_success());
    for ws in [&mut a1, &mut a2, &mut b1, &mut c1] {
        expect_text(ws, "all1").await;
    }
    // A client-id send from A to a client on C: only C gets it (its node channel).
    let calls_before = redis.command_calls("publish");
    publish(a, "to-c1", json!({"clients": [c1_id]}), &[]).await;
    expect_text(&mut c1, "to-c1").await;
    assert_eq!(redis.command_calls("publish") - calls_before, 1, "one PUBLISH, to C only");
    // Exclusions across nodes: the member on B is excluded.
    publish(a, "g2", json!({"groups": ["room"]}), &[&b1_id]).await;
    expect_text(&mut a1, "g2").await;
    expect_text(&mut c1, "g2").await;
    // Uids: bound on C through C's API, published from A.
    let r = http()
        .put(c.url(&format!("/api/clients/{c1_id}/uid")))
        .json(&json!({"uid": "u7"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_numsub(&redis, "ringcast:u:u7", 1).await;
    publish(a, "to-u7", json!({"uids": ["u7"]}), &[]).await;
    expect_text(&mut c1, "to-u7").await;
    // A client command on C (seed 004's send_to_group) reaches the members on A and B.
    command(&mut c1, json!({"cmd": "send_to_group", "group_id": "room", "message": "from-c1"}))
        .await;
    expect_text(&mut a1, "from-c1").await;
    // b1 was excluded from g2, so its next message is this one.
    expect_text(&mut b1, "from-c1").await;
    expect_text(&mut c1, "from-c1").await;
    // A message to two groups reaches a member of both once.
    command(&mut c1, json!({"cmd": "add_group", "group_id": "other"})).await;
    wait_numsub(&redis, "ringcast:g:other", 1).await;
    publish(a, "both", json!({"groups": ["room", "other"]}), &[]).await;
    expect_text(&mut c1, "both").await;
    expect_text(&mut b1, "both").await;
    // Per-publisher order across nodes.
    for i in 0..200 {
        publish(a, &format!("o{i}"), json!({"groups": ["room"]}), &[]).await;
    }
    for i in 0..200 {
        expect_text(&mut c1, &format!("o{i}")).await;
        expect_text(&mut b1, &format!("o{i}")).await;
    }
    // a2 got nothing since all1: the next thing it sees is this broadcast.
    publish(c, "sync", json!({"all": true}), &[]).await;
    expect_text(&mut a2, "sync").await;
    for ws in [&mut a1, &mut b1, &mut c1] {
        let mut seen = Vec::new();
        loop {
            match next_data(ws, 10).await {
                WsMessage::Text(t) if t.as_str() == "sync" => break,
                WsMessage::Text(t) => seen.push(t.to_string()),
                other => panic!("{other:?}"),
            }
        }
        assert!(seen.iter().all(|s| s.starts_with('o') || s == "both"), "{seen:?}");
    }

    // Cluster-wide queries, from any node.
    let g = get(b, "/api/groups/room").await;
    assert_eq!(g["count"], 3, "{g}");
    let mut want = vec![a1_id.clone(), b1_id.clone(), c1_id.clone()];
    want.sort();
    assert_eq!(g["clients"], json!(want));
    assert_eq!(g["nodes_answered"].as_array().unwrap().len(), 3);
    assert_eq!(g["nodes_missing"], json!([]));
    let u = get(a, "/api/uids/u7").await;
    assert_eq!((u["online"].clone(), u["clients"].clone()), (json!(true), json!([c1_id])));
    let cl = get(a, &format!("/api/clients/{c1_id}")).await;
    assert_eq!(cl["online"], true);
    assert_eq!(cl["uid"], "u7");
    let s = get(a, "/api/stats").await;
    assert_eq!(s["connections"], 2, "this node's own count stays: {s}");
    assert_eq!(s["cluster"]["connections"], 4, "{s}");
    assert_eq!(s["cluster"]["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(s["cluster"]["backplane"]["state"], "up");
    assert_eq!(s["cluster"]["backplane"]["nodes"].as_array().unwrap().len(), 3);

    // The last member on C leaves "other": after the linger, C unsubscribes.
    command(&mut c1, json!({"cmd": "leave_group", "group_id": "other"})).await;
    wait_numsub(&redis, "ringcast:g:other", 0).await;
    // Counted, never silent: nothing was lost or rejected on the way.
    for n in [a, b, c] {
        let bp = backplane(n).await;
        let k = &bp["counters"];
        for zero in ["publish_failed", "outbound_dropped", "inbound_dropped", "rejected_version"] {
            assert_eq!(k[zero], 0, "{zero}: {bp}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stops_and_comes_back() {
    let mut redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &[]));
    let b = Node::start(BIN, &node_args(&redis.url(), &[]));
    let (mut a1, _) = client(&a).await;
    let (mut b1, _) = client(&b).await;
    command(&mut b1, json!({"cmd": "add_group", "group_id": "room"})).await;
    command(&mut a1, json!({"cmd": "add_group", "group_id": "room"})).await;
    wait_numsub(&redis, "ringcast:g:room", 2).await;
    publish(&a, "before", json!({"groups": ["room"]}), &[]).await;
    expect_text(&mut a1, "before").await;
    expect_text(&mut b1, "before").await;
    // Ready: shards accepting, backplane connected and subscribed.
    let (code, body) = readyz(&a).await;
    assert_eq!(code, 200, "{body}");
    let check = body["checks"].as_array().unwrap().iter().find(|c| c["name"] == "backplane");
    assert_eq!(check.unwrap()["ok"], true, "{body}");
    let up = "ringcast_cluster_backplane_state{state=\"up\"}";
    let failed = "ringcast_cluster_messages_dropped_total{reason=\"publish_failed\"}";
    assert_eq!(metric(&a, up).await, Some(1.0));
    assert_eq!(metric(&a, "ringcast_cluster_ready").await, Some(1.0));
    wait_for(10, "A to see both nodes in presence", async || {
        metric(&a, "ringcast_cluster_nodes").await == Some(2.0)
    })
    .await;
    assert_eq!(metric(&a, "ringcast_cluster_outbound_messages_max").await, Some(65536.0));
    assert!(metric(&a, "ringcast_cluster_outbound_messages").await.is_some());
    assert!(metric(&a, "ringcast_cluster_inbound_messages").await.is_some());
    let malformed = "ringcast_cluster_bus_rejected_total{reason=\"malformed\"}";
    assert_eq!(metric(&a, malformed).await, Some(0.0));
    let failed_before = metric(&a, failed).await.unwrap();

    redis.stop();
    wait_for(10, "A to see the backplane down", async || backplane(&a).await["state"] == "down")
        .await;
    // Not ready while the backplane is down, and /readyz says why.
    let (code, body) = readyz(&a).await;
    assert_eq!(code, 503, "{body}");
    let check = body["checks"].as_array().unwrap().iter().find(|c| c["name"] == "backplane");
    assert!(check.unwrap()["error"].as_str().unwrap().contains("down"), "{body}");
    assert_eq!(metric(&a, up).await, Some(0.0));
    assert_eq!(metric(&a, "ringcast_cluster_backplane_state{state=\"down\"}").await, Some(1.0));
    assert_eq!(metric(&a, "ringcast_cluster_ready").await, Some(0.0));
    // Local delivery continues; what could not cross is counted.
    publish(&a, "during", json!({"groups": ["room"]}), &[]).await;
    expect_text(&mut a1, "during").await;
    wait_for(10, "the lost publish to be counted", async || {
        backplane(&a).await["counters"]["publish_failed"].as_u64().unwrap() >= 1
    })
    .await;
    assert!(metric(&a, failed).await.unwrap() > failed_before, "the drop counter moved");
    // The node answers queries with what it knows (itself) while Redis is away.
    let g = get(&a, "/api/groups/room").await;
    assert_eq!(g["count"], 1);

    redis.restart();
    wait_for(20, "both nodes back up and re-subscribed", async || {
        backplane(&a).await["state"] == "up"
            && backplane(&b).await["state"] == "up"
            && redis.numsub("ringcast:g:room") == 2
    })
    .await;
    wait_for(10, "A ready again", async || readyz(&a).await.0 == 200).await;
    assert_eq!(metric(&a, up).await, Some(1.0));
    publish(&a, "after", json!({"groups": ["room"]}), &[]).await;
    expect_text(&mut a1, "after").await;
    // b1 never got "during": the next thing it receives is "after".
    expect_text(&mut b1, "after").await;
    let k = backplane(&a).await["counters"].clone();
    assert!(k["disconnects"].as_u64().unwrap() >= 1 && k["reconnects"].as_u64().unwrap() >= 1);
    assert!(a.log_contains("cluster backplane down"), "the outage is logged");
    assert!(a.log_contains("cluster backplane up again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_node_vanishes_from_presence_within_three_heartbeats() {
    let redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &[]));
    let b = Node::start(BIN, &node_args(&redis.url(), &[]));
    let mut c = Node::start(BIN, &node_args(&redis.url(), &[]));
    let (mut a1, _) = client(&a).await;
    let (mut c1, _) = client(&c).await;
    command(&mut a1, json!({"cmd": "add_group", "group_id": "room"})).await;
    command(&mut c1, json!({"cmd": "add_group", "group_id": "room"})).await;
    wait_numsub(&redis, "ringcast:g:room", 2).await;
    wait_for(10, "three nodes in presence", async || {
        backplane(&a).await["nodes"].as_array().unwrap().len() == 3
    })
    .await;
    assert_eq!(get(&b, "/api/groups/room").await["count"], 2);

    c.kill();
    let killed = Instant::now();
    // Heartbeat 300 ms: gone from presence within 3 × 300 ms, and from every node's view
    // one heartbeat later (each refreshes its view when it beats), + polling slack.
    wait_for(5, "C to vanish from presence", async || {
        backplane(&a).await["nodes"].as_array().unwrap().len() == 2
    })
    .await;
    wait_for(5, "C to vanish from B's view too", async || {
        backplane(&b).await["nodes"].as_array().unwrap().len() == 2
    })
    .await;
    let vanished = killed.elapsed();
    assert!(vanished < Duration::from_millis(300 * 4 + 700), "took {vanished:?}");
    // Its clients are gone from cluster-wide answers; nobody is reported missing.
    let g = get(&b, "/api/groups/room").await;
    assert_eq!((g["count"].clone(), g["nodes_missing"].clone()), (json!(1), json!([])));
    assert_eq!(get(&b, "/api/stats").await["cluster"]["connections"], 1);
    // The others keep serving.
    publish(&b, "still", json!({"groups": ["room"]}), &[]).await;
    expect_text(&mut a1, "still").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ids_are_unique_pinnable_and_a_clash_is_refused() {
    let redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &["--node-id", "0000abcd"]));
    let (_ws, id) = client(&a).await;
    assert!(id.starts_with("0000abcd"), "{id}");
    let err = match Node::try_start(BIN, &node_args(&redis.url(), &["--node-id", "0000abcd"])) {
        Ok(_) => panic!("a second node with the same id must be refused"),
        Err(log) => log,
    };
    assert!(err.contains("node id 0000abcd is held by another live node"), "{err}");
    // Generated ids differ, even for processes started from one command line.
    let b = Node::start(BIN, &node_args(&redis.url(), &[]));
    let c = Node::start(BIN, &node_args(&redis.url(), &[]));
    let ids: std::collections::BTreeSet<String> = [&a, &b, &c]
        .iter()
        .map(|n| {
            n.log
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| {
                    l.split("node_id=")
                        .nth(1)
                        .map(|s| s.split_whitespace().next().unwrap().to_owned())
                })
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bus_input_is_counted_and_dropped() {
    let redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &["--node-id", "000000aa"]));
    let (mut a1, _) = client(&a).await;
    let mut conn = redis.conn();
    let mut publish_raw = |bytes: Vec<u8>| {
        let _: u64 = redis::cmd("PUBLISH").arg("ringcast:all").arg(bytes).query(&mut conn).unwrap();
    };
    // A valid broadcast from a node that is not in presence.
    let mut msg = vec![1u8, 1, 0, 0, 0, 0xbb, 0, 0, 0, 0, 0, 0, 0, 1];
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(&[0, 0, 0, 0, 0]);
    msg.extend_from_slice(&[0x81, 3, b'b', b'a', b'd']);
    publish_raw(msg.clone());
    // The same from another format version, truncated, and garbage.
    let mut v2 = msg.clone();
    v2[0] = 2;
    publish_raw(v2);
    publish_raw(msg[..10].to_vec());
    publish_raw(b"\x01hello".to_vec());
    let mut bad_frame = msg.clone();
    bad_frame.truncate(msg.len() - 1);
    publish_raw(bad_frame);
    wait_for(10, "the bad messages to be counted", async || {
        let k = backplane(&a).await["counters"].clone();
        k["rejected_unknown_node"] == 1
            && k["rejected_version"] == 1
            && k["rejected_malformed"] == 3
    })
    .await;
    assert!(a.log_contains("incompatible format version"));
    for (reason, n) in [("unknown_node", 1.0), ("version", 1.0), ("malformed", 3.0)] {
        let sample = format!("ringcast_cluster_bus_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&a, &sample).await, Some(n), "{sample}");
    }
    // Still serving: a local broadcast is the first thing the client sees.
    publish(&a, "ok", json!({"all": true}), &[]).await;
    expect_text(&mut a1, "ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_with_sharded_pubsub() {
    let rc = RedisCluster::start();
    let args = |extra: &[&str]| {
        let mut v = node_args(&rc.urls(), &["--cluster-bus", "sharded"]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(BIN, &args(&[]))).collect();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (mut a1, _) = client(a).await;
    let (mut b1, b1_id) = client(b).await;
    let (mut c1, c1_id) = client(c).await;
    // Many groups, so their channels land on every Redis shard.
    let groups: Vec<String> = (0..12).map(|i| format!("g{i}")).collect();
    for g in &groups {
        command(&mut b1, json!({"cmd": "add_group", "group_id": g})).await;
        command(&mut c1, json!({"cmd": "add_group", "group_id": g})).await;
    }
    wait_for(10, "B and C subscribed to every group", async || {
        for g in &groups {
            let r = get(a, &format!("/api/groups/{g}")).await;
            if r["count"] != 2 {
                return false;
            }
        }
        true
    })
    .await;
    // The query answered, but the subscriptions may still be in flight: publish until seen.
    for g in &groups {
        let mut got = false;
        for attempt in 0..50 {
            let marker = format!("{g}-{attempt}");
            publish(a, &marker, json!({"groups": [g]}), &[]).await;
            let m = next_data(&mut b1, 10).await;
            if m.to_text().unwrap() == marker {
                expect_text(&mut c1, &marker).await;
                got = true;
                break;
            }
        }
        assert!(got, "group {g} never crossed");
    }
    // The channels are spread over the three Redis shards.
    let per_shard: Vec<u64> = rc
        .nodes
        .iter()
        .map(|n| {
            let chans: Vec<String> = redis::cmd("PUBSUB")
                .arg("SHARDCHANNELS")
                .arg("ringcast:g:*")
                .query(&mut n.conn())
                .unwrap();
            chans.len() as u64
        })
        .collect();
    assert_eq!(per_shard.iter().sum::<u64>(), 12, "{per_shard:?}");
    assert!(per_shard.iter().filter(|n| **n > 0).count() >= 2, "{per_shard:?}");
    // Broadcast, client id and exclusion across nodes.
    publish(c, "all", json!({"all": true}), &[&b1_id]).await;
    expect_text(&mut a1, "all").await;
    expect_text(&mut c1, "all").await;
    publish(a, "to-b1", json!({"clients": [b1_id]}), &[]).await;
    expect_text(&mut b1, "to-b1").await;
    let s = get(a, "/api/stats").await;
    assert_eq!(s["cluster"]["connections"], 3, "{s}");
    assert_eq!(s["cluster"]["backplane"]["bus"], "sharded");
    let cl = get(b, &format!("/api/clients/{c1_id}")).await;
    assert_eq!(cl["online"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_never_blocks_local_delivery() {
    let redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &["--cluster-outbound-messages-max", "64"]));
    let b = Node::start(BIN, &node_args(&redis.url(), &[]));
    let (mut a1, _) = client(&a).await;
    let (mut b1, _) = client(&b).await;
    // Redis stops answering anyone for 3 s (a stalled or flooded link).
    let _: () =
        redis::cmd("CLIENT").arg("PAUSE").arg(3000).arg("ALL").query(&mut redis.conn()).unwrap();
    let started = Instant::now();
    for batch in 0..10 {
        let publishes: Vec<Value> = (0..50)
            .map(|i| json!({"data": format!("m{}", batch * 50 + i), "to": {"all": true}}))
            .collect();
        post(&a, "/api/publish/batch", json!({"publishes": publishes})).await;
    }
    // Local clients get all 500 at once: the shards never wait for Redis.
    for i in 0..500 {
        expect_text(&mut a1, &format!("m{i}")).await;
    }
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
    // The bounded outbound queue overflowed: counted.
    let k = backplane(&a).await["counters"].clone();
    assert!(k["outbound_dropped"].as_u64().unwrap() >= 50, "{k}");
    // Once Redis answers again, cross-node delivery resumes without a restart.
    wait_for(20, "cross-node delivery after the stall", async || {
        publish(&a, "back", json!({"all": true}), &[]).await;
        loop {
            match tokio::time::timeout(Duration::from_millis(300), next_data(&mut b1, 10)).await {
                Ok(WsMessage::Text(t)) if t.as_str() == "back" => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    })
    .await;
}

/// A uid bound by a connect token (not by a command or the API) is routed across nodes too:
/// the node holding the connection subscribes to the uid's channel at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_uid_is_reachable_from_every_node() {
    use ringcast::auth::{token, Claims, Secret};
    let secret = b"cluster-test-secret-of-at-least-32-bytes!".to_vec();
    let dir = std::env::temp_dir().join(format!("ringcast-cluster-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, &secret).unwrap();
    let redis = Redis::start();
    let extra = ["--auth-mode", "required", "--auth-secret-file", secret_file.to_str().unwrap()];
    let a = Node::start(BIN, &node_args(&redis.url(), &extra));
    let b = Node::start(BIN, &node_args(&redis.url(), &extra));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let claims = Claims {
        sub: "alice".into(),
        exp: now.as_secs() + 600,
        nbf: None,
        iat: Some(now.as_secs()),
        iss: None,
        aud: None,
        join: vec![],
        publish: vec![],
    };
    let t = token::mint(&Secret::new(secret), &claims);
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/?token={t}", b.ws)).await.unwrap();
    assert_eq!(resp.status(), 101);
    let welcome: Value = match next_data(&mut ws, 10).await {
        WsMessage::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected the welcome, got {other:?}"),
    };
    let id = welcome["client_id"].as_str().unwrap().to_owned();
    wait_numsub(&redis, "ringcast:u:alice", 1).await;
    let r = publish(&a, "hi-alice", json!({"uids": ["alice"]}), &[]).await;
    assert_eq!(r["queued"], 0, "nobody on A: {r}");
    expect_text(&mut ws, "hi-alice").await;
    let u = get(&a, "/api/uids/alice").await;
    assert_eq!((u["online"].clone(), u["clients"].clone()), (json!(true), json!([id])), "{u}");
    drop(ws);
    // The last connection of the uid gone: B unsubscribes after the linger.
    wait_numsub(&redis, "ringcast:u:alice", 0).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The publish reply names the nodes a publish was forwarded to (interest routing, from local
/// state: nobody is waited for); with `"ack": "nodes"` it also waits, at most the query
/// timeout, for each of those nodes' queued count and names the ones that did not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_replies_name_forwarded_nodes_and_ack_per_node_counts() {
    let redis = Redis::start();
    let ids = ["0000000a", "0000000b", "0000000c"];
    let nodes: Vec<Node> = ids
        .iter()
        .map(|id| Node::start(BIN, &node_args(&redis.url(), &["--node-id", id])))
        .collect();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (mut a1, _) = client(a).await;
    let (mut b1, _) = client(b).await;
    let (mut b2, _) = client(b).await;
    let (mut c1, c1_id) = client(c).await;
    for ws in [&mut a1, &mut b1, &mut b2, &mut c1] {
        command(ws, json!({"cmd": "add_group", "group_id": "room"})).await;
    }
    command(&mut c1, json!({"cmd": "add_group", "group_id": "solo"})).await;
    wait_numsub(&redis, "ringcast:g:room", 3).await;
    wait_numsub(&redis, "ringcast:g:solo", 1).await;
    // Subscriptions are announced to the other nodes: A learns where "room" lives.
    let room = json!({"groups": ["room"]});
    wait_for(10, "A to know the nodes of room", async || {
        publish(a, "probe", room.clone(), &[]).await["forwarded_to"] == json!([ids[1], ids[2]])
    })
    .await;
    let r = publish(a, "plain", room.clone(), &[]).await;
    assert_eq!(r["queued"], 1, "the local count: {r}");
    assert_eq!(r["forwarded_to"], json!([ids[1], ids[2]]));
    assert!(r.get("nodes").is_none(), "no waiting unless asked: {r}");
    // Group on C only; a group nobody has; a broadcast; a client on C.
    let r = publish(a, "s", json!({"groups": ["solo"]}), &[]).await;
    assert_eq!((r["queued"].clone(), r["forwarded_to"].clone()), (json!(0), json!([ids[2]])));
    let r = publish(a, "n", json!({"groups": ["nobody"]}), &[]).await;
    assert_eq!(r["forwarded_to"], json!([]));
    let r = publish(b, "all", json!({"all": true}), &[]).await;
    assert_eq!(r["forwarded_to"], json!([ids[0], ids[2]]));
    let r = publish(a, "c", json!({"clients": [c1_id]}), &[]).await;
    assert_eq!(r["forwarded_to"], json!([ids[2]]));

    // "ack": "nodes": every receiving node's count.
    let acked =
        |to: Value| post(a, "/api/publish", json!({"data": "acked", "to": to, "ack": "nodes"}));
    let r = acked(room.clone()).await;
    assert_eq!(r["forwarded_to"], json!([ids[1], ids[2]]), "{r}");
    assert_eq!(
        r["nodes"],
        json!([
            {"node_id": ids[1], "queued": 2, "slow_consumers": 0},
            {"node_id": ids[2], "queued": 1, "slow_consumers": 0},
        ]),
        "{r}"
    );
    assert_eq!((r["nodes_missing"].clone(), r["queued_total"].clone()), (json!([]), json!(4)));
    let r = acked(json!({"clients": [c1_id]})).await;
    assert_eq!(r["nodes"], json!([{"node_id": ids[2], "queued": 1, "slow_consumers": 0}]));
    let r = acked(json!({"all": true})).await;
    assert_eq!(r["queued_total"], 4, "{r}");
    // Everyone got every message meant for them, in order (the probes aside).
    for (ws, want) in [
        (&mut a1, &["plain", "all", "acked", "acked"][..]),
        (&mut b1, &["plain", "all", "acked", "acked"][..]),
        (&mut c1, &["plain", "s", "all", "c", "acked", "acked", "acked"][..]),
    ] {
        let mut got = Vec::new();
        while got.len() < want.len() {
            match next_data(ws, 10).await {
                WsMessage::Text(t) if t.as_str() == "probe" => {}
                WsMessage::Text(t) => got.push(t.to_string()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, want);
    }

    // A node that is alive in presence but does not answer is reported missing, and the
    // answer still comes within the query timeout (500 ms).
    c.pause(true);
    let started = Instant::now();
    let r = acked(room.clone()).await;
    let took = started.elapsed();
    c.pause(false);
    assert_eq!(r["nodes_missing"], json!([ids[2]]), "{r}");
    assert_eq!(r["nodes"], json!([{"node_id": ids[1], "queued": 2, "slow_consumers": 0}]));
    assert!(took < Duration::from_millis(1500), "answered in {took:?}");

    // B's members leave: after the linger B unsubscribes, announces it, and A stops naming it.
    for ws in [&mut b1, &mut b2] {
        command(ws, json!({"cmd": "leave_group", "group_id": "room"})).await;
    }
    wait_numsub(&redis, "ringcast:g:room", 2).await;
    wait_for(10, "A to forget B for room", async || {
        publish(a, "later", room.clone(), &[]).await["forwarded_to"] == json!([ids[2]])
    })
    .await;
    // A batch: each result names its own nodes.
    let r = post(
        a,
        "/api/publish/batch",
        json!({"publishes": [
            {"data": "x", "to": {"groups": ["solo"]}},
            {"data": "y", "to": {"all": true}}
        ]}),
    )
    .await;
    assert_eq!(r["results"][0]["forwarded_to"], json!([ids[2]]), "{r}");
    assert_eq!(r["results"][1]["forwarded_to"], json!([ids[1], ids[2]]), "{r}");
    assert_eq!(r["results"][1]["queued"], 1, "{r}");
    // Bad ack values are refused; a batch takes no ack.
    let r = http()
        .post(a.url("/api/publish"))
        .json(&json!({"data": "x", "to": {"all": true}, "ack": "all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http()
        .post(a.url("/api/publish/batch"))
        .json(&json!({"publishes": [{"data": "x", "to": {"all": true}, "ack": "nodes"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("publishes[0].ack"), "{e}");
}

/// A request with a method and an optional JSON body: status and JSON answer.
async fn call(
    node: &Node,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http().request(method, node.url(path));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Operations on a client that lives on another node are forwarded to that node over the bus
/// and answered within the query timeout: 404 for an unknown client or node, 504 when the node
/// is there but does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_another_nodes_client_are_forwarded_to_it() {
    use reqwest::Method;
    let redis = Redis::start();
    let a = Node::start(BIN, &node_args(&redis.url(), &["--node-id", "000000a1"]));
    let b = Node::start(BIN, &node_args(&redis.url(), &["--node-id", "000000b1"]));
    let (mut b1, b1_id) = client(&b).await;
    let ok = |changed: bool| json!({"ok": true, "changed": changed});
    let member = format!("/api/groups/room/clients/{b1_id}");

    // Join through A: B runs it, subscribes, and a publish from A reaches b1.
    assert_eq!(call(&a, Method::PUT, &member, None).await, (200, ok(true)));
    assert_eq!(call(&a, Method::PUT, &member, None).await, (200, ok(false)));
    wait_numsub(&redis, "ringcast:g:room", 1).await;
    publish(&a, "joined-remotely", json!({"groups": ["room"]}), &[]).await;
    expect_text(&mut b1, "joined-remotely").await;
    assert_eq!(get(&a, "/api/groups/room").await["clients"], json!([b1_id]));

    // Uid and session through A; GET the client through A shows them.
    let uid = format!("/api/clients/{b1_id}/uid");
    assert_eq!(call(&a, Method::PUT, &uid, Some(json!({"uid": "u9"}))).await, (200, ok(true)));
    let session = format!("/api/clients/{b1_id}/session");
    assert_eq!(call(&a, Method::PUT, &session, Some(json!({"a": 1}))).await, (200, ok(true)));
    assert_eq!(call(&a, Method::PATCH, &session, Some(json!({"b": 2}))).await.0, 200);
    let cl = get(&a, &format!("/api/clients/{b1_id}")).await;
    assert_eq!((cl["online"].clone(), cl["uid"].clone()), (json!(true), json!("u9")), "{cl}");
    assert_eq!(cl["session"], json!({"a": 1, "b": 2}), "{cl}");
    assert_eq!(cl["groups"], json!(["room"]), "{cl}");
    // A session that is not an object is refused before anything is forwarded.
    assert_eq!(call(&a, Method::PUT, &session, Some(json!([1]))).await.0, 400);
    assert_eq!(call(&a, Method::DELETE, &uid, None).await, (200, ok(true)));
    assert_eq!(get(&a, &format!("/api/clients/{b1_id}")).await["uid"], Value::Null);
    assert_eq!(call(&a, Method::DELETE, &member, None).await, (200, ok(true)));
    wait_numsub(&redis, "ringcast:g:room", 0).await;

    // Unknown client on a live node, and a node that is not in the cluster: 404.
    let gone =
        format!("{}{}", &b1_id[..b1_id.len() - 1], if b1_id.ends_with('0') { '1' } else { '0' });
    let (code, body) =
        call(&a, Method::PUT, &format!("/api/groups/room/clients/{gone}"), None).await;
    assert_eq!(code, 404, "{body}");
    let stranger = format!("000000ff{}", &b1_id[8..]);
    let (code, body) =
        call(&a, Method::DELETE, &format!("/api/clients/{stranger}/uid"), None).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no node 000000ff"), "{body}");
    let cl = get(&a, &format!("/api/clients/{stranger}")).await;
    assert_eq!(cl["online"], false, "a client of no node is offline: {cl}");

    // A node that does not answer: 504 within the query timeout (500 ms), JSON error.
    b.pause(true);
    // (Both at once: a paused node leaves presence after three heartbeats, 900 ms here, and
    // is then unknown rather than slow.)
    let started = Instant::now();
    let client_path = format!("/api/clients/{b1_id}");
    let ((code, body), (get_code, _)) = tokio::join!(
        call(&a, Method::PUT, &member, None),
        call(&a, Method::GET, &client_path, None)
    );
    let took = started.elapsed();
    b.pause(false);
    assert_eq!(code, 504, "{body}");
    assert!(body["error"].as_str().unwrap().contains("did not answer"), "{body}");
    assert!(took < Duration::from_millis(1500), "answered in {took:?}");
    assert_eq!(get_code, 504);
    let api = get(&a, "/api/stats").await["api"].clone();
    assert!(api["gateway_timeout"].as_u64().unwrap() >= 2, "{api}");

    // Close through A, with a code and a reason.
    let path = format!("/api/clients/{b1_id}?code=4001&reason=bye+now");
    assert_eq!(call(&a, Method::DELETE, &path, None).await, (200, ok(true)));
    loop {
        match next_data(&mut b1, 10).await {
            WsMessage::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 4001);
                assert_eq!(frame.reason.as_str(), "bye now");
                break;
            }
            // The paused join may have been applied after B resumed.
            WsMessage::Text(_) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
