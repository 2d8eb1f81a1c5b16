#!/usr/bin/env bash
# Makes sure Prometheus (`prometheus` and `promtool`) is on PATH, and prints its
# version. Quiet and fast when it is already there; otherwise installs Debian's
# `prometheus` package (the package's own service is not started: the local
# stack and the tests run their own server with their own configuration).
set -euo pipefail

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    echo "prometheus not found; installing Debian's prometheus package" >&2
    sudo_cmd=""
    [[ "$(id -u)" -ne 0 ]] && sudo_cmd="sudo"
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >&2; then
        $sudo_cmd apt-get update -qq >&2
        $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >&2
    fi
    hash -r
    command -v prometheus >/dev/null || { echo "could not install prometheus" >&2; exit 1; }
fi
prometheus --version 2>&1 | head -n 1
