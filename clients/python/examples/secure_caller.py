"""A caller of another team against the mesh's secure default, with the installed `shopmesh-api`
package: mutual TLS with its mesh certificate, round_robin over every address of the user
service (in a cluster: the headless Service's DNS name), the mesh's own retry policy and per-method
deadlines from the generated service config, a deadline on every call, and the google.rpc
details of errors read with grpcio-status.

Configured by environment variables (clients/secure/README.md; clients/secure/run_mesh.py sets
them against a local secure mesh):
  SHOPMESH_CA, SHOPMESH_CERT, SHOPMESH_KEY   the caller's ca.crt, tls.crt, tls.key
  SHOPMESH_SERVER_NAME                       the name the services' certificates carry
  SHOPMESH_USER_ADDRS                        host:port of the user service, comma-separated
  SHOPMESH_CATALOG_ADDR, SHOPMESH_ORDER_ADDR, SHOPMESH_PAYMENT_ADDR
  SHOPMESH_PYTHON_SERVICE_CONFIG             another service config than the package's own
  SHOPMESH_TOKEN                             a bearer token, only where the policy asks for one
"""

import importlib.resources
import os
import sys
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.common.v1 import money_pb2
from shopmesh.order.v1 import order_pb2, order_pb2_grpc
from shopmesh.payment.v1 import payment_pb2, payment_pb2_grpc
from shopmesh.user.v1 import user_pb2, user_pb2_grpc

DEADLINE = 5.0  # seconds, on every call


def channel(addresses, credentials, service_config):
    """One channel over every address: `ipv4:` lists them (a cluster uses `dns:///<headless name>:port`)."""
    target = addresses if "," not in addresses else "ipv4:" + addresses
    options = [
        ("grpc.service_config", service_config),  # round_robin, deadlines, retries of safe methods
        ("grpc.ssl_target_name_override", os.environ["SHOPMESH_SERVER_NAME"]),
    ]
    return grpc.secure_channel(target, credentials, options=options)


def metadata():
    token = os.environ.get("SHOPMESH_TOKEN")
    return [("authorization", f"Bearer {token}")] if token else []


def details(error):
    """The google.rpc details of a failed call, unpacked by type."""
    status = rpc_status.from_call(error)
    found = {}
    for detail in status.details if status else []:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.PreconditionFailure, error_details_pb2.ErrorInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return found


def main():
    read = lambda name: open(os.environ[name], "rb").read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("SHOPMESH_CA"), private_key=read("SHOPMESH_KEY"), certificate_chain=read("SHOPMESH_CERT"))
    # The package ships the service config generated from the same protos as its stubs.
    config = importlib.resources.files("shopmesh").joinpath("grpc_service_config.json").read_text()
    if os.environ.get("SHOPMESH_PYTHON_SERVICE_CONFIG"):
        config = open(os.environ["SHOPMESH_PYTHON_SERVICE_CONFIG"]).read()
    users = user_pb2_grpc.UserServiceStub(channel(os.environ["SHOPMESH_USER_ADDRS"], credentials, config))
    products = catalog_pb2_grpc.CatalogServiceStub(channel(os.environ["SHOPMESH_CATALOG_ADDR"], credentials, config))
    orders = order_pb2_grpc.OrderServiceStub(channel(os.environ["SHOPMESH_ORDER_ADDR"], credentials, config))
    payments = payment_pb2_grpc.PaymentServiceStub(channel(os.environ["SHOPMESH_PAYMENT_ADDR"], credentials, config))
    run = uuid.uuid4().hex[:8]
    usd = lambda minor: money_pb2.Money(currency_code="USD", amount_minor=minor)

    # Calls with side effects carry a request_id: repeating one returns the first answer.
    user = users.CreateUser(user_pb2.CreateUserRequest(
        email=f"reports-{run}@example.com", display_name="Reports", request_id=f"user-{run}"),
        timeout=DEADLINE, metadata=metadata())
    for _ in range(20):  # spread over both replicas by round_robin
        assert users.GetUser(user_pb2.GetUserRequest(id=user.id), timeout=DEADLINE, metadata=metadata()) == user
    sku = f"REPORTS-{run.upper()}"
    products.CreateProduct(catalog_pb2.CreateProductRequest(product=catalog_pb2.Product(
        sku=sku, display_name="Reports example", active=True, unit_price=usd(1250))), timeout=DEADLINE, metadata=metadata())
    order = orders.CreateOrder(order_pb2.CreateOrderRequest(
        user_id=user.id, request_id=f"order-{run}", line_items=[order_pb2.LineItem(sku=sku, quantity=2)]),
        timeout=DEADLINE, metadata=metadata())
    assert order.state == order_pb2.ORDER_STATE_PAID, order

    # Errors carry google.rpc details: field violations for a bad request…
    try:
        users.CreateUser(user_pb2.CreateUserRequest(email="not-an-email", display_name=""), timeout=DEADLINE, metadata=metadata())
        sys.exit("an invalid user was created")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        fields = sorted(v.field for v in details(error)["BadRequest"].field_violations)
        assert "email" in fields, fields
    # …a machine-readable kind for a precondition (the price the caller expected is not the catalog's).
    try:
        orders.CreateOrder(order_pb2.CreateOrderRequest(user_id=user.id, request_id=f"stale-{run}",
                                                        line_items=[order_pb2.LineItem(sku=sku, quantity=1, unit_price=usd(999))]),
                           timeout=DEADLINE, metadata=metadata())
        sys.exit("an order at a stale price was accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        kinds = [v.type for v in details(error)["PreconditionFailure"].violations]
        assert kinds == ["PRICE_CHANGED"], kinds
    # The policy admits this caller to users, the catalog and orders only: payments are refused.
    try:
        payments.GetPayment(payment_pb2.GetPaymentRequest(id=order.payment_id), timeout=DEADLINE, metadata=metadata())
        sys.exit("the policy let this caller read a payment")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    # A deadline that cannot be met fails fast with DEADLINE_EXCEEDED, never hangs.
    try:
        users.ListUsers(user_pb2.ListUsersRequest(page_size=10), timeout=0.000001, metadata=metadata())
        sys.exit("a call met an impossible deadline")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    print(f"python secure caller: order {order.id} PAID over mTLS; BadRequest(email), PRICE_CHANGED, "
          "PERMISSION_DENIED on payments, DEADLINE_EXCEEDED as expected")


if __name__ == "__main__":
    main()
