//! Build routes (`/api/v1/images/build*`, `/api/v1/images/builds`): mikrocloud's build
//! body and the build as JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiError;
use super::containers::parse_body;
use super::error::Problem;
use super::page::{Order, Page, next_page_headers, paginate};
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::model::BuildRecord;
use crate::service::{ControlPlane, StartBuild};

type Api = State<Arc<ControlPlane>>;

/// `nixpacks_config`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NixpacksConfig {
    start_command: String,
    variables: BTreeMap<String, String>,
}

/// `static_config`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StaticConfig {
    build_command: String,
    output_dir: String,
}

/// `dockerfile_config`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DockerfileConfig {
    dockerfile_path: String,
    build_args: BTreeMap<String, String>,
}

/// `compose_config`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ComposeConfig {
    compose_file: String,
    service: String,
}

/// `POST /api/v1/images/build` body: mikrocloud's, plus `language` and `platform`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildBody {
    #[serde(default)]
    id: Option<String>,
    /// The repository to build (https, ssh or a local path the node can read).
    git_repo: String,
    #[serde(default)]
    git_branch: Option<String>,
    /// `nixpacks`, `static`, `dockerfile` or `compose`; detected when absent.
    #[serde(default)]
    buildpack_type: Option<String>,
    #[serde(default)]
    image_tag: Option<String>,
    #[serde(default)]
    nixpacks_config: Option<NixpacksConfig>,
    #[serde(default)]
    static_config: Option<StaticConfig>,
    #[serde(default)]
    dockerfile_config: Option<DockerfileConfig>,
    #[serde(default)]
    compose_config: Option<ComposeConfig>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    platform: Option<String>,
}

impl BuildBody {
    /// The service's request; an unknown `buildpack_type` is refused naming the field.
    pub fn into_request(self) -> Result<StartBuild, ServiceError> {
        let (nix, site, docker, compose) = (
            self.nixpacks_config.unwrap_or_default(),
            self.static_config.unwrap_or_default(),
            self.dockerfile_config.unwrap_or_default(),
            self.compose_config.unwrap_or_default(),
        );
        let buildpack = diplo_api::build::buildpack(
            self.buildpack_type.as_deref().unwrap_or_default(),
            (docker.dockerfile_path, docker.build_args),
            (site.build_command, site.output_dir),
            (nix.start_command, nix.variables),
            (compose.compose_file, compose.service),
        )
        .map_err(|e| ServiceError::invalid("buildpack_type", e))?;
        Ok(StartBuild {
            id: self.id,
            git_repo: self.git_repo,
            git_branch: self.git_branch,
            buildpack,
            image_tag: self.image_tag,
            language: self.language,
            platform: self.platform,
            prefer_node: None,
            deployment_id: None,
        })
    }
}

/// A build as REST shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildJson {
    id: String,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled`.
    #[schema(value_type = String)]
    status: &'static str,
    git_repo: String,
    git_branch: Option<String>,
    commit: String,
    language: String,
    detected_from: String,
    buildpack_type: String,
    /// `docker`, `podman` or `buildah`.
    #[schema(value_type = Option<String>)]
    builder: Option<diplo_api::build::Builder>,
    node_id: Option<String>,
    platform: Option<String>,
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    pushed: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    service_images: BTreeMap<String, String>,
    message: String,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    duration_seconds: f64,
    deployment_id: Option<String>,
}

impl From<BuildRecord> for BuildJson {
    fn from(build: BuildRecord) -> Self {
        let rfc3339 = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        BuildJson {
            duration_seconds: build.duration_seconds(Utc::now()),
            id: build.id,
            status: build.status.as_str(),
            git_repo: build.git_repo,
            git_branch: build.git_branch,
            commit: build.commit,
            language: build.language,
            detected_from: build.detected_from,
            buildpack_type: build.buildpack_type,
            builder: build.builder,
            node_id: build.node_id,
            platform: build.platform,
            image: build.image,
            digest: Some(build.digest).filter(|d| !d.is_empty()),
            pushed: build.pushed,
            service_images: build.service_images,
            message: build.message,
            created_at: rfc3339(build.created_at),
            started_at: build.started_at.map(rfc3339),
            finished_at: build.finished_at.map(rfc3339),
            deployment_id: build.deployment_id,
        }
    }
}

/// `POST /api/v1/images/build`: 202 with the build.
#[utoipa::path(post, path = "/api/v1/images/build", tag = "builds", request_body = BuildBody,
    responses((status = 202, description = "Queued", body = BuildJson)))]
pub async fn start(State(cp): Api, Extension(caller): Extension<Caller>, body: Bytes) -> Result<Response, ApiError> {
    let request = parse_body::<BuildBody>(&body)?.into_request()?;
    let build = cp.start_build(&caller, request).await?;
    Ok((StatusCode::ACCEPTED, Json(BuildJson::from(build))).into_response())
}

/// `GET /api/v1/images/build/{id}`.
#[utoipa::path(get, path = "/api/v1/images/build/{id}", tag = "builds", params(("id" = String, Path, description = "Build id")),
    responses((status = 200, description = "The build", body = BuildJson)))]
pub async fn get(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<BuildJson>, ApiError> {
    Ok(Json(cp.get_build(&caller, &id).await?.into()))
}

/// `?limit=&cursor=&node=&status=` for the build list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BuildListQuery {
    /// Items per page (1–1000, default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `X-Next-Cursor` of the previous page.
    cursor: Option<String>,
    /// Only builds on this node (id).
    node: Option<String>,
    /// Only builds in this state (`queued`, `running`, `succeeded`, `failed`, `cancelled`).
    status: Option<String>,
}

/// `GET /api/v1/images/builds`: newest first, paged (`X-Next-Cursor` when more remain).
#[utoipa::path(get, path = "/api/v1/images/builds", tag = "builds", params(BuildListQuery),
    responses((status = 200, description = "One page of builds", body = Vec<BuildJson>,
        headers(("x-next-cursor" = String, description = "The cursor of the next page, when more remain")))))]
pub async fn list(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BuildListQuery>,
) -> Result<(HeaderMap, Json<Vec<BuildJson>>), ApiError> {
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let status = q
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<diplo_api::build::BuildStatus>().map_err(|e| ServiceError::invalid("status", e)))
        .transpose()?;
    let node = q.node.filter(|n| !n.is_empty());
    let builds: Vec<BuildRecord> = cp
        .list_builds(&caller)
        .await?
        .into_iter()
        .filter(|b| status.is_none_or(|s| b.status == s) && node.as_ref().is_none_or(|n| b.node_id.as_ref() == Some(n)))
        .collect();
    let key = |b: &BuildRecord| format!("{}/{}", b.created_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true), b.id);
    let (builds, next) = paginate(builds, key, Order::Descending, &page);
    let headers = next_page_headers("/api/v1/images/builds", page.limit, next.as_deref());
    Ok((headers, Json(builds.into_iter().map(BuildJson::from).collect())))
}

/// `DELETE /api/v1/images/build/{id}`: cancels; an ended build is returned as it is.
#[utoipa::path(delete, path = "/api/v1/images/build/{id}", tag = "builds", params(("id" = String, Path, description = "Build id")),
    responses((status = 200, description = "Cancelled, or ended already", body = BuildJson)))]
pub async fn cancel(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<BuildJson>, ApiError> {
    Ok(Json(cp.cancel_build(&caller, &id).await?.into()))
}

/// `?follow=true` for build logs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Stream until the build ends.
    #[serde(default)]
    follow: bool,
}

/// `GET /api/v1/images/build/{id}/logs[?follow=true]`: text/plain, the output so far,
/// then (followed) until the build ends.
#[utoipa::path(get, path = "/api/v1/images/build/{id}/logs", tag = "builds", params(("id" = String, Path, description = "Build id"), LogsQuery),
    responses((status = 200, description = "The build output", body = String, content_type = "text/plain")))]
pub async fn logs(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let stream = cp.build_logs(&caller, &id, q.follow).await?;
    let body = Body::from_stream(futures::StreamExt::map(stream, Ok::<_, std::convert::Infallible>));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// The build routes of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(start, get, list, cancel, logs),
    components(schemas(BuildBody, NixpacksConfig, StaticConfig, DockerfileConfig, ComposeConfig, BuildJson, Problem))
)]
pub(super) struct Doc;
