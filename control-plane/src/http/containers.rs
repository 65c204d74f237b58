//! Container routes (`/api/v1/containers*`) and runtime routes (`/api/{runtime}/status`,
//! `/api/v1/runtime/info`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use diplo_api::container::{ContainerSpec, LogOptions, PortMapping, Protocol, RestartPolicy};
use diplo_api::runtime::Runtime;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ApiError;
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::service::{ContainerView, ControlPlane, CreateContainer, Logs};

type Api = State<Arc<ControlPlane>>;

/// Operations every driver implements, reported by `/api/{runtime}/status`.
const CAPABILITIES: [&str; 10] = ["pull", "create", "start", "stop", "restart", "remove", "logs", "exec", "stats", "events"];

/// `POST /api/v1/containers` body (mikrocloud's shape plus `command`, `runtime_type`, `node`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    image: String,
    name: String,
    #[serde(default)]
    ports: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    restart_policy: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    runtime_type: Option<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
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

impl CreateBody {
    pub(super) fn into_request(self) -> Result<CreateContainer, ServiceError> {
        let ports = self
            .ports
            .iter()
            .map(|(host, container)| {
                let protocol = if container.ends_with("/udp") { Protocol::Udp } else { Protocol::Tcp };
                Ok(PortMapping { host_port: parse_port("ports", host)?, container_port: parse_port("ports", container)?, protocol })
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let restart_policy: RestartPolicy =
            self.restart_policy.as_deref().unwrap_or("no").parse().map_err(|e: String| ServiceError::invalid("restart_policy", e))?;
        let runtime = self
            .runtime_type
            .filter(|r| !r.is_empty())
            .map(|r| r.parse::<Runtime>().map_err(|e| ServiceError::invalid("runtime_type", e.to_string())))
            .transpose()?;
        let spec = ContainerSpec {
            name: self.name,
            image: self.image,
            command: self.command,
            env: self.environment,
            ports,
            restart_policy,
            labels: self.labels,
            ..ContainerSpec::default()
        };
        Ok(CreateContainer { spec, runtime, node: self.node.filter(|n| !n.is_empty()) })
    }
}

/// A container as REST shows it.
#[derive(Debug, Serialize)]
pub struct ContainerJson {
    id: String,
    name: String,
    image: String,
    status: diplo_api::container::ContainerStatus,
    node: String,
    node_id: String,
    runtime: Runtime,
    ports: BTreeMap<String, String>,
    ip_address: Option<String>,
    exit_code: i64,
    pid: Option<u32>,
    started_at: Option<String>,
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

/// `?node=` filter.
#[derive(Debug, Deserialize)]
pub struct NodeFilter {
    node: Option<String>,
}

pub async fn list(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeFilter>,
) -> Result<Json<Vec<ContainerJson>>, ApiError> {
    let views = cp.list_containers(&caller, q.node.as_deref()).await?;
    Ok(Json(views.into_iter().map(Into::into).collect()))
}

/// A `POST /api/v1/containers` body as the request it makes.
pub(super) fn create_request(body: &Bytes) -> Result<CreateContainer, ApiError> {
    Ok(parse_body::<CreateBody>(body)?.into_request()?)
}

pub async fn create(State(cp): Api, Extension(caller): Extension<Caller>, body: Bytes) -> Result<Response, ApiError> {
    let request = create_request(&body)?;
    let view = cp.create_container(&caller, request).await?;
    Ok((StatusCode::CREATED, Json(ContainerJson::from(view))).into_response())
}

pub async fn start(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<ContainerJson>, ApiError> {
    Ok(Json(cp.start_container(&caller, &id).await?.into()))
}

/// `?grace=SECONDS` for stop.
#[derive(Debug, Deserialize)]
pub struct StopQuery {
    grace: Option<u64>,
}

pub async fn stop(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<Json<ContainerJson>, ApiError> {
    Ok(Json(cp.stop_container(&caller, &id, q.grace.map(Duration::from_secs)).await?.into()))
}

pub async fn restart(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ContainerJson>, ApiError> {
    Ok(Json(cp.restart_container(&caller, &id).await?.into()))
}

/// `?force=true` for delete.
#[derive(Debug, Deserialize)]
pub struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

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
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<u32>,
    #[serde(default)]
    timestamps: bool,
}

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    argv: Vec<String>,
}

pub async fn exec(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ExecBody = parse_body(&body)?;
    let output = cp.exec_in_container(&caller, &id, body.argv).await?;
    Ok(Json(json!({
        "exit_code": output.exit_code,
        "stdout": String::from_utf8_lossy(&output.stdout),
        "stderr": String::from_utf8_lossy(&output.stderr),
    })))
}

pub async fn runtime_status(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(runtime): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let runtime: Runtime = runtime.parse().map_err(|e: diplo_api::runtime::UnknownRuntime| ServiceError::NotFound(e.to_string()))?;
    let status = cp.runtime_status(&caller, runtime).await?;
    let nodes: Vec<Value> = status
        .nodes
        .iter()
        .map(|(node, r)| json!({"node": node, "available": r.available, "version": r.version, "endpoint": r.endpoint, "error": r.error}))
        .collect();
    Ok(Json(json!({
        "runtime_type": runtime,
        "available": status.available,
        "version": status.version,
        "capabilities": if status.available { CAPABILITIES.to_vec() } else { Vec::new() },
        "supported_images": ["oci"],
        "timestamp": Utc::now(),
        "nodes": nodes,
    })))
}

pub async fn runtime_info(State(cp): Api, Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let nodes = cp.list_nodes(&caller).await?;
    let per_node: Vec<Value> = nodes
        .iter()
        .map(|node| {
            let preferred = node.fingerprint.preferred_runtime();
            let report = node.fingerprint.runtimes.iter().find(|r| Some(r.runtime) == preferred);
            json!({
                "node": node.name,
                "status": node.status,
                "runtime": preferred,
                "socket_path": report.map(|r| r.endpoint.clone()),
                "rootless": report.is_some_and(|r| r.rootless),
                "build_dir": Some(&node.fingerprint.build_dir).filter(|dir| !dir.is_empty()),
            })
        })
        .collect();
    let first = per_node.first().cloned().unwrap_or_else(|| json!({}));
    // The build directory of the first node that builds.
    let build_dir = per_node.iter().find_map(|node| node.get("build_dir").filter(|dir| !dir.is_null()).cloned());
    Ok(Json(json!({
        "runtime": first.get("runtime").cloned().unwrap_or(Value::Null),
        "socket_path": first.get("socket_path").cloned().unwrap_or(Value::Null),
        "rootless": first.get("rootless").cloned().unwrap_or(Value::Bool(false)),
        "build_dir": build_dir.unwrap_or(Value::Null),
        "nodes": per_node,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

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
