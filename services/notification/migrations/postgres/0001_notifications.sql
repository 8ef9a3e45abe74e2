-- The messages sent to users: one per order and kind, whatever the deliveries of the events
-- that caused them (the inbox below, and the UNIQUE constraint).
CREATE TABLE notifications (
    id                  TEXT   COLLATE "C" PRIMARY KEY,
    user_id             TEXT   NOT NULL,
    order_id            TEXT   NOT NULL,
    kind                TEXT   NOT NULL CHECK (kind IN ('CONFIRMED', 'BACKORDERED', 'CANCELLED')),
    body                TEXT   NOT NULL,
    provider_message_id TEXT   NOT NULL,
    send_time_ms        BIGINT NOT NULL,
    UNIQUE (order_id, kind)
);
CREATE INDEX notifications_by_user ON notifications (user_id, id);
CREATE INDEX notifications_by_order ON notifications (order_id, id);

-- The simulated mail provider's own ledger, keyed by the idempotency key the service sends
-- with each message (`<order>/<kind>`): a repeated send returns the first message's id, as a
-- provider with idempotency keys does. Written outside the notification's transaction.
CREATE TABLE mail_ledger (
    idempotency_key TEXT   PRIMARY KEY,
    message_id      TEXT   NOT NULL,
    recipient       TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    sent_at_ms      BIGINT NOT NULL
);

CREATE TABLE inbox (
    consumer       TEXT   NOT NULL,
    event_id       TEXT   NOT NULL,
    received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
