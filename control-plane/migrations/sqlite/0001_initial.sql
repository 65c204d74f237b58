-- Diplo control-plane state, SQLite backend.
-- Timestamps are unix milliseconds (BIGINT); labels and fingerprints are JSON text.
-- Keep in step with migrations/postgres/0001_initial.sql: same tables, same semantics.

CREATE TABLE nodes (
    id           TEXT    NOT NULL PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    status       TEXT    NOT NULL CHECK (status IN ('ready', 'unhealthy', 'down')),
    fingerprint  TEXT    NOT NULL,
    cordoned     BOOLEAN NOT NULL DEFAULT FALSE,
    labels       TEXT    NOT NULL DEFAULT '{}',
    joined_at    BIGINT  NOT NULL,
    last_seen_at BIGINT  NOT NULL,
    address      TEXT    NOT NULL DEFAULT ''
);

CREATE TABLE join_tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    secret_hash TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    single_use  BOOLEAN NOT NULL,
    uses        BIGINT  NOT NULL DEFAULT 0 CHECK (uses >= 0),
    revoked     BOOLEAN NOT NULL DEFAULT FALSE,
    labels      TEXT    NOT NULL DEFAULT '{}'
);

CREATE INDEX join_tokens_created_at ON join_tokens (created_at);

CREATE TABLE api_tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    secret_hash TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('admin', 'deployer', 'viewer')),
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT,
    revoked     BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE INDEX api_tokens_created_at ON api_tokens (created_at);

-- AUTOINCREMENT: sequence numbers are never reused, even after the newest row is deleted.
CREATE TABLE events (
    sequence INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at       BIGINT  NOT NULL,
    kind     TEXT    NOT NULL,
    actor    TEXT    NOT NULL,
    subject  TEXT    NOT NULL,
    message  TEXT    NOT NULL
);
