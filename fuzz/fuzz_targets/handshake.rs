//! The WebSocket upgrade parser and the admission decision on what it parsed.
//! Invariants: see `ringcast::fuzzing::handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast::fuzzing::handshake(data));
