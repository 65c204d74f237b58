//! One writer per database: the control plane that reconciles and writes holds the
//! database's writer lock for its whole life, and a second one started on the same
//! database is refused, told who holds it.
//!
//! * **PostgreSQL:** a session-level advisory lock ([`WRITER_LOCK_KEY`]) held on a
//!   connection of its own. It dies with the session, so a writer killed with SIGKILL
//!   never leaves it stale. A keeper task checks that connection every
//!   [`CHECK_INTERVAL`]; when it breaks (PostgreSQL restarted) the store's pool stops
//!   handing out connections, the keeper reconnects and takes the lock again, and only
//!   then does the pool serve again. If another control plane took the lock meanwhile,
//!   the lease is lost for good: the pool never serves again and [`WriterLease::lost`]
//!   says who holds it. Every new pool connection also checks, in the database, that the
//!   lock is held by this process's lease session, so a pool that reconnects before the
//!   keeper notices a restart cannot write either.
//! * **SQLite:** an exclusive `flock` on the file `<database>.lock` beside the database,
//!   held open by the process (it too dies with the process).
//!
//! The lock is taken before migrations run: a second control plane of another version
//! never migrates a database under a running writer. The table `writer_lease` names the
//! holder (host, pid, start time, version); it is only informative, the lock decides.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::watch;

use super::rows::time;
use super::{PostgresStore, SqliteStore, Store, StoreError, StoreResult, mask_password};

/// The PostgreSQL advisory lock key of the writer role ("DIPLOWRT" in ASCII).
pub const WRITER_LOCK_KEY: i64 = 0x4449_504c_4f57_5254;
/// How often the PostgreSQL keeper checks its connection: the longest the store keeps
/// handing out connections after the database went away, before it refuses at once.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long one check, connection attempt or lock attempt of the keeper may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(3);
/// The pause between attempts to reach a PostgreSQL server that refuses connections.
const CONNECT_RETRY: Duration = Duration::from_millis(250);
/// The `application_name` of the PostgreSQL connection holding the lock.
pub const LEASE_APPLICATION_NAME: &str = "diplo-control-plane writer lease";

const SELECT_HOLDER: &str = "SELECT host, pid, started_at, version FROM writer_lease WHERE id = 1";
const UPSERT_HOLDER: &str = "INSERT INTO writer_lease (id, host, pid, started_at, version) VALUES (1, $1, $2, $3, $4) \
     ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
     started_at = excluded.started_at, version = excluded.version";
const DELETE_HOLDER: &str = "DELETE FROM writer_lease WHERE id = 1 AND host = $1 AND pid = $2 AND started_at = $3";
/// Whether the advisory lock is granted to the session with backend pid `$1` (a bigint
/// key shows in `pg_locks` as its high half in `classid`, its low half in `objid`).
const LOCK_HELD_BY: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND pid = $1 AND classid::bigint = $2 AND objid::bigint = $3 AND objsubid = 1)";

/// A control plane as the holder of the writer role: who to stop to free it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterIdentity {
    /// Host name of the holder's machine.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// When it became the writer (millisecond precision).
    pub started_at: DateTime<Utc>,
    /// Its version.
    pub version: String,
}

impl WriterIdentity {
    /// This process: its host name, pid, the current time and the crate's version.
    pub fn this_process() -> WriterIdentity {
        WriterIdentity {
            host: crate::pki::hostname(),
            pid: std::process::id(),
            started_at: Utc::now().trunc_subsecs(3),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

impl fmt::Display for WriterIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} on host {}, since {}, version {}",
            self.pid,
            self.host,
            self.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.version
        )
    }
}

/// The holder as named in [`StoreError::WriterTaken`].
pub(super) fn describe_holder(holder: &Option<WriterIdentity>) -> String {
    match holder {
        Some(holder) => holder.to_string(),
        None => "holder not recorded".to_owned(),
    }
}

/// Where the lease stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LeaseState {
    /// This process is the writer.
    Held,
    /// The lock's connection broke; it is being taken again and nothing is written.
    Reacquiring,
    /// Another control plane took the lock: this one must stop.
    Lost(Option<WriterIdentity>),
}

/// Which pool connections may be handed out: those of a process whose lease session
/// (by PostgreSQL backend pid) holds the lock. 0 while the lock is not held.
#[derive(Debug, Default)]
pub(super) struct WriterGate {
    backend_pid: AtomicI32,
}

impl WriterGate {
    /// The backend pid of the session holding the lock, `None` when not held.
    fn holder_session(&self) -> Option<i32> {
        Some(self.backend_pid.load(Ordering::SeqCst)).filter(|pid| *pid != 0)
    }

    fn open(&self, backend_pid: i32) {
        self.backend_pid.store(backend_pid, Ordering::SeqCst);
    }

    fn close(&self) {
        self.backend_pid.store(0, Ordering::SeqCst);
    }

    /// Whether an idle pool connection may be handed out.
    pub(super) fn is_open(&self) -> bool {
        self.holder_session().is_some()
    }

    /// Checks on a fresh pool connection that this process's lease session holds the lock.
    pub(super) async fn check_new_connection(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let not_writer = || sqlx::Error::Protocol("this control plane does not hold the writer lock of the database".to_owned());
        let Some(session) = self.holder_session() else { return Err(not_writer()) };
        let (high, low) = lock_key_halves();
        let held: bool = sqlx::query_scalar(LOCK_HELD_BY).bind(session).bind(high).bind(low).fetch_one(&mut *conn).await?;
        if held { Ok(()) } else { Err(not_writer()) }
    }
}

/// The advisory lock key as `pg_locks` shows it: (`classid`, `objid`).
fn lock_key_halves() -> (i64, i64) {
    let key = WRITER_LOCK_KEY as u64;
    ((key >> 32) as i64, (key & 0xffff_ffff) as i64)
}

/// Being the writer for a database. Dropping it gives the role up as a crash would (the
/// holder record stays); [`WriterLease::release`] also removes the record.
#[derive(Debug)]
pub struct WriterLease {
    state: watch::Receiver<LeaseState>,
    inner: LeaseInner,
}

#[derive(Debug)]
enum LeaseInner {
    Sqlite {
        /// The open lock file; closing it releases the lock.
        file: std::fs::File,
        store: SqliteStore,
        me: WriterIdentity,
        /// Never changes: an flock cannot be lost while the process lives.
        _state: watch::Sender<LeaseState>,
    },
    Postgres {
        stop: watch::Sender<bool>,
        keeper: tokio::task::JoinHandle<()>,
    },
}

impl Drop for LeaseInner {
    fn drop(&mut self) {
        if let LeaseInner::Postgres { keeper, .. } = self {
            // Dropping the keeper drops its connection, which ends the session and with it
            // the lock.
            keeper.abort();
        }
    }
}

impl WriterLease {
    /// Whether this process is the writer right now (false while the PostgreSQL lock is
    /// being taken again, and after it was lost).
    pub fn is_held(&self) -> bool {
        *self.state.borrow() == LeaseState::Held
    }

    /// Resolves when another control plane has become the writer: this one must stop
    /// (its store no longer serves). The error names the new holder.
    pub async fn lost(&mut self) -> StoreError {
        let lost = self.state.wait_for(|state| matches!(state, LeaseState::Lost(_))).await;
        match lost.as_deref() {
            Ok(LeaseState::Lost(holder)) => StoreError::WriterTaken { holder: holder.clone() },
            // The keeper ended without a verdict (its task was cancelled): not the writer.
            _ => StoreError::WriterTaken { holder: None },
        }
    }

    /// Gives the role up: removes the holder record and releases the lock.
    pub async fn release(mut self) {
        match &mut self.inner {
            LeaseInner::Sqlite { store, me, .. } => {
                let deleted = match store.pool().acquire().await {
                    Ok(mut conn) => sqlite_holder::delete(&mut conn, me).await,
                    Err(err) => Err(err.into()),
                };
                if let Err(err) = deleted {
                    tracing::warn!(error = %err, "could not remove the writer record");
                }
                store.close().await;
                if let LeaseInner::Sqlite { file, .. } = &self.inner {
                    let _ = rustix::fs::flock(file, rustix::fs::FlockOperation::Unlock);
                }
            }
            LeaseInner::Postgres { stop, keeper } => {
                let _ = stop.send(true);
                let _ = tokio::time::timeout(STEP_TIMEOUT * 2, keeper).await;
            }
        }
    }
}

/// Opens the store a URL names as its writer: takes the writer lock, then runs the
/// migrations and records `me` as the holder. `WriterTaken` naming the holder when
/// another process has the lock; the store and the lease live together.
pub async fn open_writer(url: &str, me: &WriterIdentity) -> StoreResult<(Arc<dyn Store>, WriterLease)> {
    if url.starts_with("sqlite:") {
        let (store, lease) = open_sqlite_writer(url, me).await?;
        Ok((Arc::new(store), lease))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (store, lease) = open_postgres_writer(url, me).await?;
        Ok((Arc::new(store), lease))
    } else {
        Err(StoreError::UnsupportedUrl(mask_password(url)))
    }
}

// ---- SQLite ----

/// The lock file of a SQLite database: `<database>.lock` beside it.
pub fn sqlite_lock_path(database: &std::path::Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

async fn open_sqlite_writer(url: &str, me: &WriterIdentity) -> StoreResult<(SqliteStore, WriterLease)> {
    let connect_error = |reason: String| StoreError::Connect { url: mask_password(url), reason };
    let database = SqliteStore::prepare_path(url)?;
    let lock_path = sqlite_lock_path(&database);
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| connect_error(format!("cannot open the lock file {}: {e}", lock_path.display())))?
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(StoreError::WriterTaken { holder: read_sqlite_holder(url).await });
        }
        Err(e) => {
            return Err(connect_error(format!("cannot lock {}: {e}", lock_path.display())));
        }
    }
    let store = SqliteStore::open(url).await?;
    sqlite_holder::upsert(&mut *store.pool().acquire().await?, me).await?;
    let (state, receiver) = watch::channel(LeaseState::Held);
    let inner = LeaseInner::Sqlite { file, store, me: me.clone(), _state: state };
    let lease = WriterLease { state: receiver, inner };
    let LeaseInner::Sqlite { store, .. } = &lease.inner else { unreachable!("built as SQLite above") };
    Ok((store.clone(), lease))
}

/// The holder a SQLite database records, read without writing anything; `None` when it
/// cannot be read.
async fn read_sqlite_holder(url: &str) -> Option<WriterIdentity> {
    let options = SqliteConnectOptions::from_str(url).ok()?.read_only(true);
    let mut conn = options.connect().await.ok()?;
    let holder = sqlite_holder::read(&mut conn).await;
    let _ = conn.close().await;
    holder
}

// ---- PostgreSQL ----

async fn open_postgres_writer(url: &str, me: &WriterIdentity) -> StoreResult<(PostgresStore, WriterLease)> {
    let connect_error = |reason: String| StoreError::Connect { url: mask_password(url), reason };
    let options = PgConnectOptions::from_str(url).map_err(|e| connect_error(e.to_string()))?.application_name(LEASE_APPLICATION_NAME);
    // Like the pool, keep trying a server that is starting up, for a while.
    let deadline = tokio::time::Instant::now() + super::postgres::OPEN_TIMEOUT;
    let mut conn = loop {
        let reason = match tokio::time::timeout_at(deadline, options.connect()).await {
            Ok(Ok(conn)) => break conn,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        if tokio::time::Instant::now() + CONNECT_RETRY >= deadline {
            return Err(connect_error(format!("gave up after {}s: {reason}", super::postgres::OPEN_TIMEOUT.as_secs())));
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    };
    let Some(backend_pid) = try_lock(&mut conn).await? else {
        let holder = pg_holder::read(&mut conn).await;
        let _ = conn.close().await;
        return Err(StoreError::WriterTaken { holder });
    };
    let gate = Arc::new(WriterGate::default());
    gate.open(backend_pid);
    let store = PostgresStore::open_gated(url, Some(gate.clone())).await?;
    pg_holder::upsert(&mut conn, me).await?;
    let (state, receiver) = watch::channel(LeaseState::Held);
    let (stop, stop_rx) = watch::channel(false);
    let keeper = Keeper { options, me: me.clone(), gate, state, stop: stop_rx };
    let keeper = tokio::spawn(keeper.run(conn));
    Ok((store, WriterLease { state: receiver, inner: LeaseInner::Postgres { stop, keeper } }))
}

/// Tries the advisory lock on `conn`; the session's backend pid when taken.
async fn try_lock(conn: &mut PgConnection) -> StoreResult<Option<i32>> {
    let row = sqlx::query("SELECT pg_try_advisory_lock($1) AS taken, pg_backend_pid() AS backend")
        .bind(WRITER_LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    let taken: bool = row.try_get("taken")?;
    Ok(if taken { Some(row.try_get("backend")?) } else { None })
}

/// Holds the PostgreSQL lock's connection, checks it, and takes the lock again after it
/// broke.
struct Keeper {
    options: PgConnectOptions,
    me: WriterIdentity,
    gate: Arc<WriterGate>,
    state: watch::Sender<LeaseState>,
    stop: watch::Receiver<bool>,
}

impl Keeper {
    async fn run(mut self, mut conn: PgConnection) {
        loop {
            tokio::select! {
                _ = stopped(&mut self.stop) => {
                    self.gate.close();
                    let _ = pg_holder::delete(&mut conn, &self.me).await;
                    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(WRITER_LOCK_KEY).execute(&mut conn).await;
                    let _ = conn.close().await;
                    return;
                }
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
            let alive = matches!(tokio::time::timeout(STEP_TIMEOUT, conn.ping()).await, Ok(Ok(())));
            if alive {
                continue;
            }
            self.gate.close();
            self.state.send_replace(LeaseState::Reacquiring);
            tracing::warn!("the connection holding the writer lock broke; nothing is written until the lock is taken again");
            match self.reacquire().await {
                Some(fresh) => {
                    conn = fresh;
                    self.state.send_replace(LeaseState::Held);
                    tracing::info!("writer lock taken again");
                }
                None => return,
            }
        }
    }

    /// Reconnects until the lock is taken again (the fresh connection, gate opened) or
    /// another control plane holds it (`None`, state `Lost`), or the lease is released.
    async fn reacquire(&mut self) -> Option<PgConnection> {
        loop {
            if *self.stop.borrow() {
                return None;
            }
            match tokio::time::timeout(STEP_TIMEOUT, self.options.connect()).await {
                Ok(Ok(mut conn)) => match tokio::time::timeout(STEP_TIMEOUT, try_lock(&mut conn)).await {
                    Ok(Ok(Some(backend_pid))) => {
                        if let Err(err) = pg_holder::upsert(&mut conn, &self.me).await {
                            tracing::warn!(error = %err, "could not record this control plane as the writer");
                        }
                        self.gate.open(backend_pid);
                        return Some(conn);
                    }
                    Ok(Ok(None)) => {
                        let holder = pg_holder::read(&mut conn).await;
                        let _ = conn.close().await;
                        // Our own record: the old session of this process still holds the
                        // lock until the server notices it is gone. Nobody else writes.
                        if holder.as_ref() != Some(&self.me) {
                            tracing::error!(holder = describe_holder(&holder), "another control plane took the writer lock");
                            self.state.send_replace(LeaseState::Lost(holder));
                            return None;
                        }
                    }
                    Ok(Err(err)) => tracing::debug!(error = %err, "taking the writer lock again failed"),
                    Err(_) => tracing::debug!("taking the writer lock again timed out"),
                },
                Ok(Err(err)) => tracing::debug!(error = %err, "reconnecting for the writer lock failed"),
                Err(_) => tracing::debug!("reconnecting for the writer lock timed out"),
            }
            tokio::select! {
                _ = stopped(&mut self.stop) => return None,
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
        }
    }
}

/// Resolves when the lease is released (or its owner is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

// ---- the holder record, both backends ----

/// The holder record's statements on one backend's connection type.
macro_rules! holder_record {
    ($module:ident, $conn:ty) => {
        mod $module {
            use super::{DELETE_HOLDER, SELECT_HOLDER, UPSERT_HOLDER, WriterIdentity, holder_from_row};
            use crate::store::StoreResult;
            use crate::store::rows::millis;

            /// Records `me` as the holder.
            pub(super) async fn upsert(conn: &mut $conn, me: &WriterIdentity) -> StoreResult<()> {
                sqlx::query(UPSERT_HOLDER)
                    .bind(&me.host)
                    .bind(i64::from(me.pid))
                    .bind(millis(me.started_at))
                    .bind(&me.version)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            /// Removes the record if it still names `me`.
            pub(super) async fn delete(conn: &mut $conn, me: &WriterIdentity) -> StoreResult<()> {
                sqlx::query(DELETE_HOLDER).bind(&me.host).bind(i64::from(me.pid)).bind(millis(me.started_at)).execute(&mut *conn).await?;
                Ok(())
            }

            /// The recorded holder; `None` when there is none or it cannot be read (no
            /// table yet).
            pub(super) async fn read(conn: &mut $conn) -> Option<WriterIdentity> {
                let row = sqlx::query(SELECT_HOLDER).fetch_optional(&mut *conn).await.ok()??;
                holder_from_row(&row).ok()
            }
        }
    };
}

holder_record!(pg_holder, sqlx::PgConnection);
holder_record!(sqlite_holder, sqlx::SqliteConnection);

fn holder_from_row<R: super::rows::StoreRow>(row: &R) -> StoreResult<WriterIdentity> {
    let pid: i64 = row.column("pid")?;
    Ok(WriterIdentity {
        host: row.column("host")?,
        pid: u32::try_from(pid).map_err(|e| StoreError::Corrupt { column: "writer_lease.pid", reason: format!("{pid}: {e}") })?,
        started_at: time("writer_lease.started_at", row.column("started_at")?)?,
        version: row.column("version")?,
    })
}
