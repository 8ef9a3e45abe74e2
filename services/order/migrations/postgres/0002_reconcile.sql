-- Bookkeeping of the reconciler, which settles PENDING_PAYMENT orders whose charge outcome is
-- not known (a crash, a lost reply, payment down). An order is due once `next_attempt_ms` has
-- passed; a replica claims it by setting the lease, so only one works on it at a time, and a
-- lease that runs out (the replica died) frees it for another.
ALTER TABLE orders ADD COLUMN reconcile_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN next_attempt_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN lease_owner TEXT;
ALTER TABLE orders ADD COLUMN lease_until_ms BIGINT NOT NULL DEFAULT 0;

CREATE INDEX orders_due ON orders (state, next_attempt_ms);
