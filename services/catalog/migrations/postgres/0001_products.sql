-- Products, keyed by SKU. Prices are integer minor units; times are epoch milliseconds;
-- `active` is 0/1 so the same SQL decodes on SQLite; `revision` counts changes and is the etag.
-- COLLATE "C" makes SKUs sort byte-wise, as on SQLite, whatever the database's locale: the
-- order ListProducts pages in.
CREATE TABLE products (
    sku              TEXT    COLLATE "C" PRIMARY KEY,
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
