-- One Charge at a time owns a PROCESSING payment: the one that wrote or claimed it, until
-- `lease_until_ms` by the database's clock. A duplicate meanwhile answers PROCESSING without
-- asking the processor; after it (the owner died) the next Charge claims the payment and
-- finishes it under the same processor key.
ALTER TABLE payments ADD COLUMN lease_until_ms BIGINT NOT NULL DEFAULT 0;
