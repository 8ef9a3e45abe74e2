"""The pods' network: one bridge with a private /24, a network namespace per pod joined to it by
a veth pair, Service IPs as extra addresses on the bridge, and an nftables set on the bridge that
records every TCP connection opened between pods (for the NetworkPolicy evaluation).

Pods get no default route: the /24 on the bridge is all they can reach. Everything made here is
named after the run's id and removed by `close()`, which the runner calls on any exit."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import threading


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A 10.213.x.0/24 that no interface and no route of this machine uses."""
    used = sh("ip", "-4", "route", "show", "table", "all").stdout
    for i in range(250):
        net = ipaddress.ip_network(f"10.213.{(seed + i) % 250}.0/24")
        if str(net) not in used and f"10.213.{(seed + i) % 250}." not in used:
            return net
    raise RuntimeError("no free 10.213.x.0/24 subnet")


class Network:
    """The bridge, the pods' namespaces and addresses, the Service IPs."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.bridge = f"prb{run_id}"[:15]
        self.table = f"podrunner{run_id}"
        self.subnet = free_subnet(int(run_id, 16) if run_id.isalnum() else os.getpid())
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])  # the node: DNS, the Service proxies, the probes
        self._pod_ips = [str(h) for h in hosts[9:199]]
        self._service_ips = [str(h) for h in hosts[199:]]
        self._lock = threading.Lock()
        self._namespaces: dict[str, str] = {}  # netns name -> ip
        self._veths: dict[str, str] = {}  # netns name -> the veth end on the bridge
        self._counter = 0
        # A fixed address for the bridge: left to itself, a Linux bridge takes the lowest address
        # of its ports, so it changes whenever a pod's veth comes or goes. The pods would keep the
        # old address for the node (the Service proxies, DNS, the probes' replies) in their ARP
        # caches until it goes stale and fails: every connection to a Service stalls for seconds
        # (seen as a database that stops answering for 2-10 s during drains and upgrades).
        mac = "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
        sh("ip", "link", "add", self.bridge, "address", mac, "type", "bridge")
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        sh("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        # Every SYN between two pods on the bridge lands in the set `seen` (source, destination,
        # port): connections are recorded even when they last a millisecond.
        sh("nft", "-f", "-", input=f"""
table bridge {self.table} {{
  set seen {{ type ipv4_addr . ipv4_addr . inet_service; flags dynamic; size 65535; }}
  chain observe {{
    type filter hook forward priority 0; policy accept;
    ip saddr {self.subnet} ip daddr {self.subnet} tcp flags & (syn | ack) == syn add @seen {{ ip saddr . ip daddr . tcp dport }}
  }}
}}
""")

    def add_pod(self) -> tuple[str, str]:
        """A new network namespace with an address on the bridge: (netns name, ip)."""
        with self._lock:
            # Round robin, so an address is not handed to a new pod right after its last one went.
            taken = set(self._namespaces.values())
            self._counter += 1
            order = self._pod_ips[self._counter % len(self._pod_ips):] + self._pod_ips[: self._counter % len(self._pod_ips)]
            free = [ip for ip in order if ip not in taken]
            if not free:
                raise RuntimeError("the pod subnet is full")
            ip = free[0]
            ns = f"pr{self.run_id}-{self._counter}"
            self._namespaces[ns] = ip
        host_end = f"prv{self.run_id}{self._counter}"[:15]
        self._veths[ns] = host_end
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", host_end, "master", self.bridge, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return ns, ip

    def remove_pod(self, ns: str) -> None:
        # The bridge's end first: a namespace still referenced (a socket, a dying process)
        # outlives `ip netns del`, and its veth pair with it.
        if ns in self._veths:
            sh("ip", "link", "del", self._veths.pop(ns), check=False)
        sh("ip", "netns", "del", ns, check=False)
        with self._lock:
            self._namespaces.pop(ns, None)

    def service_ip(self) -> str:
        with self._lock:
            ip = self._service_ips.pop(0)
        sh("ip", "addr", "add", f"{ip}/32", "dev", self.bridge)
        return ip

    def seen(self) -> set[tuple[str, str, int]]:
        """Every (source ip, destination ip, destination port) of a TCP connection between pods."""
        out = json.loads(sh("nft", "-j", "list", "set", "bridge", self.table, "seen").stdout)
        found = set()
        for item in out["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                concat = elem["concat"] if isinstance(elem, dict) and "concat" in elem else elem.get("elem", {}).get("val", {}).get("concat")
                if concat:
                    found.add((concat[0], concat[1], int(concat[2])))
        return found

    def close(self) -> None:
        for ns in list(self._namespaces):
            self.remove_pod(ns)
        sh("nft", "delete", "table", "bridge", self.table, check=False)
        sh("ip", "link", "del", self.bridge, check=False)

