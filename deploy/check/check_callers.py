"""The chart's admission of callers from other teams (values: callers) and of the metrics scraper
(networkPolicy.metricsScrapers), checked on a rendering: the rendered authorization policy and
NetworkPolicies are evaluated for an admitted caller, which is served exactly its methods, and for
callers that are not listed (another service account, another pod, another namespace), which
are refused. The NetworkPolicies are evaluated by the pod runner's evaluator
(podrunner/netpol.py, networking.k8s.io/v1 semantics); the policy by the mesh's rule semantics
(src/mesh/security/authz.rs: a caller's segments may be `*`, a method `/package.Service/*`).

Used by check_chart.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podrunner import netpol

Manifest = dict[str, Any]
PROTO = Path(__file__).resolve().parents[2] / "proto"


def api_methods() -> dict[str, list[str]]:
    """{package.Service: [/package.Service/Method, …]} read from proto/."""
    out: dict[str, list[str]] = {}
    for proto in sorted(PROTO.rglob("*.proto")):
        text = proto.read_text()
        package = re.search(r"^package ([\w.]+);", text, re.M)
        for service, body in re.findall(r"^service (\w+) \{(.*?)^\}", text, re.M | re.S):
            full = f"{package.group(1)}.{service}"
            out[full] = [f"/{full}/{m}" for m in re.findall(r"^\s*rpc (\w+)\(", body, re.M)]
    return out


@dataclass
class Pod:
    """Enough of a pod for the NetworkPolicy evaluator."""
    name: str
    namespace: str
    labels: dict[str, str]
    ip: str = "10.0.0.9"
    containers: list[Manifest] = field(default_factory=list)

    def all_containers(self) -> list[Manifest]:
        return self.containers


def caller_matches(pattern: str, spiffe_id: str) -> bool:
    """A policy caller (segments may be `*`) against a SPIFFE ID."""
    want, got = pattern.split("/"), spiffe_id.split("/")
    return len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got))


def method_matches(pattern: str, path: str) -> bool:
    return pattern == path or (pattern.endswith("/*") and path.startswith(pattern[:-1]))


def policy_allows(policy: Manifest, spiffe_id: str, path: str) -> bool:
    return any(any(caller_matches(c, spiffe_id) for c in rule["callers"]) and any(method_matches(m, path) for m in rule["methods"])
               for rule in policy["rules"])


def spiffe(values: dict, namespace: str, sa: str) -> str:
    return f"spiffe://{values['tls']['trustDomain']}/ns/{namespace}/sa/{sa}"


def check_callers(r, services: dict[str, tuple[int, str]], release_ns: str) -> str:
    """`r` a check_chart.Rendered; `services` {name: (port, gRPC service)} of the enabled ones."""
    methods = api_methods()
    callers = r.values.get("callers") or []
    policies = [dict(p, metadata={**p["metadata"], "namespace": p["metadata"].get("namespace", release_ns)}) for p in r.kind("NetworkPolicy")]
    maps = [m for m in r.kind("ConfigMap") if m["metadata"]["name"].endswith("-authz-policy")]
    policy = json.loads(maps[0]["data"]["policy.json"]) if maps else None
    pods = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"] for d in r.kind("Deployment")}
    checked = 0
    for caller in callers:
        own = spiffe(r.values, caller["namespace"], caller["serviceAccount"])
        labels = (caller.get("podSelector") or {}).get("matchLabels") or {"app": caller["name"]}
        pod = Pod(caller["name"], caller["namespace"], labels)
        strangers = [
            ("another service account of its namespace", spiffe(r.values, caller["namespace"], caller["serviceAccount"] + "-other"),
             Pod("other", caller["namespace"], {"app": "someone-else"})),
            ("the same names in another namespace", spiffe(r.values, caller["namespace"] + "-other", caller["serviceAccount"]),
             Pod("twin", caller["namespace"] + "-other", labels)),
        ]
        # The install's notes say who was admitted to what, and where its certificate comes from.
        assert f"Caller {caller['name']} ({caller['namespace']}/{caller['serviceAccount']}) may call" in r.notes, \
            f"{caller['name']}: not in NOTES.txt"
        if policy is not None:
            rules = [rule for rule in policy["rules"] if rule["callers"] == [own]]
            assert len(rules) == 1 and rules[0]["methods"] == caller["methods"], f"{caller['name']}: policy rules for {own}: {rules}"
        for svc, (port, grpc) in services.items():
            dst = Pod(f"shopmesh-{svc}-0", release_ns, pods[svc]["metadata"]["labels"], containers=pods[svc]["spec"]["containers"])
            mine = [m for m in methods.get(grpc, []) if any(method_matches(p, m) for p in caller["methods"])]
            why = netpol.allowed(policies, pod, pod.ip, dst, dst.ip, port, {}) if policies else None
            if mine:
                assert why is None, f"{caller['name']} may call {svc} ({mine[0]}, …) but its NetworkPolicy refuses it: {why}"
            elif policies:
                assert why is not None, f"{caller['name']} has no method of {svc}, yet {svc}'s NetworkPolicy admits it on {port}"
            for m in methods.get(grpc, []):
                if policy is not None:
                    assert policy_allows(policy, own, m) == (m in mine), f"{caller['name']} {m}: policy says {policy_allows(policy, own, m)}, values say {m in mine}"
                    for what, stranger, _ in strangers:
                        assert not policy_allows(policy, stranger, m), f"{what} ({stranger}) may call {m}"
                checked += 1
            if policies and mine:
                # Without a podSelector every pod of the caller's namespace is admitted by the
                # network; the policy alone tells its service accounts apart (checked above).
                for what, _, stranger_pod in strangers[0 if caller.get("podSelector") else 1:]:
                    assert netpol.allowed(policies, stranger_pod, stranger_pod.ip, dst, dst.ip, port, {}) is not None, \
                        f"{svc}'s NetworkPolicy admits {what} ({stranger_pod.namespace}, {stranger_pod.labels})"
        certs = [c for c in r.kind("Certificate") if c["spec"].get("uris") == [own]]
        if r.kind("Certificate"):  # cert-manager issues the mesh's certificates
            assert len(certs) == 1, f"{caller['name']}: {len(certs)} Certificates for {own}"
            cert = certs[0]
            assert cert["spec"]["secretName"].endswith(f"-caller-{caller['name']}-tls"), f"{caller['name']}: Secret {cert['spec']['secretName']}"
            assert "server auth" not in cert["spec"]["usages"], f"{caller['name']}: a client's certificate may serve"
            cluster = (r.values["tls"]["certManager"].get("issuerRef") or {}).get("kind") == "ClusterIssuer"
            want_ns = caller["namespace"] if cluster else None
            assert cert["metadata"].get("namespace") == want_ns, f"{caller['name']}: Certificate in {cert['metadata'].get('namespace')}, not {want_ns or 'the release namespace'}"
    # The metrics port: the scrapers listed, nobody else.
    scrapers = r.values["networkPolicy"]["metricsScrapers"]
    if policies and services:
        svc = next(iter(services))
        dst = Pod(f"shopmesh-{svc}-0", release_ns, pods[svc]["metadata"]["labels"])
        stranger = Pod("curious", "default", {"app": "curious"})
        assert netpol.allowed(policies, stranger, stranger.ip, dst, dst.ip, r.values["metricsPort"], {}) is not None, "anyone may scrape the metrics port"
        for peer in scrapers:
            ns = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name", release_ns)
            prom = Pod("prometheus-0", ns, (peer.get("podSelector") or {}).get("matchLabels") or {})
            why = netpol.allowed(policies, prom, prom.ip, dst, dst.ip, r.values["metricsPort"], {})
            assert why is None, f"the metrics scraper {peer} is refused: {why}"
    if not callers:
        return f"no callers; metrics port open to {len(scrapers)} scraper peer(s)"
    return (f"{len(callers)} caller(s): {checked} (service, method) decisions as values say, strangers refused; "
            f"metrics port open to {len(scrapers)} scraper peer(s)")
