-- A Refund claims its payment before asking the processor: SUCCEEDED -> REFUNDING under the
-- refund's request id, owned by that call until `lease_until_ms` (the same lease column a
-- Charge uses while PROCESSING), then REFUNDED. Of concurrent Refunds of one payment exactly
-- one claims it, whatever their keys; a claim left behind by a crash is taken over by the
-- next Refund once its lease runs out, and finished under the same processor key. SQLite
-- cannot change a CHECK constraint, so the table is rebuilt.
CREATE TABLE payments_v4 (
    id                TEXT    PRIMARY KEY,
    request_id        TEXT    NOT NULL,
    order_id          TEXT    NOT NULL,
    user_id           TEXT    NOT NULL,
    amount_minor      BIGINT  NOT NULL CHECK (amount_minor > 0),
    currency_code     TEXT    NOT NULL,
    state             TEXT    NOT NULL
        CHECK (state IN ('PROCESSING', 'SUCCEEDED', 'DECLINED', 'REFUNDING', 'REFUNDED')),
    decline_reason    TEXT,
    refund_request_id TEXT,
    create_time_ms    BIGINT  NOT NULL,
    update_time_ms    BIGINT  NOT NULL,
    lease_until_ms    BIGINT  NOT NULL DEFAULT 0,
    UNIQUE (order_id, request_id),
    UNIQUE (order_id, refund_request_id)
);

INSERT INTO payments_v4 (id, request_id, order_id, user_id, amount_minor, currency_code, state,
    decline_reason, refund_request_id, create_time_ms, update_time_ms, lease_until_ms)
SELECT id, request_id, order_id, user_id, amount_minor, currency_code, state,
    decline_reason, refund_request_id, create_time_ms, update_time_ms, lease_until_ms
FROM payments;

DROP TABLE payments;
ALTER TABLE payments_v4 RENAME TO payments;

CREATE INDEX payments_by_order ON payments (order_id, id);
