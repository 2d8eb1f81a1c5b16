#!/usr/bin/env bash
# Makes sure moto_server (a local S3-compatible server, for the query
# archive's S3 test) is on PATH, and prints its version. Quiet and fast when
# it is already there. Installs the pinned PyPI package `moto[server]`.
set -euo pipefail

MOTO_VERSION="${MOTO_VERSION:-5.2.5}"

find_server() {
    local bin
    bin="$(command -v moto_server 2>/dev/null)" || return 1
    "$bin" --help >/dev/null 2>&1 && echo "$bin"
}

if ! bin="$(find_server)"; then
    echo "moto_server not found; installing moto[server]==${MOTO_VERSION} from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check "moto[server]==${MOTO_VERSION}" >&2
    hash -r
    if ! bin="$(find_server)"; then
        scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
        bin="$scripts/moto_server"
        "$bin" --help >/dev/null 2>&1 || { echo "could not install moto_server" >&2; exit 1; }
    fi
fi
echo "moto $(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?') ($bin)"
