-- Deployments built from source: statuses 'building' (its image is being built) and
-- 'failed' (its first build failed). Keep in step with the PostgreSQL migration.
--
-- SQLite cannot alter a CHECK constraint. Rebuilding the table would cascade to its
-- children (foreign keys are on), so the constraint's text is widened in place, the
-- documented procedure for changes that leave the stored data valid (the new CHECK
-- accepts every value the old one did); the table created and dropped after it bumps the
-- schema version so that every connection reads the new schema.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql,
                     'CHECK (status IN (''deploying'', ''running'', ''degraded'', ''deleting''))',
                     'CHECK (status IN (''building'', ''failed'', ''deploying'', ''running'', ''degraded'', ''deleting''))')
 WHERE type = 'table' AND name = 'deployments';
PRAGMA writable_schema = OFF;
CREATE TABLE schema_bump_0007 (x INTEGER);
DROP TABLE schema_bump_0007;
