-- A Refund claims its payment before asking the processor: SUCCEEDED -> REFUNDING under the
-- refund's request id, owned by that call until `lease_until_ms` (the same lease column a
-- Charge uses while PROCESSING), then REFUNDED. Of concurrent Refunds of one payment exactly
-- one claims it, whatever their keys; a claim left behind by a crash is taken over by the
-- next Refund once its lease runs out, and finished under the same processor key.
ALTER TABLE payments DROP CONSTRAINT payments_state_check;
ALTER TABLE payments ADD CONSTRAINT payments_state_check
    CHECK (state IN ('PROCESSING', 'SUCCEEDED', 'DECLINED', 'REFUNDING', 'REFUNDED'));
