//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the property tests
//! (`tests/fuzz_props.rs`), so CI exercises exactly what the fuzzers do. Each takes arbitrary
//! bytes, drives one parser of untrusted input as the daemon does, and checks the invariants
//! that must hold whatever the input (a violated one panics: that is the finding).
//!
//! Not a stable API.
#![doc(hidden)]

use crate::auth::{self, AuthConfig, AuthMode, Claims, Secret, UpgradeRequest};
use crate::command::{self, JoinMatcher, NoGrants, ParseLimits};
use crate::config::Permissions;
use crate::proto::{handshake, Codec, Inbound};

/// Largest upgrade head the handshake target allows (the daemon's default).
const HEADER_BYTES_MAX: usize = 8 * 1024;
/// A fixed "now" for the token targets (2027-01-15), so findings replay identically.
pub const NOW_UNIX: u64 = 1_800_000_000;
/// The secret the token targets sign and verify with.
pub const SECRET: &str = "fuzz-secret-0123456789abcdef-0123456789";

/// The upgrade parser: never panics; a complete request either fails with a status or yields
/// a response and a consumed length within the input; every prefix of an accepted request is
/// "incomplete" (`Ok(None)`) or the same refusal.
pub fn handshake(data: &[u8]) {
    match handshake::parse(data, HEADER_BYTES_MAX) {
        Ok(None) => assert!(data.len() < HEADER_BYTES_MAX),
        Ok(Some(a)) => {
            assert!(a.consumed <= data.len() && a.consumed <= HEADER_BYTES_MAX);
            assert!(a.response.starts_with(b"HTTP/1.1 101"));
            let with = a.response_with(Some(auth::SUBPROTOCOL));
            assert!(with.ends_with(b"Sec-WebSocket-Protocol: ringcast\r\n\r\n"));
            // What the shard does next: the admission decision on the parsed pieces.
            let policy = policy(AuthMode::Optional, &["https://*.example.com"]);
            let req = UpgradeRequest {
                path: &a.path,
                origin: a.origin.as_deref(),
                protocols: a.protocols.as_deref(),
            };
            if let Ok(adm) = policy.admit(&req, NOW_UNIX) {
                assert!(!adm.path.contains("token="), "a token leaked into the path");
            }
            for cut in [a.consumed / 2, a.consumed.saturating_sub(1)] {
                assert!(!matches!(handshake::parse(&data[..cut], HEADER_BYTES_MAX), Ok(Some(_))));
            }
        }
        Err(r) => {
            let status = r.status();
            assert!((400..600).contains(&status));
            let resp = r.response();
            assert!(resp.starts_with(format!("HTTP/1.1 {status} ").as_bytes()));
        }
    }
}

/// The inbound frame path: the first byte picks a read size and a message limit, the rest is
/// the stream from a client. Feeding it in pieces must give the same messages, the same
/// control replies and the same failure as feeding it at once (reads split anywhere).
pub fn codec(data: &[u8]) {
    let Some((&knobs, stream)) = data.split_first() else { return };
    let chunk = usize::from(knobs & 0x1f) + 1;
    let message_bytes_max = if knobs & 0x80 != 0 { 64 } else { 1 << 20 };
    let whole = feed(stream, stream.len().max(1), message_bytes_max);
    let pieces = feed(stream, chunk, message_bytes_max);
    assert_eq!(whole, pieces, "read size {chunk} changed the outcome");
}

type Fed = (Vec<Inbound>, Vec<u8>, Option<crate::proto::codec::Failure>);

fn feed(stream: &[u8], chunk: usize, message_bytes_max: usize) -> Fed {
    let mut codec = Codec::default();
    let (mut events, mut out) = (Vec::new(), Vec::new());
    for piece in stream.chunks(chunk) {
        if let Err(f) = codec.handle_read(piece, message_bytes_max, &mut out, |e| events.push(e)) {
            // The shard stops parsing a failed connection and sends our close frame.
            codec.close(f.code, f.reason, message_bytes_max, &mut out);
            return (events, out, Some(f));
        }
    }
    (events, out, None)
}

/// The client command parser and the permission check: never panics; an accepted command
/// respects the limits; a refusal has a reason; checking under every policy works.
pub fn command(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limits = ParseLimits { group_id_bytes_max: 16, targets_max: 4 };
    match command::parse(text, limits) {
        Ok(req) => {
            if let command::Command::SendToGroup { groups, .. } = &req.cmd {
                assert!(!groups.is_empty() && groups.len() <= 4);
                assert!(groups.iter().all(|g| g.as_str().len() <= 16));
            }
            for perms in [Permissions::default(), Permissions::demo()] {
                let join = JoinMatcher::new(&perms.join).expect("built-in policies compile");
                let _ = command::check(&perms, &join, &req.cmd, |g| g.len() % 2 == 0, 3, &NoGrants);
            }
            if let Some(id) = &req.id {
                assert!(id.0.len() <= command::REQUEST_ID_BYTES_MAX);
            }
        }
        Err(rej) => {
            assert!(!rej.reason.is_empty());
            let frame = command::error(rej.id.as_ref(), rej.cmd.as_deref(), &rej.reason);
            assert!(serde_json::from_str::<serde_json::Value>(&frame).is_ok());
        }
    }
}

/// The HTTP API's request bodies and query strings.
pub fn api_body(data: &[u8]) {
    crate::api::parse_any_body(data, 16);
}

/// The connect-token verifier and the admission decision: arbitrary text as a token (query
/// or subprotocol) is refused or accepted without panicking, and claims built from the input,
/// signed with the right secret, verify to what was signed.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let policy = policy(AuthMode::Required, &[]);
    let mut parts = text.splitn(3, '\n');
    let (path, origin, protocols) = (parts.next().unwrap_or(""), parts.next(), parts.next());
    let _ = policy.admit(&UpgradeRequest { path, origin, protocols }, NOW_UNIX);
    let verifier = auth::Verifier::new(&Secret::new(SECRET), None, None, 32);
    assert!(verifier.verify(&text, NOW_UNIX).is_err() || text.matches('.').count() == 2);
    // Round trip: claims from the input.
    let mut fields = text.split('\u{0}');
    let sub = fields.next().unwrap_or("").to_owned();
    let exp =
        NOW_UNIX.wrapping_add(data.first().map_or(0, |&b| u64::from(b)) * 10) % (NOW_UNIX * 2);
    let join: Vec<String> = fields.map(str::to_owned).collect();
    let claims = Claims {
        sub: sub.clone(),
        exp,
        nbf: None,
        iat: None,
        iss: None,
        aud: None,
        join: join.clone(),
        publish: Vec::new(),
    };
    let t = auth::token::mint(&Secret::new(SECRET), &claims);
    let query = format!("/?token={t}");
    match (
        verifier.verify(&t, NOW_UNIX),
        policy.admit(&UpgradeRequest { path: &query, origin: None, protocols: None }, NOW_UNIX),
    ) {
        (Ok(g), Ok(adm)) => {
            assert!(exp > NOW_UNIX);
            assert_eq!(
                g.uid.as_ref().map(|u| u.as_str()),
                (!sub.is_empty()).then_some(sub.as_str())
            );
            assert!(join.iter().all(|j| g.join.matches(j)));
            assert_eq!(adm.path, "/");
        }
        (Err(e), Err(_)) => {
            assert!(
                e == auth::TokenError::Expired && exp <= NOW_UNIX
                    || e == auth::TokenError::BadSubject,
                "{e:?} for {claims:?}"
            );
        }
        (v, a) => panic!("verifier and policy disagree: {v:?} / {a:?}"),
    }
}

fn policy(mode: AuthMode, origins: &[&str]) -> auth::Policy {
    let c = AuthConfig {
        mode,
        secret: Some(Secret::new(SECRET)),
        origins_allowed: origins.iter().map(|s| s.to_string()).collect(),
        ..AuthConfig::default()
    };
    auth::Policy::new(&c, 32).expect("valid fuzz policy")
}

/// The inter-node format (`cluster::wire`): what a node reads from the Redis bus, which any
/// client of that Redis can publish to. `data` is decoded as it arrives, and again behind a
/// valid header whose kind the first byte picks (so the bodies are reached, not just the
/// version check). Never panics; an accepted message re-encodes to exactly the same bytes (the
/// format is canonical, so what a node forwards is what it read); a publish's frame is one
/// valid WebSocket frame; an operation's JSON either parses as a `RemoteOp` or is refused.
pub fn cluster_wire(data: &[u8]) {
    use crate::cluster::wire::{Body, Envelope, Query, HEADER_BYTES, VERSION};
    let check = |msg: Vec<u8>| {
        let Ok(env) = Envelope::decode(bytes::Bytes::from(msg.clone())) else { return };
        let mut out = Vec::with_capacity(msg.len());
        env.encode(&mut out).expect("an accepted message encodes");
        assert_eq!(out, msg, "not canonical: {env:?}");
        match &env.body {
            Body::Publish { frame, .. } => {
                assert!(frame.len() >= 2 && matches!(frame[0], 0x81 | 0x82));
            }
            Body::Query { query: Query::Op { op, .. }, .. } => {
                let _ = serde_json::from_slice::<crate::cluster::ops::RemoteOp>(op);
            }
            _ => {}
        }
    };
    check(data.to_vec());
    let Some((&kind, rest)) = data.split_first() else { return };
    let mut msg = Vec::with_capacity(HEADER_BYTES + rest.len());
    msg.extend_from_slice(&[VERSION, kind % 6 + 1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1]);
    msg.extend_from_slice(rest);
    check(msg);
}
