//! Stack routes: `POST /api/v1/stacks?name=NAME[&repo_url=&branch=&compose_file=]`
//! (deployer; the body a compose document, YAML as `application/yaml` or `text/yaml`, or
//! the same as JSON; services with `build:` built from `repo_url`; 201 new, 200 updated;
//! 400 naming the line and the key, nothing written), `GET /api/v1/stacks` (viewer),
//! `GET /api/v1/stacks/{name}` (viewer: services with their status),
//! `DELETE /api/v1/stacks/{name}` (deployer; 204).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiError;
use super::error::{Problem, is_json_media_type};
use super::page::{Order, Page, next_page_headers, paginate};
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::service::{ControlPlane, StackView};

type Api = State<Arc<ControlPlane>>;

/// Whether `value` (a `Content-Type`) is YAML: `application/yaml`, `application/x-yaml`,
/// `text/yaml` or `text/x-yaml`, parameters allowed.
pub fn is_yaml_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(essence.as_str(), "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml")
}

/// `?name=` of a deploy.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeployQuery {
    /// The stack's name (the prefix of its deployments' names).
    name: Option<String>,
    /// The git repository the services with `build:` are built from.
    repo_url: Option<String>,
    /// Its branch or tag (default: the repository's default branch).
    branch: Option<String>,
    /// The compose file's path in the repository (default `docker-compose.yml`); build
    /// contexts are relative to its directory.
    compose_file: Option<String>,
}

/// One service of a stack.
#[derive(Debug, Serialize, ToSchema)]
pub struct StackServiceJson {
    /// Service name.
    name: String,
    /// Its deployment (`<stack>-<service>`).
    deployment: String,
    /// `waiting` (for its dependencies) or its deployment's status.
    status: String,
    /// The image.
    image: String,
    /// Replicas asked for.
    replicas: u32,
    /// Containers that run.
    running: u32,
    /// Containers that run and report healthy.
    healthy: u32,
    /// Revision of its deployment (0 while waiting).
    revision: u32,
    /// Services it waits for, with the condition (`service_started`, `service_healthy`).
    depends_on: BTreeMap<String, String>,
    /// The latest build of its image (services with `build:`; `building` or `failed`
    /// until the image is built).
    #[serde(skip_serializing_if = "Option::is_none")]
    build_id: Option<String>,
}

/// A stack with its services.
#[derive(Debug, Serialize, ToSchema)]
pub struct StackJson {
    /// Name.
    name: String,
    /// Its services, by name.
    services: Vec<StackServiceJson>,
    /// The compose document as deployed (empty for viewers: it may hold credentials).
    #[serde(skip_serializing_if = "String::is_empty")]
    source: String,
    /// First deploy.
    created_at: DateTime<Utc>,
    /// Last deploy.
    updated_at: DateTime<Utc>,
}

fn stack_json(view: StackView, with_source: bool) -> StackJson {
    let services = view
        .services
        .into_iter()
        .map(|service| {
            let spec = view.stack.spec.services.get(&service.name);
            StackServiceJson {
                status: service.status(),
                revision: service.revision(),
                image: service.image(spec),
                build_id: service.build.as_ref().map(|b| b.id.clone()),
                replicas: spec.map_or(0, |s| s.replicas),
                running: service.progress.running,
                healthy: service.progress.healthy,
                depends_on: service.depends_on.iter().map(|(k, v)| (k.clone(), v.as_str().to_owned())).collect(),
                deployment: service.deployment_name,
                name: service.name,
            }
        })
        .collect();
    StackJson {
        name: view.stack.name,
        services,
        source: if with_source { view.stack.source } else { String::new() },
        created_at: view.stack.created_at,
        updated_at: view.stack.updated_at,
    }
}

/// Deploys a compose document as a stack, or updates the stack of that name (only the
/// services whose spec changed get a new revision; services gone from the file are
/// deleted). Any refused service refuses the whole file, naming the line and the key,
/// before anything is written.
#[utoipa::path(post, path = "/api/v1/stacks", tag = "stacks", params(DeployQuery),
    request_body(content = String, description = "A compose document", content_type = "application/yaml"),
    responses((status = 201, description = "Created", body = StackJson), (status = 200, description = "Updated", body = StackJson)))]
pub async fn deploy(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<DeployQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(value) if is_yaml_media_type(value) || is_json_media_type(value) => {}
        other => {
            let detail = format!("the body must be a compose document as application/yaml, text/yaml or application/json, not {other:?}");
            return Ok(Problem::from_http(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail).into_response());
        }
    }
    let name = q.name.unwrap_or_default();
    if name.trim().is_empty() {
        return Err(ServiceError::invalid("name", "the stack's name is required: ?name=NAME").into());
    }
    if body.len() > diplo_api::compose::MAX_COMPOSE_BYTES {
        return Err(
            ServiceError::invalid("compose", format!("the file is larger than {} bytes", diplo_api::compose::MAX_COMPOSE_BYTES)).into()
        );
    }
    let source = std::str::from_utf8(&body).map_err(|_| ServiceError::invalid("compose", "the file is not UTF-8 text"))?;
    let field = |value: &Option<String>| value.clone().unwrap_or_default();
    let repository = crate::service::requested_repository(&field(&q.repo_url), &field(&q.branch), &field(&q.compose_file))?;
    let (created, view) = cp.deploy_stack(&caller, &name, source, repository).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(stack_json(view, true))).into_response())
}

/// `?limit=&cursor=` for the stack list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StackListQuery {
    /// Items per page (1–1000, default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `X-Next-Cursor` of the previous page.
    cursor: Option<String>,
}

/// Lists the stacks with their services, by name, paged.
#[utoipa::path(get, path = "/api/v1/stacks", tag = "stacks", params(StackListQuery),
    responses((status = 200, description = "One page of stacks", body = Vec<StackJson>,
        headers(("x-next-cursor" = String, description = "The cursor of the next page, when more remain")))))]
pub async fn list(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<StackListQuery>,
) -> Result<(HeaderMap, Json<Vec<StackJson>>), ApiError> {
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let stacks = cp.list_stacks(&caller).await?;
    let (stacks, next) = paginate(stacks, |s| s.stack.name.clone(), Order::Ascending, &page);
    let stacks = stacks.into_iter().map(|s| stack_json(s, false)).collect();
    Ok((next_page_headers("/api/v1/stacks", page.limit, next.as_deref()), Json(stacks)))
}

/// A stack with its services and their status (the compose source for deployers).
#[utoipa::path(get, path = "/api/v1/stacks/{name}", tag = "stacks", params(("name" = String, Path, description = "Stack name")),
    responses((status = 200, description = "The stack", body = StackJson)))]
pub async fn get(State(cp): Api, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> Result<Json<StackJson>, ApiError> {
    let view = cp.get_stack(&caller, &name).await?;
    let with_source = !view.stack.source.is_empty();
    Ok(Json(stack_json(view, with_source)))
}

/// Deletes a stack: its services' deployments are removed by the reconciler.
#[utoipa::path(delete, path = "/api/v1/stacks/{name}", tag = "stacks", params(("name" = String, Path, description = "Stack name")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete(State(cp): Api, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    cp.delete_stack(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The stack routes of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(deploy, list, get, delete), components(schemas(StackJson, StackServiceJson, Problem)))]
pub(super) struct Doc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_media_types_are_recognised() {
        for yes in ["application/yaml", "text/yaml; charset=utf-8", "application/x-yaml", "TEXT/X-YAML"] {
            assert!(is_yaml_media_type(yes), "{yes}");
        }
        for no in ["application/json", "text/plain", "yaml", ""] {
            assert!(!is_yaml_media_type(no), "{no}");
        }
    }
}
