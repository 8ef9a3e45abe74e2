"""Helm's side: a release rendered by Helm's own Go SDK (helm-python-sdk, as `helm template`
renders: `lookup` finds nothing) and applied in Helm's order. install: pre-install hooks by weight
(then kind, then name), each Job or Pod waited for, with its delete policies
(before-hook-creation by default, hook-succeeded, hook-failed); then every other object in Helm's
kind order; post-install hooks. upgrade: the same with pre-/post-upgrade hooks, objects no longer
rendered deleted (unless `helm.sh/resource-policy: keep`). rollback: the stored manifest of an
earlier revision applied again, with its pre-/post-rollback hooks. `helm test`: the test hooks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import yaml
from helm_python.chart import Chart

from .cluster import Cluster

Manifest = dict[str, Any]
PostRenderer = Callable[[list[Manifest]], list[Manifest]]
# Helm's InstallOrder (pkg/release/util/kind_sorter.go); kinds it does not know go last.
ORDER = ["PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy", "PodDisruptionBudget",
         "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
         "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role",
         "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet",
         "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
         "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


def kind_rank(obj: Manifest) -> int:
    return ORDER.index(obj["kind"]) if obj["kind"] in ORDER else len(ORDER)


def hook_of(obj: Manifest) -> tuple[set[str], int, set[str]]:
    ann = obj["metadata"].get("annotations") or {}
    events = {e.strip() for e in ann.get("helm.sh/hook", "").split(",") if e.strip()}
    policies = {p.strip() for p in ann.get("helm.sh/hook-delete-policy", "").split(",") if p.strip()} or {"before-hook-creation"}
    return events, int(ann.get("helm.sh/hook-weight", "0")), policies


class HookFailed(Exception):
    pass


class Release:
    def __init__(self, cluster: Cluster, chart_dir: Path, name: str, namespace: str, timeout: float = 120) -> None:
        self.cluster, self.chart_dir, self.name, self.namespace, self.timeout = cluster, chart_dir, name, namespace, timeout
        self.revisions: list[tuple[dict, list[Manifest]]] = []  # (values, every rendered object, hooks included)

    def render(self, values: dict, upgrade: bool) -> list[Manifest]:
        chart = Chart.load(self.chart_dir)
        try:
            files = chart.render(values=values, name=self.name, namespace=self.namespace, revision=len(self.revisions) + 1,
                                 is_install=not upgrade, is_upgrade=upgrade)
        finally:
            chart.close()
        objects = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc["metadata"].setdefault("namespace", self.namespace)
                    objects.append(doc)
        return objects

    def install(self, values: dict, post_renderer: PostRenderer | None = None) -> None:
        objects = self.render(values, upgrade=False)
        self._deploy(values, post_renderer(objects) if post_renderer else objects, "install")

    def upgrade(self, values: dict, post_renderer: PostRenderer | None = None) -> None:
        """`helm upgrade [--post-renderer]`: the post-renderer sees and may change every object."""
        objects = self.render(values, upgrade=True)
        self._deploy(values, post_renderer(objects) if post_renderer else objects, "upgrade")

    def rollback(self, revision: int) -> None:
        values, objects = self.revisions[revision - 1]
        self._deploy(values, copy.deepcopy(objects), "rollback")

    def uninstall(self, timeout: float = 60, grace: float | None = None) -> None:
        """`helm uninstall`: every object of the last revision, in reverse order; then waits
        (unlike Helm) until their pods are gone, so the next install has the machine. `grace`
        overrides the pods' terminationGracePeriodSeconds (a cleanup, not a scenario)."""
        _, objects = self.revisions[-1]
        for o in sorted((o for o in objects if not hook_of(o)[0]), key=kind_rank, reverse=True):
            if (o["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") != "keep":
                self.cluster.delete(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"], grace=grace)
        self.cluster.wait(f"the pods of {self.namespace}/{self.name} gone", lambda: not [p for p in self.cluster.pods if p.namespace == self.namespace], timeout)

    def test(self) -> None:
        _, objects = self.revisions[-1]
        self._hooks(objects, "test")

    def _deploy(self, values: dict, objects: list[Manifest], action: str) -> None:
        self.cluster.event(f"helm {action} {self.name}: revision {len(self.revisions) + 1}")
        self._hooks(objects, f"pre-{action}")
        plain = sorted((o for o in objects if not hook_of(o)[0]), key=kind_rank)
        previous = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in (self.revisions[-1][1] if self.revisions else []) if not hook_of(o)[0]}
        for obj in plain:
            self.cluster.apply(copy.deepcopy(obj), self.namespace)
        current = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in plain}
        for kind, ns, name in sorted(previous - current, key=lambda k: -ORDER.index(k[0]) if k[0] in ORDER else 0):
            old = self.cluster.get(kind, ns, name)
            if old and (old["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep":
                continue
            self.cluster.delete(kind, ns, name)
        self.revisions.append((copy.deepcopy(values), copy.deepcopy(objects)))
        self._hooks(objects, f"post-{action}")

    def _hooks(self, objects: list[Manifest], event: str) -> None:
        """As Helm's execHook: each hook created in order and waited for; on a failure its
        hook-failed policy applies and the rest are not run; hook-succeeded deletions come only
        once every hook of the event has succeeded (a ConfigMap hook outlives the Job after it)."""
        hooks = sorted((o for o in objects if event in hook_of(o)[0]), key=lambda o: (hook_of(o)[1], kind_rank(o), o["metadata"]["name"]))
        for obj in hooks:
            kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
            _, weight, policies = hook_of(obj)
            if "before-hook-creation" in policies and self.cluster.get(kind, ns, name) is not None:
                self.cluster.delete(kind, ns, name, wait=True)
            self.cluster.event(f"hook {event} {kind}/{name} (weight {weight})")
            self.cluster.apply(copy.deepcopy(obj), self.namespace)
            ok, why = True, ""
            if kind in ("Job", "Pod"):
                ok, why = self._wait_hook(kind, ns, name)
            if not ok:
                if "hook-failed" in policies:
                    self.cluster.delete(kind, ns, name, wait=True)
                raise HookFailed(f"{event} hook {kind}/{name} failed: {why}")
        for obj in hooks:
            if "hook-succeeded" in hook_of(obj)[2]:
                self.cluster.delete(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"], wait=True)

    def _wait_hook(self, kind: str, ns: str, name: str) -> tuple[bool, str]:
        w = self.cluster.workload(kind, ns, name)

        def finished() -> bool:
            if kind == "Job":
                return w.status is not None
            return bool(w.pods) and w.pods[0].phase in ("Succeeded", "Failed")

        self.cluster.wait(f"hook {kind}/{name}", finished, self.timeout)
        if kind == "Job":
            return w.status == "Complete", w.reason
        return w.pods[0].phase == "Succeeded", w.pods[0].reason

    def ready(self) -> bool:
        """`helm --wait`: every workload of the release ready (Jobs complete)."""
        _, objects = self.revisions[-1]
        for o in objects:
            if o["kind"] in ("Deployment", "StatefulSet") and not hook_of(o)[0]:
                w = self.cluster.workloads.get((o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]))
                if w is None or not w.ready():
                    return False
        return True
