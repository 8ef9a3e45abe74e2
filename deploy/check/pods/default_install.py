"""Scenario 1: the default values (plus networkPolicy.edgeClients naming the edge pod) installed;
every pod Ready; then a user, a product and a PAID order made through the Services' DNS names by a
caller holding certificates from the chart's CA."""

from __future__ import annotations

import base64
import copy
import secrets
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from podrunner import Cluster, Release

from .edge import EDGE_CLIENTS, Edge

INSTALL_TIMEOUT = 180
# The mesh's default SHOPMESH_RESOLVE_INTERVAL, plus a second.
RESOLVE_INTERVAL = 6.0


CA_SECRET, PASSWORDS_SECRET = "shopmesh-ca", "shopmesh-passwords"
SERVICES = ("catalog", "order", "payment", "user")


def gitops_secrets(cluster: Cluster, namespace: str, postgres: bool = True, services: tuple[str, ...] = SERVICES) -> dict:
    """What a render without a cluster needs (the chart README's GitOps section), made as an
    operator would before the first sync: the mesh CA (Ed25519, PKCS#8, by openssl) and the
    bundled PostgreSQL's passwords. Returns the values that name them."""
    cluster.namespace(namespace)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", f"{d}/ca.key"], check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-x509", "-new", "-key", f"{d}/ca.key", "-subj", f"/CN=shopmesh mesh CA {namespace}", "-days", "30",
                        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", f"{d}/ca.crt"],
                       check=True, capture_output=True)
        crt, key = Path(d, "ca.crt").read_bytes(), Path(d, "ca.key").read_bytes()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": CA_SECRET, "namespace": namespace},
                   "data": {"tls.crt": b64(crt), "tls.key": b64(key), "ca.crt": b64(crt)}}, namespace)
    values: dict = {"tls": {"chartCA": {"existingSecret": CA_SECRET}}}
    if postgres:
        passwords = {f"{s}-password": secrets.token_urlsafe(24) for s in ("postgres", *services)}
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": PASSWORDS_SECRET, "namespace": namespace},
                       "data": {k: b64(v.encode()) for k, v in passwords.items()}}, namespace)
        values["postgresql"] = {"existingSecret": PASSWORDS_SECRET}
    return values


def values(secrets_values: dict) -> dict:
    """The default values with the existing Secrets a render without a cluster needs, the edge pod
    admitted, and payment's HPA allowed down to one pod (scenario 4 scales it 1 -> 3)."""
    out = copy.deepcopy(secrets_values)
    out["networkPolicy"] = {"edgeClients": EDGE_CLIENTS}
    out["services"] = {"payment": {"autoscaling": {"minReplicas": 1}}}
    return out


def install(cluster: Cluster, release: Release, vals: dict) -> float:
    """helm install, then seconds until every workload is Ready."""
    start = time.monotonic()
    release.install(vals)
    cluster.wait("every workload of the release Ready", release.ready, INSTALL_TIMEOUT)
    return time.monotonic() - start


def order_through_services(edge: Edge, sku: str = "PODRUNNER-1", token_for=None, placed: list[str] | None = None) -> str:
    """A product (as the catalog's administrator), a user and an order (as the edge); the order PAID.
    With `token_for` (bearer tokens on, so the edge acts only for users it has a token of), the user
    is signed up by the administrator and the edge sends `token_for(user_id)` with each call. The
    order's id is appended to `placed` if given."""
    edge.call("catalog", 50054, "shopmesh.catalog.v1.CatalogService/CreateProduct",
              {"product": {"sku": sku, "display_name": "A book", "active": True, "unit_price": {"currency_code": "USD", "amount_minor": 1250}}},
              who="shopmesh-admin") if not _exists(edge, sku) else None
    user = edge.call("user", 50051, "shopmesh.user.v1.UserService/CreateUser",
                     {"email": f"ada-{uuid.uuid4().hex[:8]}@example.com", "display_name": "Ada"},
                     who="shopmesh-admin" if token_for else "shopmesh-gateway")
    token = token_for(user["id"]) if token_for else None
    order = edge.call("order", 50052, "shopmesh.order.v1.OrderService/CreateOrder",
                      {"user_id": user["id"], "request_id": f"podrunner-{uuid.uuid4()}", "line_items": [{"sku": sku, "quantity": 2}]},
                      token=token)
    read = edge.call("order", 50052, "shopmesh.order.v1.OrderService/GetOrder", {"id": order["id"]}, token=token)
    assert read.get("state") == "ORDER_STATE_PAID", f"order {order['id']} is {read.get('state')}, not PAID: {read}"
    if placed is not None:
        placed.append(order["id"])
    total = read.get("total") or read.get("totalPrice") or {}
    return f"user {user['id'][:8]}…, order {order['id'][:8]}… PAID {total.get('amountMinor', '?')} {total.get('currencyCode', '')}".strip()


def _exists(edge: Edge, sku: str) -> bool:
    try:
        edge.call("catalog", 50054, "shopmesh.catalog.v1.CatalogService/GetProduct", {"sku": sku})
        return True
    except AssertionError:
        return False
