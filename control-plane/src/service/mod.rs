//! The one service layer: every capability is a method here, called by both the gRPC
//! and the REST adapters with domain types.

mod commands;
mod containers;
mod deployments;
mod images;
mod instances;
mod reconciler;
mod tokens;

pub use commands::{stream_end_note, COMMAND_TIMEOUT};
pub use containers::{check_container_spec, place_container, ContainerView, CreateContainer, Logs, RuntimeStatus, DEFAULT_STOP_GRACE};
pub use deployments::{validate_deployment_spec, DeployInput, Deployed, DeploymentView};
pub use images::{PlatformCache, PlatformLookup, PLATFORMS_TTL};
pub use instances::{InstanceUsage, InstanceView};
pub use reconciler::{instance_container, Fit, RECONCILE_PERIOD};
pub use tokens::{ApiTokenCache, CreatedApiToken, CreatedJoinToken, NewApiToken, DEFAULT_JOIN_TOKEN_TTL};

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diplo_api::fingerprint::Fingerprint;
use diplo_api::runtime::Runtime;
use diplo_api::token::{hash_secret, JoinToken};
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::config::Config;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{EventRecord, NewEvent, NodeRecord, NodeStatus, ObservedContainer, Role, SessionMessage};
use crate::nodes::NodeRegistry;
use crate::pki::ClusterPki;
use crate::ratelimit::RateLimiter;
use crate::store::Store;

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
    /// Instances known (deployments come with a later issue).
    pub instances_total: u32,
    /// Instances running.
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
    join_limiter: RateLimiter,
    /// Image platforms read from registries (placement's hard filter), cached.
    image_platforms: Arc<images::PlatformCache>,
}

impl ControlPlane {
    /// Builds the service and starts tracking every stored node (each gets a full grace
    /// period to reconnect).
    pub async fn new(config: Config, store: Arc<dyn Store>, pki: ClusterPki) -> ServiceResult<Arc<Self>> {
        let nodes = NodeRegistry::new(config.heartbeat_interval, config.down_grace);
        for node in store.list_nodes().await? {
            nodes.track(&node.id, node.status);
        }
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let api_tokens = tokens::ApiTokenCache::new(store.list_api_tokens().await?);
        let join_limiter = RateLimiter::new(config.join_rate_limit, Duration::from_secs(60));
        Ok(Arc::new(ControlPlane {
            config,
            store,
            pki,
            nodes,
            pending: Default::default(),
            events,
            reconcile: tokio::sync::Notify::new(),
            in_flight: Default::default(),
            api_tokens,
            join_limiter,
            image_platforms: images::PlatformCache::new(diplo_api::registry::RegistryConfig::default()),
        }))
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
            return Err(ServiceError::ResourceExhausted(format!(
                "too many join attempts from {source}; retry in {seconds} s"
            )));
        }
        let token: JoinToken = input.token.parse().map_err(|e| ServiceError::invalid("token", format!("{e}")))?;
        validate_node_name(&input.node_name)?;
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

    /// Opens a node's session: persists its fingerprint, marks it ready, and returns the
    /// session number and the stream of messages to push to the agent (starting with
    /// the welcome).
    pub async fn open_session(
        &self,
        caller: &Caller,
        fingerprint: Fingerprint,
        containers: Vec<ObservedContainer>,
        address: &str,
    ) -> ServiceResult<(String, u64, mpsc::Receiver<SessionMessage>)> {
        let Caller::Node { node_id } = caller else {
            return Err(ServiceError::PermissionDenied("only a node certificate can open a session".into()));
        };
        let node = self.known_node(node_id).await?;
        self.store.record_session(node_id, &fingerprint, address, Utc::now()).await?;
        let (tx, rx) = mpsc::channel(64);
        let welcome = SessionMessage::Welcome { node_id: node_id.clone(), heartbeat_interval: self.config.heartbeat_interval };
        // The channel is new and empty: this cannot fail for lack of room.
        let _ = tx.try_send(welcome);
        let replaced = self.nodes.session(node_id).map(|(session, _)| session);
        let session = self
            .nodes
            .connect(node_id, tx)
            .ok_or_else(|| ServiceError::PermissionDenied(format!("node {node_id} is not a member of this cluster")))?;
        // The agent left its previous session: nothing sent on it can be answered any more.
        if let Some(replaced) = replaced {
            self.end_session_commands(node_id, replaced);
        }
        self.nodes.set_containers(node_id, containers);
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
        tracing::info!(node_id = %node_id, node = %node.name, "node certificate renewed");
        let until = DateTime::from_timestamp(expires.unix_timestamp(), 0).unwrap_or_else(Utc::now);
        self.emit("node.certificate_renewed", &caller.actor(), node_id, format!("node {} certificate renewed until {}", node.name, until.to_rfc3339()))
            .await;
        Ok(JoinOutput {
            node_id: node_id.clone(),
            certificate_pem,
            ca_pem: self.pki.ca.cert_pem().to_owned(),
            expires_at: DateTime::from_timestamp(expires.unix_timestamp(), 0).unwrap_or_else(Utc::now),
        })
    }

    /// Records a heartbeat from the caller's own node with the containers it runs.
    pub fn heartbeat(&self, caller: &Caller, node_id: &str, containers: Vec<ObservedContainer>) -> ServiceResult<()> {
        caller.require_node(node_id)?;
        if self.nodes.heartbeat(node_id) {
            self.nodes.set_containers(node_id, containers);
            Ok(())
        } else {
            Err(ServiceError::PermissionDenied(format!("node {node_id} has been removed from the cluster")))
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
    /// containers (empty: not given). A report naming another node is refused with
    /// `PermissionDenied` and audited as `security.refused`.
    pub async fn authorize_report<'a>(
        &self,
        caller: &Caller,
        what: &str,
        reported: impl IntoIterator<Item = &'a str>,
    ) -> ServiceResult<()> {
        let own = caller.require_any_node()?;
        match reported.into_iter().find(|id| !id.is_empty() && *id != own) {
            Some(other) => Err(self.refuse(caller, format!("{what} reported a container of node {other}")).await),
            None => Ok(()),
        }
    }

    /// Records something a node tried and the node authorizer refused as a
    /// `security.refused` event (who and what; never a secret), and returns the
    /// `PermissionDenied` error to answer with.
    pub async fn refuse(&self, caller: &Caller, attempt: String) -> ServiceError {
        let actor = caller.actor();
        let subject = match caller {
            Caller::Node { node_id } => node_id.clone(),
            Caller::Operator { name, .. } => name.clone(),
        };
        tracing::warn!(actor = %actor, attempt = %attempt, "refused by the node authorizer");
        self.emit("security.refused", &actor, &subject, format!("{actor} refused: {attempt}")).await;
        ServiceError::PermissionDenied(format!("{actor} may act only for its own node: {attempt}"))
    }

    /// Re-evaluates node health and persists the changes in one batch.
    pub async fn check_nodes(&self, now: Instant) -> ServiceResult<()> {
        let changes = self.nodes.tick(now);
        if changes.is_empty() {
            return Ok(());
        }
        self.store.apply_status_changes(&changes).await?;
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
        loop {
            ticker.tick().await;
            if let Err(err) = self.check_nodes(Instant::now()).await {
                tracing::error!(error = %err, "node health check failed");
            }
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

    /// Counts of nodes by status and the union of runtimes on ready nodes.
    pub async fn cluster_status(&self, caller: &Caller) -> ServiceResult<ClusterStatus> {
        let nodes = self.list_nodes(caller).await?;
        let mut available: Vec<Runtime> = nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Ready)
            .flat_map(|n| n.fingerprint.available_runtimes())
            .collect();
        available.sort();
        available.dedup();
        Ok(ClusterStatus { nodes, available_runtimes: available, instances_total: 0, instances_running: 0 })
    }

    /// Cordons or uncordons a node.
    pub async fn set_cordoned(&self, caller: &Caller, node: &str, cordoned: bool) -> ServiceResult<NodeRecord> {
        caller.require_operator(Role::Admin)?;
        let mut record = self.find_node(node).await?;
        self.store.set_cordoned(&record.id, cordoned).await?;
        record.cordoned = cordoned;
        self.apply_live_status(&mut record);
        let kind = if cordoned { "node.cordoned" } else { "node.uncordoned" };
        self.emit(kind, &caller.actor(), &record.id, format!("node {} {}", record.name, if cordoned { "cordoned" } else { "uncordoned" })).await;
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
    }

    async fn emit(&self, kind: &str, actor: &str, subject: &str, message: String) {
        let event = NewEvent { at: Utc::now(), kind: kind.to_owned(), actor: actor.to_owned(), subject: subject.to_owned(), message };
        match self.store.append_event(&event).await {
            Ok(sequence) => {
                // No subscriber is fine: nobody is watching.
                let _ = self.events.send(EventRecord { sequence, event });
            }
            Err(err) => tracing::error!(error = %err, kind, "could not record event"),
        }
    }

    /// Events from now on (after replaying stored ones above `after`, up to 1000).
    pub async fn watch_events(
        &self,
        caller: &Caller,
        after: Option<u64>,
    ) -> ServiceResult<(Vec<EventRecord>, tokio::sync::broadcast::Receiver<EventRecord>)> {
        caller.require_operator(Role::Viewer)?;
        let live = self.events.subscribe();
        let replay = match after {
            Some(after) => self.store.list_events(after, 1000).await?,
            None => Vec::new(),
        };
        Ok((replay, live))
    }

    /// Wakes the reconciler (after a change of desired or observed state).
    pub fn nudge_reconciler(&self) {
        self.reconcile.notify_one();
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

#[cfg(test)]
mod tests {
    use super::*;

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
