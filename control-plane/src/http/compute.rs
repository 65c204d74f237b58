//! LibGo's compute routes that are not about one deployment: creating an instance on a
//! chosen or scheduled backend (a direct container), updating an instance's resources
//! and restart policy, and a backend (runtime) across the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use diplo_api::container::{ContainerSpec, Protocol, RestartPolicy};
use diplo_api::runtime::Runtime;
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::containers::{parse_body, port_mappings};
use super::deployments::{HealthBody, ResourcesBody, WorkloadOptions};
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::service::{BackendInfo, ControlPlane, CreateContainer, DirectInstance, InstanceCounts, InstanceUpdate};

type Api = State<Arc<ControlPlane>>;

/// `POST /api/v1/compute/instances` body: one container on the chosen `backend` (and
/// `node`), or wherever the scheduler places it when they are left out.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceBody {
    /// Container name, unique in the cluster.
    name: String,
    /// Image reference.
    image: String,
    /// `docker`, `containerd`, `lxc` or `podman`; omitted: scheduled.
    #[serde(default)]
    backend: Option<String>,
    /// Node id or name; omitted: scheduled.
    #[serde(default)]
    node: Option<String>,
    /// Command and arguments (default: the image's).
    #[serde(default)]
    command: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Published ports, `{"HOST": "CONTAINER[/udp]"}`.
    #[serde(default)]
    ports: BTreeMap<String, String>,
    /// `no` (default), `always`, `on-failure`, `unless-stopped`.
    #[serde(default)]
    restart_policy: Option<String>,
    /// Labels (none in `diplo.*`).
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Limits: `{"memory": "256m", "memory_reservation": "128m", "cpus": 0.5, "pids_limit": 100}`.
    #[serde(default)]
    resources: Option<ResourcesBody>,
    /// Health check run in (or against) the container.
    #[serde(default)]
    healthcheck: Option<HealthBody>,
    /// Read-only root filesystem.
    #[serde(default)]
    read_only: bool,
    /// tmpfs mounts: `/path` or `/path:size=64m,mode=1777`.
    #[serde(default)]
    tmpfs: Vec<String>,
    /// Capabilities dropped from the default set (`ALL` for every one).
    #[serde(default)]
    cap_drop: Vec<String>,
    /// Capabilities added to the default set (`NET_ADMIN`, `CAP_SYS_TIME`).
    #[serde(default)]
    cap_add: Vec<String>,
    /// Forbid privilege escalation (setuid binaries, file capabilities).
    #[serde(default)]
    no_new_privileges: bool,
    /// `uid[:gid]` or `name[:group]`; the image's when absent.
    #[serde(default)]
    user: Option<String>,
    /// Absolute working directory; the image's when absent.
    #[serde(default)]
    working_dir: Option<String>,
    /// argv replacing the image's entrypoint.
    #[serde(default)]
    entrypoint: Vec<String>,
    /// Signal that asks the process to stop (`SIGTERM` when absent).
    #[serde(default)]
    stop_signal: Option<String>,
    /// Seconds between the stop signal and SIGKILL.
    #[serde(default)]
    stop_grace: Option<u32>,
}

impl CreateInstanceBody {
    fn into_request(self) -> Result<CreateContainer, ServiceError> {
        let runtime = parse_backend_field(self.backend.as_deref())?;
        let mut spec = ContainerSpec {
            name: self.name,
            image: self.image,
            command: self.command,
            env: self.env,
            ports: port_mappings(&self.ports)?,
            restart_policy: parse_restart_policy(self.restart_policy.as_deref())?.unwrap_or_default(),
            labels: self.labels,
            ..ContainerSpec::default()
        };
        WorkloadOptions {
            resources: self.resources,
            healthcheck: self.healthcheck,
            read_only: self.read_only,
            tmpfs: self.tmpfs,
            cap_drop: self.cap_drop,
            cap_add: self.cap_add,
            no_new_privileges: self.no_new_privileges,
            user: self.user,
            working_dir: self.working_dir,
            entrypoint: self.entrypoint,
            stop_signal: self.stop_signal,
            stop_grace: self.stop_grace,
        }
        .apply(&mut spec)?;
        Ok(CreateContainer { spec, runtime, node: self.node.filter(|n| !n.trim().is_empty()) })
    }
}

/// `backend` of a body: a runtime name, or none (scheduled).
fn parse_backend_field(backend: Option<&str>) -> Result<Option<Runtime>, ServiceError> {
    backend
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(|b| b.parse::<Runtime>().map_err(|e| ServiceError::invalid("backend", e.to_string())))
        .transpose()
}

fn parse_restart_policy(policy: Option<&str>) -> Result<Option<RestartPolicy>, ServiceError> {
    policy.map(|p| p.parse::<RestartPolicy>().map_err(|e: String| ServiceError::invalid("restart_policy", e))).transpose()
}

/// A direct container (created outside any deployment) as an instance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DirectInstanceJson {
    /// The container's id (its instance id).
    id: String,
    /// Always true: not an instance of a deployment.
    direct: bool,
    /// Always null for a direct container.
    deployment: Option<String>,
    /// Container name.
    name: String,
    /// Image reference.
    image: String,
    /// Node id.
    node: String,
    /// Node name.
    node_name: String,
    /// The runtime (backend) running it.
    #[schema(value_type = String)]
    runtime: Runtime,
    /// Runtime's container id.
    container_id: String,
    /// `created`, `running`, `paused`, `restarting`, `exited` or `unknown`.
    #[schema(value_type = String)]
    status: diplo_api::container::ContainerStatus,
    /// Published ports, `{"HOST": "CONTAINER[/udp]"}`.
    ports: BTreeMap<String, String>,
    /// Restarts done by the runtime itself.
    restart_count: u32,
}

impl DirectInstanceJson {
    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl From<DirectInstance> for DirectInstanceJson {
    fn from(direct: DirectInstance) -> Self {
        let info = direct.container.info;
        let ports = info
            .ports
            .iter()
            .map(|p| (p.host_port.to_string(), format!("{}{}", p.container_port, if p.protocol == Protocol::Udp { "/udp" } else { "" })))
            .collect();
        DirectInstanceJson {
            id: info.id.clone(),
            direct: true,
            deployment: None,
            name: info.name,
            image: info.image,
            node: direct.node_id,
            node_name: direct.node_name,
            runtime: direct.container.runtime,
            container_id: info.id,
            status: info.status,
            ports,
            restart_count: info.restart_count,
        }
    }
}

/// `POST /api/v1/compute/instances`: a direct container through the same service call
/// as `POST /api/v1/containers` and gRPC `CreateContainer`; 201 with the instance.
#[utoipa::path(
    post,
    path = "/api/v1/compute/instances",
    request_body = CreateInstanceBody,
    responses(
        (status = 201, body = DirectInstanceJson),
        (status = 400, description = "Invalid field (named), or a setting the backend cannot honour"),
        (status = 401, description = "No or bad token"),
        (status = 403, description = "Role too low"),
        (status = 404, description = "Unknown node or image"),
        (status = 409, description = "Name taken, or no node can run it (each node's reason)"),
    )
)]
pub async fn create_instance(State(cp): Api, Extension(caller): Extension<Caller>, body: Bytes) -> Result<Response, ApiError> {
    let body: CreateInstanceBody = parse_body(&body)?;
    let request = body.into_request()?;
    let view = cp.create_container(&caller, request).await?;
    let direct = DirectInstance {
        node_id: view.node_id,
        node_name: view.node_name,
        container: crate::model::ObservedContainer { runtime: view.runtime, info: view.info },
    };
    Ok((StatusCode::CREATED, Json(DirectInstanceJson::from(direct))).into_response())
}

/// `PUT /api/v1/compute/instances/{id}` body; what is left out stays as it is.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInstanceBody {
    /// `{"memory": "256m" | bytes, "cpus": 0.5}`.
    #[serde(default)]
    resources: Option<ResourcesBody>,
    /// `no`, `always`, `on-failure`, `unless-stopped`.
    #[serde(default)]
    restart_policy: Option<String>,
}

/// The answer to an instance update: the deployment revision that carries it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceUpdateJson {
    /// The instance asked for.
    instance_id: String,
    /// Its deployment, whose template changed.
    deployment: String,
    /// The deployment's revision now (rolled out to every instance of it).
    revision: u32,
    /// The deployment's status.
    status: String,
    /// What happens next.
    message: String,
}

/// `PUT /api/v1/compute/instances/{id}`: new resources or restart policy for a deployment
/// instance go to its deployment's template (a new revision rolled out to all its
/// instances; 202). A direct container's settings are fixed at creation (409).
#[utoipa::path(
    put,
    path = "/api/v1/compute/instances/{id}",
    params(("id" = String, Path, description = "Instance id")),
    request_body = UpdateInstanceBody,
    responses(
        (status = 202, body = InstanceUpdateJson),
        (status = 400, description = "Invalid field (named), nothing to update, or a setting the runtime cannot honour"),
        (status = 401, description = "No or bad token"),
        (status = 403, description = "Role too low"),
        (status = 404, description = "Unknown instance"),
        (status = 409, description = "A direct container: run it again with the new settings"),
    )
)]
pub async fn update_instance(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: UpdateInstanceBody = parse_body(&body)?;
    let (memory_bytes, cpu_millis) = match &body.resources {
        Some(resources) => resources.limits()?,
        None => (None, None),
    };
    let update = InstanceUpdate { memory_bytes, cpu_millis, restart_policy: parse_restart_policy(body.restart_policy.as_deref())? };
    let deployment = cp.update_instance(&caller, &id, update).await?;
    let answer = InstanceUpdateJson {
        message: format!(
            "deployment {} updated to revision {}: every instance of it is replaced with the new settings, {} at a time",
            deployment.spec.name, deployment.revision, deployment.spec.max_parallel
        ),
        instance_id: id,
        deployment: deployment.spec.name,
        revision: deployment.revision,
        status: deployment.status.as_str().to_owned(),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Instance counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CountsJson {
    /// All instances.
    total: u32,
    /// Those running.
    running: u32,
}

impl From<InstanceCounts> for CountsJson {
    fn from(counts: InstanceCounts) -> Self {
        CountsJson { total: counts.total, running: counts.running }
    }
}

/// One node offering a backend.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackendNodeJson {
    /// Node id.
    node_id: String,
    /// Node name.
    node: String,
    /// `ready`, `unhealthy` or `down`.
    status: String,
    /// The runtime answers on the node.
    available: bool,
    /// Its version there.
    version: String,
    /// Why it is unavailable.
    error: Option<String>,
    /// Instances it runs there.
    instances: CountsJson,
}

/// `GET /api/v1/compute/backends/{backend}/info`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackendInfoJson {
    /// The runtime's name.
    backend: String,
    /// Available on at least one ready node.
    available: bool,
    /// What its driver supports (the same table that refuses what it does not).
    capabilities: Vec<String>,
    /// The nodes that report it.
    nodes: Vec<BackendNodeJson>,
    /// Instances on it, cluster-wide.
    instances: CountsJson,
}

impl From<BackendInfo> for BackendInfoJson {
    fn from(info: BackendInfo) -> Self {
        BackendInfoJson {
            backend: info.runtime.name().to_owned(),
            available: info.available,
            capabilities: info.capabilities.iter().map(|c| c.name().to_owned()).collect(),
            nodes: info
                .nodes
                .into_iter()
                .map(|n| BackendNodeJson {
                    node_id: n.node_id,
                    node: n.node_name,
                    status: n.status.as_str().to_owned(),
                    available: n.available,
                    version: n.version,
                    error: Some(n.error).filter(|e| !e.is_empty()),
                    instances: n.instances.into(),
                })
                .collect(),
            instances: info.instances.into(),
        }
    }
}

/// `GET /api/v1/compute/backends/{backend}/info`: the runtime across the cluster; an
/// unknown backend is 404 naming it.
#[utoipa::path(
    get,
    path = "/api/v1/compute/backends/{backend}/info",
    params(("backend" = String, Path, description = "docker, containerd, lxc or podman")),
    responses(
        (status = 200, body = BackendInfoJson),
        (status = 401, description = "No or bad token"),
        (status = 404, description = "Unknown backend"),
    )
)]
pub async fn backend_info(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(backend): Path<String>,
) -> Result<Json<BackendInfoJson>, ApiError> {
    let runtime: Runtime =
        backend.parse().map_err(|e: diplo_api::runtime::UnknownRuntime| ServiceError::NotFound(format!("backend: {e}")))?;
    Ok(Json(cp.backend_info(&caller, runtime).await?.into()))
}

/// The compute routes' OpenAPI description (merged into the served document).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create_instance, update_instance, backend_info),
    components(schemas(
        CreateInstanceBody,
        DirectInstanceJson,
        UpdateInstanceBody,
        InstanceUpdateJson,
        BackendInfoJson,
        BackendNodeJson,
        CountsJson
    ))
)]
#[allow(dead_code)]
pub(super) struct Doc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compute_routes_are_described_with_their_bodies() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(Doc::openapi()).expect("serializes");
        for path in ["/api/v1/compute/instances", "/api/v1/compute/instances/{id}", "/api/v1/compute/backends/{backend}/info"] {
            assert!(doc["paths"][path].is_object(), "{path} missing: {doc}");
        }
        assert!(doc["components"]["schemas"]["BackendInfoJson"]["properties"]["capabilities"].is_object(), "{doc}");
    }

    #[test]
    fn instance_bodies_become_container_requests_with_errors_naming_the_field() {
        let parse = |json: &str| parse_body::<CreateInstanceBody>(&Bytes::from(json.to_owned())).map_err(|e| e.0.to_string());
        let body = parse(
            r#"{"name": "web", "image": "busybox", "backend": "docker", "node": "n1", "ports": {"8080": "80"},
                "resources": {"memory": "64m", "cpus": 0.5}, "restart_policy": "always", "env": {"A": "1"}}"#,
        )
        .expect("parses");
        let request = body.into_request().expect("valid");
        assert_eq!(request.runtime, Some(Runtime::Docker));
        assert_eq!(request.node.as_deref(), Some("n1"));
        assert_eq!(request.spec.memory_bytes, Some(64 << 20));
        assert_eq!(request.spec.cpu_millis, Some(500));
        assert_eq!(request.spec.restart_policy, RestartPolicy::Always);
        assert_eq!(request.spec.ports.len(), 1);
        let scheduled = parse(r#"{"name": "web", "image": "busybox"}"#).expect("parses").into_request().expect("valid");
        assert_eq!((scheduled.runtime, scheduled.node), (None, None));
        let cases = [
            (r#"{"name": "w", "image": "i", "backend": "kvm"}"#, "backend"),
            (r#"{"name": "w", "image": "i", "restart_policy": "sometimes"}"#, "restart_policy"),
            (r#"{"name": "w", "image": "i", "resources": {"cpus": 0}}"#, "resources.cpus"),
            (r#"{"name": "w", "image": "i", "resources": {"memory": "lots"}}"#, "resources.memory"),
            (r#"{"name": "w", "image": "i", "ports": {"x": "80"}}"#, "ports"),
        ];
        for (json, field) in cases {
            let error = parse(json).and_then(|b| b.into_request().map_err(|e| e.to_string())).expect_err(json);
            assert!(error.contains(field), "{json}: {error}");
        }
        let unknown = parse(r#"{"name": "w", "image": "i", "cpu_shares": 2}"#).expect_err("unknown field");
        assert!(unknown.contains("cpu_shares"), "{unknown}");
    }
}
