"""The pod runner's scenarios (deploy/check/podrunner): helm/shopmesh rendered as `helm template`
renders it and run as a kubelet would, then used through its Services. Each scenario prints its
figures; a NetworkPolicy that would refuse a connection the runner saw fails the run.

Usage (scripts/check-pods, as root): check_pods.py path/to/shopmesh [scenario ...]
Scenarios: default (install, a PAID order through the Services), scale, upgrade (and rollback),
variants. All by default."""

from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path

from harness import Checks
from podrunner import Cluster, Release
from pods import default_install
from pods.edge import Edge

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shopmesh"
RELEASE, NAMESPACE = "shopmesh", "shop"


def interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    # SIGTERM too unwinds through `with Cluster`, which removes everything the runner made.
    signal.signal(signal.SIGTERM, interrupted)
    binary = Path(sys.argv[1] if len(sys.argv) > 1 else "target/debug/shopmesh").resolve()
    wanted = set(sys.argv[2:]) or {"default", "scale", "upgrade", "variants"}
    checks = Checks("pod runner")
    log = open(ROOT / "target" / "podrunner-events.log", "w") if (ROOT / "target").is_dir() else None

    def event(line: str) -> None:
        if log:
            log.write(line + "\n")
            log.flush()

    logs = ROOT / "target" / "podrunner-logs"
    shutil.rmtree(logs, ignore_errors=True)
    with Cluster(binary, log=event, logs=logs) as cluster:
        release = Release(cluster, CHART, RELEASE, NAMESPACE)
        state: dict = {}

        def install() -> str:
            state["ready"] = default_install.install(cluster, release, default_install.values())
            state["ready_at"] = time.monotonic()
            pods = [p for p in cluster.pods if p.namespace == NAMESPACE]
            return f"install-to-Ready {state['ready']:.1f} s, {len(pods)} pods: {', '.join(sorted(p.name for p in pods))}"

        checks.run("default values: helm install, every pod Ready", install)
        if "ready" in state:
            def first_order() -> str:
                state["edge"] = Edge(cluster, NAMESPACE, f"{RELEASE}-mesh-ca")
                # A pod is Ready on its own database (DESIGN.md), not its callees: order may have
                # resolved catalog's headless name before catalog's pods were Ready. Its next
                # re-resolution finds them.
                time.sleep(max(0.0, default_install.RESOLVE_INTERVAL - (time.monotonic() - state["ready_at"])))
                return default_install.order_through_services(state["edge"])

            checks.run("default values: a user, a product and a PAID order through the Services, as the edge", first_order)

        if "edge" in state:
            def refused_is_caught() -> str:
                # The edge may not reach payment (only order may): the runner must notice.
                before = len(cluster.violations)
                state["edge"].run(["/usr/local/bin/shopmesh", "healthcheck", f"{state['edge'].host('payment')}:50053", "--timeout=2s"])
                cluster.wait("the runner to see the edge's connection to payment", lambda: len(cluster.violations) > before, 10)
                caught = cluster.violations[before:]
                del cluster.violations[before:]
                assert all("payment" in v for v in caught), caught
                return caught[0]

            checks.run("a connection the NetworkPolicies refuse is caught (the edge to payment)", refused_is_caught)

        def policies() -> str:
            assert not cluster.violations, "; ".join(cluster.violations)
            return f"{len(cluster.connections)} distinct connections between pods checked, none refused"

        checks.run("every connection seen is one the NetworkPolicies allow", policies)
    print(f"events: {log.name if log else '(none)'}")
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
