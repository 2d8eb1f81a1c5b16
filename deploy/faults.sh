#!/usr/bin/env bash
# The fault suite in one command (issue 22): installs what is missing
# (nats-server, moto_server), builds, runs every fault test with
# BACKBEAT_FAULT_REPORT set, and prints the table of their records: each
# fault, how often it was injected, what was checked, and the figures (acked
# lost, duplicated, differing reports, longest unavailability beside the raw
# JetStream reference measured in the same run).
#
#   bash deploy/faults.sh            the CI mode: each fault a few times (minutes)
#   bash deploy/faults.sh --long     the long mode: 20 processor kills, 10 query
#                                    writer kills, three rounds of NATS leader
#                                    kills, ten pulse partitions, longer load;
#                                    fuzzing; and the soak
#   bash deploy/faults.sh --soak     only the soak: 10,000 simulated agents for
#                                    BACKBEAT_SOAK_SECS (default 1800) through
#                                    the whole stack
#   bash deploy/faults.sh --fuzz     the CI mode plus deploy/fuzz.sh (when present)
#
# The CI mode of the same tests also runs in every `cargo test --workspace`
# (deploy/test.sh); BACKBEAT_FAULTS_LONG=1 is what selects the long mode, and
# BACKBEAT_SOAK_SECS the soak's length (its CI mode is a 20 s run). The
# partition test needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

long=0
fuzz=0
soak=0
faults=1
for arg in "$@"; do
    case "$arg" in
        --long) long=1; fuzz=1; soak=1 ;;
        --soak) soak=1; faults=0 ;;
        --fuzz) fuzz=1 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/backbeat-target}"
# Unavailability is compared with a reference measured in the same run: one
# test at a time, so no other test's processes share the two cores.
TEST_THREADS="${BACKBEAT_TEST_THREADS:-1}"
FUZZ_SECONDS="${BACKBEAT_FUZZ_SECONDS:-$([[ $long == 1 ]] && echo 300 || echo 30)}"
SOAK_SECS="${BACKBEAT_SOAK_SECS:-1800}"

step() { printf '\n==> %s\n' "$*"; }
scripts_dir() { python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'; }

step "nats-server"
bash deploy/install-nats.sh
command -v nats-server >/dev/null || export PATH="$(scripts_dir):$PATH"

step "moto_server (local S3 for the query nodes' archive)"
bash deploy/install-moto.sh
command -v moto_server >/dev/null || export PATH="$(scripts_dir):$PATH"

report="$(mktemp "${TMPDIR:-/tmp}/backbeat-faults-XXXXXX.jsonl")"
export BACKBEAT_FAULT_REPORT="$report"
if [[ $long == 1 ]]; then
    export BACKBEAT_FAULTS_LONG=1
else
    unset BACKBEAT_FAULTS_LONG
fi

step "build (every binary the tests start)"
cargo build --workspace --bins --locked

failed=()
run() {
    local what="$1"; shift
    step "$what"
    if ! "$@"; then
        failed+=("$what")
    fi
}

if [[ $faults == 1 ]]; then
    # The soak runs on its own below when asked for; here its 20 s CI mode.
    soak_filter=()
    [[ $soak == 1 ]] && soak_filter=(--skip faults::soak::)
    run "NATS cluster, pulse partition, sharded processors (e2e faults::)" \
        cargo test --locked -p backbeat-tests --test e2e -- --test-threads "$TEST_THREADS" faults:: "${soak_filter[@]}"
    run "query nodes on one S3 archive (query nodes::)" \
        cargo test --locked -p backbeat-query --test it -- --test-threads "$TEST_THREADS" nodes::
fi

# Other engineers' fault tests, when they exist: their records join the table.
others=()
[[ -f tests/tests/e2e/permissions.rs ]] && others+=("permissions::")
[[ -f tests/tests/e2e/hostile_http.rs ]] && others+=("hostile_http::")
if (( ${#others[@]} > 0 )); then
    run "permissions and hostile HTTP (e2e ${others[*]})" \
        cargo test --locked -p backbeat-tests --test e2e -- --test-threads "$TEST_THREADS" "${others[@]}"
fi

if [[ $soak == 1 ]]; then
    run "soak: 10,000 simulated agents for ${SOAK_SECS} s (e2e faults::soak::)" \
        env BACKBEAT_SOAK_SECS="$SOAK_SECS" \
        cargo test --locked -p backbeat-tests --test e2e -- --test-threads 1 --nocapture faults::soak::
fi

if [[ $fuzz == 1 ]]; then
    if [[ -f deploy/fuzz.sh ]]; then
        run "fuzzing, ${FUZZ_SECONDS} s a target (deploy/fuzz.sh prints its own table)" \
            bash deploy/fuzz.sh "$FUZZ_SECONDS"
    else
        step "fuzzing: deploy/fuzz.sh is not in this checkout; skipped"
    fi
fi

mode="$([[ $long == 1 ]] && echo long || { [[ $faults == 1 ]] && echo CI || echo soak; })"
step "fault table ($mode mode; records in $report)"
python3 deploy/fault_table.py "$report" || failed+=("fault table")

if (( ${#failed[@]} > 0 )); then
    printf '\nFAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
step "every fault test passed"
