//! PostgreSQL backend: production, several control-plane replicas sharing one database.
//!
//! Same schema and semantics as the SQLite backend: timestamps are unix milliseconds
//! (sub-millisecond precision is dropped), labels, fingerprints and deployment specs JSON
//! text. The conditional `UPDATE` in [`Store::use_join_token`] is atomic: under READ
//! COMMITTED a racing update waits for the row lock and re-checks its `WHERE` on the
//! new row.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diplo_api::fingerprint::Fingerprint;
use diplo_api::runtime::Runtime;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection};

use super::rows::{
    api_token_from_row, deployment_from_row, desired_str, event_from_row, from_json,
    insert_conflict, insert_error, insert_instance_error, instance_from_row, instance_status_str,
    join_token_from_row, millis, node_from_row, require_found, sequence, to_json,
};
use super::{Store, StoreError, StoreResult, mask_password};
use crate::model::{
    ApiTokenRecord, DeploymentRecord, DeploymentSpec, EventRecord, InstanceRecord, JoinTokenRecord,
    NewEvent, NodeRecord, NodeStatusChange,
};

/// How long opening the pool (or any later acquire) waits for a connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the diagnostic connection attempt after a pool time-out may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections in the pool.
const MAX_CONNECTIONS: u32 = 10;

/// The PostgreSQL [`Store`]: a connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database a `postgres://…` URL names and runs the pending
    /// migrations. Fails within about 7 seconds, naming the URL (password masked),
    /// when the server cannot be reached.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let connect_error = |reason: String| StoreError::Connect {
            url: mask_password(url),
            reason,
        };
        let options = PgConnectOptions::from_str(url).map_err(|e| connect_error(e.to_string()))?;
        let pool = match PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => pool,
            Err(sqlx::Error::PoolTimedOut) => {
                // The pool retries refused connections until its deadline and then only
                // says it timed out: one more direct attempt tells why.
                let reason = match tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(conn)) => {
                        let _ = conn.close().await;
                        "server answered only after the pool timed out".to_owned()
                    }
                    Err(_) => "no answer".to_owned(),
                };
                return Err(connect_error(format!(
                    "timed out after {}s: {reason}",
                    ACQUIRE_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(connect_error(e.to_string())),
        };
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }

    /// Closes every connection of the pool; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Records a deployment's revision unless that revision is already recorded.
const INSERT_REVISION: &str = "INSERT INTO deployment_revisions \
     (deployment_id, revision, spec, created_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (deployment_id, revision) DO NOTHING";

/// Maps a failed write of `deployment` to `AlreadyExists` naming the taken key.
fn deployment_conflict(err: sqlx::Error, deployment: &DeploymentRecord) -> StoreError {
    insert_conflict(err, |db| {
        // PostgreSQL names the constraint, e.g. `deployments_name_key`.
        let violated = db.constraint().unwrap_or_else(|| db.message());
        if violated.contains("deployments_idempotency_key_key") {
            let key = deployment.idempotency_key.clone().unwrap_or_default();
            ("idempotency key", key)
        } else if violated.contains("deployments_name_key") {
            ("deployment", deployment.spec.name.clone())
        } else {
            ("deployment", deployment.id.clone())
        }
    })
}

// ---- query steps shared by the methods below ----

impl PostgresStore {
    /// Runs `sql` with `key` bound to `$1`; returns whether it changed any row.
    async fn execute_keyed(&self, sql: &'static str, key: &str) -> StoreResult<bool> {
        let done = sqlx::query(sql).bind(key).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Runs `sql` with `key` bound to `$1` and decodes the row it returns, if any.
    async fn fetch_keyed<T>(
        &self,
        sql: &'static str,
        key: &str,
        decode: fn(&PgRow) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Runs `sql` and decodes every row it returns.
    async fn fetch_all<T>(
        &self,
        sql: &'static str,
        decode: fn(&PgRow) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(decode).collect()
    }

    /// Runs `sql` with `key` bound to `$1` and decodes every row it returns.
    async fn fetch_all_keyed<T>(
        &self,
        sql: &'static str,
        key: &str,
        decode: fn(&PgRow) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let rows = sqlx::query(sql).bind(key).fetch_all(&self.pool).await?;
        rows.iter().map(decode).collect()
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    // ---- nodes ----

    async fn insert_node(&self, node: &NodeRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO nodes (id, name, status, fingerprint, cordoned, labels, joined_at, \
             last_seen_at, address) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&node.id)
        .bind(&node.name)
        .bind(node.status.as_str())
        .bind(to_json("nodes.fingerprint", &node.fingerprint)?)
        .bind(node.cordoned)
        .bind(to_json("nodes.labels", &node.labels)?)
        .bind(millis(node.joined_at))
        .bind(millis(node.last_seen_at))
        .bind(&node.address)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            insert_error(e, "node", |db| {
                // PostgreSQL names the constraint, e.g. `nodes_name_key`.
                let violated = db.constraint().unwrap_or_else(|| db.message());
                if violated.contains("nodes_name_key") {
                    node.name.clone()
                } else {
                    node.id.clone()
                }
            })
        })?;
        Ok(())
    }

    async fn get_node(&self, id_or_name: &str) -> StoreResult<Option<NodeRecord>> {
        self.fetch_keyed(
            "SELECT id, name, status, fingerprint, cordoned, labels, joined_at, last_seen_at, \
             address FROM nodes WHERE id = $1 OR name = $1 \
             ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1",
            id_or_name,
            node_from_row,
        )
        .await
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        self.fetch_all(
            "SELECT id, name, status, fingerprint, cordoned, labels, joined_at, last_seen_at, \
             address FROM nodes ORDER BY name",
            node_from_row,
        )
        .await
    }

    async fn record_session(
        &self,
        node_id: &str,
        fingerprint: &Fingerprint,
        address: &str,
        seen_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE nodes SET fingerprint = $1, address = $2, status = 'ready', \
             last_seen_at = $3 WHERE id = $4",
        )
        .bind(to_json("nodes.fingerprint", fingerprint)?)
        .bind(address)
        .bind(millis(seen_at))
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        require_found(done.rows_affected(), "node", node_id)
    }

    async fn apply_status_changes(&self, changes: &[NodeStatusChange]) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for change in changes {
            sqlx::query("UPDATE nodes SET status = $1, last_seen_at = $2 WHERE id = $3")
                .bind(change.status.as_str())
                .bind(millis(change.last_seen_at))
                .bind(&change.node_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn set_cordoned(&self, node_id: &str, cordoned: bool) -> StoreResult<()> {
        let done = sqlx::query("UPDATE nodes SET cordoned = $1 WHERE id = $2")
            .bind(cordoned)
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        require_found(done.rows_affected(), "node", node_id)
    }

    async fn delete_node(&self, node_id: &str) -> StoreResult<bool> {
        self.execute_keyed("DELETE FROM nodes WHERE id = $1", node_id)
            .await
    }

    // ---- join tokens ----

    async fn insert_join_token(&self, token: &JoinTokenRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_hash, created_at, expires_at, single_use, uses, \
             revoked, labels) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&token.id)
        .bind(&token.secret_hash)
        .bind(millis(token.created_at))
        .bind(millis(token.expires_at))
        .bind(token.single_use)
        .bind(i64::from(token.uses))
        .bind(token.revoked)
        .bind(to_json("join_tokens.labels", &token.labels)?)
        .execute(&self.pool)
        .await
        .map_err(|e| insert_error(e, "join token", |_| token.id.clone()))?;
        Ok(())
    }

    async fn get_join_token(&self, id: &str) -> StoreResult<Option<JoinTokenRecord>> {
        self.fetch_keyed(
            "SELECT id, secret_hash, created_at, expires_at, single_use, uses, revoked, labels \
             FROM join_tokens WHERE id = $1",
            id,
            join_token_from_row,
        )
        .await
    }

    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>> {
        self.fetch_all(
            "SELECT id, secret_hash, created_at, expires_at, single_use, uses, revoked, labels \
             FROM join_tokens ORDER BY created_at DESC, id DESC",
            join_token_from_row,
        )
        .await
    }

    async fn use_join_token(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        // One statement: a racing update of the same row waits for its lock and then
        // re-evaluates the condition, so two joins cannot both see `uses = 0`.
        let done = sqlx::query(
            "UPDATE join_tokens SET uses = uses + 1 WHERE id = $1 AND NOT revoked \
             AND expires_at > $2 AND (NOT single_use OR uses = 0)",
        )
        .bind(id)
        .bind(millis(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_join_token(&self, id: &str) -> StoreResult<bool> {
        self.execute_keyed("UPDATE join_tokens SET revoked = TRUE WHERE id = $1", id)
            .await
    }

    // ---- API tokens ----

    async fn insert_api_token(&self, token: &ApiTokenRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, secret_hash, name, role, created_at, expires_at, \
             revoked) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.id)
        .bind(&token.secret_hash)
        .bind(&token.name)
        .bind(token.role.as_str())
        .bind(millis(token.created_at))
        .bind(token.expires_at.map(millis))
        .bind(token.revoked)
        .execute(&self.pool)
        .await
        .map_err(|e| insert_error(e, "API token", |_| token.id.clone()))?;
        Ok(())
    }

    async fn get_api_token(&self, id: &str) -> StoreResult<Option<ApiTokenRecord>> {
        self.fetch_keyed(
            "SELECT id, secret_hash, name, role, created_at, expires_at, revoked \
             FROM api_tokens WHERE id = $1",
            id,
            api_token_from_row,
        )
        .await
    }

    async fn list_api_tokens(&self) -> StoreResult<Vec<ApiTokenRecord>> {
        self.fetch_all(
            "SELECT id, secret_hash, name, role, created_at, expires_at, revoked \
             FROM api_tokens ORDER BY created_at DESC, id DESC",
            api_token_from_row,
        )
        .await
    }

    async fn revoke_api_token(&self, id: &str) -> StoreResult<bool> {
        self.execute_keyed("UPDATE api_tokens SET revoked = TRUE WHERE id = $1", id)
            .await
    }

    // ---- events ----

    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
        // BIGSERIAL values are handed out before commit, so two concurrent appends could
        // commit out of sequence order and a reader paging with `after` would skip one.
        // The table lock (self-conflicting, readers unaffected) makes sequence order
        // commit order, across replicas too.
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let value: i64 = sqlx::query_scalar(
            "INSERT INTO events (at, kind, actor, subject, message) \
             VALUES ($1, $2, $3, $4, $5) RETURNING sequence",
        )
        .bind(millis(event.at))
        .bind(&event.kind)
        .bind(&event.actor)
        .bind(&event.subject)
        .bind(&event.message)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        sequence(value)
    }

    async fn list_events(&self, after: u64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT sequence, at, kind, actor, subject, message FROM events \
             WHERE sequence > $1 ORDER BY sequence LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    // ---- deployments ----

    async fn create_deployment(&self, deployment: &DeploymentRecord) -> StoreResult<()> {
        let spec = to_json("deployments.spec", &deployment.spec)?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO deployments (id, name, revision, spec, status, message, \
             idempotency_key, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&deployment.id)
        .bind(&deployment.spec.name)
        .bind(i64::from(deployment.revision))
        .bind(&spec)
        .bind(deployment.status.as_str())
        .bind(&deployment.message)
        .bind(deployment.idempotency_key.as_deref())
        .bind(millis(deployment.created_at))
        .bind(millis(deployment.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| deployment_conflict(e, deployment))?;
        sqlx::query(INSERT_REVISION)
            .bind(&deployment.id)
            .bind(i64::from(deployment.revision))
            .bind(&spec)
            .bind(millis(deployment.created_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_deployment(&self, id_or_name: &str) -> StoreResult<Option<DeploymentRecord>> {
        self.fetch_keyed(
            "SELECT id, revision, spec, status, message, idempotency_key, created_at, \
             updated_at FROM deployments WHERE id = $1 OR name = $1 \
             ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1",
            id_or_name,
            deployment_from_row,
        )
        .await
    }

    async fn find_deployment_by_key(
        &self,
        idempotency_key: &str,
    ) -> StoreResult<Option<DeploymentRecord>> {
        self.fetch_keyed(
            "SELECT id, revision, spec, status, message, idempotency_key, created_at, \
             updated_at FROM deployments WHERE idempotency_key = $1",
            idempotency_key,
            deployment_from_row,
        )
        .await
    }

    async fn list_deployments(&self) -> StoreResult<Vec<DeploymentRecord>> {
        self.fetch_all(
            "SELECT id, revision, spec, status, message, idempotency_key, created_at, \
             updated_at FROM deployments ORDER BY name",
            deployment_from_row,
        )
        .await
    }

    async fn save_deployment(&self, deployment: &DeploymentRecord) -> StoreResult<()> {
        // The idempotency key and the creation time belong to the creating request and
        // are kept; the name follows the spec.
        let spec = to_json("deployments.spec", &deployment.spec)?;
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE deployments SET name = $1, revision = $2, spec = $3, status = $4, \
             message = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(&deployment.spec.name)
        .bind(i64::from(deployment.revision))
        .bind(&spec)
        .bind(deployment.status.as_str())
        .bind(&deployment.message)
        .bind(millis(deployment.updated_at))
        .bind(&deployment.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| deployment_conflict(e, deployment))?;
        require_found(done.rows_affected(), "deployment", &deployment.id)?;
        sqlx::query(INSERT_REVISION)
            .bind(&deployment.id)
            .bind(i64::from(deployment.revision))
            .bind(&spec)
            .bind(millis(deployment.updated_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_revision(
        &self,
        deployment_id: &str,
        revision: u32,
    ) -> StoreResult<Option<DeploymentSpec>> {
        let spec: Option<String> = sqlx::query_scalar(
            "SELECT spec FROM deployment_revisions WHERE deployment_id = $1 AND revision = $2",
        )
        .bind(deployment_id)
        .bind(i64::from(revision))
        .fetch_optional(&self.pool)
        .await?;
        spec.map(|text| from_json("deployment_revisions.spec", &text))
            .transpose()
    }

    async fn delete_deployment(&self, deployment_id: &str) -> StoreResult<bool> {
        // Children first and explicitly, rather than relying on ON DELETE CASCADE.
        let mut tx = self.pool.begin().await?;
        for sql in [
            "DELETE FROM instances WHERE deployment_id = $1",
            "DELETE FROM deployment_revisions WHERE deployment_id = $1",
        ] {
            sqlx::query(sql)
                .bind(deployment_id)
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query("DELETE FROM deployments WHERE id = $1")
            .bind(deployment_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- instances ----

    async fn insert_instances(&self, instances: &[InstanceRecord]) -> StoreResult<()> {
        if instances.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for instance in instances {
            sqlx::query(
                "INSERT INTO instances (id, deployment_id, revision, node_id, runtime, \
                 container_id, desired, status, message, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&instance.id)
            .bind(&instance.deployment_id)
            .bind(i64::from(instance.revision))
            .bind(instance.node_id.as_deref())
            .bind(instance.runtime.map(Runtime::name))
            .bind(instance.container_id.as_deref())
            .bind(desired_str(instance.desired))
            .bind(instance_status_str(instance.status))
            .bind(&instance.message)
            .bind(millis(instance.created_at))
            .bind(millis(instance.updated_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_instance_error(e, instance))?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn update_instances(&self, instances: &[InstanceRecord]) -> StoreResult<()> {
        // The deployment and the creation time of an instance never change.
        if instances.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for instance in instances {
            sqlx::query(
                "UPDATE instances SET revision = $1, node_id = $2, runtime = $3, \
                 container_id = $4, desired = $5, status = $6, message = $7, updated_at = $8 \
                 WHERE id = $9",
            )
            .bind(i64::from(instance.revision))
            .bind(instance.node_id.as_deref())
            .bind(instance.runtime.map(Runtime::name))
            .bind(instance.container_id.as_deref())
            .bind(desired_str(instance.desired))
            .bind(instance_status_str(instance.status))
            .bind(&instance.message)
            .bind(millis(instance.updated_at))
            .bind(&instance.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_instances(
        &self,
        deployment_id: Option<&str>,
    ) -> StoreResult<Vec<InstanceRecord>> {
        match deployment_id {
            Some(deployment_id) => {
                self.fetch_all_keyed(
                    "SELECT id, deployment_id, revision, node_id, runtime, container_id, \
                     desired, status, message, created_at, updated_at FROM instances \
                     WHERE deployment_id = $1 ORDER BY created_at, id",
                    deployment_id,
                    instance_from_row,
                )
                .await
            }
            None => {
                self.fetch_all(
                    "SELECT id, deployment_id, revision, node_id, runtime, container_id, \
                     desired, status, message, created_at, updated_at FROM instances \
                     ORDER BY created_at, id",
                    instance_from_row,
                )
                .await
            }
        }
    }

    async fn delete_instances(&self, ids: &[String]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("DELETE FROM instances WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
