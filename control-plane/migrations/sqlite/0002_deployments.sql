-- Deployments, their revision history and their instances, SQLite backend.
-- Timestamps are unix milliseconds (BIGINT); specs are JSON text.
-- Keep in step with migrations/postgres/0002_deployments.sql: same tables, same semantics.
-- Children reference their deployment with ON DELETE CASCADE (the pool enables foreign
-- keys); the store also deletes them explicitly, in the same transaction.

CREATE TABLE deployments (
    id              TEXT   NOT NULL PRIMARY KEY,
    -- The spec's name, kept in a column of its own for uniqueness and look-ups.
    name            TEXT   NOT NULL UNIQUE,
    revision        BIGINT NOT NULL CHECK (revision >= 0),
    spec            TEXT   NOT NULL,
    status          TEXT   NOT NULL
                    CHECK (status IN ('deploying', 'running', 'degraded', 'deleting')),
    message         TEXT   NOT NULL DEFAULT '',
    -- NULL for deployments created without a key; several NULLs never conflict.
    idempotency_key TEXT   UNIQUE,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE deployment_revisions (
    deployment_id TEXT   NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    revision      BIGINT NOT NULL CHECK (revision >= 0),
    spec          TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, revision)
);

CREATE TABLE instances (
    id            TEXT   NOT NULL PRIMARY KEY,
    deployment_id TEXT   NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    revision      BIGINT NOT NULL CHECK (revision >= 0),
    node_id       TEXT,
    runtime       TEXT,
    container_id  TEXT,
    desired       TEXT   NOT NULL CHECK (desired IN ('run', 'remove')),
    status        TEXT   NOT NULL
                  CHECK (status IN ('pending', 'starting', 'running', 'failed', 'lost')),
    message       TEXT   NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE INDEX instances_deployment_id ON instances (deployment_id);
