//! Container operations beyond the lifecycle: `POST /api/v1/containers/{id}/pause` and
//! `/unpause`, `GET /api/v1/containers/{id}/stats` (one sample, or newline-delimited
//! JSON samples once a second with `?stream=true`), and tar copies through
//! `GET|PUT /api/v1/containers/{id}/archive?path=`. The same handlers answer under
//! `/api/v1/docker/containers/...`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use diplo_api::archive::MAX_ARCHIVE_BYTES;
use diplo_api::runtime::Runtime;
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::containers::ContainerJson;
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::service::{ContainerSample, ControlPlane};

type Api = State<Arc<ControlPlane>>;

/// A resource usage sample of a container (`GET /api/v1/containers/{id}/stats`; one
/// per line with `?stream=true`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatsSample {
    /// The container's full id.
    pub container_id: String,
    /// The node running it.
    pub node_id: String,
    /// The runtime running it.
    #[schema(value_type = String, example = "docker")]
    pub runtime: Runtime,
    /// When the sample was taken (RFC 3339).
    pub read_at: chrono::DateTime<chrono::Utc>,
    /// CPU use in percent of one core over the sample.
    pub cpu_percent: f64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (0: none).
    pub memory_limit_bytes: u64,
    /// Bytes received on all interfaces.
    pub network_rx_bytes: u64,
    /// Bytes sent on all interfaces.
    pub network_tx_bytes: u64,
}

impl From<ContainerSample> for StatsSample {
    fn from(sample: ContainerSample) -> Self {
        StatsSample {
            container_id: sample.container_id,
            node_id: sample.node_id,
            runtime: sample.runtime,
            read_at: sample.read_at,
            cpu_percent: sample.stats.cpu_percent,
            memory_bytes: sample.stats.memory_bytes,
            memory_limit_bytes: sample.stats.memory_limit_bytes,
            network_rx_bytes: sample.stats.network_rx_bytes,
            network_tx_bytes: sample.stats.network_tx_bytes,
        }
    }
}

/// `?stream=true`: samples once a second until the client goes away or the container
/// is gone.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Stream samples as newline-delimited JSON, one a second.
    #[serde(default)]
    stream: bool,
}

/// `?path=`: a path inside the container (absolute).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ArchiveQuery {
    /// Absolute path inside the container: what to read (GET), the directory to extract
    /// into (PUT).
    path: Option<String>,
}

/// What `PUT /api/v1/containers/{id}/archive` extracted.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CopiedIn {
    /// The directory inside the container.
    pub path: String,
    /// Archive members extracted.
    pub members: usize,
}

/// Freezes every process of a container; it then reads `paused` (deployer role). The
/// reconciler leaves a paused container alone.
#[utoipa::path(
    post,
    path = "/api/v1/containers/{id}/pause",
    params(("id" = String, Path, description = "Container id, unique id prefix or name")),
    responses(
        (status = 200, description = "The container, now paused (the shape of POST /api/v1/containers/{id}/start)"),
        (status = 403, description = "The caller's role is below deployer"),
        (status = 404, description = "No such container"),
        (status = 409, description = "The container is not running"),
        (status = 501, description = "The container's runtime cannot pause"),
    )
)]
pub async fn pause(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<ContainerJson>, ApiError> {
    Ok(Json(cp.pause_container(&caller, &id).await?.into()))
}

/// Thaws a paused container (deployer role).
#[utoipa::path(
    post,
    path = "/api/v1/containers/{id}/unpause",
    params(("id" = String, Path, description = "Container id, unique id prefix or name")),
    responses(
        (status = 200, description = "The container, running again (the shape of POST /api/v1/containers/{id}/start)"),
        (status = 403, description = "The caller's role is below deployer"),
        (status = 404, description = "No such container"),
        (status = 501, description = "The container's runtime cannot unpause"),
    )
)]
pub async fn unpause(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ContainerJson>, ApiError> {
    Ok(Json(cp.unpause_container(&caller, &id).await?.into()))
}

/// A resource usage sample of a container (viewer role); with `?stream=true`, one
/// sample per line (newline-delimited JSON) every second: the control plane asks the
/// node once a second, until the client goes away or the container is gone.
#[utoipa::path(
    get,
    path = "/api/v1/containers/{id}/stats",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), StatsQuery),
    responses(
        (status = 200, body = StatsSample, description = "One sample; with ?stream=true, application/x-ndjson, one sample a line"),
        (status = 404, description = "No such container"),
    )
)]
pub async fn stats(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<StatsQuery>,
) -> Result<Response, ApiError> {
    if !q.stream {
        return Ok(Json(StatsSample::from(cp.container_stats(&caller, &id).await?)).into_response());
    }
    let rx = cp.follow_container_stats(&caller, &id).await?;
    let lines = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |item| {
        let line = match item {
            Ok(sample) => serde_json::to_vec(&StatsSample::from(sample)),
            // The stream is already answered 200: the last line says why it ends.
            Err(err) => serde_json::to_vec(&StreamError { error: err.to_string() }),
        };
        let mut line = line.unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

/// The last line of a sample stream that ends on an error.
#[derive(Debug, Serialize)]
struct StreamError {
    error: String,
}

/// A tar archive of `path` inside a running container, at most 4 MiB (deployer role,
/// as exec). Its one top-level member is named after the path's last component.
#[utoipa::path(
    get,
    path = "/api/v1/containers/{id}/archive",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), ArchiveQuery),
    responses(
        (status = 200, body = Vec<u8>, content_type = "application/x-tar", description = "The tar archive"),
        (status = 400, description = "The path is missing, not absolute, or archives to more than 4 MiB"),
        (status = 403, description = "The caller's role is below deployer"),
        (status = 404, description = "No such container or path"),
        (status = 409, description = "The container is not running (containerd, LXC)"),
    )
)]
pub async fn copy_out(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<ArchiveQuery>,
) -> Result<Response, ApiError> {
    let path = q.path.unwrap_or_default();
    let archive = cp.copy_from_container(&caller, &id, &path).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], archive).into_response())
}

/// Extracts a tar archive (the body, at most 4 MiB; members relative, without `..`)
/// into directory `path` of a running container (deployer role). Symbolic links in
/// the archive resolve inside the container, never on the host.
#[utoipa::path(
    put,
    path = "/api/v1/containers/{id}/archive",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), ArchiveQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "A tar archive"),
    responses(
        (status = 200, body = CopiedIn),
        (status = 400, description = "The path or the archive is invalid (not a tar, absolute or `..` members)"),
        (status = 403, description = "The caller's role is below deployer"),
        (status = 404, description = "No such container or directory"),
        (status = 413, description = "The archive is larger than 4 MiB"),
    )
)]
pub async fn copy_in(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<ArchiveQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let path = q.path.unwrap_or_default();
    let archive = match axum::body::to_bytes(body, MAX_ARCHIVE_BYTES).await {
        Ok(archive) => archive,
        Err(_) => return Ok(too_large()),
    };
    let members = cp.copy_to_container(&caller, &id, &path, archive.to_vec()).await?;
    Ok(Json(CopiedIn { path, members }).into_response())
}

/// 413 for an archive above [`MAX_ARCHIVE_BYTES`], in the error shape of every other
/// refusal (field `archive`).
fn too_large() -> Response {
    let message =
        format!("the archive is larger than {MAX_ARCHIVE_BYTES} bytes ({} MiB), the most a copy carries", MAX_ARCHIVE_BYTES >> 20);
    let mut response = ApiError::from(ServiceError::invalid("archive", message)).into_response();
    *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    response
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(pause, unpause, stats, copy_out, copy_in), components(schemas(StatsSample, CopiedIn)))]
pub(super) struct Doc;

#[cfg(test)]
mod tests {
    use utoipa::OpenApi as _;

    use super::*;

    #[test]
    fn the_document_lists_every_route_with_its_method() {
        let doc = serde_json::to_value(Doc::openapi()).expect("openapi json");
        for (path, method) in [
            ("/api/v1/containers/{id}/pause", "post"),
            ("/api/v1/containers/{id}/unpause", "post"),
            ("/api/v1/containers/{id}/stats", "get"),
            ("/api/v1/containers/{id}/archive", "get"),
            ("/api/v1/containers/{id}/archive", "put"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{method} {path} missing: {doc}");
        }
        let tar = &doc["paths"]["/api/v1/containers/{id}/archive"]["put"]["requestBody"]["content"]["application/x-tar"];
        assert!(tar.is_object(), "{doc}");
        assert!(doc["components"]["schemas"]["StatsSample"]["properties"]["cpu_percent"].is_object(), "{doc}");
    }

    #[test]
    fn samples_serialise_flat_with_the_runtime_by_name() {
        let sample = ContainerSample {
            container_id: "c1".into(),
            node_id: "n1".into(),
            runtime: Runtime::Containerd,
            read_at: chrono::Utc::now(),
            stats: diplo_api::container::ContainerStats { memory_bytes: 42, ..Default::default() },
        };
        let json = serde_json::to_value(StatsSample::from(sample)).expect("json");
        assert_eq!((json["runtime"].as_str(), json["memory_bytes"].as_u64()), (Some("containerd"), Some(42)), "{json}");
    }
}
