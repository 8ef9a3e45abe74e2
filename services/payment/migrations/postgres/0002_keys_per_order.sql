-- Charge and refund request ids are the caller's keys within one order, not across every
-- payment: one caller's key must not collide with another order's.
ALTER TABLE payments DROP CONSTRAINT payments_request_id_key;
ALTER TABLE payments DROP CONSTRAINT payments_refund_request_id_key;
ALTER TABLE payments ADD CONSTRAINT payments_order_request_id_key UNIQUE (order_id, request_id);
ALTER TABLE payments ADD CONSTRAINT payments_order_refund_request_id_key UNIQUE (order_id, refund_request_id);
