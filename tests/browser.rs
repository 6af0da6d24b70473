//! The demo page (`ringcast serve --demo`): the real binary, real HTTP, and a real browser.
//!
//! - Without `--demo` there is no page: `/` stays seed 003's pusher and `/demo/*` is 404.
//! - With `--demo` the page, its assets and `/demo/config.json` (the WebSocket port) are
//!   served, without a token even when the API has one; the API itself still needs it.
//! - `tests/browser/demo.test.mjs` drives the page in Debian's headless Chromium through
//!   playwright-core against two daemons (one without a token, one with): two pages join a
//!   group and each sees the other's message, pushes through the HTTP API appear on the page,
//!   live counts follow, and the token flow works. It needs what
//!   `scripts/install-test-deps.sh` installs (chromium, node, tests/browser/node_modules) and
//!   fails, saying so, when they are missing.
//!
//! The README's screenshot, `docs/demo.png`, is the script's, taken against a daemon on the
//! default ports (`ringcast serve --demo`, plus a token one on other ports):
//! `RINGCAST_DEMO_URL=http://127.0.0.1:2021/ RINGCAST_DEMO_TOKEN_URL=http://127.0.0.1:24031/
//! RINGCAST_DEMO_TOKEN=T RINGCAST_DEMO_SCREENSHOT=$PWD/docs/demo.png node
//! tests/browser/demo.test.mjs` (`RINGCAST_DEMO_SCREENSHOT` also works through this test).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The browser run's bound: the script gives up after 90 s by itself.
const BROWSER_RUN_MAX: Duration = Duration::from_secs(150);

/// A `ringcast serve` child, killed when dropped, with its log kept for failure messages.
struct Daemon {
    child: Child,
    ws: SocketAddr,
    api: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(["--shards", "2", "--no-pin"])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("RINGCAST_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringcast");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = collect(child.stderr.take().unwrap(), log.clone());
        let (mut ws, mut api) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while ws.is_none() || api.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                panic!("the daemon did not say where it listens: {:?}", log.lock().unwrap());
            };
            if let Some(a) = line.split("listening on ").nth(1) {
                let a: SocketAddr = a.trim().parse().unwrap();
                if line.contains("HTTP API") {
                    api = Some(a);
                } else {
                    ws = Some(a);
                }
            }
        }
        Daemon { child, ws: ws.unwrap(), api: api.unwrap(), log }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.api)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read `r` line by line on a thread into `into`; the lines also go out on the channel.
fn collect(r: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    rx
}

/// One HTTP/1.1 request: status, lower-cased head, body.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (resp[9..12].parse().unwrap(), head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn without_demo_there_is_no_page() {
    let d = Daemon::start(&[]);
    let (status, _, body) = http(d.api, "GET", "/", None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("content: missing"), "{body}");
    assert!(body.contains("--demo"), "a browser on / is told where the page is: {body}");
    for path in ["/demo/app.js", "/demo/style.css", "/demo/config.json"] {
        let (status, _, body) = http(d.api, "GET", path, None);
        assert_eq!(status, 404, "{path}: {body}");
    }
    // `/` is still the seed pusher.
    let (status, _, body) = http(d.api, "GET", "/?content=hi", None);
    assert_eq!((status, body.contains("\"queued\":0")), (200, true), "{body}");
}

#[test]
fn with_demo_the_page_is_served_and_the_api_keeps_its_token() {
    let d = Daemon::start(&["--demo"]);
    let (status, head, body) = http(d.api, "GET", "/", None);
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: text/html; charset=utf-8"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(body.contains(r#"<script src="/demo/app.js""#), "{body}");
    for (path, kind) in [("/demo/app.js", "text/javascript"), ("/demo/style.css", "text/css")] {
        let (status, head, _) = http(d.api, "GET", path, None);
        assert_eq!(status, 200, "{path}");
        assert!(head.contains(&format!("content-type: {kind}")), "{path}: {head}");
    }
    let (status, _, body) = http(d.api, "GET", "/demo/config.json", None);
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    let want = serde_json::json!({"ws_host": "127.0.0.1", "ws_port": d.ws.port(),
        "token_required": false});
    assert_eq!(config, want);
    // With a query string `/` is the seed pusher, and HEAD still never publishes.
    let (status, _, body) = http(d.api, "GET", "/?content=hi", None);
    assert_eq!((status, body.contains("\"queued\":0")), (200, true), "{body}");
    assert_eq!(http(d.api, "HEAD", "/?content=hi", None).0, 405);
    assert_eq!(http(d.api, "POST", "/demo/config.json", None).0, 405);

    let t = Daemon::start(&["--demo", "--api-token", "s3cret"]);
    for path in ["/", "/demo/app.js", "/demo/style.css"] {
        assert_eq!(http(t.api, "GET", path, None).0, 200, "{path} needs no token");
    }
    let (_, _, body) = http(t.api, "GET", "/demo/config.json", None);
    assert!(body.contains(r#""token_required":true"#), "{body}");
    for path in ["/api/stats", "/api/groups/lobby", "/?content=hi"] {
        assert_eq!(http(t.api, "GET", path, None).0, 401, "{path} still needs the token");
    }
    assert_eq!(http(t.api, "GET", "/api/stats", Some("s3cret")).0, 200);
}

/// What the browser test needs, or a message saying how to get it.
fn browser_prerequisites(dir: &Path) -> Result<PathBuf, String> {
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    let mut missing = Vec::new();
    if !chromium.exists() {
        missing.push(format!("{} (Debian's chromium)", chromium.display()));
    }
    if Command::new("node").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        missing.push("node".into());
    }
    if !dir.join("node_modules/playwright-core/package.json").exists() {
        missing.push(format!("{}/node_modules/playwright-core", dir.display()));
    }
    if missing.is_empty() {
        Ok(chromium)
    } else {
        Err(format!(
            "the browser test needs {}: run scripts/install-test-deps.sh",
            missing.join(", ")
        ))
    }
}

#[test]
fn the_demo_page_works_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = browser_prerequisites(&dir).unwrap_or_else(|e| panic!("{e}"));
    let open = Daemon::start(&["--demo"]);
    let token = format!("demo-token-{}", std::process::id());
    let locked = Daemon::start(&["--demo", "--api-token", &token]);

    let mut node = Command::new("node")
        .arg(dir.join("demo.test.mjs"))
        .current_dir(&dir)
        .env("RINGCAST_DEMO_URL", open.url())
        .env("RINGCAST_DEMO_TOKEN_URL", locked.url())
        .env("RINGCAST_DEMO_TOKEN", &token)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let _ = collect(node.stdout.take().unwrap(), out.clone());
    let _ = collect(node.stderr.take().unwrap(), err.clone());
    let deadline = Instant::now() + BROWSER_RUN_MAX;
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let the reader threads take the last lines.
    std::thread::sleep(Duration::from_millis(200));
    let out = out.lock().unwrap().join("\n");
    let err = err.lock().unwrap().join("\n");
    println!("{out}");
    let report = || {
        format!(
            "stdout:\n{out}\nstderr:\n{err}\ndaemon log:\n{}\ndaemon (token) log:\n{}",
            open.log(),
            locked.log()
        )
    };
    match status {
        None => panic!("the browser test ran over {BROWSER_RUN_MAX:?}\n{}", report()),
        Some(s) => assert!(
            s.success() && out.contains("demo page: all checks passed"),
            "the browser test failed ({s})\n{}",
            report()
        ),
    }
    // Every check printed its line.
    assert!(out.lines().filter(|l| l.starts_with("ok - ")).count() >= 9, "{out}");
}
