"""A pod, run as the kubelet runs it: its network namespace and volumes, init containers in order
(native sidecars: init containers with restartPolicy Always, started and left running), then the
containers; startup, liveness and readiness probes on their periods and thresholds; restarts per
restartPolicy with the kubelet's back-off (10 s doubling to 5 min, the first restart at once);
deletion with preStop, SIGTERM and SIGKILL at the end of terminationGracePeriodSeconds."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .container import ConfigError, Container
from .volumes import MountError, lay_out

if TYPE_CHECKING:
    from .cluster import Cluster

Manifest = dict[str, Any]
TICK = 0.25


class Pod:
    serial = 0

    def __init__(self, cluster: "Cluster", manifest: Manifest) -> None:
        self.cluster = cluster
        self.manifest = manifest
        self.name = manifest["metadata"]["name"]
        self.namespace = manifest["metadata"]["namespace"]
        self.labels = manifest["metadata"].get("labels", {})
        self.spec = manifest["spec"]
        Pod.serial += 1
        self.dir: Path = cluster.state / "pods" / f"{self.namespace}_{self.name}_{Pod.serial}"
        self.dir.mkdir(parents=True, mode=0o700)
        self.netns, self.ip = cluster.net.add_pod()
        self.phase = "Pending"  # Pending, Running, Succeeded, Failed
        self.reason = ""
        self.terminating = False
        self.deleted = threading.Event()
        self.created = time.monotonic()
        self.ready_since: float | None = None
        self.volumes: dict[str, Path] = {}
        self._tmpfs: list[Path] = []
        self.restart_policy = self.spec.get("restartPolicy", "Always")
        self.inits = [Container(self, c, "sidecar" if c.get("restartPolicy") == "Always" else "init") for c in self.spec.get("initContainers", [])]
        self.mains = [Container(self, c, "main") for c in self.spec.get("containers", [])]
        self._thread = threading.Thread(target=self._run, name=f"pod {self.name}", daemon=True)
        self._thread.start()

    def lookup(self, kind: str, name: str) -> Manifest | None:
        return self.cluster.get(kind, self.namespace, name)

    def all_containers(self) -> list[Manifest]:
        return self.spec.get("initContainers", []) + self.spec.get("containers", [])

    @property
    def ready(self) -> bool:
        return self.phase == "Running" and not self.terminating and all(c.ready for c in self.mains + [s for s in self.inits if s.kind == "sidecar"])

    def container(self, name: str) -> Container:
        return next(c for c in self.inits + self.mains if c.name == name)

    def log(self, text: str) -> None:
        self.cluster.event(f"pod {self.namespace}/{self.name}: {text}")

    # -- the kubelet's loop -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._setup()
            if self._inits() and not self.deleted.is_set():
                self._mains()
        except Exception as e:  # a bug in the runner, not the pod: say it loudly
            self.phase, self.reason = "Failed", f"podrunner error: {e!r}"
            self.log(self.reason)
        finally:
            self.cluster.changed()

    def _setup(self) -> None:
        while not self.deleted.is_set():
            try:
                self.volumes, self._tmpfs = lay_out(self.manifest, self.dir, self.cluster.pvc_dir, self.lookup, self.ip)
                return
            except MountError as e:
                if self.reason != f"FailedMount: {e}":
                    self.reason = f"FailedMount: {e}"
                    self.log(self.reason)
                shutil.rmtree(self.dir / "volumes", ignore_errors=True)
                self.deleted.wait(2)

    def _start(self, c: Container) -> bool:
        while not self.deleted.is_set():
            try:
                c.start()
                return True
            except (ConfigError, MountError) as e:
                if self.reason != f"CreateContainerConfigError: {e}":
                    self.reason = f"CreateContainerConfigError: {e}"
                    self.log(f"{c.name}: {self.reason}")
                self.deleted.wait(2)
        return False

    def _inits(self) -> bool:
        for c in self.inits:
            if c.kind == "sidecar":
                if not self._start(c):
                    return False
                continue
            while not self.deleted.is_set():
                if not self._start(c):
                    return False
                code = c.proc.wait()
                c.exit_code = code
                if code == 0 or self.deleted.is_set():
                    break
                self.reason = f"Init:{c.name} exited {code}"
                self.log(f"{self.reason}: {self._tail(c)}")
                if self.restart_policy == "Never":
                    self.phase = "Failed"
                    return False
                c.restarts += 1
                self.deleted.wait(self._backoff(c))
        return not self.deleted.is_set()

    def _mains(self) -> None:
        for c in self.mains:
            if not self._start(c):
                return
        self.phase = "Running"
        self.reason = ""
        self.cluster.changed()
        due: dict[tuple[str, str], float] = {}
        successes: dict[tuple[str, str], int] = {}
        failures: dict[tuple[str, str], int] = {}
        back_until: dict[str, float] = {}
        running = [c for c in self.inits if c.kind == "sidecar"] + self.mains
        while not self.deleted.is_set():
            now = time.monotonic()
            for c in running:
                if c.proc is None:
                    if now >= back_until.get(c.name, 0) and self._start(c):
                        for k in [k for k in due if k[0] == c.name]:
                            del due[k]
                    continue
                if not c.running():
                    if self.terminating:
                        continue  # stopping: nothing is restarted
                    c.exit_code = c.last_exit = c.proc.returncode
                    was_ready = c.ready
                    c.ready = False
                    if was_ready:
                        self.cluster.changed()
                    if self.deleted.is_set():
                        break
                    restart = self.restart_policy == "Always" or c.kind == "sidecar" or (self.restart_policy == "OnFailure" and c.exit_code != 0)
                    self.log(f"container {c.name} exited {c.exit_code}" + ("; restarting" if restart else "") + f": {self._tail(c)}")
                    if restart:
                        c.restarts += 1
                        c.proc = None
                        back_until[c.name] = now + self._backoff(c)
                    continue
                for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                    probe = c.spec.get(kind)
                    if probe is None or (kind != "startupProbe" and not c.started) or (kind == "startupProbe" and c.started):
                        continue
                    key = (c.name, kind)
                    if key not in due:
                        due[key] = now + probe.get("initialDelaySeconds", 0)
                    if now < due[key]:
                        continue
                    due[key] = now + probe.get("periodSeconds", 10)
                    ok = c.probe(probe)
                    if ok:
                        successes[key] = successes.get(key, 0) + 1
                        failures[key] = 0
                    else:
                        failures[key] = failures.get(key, 0) + 1
                        successes[key] = 0
                    if kind == "startupProbe" and ok:
                        c.started = True
                    elif kind == "readinessProbe":
                        if ok and successes[key] >= probe.get("successThreshold", 1) and not c.ready:
                            c.ready = True
                            self.cluster.changed()
                        elif not ok and failures[key] >= probe.get("failureThreshold", 3) and c.ready:
                            c.ready = False
                            self.log(f"container {c.name} not ready")
                            self.cluster.changed()
                    elif not ok and failures[key] >= probe.get("failureThreshold", 3):
                        self.log(f"container {c.name} failed its {kind}: killing it")
                        failures[key] = 0
                        self._stop(c, self.spec.get("terminationGracePeriodSeconds", 30))
                if c.started and "readinessProbe" not in c.spec and not c.ready:
                    c.ready = True
                    self.cluster.changed()
            if self.restart_policy != "Always" and all(c.proc is not None and not c.running() for c in self.mains):
                ok = all(c.exit_code == 0 for c in self.mains)
                for s in [s for s in self.inits if s.kind == "sidecar"]:
                    self._stop(s, self.spec.get("terminationGracePeriodSeconds", 30))
                if ok or self.restart_policy == "Never":
                    self.phase = "Succeeded" if ok else "Failed"
                    self.log(self.phase)
                    return
            self.deleted.wait(TICK)

    def _backoff(self, c: Container) -> float:
        return 0 if c.restarts <= 1 else min(300, 10 * 2 ** (c.restarts - 2))

    def _tail(self, c: Container) -> str:
        try:
            return " | ".join(c.log_path.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return ""

    # -- deletion ---------------------------------------------------------------------------

    def _stop(self, c: Container, grace: float) -> None:
        deadline = time.monotonic() + grace
        hook = (c.spec.get("lifecycle") or {}).get("preStop")
        if hook and c.running():
            try:
                if "exec" in hook:
                    subprocess.run(c.exec_argv(hook["exec"]["command"]), capture_output=True, timeout=max(1, grace))
                elif "sleep" in hook:
                    time.sleep(min(grace, hook["sleep"]["seconds"]))
                elif "httpGet" in hook:
                    c.probe({"httpGet": hook["httpGet"], "timeoutSeconds": max(1, int(grace))})
            except subprocess.TimeoutExpired:
                pass
        c.signal(signal.SIGTERM)
        while c.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if c.running():
            self.log(f"container {c.name} still running after its grace period: SIGKILL")
        c.kill()

    def delete(self, grace: float | None = None, wait: bool = True) -> None:
        """As `kubectl delete pod`: out of the endpoints at once, then preStop and SIGTERM to every
        container, SIGKILL after the grace period, then the sandbox is gone."""
        if self.terminating:
            if wait:
                self._thread.join()
            return
        self.terminating = True
        self.cluster.changed()
        grace = self.spec.get("terminationGracePeriodSeconds", 30) if grace is None else grace
        self.log(f"deleting (grace {grace}s)")

        def finish() -> None:
            threads = [threading.Thread(target=self._stop, args=(c, grace)) for c in self.mains + self.inits if c.running()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.deleted.set()
            self._thread.join()
            self.release()
            self.cluster.forget(self)

        if wait:
            finish()
        else:
            threading.Thread(target=finish, daemon=True).start()

    def kill_now(self) -> None:
        """The runner's own cleanup: no grace."""
        self.terminating = True
        self.deleted.set()
        for c in self.mains + self.inits:
            c.kill()
        self.release()

    def release(self) -> None:
        for c in self.mains + self.inits:
            c.kill()
        self.cluster.net.remove_pod(self.netns)
        for t in self._tmpfs:
            subprocess.run(["umount", "-l", str(t)], capture_output=True)
        self._tmpfs = []
        if self.cluster.logs is not None:
            self.cluster.logs.mkdir(parents=True, exist_ok=True)
            for log in self.dir.glob("*.log"):
                shutil.copy(log, self.cluster.logs / f"{self.dir.name}_{log.name}")
        shutil.rmtree(self.dir, ignore_errors=True)
