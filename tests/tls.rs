//! `wss://` with real TLS clients: tokio-tungstenite over tokio-rustls, Python `websockets` with
//! an `ssl.SSLContext` (from the venv `scripts/install-test-deps.sh` builds), and the daemon
//! binary reloading its certificate on SIGHUP. Certificates are generated per test with rcgen
//! (a CA and a leaf for `localhost` / 127.0.0.1); no key is committed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ringcast::tls::TlsConfig;
use ringcast::{Handle, OnMessage};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use common::{config, start, wait_until};

type WsTls =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A CA and a leaf it signed, as PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ringcast-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("ringcast test CA {name}"));
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&leaf_key, &ca)
                .unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem() + &ca.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca: ca.der().clone(), leaf: leaf.der().clone() }
    }

    fn tls_config(&self, listen: Option<SocketAddr>) -> TlsConfig {
        TlsConfig {
            cert_file: Some(self.dir.join("cert.pem")),
            key_file: Some(self.dir.join("key.pem")),
            listen,
        }
    }

    /// Put another PKI's certificate and key in this one's files (what an operator's renewal
    /// does before SIGHUP).
    fn install(&self, other: &Pki) {
        for f in ["cert.pem", "key.pem"] {
            std::fs::copy(other.dir.join(f), self.dir.join(format!("{f}.tmp"))).unwrap();
            std::fs::rename(self.dir.join(format!("{f}.tmp")), self.dir.join(f)).unwrap();
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_config(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A `wss://` client trusting `ca`; also returns the leaf certificate the server presented.
async fn connect_tls(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> Result<(WsTls, CertificateDer<'static>), String> {
    let connector = tokio_rustls::TlsConnector::from(client_config(ca));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let (ws, resp) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/", addr.port()), tls)
            .await
            .map_err(|e| e.to_string())?;
    assert_eq!(resp.status(), 101);
    Ok((ws, leaf))
}

async fn next_data<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, secs: u64) -> WsMessage
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(secs), ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("stream ended")
            .expect("websocket error");
        if msg.is_text() || msg.is_binary() || msg.is_close() {
            return msg;
        }
    }
}

/// The address in the daemon's "listening on ADDR (wss://)" line (TLS on the main listener).
fn wss_listen_addr(line: &str) -> SocketAddr {
    assert!(line.contains("(wss://)"), "{line}");
    let after = line.split("listening on ").nth(1).expect("a listening line");
    after.split_whitespace().next().unwrap().parse().unwrap()
}

fn tls_node(pki: &Pki, separate: bool, on_message: OnMessage) -> Handle {
    let listen = separate.then(|| "127.0.0.1:0".parse().unwrap());
    start(ringcast::Config { tls: pki.tls_config(listen), on_message, ..config() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_tls_and_plain_clients_in_order() {
    let pki = Pki::new("mixed");
    let handle = tls_node(&pki, true, OnMessage::Relay);
    let tls_addr = handle.tls_local_addr().expect("tls listener");
    assert_ne!(tls_addr, handle.local_addr(), "separate listener");
    let mut tls_clients = Vec::new();
    for _ in 0..4 {
        tls_clients.push(connect_tls(tls_addr, &pki.ca).await.unwrap().0);
    }
    let mut plain = common::connect(handle.local_addr()).await;
    wait_until(5, "5 connections", || handle.metrics().connections_open == 5);

    // Bursts of small frames (coalesced into few records per write), then frames larger than
    // one TLS record, then a relay from a TLS client.
    let mut expected = Vec::new();
    for i in 0..300 {
        let text = format!("tick {i}");
        handle.broadcast(ringcast::Message::text(text.clone())).unwrap();
        expected.push(WsMessage::text(text));
    }
    for size in [16 * 1024 - 10, 16 * 1024 + 10, 200_000] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        handle.broadcast(ringcast::Message::binary(payload.clone())).unwrap();
        expected.push(WsMessage::binary(payload));
    }
    tls_clients[0].send(WsMessage::text("from a wss client")).await.unwrap();
    expected.push(WsMessage::text("from a wss client"));
    for ws in &mut tls_clients {
        for want in &expected {
            assert_eq!(&next_data(ws, 10).await, want);
        }
    }
    for want in &expected {
        assert_eq!(&next_data(&mut plain, 10).await, want);
    }
    let m = handle.metrics();
    assert_eq!(m.tls_handshakes, 4);
    assert_eq!(m.tls_errors, 0);

    // A clean close over TLS: our close frame back, then close_notify and EOF.
    let mut ws = tls_clients.pop().unwrap();
    ws.close(None).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("close") {
            Some(Ok(m)) if m.is_close() => continue,
            Some(Ok(_)) => continue,
            None => break,
            Some(Err(e)) => panic!("unclean TLS close: {e}"),
        }
    }
    wait_until(5, "close", || handle.metrics().connections_open == 4);
    assert_eq!(handle.metrics().connections_aborted, 0);

    // Graceful shutdown reaches TLS clients with 1001.
    handle.shutdown();
    for ws in &mut tls_clients {
        match next_data(ws, 5).await {
            WsMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    drop(tls_clients);
    drop(plain);
    handle.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_main_listener_refuses_plain_text_and_garbage() {
    let pki = Pki::new("main");
    let handle = tls_node(&pki, false, OnMessage::Ignore);
    let addr = handle.local_addr();
    assert_eq!(handle.tls_local_addr(), Some(addr));

    // A plain ws:// client gets no WebSocket; an HTTP request gets a TLS alert and a close.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(format!("ws://{addr}/")),
    )
    .await
    .expect("no hang");
    assert!(plain.is_err());
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(common::UPGRADE.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut reply);
    assert_eq!(reply.first(), Some(&0x15), "a TLS alert record, not HTTP: {reply:?}");
    // A client that does not trust the certificate fails its handshake.
    let stranger = Pki::new("stranger");
    let err = connect_tls(addr, &stranger.ca).await.expect_err("untrusted certificate");
    assert!(err.contains("certificate") || err.contains("UnknownIssuer"), "{err}");
    wait_until(5, "failed handshakes counted", || handle.metrics().tls_handshakes_failed >= 3);

    // The node still serves good clients.
    let (mut ws, leaf) = connect_tls(addr, &pki.ca).await.unwrap();
    assert_eq!(leaf, pki.leaf);
    wait_until(5, "open", || handle.metrics().connections_open == 1);
    handle.broadcast(ringcast::Message::text("still serving")).unwrap();
    assert_eq!(next_data(&mut ws, 5).await, WsMessage::text("still serving"));
    handle.shutdown();
    drop(ws);
    handle.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_the_new_certificate_and_keeps_connections() {
    let live = Pki::new("reload-live");
    let next = Pki::new("reload-next");
    let handle = tls_node(&live, false, OnMessage::Ignore);
    let addr = handle.local_addr();
    let (mut old, leaf) = connect_tls(addr, &live.ca).await.unwrap();
    assert_eq!(leaf, live.leaf);
    let old_leaf = live.leaf.clone();

    live.install(&next);
    handle.reload_tls().unwrap();
    // New handshakes see the new certificate: a client trusting only the old CA fails.
    assert!(connect_tls(addr, &live.ca).await.is_err());
    let (mut new, leaf) = connect_tls(addr, &next.ca).await.unwrap();
    assert_eq!(leaf, next.leaf);
    assert_ne!(leaf, old_leaf);
    wait_until(5, "two open", || handle.metrics().connections_open == 2);
    // The connection made with the old certificate still receives.
    handle.broadcast(ringcast::Message::text("after reload")).unwrap();
    assert_eq!(next_data(&mut old, 5).await, WsMessage::text("after reload"));
    assert_eq!(next_data(&mut new, 5).await, WsMessage::text("after reload"));

    // A broken reload keeps the certificate in service.
    std::fs::write(live.dir.join("key.pem"), "garbage").unwrap();
    let err = handle.reload_tls().unwrap_err().to_string();
    assert!(err.contains("key.pem"), "{err}");
    let (_ws, leaf) = connect_tls(addr, &next.ca).await.unwrap();
    assert_eq!(leaf, next.leaf);
    handle.shutdown();
    drop((old, new));
    handle.join().unwrap();
}

#[test]
fn start_up_names_a_bad_certificate_file() {
    let pki = Pki::new("bad");
    std::fs::write(pki.dir.join("cert.pem"), "nothing here").unwrap();
    let err = ringcast::Server::builder()
        .config(ringcast::Config { tls: pki.tls_config(None), ..config() })
        .start()
        .err()
        .expect("refused");
    assert!(err.to_string().contains("cert.pem"), "{err}");
    let missing = TlsConfig {
        cert_file: Some(pki.dir.join("absent.pem")),
        key_file: Some(pki.dir.join("key.pem")),
        listen: None,
    };
    let err = ringcast::Server::builder()
        .config(ringcast::Config { tls: missing, ..config() })
        .start()
        .err()
        .expect("refused");
    assert!(err.to_string().contains("absent.pem"), "{err}");
}

/// The daemon: `--tls-cert-file`/`--tls-key-file`, then `kill -HUP` with new files in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_reloads_on_sighup_without_dropping_connections() {
    let live = Pki::new("sighup-live");
    let next = Pki::new("sighup-next");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--no-pin", "--no-api"])
        .args(["--on-message", "relay", "--tls-cert-file"])
        .arg(live.dir.join("cert.pem"))
        .arg("--tls-key-file")
        .arg(live.dir.join("key.pem"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = |what: &str| loop {
        let l = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no '{what}'"));
        if l.contains(what) {
            return l;
        }
    };
    let l = line("listening on");
    let addr = wss_listen_addr(&l);

    let (mut old, leaf) = connect_tls(addr, &live.ca).await.unwrap();
    assert_eq!(leaf, live.leaf);
    live.install(&next);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    line("TLS certificate and key reloaded");
    let (mut new, leaf) = connect_tls(addr, &next.ca).await.unwrap();
    assert_eq!(leaf, next.leaf);
    // Relay mode: the old connection's message reaches both, over both certificates' sessions.
    old.send(WsMessage::text("old session alive")).await.unwrap();
    assert_eq!(next_data(&mut old, 5).await, WsMessage::text("old session alive"));
    assert_eq!(next_data(&mut new, 5).await, WsMessage::text("old session alive"));

    // A failed reload is logged and changes nothing.
    std::fs::write(live.dir.join("cert.pem"), "garbage").unwrap();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let l = line("TLS reload failed");
    assert!(l.contains("cert.pem"), "{l}");
    let (_again, leaf) = connect_tls(addr, &next.ca).await.unwrap();
    assert_eq!(leaf, next.leaf);

    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    match next_data(&mut old, 5).await {
        WsMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected 1001, got {other:?}"),
    }
    drop((old, new));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// Python `websockets` with an `ssl.SSLContext` trusting the test CA (tests/tls_client.py).
#[test]
fn python_websockets_client_over_wss() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh (it builds the project's test venv \
         with the pinned Python packages); this test does not skip without it",
        python.display()
    );
    let pki = Pki::new("python");
    let handle = tls_node(&pki, false, OnMessage::Relay);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls_client.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(format!("wss://localhost:{}/", handle.local_addr().port()))
        .arg(pki.dir.join("ca.pem"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(handle.metrics().tls_handshakes >= 2);
    handle.shutdown();
    handle.join().unwrap();
}

/// What an operator does: a config file with `[tls]` and `[auth]` (no TLS or auth flag), a
/// token minted with `ringcast token`. Without a token the 401 arrives inside TLS; with one the
/// upgrade succeeds and the token's uid is bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_alone_turns_on_tls_and_tokens() {
    let pki = Pki::new("config-file");
    let secret = pki.dir.join("auth-secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef-test\n").unwrap();
    let file = pki.dir.join("ringcast.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\npin = false\non_message = \"commands\"\n\n\
             [api]\nenabled = false\n\n\
             [auth]\nmode = \"required\"\nsecret_file = {secret:?}\n\n\
             [tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n",
            cert = pki.dir.join("cert.pem"),
            key = pki.dir.join("key.pem"),
        ),
    )
    .unwrap();
    let check =
        Command::new(env!("CARGO_BIN_EXE_ringcast")).arg("check-config").arg(&file).output();
    let check = check.unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{shown}{}", String::from_utf8_lossy(&check.stderr));
    assert!(shown.contains("[tls]") && shown.contains("cert.pem"), "{shown}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "info")
        .env_remove("RINGCAST_AUTH_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    let l = lines.find(|l| l.contains("listening on")).expect("a listening line");
    let addr = wss_listen_addr(&l);
    std::thread::spawn(move || lines.for_each(drop));

    // No token: refused with 401, read through TLS.
    let Err(err) = connect_tls(addr, &pki.ca).await else { panic!("connected without a token") };
    assert!(err.contains("401"), "{err}");

    let minted = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["token", "--sub", "alice", "--auth-secret-file"])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let connector = tokio_rustls::TlsConnector::from(client_config(&pki.ca));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let url = format!("wss://localhost:{}/?token={token}", addr.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    let welcome = next_data(&mut ws, 5).await.into_text().unwrap();
    assert!(welcome.contains("\"type\":\"welcome\""), "{welcome}");
    ws.send(WsMessage::text(r#"{"cmd":"ping"}"#)).await.unwrap();
    let pong = next_data(&mut ws, 5).await.into_text().unwrap();
    assert!(pong.contains("pong"), "{pong}");

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
}
