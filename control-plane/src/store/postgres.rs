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
use super::rows::{desired_str, insert_conflict, insert_error, instance_status_str, last_per_id, millis, sequence};
use super::writer::WriterGate;
use super::{StoreError, StoreResult, mask_password};
use crate::model::{DeploymentRecord, InstanceRecord, NodeRecord};
use diplo_api::runtime::Runtime;

/// How long opening the store keeps trying to reach a server that refuses connections
/// (one starting up, for example).
pub(super) const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a store call waits for a pool connection before failing as unavailable:
/// short, so that a request answers "database unreachable" within a second instead of
/// hanging while the server is away.
pub(super) const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the diagnostic connection attempt after a pool time-out may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections in the pool.
const MAX_CONNECTIONS: u32 = 10;

/// The PostgreSQL [`Store`](super::Store): a connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The writer's gate: while it is closed (the lock is being taken again after the
    /// database went away) calls fail at once as unavailable instead of waiting for a
    /// connection the pool cannot hand out.
    gate: Option<Arc<WriterGate>>,
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
        let store_gate = gate.clone();
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
        // The first connection may take longer than a later acquire: keep trying a server
        // that refuses connections until OPEN_TIMEOUT.
        let pool = pool_options.connect_lazy_with(options.clone());
        let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
        loop {
            match pool.acquire().await {
                Ok(conn) => {
                    drop(conn);
                    break;
                }
                Err(sqlx::Error::PoolTimedOut) if tokio::time::Instant::now() < deadline => {}
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
                    return Err(connect_error(format!("timed out after {}s: {reason}", OPEN_TIMEOUT.as_secs())));
                }
                Err(e) => return Err(connect_error(e.to_string())),
            }
        }
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool, gate: store_gate })
    }

    /// The pool, unless this store is a writer's whose lock is being taken again:
    /// then `Unavailable` at once.
    fn serving(&self) -> StoreResult<&PgPool> {
        match &self.gate {
            Some(gate) if !gate.is_open() => {
                Err(StoreError::Unavailable("the connection holding the writer lock broke; waiting for the database to return".into()))
            }
            _ => Ok(&self.pool),
        }
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

/// A batch of instances as one array per column (PostgreSQL binds each as one parameter).
struct InstanceColumns<'a> {
    id: Vec<&'a str>,
    deployment_id: Vec<&'a str>,
    revision: Vec<i64>,
    node_id: Vec<Option<&'a str>>,
    runtime: Vec<Option<&'static str>>,
    container_id: Vec<Option<&'a str>>,
    desired: Vec<&'static str>,
    status: Vec<&'static str>,
    message: Vec<&'a str>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
}

impl<'a> InstanceColumns<'a> {
    fn new(instances: impl ExactSizeIterator<Item = &'a InstanceRecord>) -> Self {
        let n = instances.len();
        let mut c = InstanceColumns {
            id: Vec::with_capacity(n),
            deployment_id: Vec::with_capacity(n),
            revision: Vec::with_capacity(n),
            node_id: Vec::with_capacity(n),
            runtime: Vec::with_capacity(n),
            container_id: Vec::with_capacity(n),
            desired: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            message: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            updated_at: Vec::with_capacity(n),
        };
        for i in instances {
            c.id.push(&i.id);
            c.deployment_id.push(&i.deployment_id);
            c.revision.push(i64::from(i.revision));
            c.node_id.push(i.node_id.as_deref());
            c.runtime.push(i.runtime.map(Runtime::name));
            c.container_id.push(i.container_id.as_deref());
            c.desired.push(desired_str(i.desired));
            c.status.push(instance_status_str(i.status));
            c.message.push(&i.message);
            c.created_at.push(millis(i.created_at));
            c.updated_at.push(millis(i.updated_at));
        }
        c
    }
}

impl_store! {
    store: PostgresStore,
    database: sqlx::Postgres,
    backend: "postgres",
    node_conflict: node_conflict,
    deployment_conflict: deployment_conflict,
    specific: {
        // ---- instances ----
        //
        // Each batch is one statement over arrays, whatever its size: one round trip, one
        // plan, atomic by itself.

        async fn insert_instances(&self, instances: &[InstanceRecord]) -> StoreResult<()> {
            if instances.is_empty() {
                return Ok(());
            }
            let c = InstanceColumns::new(instances.iter());
            let inserted = sqlx::query(
                "INSERT INTO instances (id, deployment_id, revision, node_id, runtime, container_id, \
                 desired, status, message, created_at, updated_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[])",
            )
            .bind(&c.id)
            .bind(&c.deployment_id)
            .bind(&c.revision)
            .bind(&c.node_id)
            .bind(&c.runtime)
            .bind(&c.container_id)
            .bind(&c.desired)
            .bind(&c.status)
            .bind(&c.message)
            .bind(&c.created_at)
            .bind(&c.updated_at)
            .execute(self.serving()?)
            .await;
            match inserted {
                Ok(_) => Ok(()),
                Err(err) => Err(self.instance_batch_error(err, instances).await),
            }
        }

        async fn update_instances(&self, instances: &[InstanceRecord]) -> StoreResult<()> {
            // The deployment and the creation time of an instance never change. An id given
            // twice gets its last record, as if the updates ran one after the other.
            if instances.is_empty() {
                return Ok(());
            }
            let c = InstanceColumns::new(last_per_id(instances).into_iter());
            sqlx::query(
                "UPDATE instances AS i SET revision = u.revision, node_id = u.node_id, \
                 runtime = u.runtime, container_id = u.container_id, desired = u.desired, \
                 status = u.status, message = u.message, updated_at = u.updated_at \
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::bigint[]) \
                 AS u(id, revision, node_id, runtime, container_id, desired, status, message, updated_at) \
                 WHERE i.id = u.id",
            )
            .bind(&c.id)
            .bind(&c.revision)
            .bind(&c.node_id)
            .bind(&c.runtime)
            .bind(&c.container_id)
            .bind(&c.desired)
            .bind(&c.status)
            .bind(&c.message)
            .bind(&c.updated_at)
            .execute(self.serving()?)
            .await?;
            Ok(())
        }

        async fn delete_instances(&self, ids: &[String]) -> StoreResult<()> {
            if ids.is_empty() {
                return Ok(());
            }
            sqlx::query("DELETE FROM instances WHERE id = ANY($1::text[])").bind(ids).execute(self.serving()?).await?;
            Ok(())
        }

        // ---- events ----

        async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
            // BIGSERIAL values are handed out before commit, so two concurrent appends could
            // commit out of sequence order and a reader paging with `after` would skip one.
            // The table lock (self-conflicting, readers unaffected) makes sequence order
            // commit order, across replicas too.
            let mut tx = self.serving()?.begin().await?;
            sqlx::query("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            let value = Self::insert_event(&mut *tx, event).await?;
            tx.commit().await?;
            sequence(value)
        }

        async fn append_events(&self, events: &[NewEvent]) -> StoreResult<Vec<u64>> {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            // One statement over arrays, under the same lock as `append_event`. UNNEST yields
            // the rows in array order and each takes the next sequence value as it is
            // inserted, so the sorted numbers are the events' in the order given.
            let mut tx = self.serving()?.begin().await?;
            sqlx::query("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            let at: Vec<i64> = events.iter().map(|e| millis(e.at)).collect();
            let kind: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
            let actor: Vec<&str> = events.iter().map(|e| e.actor.as_str()).collect();
            let subject: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
            let message: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
            let mut values: Vec<i64> = sqlx::query_scalar(
                "INSERT INTO events (at, kind, actor, subject, message) \
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                 RETURNING sequence",
            )
            .bind(&at)
            .bind(&kind)
            .bind(&actor)
            .bind(&subject)
            .bind(&message)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            values.sort_unstable();
            values.into_iter().map(sequence).collect()
        }
    },
}
