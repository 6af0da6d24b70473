//! The Redis history backend (`ringcast::history::redis`) against a real redis-server started
//! by each test: two backends over two connections stand for two nodes of a cluster.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use ringcast::history::redis::{decode_positioned, AppendRequest, PublishOn, RedisHistory};
use ringcast::history::{Claim, Position, ReadFrom, StreamLimits, Unrecoverable};
use ringcast::{GroupId, Message};

/// A redis-server on a free loopback port, without persistence, killed when dropped.
struct Redis {
    port: u16,
    child: Child,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// With extra redis-server arguments (cluster mode).
    fn start_with(extra: &[&str]) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir =
            std::env::temp_dir().join(format!("ringcast-hredis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run ./scripts/install-test-deps.sh");
        let r = Redis { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(r.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server on {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    fn flushall(&self) {
        let mut c = redis::Client::open(self.url()).unwrap().get_connection().unwrap();
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One "node": its own connection to the shared Redis.
async fn node(r: &Redis, window: Duration) -> RedisHistory<ConnectionManager> {
    let client = redis::Client::open(r.url()).unwrap();
    let conn = ConnectionManager::new(client).await.unwrap();
    RedisHistory::new(conn, "rc", PublishOn::Classic, Bytes::from_static(b"H"), window)
}

fn limits(messages_max: usize, age_max: Duration) -> StreamLimits {
    StreamLimits { messages_max, age_max }
}

fn g(s: &str) -> GroupId {
    GroupId::new(s, 128).unwrap()
}

fn texts(r: &ringcast::history::Read) -> Vec<String> {
    let (msgs, _) = r.outcome.as_ref().unwrap();
    msgs.iter().map(|m| String::from_utf8(m.message.as_bytes().to_vec()).unwrap()).collect()
}

fn offsets(r: &ringcast::history::Read) -> Vec<u64> {
    r.outcome.as_ref().unwrap().0.iter().map(|m| m.offset).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_appending_get_each_offset_once_and_subscribers_see_offset_order() {
    let r = Redis::start();
    let (a, b) = (node(&r, Duration::from_secs(60)).await, node(&r, Duration::from_secs(60)).await);
    let client = redis::Client::open(r.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe("rc:g:room").await.unwrap();
    const EACH: usize = 200;
    let l = limits(10_000, Duration::from_secs(600));
    let run = |h: RedisHistory<ConnectionManager>, name: &'static str| async move {
        let mut got = Vec::new();
        for i in 0..EACH {
            got.push(h.append("room", l, &Message::text(format!("{name}{i}"))).await.unwrap());
        }
        got
    };
    let (pa, pb) = tokio::join!(tokio::spawn(run(a.clone(), "a")), tokio::spawn(run(b, "b")));
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    let epoch = pa[0].epoch;
    assert!(pa.iter().chain(&pb).all(|p| p.epoch == epoch), "one epoch");
    let all: BTreeSet<u64> = pa.iter().chain(&pb).map(|p| p.offset).collect();
    assert_eq!(all, (1..=(2 * EACH) as u64).collect(), "every offset given exactly once");
    for w in pa.windows(2).chain(pb.windows(2)) {
        assert!(w[0].offset < w[1].offset, "a node's own appends are ordered");
    }
    // Every subscriber gets each message once, in offset order, with its position.
    let mut stream = sub.on_message();
    for want in 1..=(2 * EACH) as u64 {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("published message")
            .unwrap();
        let body: Vec<u8> = msg.get_payload().unwrap();
        let p = decode_positioned(body.strip_prefix(b"H").expect("the bus prefix")).unwrap();
        assert_eq!(p.position, Position { epoch, offset: want });
    }
    // The stream holds them all, readable from either node.
    let read = a.read(&g("room"), l, ReadFrom::Last(5), 1000).await.unwrap();
    assert_eq!(offsets(&read), (2 * EACH as u64 - 4..=2 * EACH as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_from_one_node_recovers_exactly_the_missed_messages_on_another() {
    let r = Redis::start();
    let (a, b) = (node(&r, Duration::from_secs(60)).await, node(&r, Duration::from_secs(60)).await);
    let l = limits(100, Duration::from_secs(600));
    // Before the first message: epoch made, offset 0.
    let empty = b.read(&g("chat"), l, ReadFrom::Last(10), 100).await.unwrap();
    let epoch = empty.position.unwrap().epoch;
    assert_eq!(empty.position.unwrap().offset, 0);
    let mut seen = None;
    for i in 1..=10 {
        let p = a.append("chat", l, &Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(p, Position { epoch, offset: i });
        if i == 4 {
            seen = Some(p);
        }
    }
    let got = b.read(&g("chat"), l, ReadFrom::Since(seen.unwrap()), 1000).await.unwrap();
    assert_eq!(got.position, Some(Position { epoch, offset: 10 }));
    assert_eq!(texts(&got), ["m5", "m6", "m7", "m8", "m9", "m10"]);
    assert!(!got.outcome.as_ref().unwrap().1);
    // Limited: the first two and "more".
    let part = b.read(&g("chat"), l, ReadFrom::Since(seen.unwrap()), 2).await.unwrap();
    assert_eq!((offsets(&part), part.outcome.as_ref().unwrap().1), (vec![5, 6], true));
    // Binary payloads come back as binary.
    let p = a.append("chat", l, &Message::Binary(Bytes::from_static(&[0, 255]))).await.unwrap();
    let last = b.read(&g("chat"), l, ReadFrom::Last(1), 10).await.unwrap();
    assert_eq!(
        last.outcome.as_ref().unwrap().0[0].message,
        Message::Binary(Bytes::from_static(&[0, 255]))
    );
    assert_eq!(last.outcome.as_ref().unwrap().0[0].offset, p.offset);
    // Up to date: nothing to replay, recovered.
    let now = b.read(&g("chat"), l, ReadFrom::Since(p), 10).await.unwrap();
    assert_eq!(now.outcome.as_ref().unwrap().0.len(), 0);
    // Ahead of the history, or another epoch: not recoverable.
    let ahead = Position { epoch, offset: 99 };
    let r1 = b.read(&g("chat"), l, ReadFrom::Since(ahead), 10).await.unwrap();
    assert_eq!(r1.outcome.unwrap_err(), Unrecoverable::Ahead);
    let other = Position { epoch: ringcast::history::Epoch(epoch.0 ^ 1), offset: 3 };
    let r2 = b.read(&g("chat"), l, ReadFrom::Since(other), 10).await.unwrap();
    assert_eq!(r2.outcome.unwrap_err(), Unrecoverable::EpochChanged);
    assert_eq!(b.counters().recovered.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(b.counters().unrecovered.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_age_and_an_emptied_redis_make_positions_unrecoverable() {
    let r = Redis::start();
    let a = node(&r, Duration::from_secs(60)).await;
    // Count: 5 kept of 10.
    let l = limits(5, Duration::from_secs(600));
    let mut ps = Vec::new();
    for i in 1..=10 {
        ps.push(a.append("small", l, &Message::text(format!("m{i}"))).await.unwrap());
    }
    let kept = a.read(&g("small"), l, ReadFrom::Since(ps[4]), 100).await.unwrap();
    assert_eq!(offsets(&kept), [6, 7, 8, 9, 10]);
    let gone = a.read(&g("small"), l, ReadFrom::Since(ps[3]), 100).await.unwrap();
    assert_eq!(gone.outcome.unwrap_err(), Unrecoverable::TooOld);
    assert_eq!(gone.position, Some(ps[9]), "the position to resynchronise from");

    // Age: messages older than the rule's age are neither replayed nor listed, but the
    // group keeps its epoch and offset (a client that saw the last one still recovers).
    let young = limits(100, Duration::from_millis(300));
    let p1 = a.append("aging", young, &Message::text("old")).await.unwrap();
    let p2 = a.append("aging", young, &Message::text("old too")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let aged = a.read(&g("aging"), young, ReadFrom::Since(p1), 100).await.unwrap();
    assert_eq!(aged.outcome.unwrap_err(), Unrecoverable::TooOld);
    let current = a.read(&g("aging"), young, ReadFrom::Since(p2), 100).await.unwrap();
    assert_eq!(current.outcome.as_ref().unwrap().0.len(), 0, "up to date: recovered");
    assert_eq!(
        offsets(&a.read(&g("aging"), young, ReadFrom::Last(10), 100).await.unwrap()),
        [0u64; 0]
    );
    let p3 = a.append("aging", young, &Message::text("new")).await.unwrap();
    assert_eq!(p3, Position { epoch: p2.epoch, offset: 3 });

    // Redis emptied (restart without persistence, FLUSHALL): a new epoch, so old positions
    // are answered "epoch changed" and numbering restarts at 1.
    r.flushall();
    let after = a.read(&g("small"), l, ReadFrom::Since(ps[9]), 100).await.unwrap();
    assert_eq!(after.outcome.unwrap_err(), Unrecoverable::EpochChanged);
    let new_epoch = after.position.unwrap().epoch;
    assert_ne!(new_epoch, ps[9].epoch);
    let p = a.append("small", l, &Message::text("fresh")).await.unwrap();
    assert_eq!(p, Position { epoch: new_epoch, offset: 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_seen_by_every_node() {
    let r = Redis::start();
    let window = Duration::from_millis(800);
    let (a, b) = (node(&r, window).await, node(&r, window).await);
    assert_eq!(a.idempotency_claim("order-1").await.unwrap(), Claim::New);
    assert_eq!(b.idempotency_claim("order-1").await.unwrap(), Claim::InProgress);
    a.idempotency_complete("order-1", br#"{"queued":3}"#).await.unwrap();
    assert_eq!(
        b.idempotency_claim("order-1").await.unwrap(),
        Claim::Duplicate(Bytes::from_static(br#"{"queued":3}"#))
    );
    // Releasing an answered key changes nothing; a pending one is freed.
    b.idempotency_release("order-1").await.unwrap();
    assert!(matches!(a.idempotency_claim("order-1").await.unwrap(), Claim::Duplicate(_)));
    assert_eq!(b.idempotency_claim("order-2").await.unwrap(), Claim::New);
    b.idempotency_release("order-2").await.unwrap();
    assert_eq!(a.idempotency_claim("order-2").await.unwrap(), Claim::New);
    // Past the window a key is new again.
    tokio::time::sleep(window + Duration::from_millis(300)).await;
    assert_eq!(b.idempotency_claim("order-1").await.unwrap(), Claim::New);
    assert_eq!(b.counters().duplicates.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// Three cluster-mode redis-servers made one Redis Cluster with plain commands (slots split in
/// three, `CLUSTER MEET`), no replicas.
fn redis_cluster() -> Vec<Redis> {
    let nodes: Vec<Redis> = (0..3)
        .map(|i| {
            let conf = format!("nodes-{}-{i}.conf", std::process::id());
            Redis::start_with(&["--cluster-enabled", "yes", "--cluster-config-file", &conf])
        })
        .collect();
    let per = 16384 / 3;
    for (i, n) in nodes.iter().enumerate() {
        let (from, to) = (i * per, if i == 2 { 16383 } else { (i + 1) * per - 1 });
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(from)
            .arg(to)
            .query(&mut n.conn())
            .unwrap();
    }
    for n in &nodes[1..] {
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(n.port)
            .query(&mut nodes[0].conn())
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| {
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut n.conn()).unwrap();
        let known: String = redis::cmd("CLUSTER").arg("NODES").query(&mut n.conn()).unwrap();
        info.contains("cluster_state:ok") && known.lines().count() == 3
    }) {
        assert!(Instant::now() < deadline, "the Redis Cluster did not form");
        std::thread::sleep(Duration::from_millis(50));
    }
    nodes
}

/// On a Redis Cluster the script's keys and the group's channel share a hash slot, so the
/// append can `SPUBLISH` in the same atomic step (also for a group id with a hash tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_batch_appends_in_order_and_answers_each_item() {
    let r = Redis::start();
    let a = node(&r, Duration::from_secs(60)).await;
    let l = limits(1000, Duration::from_secs(600));
    let msgs: Vec<Message> = (0..60).map(|i| Message::text(format!("m{i}"))).collect();
    let groups = ["p1", "p2", "bad}", "p3"];
    let requests: Vec<AppendRequest<'_>> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| AppendRequest { group: groups[i % 4], limits: l, message: m, prefix: b"H" })
        .collect();
    let results = a.append_many(&requests).await;
    assert_eq!(results.len(), 60);
    for (i, r) in results.iter().enumerate() {
        match groups[i % 4] {
            // A group id no key can share a slot with is refused alone; the rest go through.
            "bad}" => assert!(r.is_err(), "{r:?}"),
            _ => assert_eq!(r.as_ref().unwrap().offset, (i / 4 + 1) as u64, "item {i}"),
        }
    }
    for (k, group) in ["p1", "p2", "p3"].into_iter().enumerate() {
        let k = if k == 2 { 3 } else { k };
        let read = a.read(&g(group), l, ReadFrom::Last(100), 100).await.unwrap();
        let want: Vec<String> = (0..15).map(|j| format!("m{}", j * 4 + k)).collect();
        assert_eq!(texts(&read), want, "{group}: the batch's order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_appends_spublish_in_offset_order_and_read_from_any_node() {
    use redis::cluster::ClusterClient;
    let nodes = redis_cluster();
    let urls: Vec<String> = nodes.iter().map(Redis::url).collect();
    let (push_tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
    let sub_client = ClusterClient::builder(urls.clone())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(push_tx)
        .build()
        .unwrap();
    let mut sub = sub_client.get_async_connection().await.unwrap();
    let backend = |conn| {
        RedisHistory::new(conn, "rc", PublishOn::Sharded, Bytes::new(), Duration::from_secs(60))
    };
    let client = ClusterClient::new(urls).unwrap();
    let a = backend(client.get_async_connection().await.unwrap());
    let b = backend(client.get_async_connection().await.unwrap());
    let l = limits(1000, Duration::from_secs(600));
    for group in ["room", "team{x}y"] {
        sub.ssubscribe(a.channel(group)).await.unwrap();
        let run = |h: RedisHistory<_>| async move {
            for i in 0..50 {
                h.append(group, l, &Message::text(format!("m{i}"))).await.unwrap();
            }
        };
        tokio::join!(run(a.clone()), run(b.clone()));
        let mut offsets_seen = Vec::new();
        while offsets_seen.len() < 100 {
            let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
                .await
                .expect("a pushed message")
                .unwrap();
            if push.kind != redis::PushKind::SMessage {
                continue;
            }
            let body: Vec<u8> = redis::FromRedisValue::from_redis_value(&push.data[1]).unwrap();
            offsets_seen.push(decode_positioned(&body).unwrap().position.offset);
        }
        assert_eq!(offsets_seen, (1..=100).collect::<Vec<u64>>(), "{group}: offset order");
        let tail = b.read(&g(group), l, ReadFrom::Last(3), 10).await.unwrap();
        assert_eq!(offsets(&tail), [98, 99, 100]);
    }
    // A pipelined batch over groups on several Redis shards keeps each group's order.
    let msgs: Vec<Message> = (0..40).map(|i| Message::text(format!("b{i}"))).collect();
    let groups = ["q1", "q2", "q3", "q4"];
    let requests: Vec<AppendRequest<'_>> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| AppendRequest { group: groups[i % 4], limits: l, message: m, prefix: b"" })
        .collect();
    for (i, r) in a.append_many(&requests).await.into_iter().enumerate() {
        assert_eq!(r.unwrap().offset, (i / 4 + 1) as u64, "item {i}");
    }
    for (k, group) in groups.into_iter().enumerate() {
        let read = b.read(&g(group), l, ReadFrom::Last(100), 100).await.unwrap();
        let want: Vec<String> = (0..10).map(|j| format!("b{}", j * 4 + k)).collect();
        assert_eq!(texts(&read), want, "{group}");
    }
    drop(nodes);
}

/// Two nodes (each its own shards and HTTP API) keeping idempotency keys in one Redis: the same
/// `Idempotency-Key` sent to both delivers once; the second node answers with the first
/// node's answer, flagged, and delivers nothing to its own members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_sent_to_two_nodes_delivers_once() {
    use futures_util::SinkExt;
    use ringcast::api::{ApiConfig, RedisKeysConfig};
    use ringcast::config::Permissions;
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let r = Redis::start();
    let start = || {
        let node = common::start(ringcast::Config {
            on_message: ringcast::OnMessage::Commands,
            welcome: Some(false),
            permissions: Permissions::demo(),
            history: ringcast::history::HistoryConfig {
                rules: vec!["chat:*=100,10m".parse().unwrap()],
                ..Default::default()
            },
            ..common::config()
        });
        let api = ringcast::api::spawn(
            node.clone(),
            ApiConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                idempotency_redis: Some(RedisKeysConfig {
                    urls: vec![r.url()],
                    redis_cluster: false,
                    namespace: "rc".into(),
                    window: Duration::from_secs(60),
                }),
                ..ApiConfig::default()
            },
        )
        .expect("the API connects to Redis");
        (node, api)
    };
    let ((node_a, api_a), (node_b, api_b)) = (start(), start());
    let member = |addr| async move {
        let mut ws = common::connect(addr).await;
        let join = json!({"cmd":"add_group","group_id":"chat:x","id":1});
        ws.send(WsMessage::text(join.to_string())).await.unwrap();
        let ok: Value =
            serde_json::from_str(common::next_data(&mut ws, 10).await.to_text().unwrap()).unwrap();
        assert_eq!(ok["type"], "ok", "{ok}");
        ws
    };
    let (mut on_a, mut on_b) =
        (member(node_a.local_addr()).await, member(node_b.local_addr()).await);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let publish = |api: std::net::SocketAddr, data: &str, key: &str| {
        let req = http
            .post(format!("http://{api}/api/publish"))
            .header("Idempotency-Key", key)
            .json(&json!({"data": data, "to": {"groups": ["chat:x"]}}));
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let first = publish(api_a.local_addr(), "once", "order-7").await;
    assert!(first.get("duplicate").is_none(), "{first}");
    assert_eq!(first["queued"], 1);
    let again = publish(api_b.local_addr(), "once", "order-7").await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["positions"], first["positions"], "the first node's answer");
    // Also as a batch item on the second node.
    let batch: Value = http
        .post(format!("http://{}/api/publish/batch", api_b.local_addr()))
        .json(&json!({"publishes":[{"data":"once","to":{"groups":["chat:x"]},"idempotency_key":"order-7"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(batch["results"][0]["duplicate"], true, "{batch}");
    assert_eq!(node_b.history_counters().idempotency_duplicates, 2, "counted where answered");
    assert_eq!(node_a.history_counters().idempotency_duplicates, 0);
    // Delivered once, on the node that took it first: the second node's member gets the
    // next message first.
    publish(api_b.local_addr(), "marker-b", "m-b").await;
    publish(api_a.local_addr(), "marker-a", "m-a").await;
    assert_eq!(common::next_data(&mut on_b, 10).await.to_text().unwrap(), "marker-b");
    assert_eq!(common::next_data(&mut on_a, 10).await.to_text().unwrap(), "once");
    assert_eq!(common::next_data(&mut on_a, 10).await.to_text().unwrap(), "marker-a");
    // Redis gone: a keyed publish is refused with 503 (nothing published, the publisher
    // retries), never delivered without its key being checked; unkeyed ones still go.
    drop(r);
    let resp = http
        .post(format!("http://{}/api/publish", api_a.local_addr()))
        .header("Idempotency-Key", "order-8")
        .json(&json!({"data": "unchecked", "to": {"groups": ["chat:x"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap_or_default().contains("idempotency"), "{body}");
    let plain = http
        .post(format!("http://{}/api/publish", api_a.local_addr()))
        .json(&json!({"data": "plain", "to": {"groups": ["chat:x"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(common::next_data(&mut on_a, 10).await.to_text().unwrap(), "plain");
    drop((api_a, api_b));
    node_a.shutdown();
    node_b.shutdown();
}
