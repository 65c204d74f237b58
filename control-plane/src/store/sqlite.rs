//! SQLite backend: one file in the data directory, WAL journal, zero set-up.
//!
//! Timestamps are stored as unix milliseconds (sub-millisecond precision is dropped);
//! labels, fingerprints and deployment specs as JSON text. Writes are serialised by
//! SQLite itself, so the conditional `UPDATE` in [`Store::use_join_token`] is atomic
//! across connections. Foreign keys are enforced (the pool turns them on per connection).
//!
//! [`Store::use_join_token`]: super::Store::use_join_token

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::QueryBuilder;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::common::INSTANCE_COLUMNS;
use super::common::impl_store;
use super::rows::{desired_str, insert_conflict, insert_error, instance_status_str, last_per_id, sequence};
use super::{StoreError, StoreResult, mask_password};
use crate::model::{DeploymentRecord, NodeRecord};
use diplo_api::runtime::Runtime;

/// How long a connection waits for another one's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening the pool may take.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows per multi-row statement: 11 bound parameters each, far below SQLite's limit of
/// 32,766 per statement.
const ROWS_PER_STATEMENT: usize = 500;
/// Connections in the pool (SQLite serialises writers anyway; readers run in parallel).
const MAX_CONNECTIONS: u32 = 4;

/// The SQLite [`Store`](super::Store): a pool over one database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its parent directory when missing) the database a
    /// `sqlite://PATH` URL names and runs the pending migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let connect_error = |reason: String| StoreError::Connect { url: mask_password(url), reason };
        let options = Self::options(url)?;
        Self::prepare_path(url)?;
        let pool =
            || SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS).acquire_timeout(ACQUIRE_TIMEOUT).connect_with(options.clone());
        // Migrations on a pool of their own: a migration that edits the schema's text
        // (SQLite cannot alter a CHECK constraint otherwise) leaves the connection that
        // ran it with the old schema in memory; the store's pool is opened afterwards.
        let migrations = pool().await.map_err(|e| connect_error(e.to_string()))?;
        sqlx::migrate!("./migrations/sqlite").run(&migrations).await?;
        migrations.close().await;
        let pool = pool().await.map_err(|e| connect_error(e.to_string()))?;
        Ok(SqliteStore { pool })
    }

    /// The connection options a `sqlite://PATH` URL names.
    fn options(url: &str) -> StoreResult<SqliteConnectOptions> {
        Ok(SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Connect { url: mask_password(url), reason: e.to_string() })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true))
    }

    /// The database file a `sqlite://PATH` URL names, with its parent directory created
    /// when missing.
    pub(super) fn prepare_path(url: &str) -> StoreResult<PathBuf> {
        let connect_error = |reason: String| StoreError::Connect { url: mask_password(url), reason };
        let options = Self::options(url)?;
        let path = options.get_filename();
        if path.as_os_str().is_empty() {
            return Err(connect_error("no file path in the URL".to_owned()));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dir(parent).map_err(|e| connect_error(format!("cannot create directory {}: {e}", parent.display())))?;
        }
        Ok(path.to_owned())
    }

    /// The pool.
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The pool, for the store's calls (SQLite is a local file: always there).
    fn serving(&self) -> StoreResult<&SqlitePool> {
        Ok(&self.pool)
    }

    /// Closes every connection, checkpointing the WAL; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

/// Maps a failed insert of `node` to `AlreadyExists` naming the taken key.
fn node_conflict(err: sqlx::Error, node: &NodeRecord) -> StoreError {
    insert_error(err, "node", |db| {
        // SQLite names the column: "UNIQUE constraint failed: nodes.name".
        if db.message().contains("nodes.name") { node.name.clone() } else { node.id.clone() }
    })
}

/// Maps a failed write of `deployment` to `AlreadyExists` naming the taken key.
fn deployment_conflict(err: sqlx::Error, deployment: &DeploymentRecord) -> StoreError {
    insert_conflict(err, |db| {
        // SQLite names the column: "UNIQUE constraint failed: deployments.name".
        let message = db.message();
        if message.contains("deployments.idempotency_key") {
            let key = deployment.idempotency_key.clone().unwrap_or_default();
            ("idempotency key", key)
        } else if message.contains("deployments.name") {
            ("deployment", deployment.spec.name.clone())
        } else {
            ("deployment", deployment.id.clone())
        }
    })
}

impl_store! {
    store: SqliteStore,
    database: sqlx::Sqlite,
    backend: "sqlite",
    node_conflict: node_conflict,
    deployment_conflict: deployment_conflict,
    specific: {
        // ---- instances ----
        //
        // A batch is one transaction of multi-row statements, each well below SQLite's
        // limit on bound parameters.

        async fn insert_instances(&self, instances: &[InstanceRecord]) -> StoreResult<()> {
            if instances.is_empty() {
                return Ok(());
            }
            let mut tx = self.serving()?.begin().await?;
            for chunk in instances.chunks(ROWS_PER_STATEMENT) {
                let mut insert = QueryBuilder::<sqlx::Sqlite>::new(format!("INSERT INTO instances ({INSTANCE_COLUMNS}) "));
                insert.push_values(chunk, |mut row, i| {
                    row.push_bind(i.id.clone())
                        .push_bind(i.deployment_id.clone())
                        .push_bind(i64::from(i.revision))
                        .push_bind(i.node_id.clone())
                        .push_bind(i.runtime.map(Runtime::name))
                        .push_bind(i.container_id.clone())
                        .push_bind(desired_str(i.desired))
                        .push_bind(instance_status_str(i.status))
                        .push_bind(i.message.clone())
                        .push_bind(millis(i.created_at))
                        .push_bind(millis(i.updated_at));
                });
                if let Err(err) = insert.build().execute(&mut *tx).await {
                    tx.rollback().await?;
                    return Err(self.instance_batch_error(err, instances).await);
                }
            }
            tx.commit().await?;
            Ok(())
        }

        async fn update_instances(&self, instances: &[InstanceRecord]) -> StoreResult<()> {
            // The deployment and the creation time of an instance never change. An id given
            // twice gets its last record, as if the updates ran one after the other.
            if instances.is_empty() {
                return Ok(());
            }
            let latest = last_per_id(instances);
            let mut tx = self.serving()?.begin().await?;
            for chunk in latest.chunks(ROWS_PER_STATEMENT) {
                let mut update = QueryBuilder::<sqlx::Sqlite>::new(
                    "WITH u (id, revision, node_id, runtime, container_id, desired, status, message, updated_at) AS (",
                );
                update.push_values(chunk, |mut row, i| {
                    row.push_bind(i.id.clone())
                        .push_bind(i64::from(i.revision))
                        .push_bind(i.node_id.clone())
                        .push_bind(i.runtime.map(Runtime::name))
                        .push_bind(i.container_id.clone())
                        .push_bind(desired_str(i.desired))
                        .push_bind(instance_status_str(i.status))
                        .push_bind(i.message.clone())
                        .push_bind(millis(i.updated_at));
                });
                update.push(
                    ") UPDATE instances SET revision = u.revision, node_id = u.node_id, runtime = u.runtime, \
                     container_id = u.container_id, desired = u.desired, status = u.status, \
                     message = u.message, updated_at = u.updated_at FROM u WHERE instances.id = u.id",
                );
                update.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        }

        async fn delete_instances(&self, ids: &[String]) -> StoreResult<()> {
            if ids.is_empty() {
                return Ok(());
            }
            sqlx::query("DELETE FROM instances WHERE id IN (SELECT value FROM json_each($1))")
                .bind(to_json("instances.id", &ids)?)
                .execute(self.serving()?)
                .await?;
            Ok(())
        }

        // ---- events ----

        async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
            // Writers are serialised, so sequence order is also commit order: a reader
            // paging with `after` never misses an event committed later with a lower number.
            let value = Self::insert_event(self.serving()?, event).await?;
            sequence(value)
        }

        async fn append_events(&self, events: &[NewEvent]) -> StoreResult<Vec<u64>> {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            // Rows get increasing numbers in the order they are inserted, so the sorted
            // numbers are the events' in the order given.
            let mut values = Vec::with_capacity(events.len());
            let mut tx = self.serving()?.begin().await?;
            for chunk in events.chunks(ROWS_PER_STATEMENT) {
                let mut insert = QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO events (at, kind, actor, subject, message) ");
                insert.push_values(chunk, |mut row, e| {
                    row.push_bind(millis(e.at))
                        .push_bind(e.kind.clone())
                        .push_bind(e.actor.clone())
                        .push_bind(e.subject.clone())
                        .push_bind(e.message.clone());
                });
                insert.push(" RETURNING sequence");
                let mut chunk_values: Vec<i64> = insert.build_query_scalar().fetch_all(&mut *tx).await?;
                chunk_values.sort_unstable();
                values.extend(chunk_values);
            }
            tx.commit().await?;
            values.into_iter().map(sequence).collect()
        }
    },
}
