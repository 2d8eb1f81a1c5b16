//! The fuzz targets' checks, one function per target (`fuzz_targets/*.rs`
//! only call them). The same file is compiled by the stable replay test
//! (`tests/tests/fuzz_replay.rs`), so every committed input goes through the
//! very checks the fuzzer made, on every CI run.

pub mod checks;
