#!/usr/bin/env bash
# Writes the seed corpora (fuzz/corpus/{target}/) from the tests' inputs:
# the conformance logs, the golden scenarios, the ingest corpus of bad claims
# and the schema contract tests' documents (tests/examples/fuzz_seeds.rs says
# which input goes where). Files are named by their bytes: running it again
# adds only what is new. With --cmin, each corpus is then minimised with
# `cargo fuzz cmin` (nightly), keeping only inputs that add coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet -p backbeat-tests --example fuzz_seeds -- "$PWD"
if [[ "${1:-}" == "--cmin" ]]; then
    cd fuzz
    for target in $(cargo +nightly fuzz list); do
        cargo +nightly fuzz cmin "$target" "corpus/$target"
    done
fi
