"""Scenario 5: value variants, each installed into a namespace of its own and used through its
Services: an external database with `database.existingSecret`, cert-manager issuing the mesh's
certificates, bearer tokens on beside mTLS, an Ingress whose controller presents the edge's
certificate (`tls.secretNames.edge`), the chart's NATS with inventory and notification on (a
PAID order's events reach them and come back to the order); and token-only values, which must fail to render with a
message that says service-to-service calls need mTLS."""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from helm_python.errors import HelmError
from podrunner import Cluster, Release

from .default_install import CA_SECRET, RESOLVE_INTERVAL, gitops_secrets, install, order_through_services
from .edge import EDGE_CLIENTS, Edge, issue

SERVICES = ("catalog", "order", "payment", "user")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def run(cluster: Cluster, chart: Path, namespace: str, values: dict, edge_secret: str | None = None,
        ca_secret: str = CA_SECRET, token_for=None, then=None) -> str:
    """Install, a PAID order through the Services, then `then(edge, order id)` if given."""
    release = Release(cluster, chart, "shopmesh", namespace)
    try:
        ready = install(cluster, release, {"networkPolicy": {"edgeClients": EDGE_CLIENTS}, **values})
        time.sleep(RESOLVE_INTERVAL)
        edge = Edge(cluster, namespace, ca_secret, edge_secret=edge_secret)
        try:
            stored = sorted({o["kind"] for o in release.revisions[-1][1] if o["kind"] in ("Ingress", "GRPCRoute", "Certificate", "Issuer")})
            placed: list[str] = []
            ordered = order_through_services(edge, token_for=token_for, placed=placed)
            after = f"; {then(edge, placed[0])}" if then else ""
            return f"install-to-Ready {ready:.1f} s; {ordered}{after}" + (f"; also rendered: {', '.join(stored)}" if stored else "")
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


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _es256_token(key: str, sub: str) -> str:
    """A JWT for `sub` signed by the P-256 key in the PEM file `key` (openssl signs; JWS wants the
    signature as r || s, not DER)."""
    now = int(time.time())
    header = _b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "podrunner"}).encode())
    claims = _b64url(json.dumps({"sub": sub, "iss": "https://issuer.example", "aud": "shopmesh", "iat": now, "exp": now + 600}).encode())
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=f"{header}.{claims}".encode(),
                         check=True, capture_output=True).stdout
    # SEQUENCE { INTEGER r, INTEGER s }, each at most 33 bytes: short-form lengths.
    assert der[0] == 0x30, "a DER ECDSA signature"
    r_len = der[3]
    r = int.from_bytes(der[4:4 + r_len], "big")
    s_len = der[5 + r_len]
    s = int.from_bytes(der[6 + r_len:6 + r_len + s_len], "big")
    return f"{header}.{claims}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def tokens(cluster: Cluster, chart: Path) -> str:
    """Bearer tokens on beside mTLS: a JWKS of a fresh EC key. The edge acts for end users, so each
    of its calls carries the user's token (the chart names it in the policy's `edges`); sign-up is
    a workload's (here the administrator's, let by one more rule to create users)."""
    import yaml

    with tempfile.TemporaryDirectory() as d:
        key = f"{d}/k.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key], check=True, capture_output=True)
        der = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"], check=True, capture_output=True).stdout
        point = der[-64:]
        jwks = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "podrunner", "alg": "ES256", "use": "sig",
                                     "x": _b64url(point[:32]), "y": _b64url(point[32:])}]})
        ns = "variant-jwt"
        rules = yaml.safe_load((chart / "values.yaml").read_text())["authz"]["policy"]["rules"]
        signup = {"description": "Sign-up: the administrator creates users (the edge may not: it acts for end users).",
                  "callers": [f"spiffe://{{{{ .Values.tls.trustDomain }}}}/ns/{ns}/sa/shopmesh-admin"],
                  "methods": ["/shopmesh.user.v1.UserService/CreateUser"]}
        values = {**gitops_secrets(cluster, ns), "jwt": {"jwks": jwks, "issuer": "https://issuer.example", "audience": "shopmesh"},
                  "authz": {"policy": {"rules": [*rules, signup]}}}
        return run(cluster, chart, ns, values, token_for=lambda sub: _es256_token(key, sub))


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


EVENTS_TIMEOUT = 60


def replicated(cluster: Cluster, ns: str) -> str:
    """Every stream the services made is on all three servers and its two followers catch up:
    read from the servers' monitoring ports (/jsz), as the node reaches them, each stream as its
    leader sees it (a follower's view of the other followers is not kept current)."""
    servers = {p.name: p.ip for p in cluster.workload("StatefulSet", ns, "shopmesh-nats").pods}
    streams: dict[str, dict] = {}

    def current() -> bool:
        streams.clear()
        for name, ip in servers.items():
            with urllib.request.urlopen(f"http://{ip}:8222/jsz?accounts=true&streams=true&config=true", timeout=10) as r:
                jsz = json.load(r)
            for st in (st for acc in jsz.get("account_details", []) for st in acc.get("stream_detail", [])):
                if st.get("cluster", {}).get("leader") == name:
                    streams[st["name"]] = st
        return len(streams) >= 3 and all(
            len(peers := st["cluster"].get("replicas", [])) == 2 and all(p.get("current") for p in peers) for st in streams.values())

    try:
        cluster.wait("every stream's two followers current, as its leader sees them", current, 30)
    except AssertionError as e:
        raise AssertionError(f"{e}; streams: {[(n, st.get('cluster')) for n, st in streams.items()]}") from None
    for st in streams.values():
        assert st["config"]["num_replicas"] == 3, f"stream {st['name']}: {st['config']['num_replicas']} replicas, not 3"
    said = sorted(f"{n} (leader {st['cluster']['leader']})" for n, st in streams.items())
    return f"{len(streams)} streams on 3 servers, each with 2 current followers: {', '.join(said)}"


def events(cluster: Cluster, chart: Path) -> str:
    """nats.enabled (three servers with routes, streams replicated on all three, the password in an
    existing Secret as under GitOps) with inventory and notification on: a PAID order's OrderPaid goes through NATS to inventory, which has no
    stock for the SKU and backorders it; its OrderBackordered reaches the order (fulfilment in
    GetOrder) and notification (one BACKORDERED row in its database)."""
    ns = "variant-events"
    every = (*SERVICES, "inventory", "notification")
    base = gitops_secrets(cluster, ns, services=every)
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "nats-password", "namespace": ns},
                   "data": {"password": _b64(f"nats-{int(time.time())}")}}, ns)
    values = {**base, "nats": {"enabled": True, "replicas": 3, "existingSecret": "nats-password", "jetstream": {"size": "1Gi"}},
              "events": {"streamReplicas": 3},
              "services": {"inventory": {"enabled": True}, "notification": {"enabled": True}}}

    def followed(edge: Edge, order_id: str) -> str:
        start = time.monotonic()
        order = {"id": order_id}
        got: dict = {}

        def fulfilled() -> bool:
            got.update(edge.call("order", 50052, "shopmesh.order.v1.OrderService/GetOrder", {"id": order["id"]}))
            return bool(got.get("fulfilment"))

        cluster.wait("the order's fulfilment (OrderPaid -> inventory -> OrderBackordered -> order)", fulfilled, EVENTS_TIMEOUT)
        assert "BACKORDERED" in got["fulfilment"], f"order {order['id']}: fulfilment {got['fulfilment']}, not BACKORDERED (no stock was set)"
        (pg,) = cluster.workload("StatefulSet", ns, "shopmesh-postgresql").pods
        sql = f"SELECT kind FROM notifications WHERE order_id = '{order['id']}'"
        rows: list[str] = []

        def notified() -> bool:
            done = subprocess.run(pg.container("postgresql").exec_argv(["psql", "-qtA", "-U", "postgres", "-d", "shopmesh_notification", "-c", sql]),
                                  capture_output=True, text=True, timeout=20)
            rows[:] = done.stdout.split()
            return done.returncode == 0 and bool(rows)

        cluster.wait("the notification row (OrderBackordered -> notification)", notified, EVENTS_TIMEOUT)
        assert len(rows) == 1, f"order {order['id']}: notifications {rows}, not exactly one"
        took = time.monotonic() - start
        # Starts of each pod's service container: a service started before NATS was Ready used to
        # exit and crash-loop; it now waits for the broker serving, so each starts once.
        starts = "; ".join(f"{svc} " + "/".join(str(1 + sum(c.restarts for c in p.mains)) for p in cluster.workload("Deployment", ns, f"shopmesh-{svc}").live())
                           for svc in ("order", "inventory", "notification"))
        return (f"fulfilment {got['fulfilment']} and one {rows[0]} notification {took:.1f} s after the answer; {replicated(cluster, ns)}; "
                f"starts per pod: {starts}")

    return run(cluster, chart, ns, values, then=followed)
