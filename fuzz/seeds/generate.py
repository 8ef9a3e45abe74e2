#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets: one valid request per method (and a few
near misses), each file a selector byte (the method, as the target reads it) followed by
the message's protobuf encoding. Run it again after changing a request message."""

import pathlib

HERE = pathlib.Path(__file__).resolve().parent
ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def varint(n):
    n &= (1 << 64) - 1  # negative int32/int64 are sent as ten-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, value):
    if isinstance(value, bool):
        return varint(number << 3) + varint(int(value))
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def message(*fields):
    return b"".join(field(n, v) for n, v in fields if v not in ("", 0, None, False))


def money(code, amount):
    return message((1, code), (2, amount))


SEEDS = {
    "user": {
        "create_user": (0, message((1, "ada@example.com"), (2, "Ada Lovelace"), (3, "req-1"))),
        "create_user_bad": (0, message((1, "not an email"), (2, " "), (3, "bad key"))),
        "get_user": (1, message((1, ID))),
        "list_users": (2, message((1, 10), (2, ID))),
        "list_users_negative": (2, message((1, -1))),
        "update_user": (3, message((1, message((1, ID), (3, "Grace"), (4, True))),
                                   (2, message((1, "display_name"), (1, "active"))))),
        "update_user_immutable": (3, message((1, message((1, ID))), (2, message((1, "email"))))),
    },
    "order": {
        "create_order": (0, message((1, ID), (2, message((1, "BOOK-42"), (2, 2), (3, money("USD", 1250)))),
                                    (2, message((1, "PEN.7"), (2, 1), (3, money("USD", 99)))), (3, "first-order"))),
        "create_order_mixed": (0, message((1, ID), (2, message((1, "A"), (2, 1), (3, money("USD", 1)))),
                                          (2, message((1, "B"), (2, 1), (3, money("EUR", 1)))))),
        "create_order_overflow": (0, message((1, ID), (2, message((1, "A"), (2, 10000),
                                                                  (3, money("USD", (1 << 63) - 1)))))),
        "get_order": (1, message((1, ID))),
        "list_orders": (2, message((1, ID), (2, 1000), (3, ID))),
        "cancel_order": (3, message((1, ID), (2, "cancel-1"))),
    },
    "payment": {
        "charge": (0, message((1, ID), (2, ID), (3, money("USD", 1250)), (4, ID))),
        "charge_negative": (0, message((1, ID), (2, ID), (3, money("usd", -5)))),
        "get_payment": (1, message((1, ID))),
        "refund": (2, message((1, ID), (2, "refund-1"))),
        "list_payments": (3, message((1, ID), (2, 5))),
    },
    "catalog": {
        "create_product": (0, message((1, message((1, "BOOK-42"), (2, "The Book"), (3, money("USD", 1999)),
                                                  (4, True))))),
        "create_product_bad": (0, message((1, message((1, "book 42"), (2, " "), (3, money("usd", 0)))))),
        "create_product_overflow": (0, message((1, message((1, "A"), (2, "A"),
                                                           (3, money("XXX", (1 << 63) - 1)))))),
        "get_product": (1, message((1, "PEN.7_X"))),
        "list_products": (2, message((1, 10), (2, "active:BOOK-42"), (3, 1))),
        "list_products_bad": (2, message((1, -1), (2, "all:b"), (3, 7))),
        "update_product": (3, message((1, message((1, "BOOK-42"), (2, "Second Edition"), (4, True),
                                                  (7, '"3"'))),
                                      (2, message((1, "display_name"), (1, "active"))))),
        "update_product_immutable": (3, message((1, message((1, "BOOK-42"), (7, "W/x"))),
                                                (2, message((1, "sku"), (1, "unit_price.amount_minor"))))),
        "batch_get_products": (4, message(*[(1, s) for s in ("C", "A", "B", "A")])),
        "batch_get_products_over": (4, message(*[(1, f"S{i}") for i in range(101)])),
    },
}

for target, seeds in SEEDS.items():
    directory = HERE / target
    directory.mkdir(exist_ok=True)
    for name, (selector, body) in seeds.items():
        (directory / name).write_bytes(bytes([selector]) + body)
