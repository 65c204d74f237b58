//! Status routes: `/api/status` (the documented shape plus `nodes`), cluster status, nodes.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use diplo_api::runtime::{PlatformClass, Runtime};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiError;
use super::containers::runtime_filter;
use super::error::Problem;
use super::page::{Order, Page, next_page_headers, paginate, parse_filter};
use crate::auth::Caller;
use crate::model::{NodeRecord, NodeStatus};
use crate::service::{ControlPlane, DeploymentSummary};

/// `GET /api/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemStatus {
    timestamp: DateTime<Utc>,
    system: SystemInfo,
    runtime: RuntimeSummary,
    applications: Vec<Application>,
    nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize, ToSchema)]
struct SystemInfo {
    os: &'static str,
    architecture: String,
    /// See [`runtime_kind`].
    runtime: String,
}

/// A deployment as `/api/status` lists it.
#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
struct Application {
    name: String,
    /// Its image (empty while a deployment from source builds its first one).
    image: String,
    status: &'static str,
    /// Desired replicas.
    replicas: u32,
    /// The runtime it is pinned to, else the one its instances run on (`None`: not placed
    /// yet, or spread over several).
    #[schema(value_type = Option<String>)]
    runtime: Option<Runtime>,
}

impl From<&DeploymentSummary> for Application {
    fn from(summary: &DeploymentSummary) -> Self {
        Application {
            name: summary.name.clone(),
            image: summary.image.clone(),
            status: summary.status.as_str(),
            replicas: summary.replicas,
            runtime: summary.runtime,
        }
    }
}

/// What the cluster runs on, in one word: `hybrid` when its ready nodes offer more than
/// one runtime, the runtime's name when they offer one, `none` when they offer none.
fn runtime_kind(available: &[Runtime]) -> String {
    match available {
        [] => "none".to_owned(),
        [only] => only.to_string(),
        [first, rest @ ..] if rest.iter().all(|r| r == first) => first.to_string(),
        _ => "hybrid".to_owned(),
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct RuntimeSummary {
    #[schema(value_type = Vec<String>)]
    available: Vec<Runtime>,
    #[schema(value_type = Option<String>)]
    preferred: Option<Runtime>,
    supported_languages: Vec<String>,
    supported_images: Vec<String>,
}

/// A node as REST shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    id: String,
    name: String,
    /// `ready`, `unhealthy` or `down`.
    #[schema(value_type = String)]
    status: NodeStatus,
    cordoned: bool,
    os: String,
    arch: String,
    os_release: String,
    kernel: String,
    hostname: String,
    cpus: u32,
    memory_bytes: u64,
    virtualization: String,
    raspberry_pi_model: String,
    #[schema(value_type = Vec<String>)]
    available: Vec<Runtime>,
    #[schema(value_type = Option<String>)]
    preferred: Option<Runtime>,
    /// Each runtime's probe: `runtime`, `available`, `version`, `endpoint`, `error`, `rootless`.
    #[schema(value_type = Vec<Object>)]
    runtimes: Vec<diplo_api::fingerprint::RuntimeReport>,
    labels: std::collections::BTreeMap<String, String>,
    address: String,
    joined_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
}

impl From<&NodeRecord> for NodeView {
    fn from(node: &NodeRecord) -> Self {
        let fp = &node.fingerprint;
        NodeView {
            id: node.id.clone(),
            name: node.name.clone(),
            status: node.status,
            cordoned: node.cordoned,
            os: fp.os.clone(),
            arch: fp.arch.clone(),
            os_release: fp.os_release.clone(),
            kernel: fp.kernel.clone(),
            hostname: fp.hostname.clone(),
            cpus: fp.cpus,
            memory_bytes: fp.memory_bytes,
            virtualization: fp.virtualization.clone(),
            raspberry_pi_model: fp.raspberry_pi_model.clone(),
            available: fp.available_runtimes(),
            preferred: fp.preferred_runtime(),
            runtimes: fp.runtimes.clone(),
            labels: node.labels.clone(),
            address: node.address.clone(),
            joined_at: node.joined_at,
            last_seen_at: node.last_seen_at,
        }
    }
}

/// The control plane host's architecture in Go/OCI spelling.
fn host_arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        "arm" => "arm".into(),
        other => other.into(),
    }
}

/// The base images builds use: the defaults, then the configured overrides, each once.
fn supported_images(overrides: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut images = diplo_api::build::template::default_images();
    for image in overrides.values() {
        if !images.contains(image) {
            images.push(image.clone());
        }
    }
    images
}

/// The system, its runtimes, applications (deployments) and nodes.
#[utoipa::path(get, path = "/api/status", tag = "status", responses((status = 200, description = "System status", body = SystemStatus)))]
pub async fn system_status(
    State(control_plane): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SystemStatus>, ApiError> {
    let status = control_plane.cluster_status(&caller).await?;
    let deployments = control_plane.deployment_summaries(&caller).await?;
    let arch = host_arch();
    let preferred = PlatformClass::of(std::env::consts::OS, &arch, false).preferred(&status.available_runtimes);
    Ok(Json(SystemStatus {
        timestamp: Utc::now(),
        system: SystemInfo { os: std::env::consts::OS, architecture: arch, runtime: runtime_kind(&status.available_runtimes) },
        runtime: RuntimeSummary {
            available: status.available_runtimes.clone(),
            preferred,
            supported_languages: diplo_api::build::template::supported_languages().into_iter().map(str::to_owned).collect(),
            supported_images: supported_images(&control_plane.config().base_images),
        },
        applications: deployments.iter().map(Application::from).collect(),
        nodes: status.nodes.iter().map(NodeView::from).collect(),
    }))
}

/// Node counts by state.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeCounts {
    total: usize,
    ready: u32,
    unhealthy: u32,
    down: u32,
}

/// Instance counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceCounts {
    total: u32,
    running: u32,
}

/// `GET /api/v1/compute/cluster/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterStatusJson {
    nodes: NodeCounts,
    instances: InstanceCounts,
}

/// Nodes by state and instances.
#[utoipa::path(get, path = "/api/v1/compute/cluster/status", tag = "status",
    responses((status = 200, description = "Cluster status", body = ClusterStatusJson)))]
pub async fn cluster_status(
    State(control_plane): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ClusterStatusJson>, ApiError> {
    let status = control_plane.cluster_status(&caller).await?;
    Ok(Json(ClusterStatusJson {
        nodes: NodeCounts {
            total: status.nodes.len(),
            ready: status.count(NodeStatus::Ready),
            unhealthy: status.count(NodeStatus::Unhealthy),
            down: status.count(NodeStatus::Down),
        },
        instances: InstanceCounts { total: status.instances_total, running: status.instances_running },
    }))
}

/// `?limit=&cursor=&status=&runtime=` for the node list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NodeListQuery {
    /// Items per page (1–1000, default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `X-Next-Cursor` of the previous page.
    cursor: Option<String>,
    /// Only nodes in this state (`ready`, `unhealthy`, `down`).
    status: Option<String>,
    /// Only nodes where this runtime is available.
    runtime: Option<String>,
}

/// Lists nodes: sorted by name, paged (`X-Next-Cursor` when more remain).
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", params(NodeListQuery),
    responses((status = 200, description = "One page of nodes", body = Vec<NodeView>,
        headers(("x-next-cursor" = String, description = "The cursor of the next page, when more remain")))))]
pub async fn list_nodes(
    State(control_plane): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeListQuery>,
) -> Result<(HeaderMap, Json<Vec<NodeView>>), ApiError> {
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let status = q.status.as_deref().filter(|s| !s.is_empty()).map(|s| parse_filter::<NodeStatus>("status", s)).transpose()?;
    let runtime = runtime_filter(q.runtime.as_deref())?;
    let nodes: Vec<NodeRecord> = control_plane
        .list_nodes(&caller)
        .await?
        .into_iter()
        .filter(|n| status.is_none_or(|s| n.status == s) && runtime.is_none_or(|r| n.fingerprint.available_runtimes().contains(&r)))
        .collect();
    let (nodes, next) = paginate(nodes, |n| format!("{}\u{0}{}", n.name, n.id), Order::Ascending, &page);
    let headers = next_page_headers("/api/v1/nodes", page.limit, next.as_deref());
    Ok((headers, Json(nodes.iter().map(NodeView::from).collect())))
}

/// One node, by name or id.
#[utoipa::path(get, path = "/api/v1/nodes/{node}", tag = "nodes", params(("node" = String, Path, description = "Node name or id")),
    responses((status = 200, description = "The node", body = NodeView)))]
pub async fn get_node(
    State(control_plane): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    Path(node): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    let record = control_plane.get_node(&caller, &node).await?;
    Ok(Json(NodeView::from(&record)))
}

/// The status and node routes of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(system_status, cluster_status, list_nodes, get_node),
    components(schemas(
        SystemStatus,
        SystemInfo,
        RuntimeSummary,
        Application,
        NodeView,
        ClusterStatusJson,
        NodeCounts,
        InstanceCounts,
        Problem
    ))
)]
pub(super) struct Doc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_kind_is_derived_from_the_available_runtimes() {
        use Runtime::*;
        let cases: [(&[Runtime], &str); 5] = [
            (&[], "none"),
            (&[Docker], "docker"),
            (&[Lxc], "lxc"),
            (&[Docker, Lxc], "hybrid"),
            (&[Docker, Containerd, Lxc, Podman], "hybrid"),
        ];
        for (available, kind) in cases {
            assert_eq!(runtime_kind(available), kind, "{available:?}");
        }
    }
}
