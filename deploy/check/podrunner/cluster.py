"""The cluster the pods run in: the objects applied (by kind, namespace and name), the workloads'
controllers, Services (DNS records and ClusterIP proxies kept to the ready endpoints),
HorizontalPodAutoscaler bounds, PodDisruptionBudgets for drains, cert-manager's Certificates, and
the NetworkPolicy check of every connection seen. One thread ticks the controllers; `close()` (also
on SIGINT/SIGTERM, through the caller's `with`) removes every process, namespace, mount, the
bridge and the state directory."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from . import certmanager, netpol
from .dns import Dns
from .images import ImageMap
from .net import Network
from .pod import Pod
from .proxy import Proxies
from .workloads import KINDS, Deployment, Workload

Manifest = dict[str, Any]
Key = tuple[str, str, str]


class Cluster:
    def __init__(self, binary: Path, domain: str = "cluster.local", log: Callable[[str], None] | None = None,
                 shopmesh_repository: str = "shopmesh", logs: Path | None = None) -> None:
        self.binary = binary
        self.logs = logs  # where the containers' logs are copied, pod by pod, when a pod goes
        self.images = ImageMap(binary, shopmesh_repository)
        self.domain = domain
        self.started = time.monotonic()
        self._log = log or (lambda s: None)
        self.events: list[str] = []
        self.lock = threading.RLock()
        self.objects: dict[Key, Manifest] = {}
        self.workloads: dict[Key, Workload] = {}
        self.pods: list[Pod] = []
        self.by_ip: dict[str, Pod] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.service_ips: dict[tuple[str, str], str] = {}
        self.violations: list[str] = []
        self.connections: set[tuple[str, str, int]] = set()
        self._checked: set[tuple[str, str, int]] = set()
        self._queue: collections.deque[tuple[str, str, int]] = collections.deque()
        self._wake = threading.Event()
        self._pod_names: set[str] = set()  # the StatefulSet pods' own DNS names now served
        self._stop = threading.Event()
        run_id = f"{os.getpid() % 0xFFFF:x}"
        self.state = Path(tempfile.mkdtemp(prefix=f"podrunner-{run_id}-"))
        os.chmod(self.state, 0o711)
        (self.state / "pods").mkdir(mode=0o700)
        self.pvc_dir = self.state / "pvc"
        self.pvc_dir.mkdir(mode=0o700)
        self.net: Network | None = None
        self.dns: Dns | None = None
        self.proxies: Proxies | None = None
        try:
            self.net = Network(run_id)
            self.dns = Dns(self.state, self.net.gateway, domain)
            self.proxies = Proxies(self.observe)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._loop, name="controllers", daemon=True)
        self._thread.start()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def event(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {text}"
        self.events.append(line)
        self._log(line)

    # -- objects ----------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        return self.objects.get((kind, namespace, name))

    def list(self, kind: str, namespace: str | None = None) -> list[Manifest]:
        return [o for (k, ns, _), o in list(self.objects.items()) if k == kind and (namespace is None or ns == namespace)]

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.namespaces.setdefault(name, {}).update({**(labels or {}), "kubernetes.io/metadata.name": name})

    def apply(self, obj: Manifest, namespace: str) -> None:
        """kubectl apply: create the object, or replace what it says."""
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        kind, ns, name = obj["kind"], meta["namespace"], meta["name"]
        self.namespace(ns)
        with self.lock:
            key = (kind, ns, name)
            self.objects[key] = obj
            if kind in KINDS:
                if key in self.workloads and kind != "Pod":
                    self.workloads[key].update(obj)
                else:
                    self.workloads[key] = KINDS[kind](self, obj)
            elif kind == "Service":
                self._service(obj)
            elif kind == "HorizontalPodAutoscaler":
                target = self.workloads.get(("Deployment", ns, obj["spec"]["scaleTargetRef"]["name"]))
                if isinstance(target, Deployment) and "replicas" not in target.manifest["spec"]:
                    target.replicas = max(target.replicas, obj["spec"].get("minReplicas", 1))
        self.changed()

    def delete(self, kind: str, namespace: str, name: str, wait: bool = False, grace: float | None = None) -> None:
        """kubectl delete [--grace-period]: a workload's pods go with it."""
        with self.lock:
            key = (kind, namespace, name)
            self.objects.pop(key, None)
            workload = self.workloads.pop(key, None)
        if workload:
            pods = list(workload.pods)
            for p in pods:
                p.delete(grace=grace, wait=False)
            if wait:
                for p in pods:
                    p.deleted.wait(120)
        self.changed()

    def _service(self, svc: Manifest) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        if svc["spec"].get("clusterIP") == "None" or (ns, name) in self.service_ips:
            return
        ip = self.net.service_ip()
        self.service_ips[(ns, name)] = ip
        for port in svc["spec"].get("ports", []):
            self.proxies.listen(ip, port["port"], lambda client, ns=ns, name=name, port=port: self._route(ns, name, port))

    def _route(self, ns: str, name: str, port: Manifest) -> list[tuple[str, int]]:
        svc = self.get("Service", ns, name)
        if svc is None:
            return []
        target = port.get("targetPort", port["port"])
        out = []
        for p in self.endpoints(svc):
            try:
                out.append((p.ip, p.mains[0].port(target)))
            except ValueError:
                continue
        return out

    def endpoints(self, svc: Manifest) -> list[Pod]:
        ns = svc["metadata"]["namespace"]
        selector = svc["spec"].get("selector")
        if not selector:
            return []
        any_state = svc["spec"].get("publishNotReadyAddresses")
        return [p for p in list(self.pods) if p.namespace == ns and not p.terminating and (p.ready or (any_state and p.phase == "Running"))
                and netpol.matches({"matchLabels": selector}, p.labels)]

    # -- pods -------------------------------------------------------------------------------

    def start_pod(self, manifest: Manifest, owner: Workload | None) -> Pod:
        pod = Pod(self, manifest)
        with self.lock:
            self.pods.append(pod)
            self.by_ip[pod.ip] = pod
        self.event(f"pod {pod.namespace}/{pod.name} scheduled at {pod.ip}")
        return pod

    def forget(self, pod: Pod) -> None:
        with self.lock:
            if pod in self.pods:
                self.pods.remove(pod)
        self.event(f"pod {pod.namespace}/{pod.name} gone")
        self.changed()

    def changed(self) -> None:
        self._wake.set()

    def workload(self, kind: str, namespace: str, name: str) -> Workload:
        return self.workloads[(kind, namespace, name)]

    def scale(self, namespace: str, deployment: str, replicas: int) -> int:
        """What the HPA does: the Deployment's replicas, within the HPA's bounds if there is one."""
        hpa = self.get("HorizontalPodAutoscaler", namespace, deployment)
        if hpa:
            replicas = max(hpa["spec"].get("minReplicas", 1), min(hpa["spec"]["maxReplicas"], replicas))
        w = self.workload("Deployment", namespace, deployment)
        assert isinstance(w, Deployment)
        w.replicas = replicas
        self.changed()
        return replicas

    # -- the controller loop ----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                with self.lock:
                    for w in list(self.workloads.values()):
                        w.tick()
                    certmanager.reconcile(self)
                    self._dns()
                self._check_seen()
            except Exception as e:  # keep reconciling; the failure shows in the events
                self.event(f"controller error: {e!r}")

    def _dns(self) -> None:
        pod_names: dict[str, list[str]] = {}
        for svc in self.list("Service"):
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            fqdn = f"{name}.{ns}.svc.{self.domain}"
            if svc["spec"].get("clusterIP") == "None":
                endpoints = self.endpoints(svc)
                self.dns.set(fqdn, [p.ip for p in endpoints])
                # A pod whose hostname and subdomain name this Service (a StatefulSet's, under
                # its serviceName) also gets <hostname>.<service>.<ns>.svc.<domain>: how
                # clustered servers (NATS routes) find each other.
                for p in endpoints:
                    spec = p.manifest.get("spec", {})
                    if spec.get("subdomain") == name and spec.get("hostname"):
                        pod_names[f"{spec['hostname']}.{fqdn}"] = [p.ip]
            else:
                self.dns.set(fqdn, [self.service_ips[(ns, name)]])
        for gone in self._pod_names - pod_names.keys():
            self.dns.set(gone, [])
        for fqdn, ips in pod_names.items():
            self.dns.set(fqdn, ips)
        self._pod_names = set(pod_names)

    # -- NetworkPolicies --------------------------------------------------------------------

    def observe(self, src_ip: str, dst_ip: str, port: int) -> None:
        """A connection seen (called by the Service proxies' event loop, which must never wait
        for the controllers' lock: it is queued and checked by the controller loop)."""
        self._queue.append((src_ip, dst_ip, port))
        self._wake.set()

    def _check(self, key: tuple[str, str, int]) -> None:
        src_ip, dst_ip, port = key
        with self.lock:
            if key in self._checked:
                return
            self._checked.add(key)
            src, dst = self.by_ip.get(src_ip), self.by_ip.get(dst_ip)
            why = netpol.allowed(self.list("NetworkPolicy"), src, src_ip, dst, dst_ip, port, self.namespaces)
            self.connections.add(key)
        if why:
            self.violations.append(why)
            self.event(f"NetworkPolicy violation: {why}")

    def _check_seen(self) -> None:
        """Checks what the proxies queued and what the bridge's nftables set recorded."""
        while self._queue:
            self._check(self._queue.popleft())
        services = set(self.service_ips.values())
        for key in self.net.seen() - self._checked:
            # A Service IP is the proxy's (kube-proxy's DNAT): the proxy reported the connection
            # to the endpoint it chose, which is what the policies apply to.
            if key[1] not in services:
                self._check(key)

    # -- waiting ----------------------------------------------------------------------------

    def wait(self, what: str, done: Callable[[], Any], timeout: float) -> float:
        """Seconds until done() is true; fails with the pods' state at the deadline."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if done():
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; pods: {self.describe()}")

    def describe(self) -> str:
        """Each pod's state; a pod not ready also shows its containers' last warning or error."""
        return "; ".join(f"{p.name} {p.phase}{' ready' if p.ready else ''}{' terminating' if p.terminating else ''}"
                         f"{' (' + p.reason + ')' if p.reason else ''} restarts={sum(c.restarts for c in p.mains)}"
                         f"{'' if p.ready or p.phase == 'Succeeded' else _last_complaint(p)}" for p in list(self.pods))

    # -- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(10)
        for p in list(self.pods):
            try:
                p.kill_now()
            except Exception:
                pass
        if self.proxies:
            self.proxies.close()
        if self.dns:
            self.dns.close()
        if self.net:
            self.net.close()
        # Anything a pod mounted on this machine's side (tmpfs emptyDirs), then the files.
        mounts = [l.split()[1] for l in Path("/proc/self/mounts").read_text().splitlines() if l.split()[1].startswith(str(self.state))]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.state, ignore_errors=True)


def _last_complaint(pod: Pod) -> str:
    for c in pod.mains:
        try:
            lines = c.log_path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines[-50:]):
            if '"WARN"' in line or '"ERROR"' in line or "error" in line.lower():
                return f" [{c.name}: {line.strip()[:240]}]"
    return ""
