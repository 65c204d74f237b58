//! Container routes (`/api/v1/containers*`) and runtime routes (`/api/{runtime}/status`,
//! `/api/v1/runtime/info`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::DateTime;
use chrono::Utc;
use diplo_api::container::ContainerStatus;
use diplo_api::container::{ContainerSpec, LogOptions, PortMapping, Protocol, RestartPolicy};
use diplo_api::runtime::Runtime;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiError;
use super::cache::{CachedAnswer, ListCache};
use super::deployments::{HealthBody, ResourcesBody, WorkloadOptions};
use super::error::Problem;
use super::page::{Order, Page, next_page_headers, paginate, parse_filter};
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::service::{ContainerView, ControlPlane, CreateContainer, Logs};

type Api = State<Arc<ControlPlane>>;

/// `POST /api/v1/containers` body (mikrocloud's shape plus `command`, `runtime_type`, `node`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// Image reference.
    image: String,
    /// Container name (unique).
    name: String,
    /// Host port → container port (`"8080": "80"`, `"53": "53/udp"`).
    #[serde(default)]
    ports: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    /// `no`, `always`, `unless-stopped` or `on-failure[:N]`.
    #[serde(default)]
    restart_policy: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    /// `docker`, `podman`, `containerd` or `lxc`; the scheduler's choice when absent.
    #[serde(default)]
    runtime_type: Option<String>,
    /// Node name or id; the scheduler's choice when absent.
    #[serde(default)]
    node: Option<String>,
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

/// Parses a JSON body, answering 400 with serde's message prefixed by the path of the
/// field at fault (`resources.memory: invalid type ...`): serde names unknown and
/// missing fields itself, but not the field whose value has the wrong type or range.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let invalid = |message: String| ApiError(ServiceError::invalid("body", message));
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        invalid(if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) })
    })?;
    deserializer.end().map_err(|e| invalid(e.to_string()))?;
    Ok(value)
}

pub(super) fn parse_port(field: &'static str, text: &str) -> Result<u16, ServiceError> {
    let number = text.split('/').next().unwrap_or(text);
    number.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| ServiceError::invalid(field, format!("{text:?} is not a port (1-65535)")))
}

/// `{"HOST": "CONTAINER[/udp]"}` as port mappings; errors name `ports`.
pub(super) fn port_mappings(ports: &BTreeMap<String, String>) -> Result<Vec<PortMapping>, ServiceError> {
    ports
        .iter()
        .map(|(host, container)| {
            let protocol = if container.ends_with("/udp") { Protocol::Udp } else { Protocol::Tcp };
            Ok(PortMapping { host_port: parse_port("ports", host)?, container_port: parse_port("ports", container)?, protocol })
        })
        .collect()
}

impl CreateBody {
    pub(super) fn into_request(self) -> Result<CreateContainer, ServiceError> {
        let ports = port_mappings(&self.ports)?;
        let restart_policy: RestartPolicy =
            self.restart_policy.as_deref().unwrap_or("no").parse().map_err(|e: String| ServiceError::invalid("restart_policy", e))?;
        let runtime = self
            .runtime_type
            .filter(|r| !r.is_empty())
            .map(|r| r.parse::<Runtime>().map_err(|e| ServiceError::invalid("runtime_type", e.to_string())))
            .transpose()?;
        let mut spec = ContainerSpec {
            name: self.name,
            image: self.image,
            command: self.command,
            env: self.environment,
            ports,
            restart_policy,
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
        Ok(CreateContainer { spec, runtime, node: self.node.filter(|n| !n.is_empty()) })
    }
}

/// A container as REST shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContainerJson {
    id: String,
    name: String,
    image: String,
    /// `created`, `running`, `paused`, `restarting`, `exited` or `unknown`.
    #[schema(value_type = String)]
    status: ContainerStatus,
    /// Node name.
    node: String,
    node_id: String,
    #[schema(value_type = String)]
    runtime: Runtime,
    /// Host port → container port.
    ports: BTreeMap<String, String>,
    ip_address: Option<String>,
    exit_code: i64,
    pid: Option<u32>,
    started_at: Option<String>,
    /// `starting`, `healthy` or `unhealthy`; null without a health check.
    #[schema(value_type = Option<String>)]
    health: Option<diplo_api::container::Health>,
    labels: BTreeMap<String, String>,
    restart_count: u32,
}

impl From<ContainerView> for ContainerJson {
    fn from(view: ContainerView) -> Self {
        let ports = view
            .info
            .ports
            .iter()
            .map(|p| {
                let suffix = if p.protocol == Protocol::Udp { "/udp" } else { "" };
                (p.host_port.to_string(), format!("{}{suffix}", p.container_port))
            })
            .collect();
        ContainerJson {
            id: view.info.id,
            name: view.info.name,
            image: view.info.image,
            status: view.info.status,
            node: view.node_name,
            node_id: view.node_id,
            runtime: view.runtime,
            ports,
            ip_address: view.info.ip_address,
            exit_code: view.info.exit_code,
            pid: view.info.pid,
            started_at: view.info.started_at,
            restart_count: view.info.restart_count,
            health: view.info.health,
            labels: view.info.labels,
        }
    }
}

/// `?limit=&cursor=&node=&status=&runtime=` for the container list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContainerListQuery {
    /// Items per page (1–1000, default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `X-Next-Cursor` of the previous page.
    cursor: Option<String>,
    /// Only containers on this node (name or id).
    node: Option<String>,
    /// Only containers in this state (`running`, `exited`, ...).
    status: Option<String>,
    /// Only containers of this runtime.
    runtime: Option<String>,
}

/// Parses a `?runtime=` filter, refusing an unknown runtime naming `runtime`.
pub(super) fn runtime_filter(text: Option<&str>) -> Result<Option<Runtime>, ServiceError> {
    text.filter(|t| !t.is_empty()).map(|t| t.parse::<Runtime>().map_err(|e| ServiceError::invalid("runtime", e.to_string()))).transpose()
}

/// Lists containers: sorted by name, paged (`X-Next-Cursor` when more remain).
#[utoipa::path(get, path = "/api/v1/containers", tag = "containers", params(ContainerListQuery),
    responses((status = 200, description = "One page of containers", body = Vec<ContainerJson>,
        headers(("x-next-cursor" = String, description = "The cursor of the next page, when more remain")))))]
pub async fn list(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Extension(cache): Extension<Arc<ListCache>>,
    RawQuery(raw): RawQuery,
    Query(q): Query<ContainerListQuery>,
) -> Result<CachedAnswer, ApiError> {
    // Read before the list: the list is at least as new as the version it is kept under.
    let version = cp.containers_version(&caller)?;
    let key = raw.unwrap_or_default();
    if let Some(answer) = cache.get(version, &key) {
        return Ok(answer);
    }
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let status = q.status.as_deref().filter(|s| !s.is_empty()).map(|s| parse_filter::<ContainerStatus>("status", s)).transpose()?;
    let runtime = runtime_filter(q.runtime.as_deref())?;
    let views = cp.list_containers(&caller, q.node.as_deref()).await?;
    let views: Vec<ContainerView> =
        views.into_iter().filter(|v| status.is_none_or(|s| v.info.status == s) && runtime.is_none_or(|r| v.runtime == r)).collect();
    let (views, next) = paginate(views, |v| format!("{}\u{0}{}", v.info.name, v.info.id), Order::Ascending, &page);
    let headers = next_page_headers("/api/v1/containers", page.limit, next.as_deref());
    let items: Vec<ContainerJson> = views.into_iter().map(Into::into).collect();
    let answer =
        CachedAnswer::json(headers, &items).map_err(|e| ServiceError::Internal(format!("cannot serialise the container list: {e}")))?;
    cache.put(version, key, answer.clone());
    Ok(answer)
}

/// A `POST /api/v1/containers` body as the request it makes.
pub(super) fn create_request(body: &Bytes) -> Result<CreateContainer, ApiError> {
    Ok(parse_body::<CreateBody>(body)?.into_request()?)
}

/// Creates and starts a container on a chosen or scheduled node.
#[utoipa::path(post, path = "/api/v1/containers", tag = "containers", request_body = CreateBody,
    responses((status = 201, description = "Created and started", body = ContainerJson)))]
pub async fn create(State(cp): Api, Extension(caller): Extension<Caller>, body: Bytes) -> Result<Response, ApiError> {
    let request = create_request(&body)?;
    let view = cp.create_container(&caller, request).await?;
    Ok((StatusCode::CREATED, Json(ContainerJson::from(view))).into_response())
}

/// Starts a container.
#[utoipa::path(post, path = "/api/v1/containers/{id}/start", tag = "containers", params(("id" = String, Path, description = "Container id or name")),
    responses((status = 200, description = "Started", body = ContainerJson)))]
pub async fn start(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<ContainerJson>, ApiError> {
    Ok(Json(cp.start_container(&caller, &id).await?.into()))
}

/// `?grace=SECONDS` for stop.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StopQuery {
    /// Seconds to wait after SIGTERM before SIGKILL.
    grace: Option<u64>,
}

/// Stops a container.
#[utoipa::path(post, path = "/api/v1/containers/{id}/stop", tag = "containers", params(("id" = String, Path, description = "Container id or name"), StopQuery),
    responses((status = 200, description = "Stopped", body = ContainerJson)))]
pub async fn stop(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<Json<ContainerJson>, ApiError> {
    Ok(Json(cp.stop_container(&caller, &id, q.grace.map(Duration::from_secs)).await?.into()))
}

/// Restarts a container.
#[utoipa::path(post, path = "/api/v1/containers/{id}/restart", tag = "containers", params(("id" = String, Path, description = "Container id or name")),
    responses((status = 200, description = "Restarted", body = ContainerJson)))]
pub async fn restart(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ContainerJson>, ApiError> {
    Ok(Json(cp.restart_container(&caller, &id).await?.into()))
}

/// `?force=true` for delete.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Remove even when running.
    #[serde(default)]
    force: bool,
}

/// Removes a container.
#[utoipa::path(delete, path = "/api/v1/containers/{id}", tag = "containers", params(("id" = String, Path, description = "Container id or name"), RemoveQuery),
    responses((status = 204, description = "Removed")))]
pub async fn remove(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    cp.remove_container(&caller, &id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?follow=&tail=&timestamps=` for logs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Stream until the container stops or the caller hangs up.
    #[serde(default)]
    follow: bool,
    /// Only the last N lines.
    tail: Option<u32>,
    /// Prefix each line with its time.
    #[serde(default)]
    timestamps: bool,
}

/// A container's output (stdout then stderr), as text; followed on request.
#[utoipa::path(get, path = "/api/v1/containers/{id}/logs", tag = "containers", params(("id" = String, Path, description = "Container id or name"), LogsQuery),
    responses((status = 200, description = "The output", body = String, content_type = "text/plain")))]
pub async fn logs(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let options = LogOptions { follow: q.follow, tail: q.tail, timestamps: q.timestamps };
    let body = match cp.container_logs(&caller, &id, options).await? {
        Logs::Complete(output) => Body::from([output.stdout, output.stderr].concat()),
        Logs::Follow(rx) => {
            let stream = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |chunk| {
                Ok::<_, std::convert::Infallible>(Bytes::from(chunk.data))
            });
            Body::from_stream(stream)
        }
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// `POST /api/v1/containers/{id}/exec` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The command and its arguments.
    argv: Vec<String>,
}

/// What a command run in a container printed, and its exit code.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecOutput {
    exit_code: i64,
    stdout: String,
    stderr: String,
}

/// Runs a command in a running container.
#[utoipa::path(post, path = "/api/v1/containers/{id}/exec", tag = "containers", params(("id" = String, Path, description = "Container id or name")),
    request_body = ExecBody, responses((status = 200, description = "The command ran", body = ExecOutput)))]
pub async fn exec(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ExecOutput>, ApiError> {
    let body: ExecBody = parse_body(&body)?;
    let output = cp.exec_in_container(&caller, &id, body.argv).await?;
    Ok(Json(ExecOutput {
        exit_code: output.exit_code,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }))
}

/// One node's report for a runtime.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuntimeNodeJson {
    node: String,
    available: bool,
    version: String,
    endpoint: String,
    error: String,
}

/// `GET /api/{runtime}/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuntimeStatusJson {
    #[schema(value_type = String)]
    runtime_type: Runtime,
    available: bool,
    version: String,
    /// What the runtime's driver supports (`pull`, `pause`, `healthcheck`, `networks`, ...).
    #[schema(value_type = Vec<String>)]
    capabilities: Vec<diplo_api::runtime::Capability>,
    supported_images: Vec<String>,
    timestamp: DateTime<Utc>,
    nodes: Vec<RuntimeNodeJson>,
}

/// A runtime's availability over the ready nodes.
#[utoipa::path(get, path = "/api/{runtime}/status", tag = "runtimes",
    params(("runtime" = String, Path, description = "docker, podman, containerd or lxc")),
    responses((status = 200, description = "The runtime's status", body = RuntimeStatusJson)))]
pub async fn runtime_status(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(runtime): Path<String>,
) -> Result<Json<RuntimeStatusJson>, ApiError> {
    let runtime: Runtime = runtime.parse().map_err(|e: diplo_api::runtime::UnknownRuntime| ServiceError::NotFound(e.to_string()))?;
    let status = cp.runtime_status(&caller, runtime).await?;
    let nodes = status
        .nodes
        .iter()
        .map(|(node, r)| RuntimeNodeJson {
            node: node.clone(),
            available: r.available,
            version: r.version.clone(),
            endpoint: r.endpoint.clone(),
            error: r.error.clone(),
        })
        .collect();
    Ok(Json(RuntimeStatusJson {
        runtime_type: runtime,
        available: status.available,
        version: status.version,
        capabilities: if status.available { runtime.capabilities() } else { Vec::new() },
        supported_images: vec!["oci".to_owned()],
        timestamp: Utc::now(),
        nodes,
    }))
}

/// One node's runtime, as `/api/v1/runtime/info` lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuntimeInfoNode {
    node: String,
    #[schema(value_type = String)]
    status: crate::model::NodeStatus,
    #[schema(value_type = Option<String>)]
    runtime: Option<Runtime>,
    socket_path: Option<String>,
    rootless: bool,
    build_dir: Option<String>,
}

/// `GET /api/v1/runtime/info`: the first node's runtime, and every node's.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuntimeInfoJson {
    #[schema(value_type = Option<String>)]
    runtime: Option<Runtime>,
    socket_path: Option<String>,
    rootless: bool,
    /// The build directory of the first node that builds.
    build_dir: Option<String>,
    nodes: Vec<RuntimeInfoNode>,
}

/// The runtime of each node (its preferred one), its socket and build directory.
#[utoipa::path(get, path = "/api/v1/runtime/info", tag = "runtimes",
    responses((status = 200, description = "Runtime information", body = RuntimeInfoJson)))]
pub async fn runtime_info(State(cp): Api, Extension(caller): Extension<Caller>) -> Result<Json<RuntimeInfoJson>, ApiError> {
    let nodes = cp.list_nodes(&caller).await?;
    let per_node: Vec<RuntimeInfoNode> = nodes
        .iter()
        .map(|node| {
            let preferred = node.fingerprint.preferred_runtime();
            let report = node.fingerprint.runtimes.iter().find(|r| Some(r.runtime) == preferred);
            RuntimeInfoNode {
                node: node.name.clone(),
                status: node.status,
                runtime: preferred,
                socket_path: report.map(|r| r.endpoint.clone()),
                rootless: report.is_some_and(|r| r.rootless),
                build_dir: Some(node.fingerprint.build_dir.clone()).filter(|dir| !dir.is_empty()),
            }
        })
        .collect();
    let first = per_node.first();
    Ok(Json(RuntimeInfoJson {
        runtime: first.and_then(|n| n.runtime),
        socket_path: first.and_then(|n| n.socket_path.clone()),
        rootless: first.is_some_and(|n| n.rootless),
        build_dir: per_node.iter().find_map(|n| n.build_dir.clone()),
        nodes: per_node,
    }))
}

/// The container and runtime routes of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, create, start, stop, restart, remove, logs, exec, runtime_status, runtime_info),
    components(schemas(
        CreateBody,
        ContainerJson,
        ExecBody,
        ExecOutput,
        RuntimeStatusJson,
        RuntimeNodeJson,
        RuntimeInfoJson,
        RuntimeInfoNode,
        Problem
    ))
)]
pub(super) struct Doc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_bodies_carry_every_workload_option() {
        let json = r#"{"name": "web", "image": "busybox", "runtime_type": "lxc",
            "resources": {"memory": "64m", "memory_reservation": "32m", "cpus": 0.5, "pids_limit": 64},
            "healthcheck": {"test": ["CMD-SHELL", "true"], "interval": 5, "start_period": 3},
            "read_only": true, "tmpfs": ["/scratch:size=1m"], "cap_drop": ["ALL"], "cap_add": ["NET_BIND_SERVICE"],
            "no_new_privileges": true, "user": "1234:2345", "working_dir": "/home",
            "entrypoint": ["/bin/sh", "-c"], "command": ["id -u"], "stop_signal": "USR1", "stop_grace": 3}"#;
        let spec = parse_body::<CreateBody>(&Bytes::from(json)).expect("parses").into_request().expect("valid").spec;
        assert_eq!(
            (spec.memory_bytes, spec.memory_reservation, spec.cpu_millis, spec.pids_limit),
            (Some(64 << 20), Some(32 << 20), Some(500), Some(64))
        );
        let health = spec.healthcheck.as_ref().expect("health check");
        assert_eq!((health.interval, health.start_period), (std::time::Duration::from_secs(5), std::time::Duration::from_secs(3)));
        assert!(spec.read_only && spec.no_new_privileges);
        assert_eq!(spec.tmpfs, ["/scratch:size=1m"]);
        assert_eq!((spec.cap_drop.as_slice(), spec.cap_add.as_slice()), (&["ALL".to_owned()][..], &["NET_BIND_SERVICE".to_owned()][..]));
        assert_eq!((spec.user.as_str(), spec.working_dir.as_str(), spec.stop_signal.as_str()), ("1234:2345", "/home", "USR1"));
        assert_eq!((spec.entrypoint.len(), spec.command.len(), spec.stop_grace), (2, 1, Some(3)));
        assert_eq!(spec.check_options(), Ok(()));
        for (json, field) in [
            (r#"{"name": "w", "image": "i", "resources": {"memory_reservation": "lots"}}"#, "resources.memory_reservation"),
            (r#"{"name": "w", "image": "i", "healthcheck": {"test": []}}"#, "healthcheck.test"),
            (r#"{"name": "w", "image": "i", "stop_grace": -1}"#, "stop_grace"),
            (r#"{"name": "w", "image": "i", "resources": {"pids_limit": "x"}}"#, "resources.pids_limit"),
        ] {
            let error = parse_body::<CreateBody>(&Bytes::from(json))
                .map_err(|e| e.0.to_string())
                .and_then(|body| body.into_request().map(drop).map_err(|e| e.to_string()))
                .expect_err(json);
            assert!(error.contains(field), "{json}: {error}");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        replicas: u32,
        #[serde(default)]
        resources: Option<Limits>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Limits {
        memory: u64,
    }

    /// A 400 for a bad body names the field at fault, whatever serde found wrong.
    #[test]
    fn a_bad_body_is_refused_naming_the_field() {
        for (body, names) in [
            (r#"{"replicas": -1}"#, "replicas"),
            (r#"{"replicas": "two"}"#, "replicas"),
            (r#"{"replicas": 1, "resources": {"memory": -5}}"#, "resources.memory"),
            (r#"{"replicas": 1, "replicaz": 2}"#, "replicaz"),
            (r#"{"resources": null}"#, "replicas"),
            (r#"{"replicas": 1} trailing"#, "trailing characters"),
            ("not json", "expected"),
        ] {
            let err = parse_body::<Body>(&Bytes::from(body)).expect_err(body);
            let message = err.0.to_string();
            assert!(message.contains(names), "{body}: {message}");
            assert!(matches!(err.0, ServiceError::InvalidArgument { field: "body", .. }), "{body}: {message}");
        }
        assert_eq!(parse_body::<Body>(&Bytes::from(r#"{"replicas": 3}"#)).expect("valid").replicas, 3);
    }
}
