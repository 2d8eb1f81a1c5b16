#![no_main]
//! See `checks::json` for what this target holds.

libfuzzer_sys::fuzz_target!(|data: &[u8]| backbeat_fuzz::checks::json(data));
