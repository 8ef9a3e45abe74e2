-- Stock per SKU, never negative: an allocation takes units off on_hand only where enough are
-- left (a conditional UPDATE), so concurrent consumers cannot oversell.
CREATE TABLE stock (
    sku            TEXT   PRIMARY KEY,
    on_hand        BIGINT NOT NULL CHECK (on_hand >= 0),
    allocated      BIGINT NOT NULL DEFAULT 0 CHECK (allocated >= 0),
    update_time_ms BIGINT NOT NULL
);

-- What became of each paid order, and the units allocated to it (returned on cancel).
CREATE TABLE fulfilments (
    order_id       TEXT   PRIMARY KEY,
    user_id        TEXT   NOT NULL,
    state          TEXT   NOT NULL CHECK (state IN ('ALLOCATED', 'BACKORDERED', 'RELEASED', 'CANCELLED')),
    reason         TEXT,
    update_time_ms BIGINT NOT NULL
);

CREATE TABLE allocations (
    order_id TEXT   NOT NULL REFERENCES fulfilments (order_id),
    sku      TEXT   NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);

-- The events this service publishes (see src/mesh/events/outbox.rs) and the order events it
-- has acted on (src/mesh/events/inbox.rs).
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT   NOT NULL UNIQUE,
    event_type      TEXT   NOT NULL,
    subject         TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    traceparent     TEXT,
    created_at_ms   BIGINT NOT NULL,
    published_at_ms BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (subject, seq) WHERE published_at_ms IS NULL;

CREATE TABLE inbox (
    consumer       TEXT   NOT NULL,
    event_id       TEXT   NOT NULL,
    received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
