//! Connect authentication, the origin allowlist and the per-address limits, end to end: the
//! real `ringcast` binary on loopback, real WebSocket clients (tokio-tungstenite) and raw TCP
//! upgrades, the HTTP API (reqwest) to check bindings and counters.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use ringcast::auth::{token, Claims, Secret};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

struct Daemon {
    child: Child,
    ws: SocketAddr,
    api: SocketAddr,
    http: reqwest::Client,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--no-pin"])
            .args(["--on-message", "commands", "--api-listen", "127.0.0.1:0"])
            .args(extra)
            .env("RINGCAST_AUTH_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ringcast");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                assert!(!line.contains(SECRET), "the secret was logged: {line}");
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send((line.contains("HTTP API"), addr.trim().to_owned()));
                }
            }
        });
        let (mut ws, mut api) = (None, None);
        while ws.is_none() || api.is_none() {
            let (is_api, addr) =
                rx.recv_timeout(Duration::from_secs(60)).expect("no 'listening on' line");
            let addr: SocketAddr = addr.parse().unwrap();
            if is_api {
                api = Some(addr)
            } else {
                ws = Some(addr)
            }
        }
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Daemon { child, ws: ws.unwrap(), api: api.unwrap(), http }
    }

    async fn get(&self, path: &str) -> Value {
        let url = format!("http://{}{path}", self.api);
        let r = self.http.get(url).send().await.expect("GET");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn metric(&self, name: &str) -> u64 {
        self.get("/api/metrics").await[name].as_u64().unwrap_or_else(|| panic!("no {name}"))
    }

    /// Wait until counter `name` reaches `at_least` (counters are published once per loop turn).
    async fn wait_metric(&self, name: &str, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(name).await;
            if v >= at_least {
                return;
            }
            assert!(Instant::now() < deadline, "{name} = {v}, expected >= {at_least}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status line of a raw upgrade with `extra` header lines and `path`.
    fn raw_status(&self, path: &str, extra: &str) -> String {
        let mut raw = Raw::connect(self.ws);
        let req = UPGRADE.replacen("GET / ", &format!("GET {path} "), 1).replacen(
            "Host: test\r\n",
            &format!("Host: test\r\n{extra}"),
            1,
        );
        let head = raw.request(req.as_bytes());
        head.lines().next().unwrap_or_default().to_owned()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn mint(sub: &str, exp: u64, join: &[&str], publish: &[&str]) -> String {
    let claims = Claims {
        sub: sub.into(),
        exp,
        nbf: None,
        iat: Some(now()),
        iss: None,
        aud: None,
        join: join.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
    };
    token::mint(&Secret::new(SECRET), &claims)
}

async fn connect_path(addr: SocketAddr, path: &str) -> Ws {
    let (ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await.expect("connect");
    assert_eq!(resp.status(), 101);
    ws
}

/// Read frames until the first text frame that is a JSON object of `type`.
async fn next_of_type(ws: &mut Ws, ty: &str) -> Value {
    loop {
        match next_data(ws, 10).await {
            WsMessage::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == ty {
                    return v;
                }
            }
            other => panic!("expected a {ty} frame, got {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(WsMessage::text(v.to_string())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_binds_its_uid_and_grants_only_its_groups() {
    let d = Daemon::start(&["--auth-mode", "required"]);
    let t = mint("alice", now() + 600, &["room:*"], &["room:1"]);
    let mut ws = connect_path(d.ws, &format!("/?token={t}")).await;
    let welcome = next_of_type(&mut ws, "welcome").await;
    let id = welcome["client_id"].as_str().unwrap().to_owned();
    // Bound to the token's uid before the welcome was sent.
    assert_eq!(d.get("/api/uids/alice").await, json!({"online": true, "clients": [id]}));
    assert_eq!(d.get(&format!("/api/clients/{id}")).await["uid"], "alice");

    // Allowed by the token: join room:1 and room:2, publish to room:1.
    send(&mut ws, json!({"cmd": "add_group", "group_id": "room:1", "id": 1})).await;
    assert_eq!(next_of_type(&mut ws, "ok").await["id"], 1);
    send(&mut ws, json!({"cmd": "add_group", "group_id": "room:2", "id": 2})).await;
    assert_eq!(next_of_type(&mut ws, "ok").await["id"], 2);
    send(&mut ws, json!({"cmd": "send_to_group", "group_id": "room:1", "message": "hi"})).await;
    match next_data(&mut ws, 10).await {
        WsMessage::Text(t) => assert_eq!(t.as_str(), "hi"),
        other => panic!("expected the group message, got {other:?}"),
    }
    // Refused: a group outside the grants, publishing where only joining is granted.
    send(&mut ws, json!({"cmd": "add_group", "group_id": "admin", "id": 3})).await;
    let e = next_of_type(&mut ws, "error").await;
    assert_eq!(
        (e["id"].clone(), e["reason"].clone()),
        (json!(3), json!("joining groups is not allowed"))
    );
    send(&mut ws, json!({"cmd": "send_to_group", "group_id": "room:2", "message": "x", "id": 4}))
        .await;
    let e = next_of_type(&mut ws, "error").await;
    assert_eq!(e["id"], 4);
    assert_eq!(e["reason"], "publishing to groups is not allowed");
    let groups = d.get(&format!("/api/clients/{id}")).await["groups"].clone();
    let mut groups: Vec<String> = serde_json::from_value(groups).unwrap();
    groups.sort();
    assert_eq!(groups, ["room:1", "room:2"]);
    assert_eq!(d.metric("connections_authenticated").await, 1);
    assert!(d.metric("commands_rejected").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_may_ride_in_the_subprotocol_and_is_never_echoed() {
    let d = Daemon::start(&["--auth-mode", "required"]);
    let t = mint("bob", now() + 600, &[], &[]);
    let mut req = format!("ws://{}/", d.ws).into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", format!("ringcast, ringcast.token.{t}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("connect");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "ringcast");
    next_of_type(&mut ws, "welcome").await;
    assert_eq!(d.get("/api/uids/bob").await["online"], true);
    // The token alone as a subprotocol works too; nothing is echoed then.
    let status = d.raw_status("/", &format!("Sec-WebSocket-Protocol: ringcast.token.{t}\r\n"));
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_invalid_and_expired_tokens_get_401_and_are_counted() {
    let d = Daemon::start(&["--auth-mode", "required"]);
    let expired = mint("carol", now() - 1, &[], &[]);
    let forged = token::mint(
        &Secret::new("some-other-secret-0123456789abcdef"),
        &Claims {
            sub: "carol".into(),
            exp: now() + 600,
            nbf: None,
            iat: None,
            iss: None,
            aud: None,
            join: vec!["*".into()],
            publish: vec![],
        },
    );
    for path in [
        "/".to_owned(),
        "/?token=".to_owned(),
        "/?token=not.a.jwt".to_owned(),
        format!("/?token={expired}"),
        format!("/?token={forged}"),
    ] {
        let status = d.raw_status(&path, "");
        assert!(status.starts_with("HTTP/1.1 401 Unauthorized"), "{path}: {status}");
    }
    // The reason is in the body, with the scheme in WWW-Authenticate.
    let mut tcp = std::net::TcpStream::connect(d.ws).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = UPGRADE.replacen("GET / ", &format!("GET /?token={expired} "), 1);
    std::io::Write::write_all(&mut tcp, req.as_bytes()).unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut tcp, &mut response).unwrap();
    assert!(response.contains("\r\nWWW-Authenticate: Bearer realm=\"ringcast\""), "{response}");
    assert!(response.ends_with("\r\n\r\ntoken expired\n"), "{response}");
    d.wait_metric("handshakes_unauthorized", 6).await;
    assert_eq!(d.metric("handshakes_rejected").await, 6);
    assert_eq!(d.metric("connections_open").await, 0);
    assert_eq!(d.get("/api/uids/carol").await["online"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mode_admits_anonymous_clients_with_the_node_policy_only() {
    let d = Daemon::start(&["--auth-mode", "optional"]);
    let mut anon = connect(d.ws).await;
    next_of_type(&mut anon, "welcome").await;
    send(&mut anon, json!({"cmd": "add_group", "group_id": "room:1"})).await;
    assert_eq!(next_of_type(&mut anon, "error").await["reason"], "joining groups is not allowed");
    // A bad token is refused, never downgraded to anonymous.
    let status = d.raw_status("/?token=garbage", "");
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    // The `ringcast token` subcommand mints what the node accepts.
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["token", "--sub", "dave", "--join", "room:*", "--ttl", "10m"])
        .env("RINGCAST_AUTH_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = String::from_utf8(out.stdout).unwrap();
    let mut ws = connect_path(d.ws, &format!("/?x=1&token={}", t.trim())).await;
    next_of_type(&mut ws, "welcome").await;
    send(&mut ws, json!({"cmd": "add_group", "group_id": "room:1", "id": "j"})).await;
    assert_eq!(next_of_type(&mut ws, "ok").await["id"], "j");
    assert_eq!(d.get("/api/uids/dave").await["online"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_origin_gets_403() {
    let d = Daemon::start(&["--origins-allowed", "https://app.test,https://*.example.org"]);
    for (origin, want) in [
        ("https://app.test", "101"),
        ("https://chat.example.org", "101"),
        ("https://evil.test", "403"),
        ("https://app.test.evil.test", "403"),
        ("null", "403"),
    ] {
        let status = d.raw_status("/", &format!("Origin: {origin}\r\n"));
        assert!(status.starts_with(&format!("HTTP/1.1 {want}")), "{origin}: {status}");
    }
    // No Origin: not a browser, allowed.
    assert!(d.raw_status("/", "").starts_with("HTTP/1.1 101"));
    d.wait_metric("handshakes_forbidden", 3).await;
    assert_eq!(d.metric("handshakes_forbidden").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_connection_limit() {
    let d = Daemon::start(&["--connections-per-ip-max", "3"]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(d.ws).await);
    }
    for _ in 0..2 {
        let status = d.raw_status("/", "");
        assert!(status.starts_with("HTTP/1.1 429 Too Many Requests"), "{status}");
    }
    d.wait_metric("connections_refused_per_ip", 2).await;
    // Closing one frees its place.
    let mut one = held.pop().unwrap();
    one.close(None).await.unwrap();
    while let Some(Ok(_)) = one.next().await {}
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = d.raw_status("/", "");
        if status.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(Instant::now() < deadline, "the closed connection's place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(d.metric("handshakes_rejected").await, d.metric("connections_refused_per_ip").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_handshake_rate_limit() {
    let d = Daemon::start(&["--handshakes-per-ip-per-sec", "1", "--handshakes-per-ip-burst", "3"]);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(d.raw_status("/", "")[9..12].to_owned());
    }
    // The burst passes, then the rate: at most one more within the loop's few milliseconds.
    assert_eq!(&statuses[..3], ["101", "101", "101"], "{statuses:?}");
    let limited = statuses.iter().filter(|s| *s == "429").count();
    assert!(limited >= 2, "{statuses:?}");
    d.wait_metric("handshakes_rate_limited", limited as u64).await;
    // A second later the bucket has a token again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(d.raw_status("/", "").starts_with("HTTP/1.1 101"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_connection_after_the_grace() {
    let d = Daemon::start(&["--auth-mode", "required", "--auth-expiry-grace", "1s"]);
    let exp = now() + 2;
    let mut ws = connect_path(d.ws, &format!("/?token={}", mint("erin", exp, &[], &[]))).await;
    // A token that lives long is left alone meanwhile.
    let mut long =
        connect_path(d.ws, &format!("/?token={}", mint("erin", now() + 600, &[], &[]))).await;
    next_of_type(&mut ws, "welcome").await;
    next_of_type(&mut long, "welcome").await;
    let closed = loop {
        match next_data(&mut ws, 10).await {
            WsMessage::Close(Some(frame)) => break frame,
            WsMessage::Close(None) => panic!("close without a code"),
            _ => continue,
        }
    };
    let at = now();
    assert_eq!(u16::from(closed.code), 4001);
    assert_eq!(closed.reason.as_str(), "token expired");
    assert!(at > exp, "closed at {at}, before exp {exp} + grace 1s");
    assert!(at <= exp + 3, "closed at {at}, long after exp {exp} + grace 1s");
    d.wait_metric("token_expiry_closes", 1).await;
    assert_eq!(d.metric("token_expiry_closes").await, 1);
    // The other one is still served.
    send(&mut long, json!({"cmd": "ping", "id": 9})).await;
    assert_eq!(next_of_type(&mut long, "pong").await["id"], 9);
}

#[test]
fn bad_auth_settings_stop_the_daemon_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--no-api", "--auth-mode", "required"])
        .env_remove("RINGCAST_AUTH_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RINGCAST_AUTH_SECRET"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--no-api", "--auth-mode", "required"])
        .env("RINGCAST_AUTH_SECRET", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 32") && !err.contains("short\""), "{err}");
}

/// The Python snippet of docs/api.md ("Minting a token"), run as written: its token is accepted
/// and binds its uid with its grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_python_minting_snippet_works() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let section = doc.split("### Minting a token").nth(1).expect("section in docs/api.md");
    let code = section.split("```python\n").nth(1).unwrap().split("```").next().unwrap();
    let out = Command::new("python3")
        .args(["-c", code])
        .env("RINGCAST_AUTH_SECRET", SECRET)
        .output()
        .expect("python3 (Debian's python3 package)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = String::from_utf8(out.stdout).unwrap();
    let d = Daemon::start(&["--auth-mode", "required"]);
    let mut ws = connect_path(d.ws, &format!("/?token={}", t.trim())).await;
    next_of_type(&mut ws, "welcome").await;
    assert_eq!(d.get("/api/uids/user-42").await["online"], true);
    send(&mut ws, json!({"cmd": "add_group", "group_id": "room:9", "id": 1})).await;
    assert_eq!(next_of_type(&mut ws, "ok").await["id"], 1);
}
