#!/usr/bin/env bash
# One look at the local stack started by deploy/up.sh: who is up and ready, the
# pulse group's leader and tempo, the last window reported per cluster, and how
# far each reader is behind. Reads the addresses up.sh wrote to its state
# directory (BACKBEAT_STACK_DIR, ./.backbeat by default).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="${BACKBEAT_STACK_DIR:-$(pwd)/.backbeat}"
if [[ ! -f "$STATE/stack.env" ]]; then
    echo "no stack state in $STATE (start one with: bash deploy/up.sh)" >&2
    exit 1
fi
# shellcheck disable=SC1091
source "$STATE/stack.env"

exec python3 - "$CLUSTER" "$NATS_MONITOR" "$PULSE" "$INGEST" "$PROCESSOR" "$QUERY" "$PROMETHEUS" <<'PY'
import json, sys, urllib.request

cluster, nats, pulse, ingest, processor, query, prometheus = sys.argv[1:]

def get(url, timeout=2.0):
    """(HTTP status, body) or (None, error text)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:  # refused, timed out
        return None, str(e).encode()

def status_json(addr):
    code, body = get(f"http://{addr}/api/v1/status")
    if code != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None

services = [("nats-server", nats, "/healthz", "/healthz")]
services += [(f"pulse-{i}", a, "/health", "/ready") for i, a in enumerate(pulse.split(), 1)]
services += [("ingest", ingest, "/health", "/ready"), ("processor", processor, "/health", "/ready"),
             ("query", query, "/health", "/ready"), ("prometheus", prometheus, "/-/healthy", "/-/ready")]
print(f"{'SERVICE':<12} {'ADDRESS':<16} {'UP':<5} READY")
for name, addr, health, ready in services:
    up, _ = get(f"http://{addr}{health}")
    rd, why = get(f"http://{addr}{ready}")
    reason = "" if rd == 200 or rd is None else f"  ({why.decode(errors='replace').strip()[:60]})"
    print(f"{name:<12} {addr:<16} {'yes' if up == 200 else 'NO':<5} {'yes' if rd == 200 else 'no'}{reason}")

print()
nodes = [(a, status_json(a)) for a in pulse.split()]
live = [s for _, s in nodes if s]
if live:
    leader = next((s for s in live if s.get("role") == "leader"), None)
    s = leader or live[0]
    print(f"pulse       cluster {s.get('cluster_id')}, leader node {s.get('leader_id')} (term {s.get('term')}), "
          f"{s.get('tempo_bpm')} BPM, bars of {s.get('bar_length')} beats, last beat {s.get('last_beat')}")
    for addr, st in nodes:
        if st:
            flag = f"  degraded: {st.get('degraded_reason')}" if st.get("degraded") else ""
            print(f"            node {st.get('node_id')} {st.get('role'):<9} emitting={str(st.get('emitting')).lower()}{flag}")
else:
    print("pulse       no node answers")

p = status_json(processor)
if p:
    lease = p.get("lease", {}).get("state")
    print(f"processor   stream seq {p.get('last_seq')}, lag {p.get('consumer_lag')} messages, "
          f"{p.get('reports_published')} reports published, lease {lease}")
    code, body = get(f"http://{processor}/api/v1/windows")
    windows = json.loads(body).get("clusters", {}) if code == 200 else {}
    for cid, view in sorted(windows.items()):
        reports = view.get("recent_reports") or []
        last = reports[-1] if reports else None
        if last:
            print(f"            {cid}: last window {last['window_id']} (beats {last['from_beat']}..{last['to_beat']}), "
                  f"{last.get('agents_reporting')} agents reporting, current beat {view.get('current_beat')}")
        else:
            print(f"            {cid}: no window closed yet, current beat {view.get('current_beat')}")
else:
    print("processor   does not answer")

q = status_json(query)
if q:
    streams = q.get("tail", {}).get("streams", {})
    lag = ", ".join(f"{name} {s.get('pending')} behind" for name, s in sorted(streams.items()))
    rows = q.get("tail", {}).get("tables", {})
    held = ", ".join(f"{name} {t.get('rows_held')}" for name, t in sorted(rows.items()))
    print(f"query       {lag}")
    print(f"            rows in memory: {held}")
else:
    print("query       does not answer")
PY
