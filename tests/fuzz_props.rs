//! Property tests over the same entry points as the cargo-fuzz targets (`fuzz/`, see
//! docs/fuzzing.md), so `cargo test` on stable exercises what the fuzzers do: random inputs,
//! plus inputs shaped like the real thing (upgrade requests, frames, commands, bodies, tokens)
//! so the properties are reached past the first byte. Regression inputs found by fuzzing are
//! replayed at the bottom.

use proptest::prelude::*;
use ringcast::fuzzing;

/// A plausible upgrade request with random pieces.
fn upgrade() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["GET", "POST", "get", "GET GET"]),
        "(/[a-z?=&%.]{0,12})|(/\\?token=[A-Za-z0-9._-]{0,40})",
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2"]),
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "Host",
                    "Upgrade",
                    "Connection",
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Version",
                    "Origin",
                    "Sec-WebSocket-Protocol",
                    "X",
                ]),
                "[ -~]{0,30}",
            ),
            0..10,
        ),
        any::<bool>(),
    )
        .prop_map(|(method, path, version, headers, complete)| {
            let mut s = format!("{method} {path} {version}\r\n");
            s.push_str("Host: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
            s.push_str("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
            for (k, v) in headers {
                s.push_str(&format!("{k}: {v}\r\n"));
            }
            s.push_str("Sec-WebSocket-Version: 13\r\n");
            if complete {
                s.push_str("\r\n");
            }
            s.into_bytes()
        })
}

/// Client frames (masked, mostly well-formed) with random opcodes, flags and payloads.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        prop::collection::vec(
            (any::<bool>(), 0u8..16, any::<bool>(), prop::collection::vec(any::<u8>(), 0..200)),
            0..6,
        ),
    )
        .prop_map(|(knobs, frames)| {
            let mut out = vec![knobs];
            for (fin, opcode, mask, payload) in frames {
                out.push(if fin { 0x80 } else { 0 } | opcode);
                let m = if mask { 0x80 } else { 0 };
                match payload.len() {
                    n if n < 126 => out.push(m | n as u8),
                    n => {
                        out.push(m | 126);
                        out.extend_from_slice(&(n as u16).to_be_bytes());
                    }
                }
                let key = [1u8, 2, 3, 4];
                if mask {
                    out.extend_from_slice(&key);
                }
                out.extend(
                    payload.iter().enumerate().map(|(i, b)| if mask { b ^ key[i % 4] } else { *b }),
                );
            }
            out
        })
}

fn command_text() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "add_group",
            "leave_group",
            "send_to_group",
            "send_to_all",
            "send_to_client",
            "ping",
            "nope",
        ]),
        "[a-z:*\\\\\"]{0,20}",
        prop::collection::vec("[a-z]{0,20}", 0..6),
        prop::sample::select(vec!["1", "\"x\"", "null", "[1]", "{}", "1e400"]),
    )
        .prop_map(|(cmd, group, groups, id)| {
            format!(
                r#"{{"cmd":"{cmd}","group_id":"{group}","group_ids":{},"message":"m","id":{id},"client_id":"{group}"}}"#,
                serde_json::to_string(&groups).unwrap()
            )
        })
}

fn api_body() -> impl Strategy<Value = String> {
    prop_oneof![
        (prop::sample::select(vec!["groups", "clients", "uids", "all"]), "[a-z0-9:\\n]{0,20}")
            .prop_map(|(kind, name)| {
                let to = if kind == "all" {
                    "{\"all\":true}".to_owned()
                } else {
                    format!("{{\"{kind}\":[{}]}}", serde_json::to_string(&name).unwrap())
                };
                format!(r#"{{"data":"hi","to":{to}}}"#)
            }),
        "[a-z0-9+/=]{0,20}".prop_map(|b| format!(r#"{{"binary_base64":"{b}","to":{{"all":true}}}}"#)),
        prop::collection::vec("[a-z]{0,8}", 0..4).prop_map(|gs| {
            let items: Vec<String> = gs
                .iter()
                .map(|g| format!(r#"{{"data":"x","to":{{"groups":["{g}"]}}}}"#))
                .collect();
            format!(r#"{{"publishes":[{}]}}"#, items.join(","))
        }),
        "(content|to_group|to_client_id|to_worker_id|to_connection_id|code|reason)=[a-z0-9%]{0,10}(&to_group=[a-z]{0,5})?",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn handshake_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::handshake(&data);
    }

    #[test]
    fn handshake_on_upgrade_like_requests(data in upgrade()) {
        fuzzing::handshake(&data);
    }

    #[test]
    fn codec_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::codec(&data);
    }

    #[test]
    fn codec_on_frames(data in frames()) {
        fuzzing::codec(&data);
    }

    #[test]
    fn command_on_random_text(text in "\\PC{0,200}") {
        fuzzing::command(text.as_bytes());
    }

    #[test]
    fn command_on_command_like_json(text in command_text()) {
        fuzzing::command(text.as_bytes());
    }

    #[test]
    fn api_body_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..400)) {
        fuzzing::api_body(&data);
    }

    #[test]
    fn api_body_on_body_like_json(text in api_body()) {
        fuzzing::api_body(text.as_bytes());
    }

    #[test]
    fn token_on_random_text(text in "\\PC{0,200}") {
        fuzzing::token(text.as_bytes());
    }

    #[test]
    fn token_on_jwt_like_text(text in "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}") {
        fuzzing::token(text.as_bytes());
    }
}

/// Inputs the fuzzers found or that once broke an invariant; each stays as a regression test.
#[test]
fn regressions() {
    for input in REGRESSIONS {
        fuzzing::handshake(input);
        fuzzing::codec(input);
        fuzzing::command(input);
        fuzzing::api_body(input);
        fuzzing::token(input);
    }
}

const REGRESSIONS: &[&[u8]] = &[
    b"",
    b"\x00",
    b"GET / HTTP/1.1\r\n\r\n",
    // codec (fuzz, crash-e1ed81a7): 1-byte reads; a masked empty close frame, then bytes after
    // it. Each read after the close reported `Closed` again (whole: once).
    b"\x00\x88\x80\x00\x6b\x6b\x6b\x6b",
];
