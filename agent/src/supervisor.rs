//! The agent's supervisor: health checks and restart policies, the same on every runtime.
//!
//! The rule, on every runtime:
//! * a container with a health check is probed every `interval` (a command through the
//!   driver's exec, an HTTP `GET` or a TCP connection from the node to the container's
//!   address, each bounded by `timeout`); its health goes `starting` → `healthy` on a
//!   pass, and `unhealthy` after `retries` failures in a row (failures within
//!   `start_period` of a start do not count);
//! * a container that exits is started again by its policy: `always` and
//!   `unless-stopped` whatever the exit code, `on-failure[:N]` on a non-zero exit (at most
//!   N restarts in a row), `no` never; a container stopped by hand stays stopped;
//! * a container that turns unhealthy is restarted unless its policy is `no` (or
//!   `on-failure:N` has used its N restarts);
//! * restarts wait an exponential back-off ([`backoff`]: 1 s doubling to 60 s), reset once
//!   the container has run for [`SETTLED`] without turning unhealthy.
//!
//! Where the runtime already does part of it, the daemon keeps that part (see
//! [`Division`]): Docker runs command checks, and Docker and Podman restart exited
//! containers themselves; the supervisor probes every other check (HTTP and TCP on
//! Docker, all of them on Podman, whose checks hang on systemd timers), and restarts
//! unhealthy containers everywhere (no daemon does). containerd and LXC get all of it
//! from the supervisor.
//!
//! [`Supervised`] wraps a driver: every container created through it with a health check
//! or a restart policy gets a record (its check, its policy, whether it was stopped by
//! hand, its restart counts), kept in memory and in one JSON file per container under the
//! agent's data directory, so that supervision resumes after an agent restart; its health
//! and restart count are laid over what the driver reports (`inspect`, `list`), and
//! health changes and the supervisor's restarts are announced on the driver's event
//! stream. The decisions are pure functions ([`after_probe`], [`decide`]) with table
//! tests; the effect loop ([`Supervised`]'s tasks) only observes and acts on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ContainerStats, ContainerStatus, ExecOutput, Health, HealthCheck, HealthProbe, LogChunk, LogOptions,
    RestartPolicy, RuntimeEvent, RuntimeEventKind,
};
use diplo_api::resources::{ImageInfo, NetworkInfo, NetworkSpec, PruneReport, VolumeInfo, VolumeSpec};
use diplo_api::runtime::Runtime;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use crate::runtime::{ContainerRuntime, RuntimeError, RuntimeResult, RuntimeStream};

/// The first restart's wait; each restart in a row doubles it.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait between restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Running this long without turning unhealthy resets the back-off.
pub const SETTLED: Duration = Duration::from_secs(10);
/// How often the supervisor looks at each container it supervises.
pub const TICK: Duration = Duration::from_millis(250);
/// Grace period of the supervisor's restarts (SIGTERM, then SIGKILL).
pub const RESTART_GRACE: Duration = crate::DEFAULT_GRACE;
/// The most bytes of an HTTP answer read to find its status line.
const HTTP_HEAD_LIMIT: usize = 1024;

/// What the runtime's daemon does by itself, so that the supervisor does not do it twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Division {
    /// The daemon restarts exited containers by their restart policy.
    pub daemon_restarts_exits: bool,
    /// The daemon runs command health checks and reports their health.
    pub daemon_runs_commands: bool,
}

impl Division {
    /// The division on `runtime`: Docker restarts exited containers and runs command
    /// checks; Podman restarts exited containers but runs its checks from systemd timers,
    /// which do not fire without systemd, so the supervisor probes them; containerd and
    /// LXC do neither.
    pub fn of(runtime: Runtime) -> Self {
        Division {
            daemon_restarts_exits: matches!(runtime, Runtime::Docker | Runtime::Podman),
            daemon_runs_commands: runtime == Runtime::Docker,
        }
    }

    /// Whether the supervisor probes `check` itself (else the daemon reports its health).
    pub fn probes(self, check: &HealthCheck) -> bool {
        !(self.daemon_runs_commands && check.probe.argv().is_some())
    }

    /// Whether a container created from `spec` needs the supervisor at all.
    pub fn supervises(self, spec: &ContainerSpec) -> bool {
        let restarts = spec.restart_policy != RestartPolicy::No;
        match &spec.healthcheck {
            Some(check) => restarts || self.probes(check),
            None => restarts && !self.daemon_restarts_exits,
        }
    }
}

/// Where a health check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    /// The health reported.
    pub health: Health,
    /// Failures in a row that counted.
    pub failures: u32,
}

impl ProbeState {
    /// A check that has not passed yet since the container started.
    pub const STARTING: ProbeState = ProbeState { health: Health::Starting, failures: 0 };
}

/// The state after one probe: a pass makes it healthy; a failure counts (unless within the
/// start period), and `retries` counted failures in a row make it unhealthy.
pub fn after_probe(state: ProbeState, passed: bool, in_start_period: bool, retries: u32) -> ProbeState {
    if passed {
        return ProbeState { health: Health::Healthy, failures: 0 };
    }
    if in_start_period {
        return state;
    }
    let failures = state.failures.saturating_add(1);
    let health = if failures >= retries.max(1) { Health::Unhealthy } else { state.health };
    ProbeState { health, failures }
}

/// The wait before the restart that follows `restarts_in_a_row` restarts: 1 s, 2 s, 4 s, …
/// up to [`BACKOFF_MAX`].
pub fn backoff(restarts_in_a_row: u32) -> Duration {
    BACKOFF_START.saturating_mul(1u32.checked_shl(restarts_in_a_row.min(16)).unwrap_or(u32::MAX)).min(BACKOFF_MAX)
}

/// What the supervisor knows of a container when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Its restart policy.
    pub policy: RestartPolicy,
    /// Its state as the runtime reports it.
    pub status: ContainerStatus,
    /// Exit code of its last run.
    pub exit_code: i64,
    /// Its health (`None` without a check).
    pub health: Option<Health>,
    /// It was stopped by hand (and not started since).
    pub stopped_by_hand: bool,
    /// Restarts since it last ran settled.
    pub restarts_in_a_row: u32,
    /// The daemon restarts exited containers itself.
    pub daemon_restarts_exits: bool,
    /// How long it has been exited or unhealthy (as the supervisor saw it).
    pub bad_for: Duration,
}

/// What to do about a container now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing (it is fine, or its policy leaves it as it is).
    Leave,
    /// Act later: the back-off has this much left.
    Wait(Duration),
    /// Start it (it exited).
    Start,
    /// Restart it (it is unhealthy).
    Restart,
}

/// Whether `policy` still allows a restart after `restarts_in_a_row`.
fn retries_left(policy: RestartPolicy, restarts_in_a_row: u32) -> bool {
    policy.max_retries().is_none_or(|max| restarts_in_a_row < max)
}

/// What to do given a container's policy, state, last exit, health, restarts in a row and
/// how long it has been in trouble (see the module's rules).
pub fn decide(facts: &Facts) -> Decision {
    let act = match facts.status {
        ContainerStatus::Exited => {
            let wanted = match facts.policy {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure(_) => facts.exit_code != 0,
                RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            };
            if !wanted || facts.stopped_by_hand || facts.daemon_restarts_exits {
                return Decision::Leave;
            }
            Decision::Start
        }
        ContainerStatus::Running if facts.health == Some(Health::Unhealthy) => {
            if facts.policy == RestartPolicy::No {
                return Decision::Leave;
            }
            Decision::Restart
        }
        _ => return Decision::Leave,
    };
    if !retries_left(facts.policy, facts.restarts_in_a_row) {
        return Decision::Leave;
    }
    let wait = backoff(facts.restarts_in_a_row);
    if facts.bad_for < wait { Decision::Wait(wait - facts.bad_for) } else { act }
}

/// What the supervisor keeps of a container, on disk and in memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The runtime's id.
    id: String,
    /// Its name (commands may name a container by either).
    name: String,
    policy: RestartPolicy,
    healthcheck: Option<HealthCheck>,
    stopped_by_hand: bool,
    /// Restarts the supervisor made, in all.
    restart_count: u32,
    /// Restarts since it last ran settled.
    restarts_in_a_row: u32,
    #[serde(skip)]
    live: Live,
}

/// What is re-derived after an agent restart: the current run's probes.
#[derive(Debug, Clone, Default)]
struct Live {
    /// The start time of the run being probed, as the runtime reports it.
    run: Option<String>,
    /// When the supervisor first saw this run.
    seen_running: Option<Instant>,
    probe: Option<ProbeState>,
    next_probe: Option<Instant>,
    /// Since when it is exited or unhealthy.
    bad_since: Option<Instant>,
}

struct Shared {
    division: Division,
    dir: Option<PathBuf>,
    records: Mutex<BTreeMap<String, Record>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Shared {
    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The record's key for `id_or_name`.
    fn key(&self, id_or_name: &str) -> Option<String> {
        let records = self.records();
        if records.contains_key(id_or_name) {
            return Some(id_or_name.to_owned());
        }
        records.values().find(|r| r.name == id_or_name).map(|r| r.id.clone())
    }

    fn update<T>(&self, id: &str, change: impl FnOnce(&mut Record) -> T) -> Option<T> {
        let mut records = self.records();
        let record = records.get_mut(id)?;
        Some(change(record))
    }

    fn persist(&self, id: &str) {
        let Some(dir) = &self.dir else { return };
        let Some(record) = self.records().get(id).cloned() else { return };
        let Some(path) = record_path(dir, id) else { return };
        let written = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other).and_then(|json| {
            std::fs::create_dir_all(dir)?;
            let partial = path.with_extension("json.partial");
            std::fs::write(&partial, json)?;
            std::fs::rename(&partial, &path)
        });
        if let Err(err) = written {
            tracing::warn!(container = %id, path = %path.display(), error = %err, "cannot save the supervisor's record");
        }
    }

    fn forget(&self, id: &str) {
        self.records().remove(id);
        if let Some(path) = self.dir.as_deref().and_then(|dir| record_path(dir, id)) {
            let _ = std::fs::remove_file(path);
        }
    }

    fn announce(&self, id: &str, kind: RuntimeEventKind) {
        // Nobody listening is fine.
        let _ = self.events.send(RuntimeEvent { container_id: id.to_owned(), kind });
    }

    /// `info` with the supervisor's health and restarts laid over the runtime's.
    fn overlay(&self, mut info: ContainerInfo) -> ContainerInfo {
        if let Some(record) = self.records().get(&info.id) {
            if let Some(check) = &record.healthcheck
                && self.division.probes(check)
            {
                info.health = Some(record.live.probe.map_or(Health::Starting, |p| p.health));
            }
            info.restart_count = info.restart_count.saturating_add(record.restart_count);
        }
        info
    }
}

/// The file of a container's record; `None` for an id that is not a plain file name.
fn record_path(dir: &Path, id: &str) -> Option<PathBuf> {
    let plain = !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    (plain && !id.starts_with('.')).then(|| dir.join(format!("{id}.json")))
}

/// A driver whose containers are supervised (see the module documentation).
pub struct Supervised {
    inner: Arc<dyn ContainerRuntime>,
    shared: Arc<Shared>,
}

impl Supervised {
    /// Supervises the containers of `inner`, keeping records under `dir` (`None`: in
    /// memory only) and resuming the supervision of those recorded there. Must be called
    /// within a Tokio runtime (it spawns one task per supervised container; the tasks end
    /// when this value is dropped or their container is removed).
    pub fn new(inner: Arc<dyn ContainerRuntime>, dir: Option<PathBuf>) -> Self {
        let shared = Arc::new(Shared {
            division: Division::of(inner.runtime()),
            dir,
            records: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(256).0,
        });
        let supervised = Supervised { inner, shared };
        for record in supervised.load() {
            let id = record.id.clone();
            supervised.shared.records().insert(id.clone(), record);
            supervised.spawn(id);
        }
        supervised
    }

    fn load(&self) -> Vec<Record> {
        let Some(dir) = &self.shared.dir else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut records = Vec::new();
        for path in entries.flatten().map(|entry| entry.path()).filter(|path| path.extension().is_some_and(|e| e == "json")) {
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).map_err(|e| e.to_string()))
            {
                Ok(record) if record_path(dir, &record.id).as_deref() == Some(path.as_path()) => records.push(record),
                Ok(_) => tracing::warn!(path = %path.display(), "a supervisor record names another container: ignored"),
                Err(err) => tracing::warn!(path = %path.display(), error = %err, "unreadable supervisor record: ignored"),
            }
        }
        if !records.is_empty() {
            tracing::info!(runtime = %self.inner.runtime(), count = records.len(), "resuming the supervision of containers");
        }
        records
    }

    fn spawn(&self, id: String) {
        tokio::spawn(supervise(Arc::downgrade(&self.shared), Arc::clone(&self.inner), id));
    }

    /// The record key of a container named by id or name: from the records, else from
    /// the runtime (which resolves names).
    async fn key(&self, id_or_name: &str) -> Option<String> {
        if let Some(key) = self.shared.key(id_or_name) {
            return Some(key);
        }
        let id = self.inner.inspect(id_or_name).await.ok()?.id;
        self.shared.records().contains_key(&id).then_some(id)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.shared.records().clear();
    }
}

/// One probe of `check` against the container `info`, within its timeout.
async fn probe(inner: &dyn ContainerRuntime, info: &ContainerInfo, check: &HealthCheck) -> bool {
    let attempt = async {
        match &check.probe {
            HealthProbe::Exec { .. } | HealthProbe::Shell { .. } => {
                let argv = check.probe.argv().unwrap_or_default();
                inner.exec(&info.id, &argv).await.is_ok_and(|out| out.exit_code == 0)
            }
            HealthProbe::Tcp { port } => match address(info, *port) {
                Some(addr) => tokio::net::TcpStream::connect(addr.as_str()).await.is_ok(),
                None => false,
            },
            HealthProbe::Http { port, path } => match address(info, *port) {
                Some(addr) => http_status(&addr, path).await.is_some_and(|status| (200..400).contains(&status)),
                None => false,
            },
        }
    };
    tokio::time::timeout(check.timeout, attempt).await.unwrap_or(false)
}

/// Where the node reaches `port` of the container: its address on the runtime's network,
/// else the host port publishing it on loopback.
fn address(info: &ContainerInfo, port: u16) -> Option<String> {
    if let Some(ip) = info.ip_address.as_deref().filter(|ip| !ip.is_empty()) {
        return Some(match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{ip}:{port}"),
        });
    }
    info.ports.iter().find(|p| p.container_port == port).map(|p| format!("127.0.0.1:{}", p.host_port))
}

/// The status code of `GET path` at `addr` (HTTP/1.1, redirects not followed).
async fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: diplo-healthcheck\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < HTTP_HEAD_LIMIT {
        let read = stream.read(&mut buf).await.ok()?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buf[..read]);
    }
    status_code(&head)
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK`).
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|version| version.starts_with("HTTP/"))?;
    parts.next()?.parse().ok().filter(|code| (100..600).contains(code))
}

/// Supervises one container until it is removed or the supervisor dropped.
async fn supervise(shared: Weak<Shared>, inner: Arc<dyn ContainerRuntime>, id: String) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(shared) = shared.upgrade() else { return };
        if !shared.records().contains_key(&id) {
            return;
        }
        match inner.inspect(&id).await {
            Ok(info) => tick(&shared, inner.as_ref(), &id, info).await,
            Err(RuntimeError::NotFound { .. }) => {
                tracing::debug!(container = %id, "gone: no longer supervised");
                shared.forget(&id);
                return;
            }
            Err(err) => tracing::debug!(container = %id, error = %err, "cannot inspect a supervised container"),
        }
    }
}

/// One look at a container: notes a new run, probes when due, then acts on [`decide`].
async fn tick(shared: &Shared, inner: &dyn ContainerRuntime, id: &str, info: ContainerInfo) {
    let now = Instant::now();
    let running = info.status == ContainerStatus::Running;
    // A new run (started, or restarted by the daemon between two looks) starts its checks afresh.
    let Some((check, due)) = shared.update(id, |record| {
        if !running {
            record.live.seen_running = None;
        } else if record.live.seen_running.is_none() || record.live.run != info.started_at {
            let interval = record.healthcheck.as_ref().map_or(TICK, |c| c.interval);
            record.live = Live {
                run: info.started_at.clone(),
                seen_running: Some(now),
                probe: Some(ProbeState::STARTING),
                next_probe: Some(now + interval),
                bad_since: None,
            };
        }
        let check = record.healthcheck.clone().filter(|check| shared.division.probes(check));
        let due = running && record.live.next_probe.is_some_and(|at| now >= at);
        (check, due)
    }) else {
        return;
    };
    if let (Some(check), true) = (&check, due) {
        let passed = probe(inner, &info, check).await;
        let now = Instant::now();
        let changed = shared.update(id, |record| {
            let since = record.live.seen_running?;
            let before = record.live.probe.unwrap_or(ProbeState::STARTING);
            let after = after_probe(before, passed, now.duration_since(since) < check.start_period, check.retries);
            record.live.probe = Some(after);
            record.live.next_probe = Some(now + check.interval);
            (after.health != before.health).then_some(after.health)
        });
        if let Some(Some(health)) = changed {
            tracing::info!(container = %id, ?health, "health changed");
            let kind = if health == Health::Unhealthy { RuntimeEventKind::Unhealthy } else { RuntimeEventKind::Healthy };
            shared.announce(id, kind);
        }
    }
    let facts = shared.update(id, |record| {
        let health = match &check {
            Some(_) => record.live.probe.map(|p| p.health),
            None => info.health,
        };
        let bad = !running || health == Some(Health::Unhealthy);
        if !bad {
            record.live.bad_since = None;
        } else if record.live.bad_since.is_none() {
            record.live.bad_since = Some(now);
        }
        let settled = running && record.live.seen_running.is_some_and(|since| now.duration_since(since) >= SETTLED) && !bad;
        let reset = settled && record.restarts_in_a_row > 0;
        if reset {
            record.restarts_in_a_row = 0;
        }
        let facts = Facts {
            policy: record.policy,
            status: info.status,
            exit_code: info.exit_code,
            health,
            stopped_by_hand: record.stopped_by_hand,
            restarts_in_a_row: record.restarts_in_a_row,
            daemon_restarts_exits: shared.division.daemon_restarts_exits,
            bad_for: record.live.bad_since.map_or(Duration::ZERO, |since| now.duration_since(since)),
        };
        (facts, reset)
    });
    let Some((facts, reset)) = facts else { return };
    if reset {
        shared.persist(id);
    }
    let decision = decide(&facts);
    let acted = match decision {
        Decision::Leave | Decision::Wait(_) => return,
        Decision::Start => inner.start(id).await,
        Decision::Restart => inner.restart(id, RESTART_GRACE).await,
    };
    match acted {
        Ok(()) => {
            let count = shared.update(id, |record| {
                record.restart_count = record.restart_count.saturating_add(1);
                record.restarts_in_a_row = record.restarts_in_a_row.saturating_add(1);
                record.live = Live::default();
                record.restart_count
            });
            tracing::info!(container = %id, ?decision, exit_code = facts.exit_code, health = ?facts.health,
                restart_count = ?count, policy = %facts.policy, "restarted by its policy");
            shared.persist(id);
            shared.announce(id, RuntimeEventKind::Changed);
        }
        Err(err) => tracing::warn!(container = %id, ?decision, error = %err, "cannot restart a supervised container"),
    }
}

#[async_trait]
impl ContainerRuntime for Supervised {
    fn runtime(&self) -> Runtime {
        self.inner.runtime()
    }
    async fn version(&self) -> RuntimeResult<String> {
        self.inner.version().await
    }
    async fn ensure_image(&self, image: &str) -> RuntimeResult<()> {
        self.inner.ensure_image(image).await
    }
    async fn import_image(&self, archive: &Path, reference: &str) -> RuntimeResult<()> {
        self.inner.import_image(archive, reference).await
    }
    async fn create(&self, spec: &ContainerSpec) -> RuntimeResult<String> {
        if let Some(check) = &spec.healthcheck {
            check.validate().map_err(|e| RuntimeError::InvalidArgument { field: e.field, message: e.message })?;
        }
        let id = self.inner.create(spec).await?;
        if self.shared.division.supervises(spec) {
            let record = Record {
                id: id.clone(),
                name: spec.name.clone(),
                policy: spec.restart_policy,
                healthcheck: spec.healthcheck.clone(),
                stopped_by_hand: false,
                restart_count: 0,
                restarts_in_a_row: 0,
                live: Live::default(),
            };
            self.shared.records().insert(id.clone(), record);
            self.shared.persist(&id);
            self.spawn(id.clone());
        }
        Ok(id)
    }
    async fn start(&self, id: &str) -> RuntimeResult<()> {
        self.inner.start(id).await?;
        if let Some(key) = self.key(id).await
            && self.shared.update(&key, |record| std::mem::replace(&mut record.stopped_by_hand, false)) == Some(true)
        {
            self.shared.persist(&key);
        }
        Ok(())
    }
    async fn stop(&self, id: &str, grace: Duration) -> RuntimeResult<()> {
        // Marked first, so that the supervisor does not start it again while it stops.
        let key = self.key(id).await;
        if let Some(key) = &key {
            self.shared.update(key, |record| record.stopped_by_hand = true);
            self.shared.persist(key);
        }
        let stopped = self.inner.stop(id, grace).await;
        if stopped.is_err()
            && let Some(key) = &key
        {
            self.shared.update(key, |record| record.stopped_by_hand = false);
            self.shared.persist(key);
        }
        stopped
    }
    async fn restart(&self, id: &str, grace: Duration) -> RuntimeResult<()> {
        self.inner.restart(id, grace).await?;
        if let Some(key) = self.key(id).await {
            self.shared.update(&key, |record| {
                record.stopped_by_hand = false;
                record.restarts_in_a_row = 0;
            });
            self.shared.persist(&key);
        }
        Ok(())
    }
    async fn remove(&self, id: &str, force: bool) -> RuntimeResult<()> {
        let key = self.key(id).await;
        self.inner.remove(id, force).await?;
        if let Some(key) = key {
            self.shared.forget(&key);
        }
        Ok(())
    }
    async fn list(&self) -> RuntimeResult<Vec<ContainerInfo>> {
        Ok(self.inner.list().await?.into_iter().map(|info| self.shared.overlay(info)).collect())
    }
    async fn inspect(&self, id: &str) -> RuntimeResult<ContainerInfo> {
        Ok(self.shared.overlay(self.inner.inspect(id).await?))
    }
    async fn logs(&self, id: &str, options: LogOptions) -> RuntimeResult<RuntimeStream<LogChunk>> {
        self.inner.logs(id, options).await
    }
    async fn exec(&self, id: &str, argv: &[String]) -> RuntimeResult<ExecOutput> {
        self.inner.exec(id, argv).await
    }
    async fn stats(&self, id: &str) -> RuntimeResult<ContainerStats> {
        self.inner.stats(id).await
    }
    async fn events(&self) -> RuntimeResult<RuntimeStream<RuntimeEvent>> {
        let receiver = self.shared.events.subscribe();
        let runtime = self.inner.events().await?;
        let own = futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => return Some((Ok(event), receiver)),
                    // A slow reader missed some: its next full list catches up.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        // The runtime's stream decides when the merged one ends (the caller then lists and
        // subscribes again).
        let runtime = runtime.map(Some).chain(futures::stream::once(async { None }));
        let merged = futures::stream::select(runtime, own.map(Some))
            .take_while(|item| std::future::ready(item.is_some()))
            .filter_map(std::future::ready);
        Ok(Box::pin(merged))
    }
    async fn list_images(&self) -> RuntimeResult<Vec<ImageInfo>> {
        self.inner.list_images().await
    }
    async fn inspect_image(&self, image: &str) -> RuntimeResult<ImageInfo> {
        self.inner.inspect_image(image).await
    }
    async fn remove_image(&self, image: &str, force: bool) -> RuntimeResult<()> {
        self.inner.remove_image(image, force).await
    }
    async fn prune_images(&self, all: bool) -> RuntimeResult<PruneReport> {
        self.inner.prune_images(all).await
    }
    async fn create_network(&self, spec: &NetworkSpec) -> RuntimeResult<NetworkInfo> {
        self.inner.create_network(spec).await
    }
    async fn list_networks(&self) -> RuntimeResult<Vec<NetworkInfo>> {
        self.inner.list_networks().await
    }
    async fn inspect_network(&self, network: &str) -> RuntimeResult<NetworkInfo> {
        self.inner.inspect_network(network).await
    }
    async fn remove_network(&self, network: &str) -> RuntimeResult<()> {
        self.inner.remove_network(network).await
    }
    async fn connect_network(&self, network: &str, container: &str) -> RuntimeResult<()> {
        self.inner.connect_network(network, container).await
    }
    async fn disconnect_network(&self, network: &str, container: &str) -> RuntimeResult<()> {
        self.inner.disconnect_network(network, container).await
    }
    async fn create_volume(&self, spec: &VolumeSpec) -> RuntimeResult<VolumeInfo> {
        self.inner.create_volume(spec).await
    }
    async fn list_volumes(&self) -> RuntimeResult<Vec<VolumeInfo>> {
        self.inner.list_volumes().await
    }
    async fn inspect_volume(&self, volume: &str) -> RuntimeResult<VolumeInfo> {
        self.inner.inspect_volume(volume).await
    }
    async fn remove_volume(&self, volume: &str) -> RuntimeResult<()> {
        self.inner.remove_volume(volume).await
    }
    async fn prune_volumes(&self) -> RuntimeResult<PruneReport> {
        self.inner.prune_volumes().await
    }
    async fn pause(&self, id: &str) -> RuntimeResult<()> {
        self.inner.pause(id).await
    }
    async fn unpause(&self, id: &str) -> RuntimeResult<()> {
        self.inner.unpause(id).await
    }
    async fn copy_from(&self, id: &str, path: &str) -> RuntimeResult<Vec<u8>> {
        self.inner.copy_from(id, path).await
    }
    async fn copy_to(&self, id: &str, dir: &str, archive: Vec<u8>) -> RuntimeResult<()> {
        self.inner.copy_to(id, dir, archive).await
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn probes_count_failures_into_unhealthy_and_a_pass_heals() {
        let starting = ProbeState::STARTING;
        let healthy = ProbeState { health: Health::Healthy, failures: 0 };
        // (state, passed, in start period, retries, expected)
        let cases = [
            (starting, true, false, 3, healthy),
            (starting, true, true, 3, healthy),
            (starting, false, true, 1, starting),
            (starting, false, false, 3, ProbeState { health: Health::Starting, failures: 1 }),
            (starting, false, false, 1, ProbeState { health: Health::Unhealthy, failures: 1 }),
            (healthy, false, false, 2, ProbeState { health: Health::Healthy, failures: 1 }),
            (ProbeState { health: Health::Healthy, failures: 1 }, false, false, 2, ProbeState { health: Health::Unhealthy, failures: 2 }),
            (ProbeState { health: Health::Unhealthy, failures: 5 }, true, false, 2, healthy),
            (starting, false, false, 0, ProbeState { health: Health::Unhealthy, failures: 1 }),
        ];
        for (state, passed, in_start, retries, expected) in cases {
            assert_eq!(
                after_probe(state, passed, in_start, retries),
                expected,
                "{state:?} passed={passed} start={in_start} retries={retries}"
            );
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_a_minute() {
        let waits: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    fn facts(policy: RestartPolicy, status: ContainerStatus, exit_code: i64) -> Facts {
        Facts {
            policy,
            status,
            exit_code,
            health: None,
            stopped_by_hand: false,
            restarts_in_a_row: 0,
            daemon_restarts_exits: false,
            bad_for: S(5),
        }
    }

    #[test]
    fn decisions_follow_the_policy_the_state_and_the_backoff() {
        use ContainerStatus::{Created, Exited, Paused, Running};
        use RestartPolicy::{Always, No, OnFailure, UnlessStopped};
        let unhealthy = |f: Facts| Facts { health: Some(Health::Unhealthy), ..f };
        let cases = [
            // Exits.
            (facts(No, Exited, 1), Decision::Leave),
            (facts(Always, Exited, 0), Decision::Start),
            (facts(UnlessStopped, Exited, 137), Decision::Start),
            (facts(OnFailure(None), Exited, 1), Decision::Start),
            (facts(OnFailure(None), Exited, 0), Decision::Leave),
            (facts(OnFailure(Some(2)), Exited, 1), Decision::Start),
            (Facts { restarts_in_a_row: 1, ..facts(OnFailure(Some(2)), Exited, 1) }, Decision::Start),
            (Facts { restarts_in_a_row: 2, ..facts(OnFailure(Some(2)), Exited, 1) }, Decision::Leave),
            (Facts { restarts_in_a_row: 50, bad_for: S(60), ..facts(Always, Exited, 1) }, Decision::Start),
            (Facts { restarts_in_a_row: 50, ..facts(Always, Exited, 1) }, Decision::Wait(S(55))),
            // Stopped by hand stays stopped, whatever the policy.
            (Facts { stopped_by_hand: true, ..facts(Always, Exited, 0) }, Decision::Leave),
            (Facts { stopped_by_hand: true, ..facts(UnlessStopped, Exited, 143) }, Decision::Leave),
            // The daemon restarts exits itself.
            (Facts { daemon_restarts_exits: true, ..facts(Always, Exited, 1) }, Decision::Leave),
            // Back-off.
            (Facts { bad_for: Duration::from_millis(400), ..facts(Always, Exited, 1) }, Decision::Wait(Duration::from_millis(600))),
            (Facts { restarts_in_a_row: 3, bad_for: S(5), ..facts(Always, Exited, 1) }, Decision::Wait(S(3))),
            (Facts { restarts_in_a_row: 3, bad_for: S(8), ..facts(Always, Exited, 1) }, Decision::Start),
            // Unhealthy.
            (unhealthy(facts(No, Running, 0)), Decision::Leave),
            (unhealthy(facts(Always, Running, 0)), Decision::Restart),
            (unhealthy(facts(OnFailure(None), Running, 0)), Decision::Restart),
            (unhealthy(Facts { daemon_restarts_exits: true, ..facts(UnlessStopped, Running, 0) }), Decision::Restart),
            (unhealthy(Facts { restarts_in_a_row: 2, ..facts(OnFailure(Some(2)), Running, 0) }), Decision::Leave),
            (unhealthy(Facts { bad_for: Duration::ZERO, ..facts(Always, Running, 0) }), Decision::Wait(S(1))),
            // Fine, or not ours to act on.
            (facts(Always, Running, 0), Decision::Leave),
            (Facts { health: Some(Health::Starting), ..facts(Always, Running, 0) }, Decision::Leave),
            (facts(Always, Created, 0), Decision::Leave),
            (unhealthy(facts(Always, Paused, 0)), Decision::Leave),
        ];
        for (facts, expected) in cases {
            assert_eq!(decide(&facts), expected, "{facts:?}");
        }
    }

    fn policies() -> impl Strategy<Value = RestartPolicy> {
        prop_oneof![
            Just(RestartPolicy::No),
            Just(RestartPolicy::Always),
            Just(RestartPolicy::UnlessStopped),
            proptest::option::of(1u32..5).prop_map(RestartPolicy::OnFailure),
        ]
    }

    fn statuses() -> impl Strategy<Value = ContainerStatus> {
        prop_oneof![
            Just(ContainerStatus::Created),
            Just(ContainerStatus::Running),
            Just(ContainerStatus::Paused),
            Just(ContainerStatus::Restarting),
            Just(ContainerStatus::Exited),
            Just(ContainerStatus::Unknown),
        ]
    }

    proptest! {
        #[test]
        fn decisions_never_break_the_rules(
            policy in policies(),
            status in statuses(),
            exit_code in -1i64..3,
            health in proptest::option::of(prop_oneof![Just(Health::Starting), Just(Health::Healthy), Just(Health::Unhealthy)]),
            stopped_by_hand: bool,
            daemon_restarts_exits: bool,
            restarts_in_a_row in 0u32..10,
            bad_for_ms in 0u64..120_000,
        ) {
            let facts = Facts { policy, status, exit_code, health, stopped_by_hand, restarts_in_a_row, daemon_restarts_exits,
                bad_for: Duration::from_millis(bad_for_ms) };
            let decision = decide(&facts);
            if matches!(decision, Decision::Start | Decision::Restart | Decision::Wait(_)) {
                // `no` never restarts; on-failure:N stops after N; the back-off is waited out.
                prop_assert_ne!(policy, RestartPolicy::No);
                prop_assert!(policy.max_retries().is_none_or(|max| restarts_in_a_row < max));
            }
            match decision {
                Decision::Start => {
                    prop_assert_eq!(status, ContainerStatus::Exited);
                    prop_assert!(!stopped_by_hand && !daemon_restarts_exits);
                    prop_assert!(!(policy.is_on_failure() && exit_code == 0));
                    prop_assert!(facts.bad_for >= backoff(restarts_in_a_row));
                }
                Decision::Restart => {
                    prop_assert_eq!((status, health), (ContainerStatus::Running, Some(Health::Unhealthy)));
                    prop_assert!(facts.bad_for >= backoff(restarts_in_a_row));
                }
                Decision::Wait(left) => prop_assert!(left > Duration::ZERO && left <= backoff(restarts_in_a_row)),
                Decision::Leave => {}
            }
        }
    }

    #[test]
    fn the_daemon_keeps_what_it_does_and_the_supervisor_takes_the_rest() {
        let command = HealthCheck::command(vec!["true".into()]);
        let http = HealthCheck { probe: HealthProbe::Http { port: 80, path: "/".into() }, ..command.clone() };
        let spec = |policy, check: Option<&HealthCheck>| ContainerSpec {
            restart_policy: policy,
            healthcheck: check.cloned(),
            ..ContainerSpec::default()
        };
        // (runtime, spec, supervised?)
        let cases = [
            (Runtime::Docker, spec(RestartPolicy::No, None), false),
            (Runtime::Docker, spec(RestartPolicy::Always, None), false),
            (Runtime::Docker, spec(RestartPolicy::No, Some(&command)), false),
            (Runtime::Docker, spec(RestartPolicy::Always, Some(&command)), true),
            (Runtime::Podman, spec(RestartPolicy::No, Some(&http)), true),
            (Runtime::Podman, spec(RestartPolicy::No, Some(&command)), true),
            (Runtime::Podman, spec(RestartPolicy::Always, None), false),
            (Runtime::Containerd, spec(RestartPolicy::No, None), false),
            (Runtime::Containerd, spec(RestartPolicy::ON_FAILURE, None), true),
            (Runtime::Lxc, spec(RestartPolicy::No, Some(&command)), true),
        ];
        for (runtime, spec, supervised) in cases {
            assert_eq!(Division::of(runtime).supervises(&spec), supervised, "{runtime} {spec:?}");
        }
        assert!(!Division::of(Runtime::Docker).probes(&command));
        assert!(Division::of(Runtime::Docker).probes(&http));
        assert!(Division::of(Runtime::Lxc).probes(&command));
        assert!(Division::of(Runtime::Podman).probes(&command));
    }

    #[test]
    fn status_lines_and_addresses_are_read_strictly() {
        for (head, code) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], Some(200)),
            (b"HTTP/1.0 302 Found\r\nLocation: http://elsewhere/\r\n", Some(302)),
            (b"HTTP/1.1 503 Service Unavailable\r\n", Some(503)),
            (b"SSH-2.0-OpenSSH\r\n", None),
            (b"HTTP/1.1 abc\r\n", None),
            (b"HTTP/1.1 999 Nope\r\n", None),
            (b"", None),
        ] {
            assert_eq!(status_code(head), code, "{:?}", String::from_utf8_lossy(head));
        }
        let info = |ip: Option<&str>| ContainerInfo {
            ip_address: ip.map(str::to_owned),
            ports: vec![diplo_api::container::PortMapping { host_port: 18080, container_port: 80, protocol: Default::default() }],
            ..ContainerInfo::new("c", "c", "i", ContainerStatus::Running)
        };
        assert_eq!(address(&info(Some("10.0.3.5")), 80).as_deref(), Some("10.0.3.5:80"));
        assert_eq!(address(&info(Some("fd00::5")), 80).as_deref(), Some("[fd00::5]:80"));
        assert_eq!(address(&info(None), 80).as_deref(), Some("127.0.0.1:18080"));
        assert_eq!(address(&info(None), 81), None);
        assert_eq!(record_path(Path::new("/d"), "abc-1.x"), Some(PathBuf::from("/d/abc-1.x.json")));
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert_eq!(record_path(Path::new("/d"), bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn an_http_probe_passes_on_2xx_and_3xx_and_follows_no_redirect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 301 Moved\r\nLocation: http://203.0.113.1/\r\n\r\n",
                "HTTP/1.1 500 Oops\r\n\r\n",
            ] {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut request = [0u8; 512];
                let read = socket.read(&mut request).await.expect("request");
                assert!(request[..read].starts_with(b"GET /healthz HTTP/1.1\r\n"), "{:?}", String::from_utf8_lossy(&request[..read]));
                socket.write_all(answer.as_bytes()).await.expect("answer");
            }
        });
        let info = ContainerInfo { ip_address: Some("127.0.0.1".into()), ..ContainerInfo::new("c", "c", "i", ContainerStatus::Running) };
        let check = HealthCheck { probe: HealthProbe::Http { port: addr.port(), path: "/healthz".into() }, ..HealthCheck::command(vec![]) };
        let runtime = crate::runtime::fake::FakeRuntime::new(Runtime::Lxc);
        assert!(probe(&runtime, &info, &check).await, "204");
        assert!(probe(&runtime, &info, &check).await, "301 is a pass, not followed");
        assert!(!probe(&runtime, &info, &check).await, "500");
        server.await.expect("server");
        let tcp = HealthCheck { probe: HealthProbe::Tcp { port: addr.port() }, timeout: Duration::from_secs(1), ..check };
        assert!(!probe(&runtime, &info, &tcp).await, "nobody listens any more");
    }

    #[tokio::test]
    async fn supervision_resumes_after_an_agent_restart_from_its_records() {
        use crate::runtime::fake::FakeRuntime;
        const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = Arc::new(FakeRuntime::new(Runtime::Lxc));
        let inner: Arc<dyn ContainerRuntime> = fake.clone();
        inner.ensure_image(IMAGE).await.expect("image");
        let spec = |name: &str| ContainerSpec {
            name: name.into(),
            image: IMAGE.into(),
            restart_policy: RestartPolicy::Always,
            ..ContainerSpec::default()
        };
        let agent = Supervised::new(Arc::clone(&inner), Some(dir.path().to_path_buf()));
        let crashes = agent.create(&spec("crashes")).await.expect("create");
        agent.start(&crashes).await.expect("start");
        let by_hand = agent.create(&spec("by-hand")).await.expect("create");
        agent.start(&by_hand).await.expect("start");
        agent.stop("by-hand", Duration::from_secs(1)).await.expect("stop by name");
        drop(agent);
        // While the agent is away, one container exits.
        inner.stop(&crashes, Duration::from_secs(1)).await.expect("exit");

        let agent = Supervised::new(Arc::clone(&inner), Some(dir.path().to_path_buf()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let restarted = loop {
            let info = agent.inspect(&crashes).await.expect("inspect");
            if info.status == ContainerStatus::Running {
                break info;
            }
            assert!(Instant::now() < deadline, "not restarted after the agent restart: {info:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(restarted.restart_count, 1, "{restarted:?}");
        let stopped = agent.inspect(&by_hand).await.expect("inspect");
        assert_eq!((stopped.status, stopped.restart_count), (ContainerStatus::Exited, 0), "stopped by hand stays stopped: {stopped:?}");
        drop(agent);

        // The count is kept on disk; a removed container's record goes with it.
        let agent = Supervised::new(Arc::clone(&inner), Some(dir.path().to_path_buf()));
        assert_eq!(agent.inspect(&crashes).await.expect("inspect").restart_count, 1);
        agent.remove(&crashes, true).await.expect("remove");
        assert!(!dir.path().join(format!("{crashes}.json")).exists(), "the record outlived its container");
        assert!(dir.path().join(format!("{by_hand}.json")).exists());
    }
}
