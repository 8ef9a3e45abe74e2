"""Scenario 5: value variants, each installed into a namespace of its own and used through its
Services: an external database with `database.existingSecret`, cert-manager issuing the mesh's
certificates, bearer tokens on beside mTLS, an Ingress whose controller presents the edge's
certificate (`tls.secretNames.edge`); and token-only values, which must fail to render with a
message that says service-to-service calls need mTLS."""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
from pathlib import Path

from helm_python.errors import HelmError
from podrunner import Cluster, Release

from .default_install import CA_SECRET, RESOLVE_INTERVAL, gitops_secrets, install, order_through_services
from .edge import EDGE_CLIENTS, Edge, issue

SERVICES = ("catalog", "order", "payment", "user")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def run(cluster: Cluster, chart: Path, namespace: str, values: dict, edge_secret: str | None = None,
        ca_secret: str = CA_SECRET) -> str:
    release = Release(cluster, chart, "shopmesh", namespace)
    try:
        ready = install(cluster, release, {"networkPolicy": {"edgeClients": EDGE_CLIENTS}, **values})
        time.sleep(RESOLVE_INTERVAL)
        edge = Edge(cluster, namespace, ca_secret, edge_secret=edge_secret)
        try:
            stored = sorted({o["kind"] for o in release.revisions[-1][1] if o["kind"] in ("Ingress", "GRPCRoute", "Certificate", "Issuer")})
            return f"install-to-Ready {ready:.1f} s; {order_through_services(edge)}" + (f"; also rendered: {', '.join(stored)}" if stored else "")
        finally:
            edge.close()
    finally:
        if release.revisions:
            release.uninstall(grace=1)


def external_database(cluster: Cluster, chart: Path) -> str:
    """A PostgreSQL outside the release (namespace db), one role and database per service made by
    its init script, and the Secret of URLs the chart is given; the pre-install migration Job
    runs with a sidecar that never exits."""
    ns, db_ns = "variant-db", "db"
    passwords = {s: f"pw-{s}-{int(time.time())}" for s in SERVICES}
    sql = "".join(f"CREATE ROLE shopmesh_{s} LOGIN PASSWORD '{pw}';\nCREATE DATABASE shopmesh_{s} OWNER shopmesh_{s};\n" for s, pw in passwords.items())
    cluster.namespace(db_ns)
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "init", "namespace": db_ns}, "data": {"roles.sql": sql}}, db_ns)
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "superuser", "namespace": db_ns}, "data": {"password": _b64("postgres-pw")}}, db_ns)
    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "postgres", "namespace": db_ns},
                   "spec": {"selector": {"app": "external-db"}, "ports": [{"port": 5432, "targetPort": 5432}]}}, db_ns)
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "postgres", "namespace": db_ns, "labels": {"app": "external-db"}},
                   "spec": {"securityContext": {"runAsUser": 999, "runAsGroup": 999, "fsGroup": 999},
                            "containers": [{"name": "postgres", "image": "postgres:15", "ports": [{"containerPort": 5432}],
                                            "env": [{"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "superuser", "key": "password"}}},
                                                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
                                            "readinessProbe": {"exec": {"command": ["pg_isready", "-q", "-h", "127.0.0.1"]}, "periodSeconds": 2},
                                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                                             {"name": "run", "mountPath": "/var/run/postgresql"},
                                                             {"name": "init", "mountPath": "/docker-entrypoint-initdb.d"}]}],
                            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "run", "emptyDir": {}}, {"name": "init", "configMap": {"name": "init"}}]}}, db_ns)
    cluster.namespace(ns)
    urls = {f"{s}-database-url": _b64(f"postgres://shopmesh_{s}:{pw}@postgres.{db_ns}.svc.cluster.local:5432/shopmesh_{s}") for s, pw in passwords.items()}
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-db", "namespace": ns}, "data": urls}, ns)
    try:
        # A sidecar that never exits beside the migration hook (what a cloud-sql-proxy or a mesh
        # proxy is): the Job must still complete, or the install never does.
        # It leaves on SIGTERM, as a proxy does (a PID 1 that ignores it would hold the Job for
        # its grace period, in a cluster too).
        sidecar = {"name": "db-proxy", "image": "podrunner/toolbox", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
                   "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 65532, "capabilities": {"drop": ["ALL"]}}}
        return run(cluster, chart, ns, {**gitops_secrets(cluster, ns, postgres=False), "migration": {"extraContainers": [sidecar]},
                                        "postgresql": {"enabled": False}, "database": {"existingSecret": "shop-db"}})
    finally:
        cluster.delete("Pod", db_ns, "postgres", wait=True, grace=1)


def cert_manager(cluster: Cluster, chart: Path) -> str:
    ns = "variant-cm"
    passwords = gitops_secrets(cluster, ns)["postgresql"]
    return run(cluster, chart, ns, {"tls": {"certManager": {"enabled": True}}, "postgresql": passwords}, ca_secret="shopmesh-mesh-ca")


def tokens(cluster: Cluster, chart: Path) -> str:
    """Bearer tokens on beside mTLS: a JWKS of a fresh EC key; the edge, identified by mTLS, needs none."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{d}/k.pem"], check=True, capture_output=True)
        der = subprocess.run(["openssl", "pkey", "-in", f"{d}/k.pem", "-pubout", "-outform", "DER"], check=True, capture_output=True).stdout
    point = der[-64:]
    b64url = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    jwks = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "podrunner", "alg": "ES256", "use": "sig", "x": b64url(point[:32]), "y": b64url(point[32:])}]})
    ns = "variant-jwt"
    return run(cluster, chart, ns, {**gitops_secrets(cluster, ns), "jwt": {"jwks": jwks, "issuer": "https://issuer.example", "audience": "shopmesh"}})


def ingress_edge_certificate(cluster: Cluster, chart: Path) -> str:
    """An Ingress and GRPCRoutes with `tls.secretNames.edge`: the controller (the edge pod)
    presents that Secret, issued from the chart's CA with `shopmesh issue-certificate`, to the
    backends."""
    ns = "variant-ingress"
    values = gitops_secrets(cluster, ns)
    values["tls"]["secretNames"] = {"edge": "shop-edge"}
    values["ingress"] = {"enabled": True, "hosts": ["shop.example.com"], "tls": [{"secretName": "shop-tls", "hosts": ["shop.example.com"]}]}
    values["gateway"] = {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway"}], "hostnames": ["shop.example.com"],
                         "presentsMeshCertificate": True}
    ca = cluster.get("Secret", ns, CA_SECRET)["data"]
    edge = issue(cluster.binary, base64.b64decode(ca["tls.crt"]), base64.b64decode(ca["tls.key"]), f"spiffe://cluster.local/ns/{ns}/sa/shopmesh-gateway")
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": "shop-edge", "namespace": ns},
                   "data": {k: _b64(v) for k, v in edge.items()}}, ns)
    return run(cluster, chart, ns, values, edge_secret="shop-edge")


def token_only(chart: Path, cluster: Cluster) -> str:
    release = Release(cluster, chart, "shopmesh", "variant-token-only")
    try:
        # With the passwords' Secret named, so that only the tokens can be what the render refuses.
        release.render({"tls": {"enabled": False}, "postgresql": {"existingSecret": "shopmesh-passwords"},
                        "jwt": {"jwks": '{"keys":[]}', "issuer": "https://issuer.example", "audience": "shopmesh"}}, upgrade=False)
    except HelmError as e:
        message = str(e)
        assert "mTLS" in message or "mutual TLS" in message or "tls.enabled" in message, f"the render failed, but says: {message}"
        return f"render refused: {message.strip().splitlines()[-1].split('): ', 1)[-1]}"
    raise AssertionError("token-only values rendered; every CreateOrder would fail INTERNAL (order's calls carry no credential)")


def no_cluster(chart: Path, cluster: Cluster) -> str:
    """The default values need a cluster's `lookup` to keep what they generate: without one (as
    the runner renders, like Argo CD) the render must fail and name what to set."""
    try:
        Release(cluster, chart, "shopmesh", "variant-defaults").render({}, upgrade=False)
    except HelmError as e:
        message = str(e).strip().splitlines()[-1]
        assert "existingSecret" in message, f"the render failed, but says: {message}"
        return f"render refused: {message.split('): ', 1)[-1][:220]}…"
    raise AssertionError("the default values rendered without a cluster: every GitOps sync would rotate the CA and the passwords")
