-- The reconciler's index holds only what the reconciler reads: PENDING_PAYMENT orders, by when
-- they are next due. Over (state, next_attempt_ms) it held every order ever taken, and every
-- settle wrote the settled row's new entry into it (the settle changes `state`, so it is not a
-- HOT update in PostgreSQL, now as before); now the settle writes nothing into it, and the
-- index stays as small as the set of orders in flight. The reconciler's queries name the
-- state as a literal, so PostgreSQL's generic plans can use a partial index.
DROP INDEX orders_due;
CREATE INDEX orders_due ON orders (next_attempt_ms) WHERE state = 'PENDING_PAYMENT';
