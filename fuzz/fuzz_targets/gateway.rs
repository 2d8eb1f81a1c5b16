#![no_main]
//! See `checks::gateway` for what this target holds.

libfuzzer_sys::fuzz_target!(|data: &[u8]| backbeat_fuzz::checks::gateway(data));
