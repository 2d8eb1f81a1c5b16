#!/usr/bin/env bash
# The one command for the local stack: nats-server (JetStream), a 3-node pulse
# group, the claim gateway, the processor, the query service, Prometheus
# scraping all of them, and a simulated fleet of agents.
# Everything runs in the foreground under this script; Ctrl-C (or SIGTERM)
# stops every process gracefully. State lives in ./.backbeat (delete it for a
# fresh start); each process logs to ./.backbeat/logs/NAME.log.
#
# Settings (environment): BACKBEAT_STACK_CLUSTER (local), BACKBEAT_STACK_BPM (120),
# BACKBEAT_STACK_BAR_LENGTH (16), BACKBEAT_STACK_AGENTS (100),
# BACKBEAT_STACK_RATE (claims per second for the whole fleet, 50), BACKBEAT_STACK_LATENESS (1),
# BACKBEAT_STACK_PROFILE (debug|release, debug), BACKBEAT_STACK_DIR (./.backbeat).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

CLUSTER="${BACKBEAT_STACK_CLUSTER:-local}"
BPM="${BACKBEAT_STACK_BPM:-120}"
BAR="${BACKBEAT_STACK_BAR_LENGTH:-16}"
# A claim stamped in the last beat of a bar may arrive after the next beat: one beat of grace.
LATENESS="${BACKBEAT_STACK_LATENESS:-1}"
AGENTS="${BACKBEAT_STACK_AGENTS:-100}"
RATE="${BACKBEAT_STACK_RATE:-50}"
PROFILE="${BACKBEAT_STACK_PROFILE:-debug}"
STATE="${BACKBEAT_STACK_DIR:-$ROOT/.backbeat}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/backbeat-target}"

NATS_PORT=4222; NATS_MONITOR=8222
PROCESSOR=127.0.0.1:8081; INGEST=127.0.0.1:8082; QUERY=127.0.0.1:8084
# Not 9090: Debian's own prometheus service may hold that one.
PROMETHEUS=127.0.0.1:9190
# The query service's PostgreSQL wire protocol (psql, Grafana).
PG=127.0.0.1:5433
PULSE_PORTS=(7001 7002 7003)
# Raft between the pulse nodes, apart from their public HTTP above.
PULSE_RAFT_PORTS=(7101 7102 7103)

say() { printf '==> %s\n' "$*"; }

say "nats-server"
bash deploy/install-nats.sh
command -v nats-server >/dev/null || export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"

for port in "$NATS_PORT" "$NATS_MONITOR" "${PROCESSOR##*:}" "${INGEST##*:}" "${QUERY##*:}" "${PG##*:}" "${PROMETHEUS##*:}" "${PULSE_PORTS[@]}" "${PULSE_RAFT_PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is in use: is another stack running? stop it first" >&2
        exit 1
    fi
done

say "prometheus"
bash deploy/install-prometheus.sh

say "building the binaries ($PROFILE)"
if [[ "$PROFILE" == release ]]; then
    cargo build --release --bins
else
    cargo build --bins
fi
BIN="$CARGO_TARGET_DIR/$PROFILE"

mkdir -p "$STATE/logs"
# Where each part listens, for deploy/status.sh and deploy/logs.sh.
cat >"$STATE/stack.env" <<ENV
CLUSTER=$CLUSTER
NATS_MONITOR=127.0.0.1:$NATS_MONITOR
PULSE="${PULSE_PORTS[*]/#/127.0.0.1:}"
INGEST=$INGEST
PROCESSOR=$PROCESSOR
QUERY=$QUERY
PG=$PG
PROMETHEUS=$PROMETHEUS
ENV
if [[ ! -s "$STATE/admin-token" ]]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/admin-token")
fi
# The pulse group's shared secret: signs raft requests and the beats it publishes.
if [[ ! -s "$STATE/raft-secret" ]]; then
    if [[ -d "$STATE/pulse-1" ]]; then
        # A pulse group from before raft moved to its own port and secret: its
        # raft log names the old addresses. Start the group afresh (the beats in
        # the stream stay; the new group continues after the last one).
        say "the pulse state in $STATE predates --raft-listen: starting the pulse group afresh"
        rm -rf "$STATE"/pulse-[0-9]*
    fi
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/raft-secret")
fi

PIDS=()
NAMES=()
start() { # start NAME COMMAND...
    local name="$1"; shift
    "$@" >>"$STATE/logs/$name.log" 2>&1 &
    PIDS+=("$!"); NAMES+=("$name")
}
stop_all() {
    trap - INT TERM EXIT
    say "stopping"
    # Reverse order: agents first, nats-server last.
    for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    say "stopped; state kept in $STATE"
}
on_signal() { stop_all; exit 0; }
trap on_signal INT TERM
trap stop_all EXIT

wait_ready() { # wait_ready NAME URL
    local name="$1" url="$2"
    for _ in $(seq 1 600); do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$name did not become ready at $url; see $STATE/logs/$name.log:" >&2
    tail -n 20 "$STATE/logs/$name.log" >&2
    exit 1
}

say "starting nats-server on :$NATS_PORT"
start nats-server nats-server -c deploy/nats/single.conf -p "$NATS_PORT" -m "$NATS_MONITOR" -sd "$STATE/nats"
wait_ready nats-server "http://127.0.0.1:$NATS_MONITOR/healthz"
NATS="nats://127.0.0.1:$NATS_PORT"

say "starting the pulse group (3 nodes), the gateway and the processor"
PEERS="1=127.0.0.1:${PULSE_RAFT_PORTS[0]},2=127.0.0.1:${PULSE_RAFT_PORTS[1]},3=127.0.0.1:${PULSE_RAFT_PORTS[2]}"
for i in 1 2 3; do
    start "pulse-$i" "$BIN/backbeat-pulse" --nats "$NATS" --node-id "$i" --peers "$PEERS" \
        --listen "127.0.0.1:${PULSE_PORTS[$((i-1))]}" --raft-listen "127.0.0.1:${PULSE_RAFT_PORTS[$((i-1))]}" \
        --raft-secret-file "$STATE/raft-secret" --data-dir "$STATE/pulse-$i" \
        --cluster "$CLUSTER" --bpm "$BPM" --bar-length "$BAR" --admin-token-file "$STATE/admin-token"
done
start ingest "$BIN/backbeat-ingest" --nats "$NATS" --listen "$INGEST"
start processor "$BIN/backbeat-processor" run --nats "$NATS" --listen "$PROCESSOR" --bar-length "$BAR" --lateness "$LATENESS"
for port in "${PULSE_PORTS[@]}"; do wait_ready pulse "http://127.0.0.1:$port/health"; done
wait_ready ingest "http://$INGEST/ready"
wait_ready processor "http://$PROCESSOR/health"

say "starting the query service and Prometheus"
# The pulse nodes' status pages, for the leader the console and /api/v1/clusters show.
PULSE_URLS="$(printf 'http://127.0.0.1:%s,' "${PULSE_PORTS[@]}")"
start query "$BIN/backbeat-query" serve --nats "$NATS" --listen "$QUERY" --bar-length "$BAR" \
    --pulse-urls "${PULSE_URLS%,}" --nats-monitor-url "http://127.0.0.1:$NATS_MONITOR" \
    --pg-listen "$PG" --data-dir "$STATE/query"
{
    echo "global: {scrape_interval: 5s, evaluation_interval: 5s}"
    echo "scrape_configs:"
    echo "  - job_name: pulse"
    echo "    static_configs: [{targets: [$(printf '"127.0.0.1:%s",' "${PULSE_PORTS[@]}" | sed 's/,$//')]}]"
    for job in ingest processor query; do
        case "$job" in ingest) addr=$INGEST ;; processor) addr=$PROCESSOR ;; query) addr=$QUERY ;; esac
        echo "  - job_name: $job"
        echo "    static_configs: [{targets: [\"$addr\"]}]"
    done
    # nats-server's own figures, rendered from its monitoring port by the query service.
    echo "  - job_name: nats"
    echo "    metrics_path: /metrics/nats"
    echo "    static_configs: [{targets: [\"$QUERY\"]}]"
    echo "  - job_name: prometheus"
    echo "    static_configs: [{targets: [\"$PROMETHEUS\"]}]"
} >"$STATE/prometheus.yml"
promtool check config "$STATE/prometheus.yml" >/dev/null
start prometheus prometheus --config.file="$STATE/prometheus.yml" --storage.tsdb.path="$STATE/prometheus" \
    --web.listen-address="$PROMETHEUS"
wait_ready query "http://$QUERY/health"
wait_ready prometheus "http://$PROMETHEUS/-/ready"

say "starting $AGENTS simulated agents"
start agent-sim "$BIN/backbeat-agent-sim" --nats "$NATS" --cluster "$CLUSTER" --bar-length "$BAR" --agents "$AGENTS" --rate "$RATE" --seed 1

cat <<INFO

BACKBEAT is running (cluster '$CLUSTER', $BPM BPM, bars of $BAR beats). Where to look:
  pulse       http://127.0.0.1:${PULSE_PORTS[0]}/api/v1/status   (nodes :${PULSE_PORTS[0]} :${PULSE_PORTS[1]} :${PULSE_PORTS[2]};
              raft on :${PULSE_RAFT_PORTS[0]} :${PULSE_RAFT_PORTS[1]} :${PULSE_RAFT_PORTS[2]}, signed with $STATE/raft-secret)
  tempo       curl -H "Authorization: Bearer \$(cat $STATE/admin-token)" \\
                -d '{"bpm":126,"at":"next_downbeat"}' http://127.0.0.1:${PULSE_PORTS[0]}/api/v1/tempo
  gateway     http://$INGEST/api/v1/status   claims: POST http://$INGEST/api/v1/clusters/$CLUSTER/claims
  processor   http://$PROCESSOR/api/v1/windows   (open windows, recent BarReports)
  console     http://$QUERY/   (clusters, leader, tempo, the last windows as charts, an SQL box; live)
  psql        psql "postgresql://backbeat@$PG/backbeat" -c '\\dt'     (Grafana: deploy/grafana/, BACKBEAT_PG_ADDR=$PG)
  SQL         $BIN/backbeat-query sql --url http://$QUERY "SELECT window_index, agents_reporting FROM bar_reports ORDER BY window_index DESC LIMIT 5"
              curl -s http://$QUERY/api/v1/sql -d '{"sql":"SELECT count(*) FROM claims"}'
  metrics     /metrics on every address above; nats-server at http://127.0.0.1:$NATS_MONITOR/
  prometheus  http://$PROMETHEUS/   (scrapes every service every 5 s)
  status      bash deploy/status.sh        logs: bash deploy/logs.sh [NAME]
  reports     $BIN/backbeat-processor replay --nats $NATS --cluster $CLUSTER --bar-length $BAR --lateness $LATENESS --from-window 0
  events      $BIN/backbeat-processor export --nats $NATS --cluster $CLUSTER --bar-length $BAR --lateness $LATENESS   (the log, SPEC §7)
  logs        $STATE/logs/*.log
Ctrl-C stops everything.
INFO

# Stay in the foreground until one process dies or we are told to stop.
set +e
wait -n "${PIDS[@]}"
status=$?
for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
        echo "${NAMES[$i]} exited (status $status); see $STATE/logs/${NAMES[$i]}.log" >&2
    fi
done
exit "$status"
