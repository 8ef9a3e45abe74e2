"""Scenario 1: the default values (plus networkPolicy.edgeClients naming the edge pod) installed;
every pod Ready; then a user, a product and a PAID order made through the Services' DNS names by a
caller holding certificates from the chart's CA."""

from __future__ import annotations

import time
import uuid

from podrunner import Cluster, Release

from .edge import EDGE_CLIENTS, Edge

INSTALL_TIMEOUT = 180
# The mesh's default SHOPMESH_RESOLVE_INTERVAL, plus a second.
RESOLVE_INTERVAL = 6.0


def values() -> dict:
    """The default values, plus the edge pod admitted, plus payment's HPA allowed down to one pod
    (scenario 4 scales it 1 -> 3; nothing else changes)."""
    return {"networkPolicy": {"edgeClients": EDGE_CLIENTS}, "services": {"payment": {"autoscaling": {"minReplicas": 1}}}}


def install(cluster: Cluster, release: Release, vals: dict) -> float:
    """helm install, then seconds until every workload is Ready."""
    start = time.monotonic()
    release.install(vals)
    cluster.wait("every workload of the release Ready", release.ready, INSTALL_TIMEOUT)
    return time.monotonic() - start


def order_through_services(edge: Edge, sku: str = "PODRUNNER-1") -> str:
    """A product (as the catalog's administrator), a user and an order (as the edge); the order PAID."""
    edge.call("catalog", 50054, "shopmesh.catalog.v1.CatalogService/CreateProduct",
              {"product": {"sku": sku, "display_name": "A book", "active": True, "unit_price": {"currency_code": "USD", "amount_minor": 1250}}},
              who="shopmesh-admin") if not _exists(edge, sku) else None
    user = edge.call("user", 50051, "shopmesh.user.v1.UserService/CreateUser",
                     {"email": f"ada-{uuid.uuid4().hex[:8]}@example.com", "display_name": "Ada"})
    order = edge.call("order", 50052, "shopmesh.order.v1.OrderService/CreateOrder",
                      {"user_id": user["id"], "request_id": f"podrunner-{uuid.uuid4()}", "line_items": [{"sku": sku, "quantity": 2}]})
    read = edge.call("order", 50052, "shopmesh.order.v1.OrderService/GetOrder", {"id": order["id"]})
    assert read.get("state") == "ORDER_STATE_PAID", f"order {order['id']} is {read.get('state')}, not PAID: {read}"
    total = read.get("total") or read.get("totalPrice") or {}
    return f"user {user['id'][:8]}…, order {order['id'][:8]}… PAID {total.get('amountMinor', '?')} {total.get('currencyCode', '')}".strip()


def _exists(edge: Edge, sku: str) -> bool:
    try:
        edge.call("catalog", 50054, "shopmesh.catalog.v1.CatalogService/GetProduct", {"sku": sku})
        return True
    except AssertionError:
        return False
