-- Credentials for image registries, one per registry (host[:port]). The password is
-- stored as given: whoever reads the database or its backups reads it.
CREATE TABLE IF NOT EXISTS registry_credentials (
    registry   TEXT   NOT NULL PRIMARY KEY,
    username   TEXT   NOT NULL,
    password   TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
