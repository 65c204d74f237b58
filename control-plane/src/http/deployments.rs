//! Deployment routes: `/api/unified/deploy` and `/api/deploy` (the Diplo deploy shape),
//! `/api/v1/deployments*`, `/api/v1/compute/instances*`, and `/api/v1/events` (SSE).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use diplo_api::container::{ContainerSpec, HealthCheck, Mount, PortMapping, Protocol, RestartPolicy};
use diplo_api::runtime::Runtime;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::ApiError;
use super::containers::{parse_body, parse_port, runtime_filter};
use super::error::Problem;
use super::page::{Order, Page, next_page_headers, paginate, parse_filter};
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::model::{
    Constraints, DeploymentRecord, DeploymentSpec, DeploymentStatus, InstanceDesired, InstanceRecord, InstanceStatus, SourceSpec, Strategy,
};
use crate::service::{ControlPlane, DeployInput, DeploymentView, InstanceView, WatchItem};

type Api = State<Arc<ControlPlane>>;

/// Resource limits as users write them.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesBody {
    /// `256m`, `1g`, or a number of bytes.
    #[schema(value_type = Option<String>)]
    memory: Option<Value>,
    /// Cores, e.g. 0.5.
    cpus: Option<f64>,
}

impl ResourcesBody {
    /// The memory limit in bytes and the CPU limit in millicores; errors name the field.
    pub(super) fn limits(&self) -> Result<(Option<u64>, Option<u32>), ServiceError> {
        let memory_bytes = self.memory.as_ref().map(memory_bytes).transpose()?;
        let cpu_millis = match self.cpus {
            Some(cpus) if !(0.001..=1024.0).contains(&cpus) => {
                return Err(ServiceError::invalid("resources.cpus", format!("{cpus} is not between 0.001 and 1024")));
            }
            Some(cpus) => Some((cpus * 1000.0).round() as u32),
            None => None,
        };
        Ok((memory_bytes, cpu_millis))
    }
}

/// Health check as users write it (seconds).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthBody {
    test: Vec<String>,
    #[serde(default = "default_interval")]
    interval: u64,
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default = "default_retries")]
    retries: u32,
}

fn default_interval() -> u64 {
    10
}
fn default_timeout() -> u64 {
    5
}
fn default_retries() -> u32 {
    3
}

/// `POST /api/unified/deploy` body: an image to run, or a repository to build and run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    name: String,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    repo_url: Option<String>,
    #[serde(default)]
    language: Option<String>,
    /// Branch to build (`repo_url`); the repository's default branch when absent.
    #[serde(default)]
    git_branch: Option<String>,
    #[serde(default)]
    runtime_type: Option<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    /// 0–1000; 1 when absent.
    #[serde(default)]
    #[schema(maximum = 1000)]
    replicas: Option<u32>,
    #[serde(default)]
    ports: BTreeMap<String, String>,
    #[serde(default)]
    command: Vec<String>,
    /// Where instances may run (`node`, `runtime`, `labels`, ...).
    #[serde(default)]
    #[schema(value_type = Object)]
    constraints: Constraints,
    /// `spread` or `binpack`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    strategy: Option<Strategy>,
    #[serde(default)]
    max_parallel: Option<u32>,
    #[serde(default)]
    restart_policy: Option<String>,
    #[serde(default)]
    resources: Option<ResourcesBody>,
    #[serde(default)]
    healthcheck: Option<HealthBody>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    tmpfs: Vec<String>,
    #[serde(default)]
    cap_drop: Vec<String>,
    #[serde(default)]
    no_new_privileges: bool,
    /// `name:/path[:ro]` or `/host/path:/path[:ro]`.
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// `256m` → bytes (k, m, g suffixes, powers of 1024), or a plain number of bytes.
fn memory_bytes(value: &Value) -> Result<u64, ServiceError> {
    let bad = || ServiceError::invalid("resources.memory", format!("{value} is not a size like 256m or 1g"));
    if let Some(bytes) = value.as_u64() {
        return Ok(bytes);
    }
    diplo_api::container::parse_memory(value.as_str().ok_or_else(bad)?).map_err(|_| bad())
}

fn mount(text: &str) -> Result<Mount, ServiceError> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        _ => return Err(ServiceError::invalid("volumes", format!("{text:?}: expected SOURCE:/path[:ro]"))),
    };
    Ok(Mount { source: source.to_owned(), target: target.to_owned(), read_only })
}

impl DeployBody {
    /// The deployment spec this body asks for.
    pub(super) fn into_spec(self) -> Result<DeploymentSpec, ServiceError> {
        // An image runs as it is; a repository is built first (the image comes from the build).
        let (image, source) = match (self.image.filter(|i| !i.trim().is_empty()), self.repo_url.filter(|r| !r.is_empty())) {
            (Some(_), Some(_)) => return Err(ServiceError::invalid("repo_url", "give either an image or a repo_url, not both")),
            (Some(image), None) => (image, None),
            (None, Some(repo_url)) => {
                let source = SourceSpec {
                    repo_url,
                    branch: self.git_branch.filter(|b| !b.is_empty()),
                    language: self.language.filter(|l| !l.is_empty()),
                    ..Default::default()
                };
                (String::new(), Some(source))
            }
            (None, None) => {
                return Err(ServiceError::invalid("image", "an image reference (image) or a repository (repo_url) is required"));
            }
        };
        let ports = self
            .ports
            .iter()
            .map(|(host, container)| {
                let protocol = if container.ends_with("/udp") { Protocol::Udp } else { Protocol::Tcp };
                Ok(PortMapping { host_port: parse_port("ports", host)?, container_port: parse_port("ports", container)?, protocol })
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let restart_policy: RestartPolicy =
            self.restart_policy.as_deref().unwrap_or("always").parse().map_err(|e: String| ServiceError::invalid("restart_policy", e))?;
        let runtime = self
            .runtime_type
            .filter(|r| !r.is_empty())
            .map(|r| r.parse::<Runtime>().map_err(|e| ServiceError::invalid("runtime_type", e.to_string())))
            .transpose()?;
        let (memory_bytes, cpu_millis) = self.resources.unwrap_or_default().limits()?;
        let healthcheck = match self.healthcheck {
            Some(h) if h.test.is_empty() => return Err(ServiceError::invalid("healthcheck.test", "a command is required")),
            Some(h) => Some(HealthCheck {
                test: h.test,
                interval: Duration::from_secs(h.interval.max(1)),
                timeout: Duration::from_secs(h.timeout.max(1)),
                retries: h.retries.max(1),
            }),
            None => None,
        };
        let container = ContainerSpec {
            name: String::new(),
            image,
            command: self.command,
            env: self.environment,
            ports,
            mounts: self.volumes.iter().map(|v| mount(v)).collect::<Result<_, _>>()?,
            memory_bytes,
            cpu_millis,
            restart_policy,
            read_only: self.read_only,
            tmpfs: self.tmpfs,
            cap_drop: self.cap_drop,
            no_new_privileges: self.no_new_privileges,
            labels: self.labels,
            healthcheck,
            ..ContainerSpec::default()
        };
        Ok(DeploymentSpec {
            name: self.name,
            replicas: self.replicas.unwrap_or(1),
            runtime,
            constraints: self.constraints,
            strategy: self.strategy.unwrap_or_default(),
            max_parallel: self.max_parallel.unwrap_or(1),
            container,
            source,
        })
    }
}

/// An instance (one replica of a deployment) as REST shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceJson {
    id: String,
    /// Always false: an instance of a deployment (direct containers are listed too, with true).
    direct: bool,
    /// The deployment's name.
    deployment: Option<String>,
    deployment_id: String,
    revision: u32,
    /// The node's id, once placed.
    node: Option<String>,
    #[schema(value_type = Option<String>)]
    runtime: Option<Runtime>,
    container_id: Option<String>,
    /// `pending`, `starting`, `running`, `failed` or `lost`.
    #[schema(value_type = String)]
    status: InstanceStatus,
    /// `run` or `remove`.
    #[schema(value_type = String)]
    desired: InstanceDesired,
    message: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn instance_json(instance: &InstanceRecord, deployment: Option<&str>) -> InstanceJson {
    InstanceJson {
        id: instance.id.clone(),
        direct: false,
        deployment: deployment.map(str::to_owned),
        deployment_id: instance.deployment_id.clone(),
        revision: instance.revision,
        node: instance.node_id.clone(),
        runtime: instance.runtime,
        container_id: instance.container_id.clone(),
        status: instance.status,
        desired: instance.desired,
        message: instance.message.clone(),
        created_at: instance.created_at,
        updated_at: instance.updated_at,
    }
}

/// Where a deployment built from source comes from.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceJson {
    repo_url: String,
    git_branch: Option<String>,
    language: Option<String>,
    commit: Option<String>,
    build_id: Option<String>,
}

/// A deployment as REST shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentJson {
    id: String,
    name: String,
    image: String,
    source: Option<SourceJson>,
    revision: u32,
    replicas: u32,
    running: usize,
    #[schema(value_type = Option<String>)]
    runtime_type: Option<Runtime>,
    #[schema(value_type = String)]
    strategy: Strategy,
    #[schema(value_type = Object)]
    constraints: Constraints,
    /// `building`, `deploying`, `running`, `degraded`, `failed`, `deleting`, ...
    status: String,
    message: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    instances: Vec<InstanceJson>,
}

fn deployment_json(deployment: &DeploymentRecord, instances: &[InstanceRecord]) -> DeploymentJson {
    let spec = &deployment.spec;
    let running = instances.iter().filter(|i| i.status == InstanceStatus::Running).count();
    DeploymentJson {
        id: deployment.id.clone(),
        name: spec.name.clone(),
        image: spec.container.image.clone(),
        source: spec.source.as_ref().map(|source| SourceJson {
            repo_url: source.repo_url.clone(),
            git_branch: source.branch.clone(),
            language: source.language.clone(),
            commit: Some(source.commit.clone()).filter(|c| !c.is_empty()),
            build_id: Some(source.build_id.clone()).filter(|b| !b.is_empty()),
        }),
        revision: deployment.revision,
        replicas: spec.replicas,
        running,
        runtime_type: spec.runtime,
        strategy: spec.strategy,
        constraints: spec.constraints.clone(),
        status: deployment.status.as_str().to_owned(),
        message: deployment.message.clone(),
        created_at: deployment.created_at,
        updated_at: deployment.updated_at,
        instances: instances.iter().map(|i| instance_json(i, Some(&spec.name))).collect(),
    }
}

fn view_json(view: &DeploymentView) -> DeploymentJson {
    deployment_json(&view.deployment, &view.instances)
}

/// A deploy body (`POST /api/unified/deploy`, `/api/deploy`, `/api/v1/deployments`) as
/// the deployment spec it asks for.
pub(super) fn deploy_spec(body: &Bytes) -> Result<DeploymentSpec, ApiError> {
    Ok(parse_body::<DeployBody>(body)?.into_spec()?)
}

/// A `PUT /api/v1/deployments/{name}` body as the spec it asks for; it must name `name`.
pub(super) fn update_spec(name: &str, body: &Bytes) -> Result<DeploymentSpec, ApiError> {
    let body: DeployBody = parse_body(body)?;
    if body.name != name {
        return Err(ServiceError::invalid("name", format!("the body names {:?} but the path {name:?}", body.name)).into());
    }
    Ok(body.into_spec()?)
}

/// What a deploy call answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeployJson {
    id: String,
    name: String,
    repo_url: String,
    git_branch: Option<String>,
    language: Option<String>,
    build_id: Option<String>,
    #[schema(value_type = Option<String>)]
    runtime_type: Option<Runtime>,
    image: String,
    replicas: u32,
    revision: u32,
    status: String,
    message: String,
    created_at: DateTime<Utc>,
}

/// Deploys an image, or builds a repository and deploys the image built: 201 for a new
/// deployment, 202 when deploying a source deployment again starts its rebuild. Served at
/// `/api/v1/deployments`, `/api/unified/deploy` and `/api/deploy` alike.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments", request_body = DeployBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key answers the first call's deployment")),
    responses((status = 201, description = "Deploying", body = DeployJson), (status = 202, description = "Rebuilding", body = DeployJson)))]
pub async fn deploy(State(cp): Api, Extension(caller): Extension<Caller>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let spec = deploy_spec(&body)?;
    let idempotency_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let deployed = cp.deploy(&caller, DeployInput { spec, idempotency_key }).await?;
    let d = &deployed.deployment;
    let source = d.spec.source.clone().unwrap_or_default();
    let message = match d.status {
        DeploymentStatus::Building => {
            format!("building {} from {}, then deploying {} replica(s)", source.build_id, source.repo_url, d.spec.replicas)
        }
        _ => format!("deploying {} replica(s) of {}", d.spec.replicas, d.spec.container.image),
    };
    let body = DeployJson {
        id: d.id.clone(),
        name: d.spec.name.clone(),
        repo_url: source.repo_url.clone(),
        git_branch: source.branch.clone(),
        language: source.language.clone(),
        build_id: Some(source.build_id.clone()).filter(|b| !b.is_empty()),
        runtime_type: deployed.runtime,
        image: d.spec.container.image.clone(),
        replicas: d.spec.replicas,
        revision: d.revision,
        status: d.status.as_str().to_owned(),
        message,
        created_at: d.created_at,
    };
    // A new deployment is created (201); deploying an existing source deployment again
    // starts its rebuild (202).
    let status = if d.revision > 0 && d.status == DeploymentStatus::Building { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok((status, Json(body)).into_response())
}

/// `?limit=&cursor=&status=&runtime=` for the deployment list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeploymentListQuery {
    /// Items per page (1–1000, default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `X-Next-Cursor` of the previous page.
    cursor: Option<String>,
    /// Only deployments in this state (`running`, `degraded`, ...).
    status: Option<String>,
    /// Only deployments pinned to this runtime.
    runtime: Option<String>,
}

/// Lists deployments with their instances: sorted by name, paged.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", params(DeploymentListQuery),
    responses((status = 200, description = "One page of deployments", body = Vec<DeploymentJson>,
        headers(("x-next-cursor" = String, description = "The cursor of the next page, when more remain")))))]
pub async fn list(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<DeploymentListQuery>,
) -> Result<(HeaderMap, Json<Vec<DeploymentJson>>), ApiError> {
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let status = q.status.as_deref().filter(|s| !s.is_empty()).map(|s| parse_filter::<DeploymentStatus>("status", s)).transpose()?;
    let runtime = runtime_filter(q.runtime.as_deref())?;
    let views: Vec<DeploymentView> = cp
        .list_deployments(&caller)
        .await?
        .into_iter()
        .filter(|v| status.is_none_or(|s| v.deployment.status == s) && runtime.is_none_or(|r| v.deployment.spec.runtime == Some(r)))
        .collect();
    let (views, next) = paginate(views, |v| v.deployment.spec.name.clone(), Order::Ascending, &page);
    let headers = next_page_headers("/api/v1/deployments", page.limit, next.as_deref());
    Ok((headers, Json(views.iter().map(view_json).collect())))
}

/// One deployment with its instances.
#[utoipa::path(get, path = "/api/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "The deployment", body = DeploymentJson)))]
pub async fn get(State(cp): Api, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> Result<Json<DeploymentJson>, ApiError> {
    Ok(Json(view_json(&cp.get_deployment(&caller, &name).await?)))
}

/// `POST /api/v1/deployments/{name}/scale` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    /// 0–1000.
    #[schema(maximum = 1000)]
    replicas: u32,
}

/// Sets a deployment's number of replicas.
#[utoipa::path(post, path = "/api/v1/deployments/{name}/scale", tag = "deployments", params(("name" = String, Path, description = "Deployment name")),
    request_body = ScaleBody, responses((status = 200, description = "Scaling", body = DeploymentJson)))]
pub async fn scale(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<DeploymentJson>, ApiError> {
    let body: ScaleBody = parse_body(&body)?;
    let deployment = cp.scale(&caller, &name, body.replicas).await?;
    Ok(Json(deployment_json(&deployment, &[])))
}

/// Replaces a deployment's spec (a new revision, rolled out by its strategy).
#[utoipa::path(put, path = "/api/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = "Deployment name")),
    request_body = DeployBody, responses((status = 200, description = "Updating", body = DeploymentJson)))]
pub async fn update(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<DeploymentJson>, ApiError> {
    let deployment = cp.update_deployment(&caller, update_spec(&name, &body)?).await?;
    Ok(Json(deployment_json(&deployment, &[])))
}

/// Rolls a deployment back to its previous revision.
#[utoipa::path(post, path = "/api/v1/deployments/{name}/rollback", tag = "deployments", params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Rolling back", body = DeploymentJson)))]
pub async fn rollback(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<DeploymentJson>, ApiError> {
    let deployment = cp.rollback(&caller, &name).await?;
    Ok(Json(deployment_json(&deployment, &[])))
}

/// Deletes a deployment: 202, its instances are removed in the background.
#[utoipa::path(delete, path = "/api/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = "Deployment name")),
    responses((status = 202, description = "Deleting")))]
pub async fn delete(State(cp): Api, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    cp.delete_deployment(&caller, &name).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `?limit=&cursor=&deployment=&node=&status=&runtime=` for the instance list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceListQuery {
    /// Items per page (1–1000, default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `X-Next-Cursor` of the previous page.
    cursor: Option<String>,
    /// Only this deployment's instances (name or id).
    deployment: Option<String>,
    /// Only instances on this node (name or id).
    node: Option<String>,
    /// Only instances in this state (`pending`, `starting`, `running`, `failed`, `lost`).
    status: Option<String>,
    /// Only instances on this runtime.
    runtime: Option<String>,
}

/// Lists instances, direct containers included: oldest first, paged (`X-Next-Cursor` when more remain).
#[utoipa::path(get, path = "/api/v1/compute/instances", tag = "instances", params(InstanceListQuery),
    responses((status = 200, description = "One page of instances (deployment instances, then direct containers)", body = Vec<InstanceItemJson>,
        headers(("x-next-cursor" = String, description = "The cursor of the next page, when more remain")))))]
pub async fn instances(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<InstanceListQuery>,
) -> Result<(HeaderMap, Json<Vec<InstanceItemJson>>), ApiError> {
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let status = q.status.as_deref().filter(|s| !s.is_empty()).map(|s| parse_filter::<InstanceStatus>("status", s)).transpose()?;
    let runtime = runtime_filter(q.runtime.as_deref())?;
    let node = match q.node.as_deref().filter(|n| !n.is_empty()) {
        Some(node) => Some(cp.get_node(&caller, node).await?.id),
        None => None,
    };
    let names: BTreeMap<String, String> =
        cp.list_deployments(&caller).await?.into_iter().map(|v| (v.deployment.id, v.deployment.spec.name)).collect();
    let mut items: Vec<InstanceItemJson> = cp
        .list_instances(&caller, q.deployment.as_deref())
        .await?
        .into_iter()
        .filter(|i| {
            status.is_none_or(|s| i.status == s)
                && runtime.is_none_or(|r| i.runtime == Some(r))
                && node.as_ref().is_none_or(|n| i.node_id.as_ref() == Some(n))
        })
        .map(|i| InstanceItemJson::Deployment(instance_json(&i, names.get(&i.deployment_id).map(String::as_str))))
        .collect();
    // Direct containers are instances too, unless one deployment's instances were asked
    // for; a running one matches `status=running`, and no other status.
    if q.deployment.as_deref().is_none_or(str::is_empty) {
        let running = diplo_api::container::ContainerStatus::Running;
        let direct = cp.direct_instances(&caller).await?.into_iter().filter(|d| {
            status.is_none_or(|s| s == InstanceStatus::Running && d.container.info.status == running)
                && runtime.is_none_or(|r| d.container.runtime == r)
                && node.as_ref().is_none_or(|n| &d.node_id == n)
        });
        items.extend(direct.map(|d| InstanceItemJson::Direct(d.into())));
    }
    // Deployment instances oldest first, then direct containers by id.
    let key = |item: &InstanceItemJson| match item {
        InstanceItemJson::Deployment(i) => format!("{}/{}", i.created_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true), i.id),
        InstanceItemJson::Direct(d) => format!("~direct/{}", d.id()),
    };
    let (items, next) = paginate(items, key, Order::Ascending, &page);
    let headers = next_page_headers("/api/v1/compute/instances", page.limit, next.as_deref());
    Ok((headers, Json(items)))
}

/// An item of the instance list: an instance of a deployment, or a direct container.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum InstanceItemJson {
    /// An instance of a deployment (`direct: false`).
    Deployment(InstanceJson),
    /// A container created outside any deployment (`direct: true`).
    Direct(super::compute::DirectInstanceJson),
}

/// One instance: of a deployment with its container, or a direct container.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum InstanceDetailJson {
    /// An instance of a deployment with its container.
    Deployment(InstanceViewJson),
    /// A container created outside any deployment.
    Direct(super::compute::DirectInstanceJson),
}

/// An instance's container as its node last reported it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceContainerJson {
    id: String,
    name: String,
    image: String,
    #[schema(value_type = String)]
    status: diplo_api::container::ContainerStatus,
    exit_code: i64,
    started_at: Option<String>,
    #[schema(value_type = Option<String>)]
    health: Option<diplo_api::container::Health>,
    restart_count: u32,
}

/// An instance with its container.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceViewJson {
    #[serde(flatten)]
    instance: InstanceJson,
    /// Null until its node reports a container.
    container: Option<InstanceContainerJson>,
}

/// An instance with its container as its node last reported it.
fn instance_view_json(view: &InstanceView) -> InstanceViewJson {
    InstanceViewJson {
        instance: instance_json(&view.instance, Some(&view.deployment)),
        container: view.container.as_ref().map(|c| InstanceContainerJson {
            id: c.id.clone(),
            name: c.name.clone(),
            image: c.image.clone(),
            status: c.status,
            exit_code: c.exit_code,
            started_at: c.started_at.clone(),
            health: c.health,
            restart_count: c.restart_count,
        }),
    }
}

/// One instance with its container, or a direct container (by id or name) as an instance.
#[utoipa::path(get, path = "/api/v1/compute/instances/{id}", tag = "instances", params(("id" = String, Path, description = "Instance id, or a direct container's id or name")),
    responses((status = 200, description = "The instance", body = InstanceDetailJson)))]
pub async fn instance(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<InstanceDetailJson>, ApiError> {
    match cp.get_instance(&caller, &id).await {
        Ok(view) => Ok(Json(InstanceDetailJson::Deployment(instance_view_json(&view)))),
        // A direct container is an instance too.
        Err(ServiceError::NotFound(message)) => match super::compute::direct_instance(&cp, &caller, &id).await? {
            Some(direct) => Ok(Json(InstanceDetailJson::Direct(direct))),
            None => Err(ServiceError::NotFound(message).into()),
        },
        Err(err) => Err(err.into()),
    }
}

/// `PUT /api/v1/compute/instances/{id}/start`.
#[utoipa::path(put, path = "/api/v1/compute/instances/{id}/start", tag = "instances", params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Started", body = InstanceViewJson)))]
pub async fn start_instance(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<InstanceViewJson>, ApiError> {
    Ok(Json(instance_view_json(&cp.start_instance(&caller, &id).await?)))
}

/// `?grace=SECONDS` for stop.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StopQuery {
    /// Seconds to wait after SIGTERM before SIGKILL.
    grace: Option<u64>,
}

/// `PUT /api/v1/compute/instances/{id}/stop`: the deployment's restart policy applies
/// afterwards, as after any exit.
#[utoipa::path(put, path = "/api/v1/compute/instances/{id}/stop", tag = "instances", params(("id" = String, Path, description = "Instance id"), StopQuery),
    responses((status = 200, description = "Stopped", body = InstanceViewJson)))]
pub async fn stop_instance(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<Json<InstanceViewJson>, ApiError> {
    Ok(Json(instance_view_json(&cp.stop_instance(&caller, &id, q.grace.map(Duration::from_secs)).await?)))
}

/// `PUT /api/v1/compute/instances/{id}/restart`.
#[utoipa::path(put, path = "/api/v1/compute/instances/{id}/restart", tag = "instances", params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Restarted", body = InstanceViewJson)))]
pub async fn restart_instance(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<InstanceViewJson>, ApiError> {
    Ok(Json(instance_view_json(&cp.restart_instance(&caller, &id).await?)))
}

/// `DELETE /api/v1/compute/instances/{id}`: 202; the deployment replaces the instance.
#[utoipa::path(delete, path = "/api/v1/compute/instances/{id}", tag = "instances", params(("id" = String, Path, description = "Instance id")),
    responses((status = 202, description = "Being replaced", body = InstanceViewJson)))]
pub async fn delete_instance(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let view = cp.delete_instance(&caller, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(instance_view_json(&view))).into_response())
}

/// One resource usage sample of an instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageJson {
    instance_id: String,
    node: String,
    #[schema(value_type = String)]
    runtime: Runtime,
    cpu_percent: f64,
    memory_bytes: u64,
    memory_limit_bytes: u64,
    network_rx_bytes: u64,
    network_tx_bytes: u64,
    timestamp: DateTime<Utc>,
}

/// `GET /api/v1/compute/instances/{id}/usage`: one sample taken on the instance's node.
#[utoipa::path(get, path = "/api/v1/compute/instances/{id}/usage", tag = "instances", params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "One sample", body = UsageJson)))]
pub async fn instance_usage(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<UsageJson>, ApiError> {
    let usage = cp.instance_usage(&caller, &id).await?;
    Ok(Json(UsageJson {
        instance_id: usage.instance_id,
        node: usage.node_id,
        runtime: usage.runtime,
        cpu_percent: usage.stats.cpu_percent,
        memory_bytes: usage.stats.memory_bytes,
        memory_limit_bytes: usage.stats.memory_limit_bytes,
        network_rx_bytes: usage.stats.network_rx_bytes,
        network_tx_bytes: usage.stats.network_tx_bytes,
        timestamp: Utc::now(),
    }))
}

/// `?after=SEQUENCE` to replay stored events first.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Replay the stored events after this sequence number first.
    after: Option<u64>,
}

/// Server-Sent Events: every event as `event: KIND`, `id: SEQUENCE`, JSON data. A
/// watcher that fell behind gets `event: lagged` with `{"missed": N}` (reconnect with
/// `?after=` the last id seen to replay them).
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "The event stream", body = String, content_type = "text/event-stream")))]
pub async fn events(State(cp): Api, Extension(caller): Extension<Caller>, Query(q): Query<EventsQuery>) -> Result<Response, ApiError> {
    let items = cp.watch_events(&caller, q.after).await?;
    let stream = tokio_stream::StreamExt::map(items, |item| Ok::<_, Infallible>(sse_event(item)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn sse_event(item: WatchItem) -> Event {
    match item {
        WatchItem::Event(record) => {
            let data = json!({
                "sequence": record.sequence,
                "at": record.event.at,
                "kind": record.event.kind,
                "actor": record.event.actor,
                "subject": record.event.subject,
                "message": record.event.message,
            });
            Event::default().event(record.event.kind.clone()).id(record.sequence.to_string()).data(data.to_string())
        }
        WatchItem::Lagged { missed } => Event::default().event("lagged").data(json!({ "missed": missed }).to_string()),
    }
}

/// The deployment, instance and event routes of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        deploy,
        list,
        get,
        update,
        delete,
        scale,
        rollback,
        instances,
        instance,
        start_instance,
        stop_instance,
        restart_instance,
        delete_instance,
        instance_usage,
        events
    ),
    components(schemas(
        DeployBody,
        ResourcesBody,
        HealthBody,
        ScaleBody,
        DeployJson,
        DeploymentJson,
        SourceJson,
        InstanceJson,
        InstanceViewJson,
        InstanceItemJson,
        InstanceDetailJson,
        InstanceContainerJson,
        UsageJson,
        Problem
    ))
)]
pub(super) struct Doc;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    #[tokio::test]
    async fn an_sse_watcher_that_falls_behind_gets_a_lagged_event() {
        use futures::StreamExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = crate::service::tests::control_plane(dir.path()).await;
        let caller = Caller::Operator { name: "admin".into(), role: Role::Admin };
        let response = events(State(cp.clone()), Extension(caller), Query(EventsQuery { after: None })).await.expect("watch");
        // More events than the live buffer holds, while the watcher reads nothing.
        for i in 0..1100 {
            cp.emit("test.event", "system", "s", format!("event {i}")).await;
        }
        let mut body = response.into_body().into_data_stream();
        let mut text = String::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(chunk)) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains("event: lagged") && text.contains("event 1099") {
                    return;
                }
            }
        })
        .await;
        assert!(read.is_ok(), "no lagged event within 10 s; got {} bytes", text.len());
        let lagged = text.split("\n\n").find(|frame| frame.contains("event: lagged")).expect("lagged frame");
        assert!(lagged.contains(r#"data: {"missed":"#), "{lagged}");
    }
}
