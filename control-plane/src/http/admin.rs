//! Administration routes (admin only, as over gRPC): cordon, uncordon, drain and remove
//! a node; list, create and revoke API tokens (a token's secret is shown once, at
//! creation; lists never show a secret or its hash).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiError;
use super::error::Problem;
use super::status::NodeView;
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::model::ApiTokenRecord;
use crate::service::{ControlPlane, NewApiToken};

type Api = State<Arc<ControlPlane>>;

/// Cordons a node: nothing new is placed on it (admin).
#[utoipa::path(post, path = "/api/v1/nodes/{node}/cordon", tag = "nodes", params(("node" = String, Path, description = "Node name or id")),
    responses((status = 200, description = "The node, cordoned", body = NodeView)))]
pub async fn cordon(State(cp): Api, Extension(caller): Extension<Caller>, Path(node): Path<String>) -> Result<Json<NodeView>, ApiError> {
    Ok(Json(NodeView::from(&cp.set_cordoned(&caller, &node, true).await?)))
}

/// Uncordons a node (admin).
#[utoipa::path(post, path = "/api/v1/nodes/{node}/uncordon", tag = "nodes", params(("node" = String, Path, description = "Node name or id")),
    responses((status = 200, description = "The node, uncordoned", body = NodeView)))]
pub async fn uncordon(State(cp): Api, Extension(caller): Extension<Caller>, Path(node): Path<String>) -> Result<Json<NodeView>, ApiError> {
    Ok(Json(NodeView::from(&cp.set_cordoned(&caller, &node, false).await?)))
}

/// Drains a node: cordons it and moves its instances elsewhere (admin).
#[utoipa::path(post, path = "/api/v1/nodes/{node}/drain", tag = "nodes", params(("node" = String, Path, description = "Node name or id")),
    responses((status = 200, description = "The node, cordoned; its instances move", body = NodeView)))]
pub async fn drain(State(cp): Api, Extension(caller): Extension<Caller>, Path(node): Path<String>) -> Result<Json<NodeView>, ApiError> {
    Ok(Json(NodeView::from(&cp.drain_node(&caller, &node).await?)))
}

/// Removes a node: its session closes and its certificate is refused from now on (admin).
#[utoipa::path(delete, path = "/api/v1/nodes/{node}", tag = "nodes", params(("node" = String, Path, description = "Node name or id")),
    responses((status = 204, description = "Removed")))]
pub async fn remove(State(cp): Api, Extension(caller): Extension<Caller>, Path(node): Path<String>) -> Result<StatusCode, ApiError> {
    cp.remove_node(&caller, &node).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An API token as listed (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiTokenView {
    id: String,
    name: String,
    /// `admin`, `deployer` or `viewer`.
    role: String,
    created_at: DateTime<Utc>,
    /// Absent: it never expires.
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
}

impl From<&ApiTokenRecord> for ApiTokenView {
    fn from(record: &ApiTokenRecord) -> Self {
        ApiTokenView {
            id: record.id.clone(),
            name: record.name.clone(),
            role: record.role.to_string(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked: record.revoked,
        }
    }
}

/// `POST /api/v1/api-tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiTokenBody {
    /// Who or what it is for (empty: `token-<id>`).
    #[serde(default)]
    name: String,
    /// `admin`, `deployer` or `viewer`.
    role: String,
    /// Lifetime, e.g. `30d`, `12h` (absent or empty: it never expires).
    #[serde(default)]
    ttl: Option<String>,
}

/// A new API token: `token` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiTokenView {
    /// `dpl_<id>.<secret>`, for `Authorization: Bearer` or the dashboard's login.
    token: String,
    #[serde(flatten)]
    record: ApiTokenView,
}

/// Lists the API tokens, newest first, revoked ones included (admin; never a secret).
#[utoipa::path(get, path = "/api/v1/api-tokens", tag = "tokens", responses((status = 200, description = "Every API token", body = Vec<ApiTokenView>)))]
pub async fn list_tokens(State(cp): Api, Extension(caller): Extension<Caller>) -> Result<Json<Vec<ApiTokenView>>, ApiError> {
    Ok(Json(cp.list_api_tokens(&caller).await?.iter().map(ApiTokenView::from).collect()))
}

/// Creates an API token (admin); the answer is the only time its secret is shown.
#[utoipa::path(post, path = "/api/v1/api-tokens", tag = "tokens", request_body = NewApiTokenBody,
    responses((status = 201, description = "Created", body = CreatedApiTokenView)))]
pub async fn create_token(State(cp): Api, Extension(caller): Extension<Caller>, body: Bytes) -> Result<Response, ApiError> {
    let body: NewApiTokenBody = serde_json::from_slice(&body).map_err(|e| ServiceError::invalid("body", e.to_string()))?;
    let ttl = match body.ttl.as_deref().map(str::trim).filter(|ttl| !ttl.is_empty()) {
        None => None,
        Some(ttl) => Some(humantime::parse_duration(ttl).map_err(|e| ServiceError::invalid("ttl", format!("{ttl:?}: {e}")))?),
    }
    .filter(|ttl: &Duration| !ttl.is_zero());
    let created = cp.create_api_token(&caller, NewApiToken { name: body.name, role: body.role, ttl }).await?;
    let view = CreatedApiTokenView { token: created.token, record: ApiTokenView::from(&created.record) };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Revokes an API token (admin): it is refused from the next request on, and the
/// dashboard sessions opened with it end.
#[utoipa::path(delete, path = "/api/v1/api-tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "The token's id")),
    responses((status = 204, description = "Revoked")))]
pub async fn revoke_token(State(cp): Api, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    cp.revoke_api_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The administration routes of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(cordon, uncordon, drain, remove, list_tokens, create_token, revoke_token),
    components(schemas(NodeView, ApiTokenView, NewApiTokenBody, CreatedApiTokenView, Problem))
)]
pub(super) struct Doc;
