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

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::common::impl_store;
use super::rows::{insert_conflict, insert_error, sequence};
use super::{StoreError, StoreResult, mask_password};
use crate::model::{DeploymentRecord, NodeRecord};

/// How long a connection waits for another one's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening the pool may take.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
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
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
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
        // ---- events ----

        async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
            // Writers are serialised, so sequence order is also commit order: a reader
            // paging with `after` never misses an event committed later with a lower number.
            let value = Self::insert_event(&self.pool, event).await?;
            sequence(value)
        }
    },
}
