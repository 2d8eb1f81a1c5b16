#!/usr/bin/env python3
"""Checks deploy/grafana/ as Grafana would read it, without Grafana.

Each dashboard is decoded by the Grafana foundation SDK's own model (the
schema Grafana publishes) and encoded back: a field the schema does not know
would be dropped, and a value of the wrong shape fails to decode. Panels and
targets name a data source provisioned in provisioning/datasources/, ids and
uids are unique, and the provisioning files are valid YAML with the fields
Grafana requires.

Usage: check_dashboards.py DEPLOY_GRAFANA_DIR   (exit status 1 on any finding)
"""
import json
import pathlib
import sys

import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

findings = []


def finding(where, what):
    findings.append(f"{where}: {what}")


def compare(where, original, decoded, path=""):
    """Every key of the original survives the SDK's model with its value."""
    if isinstance(original, dict):
        if not isinstance(decoded, dict):
            finding(where, f"{path or '/'} decoded as {type(decoded).__name__}")
            return
        for key, value in original.items():
            if key not in decoded:
                finding(where, f"{path}/{key} is not in Grafana's dashboard schema")
            else:
                compare(where, value, decoded[key], f"{path}/{key}")
    elif isinstance(original, list):
        if not isinstance(decoded, list) or len(decoded) != len(original):
            finding(where, f"{path} changed length in the SDK's model")
            return
        for i, (a, b) in enumerate(zip(original, decoded)):
            compare(where, a, b, f"{path}[{i}]")
    elif original != decoded:
        finding(where, f"{path}: {original!r} became {decoded!r}")


def main():
    root = pathlib.Path(sys.argv[1])
    register_default_plugins()

    sources = yaml.safe_load((root / "provisioning/datasources/backbeat.yaml").read_text())
    if sources.get("apiVersion") != 1:
        finding("datasources", "apiVersion must be 1")
    uids = {}
    for source in sources.get("datasources", []):
        for field in ("name", "type", "uid", "access", "url"):
            if not source.get(field):
                finding("datasources", f"{source.get('name')}: {field} is required")
        uids[source.get("uid")] = source.get("type")
    providers = yaml.safe_load((root / "provisioning/dashboards/backbeat.yaml").read_text())
    for provider in providers.get("providers", []):
        if provider.get("type") != "file" or not provider.get("options", {}).get("path"):
            finding("dashboards provider", f"{provider.get('name')}: a file provider needs options.path")

    dashboard_uids = set()
    for path in sorted((root / "dashboards").glob("*.json")):
        where = path.name
        original = json.loads(path.read_text())
        decoded = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
        compare(where, original, decoded)
        if original.get("uid") in dashboard_uids:
            finding(where, f"uid {original.get('uid')} used twice")
        dashboard_uids.add(original.get("uid"))
        if not original.get("panels"):
            finding(where, "no panels")
        panel_ids = set()
        for panel in original.get("panels", []):
            title = panel.get("title", "?")
            if panel.get("id") in panel_ids:
                finding(where, f"panel id {panel.get('id')} used twice")
            panel_ids.add(panel.get("id"))
            refs = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
            for ref in filter(None, refs):
                if uids.get(ref.get("uid")) != ref.get("type"):
                    finding(where, f"panel '{title}' names data source {ref}, which is not provisioned")
            for target in panel.get("targets", []):
                if not (target.get("expr") or target.get("rawSql")):
                    finding(where, f"panel '{title}' has a target without a query")
        for variable in original.get("templating", {}).get("list", []):
            ref = variable.get("datasource") or {}
            if uids.get(ref.get("uid")) != ref.get("type"):
                finding(where, f"variable {variable.get('name')} names an unprovisioned data source")

    for line in findings:
        print(line)
    print(f"{len(list((root / 'dashboards').glob('*.json')))} dashboards, {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
