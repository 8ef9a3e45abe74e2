"""Scenario 4: payment scaled 1 -> 3 as the HPA would, under CreateOrder load through the order
Service: the new pods serve Charges within two resolve intervals of being Ready, no call fails; a
payment pod SIGKILLed is restarted in place (restartPolicy Always) and Ready again; a drain of the
order and payment pods that waits for each PodDisruptionBudget, under load, fails no call and never
has more pods of a service unavailable than its budget allows."""

from __future__ import annotations

import os
import signal
import threading
import time

from podrunner import Cluster
from podrunner.disruption import drain

from .edge import Edge
from .load import Load, charges_served, summary

RESOLVE_INTERVAL = 5.0
# What these scenarios test is pods coming and going, not capacity: 50 CreateOrder/s leaves the
# debug build headroom on a CI machine shared with compilers (at 100/s a starved machine sheds
# RESOURCE_EXHAUSTED while nothing is scaled). The upgrade runs at the 100/s.
RATE = 50
DRAIN_RATE = RATE


def payment_pods(cluster: Cluster, ns: str) -> list:
    return [p for p in cluster.workload("Deployment", ns, "shopmesh-payment").live()]


def scale_out(cluster: Cluster, edge: Edge, ns: str) -> str:
    before = payment_pods(cluster, ns)
    assert len(before) == 1, f"payment runs {len(before)} pods, not 1"
    load = Load(edge, RATE, 30, "scale-out")
    time.sleep(5)
    cluster.scale(ns, "shopmesh-payment", 3)
    new = cluster.wait("payment at 3 Ready pods", lambda: [p for p in payment_pods(cluster, ns) if p not in before and p.ready]
                       if len([p for p in payment_pods(cluster, ns) if p.ready]) == 3 else None, 90)
    ready_at = time.monotonic()
    new = [p for p in payment_pods(cluster, ns) if p not in before]
    took: dict[str, float] = {}

    def all_serving() -> bool:
        for p in new:
            if p.name not in took and charges_served(p.ip) > 0:
                took[p.name] = time.monotonic() - ready_at
        return len(took) == len(new)

    cluster.wait("the new payment pods to serve Charges", all_serving, 4 * RESOLVE_INTERVAL)
    report = load.wait()
    slowest = max(took.values())
    assert slowest <= 2 * RESOLVE_INTERVAL, f"a new pod took {slowest:.1f}s after Ready to get a Charge (> {2 * RESOLVE_INTERVAL:.0f}s)"
    assert report["failed"] == 0, f"calls failed during the scale-out: {summary(report)}"
    return f"{summary(report)}; new pods' first Charge {', '.join(f'{t:.1f}' for t in sorted(took.values()))} s after Ready"


def sigkill(cluster: Cluster, ns: str) -> str:
    pod = payment_pods(cluster, ns)[0]
    c = pod.mains[0]
    restarts = c.restarts
    os.kill(c.host_pid(), signal.SIGKILL)
    start = time.monotonic()
    cluster.wait(f"{pod.name} restarted and Ready", lambda: c.restarts > restarts and pod.ready, 60)
    assert not pod.terminating and pod in payment_pods(cluster, ns), "the pod was replaced, not restarted"
    return f"{pod.name}: exit {c.last_exit}, restarted in place (restarts {c.restarts}), Ready again after {time.monotonic() - start:.1f} s"


def drain_under_load(cluster: Cluster, edge: Edge, ns: str) -> str:
    pods = [p for d in ("shopmesh-order", "shopmesh-payment") for p in cluster.workload("Deployment", ns, d).live()]
    load = Load(edge, DRAIN_RATE, 45, "drain")
    time.sleep(3)
    worst: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for d in ("shopmesh-order", "shopmesh-payment"):
                w = cluster.workload("Deployment", ns, d)
                worst[d] = max(worst.get(d, 0), w.replicas - sum(1 for p in w.live() if p.ready))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.monotonic()
    try:
        refused = drain(cluster, pods, 150)
        cluster.wait("order and payment Ready after the drain", lambda: all(
            cluster.workload("Deployment", ns, d).ready() for d in ("shopmesh-order", "shopmesh-payment")), 90)
    finally:
        done.set()
        watcher.join()
    took = time.monotonic() - start
    report = load.wait()
    for d, n in worst.items():
        pdb = cluster.get("PodDisruptionBudget", ns, d)
        allowed = int(pdb["spec"].get("maxUnavailable", 1))
        assert n <= allowed, f"{d}: {n} pods unavailable at once during the drain, budget {allowed}"
    assert report["failed"] == 0, f"calls failed during the drain: {summary(report)}"
    return (f"{len(pods)} pods evicted in {took:.0f} s, {refused} evictions refused by the budgets meanwhile, at most "
            f"{max(worst.values())} unavailable per service; {summary(report)}")
