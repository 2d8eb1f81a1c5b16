#![no_main]
//! See `checks::hlc_timestamp` for what this target holds.

libfuzzer_sys::fuzz_target!(|data: &[u8]| backbeat_fuzz::checks::hlc_timestamp(data));
