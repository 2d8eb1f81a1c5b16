#!/usr/bin/env bash
# Makes sure Python's psycopg (3) imports, and prints its version: the query
# service's pg-wire tests run a psycopg script. Quiet and fast when it is
# already there; installs the pinned PyPI package `psycopg[binary]` otherwise
# (the binary wheel bundles libpq: no compiler needed).
set -euo pipefail

PSYCOPG_VERSION="${PSYCOPG_VERSION:-3.3.9}"

psycopg_version() {
    python3 -c 'import psycopg; print(psycopg.__version__)' 2>/dev/null
}

if ! version="$(psycopg_version)"; then
    echo "psycopg not found; installing psycopg[binary]==${PSYCOPG_VERSION} from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check "psycopg[binary]==${PSYCOPG_VERSION}" >&2
    version="$(psycopg_version)" || { echo "could not install psycopg" >&2; exit 1; }
fi
echo "psycopg ${version} ($(command -v python3))"
