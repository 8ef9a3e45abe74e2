-- Events (issue 27). The outbox: each event the order service publishes is a row written in the
-- same statement as the state change it reports, published by the relay in `seq` order per
-- subject (order), then marked. The inbox: the ids of the inventory events already acted on.
-- The fulfilment: what the inventory service did with a paid order, from its events.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    traceparent     TEXT,
    created_at_ms   BIGINT  NOT NULL,
    published_at_ms BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (subject, seq) WHERE published_at_ms IS NULL;

CREATE TABLE inbox (
    consumer       TEXT   NOT NULL,
    event_id       TEXT   NOT NULL,
    received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

ALTER TABLE orders ADD COLUMN fulfilment TEXT;

-- The event of a state change rides in the UPDATE as JSON ({id, type, body, traceparent,
-- time}, see `Outbox::json`) and this trigger writes it to the outbox, as 0004 does for lines:
-- one statement, atomic with its trigger, so the settle stays one write on SQLite. An UPDATE
-- whose WHERE matched no row fires nothing.
ALTER TABLE orders ADD COLUMN new_event TEXT;

CREATE TRIGGER orders_new_event AFTER UPDATE OF new_event ON orders WHEN NEW.new_event IS NOT NULL
BEGIN
    INSERT INTO outbox (id, event_type, subject, body, traceparent, created_at_ms)
    VALUES (json_extract(NEW.new_event, '$.id'), json_extract(NEW.new_event, '$.type'), NEW.id,
            json_extract(NEW.new_event, '$.body'), json_extract(NEW.new_event, '$.traceparent'),
            json_extract(NEW.new_event, '$.time'));
    UPDATE orders SET new_event = NULL WHERE id = NEW.id;
END;
