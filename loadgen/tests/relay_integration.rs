//! Runs the load generator library against an in-test relay server.

mod relay;

use ringcast_loadgen::{run, Config, Mode, Publish};

fn small_config(url: String) -> Config {
    Config {
        url,
        connections: 20,
        rate: 200.0,
        duration_s: 1.0,
        payload: 64,
        threads: 2,
        warmup_s: 0.0,
        drain_s: 3.0,
        progress: Some(false),
        ..Config::default()
    }
}

#[test]
fn plain_relay_delivers_everything() {
    let relay = relay::start();
    let report = run(&small_config(relay.url())).expect("load run");
    let r = &report.run;
    assert_eq!(r.connect.ok, 20);
    assert_eq!(r.connect.failed, 0);
    // 200 msg/s for 1 s, scheduled by absolute deadlines: exactly 200 messages.
    assert_eq!(r.sent, 200);
    assert_eq!(r.expected, 200 * 20);
    assert_eq!(r.received, r.expected, "{}", report.human());
    assert_eq!(r.lost, 0);
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.reordered, 0);
    assert!(r.latency_us.max >= r.latency_us.p50);
    assert!(r.deliveries_per_sec > 0.0);
    // The relay got our publisher's messages (and nothing from subscribers).
    assert_eq!(relay.messages_in.load(std::sync::atomic::Ordering::Relaxed), 200);

    // The JSON has exactly the contract's fields.
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = vec![
        "url",
        "connections",
        "publishers",
        "rate",
        "duration_s",
        "payload",
        "connect",
        "sent",
        "expected",
        "received",
        "deliveries_per_sec",
        "latency_us",
        "lost",
        "duplicates",
        "reordered",
        "cpu",
        "io",
        "find_max",
        "connect_only",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    let sub_keys = |k: &str| {
        let mut ks: Vec<String> = v[k].as_object().unwrap().keys().cloned().collect();
        ks.sort_unstable();
        ks
    };
    assert_eq!(
        sub_keys("connect"),
        ["failed", "handshakes_per_sec", "latency_us", "ok", "retries", "secs"]
    );
    assert_eq!(sub_keys("latency_us"), ["max", "mean", "p50", "p90", "p99", "p999"]);
    assert_eq!(
        sub_keys("cpu"),
        [
            "busiest_thread_cores",
            "cores_used",
            "s_per_million_deliveries",
            "saturated",
            "sys_s",
            "threads",
            "user_s",
            "wall_s"
        ]
    );
    assert!(v["find_max"].is_null());
    assert_eq!(v["connections"], 20);
    assert_eq!(v["expected"], 4000);
    assert_eq!(v["received"], 4000);
    assert_eq!(v["lost"], 0);
    assert!(v["latency_us"]["p99"].is_u64());
    assert!(v["latency_us"]["mean"].is_f64());
    assert_eq!(v["cpu"]["threads"], 2);
}

#[test]
fn find_max_reports_steps_and_best() {
    let relay = relay::start();
    let cfg = Config {
        connections: 10,
        rate: 100.0,
        duration_s: 0.5,
        find_max: true,
        max_steps: 2,
        rate_step_factor: 2.0,
        p99_bound_ms: 10_000.0,
        publishers: 2,
        ..small_config(relay.url())
    };
    let report = run(&cfg).expect("find-max run");
    let fm = report.find_max.as_ref().expect("find_max present");
    assert_eq!(fm.steps.len(), 2);
    assert_eq!(fm.steps[0].rate, 100.0);
    assert_eq!(fm.steps[1].rate, 200.0);
    for st in &fm.steps {
        assert_eq!(st.expected, st.sent * 10);
        assert_eq!(st.received, st.expected);
        assert_eq!(st.lost, 0);
    }
    let best = fm.best.as_ref().expect("a step met the bounds");
    assert_eq!(&report.run, best);
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(v["find_max"]["steps"].as_array().unwrap().len(), 2);
    assert!(v["find_max"]["steps"][0].get("find_max").is_none());
    assert_eq!(v["find_max"]["p99_bound_ms"], 10_000.0);
}

#[test]
fn groups_mode_text_messages_are_parsed() {
    // The test relay ignores the commands and relays the send_to_group JSON to everyone, so
    // with a single group every subscriber is a member: every delivery must be counted once.
    let relay = relay::start();
    let cfg = Config {
        mode: Mode::Groups,
        groups: vec!["room-1".to_owned()],
        connections: 8,
        rate: 100.0,
        duration_s: 0.5,
        ..small_config(relay.url())
    };
    let report = run(&cfg).expect("groups run");
    let r = &report.run;
    assert_eq!(r.sent, 50);
    assert_eq!(r.expected, 50 * 8);
    assert_eq!(r.received, r.expected, "{}", report.human());
    assert_eq!(r.lost, 0);
    // The relay also saw the 8 add_group commands.
    assert_eq!(relay.messages_in.load(std::sync::atomic::Ordering::Relaxed), 58);
}

#[test]
fn refused_connections_are_retried_then_counted_failed() {
    // Grab a free port and close it so connects are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = Config {
        connections: 3,
        connect_retries: 2,
        ..small_config(format!("ws://127.0.0.1:{port}/"))
    };
    let t0 = std::time::Instant::now();
    let err = run(&cfg).expect_err("nothing listens");
    // 2 retries with 50 ms + 100 ms backoff.
    assert!(t0.elapsed() >= std::time::Duration::from_millis(150));
    assert!(format!("{err:#}").contains("publisher"), "{err:#}");
}

#[test]
fn http_publishing_is_measured() {
    let relay = relay::start_with_http();
    let cfg = Config {
        publish: Publish::Http,
        http_url: Some(format!("http://{}/push", relay.http_addr.unwrap())),
        connections: 10,
        rate: 100.0,
        duration_s: 0.5,
        publishers: 2,
        ..small_config(relay.url())
    };
    let report = run(&cfg).expect("http run");
    let r = &report.run;
    assert_eq!(r.sent, 50);
    assert_eq!(r.expected, 50 * 10);
    assert_eq!(r.received, r.expected, "{}", report.human());
    assert_eq!(r.lost, 0);
    assert_eq!(r.extra.http, Some((50, 0)), "every POST answered 200");
    assert_eq!(relay.messages_in.load(std::sync::atomic::Ordering::Relaxed), 50);
}

#[test]
fn groups_mode_counts_only_own_group() {
    // Two groups, publishers rotate over them; the test relay sends every message to everyone,
    // so each subscriber also sees the other group's stream, which it must ignore.
    let relay = relay::start();
    let cfg = Config {
        mode: Mode::Groups,
        groups: vec!["a".to_owned(), "b".to_owned()],
        connections: 8,
        rate: 100.0,
        duration_s: 0.5,
        payload: 100,
        ..small_config(relay.url())
    };
    let report = run(&cfg).expect("groups run");
    let r = &report.run;
    assert_eq!(r.sent, 50);
    // 25 messages per group x 4 members per group x 2 groups.
    assert_eq!(r.expected, 200);
    assert_eq!(r.received, 200, "{}", report.human());
    assert_eq!((r.lost, r.duplicates, r.reordered), (0, 0, 0));
}

fn groups_http_config(relay: &relay::Relay, publish: Publish) -> Config {
    Config {
        mode: Mode::Groups,
        group_count: 4,
        publish,
        http_url: Some(format!("http://{}/", relay.http_addr.unwrap())),
        connections: 12,
        rate: 200.0,
        duration_s: 0.5,
        ..small_config(relay.url())
    }
}

fn request_text(relay: &relay::Relay, i: usize) -> String {
    String::from_utf8(relay.http_requests.lock().unwrap()[i].clone()).unwrap()
}

#[test]
fn http_seed_form_uses_to_group_and_the_token() {
    let relay = relay::start_with(relay::Options {
        http: true,
        welcome: true,
        token: Some("t0k3n".into()),
        ..Default::default()
    });
    let cfg =
        Config { http_token: Some("t0k3n".into()), ..groups_http_config(&relay, Publish::Http) };
    let report = run(&cfg).expect("http seed run");
    let r = &report.run;
    assert_eq!(r.sent, 100);
    // 25 messages per group x 3 members per group x 4 groups; the welcome frames (whose
    // client id contains the hex magic) are ignored.
    assert_eq!(r.expected, 300);
    assert_eq!(r.received, 300, "{}", report.human());
    assert_eq!((r.lost, r.duplicates), (0, 0));
    let h = r.http.as_ref().expect("http stats");
    assert_eq!((h.form.as_str(), h.batch_size), ("seed", 1));
    assert_eq!((h.requests, h.responses, h.ok, h.errors), (100, 100, 100, 0));
    assert_eq!(h.status.get("200"), Some(&100));
    // The relay answers {"queued": <every connection>} to each push.
    assert_eq!(h.queued, 100 * 12);
    // Byte-exact on the wire: groups g0, g1, ... in rotation.
    let host = relay.http_addr.unwrap();
    for (i, g) in ["g0", "g1", "g2", "g3", "g0"].iter().enumerate() {
        let req = request_text(&relay, i);
        let content = req.strip_prefix("POST /?content=").expect(&req);
        let (text, rest) = content.split_once('&').unwrap();
        assert!(text.starts_with("52434c47") && text.len() == 64, "{req}");
        assert_eq!(
            rest,
            format!(
                "to_group={g} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer t0k3n\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        );
    }
    // The report's JSON carries the http object (groups too), the contract's keys otherwise.
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(v["http"]["requests"], 100);
    assert_eq!(v["http"]["errors"], 0);
    assert_eq!(v["http"]["status"]["200"], 100);
    assert_eq!(v["groups"]["count"], 4);
    assert_eq!(v["groups"]["members_min"], 3);
    assert_eq!(v["groups"]["error_replies_subscribers"], 0);
}

#[test]
fn http_batch_form_carries_batch_size_messages_per_request() {
    let relay = relay::start_with(relay::Options { http: true, ..Default::default() });
    let cfg = Config { batch_size: 8, ..groups_http_config(&relay, Publish::HttpBatch) };
    let report = run(&cfg).expect("http batch run");
    let r = &report.run;
    assert_eq!(r.sent, 100);
    assert_eq!(r.expected, 300);
    assert_eq!(r.received, 300, "{}", report.human());
    let h = r.http.as_ref().expect("http stats");
    assert_eq!((h.form.as_str(), h.batch_size), ("batch", 8));
    // 100 messages: 12 full batches of 8 and a tail of 4.
    assert_eq!((h.requests, h.responses, h.errors), (13, 13, 0));
    assert_eq!(h.queued, 100 * 12);
    let req = request_text(&relay, 0);
    let (head, body) = req.split_once("\r\n\r\n").unwrap();
    assert_eq!(
        head,
        format!(
            "POST /api/publish/batch HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}",
            relay.http_addr.unwrap(),
            body.len()
        )
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let items = v["publishes"].as_array().unwrap();
    assert_eq!(items.len(), 8);
    for (i, it) in items.iter().enumerate() {
        assert_eq!(it["to"]["groups"], serde_json::json!([format!("g{}", i % 4)]));
        assert!(it["data"].as_str().unwrap().starts_with("52434c47"));
    }
    let tail = request_text(&relay, 12);
    let body = tail.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["publishes"].as_array().unwrap().len(), 4);
}

#[test]
fn http_json_form_and_refused_pushes_are_reported() {
    // Every 5th request is refused with 503: those messages never arrive, and the report says
    // why instead of showing silent losses.
    let relay =
        relay::start_with(relay::Options { http: true, fail_every: Some(5), ..Default::default() });
    let cfg = Config { drain_s: 1.0, ..groups_http_config(&relay, Publish::HttpJson) };
    let report = run(&cfg).expect("http json run");
    let r = &report.run;
    assert_eq!(r.sent, 100);
    let h = r.http.as_ref().expect("http stats");
    assert_eq!(h.form, "json");
    assert_eq!((h.requests, h.responses, h.ok, h.errors), (100, 100, 80, 20));
    assert_eq!(h.status.get("503"), Some(&20));
    assert_eq!(r.lost, 20 * 3, "{}", report.human());
    assert!(report.human().contains("refused 20 request(s)"), "{}", report.human());
    let req = request_text(&relay, 0);
    assert!(req.starts_with("POST /api/publish HTTP/1.1\r\n"), "{req}");
    let body = req.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["to"], serde_json::json!({"groups": ["g0"]}));
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(v["http"]["status"]["503"], 20);
    assert_eq!(v["http"]["errors"], 20);
}

#[test]
fn wrong_token_is_counted_as_errors() {
    let relay = relay::start_with(relay::Options {
        http: true,
        token: Some("right".into()),
        ..Default::default()
    });
    let cfg = Config {
        http_token: Some("wrong".into()),
        drain_s: 1.0,
        ..groups_http_config(&relay, Publish::Http)
    };
    let report = run(&cfg).expect("run");
    let h = report.run.http.as_ref().unwrap();
    assert_eq!((h.ok, h.errors), (0, 100));
    assert_eq!(h.status.get("401"), Some(&100));
    assert_eq!(report.run.received, 0);
}

#[test]
fn refused_joins_are_reported() {
    let relay = relay::start_with(relay::Options { reject_joins: true, ..Default::default() });
    let cfg = Config {
        mode: Mode::Groups,
        group_count: 2,
        connections: 6,
        rate: 100.0,
        duration_s: 0.3,
        ..small_config(relay.url())
    };
    let report = run(&cfg).expect("run");
    let g = report.run.groups.as_ref().expect("groups stats");
    assert_eq!(g.count, 2);
    assert_eq!(g.error_replies_subscribers, 6);
    assert_eq!(g.error_replies_publishers, 0);
    assert_eq!(g.first_error.as_deref(), Some(r#"{"type":"error","reason":"join refused"}"#));
    assert!(report.human().contains("error replies"), "{}", report.human());
}
