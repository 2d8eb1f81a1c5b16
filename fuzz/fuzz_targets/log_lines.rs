#![no_main]
//! See `checks::log_lines` for what this target holds.

libfuzzer_sys::fuzz_target!(|data: &[u8]| backbeat_fuzz::checks::log_lines(data));
