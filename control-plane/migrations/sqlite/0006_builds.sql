-- Builds of images from git, SQLite backend.
-- Keep in step with migrations/postgres/0006_builds.sql: same table, same semantics.
-- `record` is the whole build as JSON text; `status` repeats its status so that a
-- write can be conditional on it (a final status is never overwritten). `log` is the
-- build's output once it ended (its last bytes).

CREATE TABLE builds (
    id            TEXT   NOT NULL PRIMARY KEY,
    status        TEXT   NOT NULL
                  CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    deployment_id TEXT,
    record        TEXT   NOT NULL,
    log           BLOB   NOT NULL DEFAULT x'',
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE INDEX builds_created_at ON builds (created_at);
