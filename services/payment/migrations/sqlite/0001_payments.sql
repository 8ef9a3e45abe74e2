-- One row per Charge request_id. A row is written PROCESSING before the processor is called, so
-- a retry or a concurrent duplicate finds it and can never start a second charge.
CREATE TABLE payments (
    id                TEXT    PRIMARY KEY,
    request_id        TEXT    NOT NULL UNIQUE,
    order_id          TEXT    NOT NULL,
    user_id           TEXT    NOT NULL,
    amount_minor      BIGINT  NOT NULL CHECK (amount_minor > 0),
    currency_code     TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('PROCESSING', 'SUCCEEDED', 'DECLINED', 'REFUNDED')),
    decline_reason    TEXT,
    refund_request_id TEXT    UNIQUE,
    create_time_ms    BIGINT  NOT NULL,
    update_time_ms    BIGINT  NOT NULL
);

CREATE INDEX payments_by_order ON payments (order_id, id);
