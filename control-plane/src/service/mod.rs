//! The one service layer: every capability is a method here, called by both the gRPC
//! and the REST adapters with domain types.

mod builds;
mod commands;
mod compute;
mod container_ops;
mod containers;
mod deployments;
mod images;
mod instances;
mod node_resources;
mod reconciler;
mod registries;
mod sessions;
mod source;
mod stacks;
mod telemetry;
mod tokens;

pub use crate::planner::instance_container;
pub use builds::{BUILD_LIST_MAX, BUILD_LOG_MAX, BuildLogStream, StartBuild, parse_platform, resolve_image};
pub use commands::{COMMAND_TIMEOUT, stream_end_note};
pub use compute::{AnyInstance, BackendInfo, BackendNode, DirectInstance, InstanceAction, InstanceCounts, InstanceUpdate};
pub use container_ops::{ContainerSample, STATS_INTERVAL};
pub use containers::{
    ContainerView, CreateContainer, DEFAULT_STOP_GRACE, Logs, RuntimeStatus, check_container_spec, check_create_container, check_workload,
    place_container,
};
pub use deployments::{
    DeployInput, Deployed, DeploymentSummary, DeploymentView, HIDDEN_ENV_VALUE, check_deploy_spec, check_update_spec,
    validate_deployment_spec,
};
pub use images::{PLATFORMS_TTL, PlatformCache, PlatformLookup};
pub use instances::{InstanceUsage, InstanceView};
pub use node_resources::{Listed, NodeTarget, check_image, check_name};
pub use reconciler::{CommandSink, Fit, RECONCILE_PERIOD};
pub use registries::{RegistryLogin, RegistryLoginRequest, check_registry_name};
pub use sessions::{DEFAULT_SESSION_IDLE, DashboardLogin, DashboardSession, MAX_SESSIONS, constant_time_eq};
pub use stacks::{
    BuiltImage, DEFAULT_COMPOSE_FILE, LABEL_STACK, ServiceProgress, StackServiceView, StackView, build_image_tag, built_image, check_stack,
    check_stack_name, requested_repository, service_deployment_spec, stack_deployment_name, stack_volume_name, startable,
};
pub use tokens::{ApiTokenCache, CreatedApiToken, CreatedJoinToken, DEFAULT_JOIN_TOKEN_TTL, NewApiToken};

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diplo_api::fingerprint::Fingerprint;
use diplo_api::runtime::Runtime;
use diplo_api::token::{JoinToken, hash_secret};
use diplo_api::wire::{ContainerReport, ReportedContainer};
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::config::Config;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{EventRecord, NewEvent, NodeRecord, NodeStatus, ObservedContainer, Role, SessionMessage};
use crate::nodes::NodeRegistry;
use crate::pki::ClusterPki;
use crate::ratelimit::{Audit, AuditLimiter, RateLimiter};
use crate::store::Store;

/// How often events past their retention are deleted.
pub const EVENT_RETENTION_PERIOD: Duration = Duration::from_secs(600);

/// `security.refused` events recorded per node and minute; further refusals are
/// counted and summarised in one event when the minute is over.
pub const REFUSAL_EVENTS_PER_MINUTE: u32 = 10;

/// A join request as the service sees it.
#[derive(Clone)]
pub struct JoinInput {
    /// The whole join token.
    pub token: String,
    /// Requested node name.
    pub node_name: String,
    /// PEM CSR.
    pub csr_pem: String,
    /// Source address, for logs and the node record.
    pub address: String,
    /// Re-join: the id of the node the agent was (its certificate expired); empty: a
    /// new node.
    pub rejoin_node_id: String,
    /// Re-join: that node's last certificate, for the key that signed `csr_pem`.
    pub rejoin_certificate_pem: String,
}

// The token carries its secret: debug output leaves it out.
impl std::fmt::Debug for JoinInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinInput").field("node_name", &self.node_name).field("address", &self.address).finish_non_exhaustive()
    }
}

/// What a successful join returns to the agent.
#[derive(Debug, Clone)]
pub struct JoinOutput {
    /// New node id.
    pub node_id: String,
    /// PEM node certificate.
    pub certificate_pem: String,
    /// PEM CA certificate.
    pub ca_pem: String,
    /// Certificate expiry.
    pub expires_at: DateTime<Utc>,
}

/// Cluster-wide counts and the nodes behind them.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// Every node with its live status.
    pub nodes: Vec<NodeRecord>,
    /// Union of the runtimes available on ready nodes.
    pub available_runtimes: Vec<Runtime>,
    /// Instances: deployment instances not being removed, and direct containers.
    pub instances_total: u32,
    /// Those whose container runs.
    pub instances_running: u32,
}

impl ClusterStatus {
    /// Nodes with the given status.
    pub fn count(&self, status: NodeStatus) -> u32 {
        u32::try_from(self.nodes.iter().filter(|n| n.status == status).count()).unwrap_or(u32::MAX)
    }
}

/// The control plane's state and behaviour.
pub struct ControlPlane {
    config: Config,
    store: Arc<dyn Store>,
    pki: ClusterPki,
    nodes: NodeRegistry<SessionMessage>,
    pending: commands::PendingCommands,
    events: tokio::sync::broadcast::Sender<EventRecord>,
    reconcile: tokio::sync::Notify,
    in_flight: reconciler::InFlight,
    api_tokens: tokens::ApiTokenCache,
    /// Dashboard sessions (cookie → API token), in memory only.
    dashboard_sessions: sessions::DashboardSessions,
    join_limiter: RateLimiter,
    /// `security.refused` events per node and minute.
    refusal_audit: AuditLimiter,
    /// Image platforms read from registries (placement's hard filter), cached.
    image_platforms: Arc<images::PlatformCache>,
    /// Builds not finished yet: their output and followers.
    builds: builds::LiveBuilds,
    /// Registry settings (flags and stored credentials), as agents get them.
    registry_settings: registries::RegistrySettings,
    /// The metrics served at `/metrics`.
    metrics: crate::metrics::Metrics,
    /// Trace context of the request that created or updated each deployment, until its
    /// rollout has run (the reconciler's commands continue that trace).
    rollout_traces: telemetry::RolloutTraces,
    /// Every deployment with its instances, as of the store's generation.
    deployment_views: crate::memo::Memo<Vec<DeploymentView>>,
}

impl ControlPlane {
    /// Builds the service and starts tracking every stored node (each gets a full grace
    /// period to reconnect).
    pub async fn new(config: Config, store: Arc<dyn Store>, pki: ClusterPki) -> ServiceResult<Arc<Self>> {
        let nodes = NodeRegistry::new(config.heartbeat_interval, config.down_grace);
        for node in store.list_nodes().await? {
            nodes.track_stored(&node.id, node.status, node.last_seen_at);
        }
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let api_tokens = tokens::ApiTokenCache::new(store.list_api_tokens().await?);
        let join_limiter = RateLimiter::new(config.join_rate_limit, Duration::from_secs(60));
        let seal = registries::PasswordSeal::open_or_create(&config.data_dir)?;
        let registry = registries::load(&config, store.as_ref(), &seal).await?;
        let control_plane = Arc::new(ControlPlane {
            config,
            store,
            pki,
            nodes,
            pending: Default::default(),
            events,
            reconcile: tokio::sync::Notify::new(),
            in_flight: Default::default(),
            api_tokens,
            dashboard_sessions: Default::default(),
            join_limiter,
            refusal_audit: AuditLimiter::new(REFUSAL_EVENTS_PER_MINUTE, Duration::from_secs(60)),
            image_platforms: images::PlatformCache::new(registry.clone()),
            registry_settings: registries::RegistrySettings::new(registry, seal),
            builds: Default::default(),
            metrics: crate::metrics::Metrics::new(),
            rollout_traces: Default::default(),
            deployment_views: Default::default(),
        });
        control_plane.fail_interrupted_builds().await?;
        control_plane.resume_source_deployments().await?;
        Ok(control_plane)
    }

    /// The settings in effect.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store (for start-up tasks such as writing the admin credentials).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The cluster PKI.
    pub fn pki(&self) -> &ClusterPki {
        &self.pki
    }

    // ---- agents ----

    /// Exchanges a join token and CSR for a node certificate. Attempts are limited per
    /// source IP ([`Config::join_rate_limit`] a minute).
    pub async fn join(&self, input: JoinInput) -> ServiceResult<JoinOutput> {
        let source = crate::ratelimit::source_key(&input.address);
        if let Err(wait) = self.join_limiter.check(&source, Instant::now()) {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::warn!(source = %source, retry_in_s = seconds, "join attempt refused: rate limit");
            return Err(ServiceError::ResourceExhausted(format!("too many join attempts from {source}; retry in {seconds} s")));
        }
        let token = check_join_request(&input.token, &input.node_name)?;
        if token.ca_hash != self.pki.ca.fingerprint() {
            return Err(ServiceError::PermissionDenied(
                "the join token was issued by another cluster: its CA hash does not match this control plane's CA".into(),
            ));
        }
        let now = Utc::now();
        let record = self
            .store
            .get_join_token(&token.id)
            .await?
            .filter(|record| record.secret_hash == hash_secret(&token.secret))
            .ok_or_else(|| ServiceError::Unauthenticated("join token not recognized".into()))?;
        tokens::join_token_usable(&record, now)?;
        if !input.rejoin_node_id.is_empty() {
            return self.rejoin(input, record, now).await;
        }
        if self.store.get_node(&input.node_name).await?.is_some() {
            return Err(ServiceError::AlreadyExists(format!(
                "node name {:?} is already in the cluster; pick another --name or remove it with `diplo nodes rm {}`",
                input.node_name, input.node_name
            )));
        }
        let node_id = uuid::Uuid::new_v4().to_string();
        let (certificate_pem, expires) = self
            .pki
            .ca
            .sign_node_csr(&input.csr_pem, &node_id, &input.node_name, self.config.node_cert_lifetime)
            .map_err(|e| ServiceError::invalid("csr_pem", e.to_string()))?;
        if !self.store.use_join_token(&record.id, now).await? {
            return Err(ServiceError::Unauthenticated(format!("join token {} is no longer usable", record.id)));
        }
        let node = NodeRecord {
            id: node_id.clone(),
            name: input.node_name.clone(),
            // Not ready until its session opens and reports what the node offers.
            status: NodeStatus::Unhealthy,
            fingerprint: Fingerprint::default(),
            cordoned: false,
            labels: record.labels.clone(),
            joined_at: now,
            last_seen_at: now,
            address: input.address.clone(),
        };
        self.store.insert_node(&node).await?;
        self.nodes.track_joined(&node_id);
        tracing::info!(node_id = %node_id, node = %input.node_name, address = %input.address, token_id = %record.id, "node joined");
        self.emit("node.joined", &format!("node:{node_id}"), &node_id, format!("node {} joined from {}", input.node_name, input.address))
            .await;
        Ok(JoinOutput {
            node_id,
            certificate_pem,
            ca_pem: self.pki.ca.cert_pem().to_owned(),
            expires_at: DateTime::from_timestamp(expires.unix_timestamp(), 0).unwrap_or(now),
        })
    }

    /// A node whose certificate expired while it was offline joins again with a join
    /// token, keeping its id (so its containers, labelled with it, stay its own). Only
    /// for a node of that name and id that is not connected, and only with proof that
    /// the request comes from it: its last certificate, issued by this CA to that id for
    /// the key that signed the CSR.
    async fn rejoin(&self, input: JoinInput, token: crate::model::JoinTokenRecord, now: DateTime<Utc>) -> ServiceResult<JoinOutput> {
        let node_id = diplo_api::text::node_text(&input.rejoin_node_id);
        let node = self.store.get_node(&input.node_name).await?.filter(|node| node.id == input.rejoin_node_id).ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no node {:?} with id {node_id} in this cluster: join as a new node (delete the agent's data directory)",
                input.node_name
            ))
        })?;
        if !self.pki.ca.proves_node_key(&input.rejoin_certificate_pem, &node.id, &input.csr_pem) {
            return Err(ServiceError::PermissionDenied(format!(
                "re-joining as node {} needs that node's last certificate and a CSR signed with its key",
                node.name
            )));
        }
        if self.nodes.live_status(&node.id).is_some_and(|live| live.connected) {
            return Err(ServiceError::FailedPrecondition(format!(
                "node {} is connected: a node re-joins only while it is offline (or remove it with `diplo nodes rm {}`)",
                node.name, node.name
            )));
        }
        let (certificate_pem, expires) = self
            .pki
            .ca
            .sign_node_csr(&input.csr_pem, &node.id, &node.name, self.config.node_cert_lifetime)
            .map_err(|e| ServiceError::invalid("csr_pem", e.to_string()))?;
        if !self.store.use_join_token(&token.id, now).await? {
            return Err(ServiceError::Unauthenticated(format!("join token {} is no longer usable", token.id)));
        }
        if !self.nodes.contains(&node.id) {
            self.nodes.track_joined(&node.id);
        }
        tracing::info!(node_id = %node.id, node = %node.name, address = %input.address, token_id = %token.id, "node re-joined after its certificate expired");
        self.emit(
            "node.rejoined",
            &format!("node:{}", node.id),
            &node.id,
            format!("node {} re-joined from {} with join token {} (its certificate had expired)", node.name, input.address, token.id),
        )
        .await;
        Ok(JoinOutput {
            node_id: node.id,
            certificate_pem,
            ca_pem: self.pki.ca.cert_pem().to_owned(),
            expires_at: DateTime::from_timestamp(expires.unix_timestamp(), 0).unwrap_or(now),
        })
    }

    /// Opens a node's session: persists its fingerprint, marks it ready, and returns the
    /// session number and the stream of messages to push to the agent (starting with
    /// the welcome).
    pub async fn open_session(
        &self,
        caller: &Caller,
        fingerprint: Fingerprint,
        containers: Vec<ReportedContainer>,
        address: &str,
    ) -> ServiceResult<(String, u64, mpsc::Receiver<SessionMessage>)> {
        let Caller::Node { node_id } = caller else {
            return Err(ServiceError::PermissionDenied("only a node certificate can open a session".into()));
        };
        self.authorize_containers(caller, "hello", &containers).await?;
        let node = self.known_node(node_id).await?;
        self.store.record_session(node_id, &fingerprint, address, Utc::now()).await?;
        self.node_volumes(node_id, fingerprint.volumes.clone(), true);
        let (tx, rx) = mpsc::channel(64);
        let welcome = SessionMessage::Welcome { node_id: node_id.clone(), heartbeat_interval: self.config.heartbeat_interval };
        // The channel is new and empty: this cannot fail for lack of room.
        let _ = tx.try_send(welcome);
        let registry_tx = tx.clone();
        let replaced = self.nodes.session(node_id).map(|(session, _)| session);
        let session = self
            .nodes
            .connect(node_id, tx)
            .ok_or_else(|| ServiceError::PermissionDenied(format!("node {node_id} is not a member of this cluster")))?;
        // Read once the session is reachable by `registry_changed`: never older than
        // what a concurrent change sends it.
        let _ = registry_tx.try_send(self.registry_message());
        // The agent left its previous session: nothing sent on it can be answered any more.
        if let Some(replaced) = replaced {
            self.end_session_commands(node_id, replaced);
        }
        if self.nodes.apply_report(node_id, true, observed(containers), &[]) {
            self.nudge_reconciler();
        }
        let runtimes: Vec<&str> = fingerprint.available_runtimes().iter().map(|r| r.name()).collect();
        tracing::info!(node_id = %node_id, node = %node.name, address, runtimes = ?runtimes, session, "session opened");
        self.emit("node.ready", &caller.actor(), node_id, format!("node {} connected", node.name)).await;
        Ok((node_id.clone(), session, rx))
    }

    /// Issues a fresh certificate for the caller's own node from a new CSR.
    pub async fn renew_node_certificate(&self, caller: &Caller, csr_pem: &str) -> ServiceResult<JoinOutput> {
        let Caller::Node { node_id } = caller else {
            return Err(ServiceError::PermissionDenied("only a node certificate can be renewed".into()));
        };
        let node = self.known_node(node_id).await?;
        let (certificate_pem, expires) = self
            .pki
            .ca
            .sign_node_csr(csr_pem, node_id, &node.name, self.config.node_cert_lifetime)
            .map_err(|e| ServiceError::invalid("csr_pem", e.to_string()))?;
        // The store's last_seen_at is then never older than the node's newest
        // certificate, which re-joining after an expired certificate relies on.
        let seen = crate::model::NodeStatusChange { node_id: node_id.clone(), status: NodeStatus::Ready, last_seen_at: Utc::now() };
        self.store.apply_status_changes(&[seen]).await?;
        tracing::info!(node_id = %node_id, node = %node.name, "node certificate renewed");
        let until = DateTime::from_timestamp(expires.unix_timestamp(), 0).unwrap_or_else(Utc::now);
        self.emit(
            "node.certificate_renewed",
            &caller.actor(),
            node_id,
            format!("node {} certificate renewed until {}", node.name, until.to_rfc3339()),
        )
        .await;
        Ok(JoinOutput {
            node_id: node_id.clone(),
            certificate_pem,
            ca_pem: self.pki.ca.cert_pem().to_owned(),
            expires_at: DateTime::from_timestamp(expires.unix_timestamp(), 0).unwrap_or_else(Utc::now),
        })
    }

    /// Records a heartbeat from the caller's own node and applies the container report
    /// it carries (a full list replaces the node's view; a delta upserts and forgets
    /// entries of that node only), after the node authorizer
    /// ([`ControlPlane::authorize_report`]) passed every reported container. Wakes the
    /// reconciler when the view changed.
    pub async fn heartbeat(&self, caller: &Caller, node_id: &str, report: ContainerReport) -> ServiceResult<()> {
        caller.require_node(node_id)?;
        self.authorize_containers(caller, "heartbeat", &report.upserted).await?;
        if !self.nodes.heartbeat(node_id) {
            return Err(ServiceError::PermissionDenied(format!("node {node_id} has been removed from the cluster")));
        }
        self.metrics.heartbeat();
        if self.nodes.apply_report(node_id, report.full, observed(report.upserted), &report.removed) {
            self.nudge_reconciler();
        }
        Ok(())
    }

    /// Records the named volumes a node reported (the session has checked and bounded
    /// them): with `full` they replace all it reported before, otherwise the runtimes
    /// listed. Placement of workloads mounting them follows at the next pass.
    pub fn node_volumes(&self, node_id: &str, volumes: diplo_api::fingerprint::VolumeReport, full: bool) {
        if (full || !volumes.is_empty()) && self.nodes.set_volumes(node_id, volumes, full) {
            tracing::debug!(node_id, "node volumes changed");
            self.nudge_reconciler();
        }
    }

    /// Forgets a session whose stream ended.
    pub fn close_session(&self, node_id: &str, session: u64) {
        self.nodes.disconnect(node_id, session);
        tracing::info!(node_id, session, "session closed");
        // No answer can come back on it any more: its waiters fail now, not at their timeout.
        self.end_session_commands(node_id, session);
    }

    /// Checks that a node certificate still belongs to a node of the cluster.
    pub async fn known_node(&self, node_id: &str) -> ServiceResult<NodeRecord> {
        match self.store.get_node(node_id).await? {
            Some(node) if node.id == node_id && self.nodes.contains(node_id) => Ok(node),
            _ => Err(ServiceError::PermissionDenied(format!("node {node_id} is not a member of this cluster"))),
        }
    }

    /// Whether a node is still a member of the cluster, from memory (a removed node is
    /// forgotten at once, so its certificate is refused from its next call on).
    pub fn is_member(&self, node_id: &str) -> bool {
        self.nodes.contains(node_id)
    }

    /// Node authorizer for reports: a node may report only its own node and
    /// containers. `reported` are the node ids a hello or heartbeat gives for its
    /// containers (each state's `node_id` and `diplo.node` label; empty: not given),
    /// in full lists and deltas alike. A report naming another node is refused with
    /// `PermissionDenied` and audited as `security.refused`. Removals carry no node id:
    /// they apply to the reporting node's own view only, so they cannot touch another's.
    pub async fn authorize_report<'a>(
        &self,
        caller: &Caller,
        what: &str,
        reported: impl IntoIterator<Item = &'a str>,
    ) -> ServiceResult<()> {
        let own = caller.require_any_node()?;
        let foreign = reported.into_iter().find(|id| !id.is_empty() && *id != own).map(str::to_owned);
        self.refuse_foreign(caller, what, foreign).await
    }

    /// [`ControlPlane::authorize_report`] for the containers of a report.
    pub async fn authorize_containers(&self, caller: &Caller, what: &str, containers: &[ReportedContainer]) -> ServiceResult<()> {
        let own = caller.require_any_node()?;
        let foreign = foreign_claim(own, containers).map(str::to_owned);
        self.refuse_foreign(caller, what, foreign).await
    }

    /// The refusal of a report that named `foreign`, another node (`None`: it named none).
    async fn refuse_foreign(&self, caller: &Caller, what: &str, foreign: Option<String>) -> ServiceResult<()> {
        match foreign {
            Some(other) => {
                Err(self.refuse(caller, format!("{what} reported a container of node {}", diplo_api::text::node_text(&other))).await)
            }
            None => Ok(()),
        }
    }

    /// Records something a node tried and the node authorizer refused as a
    /// `security.refused` event (who and what; never a secret), and returns the
    /// `PermissionDenied` error to answer with. `attempt` is bounded and escaped
    /// ([`diplo_api::text::node_text`]); at most [`REFUSAL_EVENTS_PER_MINUTE`] events are
    /// recorded per node and minute, the rest are counted and summarised.
    pub async fn refuse(&self, caller: &Caller, attempt: String) -> ServiceError {
        let actor = caller.actor();
        let subject = match caller {
            Caller::Node { node_id } => node_id.clone(),
            Caller::Operator { name, .. } => name.clone(),
        };
        let attempt = diplo_api::text::node_text(&attempt);
        match self.refusal_audit.admit(&subject, Instant::now()) {
            Audit::Record { suppressed_before } => {
                if suppressed_before > 0 {
                    self.emit_refusal_summary(&subject, suppressed_before).await;
                }
                tracing::warn!(actor = %actor, attempt = %attempt, "refused by the node authorizer");
                self.emit("security.refused", &actor, &subject, format!("{actor} refused: {attempt}")).await;
            }
            Audit::Suppress => {
                tracing::debug!(actor = %actor, attempt = %attempt, "refused by the node authorizer (not audited: over the rate)")
            }
        }
        ServiceError::PermissionDenied(format!("{actor} may act only for its own node: {attempt}"))
    }

    /// The event that stands for `count` refusals of `subject` not recorded one by one.
    async fn emit_refusal_summary(&self, subject: &str, count: u64) {
        tracing::warn!(subject, count, "refusals not audited one by one (over the rate)");
        let message = format!(
            "{count} more refusal(s) of {subject} within a minute were not recorded one by one (at most {REFUSAL_EVENTS_PER_MINUTE} a minute)"
        );
        self.emit("security.refused", "system", subject, message).await;
    }

    /// Summarises the refusals of every node whose audit minute ended with refusals
    /// left unrecorded.
    pub async fn flush_refusal_summaries(&self, now: Instant) {
        for (subject, count) in self.refusal_audit.take_ended(now) {
            self.emit_refusal_summary(&subject, count).await;
        }
    }

    /// Re-evaluates node health and persists the changes in one batch.
    pub async fn check_nodes(&self, now: Instant) -> ServiceResult<()> {
        // A change stays pending in the registry until written: a failed write is
        // retried, with whatever status the node has by then, at the next tick.
        let changes = self.nodes.tick(now);
        if changes.is_empty() {
            return Ok(());
        }
        if let Err(err) = self.store.apply_status_changes(&changes).await {
            // While the database is away the caller says so once, not at every tick.
            if !err.is_unavailable() {
                tracing::warn!(error = %err, changes = changes.len(), "cannot persist node status changes; retrying at the next check");
            }
            return Err(err.into());
        }
        self.nodes.mark_persisted(&changes);
        for change in &changes {
            tracing::warn!(node_id = %change.node_id, status = %change.status, last_seen = %change.last_seen_at, "node status changed");
            let message = format!("node is {} (last heartbeat {})", change.status, change.last_seen_at.to_rfc3339());
            self.emit(&format!("node.{}", change.status), "system", &change.node_id, message).await;
        }
        self.nudge_reconciler();
        Ok(())
    }

    /// Runs [`ControlPlane::check_nodes`] every half heartbeat interval (at most every second).
    pub async fn run_node_monitor(self: Arc<Self>) {
        let period = (self.config.heartbeat_interval / 2).min(Duration::from_secs(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Node statuses keep changing in memory (and show in reads) while the database
        // is away; their writes are retried at every tick, said once per outage.
        let mut outage =
            DatabaseOutage::new("node status changes kept in memory", "node status changes written", "node health check failed");
        loop {
            ticker.tick().await;
            outage.observe(self.check_nodes(Instant::now()).await);
            self.flush_refusal_summaries(Instant::now()).await;
        }
    }

    // ---- operators: cluster and nodes ----

    /// Every node with its live status, ordered by name.
    pub async fn list_nodes(&self, caller: &Caller) -> ServiceResult<Vec<NodeRecord>> {
        caller.require_operator(Role::Viewer)?;
        let mut nodes = self.store.list_nodes().await?;
        for node in &mut nodes {
            self.apply_live_status(node);
        }
        Ok(nodes)
    }

    /// One node by id or name.
    pub async fn get_node(&self, caller: &Caller, node: &str) -> ServiceResult<NodeRecord> {
        caller.require_operator(Role::Viewer)?;
        let mut record = self.find_node(node).await?;
        self.apply_live_status(&mut record);
        Ok(record)
    }

    /// The node a node-level operation (images, volumes, networks on one host) acts on:
    /// `node` (an id or a name) when given; otherwise the only ready node. With no
    /// ready node, or several, the caller must name one.
    pub async fn resolve_node(&self, caller: &Caller, node: Option<&str>) -> ServiceResult<NodeRecord> {
        if let Some(node) = node.map(str::trim).filter(|n| !n.is_empty()) {
            return self.get_node(caller, node).await;
        }
        let nodes = self.list_nodes(caller).await?;
        pick_only_ready_node(nodes)
    }

    /// Counts of nodes by status and the union of runtimes on ready nodes.
    pub async fn cluster_status(&self, caller: &Caller) -> ServiceResult<ClusterStatus> {
        let nodes = self.list_nodes(caller).await?;
        let mut available: Vec<Runtime> =
            nodes.iter().filter(|n| n.status == NodeStatus::Ready).flat_map(|n| n.fingerprint.available_runtimes()).collect();
        available.sort();
        available.dedup();
        let instances = self.count_instances().await?;
        Ok(ClusterStatus { nodes, available_runtimes: available, instances_total: instances.total, instances_running: instances.running })
    }

    /// Cordons or uncordons a node.
    pub async fn set_cordoned(&self, caller: &Caller, node: &str, cordoned: bool) -> ServiceResult<NodeRecord> {
        caller.require_operator(Role::Admin)?;
        let mut record = self.find_node(node).await?;
        self.store.set_cordoned(&record.id, cordoned).await?;
        record.cordoned = cordoned;
        self.apply_live_status(&mut record);
        let kind = if cordoned { "node.cordoned" } else { "node.uncordoned" };
        self.emit(kind, &caller.actor(), &record.id, format!("node {} {}", record.name, if cordoned { "cordoned" } else { "uncordoned" }))
            .await;
        Ok(record)
    }

    /// Drains a node: cordons it so that no new work lands there. (Moving its
    /// workloads elsewhere joins this once deployments exist.)
    pub async fn drain_node(&self, caller: &Caller, node: &str) -> ServiceResult<NodeRecord> {
        let record = self.set_cordoned(caller, node, true).await?;
        let mut moved: Vec<crate::model::InstanceRecord> = self
            .store
            .list_instances(None)
            .await?
            .into_iter()
            .filter(|i| i.node_id.as_deref() == Some(record.id.as_str()) && i.desired == crate::model::InstanceDesired::Run)
            .collect();
        for instance in &mut moved {
            instance.status = crate::model::InstanceStatus::Lost;
            instance.message = format!("node {} drained; moving elsewhere", record.name);
            instance.updated_at = Utc::now();
        }
        self.store.update_instances(&moved).await?;
        let message = format!("node {} drained: {} instance(s) move elsewhere", record.name, moved.len());
        self.emit("node.drained", &caller.actor(), &record.id, message).await;
        self.nudge_reconciler();
        Ok(record)
    }

    /// Removes a node: its session closes at once and its certificate is refused.
    pub async fn remove_node(&self, caller: &Caller, node: &str) -> ServiceResult<()> {
        caller.require_operator(Role::Admin)?;
        let record = self.find_node(node).await?;
        self.nodes.remove(&record.id);
        self.store.delete_node(&record.id).await?;
        self.emit("node.removed", &caller.actor(), &record.id, format!("node {} removed", record.name)).await;
        Ok(())
    }

    // ---- helpers ----

    async fn find_node(&self, node: &str) -> ServiceResult<NodeRecord> {
        if node.trim().is_empty() {
            return Err(ServiceError::invalid("node", "a node id or name is required"));
        }
        self.store.get_node(node).await?.ok_or_else(|| ServiceError::NotFound(format!("node {node:?} not found")))
    }

    fn apply_live_status(&self, node: &mut NodeRecord) {
        if let Some(live) = self.nodes.live_status(&node.id) {
            node.status = live.status;
            node.last_seen_at = live.last_seen_at.max(node.last_seen_at);
        }
        if let Some(volumes) = self.nodes.volumes(&node.id) {
            node.fingerprint.volumes = volumes;
        }
    }

    /// Records an event and passes it to the watchers.
    pub(crate) async fn emit(&self, kind: &str, actor: &str, subject: &str, message: String) {
        let event = NewEvent { at: Utc::now(), kind: kind.to_owned(), actor: actor.to_owned(), subject: subject.to_owned(), message };
        match self.store.append_event(&event).await {
            Ok(sequence) => {
                // No subscriber is fine: nobody is watching.
                let _ = self.events.send(EventRecord { sequence, event });
            }
            Err(err) => tracing::error!(error = %err, kind, "could not record event"),
        }
    }

    /// Records several events in one transaction (one event per placed instance, say) and
    /// publishes them in order; what [`ControlPlane::emit`] does for one. A batch costs
    /// about one single append, so a pass over many instances stays fast.
    pub async fn emit_all(&self, events: Vec<NewEvent>) {
        if events.is_empty() {
            return;
        }
        match self.store.append_events(&events).await {
            Ok(sequences) => {
                for (sequence, event) in sequences.into_iter().zip(events) {
                    // No subscriber is fine: nobody is watching.
                    let _ = self.events.send(EventRecord { sequence, event });
                }
            }
            Err(err) => tracing::error!(error = %err, count = events.len(), "could not record events"),
        }
    }

    /// Events from now on (after replaying stored ones above `after`, up to 1000), as
    /// [`WatchItem`]s: a watcher too slow for the live events is told how many it
    /// missed instead of losing them silently.
    pub async fn watch_events(
        &self,
        caller: &Caller,
        after: Option<u64>,
    ) -> ServiceResult<std::pin::Pin<Box<dyn futures::Stream<Item = WatchItem> + Send>>> {
        caller.require_operator(Role::Viewer)?;
        let live = self.events.subscribe();
        let replay = match after {
            Some(after) => self.store.list_events(after, 1000).await?,
            None => Vec::new(),
        };
        Ok(Box::pin(watch_stream(replay, live)))
    }

    /// Deletes the events past the retention ([`Config::events_max_age`],
    /// [`Config::events_max_count`]) at `now`; returns how many.
    pub async fn prune_events(&self, now: DateTime<Utc>) -> ServiceResult<u64> {
        let older_than =
            self.config.events_max_age.and_then(|age| chrono::Duration::from_std(age).ok()).and_then(|age| now.checked_sub_signed(age));
        let keep = self.config.events_max_count;
        if older_than.is_none() && keep.is_none() {
            return Ok(0);
        }
        let deleted = self.store.prune_events(older_than, keep).await?;
        if deleted > 0 {
            tracing::info!(deleted, "events past their retention deleted");
        }
        Ok(deleted)
    }

    /// Runs [`ControlPlane::prune_events`] now and every [`EVENT_RETENTION_PERIOD`].
    pub async fn run_event_retention(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(EVENT_RETENTION_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(err) = self.prune_events(Utc::now()).await {
                tracing::error!(error = %err, "event retention failed; retrying at the next period");
            }
        }
    }

    /// Wakes the reconciler (after a change of desired or observed state).
    pub fn nudge_reconciler(&self) {
        self.reconcile.notify_one();
    }
}

/// Reported containers as the registry keeps them.
/// The first other node a node's container report claims a container of (each
/// container's `node_id` and `diplo.node` label; empty: not given), if any: a node may
/// report its own containers only.
pub fn foreign_claim<'a>(own: &str, containers: &'a [ReportedContainer]) -> Option<&'a str> {
    containers.iter().flat_map(ReportedContainer::claimed_nodes).find(|id| !id.is_empty() && *id != own)
}

/// The checks of a join request that need no store: the token's form and the node name.
pub fn check_join_request(token: &str, node_name: &str) -> ServiceResult<JoinToken> {
    let token: JoinToken = token.parse().map_err(|e| ServiceError::invalid("token", format!("{e}")))?;
    validate_node_name(node_name)?;
    Ok(token)
}

fn observed(reported: Vec<ReportedContainer>) -> Vec<ObservedContainer> {
    reported.into_iter().map(|c| ObservedContainer { runtime: c.runtime, info: c.info }).collect()
}

/// What an event watcher receives.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// The next event.
    Event(EventRecord),
    /// The watcher fell behind the live events and `missed` of them were dropped; the
    /// stored ones can be replayed from the last sequence it saw.
    Lagged {
        /// How many events it missed.
        missed: u64,
    },
}

/// `replay`, then what `live` receives, with a [`WatchItem::Lagged`] wherever the
/// receiver fell behind.
fn watch_stream(
    replay: Vec<EventRecord>,
    live: tokio::sync::broadcast::Receiver<EventRecord>,
) -> impl futures::Stream<Item = WatchItem> + Send {
    use tokio_stream::StreamExt as _;
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
    let live = tokio_stream::wrappers::BroadcastStream::new(live).map(|item| match item {
        Ok(record) => WatchItem::Event(record),
        Err(BroadcastStreamRecvError::Lagged(missed)) => {
            tracing::warn!(missed, "an event watcher fell behind");
            WatchItem::Lagged { missed }
        }
    });
    tokio_stream::iter(replay.into_iter().map(WatchItem::Event)).chain(live)
}

/// The only ready node among `nodes`, or an error naming `node` that lists what to choose from.
pub fn pick_only_ready_node(nodes: Vec<NodeRecord>) -> ServiceResult<NodeRecord> {
    let ready: Vec<NodeRecord> = nodes.into_iter().filter(|n| n.status == NodeStatus::Ready).collect();
    match ready.len() {
        1 => Ok(ready.into_iter().next().expect("one node")),
        0 => Err(ServiceError::invalid("node", "no node is ready: name one with ?node=<name>")),
        _ => {
            let names: Vec<&str> = ready.iter().map(|n| n.name.as_str()).collect();
            Err(ServiceError::invalid(
                "node",
                format!("{} nodes are ready ({}): name one with ?node=<name>", names.len(), names.join(", ")),
            ))
        }
    }
}

/// Node names: 1 to 63 characters of lower-case letters, digits, `-` and `.`, starting
/// and ending with a letter or digit.
pub fn validate_node_name(name: &str) -> ServiceResult<()> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 63 || !name.chars().all(ok_char) || !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Err(ServiceError::invalid(
            "node_name",
            format!("{name:?} must be 1-63 lower-case letters, digits, '-' or '.', starting and ending with a letter or digit"),
        ));
    }
    Ok(())
}

/// Tells the log once that a background loop waits for the database (its passes fail as
/// unavailable) and once that it goes on, instead of an error at every pass; other
/// failures are logged each time.
pub(crate) struct DatabaseOutage {
    waiting: &'static str,
    back: &'static str,
    failed: &'static str,
    since: Option<Instant>,
}

impl DatabaseOutage {
    /// `waiting` is logged when an outage starts, `back` when it ends, `failed` with any
    /// other error.
    pub(crate) fn new(waiting: &'static str, back: &'static str, failed: &'static str) -> Self {
        DatabaseOutage { waiting, back, failed, since: None }
    }

    /// Notes the result of one pass of the loop.
    pub(crate) fn observe(&mut self, result: ServiceResult<()>) {
        match result {
            Ok(()) => {
                if let Some(since) = self.since.take() {
                    tracing::info!(waited_ms = since.elapsed().as_millis() as u64, "database back; {}", self.back);
                }
            }
            Err(ServiceError::Unavailable(reason)) => {
                if self.since.is_none() {
                    tracing::warn!(%reason, "{}: waiting for the database to return", self.waiting);
                    self.since = Some(Instant::now());
                }
            }
            Err(err) => tracing::error!(error = %err, "{}", self.failed),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_how_many_events_it_missed() {
        use futures::StreamExt as _;
        let (tx, rx) = tokio::sync::broadcast::channel(2);
        let record = |sequence: u64| EventRecord {
            sequence,
            event: NewEvent { at: Utc::now(), kind: "k".into(), actor: "a".into(), subject: "s".into(), message: String::new() },
        };
        let mut stream = Box::pin(watch_stream(vec![record(1)], rx));
        for sequence in 2..=6 {
            tx.send(record(sequence)).expect("send");
        }
        drop(tx);
        let items: Vec<String> = stream
            .by_ref()
            .map(|item| match item {
                WatchItem::Event(r) => format!("event {}", r.sequence),
                WatchItem::Lagged { missed } => format!("lagged {missed}"),
            })
            .collect()
            .await;
        assert_eq!(items, ["event 1", "lagged 3", "event 5", "event 6"]);
    }

    #[tokio::test]
    async fn a_batch_of_events_is_stored_and_watched_in_order() {
        use futures::StreamExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let control_plane = control_plane(dir.path()).await;
        let viewer = Caller::Operator { name: "viewer".into(), role: Role::Viewer };
        let mut watch = control_plane.watch_events(&viewer, None).await.expect("watch");
        let event = |n: u32| NewEvent {
            at: Utc::now(),
            kind: "instance.placed".into(),
            actor: "system".into(),
            subject: format!("i-{n}"),
            message: format!("placed {n}"),
        };
        control_plane.emit_all(Vec::new()).await;
        control_plane.emit_all((0..5).map(event).collect()).await;
        let mut seen = Vec::new();
        for _ in 0..5 {
            match tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await.expect("event in time") {
                Some(WatchItem::Event(record)) => seen.push(record),
                other => panic!("expected an event, got {other:?}"),
            }
        }
        assert_eq!(seen.iter().map(|r| r.event.subject.as_str()).collect::<Vec<_>>(), ["i-0", "i-1", "i-2", "i-3", "i-4"]);
        assert!(seen.windows(2).all(|w| w[0].sequence < w[1].sequence));
        // As stored (which keeps the time to the millisecond only).
        let key = |r: &EventRecord| (r.sequence, r.event.subject.clone(), r.event.message.clone());
        let stored = control_plane.store.list_events(0, 10).await.expect("list");
        assert_eq!(stored.iter().map(key).collect::<Vec<_>>(), seen.iter().map(key).collect::<Vec<_>>(), "watched as stored");
    }

    /// A control plane on a fresh SQLite file in `dir`.
    pub(crate) async fn control_plane(dir: &std::path::Path) -> Arc<ControlPlane> {
        control_plane_with(Config::new(dir.to_owned())).await
    }

    pub(crate) async fn control_plane_with(config: Config) -> Arc<ControlPlane> {
        let dir = config.data_dir.clone();
        let store = crate::store::open(&format!("sqlite://{}", dir.join("diplo.db").display())).await.expect("store");
        let pki = ClusterPki::load_or_create(&dir, &[]).expect("pki");
        ControlPlane::new(config, store, pki).await.expect("control plane")
    }

    #[tokio::test]
    async fn only_the_node_itself_can_rejoin_under_its_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let control_plane = control_plane(dir.path()).await;
        let admin = Caller::Operator { name: "admin".into(), role: Role::Admin };
        let token = || async { control_plane.create_join_token(&admin, None, false, Default::default()).await.expect("token").token };
        let join = |token: String, name: &str, csr_pem: String, rejoin: (&str, &str)| JoinInput {
            token,
            node_name: name.into(),
            csr_pem,
            address: "10.0.0.9:5000".into(),
            rejoin_node_id: rejoin.0.into(),
            rejoin_certificate_pem: rejoin.1.into(),
        };
        let (key, csr) = diplo_api::pki::generate_csr("pi").expect("csr");
        let joined = control_plane.join(join(token().await, "pi", csr, ("", ""))).await.expect("join");
        let own_csr = || diplo_api::pki::csr_for_key("pi", &key).expect("csr");
        let stranger_csr = || diplo_api::pki::generate_csr("pi").expect("csr").1;
        // A join token alone, or with the node's certificate but another key: refused.
        for (csr, cert) in [(own_csr(), ""), (stranger_csr(), joined.certificate_pem.as_str())] {
            let err = control_plane.join(join(token().await, "pi", csr, (&joined.node_id, cert))).await.expect_err("refused");
            assert!(matches!(err, ServiceError::PermissionDenied(_)), "{err}");
        }
        // Another node's id, or a name that is not the node's: not found.
        let err =
            control_plane.join(join(token().await, "pi", own_csr(), ("another-id", &joined.certificate_pem))).await.expect_err("refused");
        assert!(matches!(err, ServiceError::NotFound(_)), "{err}");
        let err = control_plane
            .join(join(token().await, "other", own_csr(), (&joined.node_id, &joined.certificate_pem)))
            .await
            .expect_err("refused");
        assert!(matches!(err, ServiceError::NotFound(_)), "{err}");
        // The node itself (its certificate, its key), offline: the same id, a new certificate.
        let rejoined =
            control_plane.join(join(token().await, "pi", own_csr(), (&joined.node_id, &joined.certificate_pem))).await.expect("rejoin");
        assert_eq!(rejoined.node_id, joined.node_id);
        assert_ne!(rejoined.certificate_pem, joined.certificate_pem);
        assert_eq!(control_plane.store().list_nodes().await.expect("nodes").len(), 1);
        // Connected: refused.
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        control_plane.nodes.connect(&joined.node_id, tx).expect("tracked");
        let err = control_plane
            .join(join(token().await, "pi", own_csr(), (&joined.node_id, &joined.certificate_pem)))
            .await
            .expect_err("refused");
        assert!(matches!(err, ServiceError::FailedPrecondition(_)), "{err}");
    }

    #[tokio::test]
    async fn events_past_their_retention_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(dir.path().to_owned());
        config.events_max_count = Some(5);
        config.events_max_age = Some(Duration::from_secs(3600));
        let control_plane = control_plane_with(config).await;
        for i in 0..20 {
            control_plane.emit("test.event", "system", "s", format!("event {i}")).await;
        }
        assert_eq!(control_plane.prune_events(Utc::now()).await.expect("prune"), 15);
        let kept = control_plane.store().list_events(0, 100).await.expect("events");
        assert_eq!(
            kept.iter().map(|e| e.event.message.as_str()).collect::<Vec<_>>(),
            ["event 15", "event 16", "event 17", "event 18", "event 19"]
        );
        // Two hours on, all of them are past the age limit.
        assert_eq!(control_plane.prune_events(Utc::now() + chrono::Duration::hours(2)).await.expect("prune"), 5);
        // Without limits nothing goes.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(dir.path().to_owned());
        (config.events_max_count, config.events_max_age) = (None, None);
        let unlimited = control_plane_with(config).await;
        unlimited.emit("test.event", "system", "s", "kept".into()).await;
        assert_eq!(unlimited.prune_events(Utc::now() + chrono::Duration::days(10_000)).await.expect("prune"), 0);
    }

    #[tokio::test]
    async fn refusals_are_audited_bounded_and_at_most_n_a_minute_per_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let control_plane = control_plane(dir.path()).await;
        let hostile = Caller::Node { node_id: "node-a".into() };
        let other = Caller::Node { node_id: "node-b".into() };
        let long_id = format!("{}\n\u{1b}[2Jforged line", "x".repeat(50_000));
        for _ in 0..200 {
            let err = control_plane.authorize_report(&hostile, "heartbeat", [long_id.as_str()]).await.expect_err("refused");
            assert!(err.to_string().chars().count() < 600, "the answer quotes the whole id");
        }
        control_plane.authorize_report(&other, "hello", ["node-c"]).await.expect_err("refused");
        let events = control_plane.store().list_events(0, 1000).await.expect("events");
        let of = |node: &str| events.iter().filter(|e| e.event.kind == "security.refused" && e.event.subject == node).count();
        assert_eq!(of("node-a"), REFUSAL_EVENTS_PER_MINUTE as usize, "events of the hostile node");
        assert_eq!(of("node-b"), 1, "another node keeps its own quota");
        for event in &events {
            assert!(event.event.message.chars().count() < 400, "{} chars", event.event.message.chars().count());
            assert!(!event.event.message.contains('\n') && !event.event.message.contains('\u{1b}'), "{:?}", event.event.message);
        }
        // When the minute is over, one event says how many went unrecorded.
        control_plane.flush_refusal_summaries(Instant::now() + Duration::from_secs(61)).await;
        let events = control_plane.store().list_events(0, 1000).await.expect("events");
        let summary = events.iter().rev().find(|e| e.event.subject == "node-a").expect("summary");
        assert!(summary.event.message.starts_with("190 more refusal(s) of node-a"), "{}", summary.event.message);
    }

    #[tokio::test]
    async fn deltas_pass_the_node_authorizer_and_change_only_the_reporting_node() {
        use diplo_api::container::{ContainerInfo, ContainerStatus, LABEL_NODE};
        use diplo_api::wire::{container_report, container_state, removed_container};
        let dir = tempfile::tempdir().expect("tempdir");
        let control_plane = control_plane(dir.path()).await;
        for node in ["node-a", "node-b"] {
            control_plane.nodes.track(node, NodeStatus::Ready);
        }
        let (a, b) = (Caller::Node { node_id: "node-a".into() }, Caller::Node { node_id: "node-b".into() });
        let state = |id: &str, node_id: &str, label: &str, status: ContainerStatus| {
            let info =
                ContainerInfo { labels: [(LABEL_NODE.to_owned(), label.to_owned())].into(), ..ContainerInfo::new(id, id, "img", status) };
            let mut state = container_state(&info, node_id, Runtime::Docker);
            state.node_id = node_id.into();
            state
        };
        let report = |containers, removed, full| container_report("heartbeat", containers, removed, full).expect("valid on the wire");
        let view = || {
            control_plane
                .nodes
                .containers()
                .into_iter()
                .map(|(node, c)| format!("{node}:{}:{:?}", c.info.id, c.info.status))
                .collect::<Vec<_>>()
        };
        let nudged = || async { tokio::time::timeout(Duration::from_millis(50), control_plane.reconcile.notified()).await.is_ok() };
        control_plane
            .heartbeat(&b, "node-b", report(vec![state("cb", "node-b", "node-b", ContainerStatus::Running)], vec![], true))
            .await
            .expect("a full list of its own");
        assert!(nudged().await, "a changed view wakes the reconciler");
        // A delta naming another node, by node id or by label, is refused and changes nothing.
        for (node_id, label) in [("node-b", "node-a"), ("node-a", "node-b"), ("", "node-b")] {
            let err = control_plane
                .heartbeat(&a, "node-a", report(vec![state("cb", node_id, label, ContainerStatus::Exited)], vec![], false))
                .await
                .expect_err("another node's container");
            assert!(matches!(err, ServiceError::PermissionDenied(_)), "{err}");
        }
        // Nor can a node send a heartbeat as another.
        let err = control_plane
            .heartbeat(&a, "node-b", report(vec![], vec![removed_container(Runtime::Docker, "cb")], false))
            .await
            .expect_err("another node's heartbeat");
        assert!(matches!(err, ServiceError::PermissionDenied(_)), "{err}");
        assert_eq!(view(), ["node-b:cb:Running"]);
        assert!(!nudged().await, "nothing changed");
        // Its own container is upserted; a removal of another node's container id touches only its own view.
        control_plane
            .heartbeat(
                &a,
                "node-a",
                report(
                    vec![state("ca", "node-a", "node-a", ContainerStatus::Exited)],
                    vec![removed_container(Runtime::Docker, "cb")],
                    false,
                ),
            )
            .await
            .expect("its own delta");
        assert_eq!(view(), ["node-a:ca:Exited", "node-b:cb:Running"]);
        assert!(nudged().await);
        // An idle heartbeat changes nothing and wakes nobody; its own removal applies.
        control_plane.heartbeat(&a, "node-a", report(vec![], vec![], false)).await.expect("idle");
        assert!(!nudged().await, "an idle heartbeat wakes nobody");
        control_plane
            .heartbeat(&a, "node-a", report(vec![], vec![removed_container(Runtime::Docker, "ca")], false))
            .await
            .expect("removal");
        assert_eq!(view(), ["node-b:cb:Running"]);
        let refusals = control_plane.store().list_events(0, 100).await.expect("events");
        assert_eq!(refusals.iter().filter(|e| e.event.kind == "security.refused").count(), 3, "each refused delta is audited");
    }

    #[test]
    fn node_names_are_validated_naming_the_field() {
        for good in ["pi-4", "vm1", "node.example", "a"] {
            assert!(validate_node_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "x-", "UPPER", "with space", "a_b", &"x".repeat(64)] {
            let err = validate_node_name(bad).expect_err(bad);
            assert!(err.to_string().starts_with("invalid node_name"), "{err}");
        }
    }
}
