#!/usr/bin/env bash
# Makes sure the deployment files' check (deploy/check_deploy_files.py) has
# what it needs: kubernetes-validate (the Kubernetes OpenAPI schemas, bundled,
# offline) and PyYAML from PyPI, pinned; and a Compose implementation for
# `config -q` (Debian's docker-compose when neither `docker compose` nor
# `docker-compose` is there). Quiet and fast when all are there.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.31.0}"
PYYAML_VERSION="${PYYAML_VERSION:-6.0.3}"

if ! python3 -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    echo "installing kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} and PyYAML from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" "PyYAML==${PYYAML_VERSION}" >&2
fi

if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    echo "no Compose implementation found; installing Debian's docker-compose" >&2
    sudo_cmd=""
    [[ "$(id -u)" -ne 0 ]] && sudo_cmd="sudo"
    export DEBIAN_FRONTEND=noninteractive
    # Optional: without it the check says so and runs everything else.
    $sudo_cmd apt-get install -y -qq --no-install-recommends docker-compose >&2 \
        || { $sudo_cmd apt-get update -qq >&2 && $sudo_cmd apt-get install -y -qq --no-install-recommends docker-compose >&2; } \
        || echo "could not install docker-compose: the compose file is checked without \`config -q\`" >&2
fi
python3 -c 'import importlib.metadata as m; print("kubernetes-validate", m.version("kubernetes-validate"))'
