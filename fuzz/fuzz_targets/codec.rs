//! The inbound frame path: a client's byte stream, fed whole and in pieces.
//! Invariants: see `ringcast::fuzzing::codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast::fuzzing::codec(data));
