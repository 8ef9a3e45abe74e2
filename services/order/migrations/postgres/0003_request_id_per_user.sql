-- A request id is the caller's key among its own orders: one user's key must neither block
-- another user's CreateOrder nor tell them it is in use, so it is unique per user, not across
-- all orders.
ALTER TABLE orders DROP CONSTRAINT orders_request_id_key;
ALTER TABLE orders ADD CONSTRAINT orders_user_request_id_key UNIQUE (user_id, request_id);
