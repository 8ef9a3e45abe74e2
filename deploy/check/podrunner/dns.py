"""Cluster DNS: Debian's dnsmasq on the bridge's address, answering from a hosts file the runner
rewrites (and signals with SIGHUP) whenever a Service's ready endpoints change: a ClusterIP name
to its Service IP, a headless name to the A records of its ready pods. Names under the cluster
domain that no Service has get NXDOMAIN; nothing is forwarded anywhere (no upstream)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path


class Dns:
    def __init__(self, state: Path, listen: str, domain: str) -> None:
        self.dir = state / "dns"
        self.dir.mkdir(mode=0o755)
        self.hosts = self.dir / "hosts"
        self.hosts.write_text("")
        os.chmod(self.hosts, 0o644)
        self.domain = domain
        self.listen = listen
        self._records: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self.log = open(self.dir / "dnsmasq.log", "w")
        self.proc = subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
             f"--addn-hosts={self.hosts}", f"--listen-address={listen}", "--bind-interfaces",
             "--except-interface=lo", f"--local=/{domain}/", "--local-ttl=0", "--neg-ttl=1",
             "--cache-size=0", f"--pid-file={self.dir / 'pid'}", "--log-facility=-"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not (self.dir / "pid").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not start: {(self.dir / 'dnsmasq.log').read_text()}")
            time.sleep(0.05)

    def set(self, name: str, ips: list[str]) -> None:
        """Points `name` (fully qualified, no trailing dot) at `ips`; none removes it."""
        with self._lock:
            if sorted(ips) == self._records.get(name, []):
                return
            if ips:
                self._records[name] = sorted(ips)
            else:
                self._records.pop(name, None)
            text = "".join(f"{ip} {n}\n" for n, addrs in sorted(self._records.items()) for ip in addrs)
            tmp = self.hosts.with_suffix(".new")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            tmp.replace(self.hosts)
            self.proc.send_signal(signal.SIGHUP)

    def resolv_conf(self, namespace: str) -> str:
        """A pod's /etc/resolv.conf, as the kubelet writes it for dnsPolicy ClusterFirst."""
        d = self.domain
        return f"nameserver {self.listen}\nsearch {namespace}.svc.{d} svc.{d} {d}\noptions ndots:5\n"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
