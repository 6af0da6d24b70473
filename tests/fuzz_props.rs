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

/// Inter-node messages: every kind, validly encoded, then sometimes damaged (a byte changed,
/// cut short, or bytes appended), so decoding is exercised past the header on every path.
fn wire_message() -> impl Strategy<Value = Vec<u8>> {
    use ringcast::cluster::interest::Channel;
    use ringcast::cluster::wire::{Body, Envelope, Query, Target};
    use ringcast::{ConnId, GroupId, Message, NodeId, Uid};
    let name = "[a-z0-9:\u{e9}-]{1,12}";
    let client = (any::<u32>(), any::<u16>(), any::<u32>(), any::<u32>())
        .prop_map(|(n, s, slot, g)| ConnId::new(NodeId(n), s as usize, slot, g));
    let names = prop::collection::vec(name, 1..4);
    let target = prop_oneof![
        Just(Target::All),
        names.clone().prop_map(|v| Target::Groups(
            v.iter().map(|s| GroupId::new(s, 128).unwrap()).collect()
        )),
        names
            .clone()
            .prop_map(|v| Target::Uids(v.iter().map(|s| Uid::new(s, 128).unwrap()).collect())),
        prop::collection::vec(client.clone(), 1..3).prop_map(Target::Clients),
    ];
    let channel = (any::<bool>(), name).prop_map(|(g, s)| {
        if g {
            Channel::Group(GroupId::new(&s, 128).unwrap())
        } else {
            Channel::Uid(Uid::new(&s, 128).unwrap())
        }
    });
    let body = prop_oneof![
        (any::<u64>(), target, prop::collection::vec(client.clone(), 0..3), "\\PC{0,40}").prop_map(
            |(request, target, exclude, text)| Body::Publish {
                request,
                target,
                exclude,
                frame: Message::text(text).encode(),
            }
        ),
        (any::<u64>(), name).prop_map(|(request, g)| Body::Query {
            request,
            query: Query::Group(GroupId::new(&g, 128).unwrap()),
        }),
        (any::<u64>(), client.clone()).prop_map(|(request, c)| Body::Query {
            request,
            query: Query::Op {
                client: c,
                op: r#"{"join_group":{"group":"g"}}"#.as_bytes().to_vec().into()
            },
        }),
        (any::<u64>(), "\\PC{0,30}")
            .prop_map(|(request, j)| Body::Answer { request, json: j.into_bytes().into() }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(request, queued, slow_consumers)| {
            Body::Report { request, queued, slow_consumers }
        }),
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(channel.clone(), 0..4),
            prop::collection::vec(channel, 0..3)
        )
            .prop_map(|(replace, reply, added, removed)| Body::Interest {
                replace,
                reply,
                added,
                removed
            }),
    ];
    (any::<u32>(), any::<u64>(), body, 0u8..4, any::<usize>(), any::<u8>()).prop_map(
        |(origin, sequence, body, damage, at, byte)| {
            let mut out = Vec::new();
            Envelope { origin: NodeId(origin), sequence, body }.encode(&mut out).unwrap();
            match damage {
                0 => {}
                1 => {
                    let i = at % out.len();
                    out[i] = byte;
                }
                2 => out.truncate(at % out.len()),
                _ => out.push(byte),
            }
            out
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn cluster_wire_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::cluster_wire(&data);
    }

    #[test]
    fn cluster_wire_on_messages_whole_and_damaged(data in wire_message()) {
        fuzzing::cluster_wire(&data);
    }

    /// Encode then decode gives the same message, for every kind.
    #[test]
    fn cluster_wire_round_trips(data in wire_message().prop_filter("undamaged", |d| {
        ringcast::cluster::wire::Envelope::decode(d.clone().into()).is_ok()
    })) {
        use ringcast::cluster::wire::Envelope;
        let env = Envelope::decode(data.clone().into()).unwrap();
        let mut out = Vec::new();
        env.encode(&mut out).unwrap();
        prop_assert_eq!(&out, &data);
        prop_assert_eq!(Envelope::decode(out.into()).unwrap(), env);
    }

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
        fuzzing::cluster_wire(input);
    }
}

const REGRESSIONS: &[&[u8]] = &[
    b"",
    b"\x00",
    // cluster_wire (proptest, cluster_wire_round_trips): an Interest message with a non-zero
    // request field decoded fine and re-encoded with a zero one (two encodings of one message).
    b"\x01\x05\0\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0\0",
    b"GET / HTTP/1.1\r\n\r\n",
    // codec (fuzz, crash-e1ed81a7): 1-byte reads; a masked empty close frame, then bytes after
    // it. Each read after the close reported `Closed` again (whole: once).
    b"\x00\x88\x80\x00\x6b\x6b\x6b\x6b",
];
