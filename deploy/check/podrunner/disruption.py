"""Voluntary disruptions as the Eviction API grants them: a pod is evicted only while every
PodDisruptionBudget selecting it allows one more disruption (disruptionsAllowed = healthy pods -
desired healthy, from minAvailable or maxUnavailable against the owner's replicas); a drain evicts
pods one by one, retrying a refused eviction (HTTP 429 in a cluster) until its deadline."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from .netpol import matches
from .pod import Pod

if TYPE_CHECKING:
    from .cluster import Cluster


def _count(value: Any, expected: int, up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * expected / 100
        return math.ceil(exact) if up else math.floor(exact)
    return int(value)


def disruptions_allowed(cluster: "Cluster", pdb: dict) -> int:
    ns = pdb["metadata"]["namespace"]
    selected = [p for p in list(cluster.pods) if p.namespace == ns and matches(pdb["spec"].get("selector"), p.labels)]
    healthy = sum(1 for p in selected if p.ready)
    owners = {id(w): w for w in cluster.workloads.values() if any(p in w.pods for p in selected)}
    expected = sum(getattr(w, "replicas", w.manifest["spec"].get("replicas", 1)) for w in owners.values()) or len(selected)
    spec = pdb["spec"]
    if "minAvailable" in spec:
        desired = _count(spec["minAvailable"], expected, up=True)
    else:
        desired = expected - _count(spec.get("maxUnavailable", 1), expected, up=True)
    return healthy - desired


def evict(cluster: "Cluster", pod: Pod) -> str | None:
    """None when evicted (deletion started); else the budget that refused it."""
    for pdb in cluster.list("PodDisruptionBudget", pod.namespace):
        if matches(pdb["spec"].get("selector"), pod.labels) and disruptions_allowed(cluster, pdb) < 1:
            return pdb["metadata"]["name"]
    pod.delete(wait=False)
    return None


def drain(cluster: "Cluster", pods: list[Pod], timeout: float) -> int:
    """Evicts every pod in `pods`, each as soon as the budgets allow; returns the refusals met."""
    refused = 0
    deadline = time.monotonic() + timeout
    for pod in pods:
        while (why := evict(cluster, pod)) is not None:
            refused += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"drain: {pod.name} still refused by PodDisruptionBudget {why} after {timeout:.0f}s")
            time.sleep(0.5)
        cluster.event(f"drain: evicted {pod.name}")
    return refused
