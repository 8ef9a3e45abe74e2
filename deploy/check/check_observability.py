"""The chart's alert rules and dashboards against a running mesh: runs the shopmesh binary (all
services, SQLite in a temporary directory), drives a few calls with `shopmesh bench`, scrapes it
with Debian's Prometheus loading deploy/compose/prometheus-rules.yml (the chart's rules, kept
identical by check_chart.py), and evaluates every recording rule, alert expression and dashboard
query through Prometheus' HTTP API.

Each must evaluate without error; recording rules and dashboard queries must return a series,
except those in EMPTY_OK (docs/operations.md says why) and those on series of a service the binary
does not serve (NEEDS). Waits are polls with deadlines, never fixed sleeps.

Usage (scripts/check-observability): check_observability.py path/to/shopmesh
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from harness import Checks, free_port, stop, until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "compose" / "prometheus-rules.yml"
DASHBOARDS = ROOT / "helm" / "shopmesh" / "files" / "dashboards"
# Series that need a service the binary may not serve yet: (regex on the query, service).
NEEDS = [(re.compile(r"shopmesh_order_|shopmesh:order_"), "order"), (re.compile(r"catalog"), "catalog")]
# Queries allowed to be empty on a healthy mesh driven briefly: substring -> why. Every refusal
# counter is written `<counter> or 0 * <calls>` so that it has a series before its first
# increment (docs/operations.md). Add an entry only with its reason, in the docs too.
EMPTY_OK: dict[str, str] = {
    # The gauge and the rule recording it.
    "tls_certificate_": "the certificate gauge exists only with mTLS on and this mesh runs in "
    "plaintext; scripts/check-chart-certificates requires the gauge of a service on the chart's certificates",
}
GRPC = {"user": "shopmesh.user.v1.UserService", "order": "shopmesh.order.v1.OrderService",
        "payment": "shopmesh.payment.v1.PaymentService", "catalog": "shopmesh.catalog.v1.CatalogService",
        "inventory": "shopmesh.inventory.v1.InventoryService",
        "notification": "shopmesh.notification.v1.NotificationService"}
DEADLINE_SECONDS = 120


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def served(binary: str) -> set[str]:
    """The services this build of the binary knows (`serve --help` lists them)."""
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    return {s for s in GRPC if re.search(rf"\b{s}\b", out)}


def main() -> int:
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/shopmesh")
    checks = Checks("observability")
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="shopmesh-obs-"))
    try:
        services = served(binary)
        ports = {s: free_port() for s in services}
        metrics = free_port()
        prom_port = free_port()
        args = [binary, f"--metrics-listen=127.0.0.1:{metrics}"]
        for s in services:
            args += [f"--{s}-listen=127.0.0.1:{ports[s]}", f"--{s}-database-url=sqlite://{tmp}/{s}.db"]
        # The all-in-one run points order at its callees' listen addresses itself.
        log = open(tmp / "mesh.log", "w")
        procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"}))
        deadline = time.monotonic() + DEADLINE_SECONDS

        def mesh_ready() -> str:
            for s in services:
                until(f"{s} SERVING", lambda s=s: subprocess.run(
                    [binary, "healthcheck", f"127.0.0.1:{ports[s]}", GRPC[s]], capture_output=True).returncode == 0, deadline)
            return f"{', '.join(sorted(services))} SERVING"

        checks.run("the mesh starts (SQLite, free ports)", mesh_ready)

        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "shopmesh", "static_configs": [{"targets": [f"127.0.0.1:{metrics}"], "labels": {"service": "mesh"}}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_log = open(tmp / "prometheus.log", "w")
        procs.append(subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=prom_log, stderr=subprocess.STDOUT))
        api = f"http://127.0.0.1:{prom_port}/api/v1"

        def query(expr: str) -> list:
            body = get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
            assert body["status"] == "success", f"{expr}: {body}"
            return body["data"]["result"]

        def prometheus_ready() -> str:
            until("Prometheus ready", lambda: urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/-/ready", timeout=2).status == 200, deadline)
            groups = until("the rules loaded", lambda: get(f"{api}/rules")["data"]["groups"], deadline)
            return f"{sum(len(g['rules']) for g in groups)} rules loaded"

        checks.run("Prometheus (Debian's) with the chart's rules", prometheus_ready)

        def drive() -> str:
            urls = [f"--user=http://127.0.0.1:{ports['user']}", f"--order=http://127.0.0.1:{ports['order']}"]
            if "catalog" in ports:
                # The bench creates the products it orders in the catalog first.
                urls.append(f"--catalog=http://127.0.0.1:{ports['catalog']}")

            def bench(requests: int) -> None:
                for scenario in ("create-order", "get-order", "get-user"):
                    r = subprocess.run([binary, "bench", scenario, "--requests", str(requests), "--concurrency", "2", "--users", "4", "--orders", "4", *urls],
                                       capture_output=True, text=True, timeout=120)
                    assert r.returncode == 0, f"bench {scenario}: {r.stderr[-500:]}"

            # A counter's first sample already holds every call made before it, and rate() counts
            # increases only: a first round makes the series, a second one (after Prometheus has
            # scraped the first) increases them.
            bench(5)
            order_calls = 'rpc_server_call_duration_seconds_count{rpc_service="shopmesh.order.v1.OrderService",rpc_method="GetOrder"}'
            until("the first calls scraped", lambda: query(order_calls), deadline)
            bench(40)
            until("the second calls scraped and the rules evaluated", lambda: query(f"sum(rate({order_calls}[1m])) > 0")
                  and query("shopmesh:rpc_server_errors:ratio_rate5m >= 0"), deadline)
            # Every rule group evaluated again since: recorded series exist from the next
            # evaluation after their inputs do, group by group.
            since = time.time() + 1

            def evaluated(ts: str) -> float:
                m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", ts)
                assert m, ts
                frac = float(m.group(2) or 0)
                base = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
                return base.timestamp() + frac

            until("every rule group evaluated after the calls", lambda: all(
                evaluated(g["lastEvaluation"]) > since for g in get(f"{api}/rules")["data"]["groups"]), deadline)
            return "bench create-order, get-order, get-user: 5 calls each, then 40"

        if {"user", "order"} <= services:
            checks.run("drive calls with shopmesh bench", drive)

        def skipped_for(expr: str) -> str | None:
            for pattern, svc in NEEDS:
                if pattern.search(expr) and svc not in services:
                    return f"needs {svc}, which this binary does not serve"
            return None

        def evaluate(expr: str, may_be_empty: bool = False) -> str:
            if reason := skipped_for(expr):
                return f"skipped: {reason}"
            result = query(expr)
            if result or may_be_empty:
                return f"{len(result)} series" + ("" if result else " (an alert: empty while nothing is wrong)")
            for key, why in EMPTY_OK.items():
                if key in expr:
                    return f"empty: {why}"
            raise AssertionError(f"no series for {expr}")

        rules = yaml.safe_load(RULES.read_text())["groups"]
        for group in rules:
            for rule in group["rules"]:
                if "record" in rule:
                    checks.run(f"recording rule {rule['record']}", lambda r=rule: evaluate(r["record"]) + "; expr: " + evaluate(r["expr"]))
                else:
                    checks.run(f"alert {rule['alert']}", lambda r=rule: evaluate(r["expr"], may_be_empty=True))
        for path in sorted(DASHBOARDS.glob("*.json")):
            dashboard = json.loads(path.read_text())
            for panel in dashboard["panels"]:
                for target in panel.get("targets", []):  # rows have none
                    # All namespaces, as the variable's "All" (.*, which matches an absent label too).
                    expr = target["expr"].replace("$__rate_interval", "1m").replace("$namespace", ".*")
                    checks.run(f"dashboard {dashboard['uid']}: {panel['title']} [{target['refId']}]", lambda e=expr: evaluate(e))
    finally:
        stop(procs)
        if checks.failed:
            for name in ("mesh.log", "prometheus.log"):
                if (tmp / name).exists():
                    print(f"--- last lines of {name}:\n" + "\n".join((tmp / name).read_text().splitlines()[-15:]))
        shutil.rmtree(tmp, ignore_errors=True)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
