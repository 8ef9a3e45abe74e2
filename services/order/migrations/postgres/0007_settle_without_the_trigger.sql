-- The settle writes its OrderPaid to the outbox from a data-modifying CTE (`POSTGRES_SETTLE` in
-- src/store.rs), no longer through `new_event` and the trigger; the cancel still uses them. The
-- trigger now runs only when an update sets `new_event`, so the settle, the fulfilments and the
-- reconciler's updates no longer call PL/pgSQL for nothing.
DROP TRIGGER orders_new_event ON orders;
CREATE TRIGGER orders_new_event BEFORE UPDATE ON orders FOR EACH ROW
    WHEN (NEW.new_event IS NOT NULL) EXECUTE FUNCTION orders_new_event();
