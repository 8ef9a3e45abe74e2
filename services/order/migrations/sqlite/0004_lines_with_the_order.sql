-- An order and its lines in one statement (PostgreSQL does it with a data-modifying WITH, which
-- SQLite lacks): the INSERT into orders carries the lines as JSON, [[sku, quantity,
-- unit_price_minor], ...] in line order, and this trigger writes them to order_items and clears
-- the column. One statement is atomic with its triggers, so no BEGIN and COMMIT around it: on
-- SQLite each of those was a hop to the connection's worker thread while the write lock was
-- held. An insert skipped by ON CONFLICT DO NOTHING fires no trigger and writes no lines.
ALTER TABLE orders ADD COLUMN new_lines TEXT;

CREATE TRIGGER orders_new_lines AFTER INSERT ON orders WHEN NEW.new_lines IS NOT NULL
BEGIN
    INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_minor)
    SELECT NEW.id, line.key, json_extract(line.value, '$[0]'), json_extract(line.value, '$[1]'),
           json_extract(line.value, '$[2]')
    FROM json_each(NEW.new_lines) AS line;
    UPDATE orders SET new_lines = NULL WHERE id = NEW.id;
END;
