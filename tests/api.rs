//! The HTTP push API end to end: a node in process (2 unpinned shards on 127.0.0.1:0), the API
//! on 127.0.0.1:0, real WebSocket clients (tokio-tungstenite) and a real HTTP client (reqwest).
//! Every response, success or error, must be JSON.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use reqwest::{Method, StatusCode};
use ringcast::api::{self, ApiConfig, ApiServer};
use ringcast::{Config, Handle, Server};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A node with the welcome frame on, so clients learn their ids.
fn node_config() -> Config {
    Config { welcome: Some(true), ..config() }
}

fn api_config() -> ApiConfig {
    ApiConfig { listen: "127.0.0.1:0".parse().unwrap(), ..ApiConfig::default() }
}

struct Http {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
}

/// A response: status, headers and the parsed JSON body (every answer must be JSON).
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Http {
    fn new(addr: SocketAddr) -> Http {
        let client =
            reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
        Http { base: format!("http://{addr}"), client, token: None }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Answer {
        let rb = match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let r = rb.send().await.expect("HTTP request");
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        assert_eq!(
            headers.get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "{status} {text}"
        );
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        if !status.is_success() {
            assert!(body["error"].is_string(), "error answers carry an error: {text}");
        }
        Answer { status, headers, body }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        self.send(rb).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Option<Value>) -> Answer {
        self.call(Method::PUT, path, body).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None).await
    }
}

struct Fixture {
    node: Handle,
    api: Option<ApiServer>,
    http: Http,
}

impl Fixture {
    fn start(node: Config, api: ApiConfig) -> Fixture {
        Fixture::with_node(ringcast::Server::builder().config(node).start().expect("start"), api)
    }

    fn with_node(node: Handle, api: ApiConfig) -> Fixture {
        let server = api::spawn(node.clone(), api).expect("spawn the API");
        let http = Http::new(server.local_addr());
        Fixture { node, api: Some(server), http }
    }

    fn stop(mut self) {
        if let Some(api) = self.api.take() {
            api.shutdown();
        }
        self.node.shutdown();
        self.node.join().unwrap();
    }
}

/// A WebSocket client and what its welcome frame said.
struct Client {
    ws: Ws,
    id: String,
    worker: u64,
    connection: u64,
}

async fn client(addr: SocketAddr) -> Client {
    let mut ws = connect(addr).await;
    let welcome: Value = match next_data(&mut ws, 10).await {
        WsMessage::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected the welcome frame, got {other:?}"),
    };
    assert_eq!(welcome["type"], "welcome");
    Client {
        id: welcome["client_id"].as_str().unwrap().to_owned(),
        worker: welcome["worker_id"].as_u64().unwrap(),
        connection: welcome["connection_id"].as_u64().unwrap(),
        ws,
    }
}

/// At least `per_shard` clients on each of the node's 2 shards (and maybe a few more).
async fn clients_on_both_shards(addr: SocketAddr, per_shard: usize) -> [Vec<Client>; 2] {
    let mut by_shard: [Vec<Client>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..200 {
        if by_shard.iter().all(|v| v.len() >= per_shard) {
            return by_shard;
        }
        let c = client(addr).await;
        by_shard[c.worker as usize].push(c);
    }
    panic!("SO_REUSEPORT put 200 clients on one shard");
}

async fn text(c: &mut Client) -> String {
    match next_data(&mut c.ws, 10).await {
        WsMessage::Text(t) => t.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Publish a marker to everyone, then check each client's next frame is `expected` (or the
/// marker when `None`): so a client got exactly what it should have, once, and nothing else.
async fn expect_exactly(http: &Http, clients: &mut [(&mut Client, Option<&str>)], marker: &str) {
    let r = http.post("/api/publish", json!({"data": marker, "to": {"all": true}})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for (c, expected) in clients.iter_mut() {
        if let Some(e) = expected {
            assert_eq!(text(c).await, *e, "client {}", c.id);
        }
        assert_eq!(text(c).await, marker, "client {} got something else", c.id);
    }
}

// ---- start-up and auth ------------------------------------------------------------------------

#[tokio::test]
async fn non_loopback_without_token_refuses_to_start() {
    let node = Server::builder().config(node_config()).start().unwrap();
    let cfg = ApiConfig { listen: "0.0.0.0:0".parse().unwrap(), ..ApiConfig::default() };
    let e = api::spawn(node.clone(), cfg).err().expect("must refuse");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("token"), "{e}");
    // A bind error is returned too, before any thread starts.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = ApiConfig { listen: taken.local_addr().unwrap(), ..ApiConfig::default() };
    assert!(api::spawn(node.clone(), cfg).is_err());
    node.shutdown();
    node.join().unwrap();
}

#[tokio::test]
async fn a_token_is_required_on_every_request_but_healthz() {
    let cfg = ApiConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        token: Some("s3cret-token".into()),
        ..ApiConfig::default()
    };
    let mut f = Fixture::start(node_config(), cfg);
    let port = f.api.as_ref().unwrap().local_addr().port();
    f.http.base = format!("http://127.0.0.1:{port}");

    for path in ["/api/stats", "/api/groups", "/?content=x", "/no/such/route"] {
        let r = f.http.get(path).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert_eq!(r.body["error"], "missing bearer token");
    }
    f.http.token = Some("wrong".into());
    let r = f.http.get("/api/stats").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid bearer token"))
    );
    f.http.token = Some("s3cret-token-and-more".into());
    assert_eq!(f.http.get("/api/stats").await.status, 401);
    f.http.token = None;
    assert_eq!(f.http.get("/healthz").await.body, json!({"ok": true}));

    f.http.token = Some("s3cret-token".into());
    let r = f.http.get("/api/stats").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let stats = f.api.as_ref().unwrap().stats();
    assert_eq!(stats.unauthorized, 6);
    assert!(stats.requests >= 8);
    f.stop();
}

/// Without a token, a browser on this machine must not become a way in for any web site it shows
/// (CSRF through the seed's `GET /?content=`, DNS rebinding); curl and the same-origin page pass.
#[tokio::test]
async fn without_a_token_cross_site_browser_requests_are_refused() {
    let f = Fixture::start(node_config(), api_config());
    let url = format!("{}/?content=hello", f.http.base);
    let attempts: [(&str, &str); 4] = [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
        ("host", "evil.example"),
        ("host", "rebind.evil.example:2021"),
    ];
    for (name, value) in attempts {
        let r = f.http.send(f.http.client.get(&url).header(name, value)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {value}: {}", r.body);
        assert!(r.body["error"].as_str().unwrap().contains("no token"), "{}", r.body);
    }
    // What curl, scripts and the same-origin page send still works.
    let port = f.api.as_ref().unwrap().local_addr().port();
    let same = format!("http://127.0.0.1:{port}");
    let r = f.http.send(f.http.client.get(&url).header("origin", same.as_str())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = f.http.send(f.http.client.get(&url).header("sec-fetch-site", "same-origin")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = f.http.send(f.http.client.get(&url).header("host", format!("localhost:{port}"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(f.api.as_ref().unwrap().stats().forbidden, 4);
    f.stop();
}

// ---- errors -----------------------------------------------------------------------------------

#[tokio::test]
async fn every_error_is_json_with_its_status() {
    let cfg = ApiConfig { body_bytes_max: 1024, group_id_bytes_max: 16, ..api_config() };
    let f = Fixture::start(node_config(), cfg);
    let h = &f.http;

    let r = h.get("/api/nope").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no such endpoint"))
    );
    let r = h.get("/api/publish").await;
    assert_eq!(r.status, 405);
    assert!(r.headers.contains_key("allow"));
    let r = h.call(Method::DELETE, "/api/stats", None).await;
    assert_eq!(r.status, 405);

    // 413: a body over body_bytes_max.
    let big = "x".repeat(4096);
    let r = h.post("/api/publish", json!({"data": big, "to": {"all": true}})).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("1024"));

    // 415: not JSON.
    let rb = h.client.post(format!("{}/api/publish", h.base)).body("data=x");
    let r = h.send(rb).await;
    assert_eq!(r.status, 415);
    let rb = h
        .client
        .post(format!("{}/api/publish", h.base))
        .header("content-type", "text/plain")
        .body(r#"{"data":"x","to":{"all":true}}"#);
    assert_eq!(h.send(rb).await.status, 415);
    // A charset parameter is fine.
    let rb = h
        .client
        .post(format!("{}/api/publish", h.base))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"data":"x","to":{"all":true}}"#);
    assert_eq!(h.send(rb).await.status, 200);

    // 400: malformed JSON, missing or bad fields, each named.
    let rb = h
        .client
        .post(format!("{}/api/publish", h.base))
        .header("content-type", "application/json")
        .body("{\"data\":");
    let r = h.send(rb).await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().starts_with("malformed JSON"), "{}", r.body);
    for (body, field) in [
        (json!({"data": "x"}), "to: missing"),
        (json!({"data": "x", "to": {}}), "to: exactly one"),
        (json!({"to": {"all": true}}), "data: missing"),
        (json!({"data": "x", "to": {"groups": ["a".repeat(17)]}}), "to.groups[0]: longer than 16"),
        (json!({"data": "x", "to": {"clients": ["abc"]}}), "to.clients[0]: malformed client id"),
        (json!({"data": "x", "to": {"all": true}, "exclude": ["x"]}), "exclude[0]: malformed"),
        (json!({"data": "x", "to": {"all": true}, "extra": 1}), "unknown field `extra`"),
    ] {
        let r = h.post("/api/publish", body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        let e = r.body["error"].as_str().unwrap();
        assert!(e.contains(field), "{body}: {e}");
    }
    let r = h.get("/api/clients/not-a-client-id").await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().starts_with("client_id: "));
    let r = h.get(&format!("/api/groups/{}", "g".repeat(17))).await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().starts_with("group: longer than 16"));
    let r = h.get("/api/uids/%0A").await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().starts_with("uid: "));

    let s = f.api.as_ref().unwrap().stats();
    assert_eq!((s.not_found, s.method_not_allowed, s.payload_too_large), (1, 2, 1));
    assert_eq!((s.unsupported_media_type, s.bad_request), (2, 11));
    f.stop();
}

// ---- publish ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_publish_across_shards_excludes_and_deduplicates() {
    let f = Fixture::start(node_config(), api_config());
    let h = &f.http;
    let [mut s0, mut s1] = clients_on_both_shards(f.node.local_addr(), 2).await;
    let (a, b) = {
        let mut it = s0.drain(..2);
        (it.next().unwrap(), it.next().unwrap())
    };
    let (c, d) = {
        let mut it = s1.drain(..2);
        (it.next().unwrap(), it.next().unwrap())
    };
    let (mut a, mut b, mut c, mut d) = (a, b, c, d);
    // a is in both groups, c and d in one each, b in none.
    for (g, who) in [("g1", &a), ("g1", &c), ("g2", &a), ("g2", &d)] {
        let r = h.put(&format!("/api/groups/{g}/clients/{}", who.id), None).await;
        assert_eq!(r.body, json!({"ok": true, "changed": true}));
    }
    let r = h
        .post(
            "/api/publish",
            json!({"data": "to-groups", "to": {"groups": ["g1", "g2"]}, "exclude": [c.id]}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"queued": 2, "shards_missed": 0, "slow_consumers": 0}));
    let mut rest: Vec<Client> = s0.into_iter().chain(s1).collect();
    let mut expect: Vec<(&mut Client, Option<&str>)> = vec![
        (&mut a, Some("to-groups")),
        (&mut b, None),
        (&mut c, None),
        (&mut d, Some("to-groups")),
    ];
    expect.extend(rest.iter_mut().map(|c| (c, None)));
    expect_exactly(h, &mut expect, "marker-1").await;

    // Binary frames and client targets.
    let r = h
        .post("/api/publish", json!({"binary_base64": "AAEC", "to": {"clients": [b.id, d.id]}}))
        .await;
    assert_eq!(r.body["queued"], 2);
    for c in [&mut b, &mut d] {
        assert_eq!(next_data(&mut c.ws, 10).await, WsMessage::binary(vec![0u8, 1, 2]));
    }
    // Everyone, minus one.
    let r = h
        .post("/api/publish", json!({"data": "all", "to": {"all": true}, "exclude": [a.id]}))
        .await;
    assert_eq!(r.body["queued"].as_u64().unwrap(), 3 + rest.len() as u64);
    let mut expect: Vec<(&mut Client, Option<&str>)> =
        vec![(&mut a, None), (&mut b, Some("all")), (&mut c, Some("all")), (&mut d, Some("all"))];
    expect.extend(rest.iter_mut().map(|c| (c, Some("all"))));
    expect_exactly(h, &mut expect, "marker-2").await;

    // An unknown group reaches nobody; that is not an error.
    let r = h.post("/api/publish", json!({"data": "x", "to": {"groups": ["nobody"]}})).await;
    assert_eq!(r.body, json!({"queued": 0, "shards_missed": 0, "slow_consumers": 0}));
    f.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publish_answers_one_report_per_publish_in_order() {
    let f = Fixture::start(node_config(), api_config());
    let h = &f.http;
    let [mut s0, mut s1] = clients_on_both_shards(f.node.local_addr(), 1).await;
    let mut a = s0.remove(0);
    let mut b = s1.remove(0);
    h.put(&format!("/api/groups/room/clients/{}", a.id), None).await;
    h.put(&format!("/api/groups/room/clients/{}", b.id), None).await;
    let r = h
        .post(
            "/api/publish/batch",
            json!({"publishes": [
                {"data": "one", "to": {"groups": ["room"]}},
                {"data": "two", "to": {"clients": [b.id]}},
                {"data": "three", "to": {"groups": ["room"]}, "exclude": [a.id]},
                {"data": "none", "to": {"groups": ["empty"]}},
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let queued: Vec<u64> = r.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["queued"].as_u64().unwrap())
        .collect();
    assert_eq!(queued, [2, 1, 1, 0]);
    assert_eq!(text(&mut a).await, "one");
    for want in ["one", "two", "three"] {
        assert_eq!(text(&mut b).await, want);
    }
    let mut expect: Vec<(&mut Client, Option<&str>)> = vec![(&mut a, None), (&mut b, None)];
    let mut rest: Vec<Client> = s0.into_iter().chain(s1).collect();
    expect.extend(rest.iter_mut().map(|c| (c, None)));
    expect_exactly(h, &mut expect, "after-batch").await;

    // A bad item rejects the whole batch, naming it; nothing is sent.
    let r = h
        .post(
            "/api/publish/batch",
            json!({"publishes": [{"data": "ok", "to": {"all": true}}, {"data": "bad"}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().starts_with("publishes[1].to: missing"));
    // At most 10,000 publishes.
    let many: Vec<Value> =
        (0..10_001).map(|_| json!({"data": "x", "to": {"groups": ["nobody"]}})).collect();
    let r = h.post("/api/publish/batch", json!({ "publishes": many })).await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().contains("10000"), "{}", r.body);
    let r = h.post("/api/publish/batch", json!({"publishes": []})).await;
    assert_eq!(r.body, json!({"results": []}));
    // Nothing from the refused batches arrived.
    let mut expect: Vec<(&mut Client, Option<&str>)> = vec![(&mut a, None), (&mut b, None)];
    expect_exactly(h, &mut expect, "after-refusals").await;
    assert_eq!(f.api.as_ref().unwrap().stats().messages_published, 4 + 2);
    f.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_forms() {
    let f = Fixture::start(node_config(), api_config());
    let h = &f.http;
    let [mut s0, mut s1] = clients_on_both_shards(f.node.local_addr(), 1).await;
    let mut a = s0.remove(0);
    let mut b = s1.remove(0);
    let mut rest: Vec<Client> = s0.into_iter().chain(s1).collect();
    let everyone = 2 + rest.len() as u64;

    // Broadcast, content as is (query decoding only).
    let r = h.get("/?content=hello+%E2%9C%93%20world").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"queued": everyone, "shards_missed": 0, "slow_consumers": 0}));
    let mut expect: Vec<(&mut Client, Option<&str>)> =
        vec![(&mut a, Some("hello ✓ world")), (&mut b, Some("hello ✓ world"))];
    expect.extend(rest.iter_mut().map(|c| (c, Some("hello ✓ world"))));
    expect_exactly(h, &mut expect, "m1").await;

    // The seed's worker/connection pair, from the welcome frame.
    let r = h
        .get(&format!("/?to_worker_id={}&to_connection_id={}&content=pair", b.worker, b.connection))
        .await;
    assert_eq!(r.body["queued"], 1);
    // A client id, by POST form body.
    let rb = h
        .client
        .post(format!("{}/", h.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("content=form&to_client_id={}", a.id));
    let r = h.send(rb).await;
    assert_eq!(r.body["queued"], 1, "{}", r.body);
    let mut expect: Vec<(&mut Client, Option<&str>)> =
        vec![(&mut a, Some("form")), (&mut b, Some("pair"))];
    expect.extend(rest.iter_mut().map(|c| (c, None)));
    expect_exactly(h, &mut expect, "m2").await;

    // Groups, repeated; a member of both receives once.
    h.put(&format!("/api/groups/ga/clients/{}", a.id), None).await;
    h.put(&format!("/api/groups/gb/clients/{}", b.id), None).await;
    h.put(&format!("/api/groups/gb/clients/{}", a.id), None).await;
    let r = h.call(Method::POST, "/?content=grp&to_group=ga&to_group=gb", None).await;
    assert_eq!(r.body["queued"], 2);
    let mut expect: Vec<(&mut Client, Option<&str>)> =
        vec![(&mut a, Some("grp")), (&mut b, Some("grp"))];
    expect.extend(rest.iter_mut().map(|c| (c, None)));
    expect_exactly(h, &mut expect, "m3").await;

    // Refusals.
    for (q, want) in [
        ("/", "content: missing"),
        ("/?content=", "content: missing or empty"),
        ("/?content=x&to_worker_id=0", "to_connection_id: missing"),
        ("/?content=x&to_client_id=zz", "to_client_id: malformed"),
    ] {
        let r = h.get(q).await;
        assert_eq!(r.status, 400, "{q}");
        assert!(r.body["error"].as_str().unwrap().starts_with(want), "{q}: {}", r.body);
    }
    let r = h.post("/?content=x", json!({"content": "x"})).await;
    assert_eq!(r.status, 415);
    // A HEAD probe does not publish.
    let r = h.client.head(format!("{}/?content=probe", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // A stale pair (no such connection) reaches nobody.
    let r = h.get(&format!("/?to_worker_id={}&to_connection_id=999&content=x", b.worker)).await;
    assert_eq!(r.body["queued"], 0);
    f.stop();
}

// ---- groups, uids, sessions, close ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_membership_endpoints() {
    let node = Config {
        permissions: ringcast::config::Permissions {
            groups_per_connection_max: 2,
            ..Default::default()
        },
        ..node_config()
    };
    let f = Fixture::start(node, api_config());
    let h = &f.http;
    let [mut s0, mut s1] = clients_on_both_shards(f.node.local_addr(), 1).await;
    let (a, b) = (s0.remove(0), s1.remove(0));

    let join = |g: &str, c: &str| format!("/api/groups/{g}/clients/{c}");
    assert_eq!(
        h.put(&join("room%2F1", &a.id), None).await.body,
        json!({"ok": true, "changed": true})
    );
    assert_eq!(
        h.put(&join("room%2F1", &a.id), None).await.body,
        json!({"ok": true, "changed": false})
    );
    assert_eq!(h.put(&join("room%2F1", &b.id), None).await.body["changed"], true);
    assert_eq!(h.put(&join("other", &a.id), None).await.body["changed"], true);
    // The third group for a is over groups_per_connection_max: 409 with the reason.
    let r = h.put(&join("third", &a.id), None).await;
    assert_eq!(r.status, 409);
    assert!(r.body["error"].as_str().unwrap().contains("too many groups"), "{}", r.body);

    h.put(&format!("/api/clients/{}/uid", b.id), Some(json!({"uid": "user-b"}))).await;
    let r = h.get("/api/groups/room%2F1").await;
    let mut clients = vec![a.id.clone(), b.id.clone()];
    clients.sort();
    assert_eq!(r.body, json!({"count": 2, "clients": clients, "uids": ["user-b"]}));
    assert_eq!(h.get("/api/groups").await.body, json!({"groups": ["other", "room/1"]}));
    // An empty group is just empty.
    assert_eq!(
        h.get("/api/groups/empty").await.body,
        json!({"count": 0, "clients": [], "uids": []})
    );

    assert_eq!(h.delete(&join("other", &a.id)).await.body, json!({"ok": true, "changed": true}));
    assert_eq!(h.delete(&join("other", &a.id)).await.body, json!({"ok": true, "changed": false}));
    assert_eq!(h.delete("/api/groups/room%2F1").await.body, json!({"removed": 2}));
    assert_eq!(h.delete("/api/groups/room%2F1").await.body, json!({"removed": 0}));
    assert_eq!(h.get("/api/groups").await.body, json!({"groups": []}));
    assert_eq!(h.delete("/api/groups/%0A").await.status, 400);

    // Unknown clients: 404 (a well-formed id of this node no connection holds, or another
    // node's); malformed: 400.
    let gone = stale_id(&a.id);
    for c in [gone.as_str(), "00000000000000000000000000ff"] {
        let r = h.put(&join("room", c), None).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("client not found"))
        );
        assert_eq!(h.delete(&join("room", c)).await.status, 404);
    }
    assert_eq!(h.put(&join("room", "xyz"), None).await.status, 400);
    assert_eq!(h.put(&join("a%0Ab", &a.id), None).await.status, 400);
    f.stop();
}

/// `id` with its generation bumped: the same slot, a connection that never existed.
fn stale_id(id: &str) -> String {
    let generation = u32::from_str_radix(&id[20..28], 16).unwrap().wrapping_add(7);
    format!("{}{generation:08x}", &id[..20])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_bind_unbind_and_query() {
    let f = Fixture::start(node_config(), api_config());
    let h = &f.http;
    let [mut s0, mut s1] = clients_on_both_shards(f.node.local_addr(), 1).await;
    let (mut a, mut b) = (s0.remove(0), s1.remove(0));
    let uid = |c: &Client| format!("/api/clients/{}/uid", c.id);

    assert_eq!(h.get("/api/uids/alice").await.body, json!({"online": false, "clients": []}));
    assert_eq!(
        h.put(&uid(&a), Some(json!({"uid": "alice"}))).await.body,
        json!({"ok": true, "changed": true})
    );
    assert_eq!(h.put(&uid(&a), Some(json!({"uid": "alice"}))).await.body["changed"], false);
    assert_eq!(h.put(&uid(&b), Some(json!({"uid": "alice"}))).await.body["changed"], true);
    let mut both = vec![a.id.clone(), b.id.clone()];
    both.sort();
    assert_eq!(h.get("/api/uids/alice").await.body, json!({"online": true, "clients": both}));
    assert_eq!(h.get(&format!("/api/clients/{}", a.id)).await.body["uid"], "alice");

    // A publish to the uid reaches both of its connections.
    let r = h.post("/api/publish", json!({"data": "hi alice", "to": {"uids": ["alice"]}})).await;
    assert_eq!(r.body["queued"], 2);
    assert_eq!(text(&mut a).await, "hi alice");
    assert_eq!(text(&mut b).await, "hi alice");

    assert_eq!(h.delete(&uid(&a)).await.body, json!({"ok": true, "changed": true}));
    assert_eq!(h.delete(&uid(&a)).await.body, json!({"ok": true, "changed": false}));
    assert_eq!(h.get("/api/uids/alice").await.body, json!({"online": true, "clients": [b.id]}));
    // Rebinding moves b to another uid.
    h.put(&uid(&b), Some(json!({"uid": "bob"}))).await;
    assert_eq!(h.get("/api/uids/alice").await.body["online"], false);
    assert_eq!(h.get(&format!("/api/clients/{}", a.id)).await.body["uid"], Value::Null);

    // Refusals.
    let r = h.put(&uid(&a), Some(json!({"uid": ""}))).await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().starts_with("uid: "));
    let r = h.put(&uid(&a), Some(json!({"user": "x"}))).await;
    assert_eq!(r.status, 400);
    let r =
        h.put(&format!("/api/clients/{}/uid", stale_id(&a.id)), Some(json!({"uid": "x"}))).await;
    assert_eq!(r.status, 404);
    assert_eq!(h.delete(&format!("/api/clients/{}/uid", stale_id(&a.id))).await.status, 404);
    f.stop();
}

#[tokio::test]
async fn sessions_set_merge_and_get() {
    let node = Config { session_bytes_max: 64, ..node_config() };
    let f = Fixture::start(node, api_config());
    let h = &f.http;
    let a = client(f.node.local_addr()).await;
    let path = format!("/api/clients/{}/session", a.id);
    let info = format!("/api/clients/{}", a.id);

    let r = h.get(&info).await;
    assert_eq!(r.body, json!({"online": true, "uid": null, "groups": [], "session": {}}));
    let r = h.put(&path, Some(json!({"name": "ann", "level": 3}))).await;
    assert_eq!(r.body, json!({"ok": true, "changed": true}));
    assert_eq!(h.get(&info).await.body["session"], json!({"name": "ann", "level": 3}));
    // PATCH merges; null deletes.
    let r = h.call(Method::PATCH, &path, Some(json!({"level": null, "room": "r1"}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.get(&info).await.body["session"], json!({"name": "ann", "room": "r1"}));
    // PUT replaces.
    h.put(&path, Some(json!({"only": true}))).await;
    assert_eq!(h.get(&info).await.body["session"], json!({"only": true}));

    let r = h.put(&path, Some(json!([1, 2]))).await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().starts_with("session: must be a JSON object"));
    let r = h.put(&path, Some(json!({"big": "x".repeat(100)}))).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("over the limit of 64"));
    let r = h.put(&format!("/api/clients/{}/session", stale_id(&a.id)), Some(json!({}))).await;
    assert_eq!(r.status, 404);
    // Groups show up in the client's info.
    h.put(&format!("/api/groups/g/clients/{}", a.id), None).await;
    assert_eq!(h.get(&info).await.body["groups"], json!(["g"]));
    f.stop();
}

#[tokio::test]
async fn close_a_client_with_a_code() {
    let f = Fixture::start(node_config(), api_config());
    let h = &f.http;
    let mut a = client(f.node.local_addr()).await;
    let path = format!("/api/clients/{}", a.id);

    for q in ["?code=1001", "?code=2999", "?code=5000", "?code=abc"] {
        let r = h.delete(&format!("{path}{q}")).await;
        assert_eq!(r.status, 400, "{q}");
        assert!(r.body["error"].as_str().unwrap().starts_with("code: "));
    }
    let r = h.delete(&format!("{path}?reason={}", "r".repeat(124))).await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().starts_with("reason: "));

    let r = h.delete(&format!("{path}?code=4001&reason=bye+now")).await;
    assert_eq!(r.body, json!({"ok": true, "changed": true}));
    match next_data(&mut a.ws, 10).await {
        WsMessage::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "bye now");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let _ = a.ws.close(None).await;
    // Gone: its info says offline (200, like GatewayWorker's isOnline), operations say 404.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = h.get(&path).await;
        assert_eq!(r.status, 200);
        if r.body["online"] == false {
            assert_eq!(r.body, json!({"online": false, "uid": null, "groups": [], "session": {}}));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "client still online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.delete(&path).await.status, 404);
    // Default code 1000.
    let mut b = client(f.node.local_addr()).await;
    h.delete(&format!("/api/clients/{}", b.id)).await;
    match next_data(&mut b.ws, 10).await {
        WsMessage::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close frame, got {other:?}"),
    }
    f.stop();
}

// ---- node -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_metrics_and_healthz() {
    let f = Fixture::start(node_config(), api_config());
    let h = &f.http;
    let [s0, s1] = clients_on_both_shards(f.node.local_addr(), 1).await;
    let n = (s0.len() + s1.len()) as u64;
    h.put(&format!("/api/groups/g/clients/{}", s0[0].id), None).await;
    h.put(&format!("/api/clients/{}/uid", s1[0].id), Some(json!({"uid": "u"}))).await;
    assert_eq!(h.get("/healthz").await.body, json!({"ok": true}));
    let r = h.get("/api/stats").await;
    assert_eq!(r.status, 200);
    let b = &r.body;
    assert_eq!(b["node_id"], format!("{}", f.node.node_id()));
    assert_eq!(
        (b["connections"].as_u64(), b["groups"].as_u64(), b["uids"].as_u64()),
        (Some(n), Some(1), Some(1))
    );
    let shards = b["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    assert_eq!(shards.iter().map(|s| s["connections"].as_u64().unwrap()).sum::<u64>(), n);
    assert!(b["api"]["requests"].as_u64().unwrap() >= 4);
    let r = h.get("/api/metrics").await;
    assert_eq!(r.body["connections_open"].as_u64(), Some(n));
    assert!(r.body["connections_accepted"].as_u64().unwrap() >= n);
    f.stop();
}

/// A shard blocked in a callback cannot drain its inbox (capacity 1): the second request to it
/// finds the inbox full and gets 503 with Retry-After; with a short shard_timeout, the first
/// one times out with 503 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_shard_answers_503() {
    let node = Server::builder()
        .config(Config { inbox_events_max: 1, ..node_config() })
        .on_message(|_, _, _| std::thread::sleep(Duration::from_millis(1500)))
        .start()
        .unwrap();
    let cfg = ApiConfig { shard_timeout: Duration::from_millis(300), ..api_config() };
    let f = Fixture::with_node(node, cfg);
    let h = &f.http;
    let mut a = client(f.node.local_addr()).await;
    let b = client(f.node.local_addr()).await;
    // Block a's shard.
    a.ws.send(WsMessage::text("block")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let info = format!("/api/clients/{}", a.id);
    // First: queued, but the shard does not answer within shard_timeout.
    let first = h.get(&info).await;
    assert_eq!(first.status, 503, "{}", first.body);
    assert_eq!(first.headers["retry-after"], "1");
    assert!(first.body["error"].as_str().unwrap().contains("in time"), "{}", first.body);
    // Second: the inbox (capacity 1) still holds the first.
    let second = h.get(&info).await;
    assert_eq!(second.status, 503);
    assert_eq!(second.headers["retry-after"], "1");
    assert!(second.body["error"].as_str().unwrap().contains("inbox is full"), "{}", second.body);
    // A publish that reaches nobody because of it is 503 as well (retrying cannot duplicate).
    let r = h.post("/api/publish", json!({"data": "x", "to": {"clients": [a.id]}})).await;
    assert_eq!(r.status, 503, "{}", r.body);
    // A publish that reached someone is 200 and says what it missed.
    if b.worker != a.worker {
        let r = h.post("/api/publish", json!({"data": "x", "to": {"all": true}})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["shards_missed"], 1);
    }
    assert!(f.api.as_ref().unwrap().stats().unavailable >= 3);
    // Once the shard is free again, all is well.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = h.get(&info).await;
        if r.status == 200 {
            assert_eq!(r.body["online"], true);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "shard never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.stop();
}

#[tokio::test]
async fn shutdown_closes_keep_alive_connections_and_stops_listening() {
    let f = Fixture::start(node_config(), api_config());
    let addr = f.api.as_ref().unwrap().local_addr();
    // A keep-alive connection stays in reqwest's pool.
    assert_eq!(f.http.get("/healthz").await.status, 200);
    let started = std::time::Instant::now();
    f.stop();
    assert!(started.elapsed() < Duration::from_secs(4), "shutdown took {:?}", started.elapsed());
    assert!(std::net::TcpStream::connect(addr).is_err(), "still listening");
}

#[tokio::test]
async fn pipelined_requests_on_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::start(node_config(), api_config());
    let addr = f.api.as_ref().unwrap().local_addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"data":"p","to":{"groups":["nobody"]}}"#;
    let one = format!(
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(one.repeat(10).as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(8).filter(|w| w == b"\"queued\"").count() < 10 {
        let n =
            tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(got).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 10, "{text}");
    f.stop();
}

// ---- the daemon -------------------------------------------------------------------------------

/// `ringcast serve` with the API on a non-loopback address and no token refuses to start, with
/// an error that says why; with a token it serves, and healthz answers.
#[test]
fn the_daemon_refuses_a_public_api_without_a_token() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1", "--no-pin"])
        .args(["--api-listen", "0.0.0.0:0"])
        .env_remove("RINGCAST_API_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");
    assert!(stderr.contains("(from --api-listen)"), "{stderr}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1", "--no-pin"])
        .args(["--api-listen", "0.0.0.0:0"])
        .env("RINGCAST_API_TOKEN", "t0ken")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("HTTP API listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr: SocketAddr = rx.recv_timeout(Duration::from_secs(60)).unwrap().parse().unwrap();
    let get = |auth: Option<&str>, path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", addr.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    assert!(get(None, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(get(None, "/api/stats").starts_with("HTTP/1.1 401"));
    assert!(get(Some("t0ken"), "/api/stats").starts_with("HTTP/1.1 200"));
    let _ = child.kill();
    let _ = child.wait();
}

/// Single publishes that arrive together share one trip to the shards; each still gets its
/// own report, and every message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_publishes_get_their_own_reports() {
    let f = Fixture::start(node_config(), api_config());
    let mut a = client(f.node.local_addr()).await;
    let http = std::sync::Arc::new(f.http);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (http, id) = (http.clone(), a.id.clone());
        tasks.push(tokio::spawn(async move {
            let to =
                if i % 2 == 0 { json!({"clients": [id]}) } else { json!({"groups": ["none"]}) };
            let r = http.post("/api/publish", json!({"data": format!("m{i}"), "to": to})).await;
            assert_eq!(r.status, 200, "{}", r.body);
            (i, r.body["queued"].as_u64().unwrap())
        }));
    }
    for t in tasks {
        let (i, queued) = t.await.unwrap();
        assert_eq!(queued, u64::from(i % 2 == 0), "publish {i}");
    }
    let mut got: Vec<String> = Vec::new();
    for _ in 0..30 {
        got.push(text(&mut a).await);
    }
    got.sort();
    let mut want: Vec<String> = (0..60).step_by(2).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(got, want);
    let extra = tokio::time::timeout(Duration::from_millis(200), next_data(&mut a.ws, 1)).await;
    assert!(extra.is_err(), "duplicate delivery: {extra:?}");
    let Ok(http) = std::sync::Arc::try_unwrap(http) else { panic!("requests still running") };
    Fixture { http, ..f }.stop();
}
