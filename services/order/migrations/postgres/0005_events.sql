-- Events (issue 27). The outbox: each event the order service publishes is a row written in the
-- same statement as the state change it reports, published by the relay in `seq` order per
-- subject (order), then marked; replicas claim rows FOR UPDATE SKIP LOCKED. The inbox: the ids
-- of the inventory events already acted on. The fulfilment: what the inventory service did
-- with a paid order, from its events.
CREATE TABLE outbox (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT      NOT NULL UNIQUE,
    event_type      TEXT      NOT NULL,
    subject         TEXT      NOT NULL,
    body            TEXT      NOT NULL,
    traceparent     TEXT,
    created_at_ms   BIGINT    NOT NULL,
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
-- time}, see `Outbox::json`); this trigger writes it to the outbox and clears it before the
-- row is stored, in the same statement (the same path as SQLite's trigger, so the store
-- has one statement for both engines).
ALTER TABLE orders ADD COLUMN new_event TEXT;

CREATE FUNCTION orders_new_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
BEGIN
    IF NEW.new_event IS NOT NULL THEN
        e := NEW.new_event::jsonb;
        INSERT INTO outbox (id, event_type, subject, body, traceparent, created_at_ms)
        VALUES (e->>'id', e->>'type', NEW.id, e->>'body', e->>'traceparent', (e->>'time')::bigint);
        NEW.new_event := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER orders_new_event BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION orders_new_event();
