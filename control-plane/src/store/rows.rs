//! What both backends share below the SQL: value conversions (timestamps as unix
//! milliseconds, labels, fingerprints and deployment specs as JSON text, enums as their
//! lower-case names), the mapping of driver errors to [`StoreError`], and the row
//! decoders, generic over the driver's row type.
//!
//! The SQL itself is in `common` (the statements both dialects share) and in the
//! backend modules (the rest).

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::error::DatabaseError;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{StoreError, StoreResult};
use crate::model::{
    ApiTokenRecord, DeploymentRecord, DeploymentStatus, EventRecord, InstanceDesired, InstanceRecord, InstanceStatus, JoinTokenRecord,
    NewEvent, NodeRecord, NodeStatus, Role,
};
use diplo_api::runtime::Runtime;

// ---- values ----

/// A timestamp as stored: unix milliseconds (sub-millisecond precision is dropped).
pub(super) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A stored timestamp (unix milliseconds) read back; `Corrupt` naming `column` when it
/// is out of range.
pub(super) fn time(column: &'static str, ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt { column, reason: format!("timestamp {ms} out of range") })
}

/// A value as stored in a JSON text column; `Corrupt` naming `column` when it cannot be
/// encoded.
pub(super) fn to_json<T: serde::Serialize>(column: &'static str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt { column, reason: format!("cannot encode: {e}") })
}

/// A JSON text column read back; `Corrupt` naming `column` when it does not decode.
pub(super) fn from_json<T: serde::de::DeserializeOwned>(column: &'static str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { column, reason: e.to_string() })
}

/// An event sequence number as stored (`BIGINT`) read back; `Corrupt` when negative.
pub(super) fn sequence(value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|e| StoreError::Corrupt { column: "events.sequence", reason: format!("{value}: {e}") })
}

/// A stored count or revision number (`BIGINT`) read back; `Corrupt` naming `column`
/// when it does not fit a `u32`.
pub(super) fn small_count(column: &'static str, value: i64) -> StoreResult<u32> {
    u32::try_from(value).map_err(|e| StoreError::Corrupt { column, reason: format!("{value}: {e}") })
}

/// An instance's desired state as stored.
pub(super) fn desired_str(desired: InstanceDesired) -> &'static str {
    match desired {
        InstanceDesired::Run => "run",
        InstanceDesired::Remove => "remove",
    }
}

/// A stored desired state read back; `Corrupt` when unknown.
fn parse_desired(text: &str) -> StoreResult<InstanceDesired> {
    match text {
        "run" => Ok(InstanceDesired::Run),
        "remove" => Ok(InstanceDesired::Remove),
        other => Err(StoreError::Corrupt { column: "instances.desired", reason: format!("unknown desired state {other:?}") }),
    }
}

/// An instance's status as stored.
pub(super) fn instance_status_str(status: InstanceStatus) -> &'static str {
    match status {
        InstanceStatus::Pending => "pending",
        InstanceStatus::Starting => "starting",
        InstanceStatus::Running => "running",
        InstanceStatus::Failed => "failed",
        InstanceStatus::Lost => "lost",
    }
}

/// A stored instance status read back; `Corrupt` when unknown.
fn parse_instance_status(text: &str) -> StoreResult<InstanceStatus> {
    match text {
        "pending" => Ok(InstanceStatus::Pending),
        "starting" => Ok(InstanceStatus::Starting),
        "running" => Ok(InstanceStatus::Running),
        "failed" => Ok(InstanceStatus::Failed),
        "lost" => Ok(InstanceStatus::Lost),
        other => Err(StoreError::Corrupt { column: "instances.status", reason: format!("unknown instance status {other:?}") }),
    }
}

// ---- errors ----

/// Maps a unique-key violation to `AlreadyExists`, anything else to `Database`. `key`
/// gets the driver's error (which names the violated key in a dialect of its own) and
/// returns the conflicting key for the message.
pub(super) fn insert_error(err: sqlx::Error, what: &'static str, key: impl FnOnce(&dyn DatabaseError) -> String) -> StoreError {
    insert_conflict(err, |db| (what, key(db)))
}

/// [`insert_error`] for tables with several unique keys of different kinds: `conflict`
/// gets the driver's error and returns both the kind and the conflicting key.
pub(super) fn insert_conflict(err: sqlx::Error, conflict: impl FnOnce(&dyn DatabaseError) -> (&'static str, String)) -> StoreError {
    if let sqlx::Error::Database(db) = &err
        && db.is_unique_violation()
    {
        let (what, key) = conflict(&**db);
        return StoreError::AlreadyExists { what, key };
    }
    StoreError::Database(err)
}

/// The instances of a batch of updates, each id once with its last record: applying them
/// at once gives what applying the batch one by one would.
pub(super) fn last_per_id(instances: &[InstanceRecord]) -> Vec<&InstanceRecord> {
    let mut last = std::collections::HashMap::with_capacity(instances.len());
    for (index, instance) in instances.iter().enumerate() {
        last.insert(instance.id.as_str(), index);
    }
    instances.iter().enumerate().filter(|(index, i)| last[i.id.as_str()] == *index).map(|(_, i)| i).collect()
}

/// `NotFound` for `what` `key` when a statement changed no row (`affected` is its
/// count of changed rows).
pub(super) fn require_found(affected: u64, what: &'static str, key: &str) -> StoreResult<()> {
    if affected == 0 {
        return Err(StoreError::NotFound { what, key: key.to_owned() });
    }
    Ok(())
}

// ---- rows ----

/// Reads the column `name` of a row as a `T` ([`Row::try_get`]), for any driver that
/// decodes `T`. Implemented for every row type; it exists so that [`StoreRow`] can
/// state once which column types the decoders below need.
pub(super) trait ReadColumn<T> {
    /// The value of column `name`.
    fn column(&self, name: &'static str) -> Result<T, sqlx::Error>;
}

impl<R, T> ReadColumn<T> for R
where
    R: Row,
    for<'r> T: Decode<'r, R::Database> + Type<R::Database>,
    &'static str: ColumnIndex<R>,
{
    fn column(&self, name: &'static str) -> Result<T, sqlx::Error> {
        self.try_get(name)
    }
}

/// A row of either backend: its columns decode to every Rust type the tables use.
pub(super) trait StoreRow:
    ReadColumn<String> + ReadColumn<Option<String>> + ReadColumn<i64> + ReadColumn<Option<i64>> + ReadColumn<bool>
{
}

impl<R> StoreRow for R where
    R: ReadColumn<String> + ReadColumn<Option<String>> + ReadColumn<i64> + ReadColumn<Option<i64>> + ReadColumn<bool>
{
}

/// Decodes a row of `nodes` (all its columns).
pub(super) fn node_from_row<R: StoreRow>(row: &R) -> StoreResult<NodeRecord> {
    let status: String = row.column("status")?;
    let fingerprint: String = row.column("fingerprint")?;
    let labels: String = row.column("labels")?;
    Ok(NodeRecord {
        id: row.column("id")?,
        name: row.column("name")?,
        status: NodeStatus::from_str(&status).map_err(|reason| StoreError::Corrupt { column: "nodes.status", reason })?,
        fingerprint: from_json("nodes.fingerprint", &fingerprint)?,
        cordoned: row.column("cordoned")?,
        labels: from_json::<BTreeMap<String, String>>("nodes.labels", &labels)?,
        joined_at: time("nodes.joined_at", row.column("joined_at")?)?,
        last_seen_at: time("nodes.last_seen_at", row.column("last_seen_at")?)?,
        address: row.column("address")?,
    })
}

/// Decodes a row of `join_tokens` (all its columns).
pub(super) fn join_token_from_row<R: StoreRow>(row: &R) -> StoreResult<JoinTokenRecord> {
    let uses: i64 = row.column("uses")?;
    let labels: String = row.column("labels")?;
    Ok(JoinTokenRecord {
        id: row.column("id")?,
        secret_hash: row.column("secret_hash")?,
        created_at: time("join_tokens.created_at", row.column("created_at")?)?,
        expires_at: time("join_tokens.expires_at", row.column("expires_at")?)?,
        single_use: row.column("single_use")?,
        uses: small_count("join_tokens.uses", uses)?,
        revoked: row.column("revoked")?,
        labels: from_json("join_tokens.labels", &labels)?,
    })
}

/// Decodes a row of `api_tokens` (all its columns).
pub(super) fn api_token_from_row<R: StoreRow>(row: &R) -> StoreResult<ApiTokenRecord> {
    let role: String = row.column("role")?;
    let expires_at: Option<i64> = row.column("expires_at")?;
    Ok(ApiTokenRecord {
        id: row.column("id")?,
        secret_hash: row.column("secret_hash")?,
        name: row.column("name")?,
        role: Role::from_str(&role).map_err(|reason| StoreError::Corrupt { column: "api_tokens.role", reason })?,
        created_at: time("api_tokens.created_at", row.column("created_at")?)?,
        expires_at: expires_at.map(|ms| time("api_tokens.expires_at", ms)).transpose()?,
        revoked: row.column("revoked")?,
    })
}

/// Decodes a row of `registry_credentials` (all its columns).
pub(super) fn registry_credential_from_row<R: StoreRow>(row: &R) -> StoreResult<crate::model::RegistryCredentialRecord> {
    Ok(crate::model::RegistryCredentialRecord {
        registry: row.column("registry")?,
        username: row.column("username")?,
        password: row.column("password")?,
        updated_at: time("registry_credentials.updated_at", row.column("updated_at")?)?,
    })
}

/// Decodes a row of `stacks` (all its columns).
pub(super) fn stack_from_row<R: StoreRow>(row: &R) -> StoreResult<crate::model::StackRecord> {
    let spec: String = row.column("spec")?;
    Ok(crate::model::StackRecord {
        name: row.column("name")?,
        source: row.column("source")?,
        spec: from_json("stacks.spec", &spec)?,
        created_at: time("stacks.created_at", row.column("created_at")?)?,
        updated_at: time("stacks.updated_at", row.column("updated_at")?)?,
    })
}

/// Decodes a row of `events` (all its columns).
pub(super) fn event_from_row<R: StoreRow>(row: &R) -> StoreResult<EventRecord> {
    Ok(EventRecord {
        sequence: sequence(row.column("sequence")?)?,
        event: NewEvent {
            at: time("events.at", row.column("at")?)?,
            kind: row.column("kind")?,
            actor: row.column("actor")?,
            subject: row.column("subject")?,
            message: row.column("message")?,
        },
    })
}

/// Decodes a row of `deployments` (all its columns; `name` is the spec's and not read).
pub(super) fn deployment_from_row<R: StoreRow>(row: &R) -> StoreResult<DeploymentRecord> {
    let spec: String = row.column("spec")?;
    let status: String = row.column("status")?;
    Ok(DeploymentRecord {
        id: row.column("id")?,
        revision: small_count("deployments.revision", row.column("revision")?)?,
        spec: from_json("deployments.spec", &spec)?,
        status: DeploymentStatus::from_str(&status).map_err(|reason| StoreError::Corrupt { column: "deployments.status", reason })?,
        message: row.column("message")?,
        idempotency_key: row.column("idempotency_key")?,
        created_at: time("deployments.created_at", row.column("created_at")?)?,
        updated_at: time("deployments.updated_at", row.column("updated_at")?)?,
    })
}

/// Decodes a row of `builds` (`status` and `record`; the column's status is the one
/// conditional writes compare, and wins).
pub(super) fn build_from_row<R: StoreRow>(row: &R) -> StoreResult<crate::model::BuildRecord> {
    let record: String = row.column("record")?;
    let status: String = row.column("status")?;
    let mut build: crate::model::BuildRecord = from_json("builds.record", &record)?;
    build.status = status.parse().map_err(|reason| StoreError::Corrupt { column: "builds.status", reason })?;
    Ok(build)
}

/// Decodes a row of `instances` (all its columns).
pub(super) fn instance_from_row<R: StoreRow>(row: &R) -> StoreResult<InstanceRecord> {
    let runtime: Option<String> = row.column("runtime")?;
    let desired: String = row.column("desired")?;
    let status: String = row.column("status")?;
    Ok(InstanceRecord {
        id: row.column("id")?,
        deployment_id: row.column("deployment_id")?,
        revision: small_count("instances.revision", row.column("revision")?)?,
        node_id: row.column("node_id")?,
        runtime: runtime
            .map(|name| Runtime::from_str(&name).map_err(|e| StoreError::Corrupt { column: "instances.runtime", reason: e.to_string() }))
            .transpose()?,
        container_id: row.column("container_id")?,
        desired: parse_desired(&desired)?,
        status: parse_instance_status(&status)?,
        message: row.column("message")?,
        created_at: time("instances.created_at", row.column("created_at")?)?,
        updated_at: time("instances.updated_at", row.column("updated_at")?)?,
    })
}
