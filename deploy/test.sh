#!/usr/bin/env bash
# The one test command: installs what is missing (nats-server, moto_server,
# psql, psycopg, Prometheus, Python packages; chromium and playwright-core
# for the console's browser test), then
# formatting, lints and every test of the workspace. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# A shared target directory makes repeated runs fast; a clean clone works without it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/backbeat-target}"
# Tests start real servers and processes: two at a time on a 2-core machine.
TEST_THREADS="${BACKBEAT_TEST_THREADS:-2}"

step() { printf '\n==> %s\n' "$*"; }

step "nats-server"
bash deploy/install-nats.sh
# pip may put the binary in a directory that is not yet on PATH in this shell.
if ! command -v nats-server >/dev/null; then
    export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi

step "prometheus and promtool (dashboard and metrics tests)"
bash deploy/install-prometheus.sh

step "Grafana foundation SDK (dashboard schema check)"
bash deploy/install-grafana-sdk.sh

step "chromium and playwright-core (the console's browser test)"
bash deploy/install-chromium.sh

step "kubernetes-validate and Compose (deployment files' check)"
bash deploy/install-deploy-checks.sh

step "moto_server (local S3 for the query archive's test)"
bash deploy/install-moto.sh
if ! command -v moto_server >/dev/null; then
    export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi

step "psql and psycopg (the query service's pg-wire tests)"
bash deploy/install-psql.sh
bash deploy/install-psycopg.sh

# The workspace's own crates carry their checkout's path (CARGO_MANIFEST_DIR:
# golden logs, the console's files, the pg-wire clients' scripts), and cargo
# does not rebuild them when the same target directory serves another
# checkout: they are rebuilt here when it did. Dependencies stay warm.
stamp="$CARGO_TARGET_DIR/.backbeat-checkout"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$PWD" ]; then
    step "the target directory was last built from $(cat "$stamp"): the workspace's crates rebuilt for $PWD"
    members=$(cargo metadata --no-deps --format-version 1 --locked |
        python3 -c 'import json, sys; print(" ".join("-p " + p["name"] for p in json.load(sys.stdin)["packages"]))')
    # shellcheck disable=SC2086 # one word per flag
    cargo clean $members
fi
mkdir -p "$CARGO_TARGET_DIR"
echo "$PWD" >"$stamp"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (every crate, every test)"
cargo test --workspace --locked --no-fail-fast -- --test-threads "$TEST_THREADS"

step "all tests passed"
