//! History, recovery after reconnect and idempotent publish, end to end: the real `ringcast`
//! binary (two shards), real WebSocket clients (tokio-tungstenite) and a real HTTP client
//! (reqwest), all on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{next_data, Ws};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Kills the daemon when the test ends, however it ends.
struct Daemon {
    child: Child,
    ws: SocketAddr,
    api: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ringcast serve` on free loopback ports with two shards, commands on, clients may join and
/// publish to `chat:*` and `small:*`, plus `extra` flags.
fn daemon(extra: &[&str]) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args(["--shards", "2", "--no-pin", "--on-message", "commands"])
        .args(["--client-join", "chat:*,small:*", "--client-publish-groups", "any"])
        .args(["--commands-per-sec", "0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcast");
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(a) = line.split("listening on ").nth(1) {
                let _ = tx.send((line.contains("HTTP API"), a.trim().to_owned()));
            }
        }
    });
    let (mut ws, mut api) = (None, None);
    while ws.is_none() || api.is_none() {
        let (is_api, a) = rx.recv_timeout(Duration::from_secs(60)).expect("daemon never listened");
        let a: SocketAddr = a.parse().unwrap();
        if is_api {
            api = Some(a);
        } else {
            ws = Some(a);
        }
    }
    Daemon { child, ws: ws.unwrap(), api: api.unwrap() }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn json_of(ws: &mut Ws) -> Value {
    match next_data(ws, 10).await {
        WsMessage::Text(t) => {
            serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("{t}: {e}"))
        }
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// A client and the shard it landed on (from its welcome frame).
async fn client(addr: SocketAddr) -> (Ws, u64) {
    let mut ws = common::connect(addr).await;
    let welcome = json_of(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    (ws, welcome["worker_id"].as_u64().unwrap())
}

/// A client on shard `shard` (SO_REUSEPORT spreads connections; retry until one lands there).
async fn client_on(addr: SocketAddr, shard: u64) -> Ws {
    for _ in 0..200 {
        let (ws, s) = client(addr).await;
        if s == shard {
            return ws;
        }
    }
    panic!("no connection landed on shard {shard}");
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(WsMessage::text(v.to_string())).await.unwrap();
}

/// Next enveloped message: (offset in `group`, data).
async fn message(ws: &mut Ws, group: &str) -> (u64, String) {
    let v = json_of(ws).await;
    assert_eq!(v["type"], "message", "{v}");
    let offset = v["positions"][group]["offset"].as_u64().unwrap_or_else(|| panic!("{v}"));
    (offset, v["data"].as_str().unwrap().to_owned())
}

async fn publish(api: SocketAddr, body: Value, key: Option<&str>) -> (u16, Value) {
    let mut req = http().post(format!("http://{api}/api/publish")).json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_recovers_exactly_the_missed_messages_then_live_while_publishes_go_on() {
    let d = daemon(&["--history-rule", "chat:*=100000,10m"]);
    let (ws_addr, api) = (d.ws, d.api);
    let group = "chat:room";

    // An observer on each shard stays connected throughout: it must see every offset once.
    let mut observers = Vec::new();
    for shard in 0..2 {
        let mut ws = client_on(ws_addr, shard).await;
        send(&mut ws, json!({"cmd":"add_group","group_id":group,"envelope":true})).await;
        let reply = json_of(&mut ws).await;
        assert_eq!((reply["type"].clone(), reply["offset"].clone()), (json!("ok"), json!(0)));
        observers.push(ws);
    }
    // The recovering client starts on shard 0.
    let mut rc = client_on(ws_addr, 0).await;
    send(&mut rc, json!({"cmd":"add_group","group_id":group,"envelope":true,"id":1})).await;
    let reply = json_of(&mut rc).await;
    assert_eq!(reply["id"], 1);
    let epoch = reply["epoch"].as_str().unwrap().to_owned();

    // Publishers: the HTTP API and a client on shard 1 (send_to_group), concurrently, until
    // told to stop; then one last marker.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http_pub = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                let (status, r) =
                    publish(api, json!({"data":format!("h{n}"),"to":{"groups":[group]}}), None)
                        .await;
                assert_eq!(status, 200, "{r}");
                assert!(r["positions"][group]["offset"].as_u64().is_some(), "{r}");
                n += 1;
            }
            n
        })
    };
    let ws_pub = {
        let stop = stop.clone();
        let mut publisher = client_on(ws_addr, 1).await;
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                let m = json!({"cmd":"send_to_group","group_id":group,"message":format!("w{n}")});
                send(&mut publisher, m).await;
                n += 1;
                if n % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            publisher
        })
    };

    // Receive a while, disconnect, stay away while messages flow, reconnect on shard 1.
    let mut last = 0;
    for _ in 0..50 {
        let (offset, _) = message(&mut rc, group).await;
        assert_eq!(offset, last + 1, "live delivery in order before the disconnect");
        last = offset;
    }
    rc.close(None).await.unwrap();
    drop(rc);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut rc = client_on(ws_addr, 1).await;
    send(
        &mut rc,
        json!({"cmd":"add_group","group_id":group,
        "since":{"epoch":epoch,"offset":last},"id":"r"}),
    )
    .await;
    let reply = json_of(&mut rc).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["id"], "r");
    let replayed = reply["replayed"].as_u64().unwrap();
    let seam = reply["offset"].as_u64().unwrap();
    assert_eq!(seam - last, replayed, "the replay is exactly what was missed: {reply}");
    assert!(replayed > 0, "messages were published while away: {reply}");
    // Publishing continues across the seam for a while, then stops.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < (replayed as usize + 500) {
        assert!(Instant::now() < deadline, "recovery too slow: {} messages", got.len());
        got.push(message(&mut rc, group).await.0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent_http = http_pub.await.unwrap();
    let mut publisher = ws_pub.await.unwrap();
    // The marker: after it, nothing else of the group is in flight.
    let (_, r) = publish(api, json!({"data":"end","to":{"groups":[group]}}), None).await;
    let end = r["positions"][group]["offset"].as_u64().unwrap();
    loop {
        let (offset, data) = message(&mut rc, group).await;
        got.push(offset);
        if data == "end" {
            break;
        }
    }
    let want: Vec<u64> = (last + 1..=end).collect();
    assert_eq!(got.len(), want.len(), "gap or duplicate at the seam (replayed {replayed})");
    assert_eq!(got, want, "every message after {last}, in order, exactly once");
    // The observers (one per shard) saw every offset once, in order.
    for ws in &mut observers {
        let mut next = 1;
        loop {
            let (offset, data) = message(ws, group).await;
            assert_eq!(offset, next);
            next += 1;
            if data == "end" {
                break;
            }
        }
        assert_eq!(next - 1, end);
    }
    assert!(sent_http > 0);
    let _ = publisher.close(None).await;
    let m: Value =
        http().get(format!("http://{api}/api/metrics")).send().await.unwrap().json().await.unwrap();
    assert_eq!(m["history_recovered"], 1, "{m}");
    assert_eq!(m["mesh_dropped"], 0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_and_epoch_change_say_recovered_false() {
    let rule = ["--history-rule", "small:*=5,10m"];
    let d = daemon(&rule);
    let (mut ws, _) = client(d.ws).await;
    send(&mut ws, json!({"cmd":"add_group","group_id":"small:1","envelope":true})).await;
    let epoch = json_of(&mut ws).await["epoch"].as_str().unwrap().to_owned();
    for i in 0..10 {
        let (s, r) =
            publish(d.api, json!({"data":format!("m{i}"),"to":{"groups":["small:1"]}}), None).await;
        assert_eq!(s, 200, "{r}");
    }
    for want in 1..=10 {
        assert_eq!(message(&mut ws, "small:1").await.0, want);
    }
    let (mut late, _) = client(d.ws).await;
    // Kept: offsets 6..=10. From 5: recovered (exactly five). From 4: offset 5 is gone.
    send(
        &mut late,
        json!({"cmd":"add_group","group_id":"small:1","since":{"epoch":epoch,"offset":5}}),
    )
    .await;
    let r = json_of(&mut late).await;
    assert_eq!((r["recovered"].clone(), r["replayed"].clone()), (json!(true), json!(5)), "{r}");
    for want in 6..=10 {
        assert_eq!(message(&mut late, "small:1").await.0, want);
    }
    let (mut old, _) = client(d.ws).await;
    send(
        &mut old,
        json!({"cmd":"add_group","group_id":"small:1","since":{"epoch":epoch,"offset":4}}),
    )
    .await;
    let r = json_of(&mut old).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["reason"], "position older than the history keeps");
    assert_eq!(r["offset"], 10, "the position to resynchronise from: {r}");
    // Still joined: live messages come.
    publish(d.api, json!({"data":"live","to":{"groups":["small:1"]}}), None).await;
    assert_eq!(message(&mut old, "small:1").await, (11, "live".to_owned()));

    // A restart is an epoch change: the same position is not recoverable on the new process.
    drop((ws, late, old));
    drop(d);
    let d = daemon(&rule);
    let (mut ws, _) = client(d.ws).await;
    send(
        &mut ws,
        json!({"cmd":"add_group","group_id":"small:1","since":{"epoch":epoch,"offset":10}}),
    )
    .await;
    let r = json_of(&mut ws).await;
    assert_eq!(
        (r["recovered"].clone(), r["reason"].clone()),
        (json!(false), json!("epoch changed")),
        "{r}"
    );
    assert_ne!(r["epoch"], json!(epoch));
    assert_eq!(r["offset"], 0);
    // A group without history cannot recover either, and says why.
    send(
        &mut ws,
        json!({"cmd":"add_group","group_id":"chat:x","since":{"epoch":epoch,"offset":1}}),
    )
    .await;
    let r = json_of(&mut ws).await;
    assert_eq!(
        (r["recovered"].clone(), r["reason"].clone()),
        (json!(false), json!("group keeps no history")),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_by_command_and_by_http() {
    let d = daemon(&["--history-rule", "chat:*=3,10m"]);
    let mut epoch = String::new();
    for i in 1..=4 {
        let (_, r) =
            publish(d.api, json!({"data":format!("m{i}"),"to":{"groups":["chat:h"]}}), None).await;
        assert_eq!(r["positions"]["chat:h"]["offset"], i, "{r}");
        epoch = r["positions"]["chat:h"]["epoch"].as_str().unwrap().to_owned();
    }
    let (mut ws, _) = client(d.ws).await;
    send(&mut ws, json!({"cmd":"history","group_id":"chat:h","limit":2,"id":7})).await;
    let r = json_of(&mut ws).await;
    assert_eq!(r["type"], "history");
    assert_eq!(r["id"], 7);
    assert_eq!(r["messages"], json!([{"offset":3,"data":"m3"},{"offset":4,"data":"m4"}]), "{r}");
    assert_eq!((r["offset"].clone(), r["more"].clone()), (json!(4), json!(false)));
    send(&mut ws, json!({"cmd":"history","group_id":"chat:h","since":{"epoch":epoch,"offset":2}}))
        .await;
    let r = json_of(&mut ws).await;
    assert_eq!(r["recovered"], true);
    assert_eq!(r["messages"].as_array().unwrap().len(), 2);
    send(&mut ws, json!({"cmd":"history","group_id":"chat:h","since":{"epoch":epoch,"offset":0}}))
        .await;
    let r = json_of(&mut ws).await;
    assert_eq!((r["recovered"].clone(), r["messages"].clone()), (json!(false), json!([])), "{r}");
    // Same permissions as joining: a group not open to clients is refused.
    send(&mut ws, json!({"cmd":"history","group_id":"secret","id":8})).await;
    let r = json_of(&mut ws).await;
    assert_eq!(r["type"], "error", "{r}");
    // A plain member (no envelope) still gets seed 004's plain text.
    send(&mut ws, json!({"cmd":"add_group","group_id":"chat:h","id":9})).await;
    // Joined before the publish is sent (the reply comes after the join is applied).
    assert_eq!(json_of(&mut ws).await["id"], 9);
    publish(d.api, json!({"data":"plain","to":{"groups":["chat:h"]}}), None).await;
    assert_eq!(next_data(&mut ws, 10).await, WsMessage::text("plain"));

    let get = |q: String| {
        let url = format!("http://{}/api/groups/{q}", d.api);
        async move {
            let r = http().get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, r) = get("chat:h/history?limit=2".into()).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["messages"], json!([{"offset":4,"data":"m4"},{"offset":5,"data":"plain"}]));
    assert_eq!((r["epoch"].clone(), r["offset"].clone()), (json!(epoch), json!(5)));
    let (s, r) = get(format!("chat:h/history?since_epoch={epoch}&since_offset=3")).await;
    assert_eq!(s, 200);
    assert_eq!(r["recovered"], true);
    assert_eq!(r["messages"].as_array().unwrap().len(), 2, "{r}");
    let (s, r) = get(format!("chat:h/history?since_epoch={epoch}&since_offset=1")).await;
    assert_eq!((s, r["recovered"].clone()), (200, json!(false)), "{r}");
    let (s, r) = get("nohistory/history".into()).await;
    assert_eq!(s, 404, "{r}");
    let (s, r) = get("chat:h/history?since_offset=1".into()).await;
    assert_eq!(s, 400, "{r}");
    let (s, _) = get("chat:h/history?limit=0".into()).await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_twice_delivers_once() {
    let d = daemon(&["--history-rule", "chat:*=100,10m", "--idempotency-window", "1m"]);
    let (mut ws, _) = client(d.ws).await;
    send(&mut ws, json!({"cmd":"add_group","group_id":"chat:i","envelope":true})).await;
    json_of(&mut ws).await;
    let body = json!({"data":"once","to":{"groups":["chat:i"]}});
    let (s1, first) = publish(d.api, body.clone(), Some("order-42")).await;
    assert_eq!(s1, 200, "{first}");
    let (s2, second) = publish(d.api, body.clone(), Some("order-42")).await;
    assert_eq!(s2, 200, "{second}");
    assert_eq!(second["duplicate"], true, "{second}");
    assert_eq!(second["positions"], first["positions"], "the same answer");
    assert_eq!(second["queued"], first["queued"]);
    // The key in the body works the same; a different key publishes.
    let keyed = json!({"data":"once","to":{"groups":["chat:i"]},"idempotency_key":"order-42"});
    let (_, third) = publish(d.api, keyed, None).await;
    assert_eq!(third["duplicate"], true);
    let (_, r) =
        publish(d.api, json!({"data":"two","to":{"groups":["chat:i"]}}), Some("order-43")).await;
    assert!(r.get("duplicate").is_none(), "{r}");
    // Batch items: the repeated item is answered from memory and not sent again.
    let batch = json!({"publishes":[
        {"data":"three","to":{"groups":["chat:i"]},"idempotency_key":"b-1"},
        {"data":"two","to":{"groups":["chat:i"]},"idempotency_key":"order-43"}]});
    let r: Value = http()
        .post(format!("http://{}/api/publish/batch", d.api))
        .json(&batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["results"][0].get("duplicate").is_none(), "{r}");
    assert_eq!(r["results"][1]["duplicate"], true, "{r}");
    // A bad key is a 400.
    let (s, _) = publish(d.api, body.clone(), Some(&"k".repeat(300))).await;
    assert_eq!(s, 400);
    publish(d.api, json!({"data":"end","to":{"groups":["chat:i"]}}), None).await;
    let mut seen = Vec::new();
    loop {
        let (_, data) = message(&mut ws, "chat:i").await;
        if data == "end" {
            break;
        }
        seen.push(data);
    }
    assert_eq!(seen, ["once", "two", "three"], "each keyed message delivered once");
    let m: Value = http()
        .get(format!("http://{}/api/metrics", d.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["idempotency_duplicates"], 3, "{m}");
}

/// `/metrics` lines: series (with labels) → value.
async fn prometheus(api: SocketAddr) -> std::collections::HashMap<String, f64> {
    let body = http().get(format!("http://{api}/metrics")).send().await.unwrap().text().await;
    body.unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// `[history]` in a config file starts a node whose history works, and the history metrics
/// on `/metrics` move with appends, evictions, recoveries and duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_section_in_the_config_file_and_its_metrics() {
    let dir = std::env::temp_dir().join(format!("ringcast-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ringcast.toml");
    std::fs::write(
        &file,
        "[history]\nrules = [{ pattern = \"chat:*\", messages_max = 3, age_max = \"10m\" }]\n\
         idempotency_window = \"1m\"\nidempotency_keys_max = 100\n",
    )
    .unwrap();
    let d = daemon(&["--config", file.to_str().unwrap()]);
    let before = prometheus(d.api).await;
    assert_eq!(before["ringcast_history_appends_total"], 0.0);
    assert_eq!(before["ringcast_history_groups"], 0.0);
    assert_eq!(before["ringcast_idempotency_duplicates_total"], 0.0);

    let (mut ws, _) = client(d.ws).await;
    send(&mut ws, json!({"cmd":"add_group","group_id":"chat:m","envelope":true})).await;
    let epoch = json_of(&mut ws).await["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        let body = json!({"data":format!("m{i}"),"to":{"groups":["chat:m"]}});
        let (s, r) = publish(d.api, body, Some(&format!("k{i}"))).await;
        assert_eq!(s, 200, "{r}");
    }
    let (_, dup) =
        publish(d.api, json!({"data":"m5","to":{"groups":["chat:m"]}}), Some("k5")).await;
    assert_eq!(dup["duplicate"], true);
    for want in 1..=5 {
        assert_eq!(message(&mut ws, "chat:m").await.0, want);
    }
    // The rule keeps 3 of 5: from offset 3 recovers (4, 5); from 1 does not (2 is gone).
    for (from, ok) in [(3, true), (1, false)] {
        let (mut late, _) = client(d.ws).await;
        send(
            &mut late,
            json!({"cmd":"add_group","group_id":"chat:m","since":{"epoch":epoch,"offset":from}}),
        )
        .await;
        assert_eq!(json_of(&mut late).await["recovered"], ok);
    }
    let m = prometheus(d.api).await;
    assert_eq!(m["ringcast_history_appends_total"], 5.0);
    assert_eq!(m["ringcast_history_groups"], 1.0);
    assert!(m["ringcast_history_bytes"] > 0.0);
    assert_eq!(m["ringcast_history_bytes_max"], (256u64 << 20) as f64);
    assert_eq!(m["ringcast_history_evictions_total{reason=\"count_or_age\"}"], 2.0);
    assert_eq!(m["ringcast_history_evictions_total{reason=\"bytes\"}"], 0.0);
    assert_eq!(m["ringcast_history_recoveries_total{result=\"ok\"}"], 1.0);
    assert_eq!(m["ringcast_history_recoveries_total{result=\"failed\"}"], 1.0);
    assert_eq!(m["ringcast_idempotency_duplicates_total"], 1.0);
    assert_eq!(m["ringcast_idempotency_keys"], 5.0);
    drop(d);

    // A node without rules exports no history series, but idempotency (keys work anyway).
    let d = daemon(&[]);
    let m = prometheus(d.api).await;
    assert!(!m.keys().any(|k| k.starts_with("ringcast_history")), "{m:?}");
    assert_eq!(m["ringcast_idempotency_keys"], 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
