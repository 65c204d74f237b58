//! Build routes (`/api/v1/images/build*`, `/api/v1/images/builds`): mikrocloud's build
//! body and the build as JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::containers::parse_body;
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::model::BuildRecord;
use crate::service::{ControlPlane, StartBuild};

type Api = State<Arc<ControlPlane>>;

/// `nixpacks_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NixpacksConfig {
    start_command: String,
    variables: BTreeMap<String, String>,
}

/// `static_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticConfig {
    build_command: String,
    output_dir: String,
}

/// `dockerfile_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerfileConfig {
    dockerfile_path: String,
    build_args: BTreeMap<String, String>,
}

/// `compose_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComposeConfig {
    compose_file: String,
    service: String,
}

/// `POST /api/v1/images/build` body: mikrocloud's, plus `language` and `platform`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildBody {
    #[serde(default)]
    id: Option<String>,
    git_repo: String,
    #[serde(default)]
    git_branch: Option<String>,
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
#[derive(Debug, Serialize)]
pub struct BuildJson {
    id: String,
    status: &'static str,
    git_repo: String,
    git_branch: Option<String>,
    commit: String,
    language: String,
    detected_from: String,
    buildpack_type: String,
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
pub async fn start(State(cp): Api, Extension(caller): Extension<Caller>, body: Bytes) -> Result<Response, ApiError> {
    let request = parse_body::<BuildBody>(&body)?.into_request()?;
    let build = cp.start_build(&caller, request).await?;
    Ok((StatusCode::ACCEPTED, Json(BuildJson::from(build))).into_response())
}

/// `GET /api/v1/images/build/{id}`.
pub async fn get(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<BuildJson>, ApiError> {
    Ok(Json(cp.get_build(&caller, &id).await?.into()))
}

/// `GET /api/v1/images/builds`: newest first.
pub async fn list(State(cp): Api, Extension(caller): Extension<Caller>) -> Result<Json<Vec<BuildJson>>, ApiError> {
    Ok(Json(cp.list_builds(&caller).await?.into_iter().map(BuildJson::from).collect()))
}

/// `DELETE /api/v1/images/build/{id}`: cancels; an ended build is returned as it is.
pub async fn cancel(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<BuildJson>, ApiError> {
    Ok(Json(cp.cancel_build(&caller, &id).await?.into()))
}

/// `?follow=true` for build logs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// `GET /api/v1/images/build/{id}/logs[?follow=true]`: text/plain, the output so far,
/// then (followed) until the build ends.
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
