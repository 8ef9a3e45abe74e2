"""A container of a pod: its environment, command line and securityContext resolved as the kubelet
resolves them, its process (launch.py, in the pod's namespaces) and its probes."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .images import Image
from .volumes import MountError, field_value

if TYPE_CHECKING:
    from .pod import Pod

LAUNCH = Path(__file__).resolve().parent / "launch.py"
Manifest = dict[str, Any]


class ConfigError(Exception):
    """CreateContainerConfigError: a referenced Secret or ConfigMap key is missing."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: $$ escapes, unknown names stay as written."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


class Container:
    def __init__(self, pod: "Pod", spec: Manifest, kind: str) -> None:
        self.pod = pod
        self.spec = spec
        self.name = spec["name"]
        self.kind = kind  # "init", "sidecar" (an init container with restartPolicy Always) or "main"
        self.image: Image = pod.cluster.images[spec["image"]]
        self.dir = pod.dir / "containers" / self.name
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.started = False  # startupProbe passed
        self.ready = False
        self.exit_code: int | None = None
        self.last_exit: int | None = None  # of the previous run, kept across a restart
        self.log_path = pod.dir / f"{self.name}.log"

    # -- what the kubelet resolves ----------------------------------------------------------

    def env(self) -> dict[str, str]:
        lookup = self.pod.lookup
        out = dict(self.image.env)
        for source in self.spec.get("envFrom", []):
            prefix = source.get("prefix", "")
            ref = source.get("secretRef") or source.get("configMapRef")
            kind = "Secret" if "secretRef" in source else "ConfigMap"
            obj = lookup(kind, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f"{kind} {ref['name']!r} not found")
            data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()} if kind == "Secret" else dict(obj.get("data") or {})
            out.update({prefix + k: v for k, v in data.items()})
        for e in self.spec.get("env", []):
            if "valueFrom" not in e:
                out[e["name"]] = expand(str(e.get("value", "")), out)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                out[e["name"]] = field_value(self.pod.manifest, vf["fieldRef"]["fieldPath"], self.pod.ip)
            elif "resourceFieldRef" in vf:
                out[e["name"]] = "1"
            else:
                kind = "Secret" if "secretKeyRef" in vf else "ConfigMap"
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                obj = lookup(kind, ref["name"])
                data = (obj or {}).get("data") or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f"{kind} {ref['name']!r} key {ref['key']!r} not found")
                out[e["name"]] = base64.b64decode(data[ref["key"]]).decode() if kind == "Secret" else data[ref["key"]]
        out.setdefault("HOSTNAME", self.pod.name)
        out.setdefault("HOME", "/home/nonroot" if self.image.uid == 65532 else "/root")
        return out

    def argv(self, env: dict[str, str]) -> list[str]:
        if "command" in self.spec:
            argv = list(self.spec["command"]) + list(self.spec.get("args", []))
        elif "args" in self.spec:
            argv = self.image.entrypoint + list(self.spec["args"])
        else:
            argv = self.image.entrypoint + self.image.cmd
        return [expand(str(a), env) for a in argv]

    def security(self) -> dict:
        psc = self.pod.spec.get("securityContext") or {}
        sc = self.spec.get("securityContext") or {}
        uid = sc.get("runAsUser", psc.get("runAsUser", self.image.uid))
        gid = sc.get("runAsGroup", psc.get("runAsGroup", self.image.gid if "runAsUser" not in sc and "runAsUser" not in psc else 0))
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) and uid == 0:
            raise ConfigError("container has runAsNonRoot and image will run as root")
        groups = [g for g in [psc.get("fsGroup"), *psc.get("supplementalGroups", [])] if g is not None]
        return {"uid": uid, "gid": gid, "groups": sorted(set(groups)),
                "noNewPrivs": sc.get("allowPrivilegeEscalation") is False,
                "dropAll": "ALL" in (sc.get("capabilities") or {}).get("drop", [])}

    # -- the process ------------------------------------------------------------------------

    def start(self) -> None:
        env = self.env()
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in ("upper", "work", "rootfs"):  # a restarted container starts from the image again
            subprocess.run(["rm", "-rf", str(self.dir / stale)], check=False)
        mounts = []
        for vm in self.spec.get("volumeMounts", []):
            if vm["name"] not in self.pod.volumes:
                raise MountError(f"volumeMount {vm['name']!r} names no volume")
            source = self.pod.volumes[vm["name"]]
            if vm.get("subPath"):
                source = source / vm["subPath"]
                if not source.exists():  # the kubelet creates a missing subPath as a directory
                    source.mkdir()
            mounts.append({"source": str(source), "target": vm["mountPath"], "readOnly": bool(vm.get("readOnly"))})
        sc = self.spec.get("securityContext") or {}
        image = self.image
        files = dict(image.files)
        files["/etc/resolv.conf"] = self.pod.cluster.dns.resolv_conf(self.pod.namespace)
        files["/etc/hosts"] = f"127.0.0.1 localhost\n{self.pod.ip} {self.pod.name}\n"
        files["/etc/hostname"] = self.pod.name + "\n"
        spec = {
            "netns": self.pod.netns, "dir": str(self.dir), "rootfs": str(self.dir / "rootfs"),
            "pidfile": str(self.dir / "pid"), "hostname": self.pod.name[:63],
            "image": {"masks": image.masks, "dirs": {k: list(v) for k, v in image.dirs.items()}, "files": files, "binds": image.binds},
            "mounts": mounts, "readOnlyRoot": bool(sc.get("readOnlyRootFilesystem")),
            "workdir": self.spec.get("workingDir", image.workdir), "user": self.security(),
            "argv": self.argv(env), "env": env,
        }
        (self.dir / "spec.json").write_text(json.dumps(spec))
        os.chmod(self.dir / "spec.json", 0o600)
        (self.dir / "pid").unlink(missing_ok=True)
        log = open(self.log_path, "a")
        log.write(f"--- podrunner: start {self.name} (restart {self.restarts}) as {spec['user']['uid']}:{spec['user']['gid']}: {' '.join(spec['argv'])}\n")
        log.flush()
        self.proc = subprocess.Popen([sys.executable, str(LAUNCH), str(self.dir / "spec.json")], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        # Running once the process is exec'd in its filesystem (the shim writes the pid file then).
        deadline = time.monotonic() + 30
        while not (self.dir / "pid").exists() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        self.started = "startupProbe" not in self.spec
        self.ready = False
        self.exit_code = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def host_pid(self) -> int | None:
        try:
            return int((self.dir / "pid").read_text())
        except (OSError, ValueError):
            return None

    def exec_argv(self, command: list[str]) -> list[str]:
        """`kubectl exec`: the command in this container's namespaces, root and user."""
        pid = self.host_pid()
        sec = self.security()
        groups = [f"--groups={','.join(map(str, sec['groups']))}"] if sec["groups"] else ["--clear-groups"]
        return ["nsenter", "-t", str(pid), "-n", "-m", "-p", "-u", "-i", "-r", "-w", "/usr/bin/setpriv", f"--reuid={sec['uid']}",
                f"--regid={sec['gid']}", *groups, "--no-new-privs", "--", "/usr/bin/env", "-i",
                *[f"{k}={v}" for k, v in self.env().items()], *command]

    # -- probes -----------------------------------------------------------------------------

    def probe(self, probe: Manifest) -> bool:
        """One probe, as the kubelet runs it: from the node, against the pod's IP."""
        timeout = probe.get("timeoutSeconds", 1)
        try:
            if "grpc" in probe:
                g = probe["grpc"]
                done = subprocess.run([str(self.pod.cluster.binary), "healthcheck", f"{self.pod.ip}:{g['port']}", g.get("service", ""),
                                       f"--timeout={timeout}s"], capture_output=True, timeout=timeout + 5)
                return done.returncode == 0
            if "tcpSocket" in probe:
                with socket.create_connection((self.pod.ip, self.port(probe["tcpSocket"]["port"])), timeout=timeout):
                    return True
            if "exec" in probe:
                if self.host_pid() is None:
                    return False
                done = subprocess.run(self.exec_argv(probe["exec"]["command"]), capture_output=True, timeout=timeout + 1)
                return done.returncode == 0
            if "httpGet" in probe:
                h = probe["httpGet"]
                url = f"{h.get('scheme', 'HTTP').lower()}://{self.pod.ip}:{self.port(h['port'])}{h.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    return 200 <= r.status < 400
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return False
        raise ConfigError(f"probe {probe} is not emulated")

    def port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for c in self.pod.all_containers():
            for p in c.get("ports", []):
                if p.get("name") == port:
                    return p["containerPort"]
        raise ValueError(f"no container port named {port}")
