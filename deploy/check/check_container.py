"""Checks of the Dockerfile and the compose stack with no Docker engine: hadolint and a parse of
the Dockerfile's stages, `docker-compose config -q` (Debian's docker-compose), and tests that the
compose stack, its PostgreSQL init script, collector and Prometheus configurations agree.

Run by scripts/check-deploy, which makes the virtual environment this needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from harness import Checks
from service_lists import check_service_lists
from versions import check_versions

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "user": (50051, "shopmesh.user.v1.UserService"),
    "order": (50052, "shopmesh.order.v1.OrderService"),
    "payment": (50053, "shopmesh.payment.v1.PaymentService"),
    "catalog": (50054, "shopmesh.catalog.v1.CatalogService"),
    "inventory": (50055, "shopmesh.inventory.v1.InventoryService"),
    "notification": (50056, "shopmesh.notification.v1.NotificationService"),
}
BINARY = "/usr/local/bin/shopmesh"
# Docker stops a container with SIGTERM, then SIGKILL after stop_grace_period: that must cover
# the shutdown timeout (10 s default) and the telemetry flush (~2 s).
MIN_STOP_GRACE_SECONDS = 12


# ---------------------------------------------------------------------------------------------
# Dockerfile


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    out, current = [], ""
    for line in dockerfile.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip() if current else stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, args = current.partition(" ")
            out.append((keyword.upper(), args.strip()))
            current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


def exec_form(args: str, what: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        raise AssertionError(f"{what} is in shell form ({args!r}); the runtime image has no shell")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{what} is not a JSON list of strings"
    return value


def check_dockerfile_stages() -> str:
    ins = instructions((ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in ins:
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    assert len(stages) >= 2, f"{len(stages)} stage(s): not a multi-stage build"
    args_defaults = dict(a.split("=", 1) for k, a in ins if k == "ARG" and "=" in a)
    stage_names = {s[0][1].split()[-1] for s in stages if " AS " in s[0][1].upper()}
    for stage in stages:
        image = stage[0][1].split()[0]
        if image in stage_names:  # built on an earlier stage
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args_defaults.get(m.group(1), m.group(0)), image)
        assert ":" in image.split("/")[-1] and not image.endswith(":latest"), f"base image {image} is not pinned by tag"

    # The build: the dependency layer is cooked from the recipe before the sources are copied.
    build = next(s for s in stages if any("cargo build" in a for k, a in s if k == "RUN"))
    runs = [(i, a) for i, (k, a) in enumerate(build) if k == "RUN"]
    cook = next((i for i, a in runs if "cargo chef cook" in a), None)
    copy_all = next((i for i, (k, a) in enumerate(build) if k == "COPY" and a.split()[-2:] == [".", "."]), None)
    build_run = next(a for i, a in runs if "cargo build" in a)
    assert cook is not None and copy_all is not None and cook < copy_all, "dependencies are not built before the sources are copied"
    assert "--release" in build_run and "--locked" in build_run and "-p shopmesh-cli" in build_run, f"not the contract's build command: {build_run}"

    final = stages[-1]
    base = final[0][1].split()[0]
    assert base.startswith("gcr.io/distroless/") and base.endswith(":nonroot"), f"runtime image is {base}, not distroless nonroot"
    user = [a for k, a in final if k == "USER"]
    assert user, "the runtime stage sets no USER"
    uid = user[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user[-1]} is not a numeric non-root user (runAsNonRoot needs a number)"
    entrypoint = [a for k, a in final if k == "ENTRYPOINT"]
    assert entrypoint and exec_form(entrypoint[-1], "ENTRYPOINT") == [BINARY], f"ENTRYPOINT is not [{BINARY!r}]"
    cmd = [a for k, a in final if k == "CMD"]
    assert cmd and exec_form(cmd[-1], "CMD")[0] == "serve", "the default CMD does not serve a service"
    health = [a for k, a in final if k == "HEALTHCHECK"]
    assert health, "no HEALTHCHECK"
    test = health[-1].split(" CMD ", 1)
    assert len(test) == 2, f"HEALTHCHECK {health[-1]!r} has no CMD"
    probe = exec_form(test[1], "HEALTHCHECK CMD")
    default_service = exec_form(cmd[-1], "CMD")[1]
    assert probe[:2] == [BINARY, "healthcheck"], f"HEALTHCHECK runs {probe}, not shopmesh healthcheck"
    assert probe[2] == f"127.0.0.1:{SERVICES[default_service][0]}", f"HEALTHCHECK asks {probe[2]}, not the default CMD's service {default_service}"
    copied = [a for k, a in final if k == "COPY"]
    assert copied and all("--from=" in a for a in copied), "the runtime stage copies from the build context, not only from the build stage"
    labels = " ".join(a for k, a in final if k == "LABEL")
    for label in ("title", "source", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels, f"no OCI label org.opencontainers.image.{label}"
    return f"{len(stages)} stages, runtime {base}, USER {user[-1]}"


def check_dockerignore() -> str:
    patterns = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for needed in (".git", "target", ".venv", "data"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    return f"{len(patterns)} patterns"


def check_hadolint() -> str:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
    return subprocess.run([str(hadolint), "--version"], capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------
# Compose


def compose(*args: str, file: Path = ROOT / "docker-compose.yml") -> subprocess.CompletedProcess:
    # --project-directory: relative paths resolve against the repository, also for a copy in /tmp.
    return subprocess.run(
        ["docker-compose", "--project-directory", str(ROOT), "-f", str(file), *args],
        capture_output=True, text=True, env={**os.environ, "COMPOSE_INTERACTIVE_NO_CLI": "1"},
    )


def check_compose_valid() -> str:
    result = compose("config", "-q")
    assert result.returncode == 0, f"docker-compose config -q:\n{result.stderr}"
    version = subprocess.run(["docker-compose", "version", "--short"], capture_output=True, text=True).stdout.strip()
    return f"docker-compose {version}"


def check_compose_rejects_unknown_keys() -> str:
    # The validation above is worth something only if it rejects a mistake.
    with tempfile.TemporaryDirectory() as tmp:
        broken = Path(tmp) / "docker-compose.yml"
        broken.write_text((ROOT / "docker-compose.yml").read_text().replace("    healthcheck:\n", "    healtcheck:\n", 1))
        result = compose("config", "-q", file=broken)
    assert result.returncode != 0, "docker-compose accepted a misspelt key (healtcheck)"
    return "a misspelt key fails: " + result.stderr.strip().splitlines()[-1][:80]


def resolved() -> dict[str, Any]:
    result = compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


def check_compose_services() -> str:
    config = resolved()
    services = config["services"]
    init_sql = (ROOT / "deploy" / "compose" / "postgres-init.sql").read_text()
    for svc, (port, grpc_name) in SERVICES.items():
        s = services.get(svc)
        assert s, f"no {svc} service"
        assert s.get("image") == "shopmesh:local" and s.get("build"), f"{svc}: not built from the Dockerfile as shopmesh:local"
        assert s.get("command") == ["serve", svc], f"{svc}: command is {s.get('command')}"
        test = s.get("healthcheck", {}).get("test")
        assert test == ["CMD", BINARY, "healthcheck", f"127.0.0.1:{port}", grpc_name], f"{svc}: healthcheck is {test}"
        deps = s.get("depends_on", {})
        assert deps.get("postgres", {}).get("condition") == "service_healthy", f"{svc}: does not wait for a healthy PostgreSQL"
        env = s.get("environment", {})
        url = env.get(f"SHOPMESH_{svc.upper()}_DATABASE_URL", "")
        m = re.fullmatch(r"postgres://(\w+):[^@]+@postgres:5432/(\w+)", url)
        assert m, f"{svc}: database URL {url!r} is not the compose PostgreSQL"
        role, db = m.groups()
        assert f"CREATE DATABASE {db} OWNER {role};" in init_sql, f"{svc}: postgres-init.sql does not create {db} owned by {role}"
        assert f"CREATE ROLE {role} LOGIN" in init_sql, f"{svc}: postgres-init.sql does not create role {role}"
        assert env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector:4317", f"{svc}: traces do not go to the collector"
        assert env.get("OTEL_SERVICE_NAME") == f"shopmesh-{svc}", f"{svc}: OTEL_SERVICE_NAME is {env.get('OTEL_SERVICE_NAME')}"
        assert seconds(s.get("stop_grace_period", "10s")) >= MIN_STOP_GRACE_SECONDS, f"{svc}: stop_grace_period below {MIN_STOP_GRACE_SECONDS}s"
        assert s.get("read_only") is True and "ALL" in s.get("cap_drop", []), f"{svc}: container is not read-only with all capabilities dropped"
        published = [p for p in s.get("ports", [])]
        assert any(str(p).startswith(f"127.0.0.1:{port}:{port}") for p in published), f"{svc}: gRPC port not published on 127.0.0.1:{port}"
        limits = {k: env.get(k) for k in ("SHOPMESH_MAX_METADATA_BYTES", "SHOPMESH_RATE_LIMIT_RPS", "SHOPMESH_RATE_LIMIT_BURST")}
        assert limits == {"SHOPMESH_MAX_METADATA_BYTES": "8192", "SHOPMESH_RATE_LIMIT_RPS": "0", "SHOPMESH_RATE_LIMIT_BURST": "50"}, f"{svc}: limits {limits}"
        assert "SHOPMESH_JWT_JWKS" not in env, f"{svc}: bearer tokens are on by default"
        # No mTLS in compose: a service the order service calls must not demand tokens of it.
        want_require = None if svc == "order" else "never"
        assert env.get("SHOPMESH_JWT_REQUIRE") == want_require, f"{svc}: SHOPMESH_JWT_REQUIRE is {env.get('SHOPMESH_JWT_REQUIRE')!r}, expected {want_require!r}"
    order = services["order"]
    for callee in ("user", "payment"):
        assert order["depends_on"].get(callee, {}).get("condition") == "service_healthy", f"order does not wait for a healthy {callee}"
        want = f"http://{callee}:{SERVICES[callee][0]}"
        got = order["environment"].get(f"SHOPMESH_{callee.upper()}_URL")
        assert got == want, f"order finds {callee} at {got}, not {want}"
    pg = services["postgres"]
    assert "pg_isready" in pg["healthcheck"]["test"] and "127.0.0.1" in pg["healthcheck"]["test"], "PostgreSQL's healthcheck is not pg_isready over TCP"
    assert any("docker-entrypoint-initdb.d" in str(v) for v in pg.get("volumes", [])), "PostgreSQL does not run the init script"
    images = {name: s["image"] for name, s in services.items()}
    for name, image in images.items():
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned by tag"
    return f"{len(services)} services; " + ", ".join(f"{n}={images[n]}" for n in ("postgres", "otel-collector", "jaeger", "prometheus"))


def check_compose_mtls_overlay() -> str:
    # deploy/compose/mtls.yml: each service presents its own identity, enforces the shipped
    # policy, and its healthcheck moves to the plaintext probe port (the gRPC port needs a cert).
    result = subprocess.run(
        ["docker-compose", "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
         "-f", str(ROOT / "deploy" / "compose" / "mtls.yml"), "config"],
        capture_output=True, text=True, env={**os.environ, "COMPOSE_INTERACTIVE_NO_CLI": "1"},
    )
    assert result.returncode == 0, f"docker-compose config with the mTLS overlay:\n{result.stderr}"
    services = yaml.safe_load(result.stdout)["services"]
    for svc, (port, grpc_name) in SERVICES.items():
        s = services[svc]
        env = s.get("environment", {})
        for var, file in (("CERT", "tls.crt"), ("KEY", "tls.key"), ("CA", "ca.crt")):
            want = f"/etc/shopmesh/certs/shopmesh-{svc}/{file}"
            assert env.get(f"SHOPMESH_TLS_{var}") == want, f"{svc}: SHOPMESH_TLS_{var} is {env.get(f'SHOPMESH_TLS_{var}')!r}, not its own {want}"
        probe = env.get("SHOPMESH_PROBE_LISTEN", "")
        assert probe.startswith("0.0.0.0:"), f"{svc}: no probe port"
        probe_port = probe.rsplit(":", 1)[1]
        assert probe_port != str(port), f"{svc}: the probe port is the gRPC port"
        test = s.get("healthcheck", {}).get("test")
        assert test == ["CMD", BINARY, "healthcheck", f"127.0.0.1:{probe_port}", grpc_name], f"{svc}: healthcheck {test} does not use the probe port"
        policy = env.get("SHOPMESH_AUTHZ_POLICY")
        mounts = {str(v.get("target") if isinstance(v, dict) else v.split(":")[1]): v for v in s.get("volumes", [])}
        assert policy and policy in mounts, f"{svc}: the policy {policy!r} is not mounted"
        source = mounts[policy].get("source") if isinstance(mounts[policy], dict) else mounts[policy].split(":")[0]
        assert str(source).endswith("deploy/authz-policy.json"), f"{svc}: the mounted policy is {source}, not deploy/authz-policy.json"
        assert any(str(t).startswith("/etc/shopmesh/certs") for t in mounts), f"{svc}: the certificates are not mounted"
        for target, v in mounts.items():
            read_only = v.get("read_only") if isinstance(v, dict) else v.endswith(":ro")
            assert read_only, f"{svc}: {target} is mounted writable"
    return "each service its own identity, the shipped policy, healthchecks on the probe port"


def check_telemetry_configs() -> str:
    services = resolved()["services"]
    collector = yaml.safe_load((ROOT / "deploy" / "compose" / "otel-collector.yaml").read_text())
    for pipeline, spec in collector["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in spec.get(kind, []):
                assert component in collector.get(kind, {}), f"collector pipeline {pipeline} uses undefined {kind[:-1]} {component}"
    assert "traces" in collector["service"]["pipelines"], "the collector has no traces pipeline"
    grpc_endpoint = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert grpc_endpoint.endswith(":4317") and not grpc_endpoint.startswith(("localhost", "127.")), f"collector listens on {grpc_endpoint}, unreachable from the services"
    exporters = collector["service"]["pipelines"]["traces"]["exporters"]
    jaeger = [collector["exporters"][e]["endpoint"] for e in exporters if e.startswith("otlp")]
    assert jaeger and all(ep.split(":")[0] in services for ep in jaeger), f"traces are exported to {jaeger}, not to a compose service"
    jaeger_args = " ".join(services["jaeger"].get("command", []))
    assert "receivers.otlp.protocols.grpc.endpoint=0.0.0.0:4317" in jaeger_args, "Jaeger's OTLP receiver listens on localhost only"

    prometheus = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    want = {f"{svc}:9464" for svc in SERVICES}
    assert want <= targets, f"Prometheus scrapes {sorted(targets)}, missing {sorted(want - targets)}"
    assert all(t.split(":")[0] in services for t in targets), f"Prometheus scrapes hosts that are not compose services: {sorted(targets)}"
    # The chart's alert rules, loaded from the file check_chart.py keeps identical to them.
    rules = [src for tgt, src in volume_map(services["prometheus"]).items() if tgt.startswith("/etc/prometheus/rules/")]
    assert rules and rules[0].endswith("deploy/compose/prometheus-rules.yml"), "compose's Prometheus does not mount the chart's rules"
    assert prometheus.get("rule_files") == ["/etc/prometheus/rules/*.yml"], f"Prometheus rule_files {prometheus.get('rule_files')}"
    return f"traces -> {', '.join(jaeger)}; Prometheus scrapes {', '.join(sorted(targets))}, with the chart's rules"


def volume_map(service: dict) -> dict[str, str]:
    """target -> source of a resolved compose service's volumes (long or short syntax)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out[str(v.get("target"))] = str(v.get("source"))
        else:
            parts = str(v).split(":")
            out[parts[1]] = parts[0]
    return out


def check_observability_profile() -> str:
    # Grafana with the chart's dashboards, only with --profile observability.
    result = compose("--profile", "observability", "config")
    assert result.returncode == 0, result.stderr
    grafana = yaml.safe_load(result.stdout)["services"].get("grafana")
    assert grafana, "no grafana service in the observability profile"
    assert grafana.get("profiles") == ["observability"], f"Grafana's profiles are {grafana.get('profiles')}, so it runs with a plain `up`"
    mounts = volume_map(grafana)
    dash = [src for tgt, src in mounts.items() if tgt.startswith("/var/lib/grafana/dashboards")]
    assert dash and dash[0].endswith("helm/shopmesh/files/dashboards"), f"Grafana does not load the chart's dashboards: {mounts}"
    for provisioning in ("datasources", "dashboards"):
        assert any(t.startswith(f"/etc/grafana/provisioning/{provisioning}/") for t in mounts), f"Grafana has no {provisioning} provisioning"
    ds = yaml.safe_load((ROOT / "deploy" / "compose" / "grafana" / "datasources.yml").read_text())["datasources"][0]
    assert ds["uid"] == "prometheus" and ds["url"] == "http://prometheus:9090", f"Grafana's data source is {ds}"
    return f"grafana {grafana['image']} with {dash[0].split('/')[-1]}"


def main() -> int:
    checks = Checks("container")
    checks.run("Dockerfile: stages, runtime user, entrypoint, healthcheck", check_dockerfile_stages)
    checks.run(".dockerignore", check_dockerignore)
    checks.run("hadolint Dockerfile", check_hadolint)
    checks.run("every service in every list of services (Dockerfile, chart, compose, client READMEs, docs)", check_service_lists)
    checks.run("one version: the chart, the Python and TypeScript packages are the workspace's", check_versions)
    if shutil.which("docker-compose") is None:
        checks.run("docker-compose config -q", lambda: (_ for _ in ()).throw(AssertionError("docker-compose is not installed")))
    else:
        checks.run("docker-compose config -q", check_compose_valid)
        checks.run("docker-compose rejects a misspelt key", check_compose_rejects_unknown_keys)
        checks.run("compose: services, healthchecks, dependencies, databases", check_compose_services)
        checks.run("compose: collector, Jaeger and Prometheus agree", check_telemetry_configs)
        checks.run("compose: mTLS overlay (deploy/compose/mtls.yml)", check_compose_mtls_overlay)
        checks.run("compose: profile observability (Grafana, the chart's dashboards)", check_observability_profile)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
