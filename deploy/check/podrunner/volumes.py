"""A pod's volumes laid out on this machine as the kubelet lays them out on a node.

Secret, ConfigMap, downward API and projected volumes are written the way the kubelet's atomic
writer does (`..data` -> a timestamped directory, one symlink per file), owned by root with
`defaultMode` or `items[].mode` (0644 when neither says), and with `fsGroup`: group fsGroup and
group read added (what SetVolumeOwnership does to these read-only volumes). emptyDir is a 0777
directory (a tmpfs with `medium: Memory`), PVCs are directories of the runner kept across pod
restarts and releases; both get fsGroup as group, group rw and setgid directories."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

Manifest = dict[str, Any]
Lookup = Callable[[str, str], Manifest | None]  # (kind, name) in the pod's namespace


class MountError(Exception):
    """What the kubelet would report as FailedMount: the pod waits in ContainerCreating."""


def _files_of(source: Manifest, kind: str, lookup: Lookup, pod: Manifest, pod_ip: str) -> dict[str, tuple[bytes, int | None]]:
    """path -> (content, mode or None) of one secret/configMap/downwardAPI source."""
    out: dict[str, tuple[bytes, int | None]] = {}
    if kind == "downwardAPI":
        for item in source.get("items", []):
            out[item["path"]] = (field_value(pod, item["fieldRef"]["fieldPath"], pod_ip).encode() if "fieldRef" in item else b"",
                                 item.get("mode"))
        return out
    name = source.get("secretName") if kind == "secret" else source.get("name")
    obj = lookup("Secret" if kind == "secret" else "ConfigMap", name)
    if obj is None:
        if source.get("optional"):
            return out
        raise MountError(f"{kind} {name!r} not found")
    data: dict[str, bytes] = {}
    if kind == "secret":
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
    else:
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    items = source.get("items")
    if items is None:
        return {k: (v, None) for k, v in data.items()}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise MountError(f"{kind} {name!r} has no key {item['key']!r}")
        out[item["path"]] = (data[item["key"]], item.get("mode"))
    return out


def field_value(pod: Manifest, path: str, pod_ip: str) -> str:
    meta = pod["metadata"]
    if path == "metadata.name":
        return meta["name"]
    if path == "metadata.namespace":
        return meta["namespace"]
    if path == "metadata.uid":
        return meta.get("uid", "")
    if path in ("status.podIP", "status.podIPs"):
        return pod_ip
    if path == "status.hostIP":
        return pod_ip.rsplit(".", 1)[0] + ".1"
    if path == "spec.nodeName":
        return "podrunner"
    if path == "spec.serviceAccountName":
        return pod["spec"].get("serviceAccountName", "default")
    for what in ("labels", "annotations"):
        if path == f"metadata.{what}":
            return "\n".join(f'{k}="{v}"' for k, v in sorted(meta.get(what, {}).items()))
        if path.startswith(f"metadata.{what}['"):
            return meta.get(what, {}).get(path[len(f"metadata.{what}['"):-2], "")
    raise MountError(f"fieldRef {path!r} is not emulated")


def _atomic_write(target: Path, files: dict[str, tuple[bytes, int | None]], default_mode: int, fs_group: int | None) -> None:
    stamp = target / time.strftime("..%Y_%m_%d_%H_%M_%S.podrunner")
    stamp.mkdir(mode=0o755)
    for rel, (content, mode) in files.items():
        path = stamp / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_bytes(content)
        mode = default_mode if mode is None else mode
        if fs_group is not None:
            os.chown(path, 0, fs_group)
            mode |= 0o440
        os.chmod(path, mode)
    (target / "..data").symlink_to(stamp.name)
    for top in {rel.split("/")[0] for rel in files}:
        (target / top).symlink_to(f"..data/{top}")
    if fs_group is not None:
        for d in [target, stamp, *[p for p in stamp.rglob("*") if p.is_dir()]]:
            os.chown(d, 0, fs_group)
            os.chmod(d, 0o2755 if d != target else 0o3777)


def lay_out(pod: Manifest, pod_dir: Path, pvc_dir: Path, lookup: Lookup, pod_ip: str) -> tuple[dict[str, Path], list[Path]]:
    """Writes every volume of `pod` under pod_dir/volumes; returns name -> path and the tmpfs mounts made."""
    spec = pod["spec"]
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    root = pod_dir / "volumes"
    root.mkdir(mode=0o755, exist_ok=True)
    paths: dict[str, Path] = {}
    mounts: list[Path] = []
    for vol in spec.get("volumes", []):
        name = vol["name"]
        target = root / name
        if "persistentVolumeClaim" in vol:
            # PVCs are namespaced: the same claim name in another namespace is another volume.
            target = pvc_dir / pod["metadata"]["namespace"] / vol["persistentVolumeClaim"]["claimName"]
            target.parent.mkdir(mode=0o700, exist_ok=True)
            target.mkdir(mode=0o755, exist_ok=True)
            if fs_group is not None:
                _own_tree(target, fs_group)
            paths[name] = target
            continue
        target.mkdir(mode=0o755)
        paths[name] = target
        if "emptyDir" in vol:
            ed = vol["emptyDir"] or {}
            if ed.get("medium") == "Memory":
                size = ed.get("sizeLimit")
                opts = "mode=0777" + (f",size={_bytes(size)}" if size else "")
                subprocess.run(["mount", "-t", "tmpfs", "-o", opts, f"podrunner-{name}", str(target)], check=True)
                mounts.append(target)
            os.chmod(target, 0o777)
            if fs_group is not None:
                os.chown(target, 0, fs_group)
                os.chmod(target, 0o2777)
            continue
        for kind in ("secret", "configMap", "downwardAPI"):
            if kind in vol:
                src = vol[kind] or {}
                _atomic_write(target, _files_of(src, kind, lookup, pod, pod_ip), src.get("defaultMode", 0o644), fs_group)
                break
        else:
            if "projected" in vol:
                files: dict[str, tuple[bytes, int | None]] = {}
                for source in vol["projected"].get("sources", []):
                    for kind in ("secret", "configMap", "downwardAPI"):
                        if kind in source:
                            src = dict(source[kind])
                            if kind == "secret":
                                src["secretName"] = src.get("name")
                            files.update(_files_of(src, kind, lookup, pod, pod_ip))
                    if "serviceAccountToken" in source:
                        # No API server: an unsigned placeholder, so paths exist.
                        files[source["serviceAccountToken"]["path"]] = (b"podrunner-has-no-api-server", None)
                _atomic_write(target, files, vol["projected"].get("defaultMode", 0o644), fs_group)
            else:
                raise MountError(f"volume {name}: type {sorted(set(vol) - {'name'})} is not emulated")
    return paths, mounts


def _own_tree(target: Path, gid: int) -> None:
    """fsGroupChangePolicy Always: group gid, group rw, setgid directories, recursively."""
    for dirpath, dirnames, filenames in os.walk(target):
        for p in [dirpath, *[os.path.join(dirpath, f) for f in filenames]]:
            st = os.lstat(p)
            if os.path.islink(p):
                continue
            os.chown(p, st.st_uid, gid)
            mode = st.st_mode & 0o7777
            os.chmod(p, (mode | 0o2070) if os.path.isdir(p) else (mode | 0o060))


def _bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1000, "M": 1000**2, "G": 1000**3}
    for suffix, factor in units.items():
        if str(quantity).endswith(suffix):
            return int(float(str(quantity)[: -len(suffix)]) * factor)
    return int(quantity)
