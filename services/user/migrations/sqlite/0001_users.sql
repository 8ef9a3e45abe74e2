-- Accounts. Times are epoch milliseconds; `active` is 0/1 (sqlx Any decodes no SQLite boolean).
CREATE TABLE users (
    id             TEXT    PRIMARY KEY,
    email          TEXT    NOT NULL UNIQUE,
    display_name   TEXT    NOT NULL,
    active         BIGINT  NOT NULL,
    request_id     TEXT    UNIQUE,
    create_time_ms BIGINT  NOT NULL,
    update_time_ms BIGINT  NOT NULL
);
