//! Durable state. One [`Store`] trait, two backends: SQLite (embedded default, a file in
//! the data directory) and PostgreSQL (production, several control-plane replicas).
//! All SQL of the project lives under this module; migrations live per backend in
//! `control-plane/migrations/{sqlite,postgres}` and run at start-up.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{
    ApiTokenRecord, BuildRecord, DeploymentRecord, DeploymentSpec, EventRecord, InstanceRecord, JoinTokenRecord, NewEvent, NodeRecord,
    NodeStatusChange,
};
use diplo_api::build::BuildStatus;
use diplo_api::fingerprint::Fingerprint;

mod cached;
mod common;
mod postgres;
mod rows;
mod sqlite;
mod writer;

pub use cached::CachedStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use writer::{CHECK_INTERVAL, LEASE_APPLICATION_NAME, WRITER_LOCK_KEY, WriterIdentity, WriterLease, open_writer, sqlite_lock_path};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key (node name, token id) is already taken.
    #[error("{what} {key:?} already exists")]
    AlreadyExists {
        /// Kind of record ("node", "join token", ...).
        what: &'static str,
        /// The conflicting key.
        key: String,
    },
    /// The record to change does not exist.
    #[error("{what} {key:?} not found")]
    NotFound {
        /// Kind of record.
        what: &'static str,
        /// The missing key.
        key: String,
    },
    /// The database could not be reached or opened.
    #[error("cannot connect to database {url}: {reason}")]
    Connect {
        /// The URL with any password masked.
        url: String,
        /// Driver message.
        reason: String,
    },
    /// The URL names no supported backend.
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be decoded (corrupt or from a newer version).
    #[error("corrupt stored value in {column}: {reason}")]
    Corrupt {
        /// Table and column.
        column: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// Another control plane holds the database's writer lock.
    #[error(
        "another control plane ({}) is the writer for this database; stop it first or point this one at another database",
        writer::describe_holder(.holder)
    )]
    WriterTaken {
        /// The holder as it recorded itself, when it did.
        holder: Option<WriterIdentity>,
    },
    /// The database is away (this control plane is taking its writer lock again after
    /// the connection holding it broke): nothing is read or written until it is back.
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// SQLSTATEs that mean the server is gone or going, not that the statement is wrong:
/// `admin_shutdown`, `crash_shutdown`, `cannot_connect_now` (class 08, connection
/// exceptions, is matched by its prefix).
const UNREACHABLE_SQLSTATES: [&str; 3] = ["57P01", "57P02", "57P03"];

impl StoreError {
    /// Whether the error means the database cannot be reached right now (connection
    /// refused or broken, no connection within the pool's time-out, server shutting
    /// down, writer lock being taken again) rather than that the request or the data is
    /// wrong: the same request may succeed once the database is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Connect { .. } | StoreError::WriterTaken { .. } => true,
            StoreError::Database(err) => sqlx_unavailable(err),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(err)) => sqlx_unavailable(err),
            StoreError::AlreadyExists { .. }
            | StoreError::NotFound { .. }
            | StoreError::UnsupportedUrl(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt { .. } => false,
        }
    }
}

/// [`StoreError::is_unavailable`] for a driver error.
fn sqlx_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| unreachable_sqlstate(&code)),
        _ => false,
    }
}

/// Whether a SQLSTATE says the server cannot serve the connection (class 08 or one of
/// [`UNREACHABLE_SQLSTATES`]).
fn unreachable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || UNREACHABLE_SQLSTATES.contains(&code)
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the control plane persists. Implementations are cheap to clone behind
/// an `Arc` and safe to share between tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name, `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// A number that changes whenever nodes, deployments or instances change, for
    /// stores that serve them from memory: what is read after seeing generation `g` is
    /// at least as new as `g`. `None` (the default) when the store cannot tell cheaply;
    /// callers then read afresh every time.
    fn generation(&self) -> Option<u64> {
        None
    }

    // ---- nodes ----

    /// Inserts a new node. `AlreadyExists` when its id or name is taken.
    async fn insert_node(&self, node: &NodeRecord) -> StoreResult<()>;
    /// Node by id or, failing that, by name.
    async fn get_node(&self, id_or_name: &str) -> StoreResult<Option<NodeRecord>>;
    /// All nodes, ordered by name.
    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>>;
    /// Records a fresh session: new fingerprint, address, status ready and last seen
    /// time. `NotFound` for an unknown id.
    async fn record_session(&self, node_id: &str, fingerprint: &Fingerprint, address: &str, seen_at: DateTime<Utc>) -> StoreResult<()>;
    /// Applies a batch of status changes in one transaction; unknown ids are skipped.
    async fn apply_status_changes(&self, changes: &[NodeStatusChange]) -> StoreResult<()>;
    /// Sets or clears the cordon flag. `NotFound` for an unknown id.
    async fn set_cordoned(&self, node_id: &str, cordoned: bool) -> StoreResult<()>;
    /// Deletes a node; `false` when there was none.
    async fn delete_node(&self, node_id: &str) -> StoreResult<bool>;

    // ---- join tokens ----

    /// Inserts a join token. `AlreadyExists` when the id is taken.
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> StoreResult<()>;
    /// Join token by id.
    async fn get_join_token(&self, id: &str) -> StoreResult<Option<JoinTokenRecord>>;
    /// All join tokens, newest first.
    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>>;
    /// Atomically counts one use of a token if it is still usable at `now` (not revoked,
    /// not expired, and for single-use tokens not used yet). Returns whether it was.
    async fn use_join_token(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool>;
    /// Marks a token revoked; `false` when there was none.
    async fn revoke_join_token(&self, id: &str) -> StoreResult<bool>;

    // ---- API tokens ----

    /// Inserts an API token. `AlreadyExists` when the id is taken.
    async fn insert_api_token(&self, token: &ApiTokenRecord) -> StoreResult<()>;
    /// API token by id.
    async fn get_api_token(&self, id: &str) -> StoreResult<Option<ApiTokenRecord>>;
    /// All API tokens, newest first.
    async fn list_api_tokens(&self) -> StoreResult<Vec<ApiTokenRecord>>;
    /// Marks an API token revoked; `false` when there was none.
    async fn revoke_api_token(&self, id: &str) -> StoreResult<bool>;

    // ---- events ----

    /// Appends an event and returns its sequence number (strictly increasing).
    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64>;
    /// Appends events in one transaction and returns their sequence numbers, in the
    /// order given (strictly increasing, and above every number handed out before).
    async fn append_events(&self, events: &[NewEvent]) -> StoreResult<Vec<u64>>;
    /// Up to `limit` events with a sequence number above `after`, oldest first.
    async fn list_events(&self, after: u64, limit: u32) -> StoreResult<Vec<EventRecord>>;
    /// Deletes the events older than `older_than` and all but the newest `keep` (each
    /// limit only when given); returns how many were deleted. Sequence numbers are never
    /// reused.
    async fn prune_events(&self, older_than: Option<DateTime<Utc>>, keep: Option<u64>) -> StoreResult<u64>;

    // ---- deployments ----

    /// Inserts a deployment and its revision `deployment.revision` (with its spec) in one
    /// transaction. `AlreadyExists` when the id, the name or the idempotency key is taken.
    async fn create_deployment(&self, deployment: &DeploymentRecord) -> StoreResult<()>;
    /// Deployment by id or, failing that, by name.
    async fn get_deployment(&self, id_or_name: &str) -> StoreResult<Option<DeploymentRecord>>;
    /// The deployment created with this idempotency key.
    async fn find_deployment_by_key(&self, idempotency_key: &str) -> StoreResult<Option<DeploymentRecord>>;
    /// All deployments, ordered by name.
    async fn list_deployments(&self) -> StoreResult<Vec<DeploymentRecord>>;
    /// Updates a deployment (by id) and, in the same transaction, records its revision
    /// `deployment.revision` with `deployment.spec` if that revision is new. `NotFound`
    /// for an unknown id.
    async fn save_deployment(&self, deployment: &DeploymentRecord) -> StoreResult<()>;
    /// Sets a deployment's status and message only if its row is still as `read` left
    /// it (same revision, status and `updated_at`, which every write sets): a status
    /// computed from an earlier read never overwrites a concurrent scale, update or
    /// deletion. `false` when nothing was written.
    async fn set_deployment_status(
        &self,
        read: &DeploymentRecord,
        status: crate::model::DeploymentStatus,
        message: &str,
        updated_at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// The spec of one revision of a deployment.
    async fn get_revision(&self, deployment_id: &str, revision: u32) -> StoreResult<Option<DeploymentSpec>>;
    /// Deletes a deployment with its revisions and instances; `false` when there was none.
    async fn delete_deployment(&self, deployment_id: &str) -> StoreResult<bool>;

    // ---- instances ----

    /// Inserts instances in one transaction. `AlreadyExists` when an id is taken.
    async fn insert_instances(&self, instances: &[InstanceRecord]) -> StoreResult<()>;
    /// Updates instances (by id) in one transaction; unknown ids are skipped.
    async fn update_instances(&self, instances: &[InstanceRecord]) -> StoreResult<()>;
    /// Instances of one deployment, or of all with `None`, ordered by creation time then id.
    async fn list_instances(&self, deployment_id: Option<&str>) -> StoreResult<Vec<InstanceRecord>>;
    /// Deletes instances by id in one transaction.
    async fn delete_instances(&self, ids: &[String]) -> StoreResult<()>;

    // ---- builds ----

    /// Inserts a build. `AlreadyExists` when its id is taken.
    async fn insert_build(&self, build: &BuildRecord) -> StoreResult<()>;
    /// Build by id.
    async fn get_build(&self, id: &str) -> StoreResult<Option<BuildRecord>>;
    /// The newest `limit` builds, newest first (by creation time, then id).
    async fn list_builds(&self, limit: u32) -> StoreResult<Vec<BuildRecord>>;
    /// Replaces a build (by id) only if its stored status is still `expected`: a write
    /// computed from an earlier read (a late report, a cancel racing the end) never
    /// overwrites the status another write set. `false` when nothing was written.
    async fn update_build(&self, build: &BuildRecord, expected: BuildStatus) -> StoreResult<bool>;
    /// Stores a build's output; `false` when there is no such build.
    async fn save_build_log(&self, id: &str, log: &[u8]) -> StoreResult<bool>;
    /// A build's stored output; `None` when there is no such build.
    async fn get_build_log(&self, id: &str) -> StoreResult<Option<Vec<u8>>>;

    // ---- registry credentials ----

    /// Stores the credential for its registry, replacing one there was; `true` when
    /// there was none.
    async fn set_registry_credential(&self, credential: &crate::model::RegistryCredentialRecord) -> StoreResult<bool>;
    /// Every stored registry credential, by registry name.
    async fn list_registry_credentials(&self) -> StoreResult<Vec<crate::model::RegistryCredentialRecord>>;
    /// Deletes the credential for `registry`; `false` when there was none.
    async fn delete_registry_credential(&self, registry: &str) -> StoreResult<bool>;

    // ---- stacks ----

    /// Inserts a stack or replaces the one of that name (source, spec, `updated_at`; the
    /// creation time is kept); `true` when it is new.
    async fn save_stack(&self, stack: &crate::model::StackRecord) -> StoreResult<bool>;
    /// The stack of that name.
    async fn get_stack(&self, name: &str) -> StoreResult<Option<crate::model::StackRecord>>;
    /// All stacks, ordered by name.
    async fn list_stacks(&self) -> StoreResult<Vec<crate::model::StackRecord>>;
    /// Deletes a stack's record (not its deployments); `false` when there was none.
    async fn delete_stack(&self, name: &str) -> StoreResult<bool>;
}

/// Opens the store a URL names and runs its migrations, without taking the writer lock
/// (tools and tests; a control plane opens with [`open_writer`]): `sqlite://PATH` (created when
/// missing) or `postgres://…` / `postgresql://…`. Gives up within about 10 seconds
/// when the database cannot be reached, naming it (password masked).
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(mask_password(url)))
    }
}

/// The URL with the password part of its userinfo replaced by `***`.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod unavailable_tests {
    use super::*;

    #[test]
    fn errors_that_mean_the_database_is_away_are_told_apart_from_the_others() {
        let io = |kind: std::io::ErrorKind| StoreError::Database(sqlx::Error::Io(std::io::Error::from(kind)));
        let table: Vec<(StoreError, bool)> = vec![
            (StoreError::Database(sqlx::Error::PoolTimedOut), true),
            (StoreError::Database(sqlx::Error::PoolClosed), true),
            (StoreError::Database(sqlx::Error::WorkerCrashed), true),
            (io(std::io::ErrorKind::ConnectionRefused), true),
            (io(std::io::ErrorKind::ConnectionReset), true),
            (io(std::io::ErrorKind::BrokenPipe), true),
            (io(std::io::ErrorKind::UnexpectedEof), true),
            (StoreError::Unavailable("lock being taken again".into()), true),
            (StoreError::Connect { url: "postgres://x".into(), reason: "refused".into() }, true),
            (StoreError::WriterTaken { holder: None }, true),
            (StoreError::Database(sqlx::Error::RowNotFound), false),
            (StoreError::Database(sqlx::Error::ColumnNotFound("x".into())), false),
            (StoreError::Database(sqlx::Error::Protocol("bad message".into())), false),
            (StoreError::AlreadyExists { what: "node", key: "n1".into() }, false),
            (StoreError::NotFound { what: "node", key: "n1".into() }, false),
            (StoreError::Corrupt { column: "nodes.labels", reason: "not JSON".into() }, false),
            (StoreError::UnsupportedUrl("mysql://x".into()), false),
        ];
        for (err, expected) in table {
            assert_eq!(err.is_unavailable(), expected, "{err:?}");
        }
    }

    #[test]
    fn sqlstates_of_a_server_gone_or_going_are_unreachable() {
        for (code, expected) in [
            ("08000", true),
            ("08006", true),
            ("08001", true),
            ("57P01", true),
            ("57P02", true),
            ("57P03", true),
            ("23505", false),
            ("40001", false),
            ("42P01", false),
            ("57014", false),
        ] {
            assert_eq!(unreachable_sqlstate(code), expected, "{code}");
        }
    }
}
