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
        "find_max",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    let sub_keys = |k: &str| {
        let mut ks: Vec<String> = v[k].as_object().unwrap().keys().cloned().collect();
        ks.sort_unstable();
        ks
    };
    assert_eq!(sub_keys("connect"), ["failed", "ok", "secs"]);
    assert_eq!(sub_keys("latency_us"), ["max", "mean", "p50", "p90", "p99", "p999"]);
    assert_eq!(
        sub_keys("cpu"),
        ["cores_used", "saturated", "sys_s", "threads", "user_s", "wall_s"]
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
