//! Registry credential routes: `POST /api/v1/registries` (admin; 201 new, 200 replaced),
//! `GET /api/v1/registries` (admin and deployer; never a password),
//! `DELETE /api/v1/registries/{registry}` (admin; 204, 404 when none).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiError;
use super::error::Problem;
use super::page::{Order, Page, next_page_headers, paginate};
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::service::{ControlPlane, RegistryLogin, RegistryLoginRequest};

type Api = State<Arc<ControlPlane>>;

/// Parses the login body. Errors name the field at fault but never quote a value (it
/// may be the password).
fn parse_login(body: &Bytes) -> Result<RegistryLoginRequest, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<RegistryLoginRequest, _> = serde_path_to_error::deserialize(&mut deserializer);
    let request = parsed.map_err(|e| {
        let path = e.path().to_string();
        let message = if e.inner().is_syntax() || e.inner().is_eof() {
            "not valid JSON".to_owned()
        } else if path == "." {
            "expected an object with the string fields registry, username and password".to_owned()
        } else {
            format!("{path}: expected a string")
        };
        let field = match path.as_str() {
            "registry" => "registry",
            "username" => "username",
            "password" => "password",
            _ => "body",
        };
        ApiError(ServiceError::invalid(field, message))
    })?;
    deserializer.end().map_err(|_| ApiError(ServiceError::invalid("body", "trailing characters after the JSON object")))?;
    Ok(request)
}

/// `POST /api/v1/registries` body (the password is never answered nor listed).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct LoginBody {
    /// `host[:port]`.
    registry: String,
    username: String,
    password: String,
}

/// A registry login as answered after it is stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginJson {
    registry: String,
    username: String,
}

/// Stores the credentials for a registry (admin): 201 when new, 200 when replaced.
#[utoipa::path(post, path = "/api/v1/registries", tag = "registries", request_body = LoginBody,
    responses((status = 201, description = "Stored", body = LoginJson), (status = 200, description = "Replaced", body = LoginJson)))]
pub async fn login(State(cp): Api, Extension(caller): Extension<Caller>, body: Bytes) -> Result<Response, ApiError> {
    let request = parse_login(&body)?;
    let registry = request.registry.trim().to_owned();
    let username = request.username.clone();
    let created = cp.registry_login(&caller, request).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(LoginJson { registry, username })).into_response())
}

/// `?limit=&cursor=` for the registry list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RegistryListQuery {
    /// Items per page (1–1000, default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `X-Next-Cursor` of the previous page.
    cursor: Option<String>,
}

/// Lists the registries with stored credentials (never a password), sorted, paged.
#[utoipa::path(get, path = "/api/v1/registries", tag = "registries", params(RegistryListQuery),
    responses((status = 200, description = "One page of registry logins", body = Vec<RegistryLogin>,
        headers(("x-next-cursor" = String, description = "The cursor of the next page, when more remain")))))]
pub async fn list(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<RegistryListQuery>,
) -> Result<(HeaderMap, Json<Vec<RegistryLogin>>), ApiError> {
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let logins = cp.list_registry_logins(&caller).await?;
    let (logins, next) = paginate(logins, |l| l.registry.clone(), Order::Ascending, &page);
    Ok((next_page_headers("/api/v1/registries", page.limit, next.as_deref()), Json(logins)))
}

/// Forgets a registry's credentials (admin).
#[utoipa::path(delete, path = "/api/v1/registries/{registry}", tag = "registries", params(("registry" = String, Path, description = "host[:port]")),
    responses((status = 204, description = "Forgotten")))]
pub async fn logout(State(cp): Api, Extension(caller): Extension<Caller>, Path(registry): Path<String>) -> Result<StatusCode, ApiError> {
    cp.registry_logout(&caller, &registry).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The registry routes of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(login, list, logout), components(schemas(LoginBody, LoginJson, RegistryLogin, Problem)))]
pub(super) struct Doc;
