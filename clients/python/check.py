"""Calls every method of the shopmesh mesh from Python stubs generated from proto/.

This proves the contracts work for a client that shares no code with the Rust services: it
imports the installed `shopmesh-api` package (clients/python, whose build generates the stubs
from proto/ with grpcio-tools), starts the `shopmesh` binary on free loopback ports with SQLite
files in a temporary directory, checks health and server reflection (what grpcurl uses), calls
every method of every service in the package (counted from its descriptors, so a method added to
proto/ fails this check until it is called here), checks the error codes of bad calls, and stops
the mesh with SIGTERM.

Usage: python check.py PATH/TO/shopmesh   (run by scripts/check-python-client after
`pip install ./clients/python`)
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import threading
import uuid

import grpc
from google.protobuf import descriptor_pool, field_mask_pb2, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

# The installed package, not files generated next to this script.
from shopmesh.catalog.v1 import catalog_pb2 as catalog_pb
from shopmesh.catalog.v1 import catalog_pb2_grpc as catalog_grpc
from shopmesh.inventory.v1 import inventory_pb2 as inventory_pb
from shopmesh.inventory.v1 import inventory_pb2_grpc as inventory_grpc
from shopmesh.notification.v1 import notification_pb2 as notification_pb
from shopmesh.notification.v1 import notification_pb2_grpc as notification_grpc
from shopmesh.common.v1 import money_pb2 as money
from shopmesh.order.v1 import order_pb2 as order_pb
from shopmesh.order.v1 import order_pb2_grpc as order_grpc
from shopmesh.payment.v1 import payment_pb2 as pay_pb
from shopmesh.payment.v1 import payment_pb2_grpc as pay_grpc
from shopmesh.user.v1 import user_pb2 as user_pb
from shopmesh.user.v1 import user_pb2_grpc as user_grpc

SERVICES = {
    "user": "shopmesh.user.v1.UserService",
    "order": "shopmesh.order.v1.OrderService",
    "payment": "shopmesh.payment.v1.PaymentService",
    "catalog": "shopmesh.catalog.v1.CatalogService",
    "inventory": "shopmesh.inventory.v1.InventoryService",
    "notification": "shopmesh.notification.v1.NotificationService",
}
# How many methods each service has (reflection must list them all).
METHOD_COUNTS = {"user": 4, "order": 4, "payment": 4, "catalog": 5, "inventory": 3, "notification": 2}


def start_mesh(binary, data):
    """Starts `shopmesh` on free ports and returns (process, {service: address})."""
    args = [binary]
    for svc in SERVICES:
        args += [f"--{svc}-listen=127.0.0.1:0", f"--{svc}-database-url=sqlite://{data}/{svc}.db"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"})
    timer = threading.Timer(60, proc.kill)
    timer.start()
    addrs = {}
    for line in proc.stdout:
        m = re.match(r"\s+(user|order|payment|catalog|inventory|notification)\s+(\S+:\d+)\s", line)
        if m:
            addrs[m.group(1)] = m.group(2)
        if "Ctrl-C stops every service" in line:
            break
    timer.cancel()
    if set(addrs) != set(SERVICES):
        proc.kill()
        sys.exit(f"shopmesh did not print its endpoints (got {addrs})")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, addrs


def reflected_unary(channel, service, method):
    """Returns (call, request class) for a unary method, built from the descriptors the server
    sends through reflection, or None when the server does not list `service`. Needs no
    generated code: this is how the catalog step reaches a service this package may not have."""
    db = ProtoReflectionDescriptorDatabase(channel)
    if service not in db.get_services():
        return None
    desc = descriptor_pool.DescriptorPool(db).FindServiceByName(service).methods_by_name[method]
    request_cls = message_factory.GetMessageClass(desc.input_type)
    response_cls = message_factory.GetMessageClass(desc.output_type)
    call = channel.unary_unary(f"/{service}/{method}", request_serializer=request_cls.SerializeToString,
                               response_deserializer=response_cls.FromString)
    return call, request_cls


def all_methods():
    """Every method of every service the installed package generated (each `_pb2` module under
    `shopmesh`, so a service added to proto/ counts too), as "Service/Method"."""
    import importlib
    import pkgutil

    import shopmesh

    found = set()
    for info in pkgutil.walk_packages(shopmesh.__path__, "shopmesh."):
        if info.name.endswith("_pb2"):
            for svc in importlib.import_module(info.name).DESCRIPTOR.services_by_name.values():
                found |= {f"{svc.name}/{m.name}" for m in svc.methods}
    return found


def without_fulfilment(order):
    """`order` without its `fulfilment` (field 11), which the inventory's events set on a paid
    order after CreateOrder answered: a replay or a read may already carry it."""
    copy = type(order).FromString(order.SerializeToString())
    copy.DiscardUnknownFields()
    if "fulfilment" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("fulfilment")
    return copy


def expect_error(code, call, *args):
    try:
        call(*args, timeout=10)
    except grpc.RpcError as err:
        assert err.code() == code, f"{call}: expected {code}, got {err.code()}: {err.details()}"
        return err
    raise AssertionError(f"{call}: expected {code}, got success")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    for module in (money, user_pb, user_grpc, pay_pb, pay_grpc, order_pb, order_grpc):
        assert f"{os.sep}site-packages{os.sep}" in module.__file__, \
            f"{module.__name__} imported from {module.__file__}, not from the installed package"
    with tempfile.TemporaryDirectory() as tmp:
        proc, addrs = start_mesh(binary, tmp)
        try:
            channels = {svc: grpc.insecure_channel(addr) for svc, addr in addrs.items()}
            called = set()

            # Health and reflection, as Kubernetes probes and grpcurl use them.
            for svc, name in SERVICES.items():
                health = health_pb2_grpc.HealthStub(channels[svc])
                for service in ("", name):
                    resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                    assert resp.status == health_pb2.HealthCheckResponse.SERVING, (svc, service, resp)
                db = ProtoReflectionDescriptorDatabase(channels[svc])
                listed = set(db.get_services())
                assert name in listed, (svc, listed)
                assert not (set(SERVICES.values()) - {name}) & listed, f"{svc} lists only its own service"
                methods = [m.name for m in db.FindFileContainingSymbol(name).service[0].method]
                assert len(methods) == METHOD_COUNTS[svc], (name, methods)

            users = user_grpc.UserServiceStub(channels["user"])
            payments = pay_grpc.PaymentServiceStub(channels["payment"])
            orders = order_grpc.OrderServiceStub(channels["order"])

            def usd(minor):
                return money.Money(currency_code="USD", amount_minor=minor)

            # UserService
            user = users.CreateUser(user_pb.CreateUserRequest(
                email="grace@example.com", display_name="Grace", request_id="py-user-1"), timeout=10)
            again = users.CreateUser(user_pb.CreateUserRequest(
                email="grace@example.com", display_name="Grace", request_id="py-user-1"), timeout=10)
            assert again.id == user.id, "CreateUser replay returns the same user"
            assert users.GetUser(user_pb.GetUserRequest(id=user.id), timeout=10) == user
            listed = users.ListUsers(user_pb.ListUsersRequest(page_size=10), timeout=10)
            assert [u.id for u in listed.users] == [user.id]
            renamed = users.UpdateUser(user_pb.UpdateUserRequest(
                user=user_pb.User(id=user.id, display_name="Grace Hopper"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"])), timeout=10)
            assert renamed.display_name == "Grace Hopper" and renamed.active
            called |= {f"UserService/{m}" for m in ("CreateUser", "GetUser", "ListUsers", "UpdateUser")}
            expect_error(grpc.StatusCode.ALREADY_EXISTS, users.CreateUser,
                         user_pb.CreateUserRequest(email="GRACE@example.com", display_name="Other"))
            err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, users.CreateUser,
                               user_pb.CreateUserRequest(email="not-an-email", display_name=""))
            details = dict(err.trailing_metadata() or ())
            assert "grpc-status-details-bin" in details, "field violations ride in the status details"
            expect_error(grpc.StatusCode.NOT_FOUND, users.GetUser, user_pb.GetUserRequest(id=str(uuid.uuid4())))

            # CatalogService: order prices each line from it, so the SKU exists first.
            products = catalog_grpc.CatalogServiceStub(channels["catalog"])
            book = products.CreateProduct(catalog_pb.CreateProductRequest(product=catalog_pb.Product(
                sku="BOOK-42", display_name="Python check BOOK-42", active=True, unit_price=usd(1250))), timeout=10)
            assert book.sku == "BOOK-42" and book.etag, book
            assert products.GetProduct(catalog_pb.GetProductRequest(sku="BOOK-42"), timeout=10) == book
            pen = products.CreateProduct(catalog_pb.CreateProductRequest(product=catalog_pb.Product(
                sku="PEN-1", display_name="Pen", active=True, unit_price=usd(150))), timeout=10)
            pen = products.UpdateProduct(catalog_pb.UpdateProductRequest(
                product=catalog_pb.Product(sku="PEN-1", active=False),
                update_mask=field_mask_pb2.FieldMask(paths=["active"])), timeout=10)
            assert not pen.active
            active = products.ListProducts(catalog_pb.ListProductsRequest(
                page_size=10, active_filter=catalog_pb.ACTIVE_FILTER_ACTIVE), timeout=10)
            assert [p.sku for p in active.products] == ["BOOK-42"], active
            both = products.BatchGetProducts(catalog_pb.BatchGetProductsRequest(skus=["PEN-1", "BOOK-42"]), timeout=10)
            assert sorted(p.sku for p in both.products) == ["BOOK-42", "PEN-1"], both
            expect_error(grpc.StatusCode.NOT_FOUND, products.GetProduct, catalog_pb.GetProductRequest(sku="NO-SUCH-SKU"))
            called |= {f"CatalogService/{m}" for m in ("CreateProduct", "GetProduct", "UpdateProduct", "ListProducts", "BatchGetProducts")}

            # InventoryService: stock for the order below, which the order's event allocates.
            stock = inventory_grpc.InventoryServiceStub(channels["inventory"])
            set_to = stock.SetStock(inventory_pb.SetStockRequest(sku="BOOK-42", on_hand=10), timeout=10)
            assert set_to.on_hand == 10 and set_to.allocated == 0, set_to
            expect_error(grpc.StatusCode.INVALID_ARGUMENT, stock.SetStock, inventory_pb.SetStockRequest(sku="BOOK-42", on_hand=-1))
            called |= {"InventoryService/SetStock"}

            # OrderService (calls user, catalog and payment itself)
            line = order_pb.LineItem(sku="BOOK-42", quantity=2, unit_price=usd(1250))
            order = orders.CreateOrder(order_pb.CreateOrderRequest(
                user_id=user.id, line_items=[line], request_id="py-order-1"), timeout=10)
            assert order.state == order_pb.ORDER_STATE_PAID, order
            assert order.total.amount_minor == 2500 and order.total.currency_code == "USD"
            replay = orders.CreateOrder(order_pb.CreateOrderRequest(
                user_id=user.id, line_items=[line], request_id="py-order-1"), timeout=10)
            assert without_fulfilment(replay) == order, "CreateOrder replay returns the same order"
            got = orders.GetOrder(order_pb.GetOrderRequest(id=order.id), timeout=10)
            assert without_fulfilment(got) == order
            page = orders.ListOrders(order_pb.ListOrdersRequest(user_id=user.id), timeout=10)
            assert [o.id for o in page.orders] == [order.id]
            expect_error(grpc.StatusCode.INVALID_ARGUMENT, orders.CreateOrder,
                         order_pb.CreateOrderRequest(user_id=user.id, line_items=[]))

            # PaymentService: the order's payment, then a charge and refund of its own.
            paid = payments.GetPayment(pay_pb.GetPaymentRequest(id=order.payment_id), timeout=10)
            assert paid.state == pay_pb.PAYMENT_STATE_SUCCEEDED and paid.order_id == order.id
            of_order = payments.ListPayments(pay_pb.ListPaymentsRequest(order_id=order.id), timeout=10)
            assert [p.id for p in of_order.payments] == [paid.id], "one payment despite the replay"
            other_order = str(uuid.uuid4())
            charge = pay_pb.ChargeRequest(order_id=other_order, user_id=user.id, amount=usd(700),
                                          request_id="py-charge-1")
            charged = payments.Charge(charge, timeout=10)
            assert charged.state == pay_pb.PAYMENT_STATE_SUCCEEDED
            assert payments.Charge(charge, timeout=10).id == charged.id, "Charge replay charges once"
            refunded = payments.Refund(pay_pb.RefundRequest(payment_id=charged.id, request_id="py-refund-1"),
                                       timeout=10)
            assert refunded.state == pay_pb.PAYMENT_STATE_REFUNDED
            called |= {f"PaymentService/{m}" for m in ("Charge", "GetPayment", "Refund", "ListPayments")}

            # The order's consequences, through the events: 2 of BOOK-42 allocated, and one
            # confirmation sent for the order.
            notices = notification_grpc.NotificationServiceStub(channels["notification"])
            deadline = time.monotonic() + 20
            while True:
                sent = notices.ListNotifications(notification_pb.ListNotificationsRequest(order_id=order.id), timeout=10)
                if sent.notifications or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert len(sent.notifications) == 1, f"notifications for the paid order: {sent}"
            note = notices.GetNotification(notification_pb.GetNotificationRequest(id=sent.notifications[0].id), timeout=10)
            assert note.order_id == order.id and note.user_id == user.id, note
            book = stock.GetStock(inventory_pb.GetStockRequest(sku="BOOK-42"), timeout=10)
            assert (book.on_hand, book.allocated) == (8, 2), book  # on_hand: units not allocated
            assert [x.sku for x in stock.ListStock(inventory_pb.ListStockRequest(page_size=10), timeout=10).stock] == ["BOOK-42"]
            called |= {"InventoryService/GetStock", "InventoryService/ListStock",
                       "NotificationService/ListNotifications", "NotificationService/GetNotification"}

            cancelled = orders.CancelOrder(order_pb.CancelOrderRequest(id=order.id, request_id="py-cancel-1"),
                                           timeout=10)
            assert cancelled.state == order_pb.ORDER_STATE_CANCELLED
            refunded = payments.GetPayment(pay_pb.GetPaymentRequest(id=order.payment_id), timeout=10)
            assert refunded.state == pay_pb.PAYMENT_STATE_REFUNDED, "cancelling a paid order refunds it"
            expect_error(grpc.StatusCode.FAILED_PRECONDITION, orders.CancelOrder,
                         order_pb.CancelOrderRequest(id=order.id, request_id="py-cancel-2"))
            called |= {f"OrderService/{m}" for m in ("CreateOrder", "GetOrder", "ListOrders", "CancelOrder")}

            # Reflection: the same order read through descriptors from the server equals the
            # generated stub's answer.
            get_order, request_cls = reflected_unary(channels["order"], SERVICES["order"], "GetOrder")
            via_reflection = get_order(request_cls(id=order.id), timeout=10)
            assert json_format.MessageToDict(via_reflection) == json_format.MessageToDict(
                orders.GetOrder(order_pb.GetOrderRequest(id=order.id), timeout=10))
            assert reflected_unary(channels["order"], "shopmesh.nothing.v1.NoService", "Get") is None

            for ch in channels.values():
                ch.close()
            assert called == all_methods(), f"methods not called: {sorted(all_methods() - called)}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        assert code == 0, f"shopmesh exited with {code} after SIGTERM"
        services = len({m.split("/")[0] for m in called})
        print(f"python client (installed shopmesh-api): all {len(called)} methods of {services} services called; "
              "health, reflection and errors as documented")


if __name__ == "__main__":
    main()
