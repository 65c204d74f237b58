-- Credentials for image registries, one per registry (host[:port]). The password is
-- sealed by the control plane (ChaCha20-Poly1305 under the key file
-- registry-credentials.key in its data directory) before it is written here.
CREATE TABLE IF NOT EXISTS registry_credentials (
    registry   TEXT   NOT NULL PRIMARY KEY,
    username   TEXT   NOT NULL,
    password   TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
