//! Domain types of the control plane. Wire types (prost, serde DTOs) convert to and
//! from these at the edges; the service, scheduler and store speak only these.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use diplo_api::fingerprint::Fingerprint;
use serde::{Deserialize, Serialize};

/// A node's health as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heartbeats arrive on time.
    Ready,
    /// Three heartbeats missed.
    Unhealthy,
    /// Silent past the down grace period.
    Down,
}

impl NodeStatus {
    /// Lower-case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Unhealthy => "unhealthy",
            NodeStatus::Down => "down",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ready" => Ok(NodeStatus::Ready),
            "unhealthy" => Ok(NodeStatus::Unhealthy),
            "down" => Ok(NodeStatus::Down),
            other => Err(format!("unknown node status {other:?}")),
        }
    }
}

/// A node as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// Stable id assigned at join (also in the node certificate's SAN).
    pub id: String,
    /// Unique, human-chosen name.
    pub name: String,
    /// Last persisted health.
    pub status: NodeStatus,
    /// Last fingerprint the agent reported.
    pub fingerprint: Fingerprint,
    /// Cordoned nodes receive no new work.
    pub cordoned: bool,
    /// Labels given at join (from the join token) or by operators.
    pub labels: BTreeMap<String, String>,
    /// When the node joined.
    pub joined_at: DateTime<Utc>,
    /// Last heartbeat persisted (written on status changes, not per heartbeat).
    pub last_seen_at: DateTime<Utc>,
    /// Source address of the node's session.
    pub address: String,
}

/// A persisted status change, written in batches by the node monitor.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatusChange {
    /// Node id.
    pub node_id: String,
    /// New status.
    pub status: NodeStatus,
    /// Last heartbeat seen at the time of the change.
    pub last_seen_at: DateTime<Utc>,
}

/// A join token as persisted: the secret itself is never stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinTokenRecord {
    /// Public id (the part before the dot).
    pub id: String,
    /// sha256 hex of the secret.
    pub secret_hash: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Refused from this time on.
    pub expires_at: DateTime<Utc>,
    /// Refused after its first use.
    pub single_use: bool,
    /// Successful joins so far.
    pub uses: u32,
    /// Revoked tokens are refused.
    pub revoked: bool,
    /// Labels given to nodes joining with it.
    pub labels: BTreeMap<String, String>,
}

/// Operator roles, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens and nodes.
    Admin,
    /// Deploy, scale, container operations, builds.
    Deployer,
    /// Read only.
    Viewer,
}

impl Role {
    /// Lower-case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "deployer" => Ok(Role::Deployer),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!("unknown role {other:?}: expected admin, deployer or viewer")),
        }
    }
}

/// An API bearer token as persisted: only the secret's hash is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiTokenRecord {
    /// Public id.
    pub id: String,
    /// sha256 hex of the secret.
    pub secret_hash: String,
    /// Who or what the token is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// `None`: never expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked tokens are refused.
    pub revoked: bool,
}

/// The credential for one image registry, as stored. `Debug` never shows the password.
#[derive(Clone, PartialEq)]
pub struct RegistryCredentialRecord {
    /// `host[:port]`.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for RegistryCredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentialRecord")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// An event to append to the log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// e.g. `node.ready`, `node.down`, `join_token.created`.
    pub kind: String,
    /// Operator identity, node id or `system`.
    pub actor: String,
    /// Node, deployment or container id.
    pub subject: String,
    /// Human-readable summary (never a secret).
    pub message: String,
}

/// A stored event with its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Increasing sequence number, assigned by the store.
    pub sequence: u64,
    /// The event.
    pub event: NewEvent,
}

/// A container observed on a node, with the runtime that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    /// The runtime.
    pub runtime: diplo_api::runtime::Runtime,
    /// What the runtime reported.
    pub info: diplo_api::container::ContainerInfo,
}

/// A message pushed down an agent's session (the gRPC adapter converts it to the wire).
///
/// Kept small (the command is boxed): every open session's queue allocates its first
/// block of slots up front, so the size of this type is paid once per connected node.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionMessage {
    /// First answer to the agent's hello: its node id and the heartbeat interval to keep.
    Welcome {
        /// The node's id.
        node_id: String,
        /// How often to send heartbeats.
        heartbeat_interval: std::time::Duration,
    },
    /// A command to carry out.
    Command(Box<diplo_api::command::AgentCommand>),
    /// The cluster's registry settings (credentials included): sent after the welcome
    /// and whenever they change.
    Registry(std::sync::Arc<diplo_api::registry::RegistryConfig>),
}

/// Where a deployment's instances may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constraints {
    /// Only this node (id or name).
    pub node: Option<String>,
    /// Only nodes carrying all these labels.
    pub labels: BTreeMap<String, String>,
    /// Only nodes with this OS (`linux`).
    pub os: Option<String>,
    /// Only nodes with this architecture (`amd64`, `arm64`, `arm`).
    pub arch: Option<String>,
}

/// How replicas are spread over nodes (Nomad's terms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Fill the busiest node that fits first (fewer nodes in use).
    #[default]
    Binpack,
    /// Prefer the emptiest node (even load).
    Spread,
}

/// The desired state of a deployment: one revision's worth of spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    /// Unique name (also the prefix of its containers' names).
    pub name: String,
    /// Number of instances to keep running.
    pub replicas: u32,
    /// Forced runtime; `None`: each node's preferred one.
    pub runtime: Option<diplo_api::runtime::Runtime>,
    /// Placement constraints.
    pub constraints: Constraints,
    /// Binpack or spread.
    pub strategy: Strategy,
    /// Instances replaced at once in a rolling update (at least 1).
    pub max_parallel: u32,
    /// Template for every instance's container (`name` is set per instance).
    pub container: diplo_api::container::ContainerSpec,
    /// Where the image comes from when it is built from git: the repository, the branch
    /// and, once built, the commit and the build (recorded with each revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
}

/// A deployment built from a git repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceSpec {
    /// Repository URL.
    pub repo_url: String,
    /// Branch built; `None`: the repository's default branch.
    pub branch: Option<String>,
    /// Language given by the user (detection otherwise).
    pub language: Option<String>,
    /// The commit this revision's image was built from (empty while building).
    pub commit: String,
    /// The build that made this revision's image (or is making it).
    pub build_id: String,
    /// While a new build of a running deployment is under way: the spec it asked for,
    /// applied with the new image when the build succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Box<DeploymentSpec>>,
}

/// A deployment's lifecycle as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// Its image is being built from source (the previous revision, if any, keeps
    /// running meanwhile).
    Building,
    /// Its first build failed: nothing runs; the message says why.
    Failed,
    /// Instances are being placed or started.
    Deploying,
    /// Every desired instance runs.
    Running,
    /// Some instances cannot be placed or keep failing.
    Degraded,
    /// Being removed.
    Deleting,
}

impl DeploymentStatus {
    /// Lower-case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Building => "building",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Deploying => "deploying",
            DeploymentStatus::Running => "running",
            DeploymentStatus::Degraded => "degraded",
            DeploymentStatus::Deleting => "deleting",
        }
    }
}

impl FromStr for DeploymentStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "building" => Ok(DeploymentStatus::Building),
            "failed" => Ok(DeploymentStatus::Failed),
            "deploying" => Ok(DeploymentStatus::Deploying),
            "running" => Ok(DeploymentStatus::Running),
            "degraded" => Ok(DeploymentStatus::Degraded),
            "deleting" => Ok(DeploymentStatus::Deleting),
            other => Err(format!("unknown deployment status {other:?}")),
        }
    }
}

/// A stack as persisted: a compose file deployed as the deployments `<name>-<service>`.
#[derive(Debug, Clone, PartialEq)]
pub struct StackRecord {
    /// Unique name (the prefix of its deployments' names).
    pub name: String,
    /// The compose document as it was sent.
    pub source: String,
    /// The validated stack the document describes.
    pub spec: diplo_api::compose::StackSpec,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last deploy.
    pub updated_at: DateTime<Utc>,
}

/// A deployment as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRecord {
    /// Stable id.
    pub id: String,
    /// Current revision number (1 for a new deployment).
    pub revision: u32,
    /// The current revision's spec.
    pub spec: DeploymentSpec,
    /// Lifecycle status.
    pub status: DeploymentStatus,
    /// Why it is degraded, or progress.
    pub message: String,
    /// Key of the request that created it, for idempotent retries.
    pub idempotency_key: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What should become of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceDesired {
    /// Keep it running.
    Run,
    /// Remove its container, then the instance.
    Remove,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    /// Not placed yet (no node fits, or waiting).
    Pending,
    /// Placed; the create command is on its way or running.
    Starting,
    /// Its container runs.
    Running,
    /// Its container failed; it will be retried.
    Failed,
    /// Its node is down; a replacement is scheduled elsewhere.
    Lost,
}

/// One replica of a deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    /// Stable id (also the `diplo.instance` label of its container).
    pub id: String,
    /// Deployment id.
    pub deployment_id: String,
    /// Revision it runs.
    pub revision: u32,
    /// Node it is placed on.
    pub node_id: Option<String>,
    /// Runtime it runs with.
    pub runtime: Option<diplo_api::runtime::Runtime>,
    /// Container id once created.
    pub container_id: Option<String>,
    /// Keep or remove.
    pub desired: InstanceDesired,
    /// Life stage.
    pub status: InstanceStatus,
    /// Last error or progress note.
    pub message: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl InstanceRecord {
    /// A replica just placed on `node_id` with `runtime`, at `revision` of its deployment:
    /// desired running, starting, no container yet.
    pub fn placed(
        id: String,
        deployment_id: &str,
        revision: u32,
        node_id: &str,
        runtime: diplo_api::runtime::Runtime,
        now: DateTime<Utc>,
    ) -> Self {
        InstanceRecord {
            id,
            deployment_id: deployment_id.to_owned(),
            revision,
            node_id: Some(node_id.to_owned()),
            runtime: Some(runtime),
            container_id: None,
            desired: InstanceDesired::Run,
            status: InstanceStatus::Starting,
            message: String::new(),
            created_at: now,
            updated_at: now,
        }
    }
}

// ---- builds ----

/// A build of an image from git, as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// The build's id.
    pub id: String,
    /// Where it stands.
    #[serde(with = "build_status_name")]
    pub status: diplo_api::build::BuildStatus,
    /// Repository URL.
    pub git_repo: String,
    /// Branch or tag; `None`: the repository's default branch.
    pub git_branch: Option<String>,
    /// The commit built (known once its node reports).
    pub commit: String,
    /// Language built for (detected or given).
    pub language: String,
    /// The file that gave the language away, or `"language"` when given.
    pub detected_from: String,
    /// `buildpack_type` asked for (`""`: detection).
    pub buildpack_type: String,
    /// The builder that runs it, once a node is chosen.
    pub builder: Option<diplo_api::build::Builder>,
    /// The node that runs it, once chosen.
    pub node_id: Option<String>,
    /// Platform asked for (`linux/arm64`); `None`: any.
    pub platform: Option<String>,
    /// Image reference: the tag asked for, then what the node built (with digest once pushed).
    pub image: String,
    /// `sha256:…` digest of the image, once built.
    pub digest: String,
    /// Whether the image goes to (went to) a registry; `false`: it exists on its builder node only.
    pub pushed: bool,
    /// Compose buildpack: service name → image.
    pub service_images: BTreeMap<String, String>,
    /// Why it failed, or progress.
    pub message: String,
    /// When it was asked for.
    pub created_at: DateTime<Utc>,
    /// When its node was given it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Deployment this build feeds, if any.
    pub deployment_id: Option<String>,
    /// Who asked for it (`operator:NAME`, `system`).
    pub requested_by: String,
}

impl BuildRecord {
    /// Seconds from start (or creation) to the end, or to `now` while it runs.
    pub fn duration_seconds(&self, now: DateTime<Utc>) -> f64 {
        let from = self.started_at.unwrap_or(self.created_at);
        let to = self.finished_at.unwrap_or(now);
        (to - from).num_milliseconds().max(0) as f64 / 1000.0
    }
}

/// A [`diplo_api::build::BuildStatus`] as its lower-case name in JSON.
mod build_status_name {
    use diplo_api::build::BuildStatus;

    pub fn serialize<S: serde::Serializer>(status: &BuildStatus, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(status.as_str())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<BuildStatus, D::Error> {
        let text: String = serde::Deserialize::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_message_is_small_so_that_idle_session_queues_cost_little() {
        // Every open session has a downstream queue, whose first block of 32 slots is
        // allocated when the queue is made: at 10,000 sessions, each byte of a message
        // costs 320 kB whether a command is ever sent or not.
        let size = std::mem::size_of::<SessionMessage>();
        assert!(size <= 64, "SessionMessage is {size} bytes");
    }
}
