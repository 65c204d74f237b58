-- Deployments built from source: statuses 'building' (its image is being built) and
-- 'failed' (its first build failed). Keep in step with the SQLite migration.
ALTER TABLE deployments DROP CONSTRAINT deployments_status_check;
ALTER TABLE deployments ADD CONSTRAINT deployments_status_check
    CHECK (status IN ('building', 'failed', 'deploying', 'running', 'degraded', 'deleting'));
