//! The README's push session, as written: `ringcast serve --demo`, the `ws_client` example
//! joining group 123, then the curl pushes (seed form to the group, to one client, to everyone,
//! and the JSON API), and the group query. Real binary, real example client, real HTTP.

mod common;

use common::example_binary;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stream, on a channel.
fn lines(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(rx: &Receiver<String>, what: &str) -> String {
    rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no line: {what}"))
}

/// `curl URL` (GET, or POST with a JSON body): the status and the body.
fn curl(addr: SocketAddr, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = json.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    // Chunked or not, the JSON object is the part between the outer braces.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => body[a..=b].to_owned(),
        _ => body,
    };
    (status, body)
}

#[test]
fn the_readme_push_session_works_as_written() {
    // The README runs `ringcast serve --demo` on 2020/2021; the test takes free ports.
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args(["--shards", "2", "--no-pin"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = lines(daemon.stderr.take().unwrap());
    let _daemon = Proc(daemon);
    let (mut ws_addr, mut api_addr) = (None, None);
    while ws_addr.is_none() || api_addr.is_none() {
        let line = next_line(&log, "daemon listening");
        if let Some(a) = line.split("listening on ").nth(1) {
            let a: SocketAddr = a.trim().parse().unwrap();
            if line.contains("HTTP API") {
                api_addr = Some(a);
            } else {
                ws_addr = Some(a);
            }
        }
    }
    let (ws_addr, api) = (ws_addr.unwrap(), api_addr.unwrap());
    std::thread::spawn(move || while log.recv().is_ok() {});

    let mut client = Command::new(example_binary("ws_client"))
        .args([
            "--for",
            "20s",
            &format!("ws://{ws_addr}/"),
            r#"{"cmd":"add_group","group_id":"123"}"#,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines(client.stdout.take().unwrap());
    let _client = Proc(client);
    let welcome: serde_json::Value =
        serde_json::from_str(&next_line(&out, "welcome")).expect("welcome is JSON");
    assert_eq!(welcome["type"], "welcome");
    let id = welcome["client_id"].as_str().unwrap().to_owned();

    // The join is applied before the client's next frame; wait until the API sees it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = curl(api, "GET", "/api/groups/123", None);
        if status == 200 && body.contains(&id) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["count"], 1, "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "join never showed: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (status, body) = curl(api, "GET", "/?content=hello+group&to_group=123", None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["queued"], 1, "{body}");
    assert_eq!(next_line(&out, "group push"), "hello group");

    let (status, body) = curl(api, "GET", &format!("/?content=hello+you&to_client_id={id}"), None);
    assert_eq!((status, body.contains("\"queued\":1")), (200, true), "{body}");
    assert_eq!(next_line(&out, "client push"), "hello you");

    let (status, _) = curl(api, "GET", "/?content=hello+everyone", None);
    assert_eq!(status, 200);
    assert_eq!(next_line(&out, "broadcast"), "hello everyone");

    let publish = r#"{"data":"hi","to":{"groups":["123"]},"exclude":[]}"#;
    let (status, body) = curl(api, "POST", "/api/publish", Some(publish));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"queued\":1"), "{body}");
    assert_eq!(next_line(&out, "JSON publish"), "hi");

    // A push that reaches nobody says so.
    let (status, body) = curl(api, "GET", "/?content=x&to_group=empty", None);
    assert_eq!(status, 200);
    assert!(body.contains("\"queued\":0"), "{body}");
}

/// The README's "Recovering after reconnect" session, as written: a node with
/// `--history-rule 'chat:*=1000,10m'`, the `ws_client` example joining with the envelope,
/// publishes while it is away, the recovering join, the history query and the idempotent
/// publish.
#[test]
fn the_readme_recovery_session_works_as_written() {
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--demo", "--history-rule", "chat:*=1000,10m"])
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args(["--shards", "2", "--no-pin"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = lines(daemon.stderr.take().unwrap());
    let _daemon = Proc(daemon);
    let (mut ws_addr, mut api_addr) = (None, None);
    while ws_addr.is_none() || api_addr.is_none() {
        let line = next_line(&log, "daemon listening");
        if let Some(a) = line.split("listening on ").nth(1) {
            let a: SocketAddr = a.trim().parse().unwrap();
            if line.contains("HTTP API") {
                api_addr = Some(a);
            } else {
                ws_addr = Some(a);
            }
        }
    }
    let (ws_addr, api) = (ws_addr.unwrap(), api_addr.unwrap());
    std::thread::spawn(move || while log.recv().is_ok() {});
    let json = |s: &str| -> serde_json::Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    let ws_client = |cmd: &str| {
        let mut c = Command::new(example_binary("ws_client"))
            .args(["--for", "20s", &format!("ws://{ws_addr}/"), cmd])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = lines(c.stdout.take().unwrap());
        (Proc(c), out)
    };

    let (first, out) = ws_client(r#"{"cmd":"add_group","group_id":"chat:room","envelope":true}"#);
    assert_eq!(json(&next_line(&out, "welcome"))["type"], "welcome");
    let ok = json(&next_line(&out, "join reply"));
    assert_eq!((ok["type"].as_str(), ok["offset"].as_u64()), (Some("ok"), Some(0)), "{ok}");
    let epoch = ok["epoch"].as_str().unwrap().to_owned();

    let publish = |data: &str, key: Option<&str>| {
        let body = format!(r#"{{"data":"{data}","to":{{"groups":["chat:room"]}}}}"#);
        match key {
            None => curl(api, "POST", "/api/publish", Some(&body)),
            Some(k) => curl_with(api, "/api/publish", &body, &format!("Idempotency-Key: {k}")),
        }
    };
    let (status, body) = publish("one", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["positions"]["chat:room"],
        serde_json::json!({"epoch":epoch,"offset":1})
    );
    let m = json(&next_line(&out, "message one"));
    assert_eq!(
        m,
        serde_json::json!({"type":"message","data":"one",
        "positions":{"chat:room":{"epoch":epoch,"offset":1}}})
    );
    drop(first);
    assert_eq!(publish("two", None).0, 200);
    assert_eq!(publish("three", None).0, 200);

    let since = format!(
        r#"{{"cmd":"add_group","group_id":"chat:room","since":{{"epoch":"{epoch}","offset":1}}}}"#
    );
    let (_second, out) = ws_client(&since);
    assert_eq!(json(&next_line(&out, "welcome"))["type"], "welcome");
    let ok = json(&next_line(&out, "recovery reply"));
    assert_eq!(
        ok,
        serde_json::json!({"type":"ok","cmd":"add_group","group_id":"chat:room","epoch":epoch,
            "offset":3,"recovered":true,"replayed":2})
    );
    for (data, offset) in [("two", 2), ("three", 3)] {
        let m = json(&next_line(&out, data));
        assert_eq!(
            m,
            serde_json::json!({"type":"message","data":data,
            "positions":{"chat:room":{"epoch":epoch,"offset":offset}}})
        );
    }

    let (status, body) = curl(api, "GET", "/api/groups/chat:room/history?limit=2", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"group_id":"chat:room","epoch":epoch,"offset":3,
            "messages":[{"offset":2,"data":"two"},{"offset":3,"data":"three"}],"more":false})
    );

    let (status, first) = publish("paid", Some("order-42"));
    assert_eq!(status, 200, "{first}");
    let (status, again) = publish("paid", Some("order-42"));
    assert_eq!(status, 200, "{again}");
    let (first, again) = (json(&first), json(&again));
    assert_eq!(first["positions"]["chat:room"]["offset"], 4);
    assert!(first.get("duplicate").is_none());
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["positions"], first["positions"]);
    // Delivered once: the next live message after "paid" is the marker.
    assert_eq!(json(&next_line(&out, "paid"))["data"], "paid");
    assert_eq!(publish("marker", None).0, 200);
    assert_eq!(json(&next_line(&out, "marker"))["data"], "marker");
}

/// `curl -X POST` with a JSON body and one extra header.
fn curl_with(addr: SocketAddr, path: &str, json: &str, header: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{header}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => body[a..=b].to_owned(),
        _ => body,
    };
    (status, body)
}
