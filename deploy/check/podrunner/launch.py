"""One container's process, started the way a container runtime would start it: run as root by
the runner (`python3 launch.py spec.json`), it joins the pod's network namespace, makes its own
mount, PID, UTS and IPC namespaces, builds a root filesystem (an overlay of this machine's `/`
with the image's files, masks and binds on top, the volumes at their mountPaths, read-only when
`readOnlyRootFilesystem`), chroots into it and executes the command through `setpriv` with the
securityContext's user, groups, no_new_privs and capabilities.

This process stays as the container's shim: it forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to the
container's PID 1, writes that PID's host PID to spec["pidfile"] (for exec probes) and exits
with its status. Killing the shim kills the container (PR_SET_PDEATHSIG), and with PID 1 the
whole PID namespace."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x20000000, 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {done.stderr.strip()}")


def inside(root: str, path: str, make: str | None = None) -> str:
    """root + path with every symlink resolved inside root (never out of it); `make` = "dir" or
    "file" creates what is missing, as the kubelet creates a mountPath."""
    parts = [p for p in path.split("/") if p and p != "."]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks in {path}")
            link = os.readlink(candidate)
            parts = [p for p in link.split("/") if p] + parts
            current = root if link.startswith("/") else current
            continue
        if not os.path.exists(candidate) and make:
            if parts or make == "dir":
                os.makedirs(candidate, exist_ok=True)
            else:
                open(candidate, "a").close()
        current = candidate
    return current


def build_root(spec: dict) -> str:
    root, cdir = spec["rootfs"], spec["dir"]
    for d in ("upper", "work"):
        os.makedirs(os.path.join(cdir, d), exist_ok=True)
    os.makedirs(root, exist_ok=True)
    mount("-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={cdir}/upper,workdir={cdir}/work", root)
    mount("-t", "proc", "proc", os.path.join(root, "proc"))
    mount("--rbind", "/dev", os.path.join(root, "dev"))
    mount("--bind", "-o", "ro", "/sys", os.path.join(root, "sys"))
    # What is not part of the image (home directories, this machine's /tmp, the work trees) is hidden.
    for mask in spec["image"]["masks"]:
        target = inside(root, mask, "dir")
        mount("-t", "tmpfs", "-o", "mode=0755", "podrunner-mask", target)
    for path, (mode, uid, gid) in spec["image"]["dirs"].items():
        target = inside(root, path, "dir")
        os.chown(target, uid, gid)
        os.chmod(target, mode)
    for path, text in spec["image"]["files"].items():
        with open(inside(root, path, "file"), "w") as f:
            f.write(text)
    for target_path, source in spec["image"]["binds"].items():
        mount("--bind", "-o", "ro", source, inside(root, target_path, "file"))
    for m in spec["mounts"]:
        target = inside(root, m["target"], "dir" if os.path.isdir(m["source"]) else "file")
        mount("--bind", m["source"], target)
        if m["readOnly"]:
            mount("-o", "remount,bind,ro", target)
    if spec["readOnlyRoot"]:
        for mask in spec["image"]["masks"]:
            mount("-o", "remount,bind,ro", inside(root, mask))
        mount("-o", "remount,bind,ro", root)
    return root


def child(spec: dict, ready_fd: int) -> None:
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the shim's death is the container's
    mount("--make-rprivate", "/")
    root = build_root(spec)
    hostname = spec["hostname"].encode()
    check(libc.sethostname(hostname, len(hostname)), "sethostname")
    os.chroot(root)
    os.chdir(spec["workdir"])
    sec = spec["user"]
    argv = ["/usr/bin/setpriv", f"--reuid={sec['uid']}", f"--regid={sec['gid']}"]
    argv += [f"--groups={','.join(map(str, sec['groups']))}"] if sec["groups"] else ["--clear-groups"]
    if sec["noNewPrivs"]:
        argv.append("--no-new-privs")
    if sec["dropAll"]:
        argv += ["--inh-caps=-all", "--bounding-set=-all"]
    argv += ["--", *spec["argv"]]
    # The filesystem is in place: the shim may now say the container runs (exec probes,
    # `kubectl exec` need it). The descriptor closes on exec either way.
    os.write(ready_fd, b"1")
    os.execve(argv[0], argv, spec["env"])


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    fd = os.open(f"/run/netns/{spec['netns']}", os.O_RDONLY)
    check(libc.setns(fd, CLONE_NEWNET), "setns")
    os.close(fd)
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC), "unshare")
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        try:
            child(spec, ready_w)
        except BaseException as e:  # the container never started: say why, as a runtime would
            print(f"podrunner: cannot start container: {e}", file=sys.stderr, flush=True)
            os._exit(128)
    os.close(ready_w)
    started = os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    if started:
        with open(spec["pidfile"] + ".new", "w") as f:
            f.write(str(pid))
        os.replace(spec["pidfile"] + ".new", spec["pidfile"])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda s, _f: os.kill(pid, s))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main())
