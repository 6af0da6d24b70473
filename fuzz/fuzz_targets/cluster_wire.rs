//! The inter-node format: a message read from the Redis bus.
//! Invariants: see `ringcast::fuzzing::cluster_wire`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast::fuzzing::cluster_wire(data));
