//! The [`Store`] methods whose SQL both dialects share, written once.
//!
//! Both backends bind with `$n` placeholders and store the same schema, so most
//! statements are the same text with the same binds on SQLite and PostgreSQL. The
//! [`impl_store!`] macro expands them, with the query steps they use, for one backend;
//! each backend passes in what differs: its driver, how a unique violation names the
//! taken key, and the methods whose SQL or locking is its own.
//!
//! [`Store`]: super::Store

/// The columns of `instances`, in the order the batch statements bind them.
pub(super) const INSTANCE_COLUMNS: &str =
    "id, deployment_id, revision, node_id, runtime, container_id, desired, status, message, created_at, updated_at";

/// Records a deployment's revision unless that revision is already recorded.
pub(super) const INSERT_REVISION: &str = "INSERT INTO deployment_revisions \
     (deployment_id, revision, spec, created_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (deployment_id, revision) DO NOTHING";

/// Implements [`Store`](super::Store) for a backend's store type: the shared methods
/// below plus the backend's own, given after `specific`.
///
/// - `store`: the store type; it has a field `pool` holding the backend's pool.
/// - `database`: the [`sqlx::Database`] of the backend.
/// - `backend`: the name [`Store::backend`](super::Store::backend) returns.
/// - `node_conflict`: `fn(sqlx::Error, &NodeRecord) -> StoreError`, mapping a failed
///   insert of a node (see [`insert_error`](super::rows::insert_error)).
/// - `deployment_conflict`: `fn(sqlx::Error, &DeploymentRecord) -> StoreError`, the
///   same for a write of a deployment.
/// - `specific`: the remaining [`Store`](super::Store) methods (`append_event` and the
///   batch writes of instances, whose fastest SQL differs: arrays on PostgreSQL,
///   multi-row statements on SQLite), written as in an `impl Store` block. They are
///   expanded next to the shared ones, so the imports below (model types, `StoreResult`,
///   the row helpers) are in scope, and they can call the query steps the macro adds to
///   the store type (`execute_keyed`, `fetch_keyed`, `fetch_all`, `fetch_all_keyed`,
///   `exists`, `instance_batch_error`, `insert_event`).
macro_rules! impl_store {
    (
        store: $store:ty,
        database: $db:ty,
        backend: $backend:literal,
        node_conflict: $node_conflict:path,
        deployment_conflict: $deployment_conflict:path,
        specific: { $($specific:tt)* } $(,)?
    ) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use diplo_api::fingerprint::Fingerprint;

            use $crate::model::{
                ApiTokenRecord, DeploymentRecord, DeploymentSpec, EventRecord, InstanceRecord,
                JoinTokenRecord, NewEvent, NodeRecord, NodeStatusChange,
            };
            use $crate::store::common::INSERT_REVISION;
            use $crate::store::rows::{
                api_token_from_row, build_from_row, deployment_from_row, event_from_row, from_json, insert_error,
                instance_from_row, join_token_from_row, millis, node_from_row, require_found, to_json,
            };
            use $crate::store::{Store, StoreError, StoreResult};

            // ---- query steps shared by the methods below ----

            impl $store {
                /// Runs `sql` with `key` bound to `$1`; returns whether it changed any row.
                async fn execute_keyed(&self, sql: &'static str, key: &str) -> StoreResult<bool> {
                    let done = sqlx::query(sql).bind(key).execute(self.serving()?).await?;
                    Ok(done.rows_affected() > 0)
                }

                /// Runs `sql` with `key` bound to `$1` and decodes the row it returns, if any.
                async fn fetch_keyed<T>(
                    &self,
                    sql: &'static str,
                    key: &str,
                    decode: fn(&<$db as sqlx::Database>::Row) -> StoreResult<T>,
                ) -> StoreResult<Option<T>> {
                    let row = sqlx::query(sql)
                        .bind(key)
                        .fetch_optional(self.serving()?)
                        .await?;
                    row.as_ref().map(decode).transpose()
                }

                /// Runs `sql` and decodes every row it returns.
                async fn fetch_all<T>(
                    &self,
                    sql: &'static str,
                    decode: fn(&<$db as sqlx::Database>::Row) -> StoreResult<T>,
                ) -> StoreResult<Vec<T>> {
                    let rows = sqlx::query(sql).fetch_all(self.serving()?).await?;
                    rows.iter().map(decode).collect()
                }

                /// Runs `sql` with `key` bound to `$1` and decodes every row it returns.
                async fn fetch_all_keyed<T>(
                    &self,
                    sql: &'static str,
                    key: &str,
                    decode: fn(&<$db as sqlx::Database>::Row) -> StoreResult<T>,
                ) -> StoreResult<Vec<T>> {
                    let rows = sqlx::query(sql).bind(key).fetch_all(self.serving()?).await?;
                    rows.iter().map(decode).collect()
                }

                /// Whether `sql` (with `key` bound to `$1`) returns a row.
                async fn exists(&self, sql: &'static str, key: &str) -> StoreResult<bool> {
                    Ok(sqlx::query(sql).bind(key).fetch_optional(self.serving()?).await?.is_some())
                }

                /// Maps the failure of inserting `instances` as one batch (nothing of it was
                /// inserted): a taken id to `AlreadyExists` naming the first instance whose id
                /// is stored or repeats an earlier one of the batch, a deployment id naming no
                /// deployment to `NotFound` naming the first such, anything else to `Database`.
                async fn instance_batch_error(&self, err: sqlx::Error, instances: &[InstanceRecord]) -> StoreError {
                    let sqlx::Error::Database(db) = &err else { return StoreError::Database(err) };
                    if db.is_unique_violation() {
                        let mut seen = std::collections::HashSet::new();
                        for instance in instances {
                            let taken = !seen.insert(instance.id.as_str())
                                || self.exists("SELECT 1 FROM instances WHERE id = $1", &instance.id).await.unwrap_or(false);
                            if taken {
                                return StoreError::AlreadyExists { what: "instance", key: instance.id.clone() };
                            }
                        }
                    } else if db.is_foreign_key_violation() {
                        let mut checked = std::collections::HashSet::new();
                        for instance in instances.iter().filter(|i| checked.insert(i.deployment_id.as_str())) {
                            let known = self.exists("SELECT 1 FROM deployments WHERE id = $1", &instance.deployment_id).await.unwrap_or(true);
                            if !known {
                                return StoreError::NotFound { what: "deployment", key: instance.deployment_id.clone() };
                            }
                        }
                    }
                    StoreError::Database(err)
                }

                /// Inserts `event` through `executor` (the pool or a transaction) and
                /// returns the sequence number it got, as stored.
                async fn insert_event<'e, E>(executor: E, event: &NewEvent) -> StoreResult<i64>
                where
                    E: sqlx::Executor<'e, Database = $db>,
                {
                    let value: i64 = sqlx::query_scalar(
                        "INSERT INTO events (at, kind, actor, subject, message) \
                         VALUES ($1, $2, $3, $4, $5) RETURNING sequence",
                    )
                    .bind(millis(event.at))
                    .bind(&event.kind)
                    .bind(&event.actor)
                    .bind(&event.subject)
                    .bind(&event.message)
                    .fetch_one(executor)
                    .await?;
                    Ok(value)
                }
            }

            #[async_trait]
            impl Store for $store {
                fn backend(&self) -> &'static str {
                    $backend
                }

                // ---- nodes ----

                async fn insert_node(&self, node: &NodeRecord) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO nodes (id, name, status, fingerprint, cordoned, labels, \
                         joined_at, last_seen_at, address) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
                    .execute(self.serving()?)
                    .await
                    .map_err(|e| $node_conflict(e, node))?;
                    Ok(())
                }

                async fn get_node(&self, id_or_name: &str) -> StoreResult<Option<NodeRecord>> {
                    self.fetch_keyed(
                        "SELECT id, name, status, fingerprint, cordoned, labels, joined_at, \
                         last_seen_at, address FROM nodes WHERE id = $1 OR name = $1 \
                         ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1",
                        id_or_name,
                        node_from_row,
                    )
                    .await
                }

                async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>> {
                    self.fetch_all(
                        "SELECT id, name, status, fingerprint, cordoned, labels, joined_at, \
                         last_seen_at, address FROM nodes ORDER BY name",
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
                    .execute(self.serving()?)
                    .await?;
                    require_found(done.rows_affected(), "node", node_id)
                }

                async fn apply_status_changes(
                    &self,
                    changes: &[NodeStatusChange],
                ) -> StoreResult<()> {
                    if changes.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.serving()?.begin().await?;
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
                        .execute(self.serving()?)
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
                        "INSERT INTO join_tokens (id, secret_hash, created_at, expires_at, \
                         single_use, uses, revoked, labels) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(&token.id)
                    .bind(&token.secret_hash)
                    .bind(millis(token.created_at))
                    .bind(millis(token.expires_at))
                    .bind(token.single_use)
                    .bind(i64::from(token.uses))
                    .bind(token.revoked)
                    .bind(to_json("join_tokens.labels", &token.labels)?)
                    .execute(self.serving()?)
                    .await
                    .map_err(|e| insert_error(e, "join token", |_| token.id.clone()))?;
                    Ok(())
                }

                async fn get_join_token(&self, id: &str) -> StoreResult<Option<JoinTokenRecord>> {
                    self.fetch_keyed(
                        "SELECT id, secret_hash, created_at, expires_at, single_use, uses, \
                         revoked, labels FROM join_tokens WHERE id = $1",
                        id,
                        join_token_from_row,
                    )
                    .await
                }

                async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>> {
                    self.fetch_all(
                        "SELECT id, secret_hash, created_at, expires_at, single_use, uses, \
                         revoked, labels FROM join_tokens ORDER BY created_at DESC, id DESC",
                        join_token_from_row,
                    )
                    .await
                }

                async fn use_join_token(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
                    // One statement, atomic on both backends: SQLite serialises writers, and in
                    // PostgreSQL a racing update of the same row waits for its lock and then
                    // re-evaluates the condition. So two joins cannot both see `uses = 0`.
                    let done = sqlx::query(
                        "UPDATE join_tokens SET uses = uses + 1 WHERE id = $1 AND NOT revoked \
                         AND expires_at > $2 AND (NOT single_use OR uses = 0)",
                    )
                    .bind(id)
                    .bind(millis(now))
                    .execute(self.serving()?)
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
                        "INSERT INTO api_tokens (id, secret_hash, name, role, created_at, \
                         expires_at, revoked) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(&token.id)
                    .bind(&token.secret_hash)
                    .bind(&token.name)
                    .bind(token.role.as_str())
                    .bind(millis(token.created_at))
                    .bind(token.expires_at.map(millis))
                    .bind(token.revoked)
                    .execute(self.serving()?)
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

                async fn list_events(
                    &self,
                    after: u64,
                    limit: u32,
                ) -> StoreResult<Vec<EventRecord>> {
                    let after = i64::try_from(after).unwrap_or(i64::MAX);
                    let rows = sqlx::query(
                        "SELECT sequence, at, kind, actor, subject, message FROM events \
                         WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                    )
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(self.serving()?)
                    .await?;
                    rows.iter().map(event_from_row).collect()
                }

                async fn prune_events(
                    &self,
                    older_than: Option<DateTime<Utc>>,
                    keep: Option<u64>,
                ) -> StoreResult<u64> {
                    let mut deleted = 0;
                    if let Some(cut) = older_than {
                        let done = sqlx::query("DELETE FROM events WHERE at < $1")
                            .bind(millis(cut))
                            .execute(self.serving()?)
                            .await?;
                        deleted += done.rows_affected();
                    }
                    if let Some(keep) = keep {
                        // The newest event beyond the `keep` newest, and all before it.
                        let done = sqlx::query(
                            "DELETE FROM events WHERE sequence <= \
                             (SELECT sequence FROM events ORDER BY sequence DESC LIMIT 1 OFFSET $1)",
                        )
                        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
                        .execute(self.serving()?)
                        .await?;
                        deleted += done.rows_affected();
                    }
                    Ok(deleted)
                }

                // ---- deployments ----

                async fn create_deployment(
                    &self,
                    deployment: &DeploymentRecord,
                ) -> StoreResult<()> {
                    let spec = to_json("deployments.spec", &deployment.spec)?;
                    let mut tx = self.serving()?.begin().await?;
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
                    .map_err(|e| $deployment_conflict(e, deployment))?;
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

                async fn get_deployment(
                    &self,
                    id_or_name: &str,
                ) -> StoreResult<Option<DeploymentRecord>> {
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
                    let mut tx = self.serving()?.begin().await?;
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
                    .map_err(|e| $deployment_conflict(e, deployment))?;
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
                        "SELECT spec FROM deployment_revisions \
                         WHERE deployment_id = $1 AND revision = $2",
                    )
                    .bind(deployment_id)
                    .bind(i64::from(revision))
                    .fetch_optional(self.serving()?)
                    .await?;
                    spec.map(|text| from_json("deployment_revisions.spec", &text))
                        .transpose()
                }

                async fn set_deployment_status(
                    &self,
                    read: &DeploymentRecord,
                    status: $crate::model::DeploymentStatus,
                    message: &str,
                    updated_at: DateTime<Utc>,
                ) -> StoreResult<bool> {
                    let done = sqlx::query(
                        "UPDATE deployments SET status = $1, message = $2, updated_at = $3 \
                         WHERE id = $4 AND revision = $5 AND status = $6 AND updated_at = $7",
                    )
                    .bind(status.as_str())
                    .bind(message)
                    .bind(millis(updated_at))
                    .bind(&read.id)
                    .bind(i64::from(read.revision))
                    .bind(read.status.as_str())
                    .bind(millis(read.updated_at))
                    .execute(self.serving()?)
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn delete_deployment(&self, deployment_id: &str) -> StoreResult<bool> {
                    // Children first and explicitly, rather than relying on ON DELETE CASCADE.
                    let mut tx = self.serving()?.begin().await?;
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

                async fn list_instances(
                    &self,
                    deployment_id: Option<&str>,
                ) -> StoreResult<Vec<InstanceRecord>> {
                    match deployment_id {
                        Some(deployment_id) => {
                            self.fetch_all_keyed(
                                "SELECT id, deployment_id, revision, node_id, runtime, \
                                 container_id, desired, status, message, created_at, updated_at \
                                 FROM instances \
                                 WHERE deployment_id = $1 ORDER BY created_at, id",
                                deployment_id,
                                instance_from_row,
                            )
                            .await
                        }
                        None => {
                            self.fetch_all(
                                "SELECT id, deployment_id, revision, node_id, runtime, \
                                 container_id, desired, status, message, created_at, updated_at \
                                 FROM instances \
                                 ORDER BY created_at, id",
                                instance_from_row,
                            )
                            .await
                        }
                    }
                }

                // ---- builds ----

                async fn insert_build(&self, build: &$crate::model::BuildRecord) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO builds (id, status, deployment_id, record, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&build.id)
                    .bind(build.status.as_str())
                    .bind(build.deployment_id.as_deref())
                    .bind(to_json("builds.record", build)?)
                    .bind(millis(build.created_at))
                    .bind(millis(Utc::now()))
                    .execute(self.serving()?)
                    .await
                    .map_err(|e| insert_error(e, "build", |_| build.id.clone()))?;
                    Ok(())
                }

                async fn get_build(&self, id: &str) -> StoreResult<Option<$crate::model::BuildRecord>> {
                    self.fetch_keyed("SELECT status, record FROM builds WHERE id = $1", id, build_from_row).await
                }

                async fn list_builds(&self, limit: u32) -> StoreResult<Vec<$crate::model::BuildRecord>> {
                    let rows = sqlx::query(
                        "SELECT status, record FROM builds ORDER BY created_at DESC, id DESC LIMIT $1",
                    )
                    .bind(i64::from(limit))
                    .fetch_all(self.serving()?)
                    .await?;
                    rows.iter().map(build_from_row).collect()
                }

                async fn update_build(
                    &self,
                    build: &$crate::model::BuildRecord,
                    expected: diplo_api::build::BuildStatus,
                ) -> StoreResult<bool> {
                    let done = sqlx::query(
                        "UPDATE builds SET status = $1, deployment_id = $2, record = $3, updated_at = $4 \
                         WHERE id = $5 AND status = $6",
                    )
                    .bind(build.status.as_str())
                    .bind(build.deployment_id.as_deref())
                    .bind(to_json("builds.record", build)?)
                    .bind(millis(Utc::now()))
                    .bind(&build.id)
                    .bind(expected.as_str())
                    .execute(self.serving()?)
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn save_build_log(&self, id: &str, log: &[u8]) -> StoreResult<bool> {
                    let done = sqlx::query("UPDATE builds SET log = $1 WHERE id = $2")
                        .bind(log)
                        .bind(id)
                        .execute(self.serving()?)
                        .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn get_build_log(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
                    let log: Option<Vec<u8>> = sqlx::query_scalar("SELECT log FROM builds WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.serving()?)
                        .await?;
                    Ok(log)
                }

                // ---- registry credentials ----

                async fn set_registry_credential(
                    &self,
                    credential: &$crate::model::RegistryCredentialRecord,
                ) -> StoreResult<bool> {
                    let mut tx = self.serving()?.begin().await?;
                    let existed = sqlx::query("SELECT 1 FROM registry_credentials WHERE registry = $1")
                        .bind(&credential.registry)
                        .fetch_optional(&mut *tx)
                        .await?
                        .is_some();
                    sqlx::query(
                        "INSERT INTO registry_credentials (registry, username, password, updated_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (registry) DO UPDATE SET \
                         username = excluded.username, password = excluded.password, \
                         updated_at = excluded.updated_at",
                    )
                    .bind(&credential.registry)
                    .bind(&credential.username)
                    .bind(&credential.password)
                    .bind(millis(credential.updated_at))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(!existed)
                }

                async fn list_registry_credentials(
                    &self,
                ) -> StoreResult<Vec<$crate::model::RegistryCredentialRecord>> {
                    self.fetch_all(
                        "SELECT registry, username, password, updated_at \
                         FROM registry_credentials ORDER BY registry",
                        $crate::store::rows::registry_credential_from_row,
                    )
                    .await
                }

                async fn delete_registry_credential(&self, registry: &str) -> StoreResult<bool> {
                    self.execute_keyed("DELETE FROM registry_credentials WHERE registry = $1", registry)
                        .await
                }

                // ---- stacks ----

                async fn save_stack(&self, stack: &$crate::model::StackRecord) -> StoreResult<bool> {
                    let mut tx = self.serving()?.begin().await?;
                    let existed = sqlx::query("SELECT 1 FROM stacks WHERE name = $1")
                        .bind(&stack.name)
                        .fetch_optional(&mut *tx)
                        .await?
                        .is_some();
                    sqlx::query(
                        "INSERT INTO stacks (name, source, spec, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET \
                         source = excluded.source, spec = excluded.spec, updated_at = excluded.updated_at",
                    )
                    .bind(&stack.name)
                    .bind(&stack.source)
                    .bind(to_json("stacks.spec", &stack.spec)?)
                    .bind(millis(stack.created_at))
                    .bind(millis(stack.updated_at))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(!existed)
                }

                async fn get_stack(&self, name: &str) -> StoreResult<Option<$crate::model::StackRecord>> {
                    self.fetch_keyed(
                        "SELECT name, source, spec, created_at, updated_at FROM stacks WHERE name = $1",
                        name,
                        $crate::store::rows::stack_from_row,
                    )
                    .await
                }

                async fn list_stacks(&self) -> StoreResult<Vec<$crate::model::StackRecord>> {
                    self.fetch_all(
                        "SELECT name, source, spec, created_at, updated_at FROM stacks ORDER BY name",
                        $crate::store::rows::stack_from_row,
                    )
                    .await
                }

                async fn delete_stack(&self, name: &str) -> StoreResult<bool> {
                    self.execute_keyed("DELETE FROM stacks WHERE name = $1", name).await
                }

                $($specific)*
            }
        };
    };
}

pub(super) use impl_store;
