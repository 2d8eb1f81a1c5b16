#!/usr/bin/env python3
"""Checks the deployment files under deploy/ without deploying them.

- Every YAML file parses (PyYAML).
- deploy/compose.yaml: every service has an image or a build whose context
  holds a Dockerfile; every depends_on, named volume and secret is declared;
  every bind-mounted file exists in the repository; secret files lie where git
  ignores them; host ports are unique; every long-running service has a
  healthcheck, and a BACKBEAT service's checks /health or /ready on the port
  it listens on; Prometheus scrapes each service where it listens; Grafana's
  dashboards are mounted at the path the provider names. Where `docker
  compose` (or Debian's `docker-compose`) exists, `config -q` passes.
- deploy/k8s/: every manifest validates against the Kubernetes 1.31 OpenAPI
  schemas (kubernetes-validate, strict: no unknown field); every container of
  a Deployment or StatefulSet has liveness and readiness probes (/health and
  /ready for BACKBEAT's), resource requests and limits, runs as non-root with
  a read-only root filesystem; selectors match the template's labels; every
  Service selects pods that exist and names their ports; every file is
  reachable from kustomization.yaml. Where kubectl exists, the rendered
  `kubectl kustomize` output passes the same checks.
- Every `--flag` and BACKBEAT_ variable given to a BACKBEAT binary (compose
  command and environment, manifest args and env) is one its `--help` lists.
- nats-server accepts every config (`nats-server -t`, test passwords in the
  environment for the variables deploy/nats/permissions.conf reads), the
  cluster configs sync always and include permissions.conf, and the
  Kubernetes NATS pods get permissions.conf and every password it reads.
- The image (deploy/docker/Dockerfile) copies in every binary they run.

Usage: check_deploy_files.py DEPLOY_DIR --help-text "BINARY [SUBCOMMAND]=FILE"...
(the --help output of each binary; exit status 1 on any finding)
"""
import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import urllib.parse

try:
    import yaml
    import kubernetes_validate
except ImportError as e:
    sys.exit(f"{e}: run `bash deploy/install-deploy-checks.sh` (deploy/test.sh does)")

K8S_VERSION = "1.31"
# Flags another change adds to the query service while this file is written
# (pg-wire, the Parquet archive, the console's pulse nodes): tolerated while the
# binary does not list them yet, reported as a note. Remove once it does.
# Flags the files may use before the binaries have them (none now).
PENDING_FLAGS: dict = {}

findings = []
notes = []


def finding(where, what):
    findings.append(f"{where}: {what}")


# ---------------------------------------------------------------- --help texts


class HelpTexts:
    """The flags and BACKBEAT_ variables each binary (and subcommand) knows."""

    def __init__(self, pairs):
        self.flags = {}
        self.envs = {}
        self.binaries_used = set()
        for pair in pairs:
            name, _, path = pair.partition("=")
            text = pathlib.Path(path).read_text()
            self.flags[name] = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
            self.envs[name] = set(re.findall(r"\[env: (BACKBEAT_[A-Z0-9_]+)", text))

    def key(self, argv):
        """`backbeat-processor run …` -> "backbeat-processor run" when that has a help text."""
        if not argv:
            return None
        binary = os.path.basename(str(argv[0]))
        if not binary.startswith("backbeat-"):
            return None
        if len(argv) > 1 and f"{binary} {argv[1]}" in self.flags:
            return f"{binary} {argv[1]}"
        return binary

    def check(self, where, argv, env_names):
        key = self.key(argv)
        if key is None:
            return
        self.binaries_used.add(key.split()[0])
        if key not in self.flags:
            finding(where, f"no --help text was given for {key}")
            return
        used = {t.split("=", 1)[0] for t in map(str, argv) if t.startswith("--")}
        for flag in sorted(used - self.flags[key]):
            if flag in PENDING_FLAGS.get(key, ()):
                notes.append(f"{where}: {flag} is not in `{key} --help` yet (pending)")
            else:
                finding(where, f"{flag} is not a flag of `{key}` (its --help does not list it)")
        for env in sorted(n for n in env_names if n.startswith("BACKBEAT_")):
            if env not in self.envs[key]:
                finding(where, f"environment variable {env} is not one `{key} --help` lists")


def listen_port(argv, env):
    """The port of --listen (or BACKBEAT_LISTEN)."""
    argv = [str(a) for a in argv]
    value = env.get("BACKBEAT_LISTEN")
    for i, token in enumerate(argv):
        if token == "--listen" and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith("--listen="):
            value = token.split("=", 1)[1]
    return None if value is None else str(value).rsplit(":", 1)[-1]


# ---------------------------------------------------------------- YAML


def load_all(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        finding(path, f"not valid YAML: {e}")
        return []


# ---------------------------------------------------------------- compose


def check_compose(deploy, helps):
    path = deploy / "compose.yaml"
    if not path.exists():
        finding(path, "missing")
        return
    docs = load_all(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        finding(path, "expected one YAML document")
        return
    compose = docs[0]
    services = compose.get("services") or {}
    volumes = set((compose.get("volumes") or {}).keys())
    secrets = compose.get("secrets") or {}
    if not services:
        finding(path, "no services")
    host_ports = {}
    for name, service in services.items():
        where = f"{path.name} service {name}"
        if "image" not in service and "build" not in service:
            finding(where, "neither image nor build")
        build = service.get("build")
        if build is not None:
            context = deploy / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ((build.get("dockerfile") if isinstance(build, dict) else None) or "Dockerfile")
            if not dockerfile.is_file():
                finding(where, f"build has no {dockerfile.relative_to(deploy.parent)}")
        depends = service.get("depends_on") or []
        for dep in depends if isinstance(depends, list) else depends.keys():
            if dep not in services:
                finding(where, f"depends_on names {dep!r}, not a service")
        for volume in service.get("volumes") or []:
            source = (volume.split(":")[0] if isinstance(volume, str) else volume.get("source", ""))
            if source.startswith((".", "/")):
                if not (deploy / source).exists():
                    finding(where, f"mounts {source}, which is not in the repository")
            elif source not in volumes:
                finding(where, f"volume {source!r} is not declared under volumes")
        for secret in service.get("secrets") or []:
            secret = secret if isinstance(secret, str) else secret.get("source")
            if secret not in secrets:
                finding(where, f"secret {secret!r} is not declared under secrets")
        for port in service.get("ports") or []:
            parts = os.path.expandvars(re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", str(port))).split(":")
            if len(parts) >= 2:
                key = (parts[-3] if len(parts) == 3 else "", parts[-2])
                if key in host_ports:
                    finding(where, f"host port {port} is also {host_ports[key]}'s")
                host_ports[key] = name
        command = service.get("command") or []
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        helps.check(where, command, env.keys())
        health = service.get("healthcheck")
        if health is None:
            if "profiles" not in service:
                finding(where, "no healthcheck")
            continue
        test = " ".join(map(str, health.get("test") or []))
        if helps.key(command):
            url = re.search(r"http://[^ \"]+", test)
            if url is None:
                finding(where, "healthcheck does not ask an HTTP URL")
                continue
            url = urllib.parse.urlparse(url.group(0))
            if url.path not in ("/health", "/ready"):
                finding(where, f"healthcheck asks {url.path}, not /health or /ready")
            port = listen_port(command, env)
            if port is not None and str(url.port) != port:
                finding(where, f"healthcheck asks port {url.port}, the service listens on {port}")
    for name, secret in secrets.items():
        file = deploy / secret.get("file", "")
        if "file" in secret and shutil.which("git"):
            ignored = subprocess.run(["git", "-C", str(deploy), "check-ignore", "-q", "--no-index", str(file)])
            if ignored.returncode != 0:
                finding(f"{path.name} secret {name}", f"{secret['file']} is not ignored by git")
    check_prometheus(deploy, services)
    check_grafana_mounts(deploy, services.get("grafana"))
    docker_compose_config(path)


def check_prometheus(deploy, services):
    path = deploy / "prometheus" / "prometheus.yml"
    docs = load_all(path) if path.exists() else []
    if not docs:
        finding(path, "missing or empty")
        return
    listening = {}
    for name, service in services.items():
        env = service.get("environment") or {}
        port = listen_port(service.get("command") or [], env if isinstance(env, dict) else {})
        if port:
            listening[name] = port
    scraped = set()
    for job in docs[0].get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, _, port = target.rpartition(":")
                if host == "localhost":
                    continue
                if host not in services:
                    finding(path, f"job {job.get('job_name')} scrapes {target}: not a compose service")
                elif listening.get(host) != port:
                    finding(path, f"job {job.get('job_name')} scrapes {target}; {host} listens on {listening.get(host)}")
                scraped.add(host)
    for name in listening:
        if name not in scraped and "profiles" not in services[name]:
            finding(path, f"service {name} is not scraped")
    if shutil.which("promtool"):
        run = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
        if run.returncode != 0:
            finding(path, f"promtool check config: {run.stdout}{run.stderr}")


def check_grafana_mounts(deploy, grafana):
    if grafana is None:
        finding("compose.yaml", "no grafana service")
        return
    provider = load_all(deploy / "grafana" / "provisioning" / "dashboards" / "backbeat.yaml")
    wanted = provider[0]["providers"][0]["options"]["path"] if provider else None
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana.get("volumes") or [] if isinstance(v, str)}
    if mounts.get(wanted) != "./grafana/dashboards":
        finding("compose.yaml service grafana", f"deploy/grafana/dashboards is not mounted at {wanted}")
    if mounts.get("/etc/grafana/provisioning") != "./grafana/provisioning":
        finding("compose.yaml service grafana", "deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning")


def docker_compose_config(path):
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        if subprocess.run(command + ["version"], capture_output=True).returncode != 0:
            continue
        run = subprocess.run(command + ["-f", str(path), "config", "-q"], capture_output=True, text=True)
        if run.returncode != 0:
            finding(path.name, f"`{' '.join(command)} config -q` failed: {run.stdout}{run.stderr}")
        print(f"{' '.join(command)} config -q: {'ok' if run.returncode == 0 else 'failed'}")
        return
    notes.append("neither `docker compose` nor `docker-compose` is here: compose config not run")


# ---------------------------------------------------------------- Kubernetes


def pod_spec(doc):
    if doc.get("kind") in ("Deployment", "StatefulSet"):
        return doc["spec"]["template"]["spec"]
    return None


def check_manifests(where, docs, helps, validate=True):
    pods = []  # (labels, container ports by name and number)
    services = []
    headless = {
        d["metadata"]["name"] for d in docs if d.get("kind") == "Service" and d["spec"].get("clusterIP") == "None"
    }
    for doc in docs:
        kind = doc.get("kind")
        name = f"{where}: {kind} {doc.get('metadata', {}).get('name')}"
        if validate:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                finding(name, f"Kubernetes {K8S_VERSION} schema: {e.message} at {'/'.join(map(str, e.path))}")
            except kubernetes_validate.SchemaNotFoundError as e:
                finding(name, f"no Kubernetes {K8S_VERSION} schema: {e}")
        if kind == "Service":
            services.append((name, doc))
        spec = pod_spec(doc)
        if spec is None:
            continue
        template_labels = doc["spec"]["template"]["metadata"].get("labels") or {}
        selector = doc["spec"]["selector"].get("matchLabels") or {}
        if not selector or any(template_labels.get(k) != v for k, v in selector.items()):
            finding(name, f"selector {selector} does not match the template's labels {template_labels}")
        if kind == "StatefulSet" and doc["spec"].get("serviceName") not in headless:
            finding(name, f"serviceName {doc['spec'].get('serviceName')} is not a headless Service here")
        pod_security = spec.get("securityContext") or {}
        ports = set()
        for container in spec.get("containers") or []:
            cname = f"{name} container {container['name']}"
            for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
                if probe not in container:
                    finding(cname, f"no {probe}")
                elif helps.key(container.get("args") or container.get("command") or []):
                    got = (container[probe].get("httpGet") or {}).get("path")
                    if got != path:
                        finding(cname, f"{probe} asks {got}, not {path}")
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(part) or {}):
                        finding(cname, f"no {resource} in resources.{part}")
            security = container.get("securityContext") or {}
            if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
                finding(cname, "not runAsNonRoot")
            if not security.get("readOnlyRootFilesystem"):
                finding(cname, "root filesystem not read-only")
            named = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
            ports |= set(named) | set(named.values())
            for probe in ("livenessProbe", "readinessProbe"):
                port = ((container.get(probe) or {}).get("httpGet") or {}).get("port")
                if port is not None and port not in ports:
                    finding(cname, f"{probe} port {port} is not a container port")
            argv = (container.get("command") or []) + (container.get("args") or [])
            helps.check(cname, argv, [e["name"] for e in container.get("env") or []])
        pods.append((name, template_labels, ports))
    for name, service in services:
        selector = service["spec"].get("selector") or {}
        selected = [(w, p) for w, labels, p in pods if all(labels.get(k) == v for k, v in selector.items())]
        matching = [p for _, p in selected]
        if not matching:
            finding(name, f"selects {selector}: no pod template has these labels")
        elif len(selected) > 1:
            finding(name, f"selects {selector}: the pods of {', '.join(w for w, _ in selected)}")
        for port in service["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            if matching and not any(target in p for p in matching):
                finding(name, f"targetPort {target} is no port of the pods it selects")


def check_k8s(deploy, helps):
    root = deploy / "k8s"
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))
    docs = []
    reachable = set()

    def walk(directory):
        kustomization = directory / "kustomization.yaml"
        if not kustomization.exists():
            finding(directory, "no kustomization.yaml")
            return
        reachable.add(kustomization)
        for resource in (load_all(kustomization) or [{}])[0].get("resources") or []:
            target = (directory / resource).resolve()
            if target.is_dir():
                walk(target)
            elif target.is_file():
                reachable.add(target)
            else:
                finding(kustomization, f"resource {resource} does not exist")

    walk(root)
    for path in files:
        if path.resolve() not in {r.resolve() for r in reachable}:
            finding(path.relative_to(deploy), "not reachable from deploy/k8s/kustomization.yaml")
        if path.name == "kustomization.yaml":
            continue
        docs += load_all(path)
    check_manifests("deploy/k8s", docs, helps)
    kinds = {d.get("kind") for d in docs}
    for kind in ("Namespace", "Secret", "Service", "StatefulSet", "Deployment"):
        if kind not in kinds:
            finding("deploy/k8s", f"no {kind}")
    if shutil.which("kubectl"):
        run = subprocess.run(["kubectl", "kustomize", str(root)], capture_output=True, text=True)
        if run.returncode != 0:
            finding("kubectl kustomize deploy/k8s", run.stderr.strip())
        else:
            rendered = list(yaml.safe_load_all(run.stdout))
            check_manifests("kubectl kustomize deploy/k8s", rendered, helps)
            print(f"kubectl kustomize: {len(rendered)} resources")
    else:
        notes.append("kubectl is not here: the kustomize output was not rendered")


# ---------------------------------------------------------------- nats-server


def permission_variables(deploy):
    """The password variables deploy/nats/permissions.conf reads from the server's environment."""
    path = deploy / "nats" / "permissions.conf"
    if not path.exists():
        finding(path, "missing")
        return []
    # Comment lines name examples (`password: $X`), not variables the server reads.
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    return sorted(set(re.findall(r"password:\s*\$([A-Z0-9_]+)", text)))


def check_nats(deploy):
    configs = sorted((deploy / "nats").glob("*.conf")) + [deploy / "k8s" / "nats" / "nats.conf"]
    server = shutil.which("nats-server")
    if server is None:
        finding("nats-server", "not on PATH: run `bash deploy/install-nats.sh` (deploy/test.sh does)")
    variables = permission_variables(deploy)
    for config in configs:
        text = config.read_text()
        if "cluster {" in text:
            if not re.search(r"^\s*sync_interval:\s*always\s*$", text, re.M):
                finding(config, "a cluster config without `sync_interval: always`")
            if not re.search(r"^include \./permissions\.conf$", text, re.M):
                finding(config, "a cluster config without `include ./permissions.conf`")
        if server:
            # Test passwords for the variables permissions.conf reads.
            env = dict(os.environ, POD_NAME="nats-0", **{v: f"test-{v.lower()}" for v in variables})
            run = subprocess.run([server, "-t", "-c", str(config)], capture_output=True, text=True, env=env,
                                 cwd=deploy.parent)
            if run.returncode != 0:
                finding(config, f"nats-server -t: {run.stdout}{run.stderr}".strip())


def check_k8s_permissions(deploy):
    """The k8s NATS ConfigMap ships permissions.conf and the nats pods get every password it reads."""
    kustomization = (load_all(deploy / "k8s" / "kustomization.yaml") or [{}])[0]
    files = [f for g in kustomization.get("configMapGenerator") or [] for f in g.get("files") or []]
    if "permissions.conf=nats/permissions.conf" not in files:
        finding("deploy/k8s/kustomization.yaml", "the nats-config ConfigMap does not ship permissions.conf")
    # Kustomize loads nothing outside deploy/k8s: a copy, kept the same.
    shipped, copy = deploy / "nats" / "permissions.conf", deploy / "k8s" / "nats" / "permissions.conf"
    if not copy.exists() or copy.read_bytes() != shipped.read_bytes():
        finding(copy, f"differs from {shipped.relative_to(deploy.parent)} (copy it: kustomize reads only deploy/k8s)")
    env = set()
    for doc in load_all(deploy / "k8s" / "nats.yaml"):
        spec = pod_spec(doc)
        for container in (spec or {}).get("containers") or []:
            env |= {e["name"] for e in container.get("env") or []}
    for variable in permission_variables(deploy):
        if variable not in env:
            finding("deploy/k8s/nats.yaml", f"the nats container does not set {variable} (permissions.conf reads it)")


def check_image(deploy, binaries):
    """The image copies in every binary the compose file and manifests run."""
    path = deploy / "docker" / "Dockerfile"
    copied = set()
    for line in path.read_text().splitlines():
        if line.startswith("COPY "):
            copied |= {os.path.basename(p) for p in line.split()[1:-1]}
    for binary in sorted(binaries - copied):
        finding(path, f"{binary} is run by the deployment files but not copied into the image")
    if not binaries:
        finding(path, "no BACKBEAT binary found in the deployment files")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("deploy", type=pathlib.Path)
    parser.add_argument("--help-text", action="append", default=[])
    args = parser.parse_args()
    deploy = args.deploy.resolve()
    helps = HelpTexts(args.help_text)
    parsed = 0
    for path in sorted(deploy.rglob("*")):
        if path.suffix in (".yaml", ".yml") and "secrets" not in path.parts:
            load_all(path)
            parsed += 1
    print(f"{parsed} YAML files parsed")
    check_compose(deploy, helps)
    check_k8s(deploy, helps)
    check_nats(deploy)
    check_k8s_permissions(deploy)
    check_image(deploy, helps.binaries_used)
    for note in notes:
        print(f"note: {note}")
    for f in findings:
        print(f)
    if findings:
        sys.exit(1)
    print("deploy files: ok")


if __name__ == "__main__":
    main()
