#!/usr/bin/env bash
# What the console's browser test needs, installed when missing, and printed:
# Debian's `chromium` package (the browser the test drives headless) and
# node's `playwright-core` (pinned by query/tests/console/package-lock.json),
# installed into BACKBEAT_NODE_DIR ($HOME/.cache/backbeat-node), never its
# own browser download. Quiet and fast when both are already there.
# Node.js (>= 20) and npm must be on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_DIR="${BACKBEAT_NODE_DIR:-$HOME/.cache/backbeat-node}"
CHROMIUM="${BACKBEAT_CHROMIUM:-/usr/bin/chromium}"

if [[ ! -x "$CHROMIUM" ]]; then
    echo "chromium not found at $CHROMIUM; installing Debian's chromium package" >&2
    sudo_cmd=""
    [[ "$(id -u)" -ne 0 ]] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >&2
    [[ -x "$CHROMIUM" ]] || { echo "could not install chromium (expected at $CHROMIUM)" >&2; exit 1; }
fi

command -v node >/dev/null || { echo "node (Node.js >= 20) is not on PATH; install Debian's nodejs and npm" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is not on PATH; install Debian's npm" >&2; exit 1; }

# Installed again only when the lock file changed.
LOCK=query/tests/console/package-lock.json
if ! cmp -s "$LOCK" "$NODE_DIR/package-lock.json" || [[ ! -d "$NODE_DIR/node_modules/playwright-core" ]]; then
    echo "installing playwright-core into $NODE_DIR (from $LOCK)" >&2
    mkdir -p "$NODE_DIR"
    cp query/tests/console/package.json "$LOCK" "$NODE_DIR/"
    # No install scripts: nothing may download a browser of its own.
    (cd "$NODE_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
fi

version="$(node -p "require('$NODE_DIR/node_modules/playwright-core/package.json').version")"
# The wrapper script /usr/bin/chromium prints a shell warning on some systems; keep the version line only.
echo "$("$CHROMIUM" --version 2>/dev/null | head -n 1) ($CHROMIUM); playwright-core $version ($NODE_DIR)"
