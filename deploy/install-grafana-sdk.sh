#!/usr/bin/env bash
# Makes sure Python has the Grafana foundation SDK (the dashboards' schema
# check, deploy/grafana/check_dashboards.py) and PyYAML (the provisioning
# files). Quiet and fast when both are there; pinned versions from PyPI.
set -euo pipefail

GRAFANA_SDK_VERSION="${GRAFANA_SDK_VERSION:-1769699379!11.6.0}"
PYYAML_VERSION="${PYYAML_VERSION:-6.0.3}"

if ! python3 -c 'import grafana_foundation_sdk, yaml' 2>/dev/null; then
    echo "installing grafana-foundation-sdk==${GRAFANA_SDK_VERSION} and PyYAML from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check \
        "grafana-foundation-sdk==${GRAFANA_SDK_VERSION}" "PyYAML==${PYYAML_VERSION}" >&2
fi
python3 -c 'import importlib.metadata as m; print("grafana-foundation-sdk", m.version("grafana-foundation-sdk"))'
