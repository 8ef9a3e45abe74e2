-- Charge and refund request ids are the caller's keys within one order, not across every
-- payment: one caller's key must not collide with another order's. SQLite cannot drop a
-- column's UNIQUE constraint, so the table is rebuilt.
CREATE TABLE payments_v2 (
    id                TEXT    PRIMARY KEY,
    request_id        TEXT    NOT NULL,
    order_id          TEXT    NOT NULL,
    user_id           TEXT    NOT NULL,
    amount_minor      BIGINT  NOT NULL CHECK (amount_minor > 0),
    currency_code     TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('PROCESSING', 'SUCCEEDED', 'DECLINED', 'REFUNDED')),
    decline_reason    TEXT,
    refund_request_id TEXT,
    create_time_ms    BIGINT  NOT NULL,
    update_time_ms    BIGINT  NOT NULL,
    UNIQUE (order_id, request_id),
    UNIQUE (order_id, refund_request_id)
);

INSERT INTO payments_v2 (id, request_id, order_id, user_id, amount_minor, currency_code, state,
    decline_reason, refund_request_id, create_time_ms, update_time_ms)
SELECT id, request_id, order_id, user_id, amount_minor, currency_code, state,
    decline_reason, refund_request_id, create_time_ms, update_time_ms
FROM payments;

DROP TABLE payments;
ALTER TABLE payments_v2 RENAME TO payments;

CREATE INDEX payments_by_order ON payments (order_id, id);
