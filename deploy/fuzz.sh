#!/usr/bin/env bash
# The fuzz part of the fault suite (issue 22): runs every cargo-fuzz target of
# fuzz/ for SECONDS_PER_TARGET seconds (default 30) and prints a table:
# target, runs, execs/s, corpus size, crashes (0, or the artifact's path).
# With BACKBEAT_FAULT_REPORT set, appends one FaultRecord JSON line per target
# to that file (tests/src/faults.rs; deploy/faults.sh prints them).
#
#   bash deploy/fuzz.sh [SECONDS_PER_TARGET]
#
# BACKBEAT_FUZZ_TARGETS="checkpoint json" runs only those targets (default: all).
#
# Needs the nightly toolchain (rustup); installs cargo-fuzz from crates.io when
# missing. Builds in $BACKBEAT_FUZZ_TARGET_DIR (default
# ~/.cache/backbeat-fuzz-target), with debug assertions (the fold's
# invariants) and AddressSanitizer. Each run starts from the committed seed
# corpus (fuzz/corpus/TARGET, read only) and keeps what it finds in
# fuzz/.work/TARGET (not committed). A crash, hang or allocation past the
# limits leaves its input in fuzz/artifacts/TARGET/: add it to
# fuzz/regressions/TARGET/ (replayed on stable by tests/tests/fuzz_replay.rs)
# and to the crate's own tests when fixing it.
#
# Every input is checked for: no panic (the target's asserts too), no hang
# (-timeout), no allocation past the limits. The limits come from the
# documented input limits: a message is at most 8 KiB (SPEC §2), a batch body
# at most --batch-bytes-max (1 MiB by default; the target picks smaller
# limits too so that its inputs reach them), a dead letter at most
# --dead-letter-bytes-max (64 KiB). No input may make one allocation above
# -malloc_limit_mb (64 MB: far above any limit above, far below what a length
# prefix or a count taken from the input could ask for) or the process
# exceed -rss_limit_mb (1024 MB, AddressSanitizer's overhead included).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-30}"
TARGET_DIR="${BACKBEAT_FUZZ_TARGET_DIR:-$HOME/.cache/backbeat-fuzz-target}"
TIMEOUT_SECS=10
RSS_LIMIT_MB=1024
MALLOC_LIMIT_MB=64

# The largest input each target is given (bytes): a message and a header
# (with room past 8 KiB so that `too_large` is reached), a few messages for
# the JSON reader, a log of some lines, a checkpoint of a small fold, a batch
# body past the small limits the target picks.
max_len() {
    case "$1" in
        claim | beat | fast_paths) echo 9216 ;;
        json) echo 16384 ;;
        hlc_timestamp) echo 512 ;;
        log_lines | checkpoint) echo 65536 ;;
        gateway) echo 131072 ;;
        *) echo 4096 ;;
    esac
}

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd fuzz
echo "==> building the fuzz targets (nightly, AddressSanitizer, debug assertions)"
cargo +nightly fuzz build --debug-assertions --target-dir "$TARGET_DIR" >/dev/null

mkdir -p .work artifacts
results=()
found=0
for target in ${BACKBEAT_FUZZ_TARGETS:-$(cargo +nightly fuzz list)}; do
    work=".work/$target"
    mkdir -p "$work" "artifacts/$target" "corpus/$target"
    log=".work/$target.log"
    echo "==> $target: ${SECONDS_PER_TARGET}s"
    set +e
    cargo +nightly fuzz run --debug-assertions --target-dir "$TARGET_DIR" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT_SECS" \
        -rss_limit_mb="$RSS_LIMIT_MB" -malloc_limit_mb="$MALLOC_LIMIT_MB" \
        -max_len="$(max_len "$target")" -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" >"$log" 2>&1
    status=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [[ $status -ne 0 && -z "$crash" ]]; then
        crash="exit $status, see fuzz/$log"
    fi
    if [[ -n "$crash" ]]; then
        found=$((found + 1))
        grep -m1 -B2 -A12 -E 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|==[0-9]+==' "$log" >&2 || tail -20 "$log" >&2
    fi
    results+=("$target|${runs:-0}|${speed:-0}|${corpus:-0}|${crash:-0}")
    if [[ -n "${BACKBEAT_FAULT_REPORT:-}" ]]; then
        python3 - "$target" "${runs:-0}" "${speed:-0}" "${corpus:-0}" "${crash:-0}" "$SECONDS_PER_TARGET" >>"$BACKBEAT_FAULT_REPORT" <<'EOF'
import json, sys
target, runs, speed, corpus, crash, seconds = sys.argv[1:]
print(json.dumps({
    "fault": f"fuzz {target}",
    "injected": int(runs),
    "checked": "no panic, hang or allocation past the limit",
    "acked_lost": None,
    "duplicated": None,
    "differing_reports": None,
    "longest_unavailable_ms": None,
    "reference_unavailable_ms": None,
    "notes": f"{speed} execs/s for {seconds} s, corpus {corpus}, crashes: {crash}",
}))
EOF
    fi
done

echo
printf '%-14s %12s %10s %8s  %s\n' target runs execs/s corpus crashes
for row in "${results[@]}"; do
    IFS='|' read -r target runs speed corpus crash <<<"$row"
    printf '%-14s %12s %10s %8s  %s\n' "$target" "$runs" "$speed" "$corpus" "$crash"
done
if [[ $found -gt 0 ]]; then
    echo "fuzz.sh: $found target(s) found a failing input" >&2
    exit 1
fi
