#![no_main]
//! See `checks::fast_paths` for what this target holds.

libfuzzer_sys::fuzz_target!(|data: &[u8]| backbeat_fuzz::checks::fast_paths(data));
