#!/usr/bin/env bash
# Makes sure psql (PostgreSQL's terminal client) and openssl (the pg-wire TLS
# test makes a certificate with it) are on PATH, and prints psql's version:
# the query service's pg-wire tests drive it. Quiet and fast when both are
# already there; installs Debian's `postgresql-client` and `openssl` otherwise.
set -euo pipefail

psql_ok() {
    command -v psql >/dev/null && psql --version >/dev/null 2>&1 && command -v openssl >/dev/null
}

if ! psql_ok; then
    echo "psql or openssl not found; installing Debian's postgresql-client and openssl" >&2
    sudo_cmd=""
    [[ "$(id -u)" -ne 0 ]] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq >&2
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client openssl >&2
    hash -r
    psql_ok || { echo "could not install psql (postgresql-client)" >&2; exit 1; }
fi
echo "$(psql --version) ($(command -v psql))"
