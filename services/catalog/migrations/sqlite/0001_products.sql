-- Products, keyed by SKU. Prices are integer minor units; times are epoch milliseconds;
-- `active` is 0/1 (sqlx Any decodes no SQLite boolean); `revision` counts changes and is the
-- etag. SQLite compares TEXT byte-wise (BINARY), the order ListProducts pages in.
CREATE TABLE products (
    sku              TEXT    PRIMARY KEY,
    display_name     TEXT    NOT NULL,
    unit_price_minor BIGINT  NOT NULL CHECK (unit_price_minor > 0),
    currency_code    TEXT    NOT NULL,
    active           BIGINT  NOT NULL CHECK (active IN (0, 1)),
    revision         BIGINT  NOT NULL CHECK (revision > 0),
    create_time_ms   BIGINT  NOT NULL,
    update_time_ms   BIGINT  NOT NULL
);

-- ListProducts filtered on `active` walks this index in SKU order.
CREATE INDEX products_active_sku ON products (active, sku);
