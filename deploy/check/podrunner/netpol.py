"""NetworkPolicy evaluated, not enforced: given a connection (source pod or address, destination
pod, port), whether the rendered policies would let it through, with the reason when they would
not. Semantics of networking.k8s.io/v1: a pod selected by a policy of a direction is isolated in
that direction and admits only what one of those policies' rules allows; podSelector,
namespaceSelector (namespaces carry kubernetes.io/metadata.name), both together, ipBlock with
except; ports by number, name (the destination's containerPort) and endPort."""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Protocol

Manifest = dict[str, Any]


class PodLike(Protocol):
    name: str
    namespace: str
    labels: dict[str, str]
    ip: str

    def all_containers(self) -> list[Manifest]: ...


def matches(selector: Manifest | None, labels: dict[str, str]) -> bool:
    """A LabelSelector; an empty one selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        has, value = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and value not in e["values"]) or (op == "NotIn" and has and value in e["values"]) \
                or (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


def _peer_ok(peer: Manifest, policy_ns: str, other: PodLike | None, other_ip: str, namespaces: dict[str, dict[str, str]]) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(other_ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(ip in ipaddress.ip_network(x) for x in block.get("except", []))
    if other is None:  # not a pod: only ipBlock peers name it
        return False
    if "namespaceSelector" in peer:
        ns_labels = {**namespaces.get(other.namespace, {}), "kubernetes.io/metadata.name": other.namespace}
        if not matches(peer["namespaceSelector"], ns_labels):
            return False
    elif other.namespace != policy_ns:
        return False
    return "podSelector" not in peer or matches(peer["podSelector"], other.labels)


def _port_ok(ports: list[Manifest] | None, port: int, dest: PodLike | None) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != "TCP":
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str) and not want.isdigit():
            named = [cp["containerPort"] for c in (dest.all_containers() if dest else []) for cp in c.get("ports", []) if cp.get("name") == want]
            if port in named:
                return True
            continue
        if int(want) <= port <= int(p.get("endPort", want)):
            return True
    return False


def allowed(policies: Iterable[Manifest], src: PodLike | None, src_ip: str, dst: PodLike | None, dst_ip: str, port: int,
            namespaces: dict[str, dict[str, str]]) -> str | None:
    """None when allowed; else why not."""
    policies = list(policies)
    if src is not None:
        egress = [p for p in policies if p["metadata"]["namespace"] == src.namespace and "Egress" in _types(p) and matches(p["spec"].get("podSelector"), src.labels)]
        if egress and not any(_peer_or_all(rule.get("to"), p["metadata"]["namespace"], dst, dst_ip, namespaces) and _port_ok(rule.get("ports"), port, dst)
                              for p in egress for rule in p["spec"].get("egress") or []):
            return f"egress of {src.namespace}/{src.name} to {dst_ip}:{port} is allowed by none of {', '.join(p['metadata']['name'] for p in egress)}"
    if dst is not None:
        ingress = [p for p in policies if p["metadata"]["namespace"] == dst.namespace and "Ingress" in _types(p) and matches(p["spec"].get("podSelector"), dst.labels)]
        if ingress and not any(_peer_or_all(rule.get("from"), p["metadata"]["namespace"], src, src_ip, namespaces) and _port_ok(rule.get("ports"), port, dst)
                               for p in ingress for rule in p["spec"].get("ingress") or []):
            who = f"{src.namespace}/{src.name}" if src else src_ip
            return f"ingress of {dst.namespace}/{dst.name}:{port} from {who} is allowed by none of {', '.join(p['metadata']['name'] for p in ingress)}"
    return None


def _types(policy: Manifest) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _peer_or_all(peers: list[Manifest] | None, policy_ns: str, other: PodLike | None, ip: str, namespaces: dict) -> bool:
    return not peers or any(_peer_ok(peer, policy_ns, other, ip, namespaces) for peer in peers)
