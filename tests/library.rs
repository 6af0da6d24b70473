//! The library API (GatewayWorker's `Gateway` parity) over real sockets: a `Handle` used from a
//! plain thread with `Pending::wait`, and `Ctx` inside callbacks.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ringcast::{Applied, Config, ConnId, GroupId, Publish, To, Uid};
use serde_json::json;

const T: Duration = Duration::from_secs(5);

fn g(s: &str) -> GroupId {
    GroupId::new(s, 128).unwrap()
}

fn u(s: &str) -> Uid {
    Uid::new(s, 128).unwrap()
}

async fn welcomed(addr: std::net::SocketAddr) -> (Ws, ConnId) {
    let mut ws = connect(addr).await;
    let w: serde_json::Value =
        serde_json::from_str(next_data(&mut ws, 5).await.to_text().unwrap()).unwrap();
    (ws, w["client_id"].as_str().unwrap().parse().unwrap())
}

async fn text(ws: &mut Ws) -> String {
    next_data(ws, 5).await.into_text().unwrap().to_string()
}

async fn silent(ws: &mut Ws) {
    let r = tokio::time::timeout(Duration::from_millis(300), next_data(ws, 1)).await;
    assert!(r.is_err(), "unexpected frame: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_parity_through_the_handle() {
    let node = start(Config { welcome: Some(true), ..config() });
    let addr = node.local_addr();
    // Three clients on each shard (SO_REUSEPORT spreads them by hash): extra ones are dropped.
    let (mut on0, mut on1) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let c = welcomed(addr).await;
        match c.1.shard() {
            0 if on0.len() < 3 => on0.push(c),
            1 if on1.len() < 3 => on1.push(c),
            _ => {}
        }
        if on0.len() == 3 && on1.len() == 3 {
            break;
        }
    }
    assert_eq!((on0.len(), on1.len()), (3, 3), "clients must spread over both shards");
    let mut clients: Vec<(Ws, ConnId)> = on0.into_iter().chain(on1).collect();
    wait_until(5, "extra clients gone", || node.connections() == 6);
    let shards: BTreeSet<usize> = clients.iter().map(|(_, id)| id.shard()).collect();
    assert_eq!(shards.len(), 2);
    let ids: Vec<ConnId> = clients.iter().map(|c| c.1).collect();
    let h = node.clone();
    let ids2 = ids.clone();
    // Membership and bindings from a plain thread, waiting for each answer.
    tokio::task::spawn_blocking(move || {
        for id in &ids2[..4] {
            assert_eq!(h.join_group(*id, g("room")).wait(T), Ok(Applied::Done));
        }
        assert_eq!(h.join_group(ids2[0], g("room")).wait(T), Ok(Applied::Unchanged));
        assert_eq!(h.bind_uid(ids2[4], u("alice")).wait(T), Ok(Applied::Done));
        assert_eq!(h.bind_uid(ids2[5], u("alice")).wait(T), Ok(Applied::Done));
        assert_eq!(h.bind_uid(ids2[0], u("bob")).wait(T), Ok(Applied::Done));
    })
    .await
    .unwrap();

    // A group publish with an exclusion answers what it queued.
    let h = node.clone();
    let ex = ids[1];
    let report = tokio::task::spawn_blocking(move || {
        h.publish(Publish {
            to: To::Groups(vec![g("room")]),
            exclude: vec![ex],
            message: "hi".into(),
        })
        .wait(T)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.queued, 3);
    for (i, (ws, _)) in clients.iter_mut().enumerate() {
        match i {
            0 | 2 | 3 => assert_eq!(text(ws).await, "hi"),
            _ => silent(ws).await,
        }
    }
    // To a uid (two connections), awaited in async code this time.
    let r = node.publish(Publish::new(To::Uids(vec![u("alice")]), "for alice")).await.unwrap();
    assert_eq!(r.queued, 2);
    assert_eq!(text(&mut clients[4].0).await, "for alice");
    assert_eq!(text(&mut clients[5].0).await, "for alice");
    // A batch: one mesh event per shard for both publishes, one report per publish.
    let p = Publish::new(To::Groups(vec![g("room")]), "x");
    let q = Publish::new(To::Uids(vec![u("bob")]), "y");
    let reports = node.publish_batch(vec![p, q]).await.unwrap();
    assert_eq!((reports[0].queued, reports[1].queued), (4, 1));
    for (ws, _) in clients.iter_mut().take(4) {
        assert_eq!(text(ws).await, "x");
    }
    assert_eq!(text(&mut clients[0].0).await, "y");

    // A group publish goes only to shards with members: make "solo" live on one shard.
    let solo = ids[0];
    node.join_group(solo, g("solo")).await.unwrap();
    let before: Vec<u64> = node.shard_metrics().iter().map(|m| m.mesh_received).collect();
    let r = node.publish(Publish::new(To::Groups(vec![g("solo")]), "s")).await.unwrap();
    assert_eq!(r.queued, 1);
    assert_eq!(text(&mut clients[0].0).await, "s");
    // Counters are published at the end of a shard's loop turn, just after it answered.
    let received = |s: usize| node.shard_metrics()[s].mesh_received;
    wait_until(5, "the member's shard counted the publish", || {
        received(solo.shard()) > before[solo.shard()]
    });
    let other = 1 - solo.shard();
    assert_eq!(received(other), before[other], "the shard without members was not asked");
    node.leave_group(solo, g("solo")).await.unwrap();

    // Queries.
    let info = node.group(g("room")).await.unwrap();
    assert_eq!(info.count, 4);
    assert_eq!(info.uids, vec!["bob".to_owned()]);
    assert_eq!(node.groups(), vec![g("room")]);
    let alice = node.uid(u("alice")).await.unwrap();
    assert!(alice.online);
    assert_eq!(alice.clients.len(), 2);
    assert!(!node.uid(u("carol")).await.unwrap().online);
    let stats = node.stats().await.unwrap();
    assert_eq!((stats.connections, stats.groups, stats.uids), (6, 1, 2));
    assert_eq!(stats.shards.iter().map(|s| s.memberships).sum::<u64>(), 4);

    // Sessions: replace, merge (null deletes), limits.
    let mut s = ringcast::Session::new();
    s.insert("name".into(), json!("Ann"));
    s.insert("level".into(), json!(3));
    assert_eq!(node.set_session(ids[0], s, false).await, Ok(Applied::Done));
    let mut m = ringcast::Session::new();
    m.insert("level".into(), json!(null));
    m.insert("team".into(), json!("red"));
    assert_eq!(node.set_session(ids[0], m, true).await, Ok(Applied::Done));
    let c = node.client(ids[0]).await.unwrap();
    assert!(c.online);
    assert_eq!(serde_json::Value::Object(c.session), json!({"name":"Ann","team":"red"}));
    assert_eq!(c.uid.as_deref(), Some("bob"));
    assert_eq!(c.groups, vec!["room".to_owned()]);
    let mut big = ringcast::Session::new();
    big.insert("blob".into(), json!("x".repeat(10_000)));
    assert!(matches!(node.set_session(ids[0], big, false).await, Ok(Applied::Refused(_))));

    // Leave, unbind, dissolve.
    assert_eq!(node.leave_group(ids[2], g("room")).await, Ok(Applied::Done));
    assert_eq!(node.leave_group(ids[2], g("room")).await, Ok(Applied::Unchanged));
    assert_eq!(node.unbind_uid(ids[0]).await, Ok(Applied::Done));
    assert_eq!(node.dissolve(g("room")).await, Ok(3));
    assert!(node.groups().is_empty());
    let r = node.publish(Publish::new(To::Groups(vec![g("room")]), "nobody")).await.unwrap();
    assert_eq!(r.queued, 0, "a publish that reaches nobody says so");

    // Close with a code; the id then answers NoSuchClient and offline.
    assert_eq!(node.close(ids[3], 4001, "bye").await, Ok(Applied::Done));
    match next_data(&mut clients[3].0, 5).await {
        tokio_tungstenite::tungstenite::Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4001);
            assert_eq!(f.reason.as_str(), "bye");
        }
        other => panic!("{other:?}"),
    }
    drop(clients.remove(3));
    wait_until(5, "closed", || node.connections() == 5);
    assert_eq!(node.join_group(ids[3], g("x")).await, Ok(Applied::NoSuchClient));
    assert!(!node.client(ids[3]).await.unwrap().online);
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_join_groups_and_publish_through_ctx() {
    // on_connect puts every client in the group named by its path; a message is sent to the
    // sender's groups except the sender.
    let node = ringcast::Server::builder()
        .config(config())
        .on_connect(|ctx, id, info| {
            let room = info.path.trim_start_matches("/?room=").to_owned();
            let joined = ctx.join_group(id, GroupId::new(&room, 64).unwrap());
            assert_eq!(joined, Some(Applied::Done), "the connecting shard applies it now");
        })
        .on_message(|ctx, from, msg| {
            let groups = ctx.groups_of(from);
            ctx.publish(Publish { to: To::Groups(groups), exclude: vec![from], message: msg });
        })
        .start()
        .unwrap();
    let url = |room: &str| format!("ws://{}/?room={room}", node.local_addr());
    let mut a = tokio_tungstenite::connect_async(url("red")).await.unwrap().0;
    let mut b = tokio_tungstenite::connect_async(url("red")).await.unwrap().0;
    let mut c = tokio_tungstenite::connect_async(url("blue")).await.unwrap().0;
    wait_until(5, "connected", || node.connections() == 3);
    use futures_util::SinkExt;
    a.send("to red".into()).await.unwrap();
    assert_eq!(text(&mut b).await, "to red");
    silent(&mut a).await;
    silent(&mut c).await;
    node.shutdown();
    node.join().unwrap();
}
