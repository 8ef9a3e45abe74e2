"""The small harness the deploy checks share: named checks, one summary line each, a total; and
the helpers of the checks that run the binary (a free loopback port, a poll with a deadline, the
processes' stop). Standard library only: clients/secure/run_mesh.py uses it too."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Any, Callable


class Checks:
    """Runs named checks; each prints one line, `ok` with a detail or `FAIL` with the reason."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.passed = 0
        self.failed = 0
        self.failures: list[str] = []
        self.started = time.monotonic()

    def run(self, name: str, check: Callable[[], str | None], known_issue: str | None = None) -> None:
        """Runs `check`. With `known_issue` (why it may fail for a reason outside what it checks),
        a failure is printed as KNOWN with that reason and not counted; a pass counts as usual."""
        try:
            detail = check()
        except AssertionError as e:
            if known_issue:
                print(f"KNOWN {name}: {e} (not counted: {known_issue})")
                sys.stdout.flush()
                return
            self.failed += 1
            self.failures.append(f"{name}: {e}")
            print(f"FAIL  {name}: {e}")
        except Exception:  # a crash in a check is a failure too, with its traceback
            self.failed += 1
            self.failures.append(f"{name}: unexpected error")
            print(f"FAIL  {name}: unexpected error\n{traceback.format_exc()}")
        else:
            self.passed += 1
            print(f"ok    {name}" + (f" ({detail})" if detail else ""))
        sys.stdout.flush()

    def finish(self) -> int:
        print(f"{self.suite} checks took {time.monotonic() - self.started:.1f} s")
        # The plain closing line CI reads: "<word>: N passed, N failed".
        print(f"{self.suite}: {self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


# Every port free_port() has handed out in this process.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, below the kernel's ephemeral range, and not one
    handed out before in this process.

    The caller's server binds the port some time later. A port from `bind(("127.0.0.1", 0))`
    lies in the ephemeral range, which every outgoing connection draws its local port from
    too (a health check, a client, another step's process): one took such a port in between
    now and then, and a server failed to start with "Address already in use". Ports below
    the range are only ever taken by an explicit bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low = max(1024, ephemeral_low - 12000)
    while True:
        port = random.randrange(low, ephemeral_low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def stop(procs: list[subprocess.Popen], grace: float = 20) -> None:
    """SIGTERM to every process still running, then each gets `grace` seconds before SIGKILL."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()


def until(what: str, probe: Callable[[], Any], deadline: float, every: float = 0.5) -> Any:
    """Polls probe() every `every` seconds until it returns something truthy; fails at the deadline."""
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except Exception as e:  # not up yet
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
