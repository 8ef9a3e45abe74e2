-- Accounts. Times are epoch milliseconds; `active` is 0/1 so the same SQL decodes on SQLite.
CREATE TABLE users (
    id             TEXT    COLLATE "C" PRIMARY KEY,
    email          TEXT    NOT NULL UNIQUE,
    display_name   TEXT    NOT NULL,
    active         BIGINT  NOT NULL CHECK (active IN (0, 1)),
    request_id     TEXT    UNIQUE,
    create_time_ms BIGINT  NOT NULL,
    update_time_ms BIGINT  NOT NULL
);
