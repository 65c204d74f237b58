//! What both backends share below the SQL: value conversions (timestamps as unix
//! milliseconds, labels and fingerprints as JSON text), the mapping of driver errors to
//! [`StoreError`], and the row decoders, generic over the driver's row type.
//!
//! The SQL itself stays in the backend modules: the dialects differ.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::error::DatabaseError;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{StoreError, StoreResult};
use crate::model::{
    ApiTokenRecord, EventRecord, JoinTokenRecord, NewEvent, NodeRecord, NodeStatus, Role,
};

// ---- values ----

/// A timestamp as stored: unix milliseconds (sub-millisecond precision is dropped).
pub(super) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A stored timestamp (unix milliseconds) read back; `Corrupt` naming `column` when it
/// is out of range.
pub(super) fn time(column: &'static str, ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt {
        column,
        reason: format!("timestamp {ms} out of range"),
    })
}

/// A value as stored in a JSON text column; `Corrupt` naming `column` when it cannot be
/// encoded.
pub(super) fn to_json<T: serde::Serialize>(column: &'static str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        column,
        reason: format!("cannot encode: {e}"),
    })
}

/// A JSON text column read back; `Corrupt` naming `column` when it does not decode.
pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    column: &'static str,
    text: &str,
) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        column,
        reason: e.to_string(),
    })
}

/// An event sequence number as stored (`BIGINT`) read back; `Corrupt` when negative.
pub(super) fn sequence(value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|e| StoreError::Corrupt {
        column: "events.sequence",
        reason: format!("{value}: {e}"),
    })
}

// ---- errors ----

/// Maps a unique-key violation to `AlreadyExists`, anything else to `Database`. `key`
/// gets the driver's error (which names the violated key in a dialect of its own) and
/// returns the conflicting key for the message.
pub(super) fn insert_error(
    err: sqlx::Error,
    what: &'static str,
    key: impl FnOnce(&dyn DatabaseError) -> String,
) -> StoreError {
    if let sqlx::Error::Database(db) = &err
        && db.is_unique_violation()
    {
        return StoreError::AlreadyExists {
            what,
            key: key(&**db),
        };
    }
    StoreError::Database(err)
}

/// `NotFound` for `what` `key` when a statement changed no row (`affected` is its
/// count of changed rows).
pub(super) fn require_found(affected: u64, what: &'static str, key: &str) -> StoreResult<()> {
    if affected == 0 {
        return Err(StoreError::NotFound {
            what,
            key: key.to_owned(),
        });
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
    ReadColumn<String> + ReadColumn<i64> + ReadColumn<Option<i64>> + ReadColumn<bool>
{
}

impl<R> StoreRow for R where
    R: ReadColumn<String> + ReadColumn<i64> + ReadColumn<Option<i64>> + ReadColumn<bool>
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
        status: NodeStatus::from_str(&status).map_err(|reason| StoreError::Corrupt {
            column: "nodes.status",
            reason,
        })?,
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
        uses: u32::try_from(uses).map_err(|e| StoreError::Corrupt {
            column: "join_tokens.uses",
            reason: format!("{uses}: {e}"),
        })?,
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
        role: Role::from_str(&role).map_err(|reason| StoreError::Corrupt {
            column: "api_tokens.role",
            reason,
        })?,
        created_at: time("api_tokens.created_at", row.column("created_at")?)?,
        expires_at: expires_at
            .map(|ms| time("api_tokens.expires_at", ms))
            .transpose()?,
        revoked: row.column("revoked")?,
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
