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
from pods import default_install, scale, upgrade, variants
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
            state["values"] = default_install.values(default_install.gitops_secrets(cluster, NAMESPACE))
            state["ready"] = default_install.install(cluster, release, state["values"])
            state["ready_at"] = time.monotonic()
            pods = [p for p in cluster.pods if p.namespace == NAMESPACE]
            return f"install-to-Ready {state['ready']:.1f} s, {len(pods)} pods: {', '.join(sorted(p.name for p in pods))}"

        if wanted & {"default", "scale", "upgrade"}:
            checks.run("default values with the CA and password Secrets (payment's HPA minimum 1): helm install, every pod Ready", install)
        if "ready" in state:
            def first_order() -> str:
                state["edge"] = Edge(cluster, NAMESPACE, default_install.CA_SECRET)
                # A pod is Ready on its own database (DESIGN.md), not its callees: order may have
                # resolved catalog's headless name before catalog's pods were Ready. Its next
                # re-resolution finds them.
                time.sleep(max(0.0, default_install.RESOLVE_INTERVAL - (time.monotonic() - state["ready_at"])))
                return default_install.order_through_services(state["edge"])

            checks.run("default values: a user, a product and a PAID order through the Services, as the edge", first_order)
        if "ready" in state:
            def helm_test() -> str:
                start = time.monotonic()
                release.test()
                return f"the chart's test pod Succeeded in {time.monotonic() - start:.1f} s (each service's health through its headless name)"

            checks.run("helm test", helm_test)
        if "edge" in state:
            checks.run("a connection the NetworkPolicies refuse is caught (the edge to payment)",
                       lambda: state["edge"].refused_is_caught())

        if "edge" in state and ("scale" in wanted or "upgrade" in wanted):
            checks.run("the bench's products BENCH-1..10, made by the catalog's administrator", lambda: state["edge"].products())
        if "edge" in state and "scale" in wanted:
            checks.run("payment scaled 1 -> 3 as the HPA would, under CreateOrder load through the order Service",
                       lambda: scale.scale_out(cluster, state["edge"], NAMESPACE))
            checks.run("a payment pod SIGKILLed is restarted per its restartPolicy", lambda: scale.sigkill(cluster, NAMESPACE))
            checks.run("a drain of order and payment that respects their PodDisruptionBudgets, under load",
                       lambda: scale.drain_under_load(cluster, state["edge"], NAMESPACE))

        if "edge" in state and "upgrade" in wanted:
            checks.run("helm upgrade to a release with a new additive migration, under CreateOrder load",
                       lambda: upgrade.upgrade(cluster, release, state["edge"], state["values"]))
            # Also after an upgrade that did not become Ready: rolling back is what an operator does then.
            if len(release.revisions) >= 2:
                checks.run("helm rollback across that migration, under CreateOrder load: every pod Ready, no acknowledged order lost",
                           lambda: upgrade.rollback(cluster, release, state["edge"]))

        if "variants" in wanted:
            if release.revisions:
                release.uninstall(grace=1)  # the machine's two cores for one release at a time
            checks.run("variant: token-only values fail to render, saying mTLS is needed", lambda: variants.token_only(CHART, cluster))
            checks.run("variant: the default values alone, rendered without a cluster, fail naming the Secrets to set",
                       lambda: variants.no_cluster(CHART, cluster))
            for name, variant in (("external database with database.existingSecret, a sidecar beside the migration Job", variants.external_database),
                                  ("cert-manager issues the mesh's certificates", variants.cert_manager),
                                  ("bearer tokens on beside mTLS", variants.tokens),
                                  ("an Ingress and GRPCRoutes presenting the edge certificate (tls.secretNames.edge)", variants.ingress_edge_certificate),
                                  ("the chart's NATS, inventory and notification on; the order's events followed to both and back", variants.events)):
                checks.run(f"variant: {name}: every pod Ready, a PAID order through the Services",
                           lambda variant=variant: variant(cluster, CHART))

        def policies() -> str:
            assert not cluster.violations, "; ".join(cluster.violations)
            return f"{len(cluster.connections)} distinct connections between pods checked, none refused"

        checks.run("every connection seen is one the NetworkPolicies allow", policies)
    print(f"events: {log.name if log else '(none)'}")
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
