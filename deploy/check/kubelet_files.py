"""Who may read the files a rendered pod hands its containers, as the kubelet lays them out.

The kubelet writes Secret, ConfigMap and projected files owned by root, with `items[].mode` or
`defaultMode` (0644 when unset); with a pod `fsGroup` it gives them that group and adds group
read (mode | 0440). An emptyDir is a world-writable directory (setgid to fsGroup when set); a file
a container writes there is its process's, with the mode the process chose. Each process runs as
the container's runAsUser/runAsGroup (else the pod's), with fsGroup and supplementalGroups as
supplementary groups. check_chart.py asks this model whether every file a container is told
about (an absolute path in its env or args, below one of its mounts) can be read by it, and
whether a private key can be read by anybody else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]
# What `shopmesh issue-certificate` writes (src/mesh/security/certificates.rs): the key owner-only.
ISSUED_MODES = {"tls.key": 0o600, "tls.crt": 0o644, "ca.crt": 0o644}


@dataclass(frozen=True)
class File:
    path: str
    uid: Any
    gid: Any
    mode: int

    def __str__(self) -> str:
        return f"{self.path} {self.uid}:{self.gid} {self.mode:04o}"


@dataclass(frozen=True)
class Process:
    container: str
    uid: Any
    gid: Any
    groups: frozenset

    def can_read(self, f: File) -> bool:
        if self.uid is not None and self.uid == f.uid:
            return bool(f.mode & 0o400)
        if f.gid in self.groups or f.gid == self.gid:
            return bool(f.mode & 0o040)
        return bool(f.mode & 0o004)


# Where neither runAsUser nor fsGroup is set, the platform assigns both (OpenShift's restricted
# SCC: a uid and an fsGroup from the namespace's range); these stand for them.
ASSIGNED_UID, ASSIGNED_FS_GROUP = "<assigned uid>", "<assigned fsGroup>"


def fs_group_of(pod: Manifest) -> Any:
    psc = pod.get("securityContext", {})
    if psc.get("fsGroup") is None and psc.get("runAsUser") is None:
        return ASSIGNED_FS_GROUP
    return psc.get("fsGroup")


def process_of(pod: Manifest, container: Manifest) -> Process:
    psc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    uid = sc.get("runAsUser", psc.get("runAsUser"))
    gid = sc.get("runAsGroup", psc.get("runAsGroup"))
    groups = set(psc.get("supplementalGroups", []))
    if uid is None and psc.get("fsGroup") is None:
        uid = ASSIGNED_UID
    if fs_group_of(pod) is not None:
        groups.add(fs_group_of(pod))
    if gid is not None:
        groups.add(gid)
    return Process(container["name"], uid, gid, frozenset(groups))


def told_paths(container: Manifest) -> list[str]:
    """Absolute paths in a container's env values and args (`--flag=/x` or `/x`)."""
    out = []
    for e in container.get("env", []):
        v = e.get("value")
        if isinstance(v, str) and v.startswith("/"):
            out.append(v)
    for a in container.get("args", []) + container.get("command", []):
        m = re.fullmatch(r"(?:--[a-z-]+=)?(/[^\s]*)", str(a))
        if m:
            out.append(m.group(1))
    return out


def mount_of(container: Manifest, path: str) -> Manifest | None:
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best["mountPath"])):
            best = m
    return best


def projected_mode(source: Manifest, key: str, default: int) -> int | None:
    """The mode of `key` in a Secret/ConfigMap source; None when `items` leave it out."""
    items = source.get("items")
    if items is None:
        return default
    for item in items:
        if item["path"] == key:
            return item.get("mode", default)
    return None


def laid_out(pod: Manifest, volume: Manifest, key: str, writer: Process | None) -> File | None:
    """The file `key` of `volume` as the kubelet (or, for an emptyDir, its writer) lays it."""
    fs_group = fs_group_of(pod)
    for kind in ("secret", "configMap"):
        if kind in volume:
            mode = projected_mode(volume[kind], key, volume[kind].get("defaultMode", 0o644))
            if mode is None:
                return None
            if fs_group is not None:
                return File(key, 0, fs_group, mode | 0o440)
            return File(key, 0, 0, mode)
    if "emptyDir" in volume and writer is not None:
        gid = fs_group if fs_group is not None else (writer.gid or 0)
        return File(key, writer.uid or 0, gid, ISSUED_MODES.get(key, 0o644))
    return None


def access(pod: Manifest) -> list[str]:
    """Every file the pod's containers are told about, with who reads it; fails on one they cannot
    read, on a private key others may read, and on a key volume mounted where it is not used."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    containers = pod.get("initContainers", []) + pod["containers"]
    # Who writes into which emptyDir: a container told `--out=<dir>` of a writable mount.
    writers: dict[str, Process] = {}
    for c in containers:
        for a in c.get("args", []):
            if str(a).startswith("--out="):
                m = mount_of(c, a.removeprefix("--out="))
                assert m and not m.get("readOnly"), f"{c['name']}: writes {a} outside a writable mount"
                writers[m["name"]] = process_of(pod, c)
    seen = []
    for c in containers:
        proc = process_of(pod, c)
        for path in told_paths(c):
            m = mount_of(c, path)
            volume = volumes.get(m["name"]) if m else None
            if volume is None:
                continue  # not below a mount, or on a claim (a directory the process owns)
            rel = path[len(m["mountPath"].rstrip("/")) + 1:]
            if not rel or ("emptyDir" in volume and m["name"] in writers and writers[m["name"]].container == c["name"]):
                continue  # a directory, or what the container writes itself
            f = laid_out(pod, volume, rel, writers.get(m["name"]))
            if f is None:
                continue
            f = File(path, f.uid, f.gid, f.mode)
            assert proc.can_read(f), f"{c['name']} (uid {proc.uid}, groups {sorted(proc.groups)}) cannot read {f}"
            if rel.endswith(".key"):
                assert f.mode & 0o007 == 0, f"{c['name']}: private key {f} is readable by any user"
                others = [o["name"] for o in containers if o is not c and any(x["name"] == m["name"] for x in o.get("volumeMounts", []))
                          and m["name"] not in writers]
                assert not others, f"{f.path}: also mounted into {others}, which do not read it"
            seen.append(f"{c['name']} reads {f}")
    return seen
