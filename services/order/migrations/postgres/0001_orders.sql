-- Orders and their lines. An order is written PENDING_PAYMENT before it is charged, and its id
-- is the Charge's request_id, so a retried CreateOrder can finish the payment without a
-- second charge. Ids use the "C" collation: byte order, which for UUIDv7 is creation order,
-- and cheaper to compare than a locale's.
CREATE TABLE orders (
    id                TEXT    COLLATE "C" PRIMARY KEY,
    request_id        TEXT    UNIQUE,
    user_id           TEXT    NOT NULL,
    currency_code     TEXT    NOT NULL,
    total_minor       BIGINT  NOT NULL CHECK (total_minor > 0),
    state             TEXT    NOT NULL CHECK (state IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_DECLINED', 'CANCELLED')),
    payment_id        TEXT,
    decline_reason    TEXT,
    cancel_request_id TEXT,
    create_time_ms    BIGINT  NOT NULL,
    update_time_ms    BIGINT  NOT NULL
);

CREATE INDEX orders_by_user ON orders (user_id, id);

CREATE TABLE order_items (
    order_id         TEXT    NOT NULL REFERENCES orders (id),
    line_no          BIGINT  NOT NULL,
    sku              TEXT    NOT NULL,
    quantity         BIGINT  NOT NULL CHECK (quantity > 0),
    unit_price_minor BIGINT  NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, line_no)
);
