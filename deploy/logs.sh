#!/usr/bin/env bash
# Follows the logs of the local stack started by deploy/up.sh: every process's,
# or one's (NAME: nats-server, pulse-1, pulse-2, pulse-3, ingest, processor,
# query, prometheus, agent-sim; `pulse` follows the three pulse nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="${BACKBEAT_STACK_DIR:-$(pwd)/.backbeat}"
LOGS="$STATE/logs"
if [[ ! -d "$LOGS" ]]; then
    echo "no logs in $LOGS (start the stack with: bash deploy/up.sh)" >&2
    exit 1
fi
shopt -s nullglob
if [[ $# -eq 0 ]]; then
    files=("$LOGS"/*.log)
else
    files=()
    for f in "$LOGS/$1".log "$LOGS/$1"-[0-9]*.log; do [[ -f "$f" ]] && files+=("$f"); done
fi
if [[ ${#files[@]} -eq 0 ]]; then
    echo "no log named '$1' in $LOGS; there are: $(cd "$LOGS" && ls -- *.log | sed 's/\.log$//' | tr '\n' ' ')" >&2
    exit 1
fi
exec tail -n 20 -F "${files[@]}"
