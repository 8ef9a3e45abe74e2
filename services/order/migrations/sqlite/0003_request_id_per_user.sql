-- A request id is the caller's key among its own orders: one user's key must neither block
-- another user's CreateOrder nor tell them it is in use, so it is unique per user, not across
-- all orders. SQLite cannot drop a column's UNIQUE constraint, so the tables are rebuilt; the
-- lines too, so that their foreign key follows the renamed table and never dangles.
CREATE TABLE orders_v3 (
    id                 TEXT    PRIMARY KEY,
    request_id         TEXT,
    user_id            TEXT    NOT NULL,
    currency_code      TEXT    NOT NULL,
    total_minor        BIGINT  NOT NULL CHECK (total_minor > 0),
    state              TEXT    NOT NULL CHECK (state IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_DECLINED', 'CANCELLED')),
    payment_id         TEXT,
    decline_reason     TEXT,
    cancel_request_id  TEXT,
    create_time_ms     BIGINT  NOT NULL,
    update_time_ms     BIGINT  NOT NULL,
    reconcile_attempts BIGINT  NOT NULL DEFAULT 0,
    next_attempt_ms    BIGINT  NOT NULL DEFAULT 0,
    lease_owner        TEXT,
    lease_until_ms     BIGINT  NOT NULL DEFAULT 0,
    UNIQUE (user_id, request_id)
);

INSERT INTO orders_v3 (id, request_id, user_id, currency_code, total_minor, state, payment_id,
    decline_reason, cancel_request_id, create_time_ms, update_time_ms, reconcile_attempts,
    next_attempt_ms, lease_owner, lease_until_ms)
SELECT id, request_id, user_id, currency_code, total_minor, state, payment_id,
    decline_reason, cancel_request_id, create_time_ms, update_time_ms, reconcile_attempts,
    next_attempt_ms, lease_owner, lease_until_ms
FROM orders;

CREATE TABLE order_items_v3 (
    order_id         TEXT    NOT NULL REFERENCES orders_v3 (id),
    line_no          BIGINT  NOT NULL,
    sku              TEXT    NOT NULL,
    quantity         BIGINT  NOT NULL CHECK (quantity > 0),
    unit_price_minor BIGINT  NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, line_no)
);

INSERT INTO order_items_v3 (order_id, line_no, sku, quantity, unit_price_minor)
SELECT order_id, line_no, sku, quantity, unit_price_minor FROM order_items;

DROP TABLE order_items;
DROP TABLE orders;
-- Renaming rewrites order_items_v3's foreign key to name `orders`.
ALTER TABLE orders_v3 RENAME TO orders;
ALTER TABLE order_items_v3 RENAME TO order_items;

CREATE INDEX orders_by_user ON orders (user_id, id);
CREATE INDEX orders_due ON orders (state, next_attempt_ms);
