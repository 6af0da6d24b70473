//! The connect-token verifier and the admission decision.
//! Invariants: see `ringcast::fuzzing::token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast::fuzzing::token(data));
