#![no_main]
//! See `checks::beat` for what this target holds.

libfuzzer_sys::fuzz_target!(|data: &[u8]| backbeat_fuzz::checks::beat(data));
