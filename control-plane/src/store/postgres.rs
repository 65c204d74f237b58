//! PostgreSQL backend: production, several control-plane replicas sharing one database.
//!
//! Same schema and semantics as the SQLite backend: timestamps are unix milliseconds
//! (sub-millisecond precision is dropped), labels, fingerprints and deployment specs JSON
//! text. The conditional `UPDATE` in [`Store::use_join_token`] is atomic: under READ
//! COMMITTED a racing update waits for the row lock and re-checks its `WHERE` on the
//! new row.
//!
//! [`Store::use_join_token`]: super::Store::use_join_token

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use super::common::impl_store;
use super::rows::{insert_conflict, insert_error, sequence};
use super::writer::WriterGate;
use super::{StoreError, StoreResult, mask_password};
use crate::model::{DeploymentRecord, NodeRecord};

/// How long opening the pool (or any later acquire) waits for a connection.
pub(super) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the diagnostic connection attempt after a pool time-out may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections in the pool.
const MAX_CONNECTIONS: u32 = 10;

/// The PostgreSQL [`Store`](super::Store): a connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database a `postgres://…` URL names and runs the pending
    /// migrations. Fails within about 7 seconds, naming the URL (password masked),
    /// when the server cannot be reached.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Self::open_gated(url, None).await
    }

    /// [`PostgresStore::open`] for the writer: with a gate, the pool hands out only
    /// connections of a process that holds the writer lock (checked on every new
    /// connection in the database, and before reusing an idle one in memory).
    pub(super) async fn open_gated(url: &str, gate: Option<Arc<WriterGate>>) -> StoreResult<Self> {
        let connect_error = |reason: String| StoreError::Connect { url: mask_password(url), reason };
        let options = PgConnectOptions::from_str(url).map_err(|e| connect_error(e.to_string()))?;
        let mut pool_options = PgPoolOptions::new().max_connections(MAX_CONNECTIONS).acquire_timeout(ACQUIRE_TIMEOUT);
        if let Some(gate) = gate {
            let on_connect = gate.clone();
            pool_options = pool_options
                .after_connect(move |conn, _| {
                    let gate = on_connect.clone();
                    Box::pin(async move { gate.check_new_connection(conn).await })
                })
                .before_acquire(move |_, _| {
                    let open = gate.is_open();
                    Box::pin(async move { Ok(open) })
                });
        }
        let pool = match pool_options.connect_with(options.clone()).await {
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
                return Err(connect_error(format!("timed out after {}s: {reason}", ACQUIRE_TIMEOUT.as_secs())));
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

/// Maps a failed insert of `node` to `AlreadyExists` naming the taken key.
fn node_conflict(err: sqlx::Error, node: &NodeRecord) -> StoreError {
    insert_error(err, "node", |db| {
        // PostgreSQL names the constraint, e.g. `nodes_name_key`.
        let violated = db.constraint().unwrap_or_else(|| db.message());
        if violated.contains("nodes_name_key") { node.name.clone() } else { node.id.clone() }
    })
}

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

impl_store! {
    store: PostgresStore,
    database: sqlx::Postgres,
    backend: "postgres",
    node_conflict: node_conflict,
    deployment_conflict: deployment_conflict,
    specific: {
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
            let value = Self::insert_event(&mut *tx, event).await?;
            tx.commit().await?;
            sequence(value)
        }
    },
}
