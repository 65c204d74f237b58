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
use diplo_api::container::{ContainerSpec, HealthCheck, Mount, PortMapping, Protocol, RestartPolicy};
use diplo_api::runtime::Runtime;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::containers::{parse_body, parse_port};
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::model::{Constraints, DeploymentRecord, DeploymentSpec, DeploymentStatus, InstanceRecord, SourceSpec, Strategy};
use crate::service::{ControlPlane, DeployInput, DeploymentView, InstanceView, WatchItem};

type Api = State<Arc<ControlPlane>>;

/// Resource limits as users write them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesBody {
    /// `256m`, `1g`, or bytes.
    memory: Option<Value>,
    /// Cores, e.g. 0.5.
    cpus: Option<f64>,
}

/// Health check as users write it (seconds).
#[derive(Debug, Deserialize)]
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

/// `POST /api/unified/deploy` body.
#[derive(Debug, Deserialize)]
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
    #[serde(default)]
    replicas: Option<u32>,
    #[serde(default)]
    ports: BTreeMap<String, String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    constraints: Constraints,
    #[serde(default)]
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
    let text = value.as_str().ok_or_else(bad)?.trim().to_ascii_lowercase();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number.parse().map_err(|_| bad())?;
    let factor = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
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
        let resources = self.resources.unwrap_or_default();
        let memory_bytes = resources.memory.as_ref().map(memory_bytes).transpose()?;
        let cpu_millis = match resources.cpus {
            Some(cpus) if !(0.001..=1024.0).contains(&cpus) => {
                return Err(ServiceError::invalid("resources.cpus", format!("{cpus} is not between 0.001 and 1024")));
            }
            Some(cpus) => Some((cpus * 1000.0).round() as u32),
            None => None,
        };
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

fn instance_json(instance: &InstanceRecord, deployment: Option<&str>) -> Value {
    json!({
        "id": instance.id,
        "deployment": deployment,
        "deployment_id": instance.deployment_id,
        "revision": instance.revision,
        "node": instance.node_id,
        "runtime": instance.runtime,
        "container_id": instance.container_id,
        "status": instance.status,
        "desired": instance.desired,
        "message": instance.message,
        "created_at": instance.created_at,
        "updated_at": instance.updated_at,
    })
}

fn deployment_json(deployment: &DeploymentRecord, instances: &[InstanceRecord]) -> Value {
    let spec = &deployment.spec;
    let running = instances.iter().filter(|i| i.status == crate::model::InstanceStatus::Running).count();
    json!({
        "id": deployment.id,
        "name": spec.name,
        "image": spec.container.image,
        "source": spec.source.as_ref().map(|source| json!({
            "repo_url": source.repo_url,
            "git_branch": source.branch,
            "language": source.language,
            "commit": (!source.commit.is_empty()).then_some(&source.commit),
            "build_id": (!source.build_id.is_empty()).then_some(&source.build_id),
        })),
        "revision": deployment.revision,
        "replicas": spec.replicas,
        "running": running,
        "runtime_type": spec.runtime,
        "strategy": spec.strategy,
        "constraints": spec.constraints,
        "status": deployment.status.as_str(),
        "message": deployment.message,
        "created_at": deployment.created_at,
        "updated_at": deployment.updated_at,
        "instances": instances.iter().map(|i| instance_json(i, Some(&spec.name))).collect::<Vec<_>>(),
    })
}

fn view_json(view: &DeploymentView) -> Value {
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
    let body = json!({
        "id": d.id,
        "name": d.spec.name,
        "repo_url": source.repo_url,
        "git_branch": source.branch,
        "language": source.language,
        "build_id": (!source.build_id.is_empty()).then_some(&source.build_id),
        "runtime_type": deployed.runtime,
        "image": d.spec.container.image,
        "replicas": d.spec.replicas,
        "revision": d.revision,
        "status": d.status.as_str(),
        "message": message,
        "created_at": d.created_at,
    });
    // A new deployment is created (201); deploying an existing source deployment again
    // starts its rebuild (202).
    let status = if d.revision > 0 && d.status == DeploymentStatus::Building { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok((status, Json(body)).into_response())
}

pub async fn list(State(cp): Api, Extension(caller): Extension<Caller>) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(cp.list_deployments(&caller).await?.iter().map(view_json).collect()))
}

pub async fn get(State(cp): Api, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(view_json(&cp.get_deployment(&caller, &name).await?)))
}

/// `POST /api/v1/deployments/{name}/scale` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    replicas: u32,
}

pub async fn scale(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ScaleBody = parse_body(&body)?;
    let deployment = cp.scale(&caller, &name, body.replicas).await?;
    Ok(Json(deployment_json(&deployment, &[])))
}

pub async fn update(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let deployment = cp.update_deployment(&caller, update_spec(&name, &body)?).await?;
    Ok(Json(deployment_json(&deployment, &[])))
}

pub async fn rollback(State(cp): Api, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let deployment = cp.rollback(&caller, &name).await?;
    Ok(Json(deployment_json(&deployment, &[])))
}

pub async fn delete(State(cp): Api, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    cp.delete_deployment(&caller, &name).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `?deployment=` filter.
#[derive(Debug, Deserialize)]
pub struct InstanceFilter {
    deployment: Option<String>,
}

pub async fn instances(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<InstanceFilter>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let names: BTreeMap<String, String> =
        cp.list_deployments(&caller).await?.into_iter().map(|v| (v.deployment.id, v.deployment.spec.name)).collect();
    let instances = cp.list_instances(&caller, q.deployment.as_deref()).await?;
    Ok(Json(instances.iter().map(|i| instance_json(i, names.get(&i.deployment_id).map(String::as_str))).collect()))
}

/// An instance with its container as its node last reported it.
fn instance_view_json(view: &InstanceView) -> Value {
    let mut value = instance_json(&view.instance, Some(&view.deployment));
    value["container"] = match &view.container {
        Some(c) => json!({
            "id": c.id,
            "name": c.name,
            "image": c.image,
            "status": c.status,
            "exit_code": c.exit_code,
            "started_at": c.started_at,
            "health": c.health,
            "restart_count": c.restart_count,
        }),
        None => Value::Null,
    };
    value
}

pub async fn instance(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(instance_view_json(&cp.get_instance(&caller, &id).await?)))
}

/// `PUT /api/v1/compute/instances/{id}/start`.
pub async fn start_instance(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(instance_view_json(&cp.start_instance(&caller, &id).await?)))
}

/// `?grace=SECONDS` for stop.
#[derive(Debug, Deserialize)]
pub struct StopQuery {
    grace: Option<u64>,
}

/// `PUT /api/v1/compute/instances/{id}/stop`: the deployment's restart policy applies
/// afterwards, as after any exit.
pub async fn stop_instance(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(instance_view_json(&cp.stop_instance(&caller, &id, q.grace.map(Duration::from_secs)).await?)))
}

/// `PUT /api/v1/compute/instances/{id}/restart`.
pub async fn restart_instance(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(instance_view_json(&cp.restart_instance(&caller, &id).await?)))
}

/// `DELETE /api/v1/compute/instances/{id}`: 202; the deployment replaces the instance.
pub async fn delete_instance(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let view = cp.delete_instance(&caller, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(instance_view_json(&view))).into_response())
}

/// `GET /api/v1/compute/instances/{id}/usage`: one sample taken on the instance's node.
pub async fn instance_usage(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let usage = cp.instance_usage(&caller, &id).await?;
    Ok(Json(json!({
        "instance_id": usage.instance_id,
        "node": usage.node_id,
        "runtime": usage.runtime,
        "cpu_percent": usage.stats.cpu_percent,
        "memory_bytes": usage.stats.memory_bytes,
        "memory_limit_bytes": usage.stats.memory_limit_bytes,
        "network_rx_bytes": usage.stats.network_rx_bytes,
        "network_tx_bytes": usage.stats.network_tx_bytes,
        "timestamp": chrono::Utc::now(),
    })))
}

/// `?after=SEQUENCE` to replay stored events first.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    after: Option<u64>,
}

/// Server-Sent Events: every event as `event: KIND`, `id: SEQUENCE`, JSON data. A
/// watcher that fell behind gets `event: lagged` with `{"missed": N}` (reconnect with
/// `?after=` the last id seen to replay them).
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
