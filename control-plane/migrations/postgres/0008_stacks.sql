-- Stacks: compose files deployed as a group of deployments named <stack>-<service>.
-- `source` is the compose document as sent; `spec` the validated stack (JSON), from
-- which the stack's rollout creates each service's deployment in dependency order.
-- Keep in step with the SQLite migration.
CREATE TABLE IF NOT EXISTS stacks (
    name       TEXT   NOT NULL PRIMARY KEY,
    source     TEXT   NOT NULL,
    spec       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
