"""The controllers of the workloads a chart renders: Deployment (a ReplicaSet per pod template,
rolled per the strategy's maxSurge and maxUnavailable), StatefulSet (ordinal pods started in order,
a PVC per volumeClaimTemplate and ordinal, kept across restarts and upgrades), Job (pods until one
succeeds, backoffLimit, activeDeadlineSeconds) and bare Pods. Each `tick()` moves its workload one
step towards its spec, as the controller manager does; the cluster ticks them all."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from typing import TYPE_CHECKING, Any

from .pod import Pod

if TYPE_CHECKING:
    from .cluster import Cluster

Manifest = dict[str, Any]


def template_hash(template: Manifest) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def pod_manifest(template: Manifest, name: str, namespace: str, extra_labels: dict[str, str]) -> Manifest:
    pod = copy.deepcopy(template)
    meta = pod.setdefault("metadata", {})
    meta["name"], meta["namespace"] = name, namespace
    meta["labels"] = {**meta.get("labels", {}), **extra_labels}
    return {"apiVersion": "v1", "kind": "Pod", **pod}


def scaled(value: int | str, total: int, up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if up else math.floor(exact)
    return int(value)


class Workload:
    def __init__(self, cluster: "Cluster", manifest: Manifest) -> None:
        self.cluster = cluster
        self.manifest = manifest
        self.name = manifest["metadata"]["name"]
        self.namespace = manifest["metadata"]["namespace"]
        self.pods: list[Pod] = []
        self.counter = 0

    def update(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def live(self) -> list[Pod]:
        return [p for p in self.pods if not p.terminating]

    def ready(self) -> bool:
        raise NotImplementedError

    def tick(self) -> None:
        raise NotImplementedError

    def delete(self) -> None:
        for p in self.pods:
            p.delete(wait=False)


class Deployment(Workload):
    def __init__(self, cluster: "Cluster", manifest: Manifest) -> None:
        super().__init__(cluster, manifest)
        self.replicas = manifest["spec"].get("replicas", 1)
        self.paused = False

    def update(self, manifest: Manifest) -> None:
        self.manifest = manifest
        if "replicas" in manifest["spec"]:
            self.replicas = manifest["spec"]["replicas"]

    def current_hash(self) -> str:
        return template_hash(self.manifest["spec"]["template"])

    def ready(self) -> bool:
        h = self.current_hash()
        live = self.live()
        return len(live) == self.replicas and all(p.ready and p.labels.get("pod-template-hash") == h for p in live)

    def new_pod(self, h: str) -> None:
        self.counter += 1
        name = f"{self.name}-{h[:8]}-{self.counter}"
        self.pods.append(self.cluster.start_pod(pod_manifest(self.manifest["spec"]["template"], name, self.namespace, {"pod-template-hash": h}), self))

    def tick(self) -> None:
        self.pods = [p for p in self.pods if not p.deleted.is_set()]
        h = self.current_hash()
        live = self.live()
        new = [p for p in live if p.labels.get("pod-template-hash") == h]
        old = [p for p in live if p.labels.get("pod-template-hash") != h]
        desired = self.replicas
        if not old:
            for _ in range(desired - len(new)):
                self.new_pod(h)
            # Scale down: pods not ready first, then the newest.
            for p in sorted(new, key=lambda p: (p.ready, -p.created))[: max(0, len(new) - desired)]:
                p.delete(wait=False)
            return
        strategy = self.manifest["spec"].get("strategy") or {}
        if strategy.get("type") == "Recreate":
            for p in old:
                p.delete(wait=False)
            return
        ru = strategy.get("rollingUpdate") or {}
        surge = scaled(ru.get("maxSurge", "25%"), desired, up=True)
        unavailable = scaled(ru.get("maxUnavailable", "25%"), desired, up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        for _ in range(min(desired + surge - len(live), desired - len(new))):
            self.new_pod(h)
        available = sum(1 for p in live if p.ready)
        removable = available - (desired - unavailable)
        for p in sorted(old, key=lambda p: p.ready):
            if not p.ready:
                p.delete(wait=False)
            elif removable > 0:
                removable -= 1
                p.delete(wait=False)


class StatefulSet(Workload):
    def ready(self) -> bool:
        live = self.live()
        want = self.manifest["spec"].get("replicas", 1)
        h = template_hash(self.manifest["spec"]["template"])
        return len(live) == want and all(p.ready and p.labels.get("controller-revision-hash") == h for p in live)

    def tick(self) -> None:
        self.pods = [p for p in self.pods if not p.deleted.is_set()]
        spec = self.manifest["spec"]
        h = template_hash(spec["template"])
        by_ordinal = {int(p.name.rsplit("-", 1)[1]): p for p in self.pods}
        # OrderedReady (the default) starts pod i+1 once pod i is Ready; Parallel starts every
        # missing pod at once, as a clustered server needs when it is Ready only with a quorum
        # of its peers (NATS with JetStream). Updates go one pod at a time in both.
        parallel = spec.get("podManagementPolicy") == "Parallel"
        started = False
        for i in range(spec.get("replicas", 1)):
            p = by_ordinal.get(i)
            if p is None:
                template = copy.deepcopy(spec["template"])
                vols = template["spec"].setdefault("volumes", [])
                for claim in spec.get("volumeClaimTemplates", []):
                    vols.append({"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": f"{claim['metadata']['name']}-{self.name}-{i}"}})
                name = f"{self.name}-{i}"
                # As the StatefulSet controller sets them: the pod's DNS name under serviceName.
                template["spec"]["hostname"] = name
                if spec.get("serviceName"):
                    template["spec"]["subdomain"] = spec["serviceName"]
                self.pods.append(self.cluster.start_pod(pod_manifest(template, name, self.namespace, {"controller-revision-hash": h, "statefulset.kubernetes.io/pod-name": name}), self))
                if not parallel:
                    return  # OrderedReady: one at a time
                started = True
                continue
            if p.terminating or not p.ready:
                if parallel:
                    started = True  # no update while a pod is down; the others still start
                    continue
                return
        if started:
            return
        for i in range(spec.get("replicas", 1)):
            p = by_ordinal[i]
            if p.labels.get("controller-revision-hash") != h:
                p.delete(wait=False)  # RollingUpdate: replaced, then the next once this one is ready
                return


class Job(Workload):
    def __init__(self, cluster: "Cluster", manifest: Manifest) -> None:
        super().__init__(cluster, manifest)
        self.started = time.monotonic()
        self.failures = 0
        self.status: str | None = None  # Complete or Failed
        self.reason = ""

    def ready(self) -> bool:
        return self.status == "Complete"

    def tick(self) -> None:
        if self.status:
            return
        spec = self.manifest["spec"]
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and time.monotonic() - self.started > deadline:
            self.status, self.reason = "Failed", "DeadlineExceeded"
        for p in self.live():
            if p.phase == "Succeeded":
                self.status = "Complete"
            elif p.phase == "Failed":
                self.failures += 1
                p.delete(wait=False)
                if self.failures > spec.get("backoffLimit", 6):
                    self.status, self.reason = "Failed", f"BackoffLimitExceeded: {p.reason}"
        if self.status:
            for p in self.live():
                p.delete(wait=False)
            self.cluster.event(f"job {self.name}: {self.status} {self.reason}")
            return
        if not self.live():
            self.counter += 1
            self.pods.append(self.cluster.start_pod(pod_manifest(spec["template"], f"{self.name}-{self.counter}", self.namespace, {"job-name": self.name}), self))


class BarePod(Workload):
    def __init__(self, cluster: "Cluster", manifest: Manifest) -> None:
        super().__init__(cluster, manifest)
        meta = manifest["metadata"]
        self.pods = [cluster.start_pod(pod_manifest({"metadata": meta, "spec": manifest["spec"]}, self.name, self.namespace, {}), self)]

    def ready(self) -> bool:
        return bool(self.pods) and (self.pods[0].ready or self.pods[0].phase == "Succeeded")

    def tick(self) -> None:
        pass


KINDS = {"Deployment": Deployment, "StatefulSet": StatefulSet, "Job": Job, "Pod": BarePod}
