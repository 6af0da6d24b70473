//! The HTTP API's request bodies and query strings.
//! Invariants: see `ringcast::fuzzing::api_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast::fuzzing::api_body(data));
