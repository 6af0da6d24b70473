//! The client command parser and permission check.
//! Invariants: see `ringcast::fuzzing::command`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast::fuzzing::command(data));
