//! Registry credential routes: `POST /api/v1/registries` (admin; 201 new, 200 replaced),
//! `GET /api/v1/registries` (admin and deployer; never a password),
//! `DELETE /api/v1/registries/{registry}` (admin; 204, 404 when none).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::ApiError;
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

pub async fn login(State(cp): Api, Extension(caller): Extension<Caller>, body: Bytes) -> Result<Response, ApiError> {
    let request = parse_login(&body)?;
    let registry = request.registry.trim().to_owned();
    let username = request.username.clone();
    let created = cp.registry_login(&caller, request).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(serde_json::json!({ "registry": registry, "username": username }))).into_response())
}

pub async fn list(State(cp): Api, Extension(caller): Extension<Caller>) -> Result<Json<Vec<RegistryLogin>>, ApiError> {
    Ok(Json(cp.list_registry_logins(&caller).await?))
}

pub async fn logout(State(cp): Api, Extension(caller): Extension<Caller>, Path(registry): Path<String>) -> Result<StatusCode, ApiError> {
    cp.registry_logout(&caller, &registry).await?;
    Ok(StatusCode::NO_CONTENT)
}
