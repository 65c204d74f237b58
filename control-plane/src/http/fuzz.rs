//! Entry points for the fuzz targets in `fuzz/`: each REST JSON body parsed and
//! converted exactly as its handler does before calling the service, followed by the
//! service's own input checks that need no I/O. Errors become the JSON response the
//! client would get (its status is returned). None of these may panic, whatever the bytes.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::ApiError;
use super::containers::{ExecBody, create_request, parse_body};
use super::deployments::{ScaleBody, deploy_spec, update_spec};
use crate::auth::Caller;
use crate::model::{DeploymentSpec, Role};
use crate::service::CreateContainer;

/// The status of the JSON error response the client would get.
fn rejected(err: ApiError) -> StatusCode {
    err.into_response().status()
}

/// `POST /api/v1/containers`: the body and its conversion to a request as the handler
/// reads them, then the checks `create_container` makes before placing it
/// ([`check_create_container`](crate::service::check_create_container)).
pub fn create_container(body: &[u8]) -> Result<CreateContainer, StatusCode> {
    let request = create_request(&Bytes::copy_from_slice(body)).map_err(rejected)?;
    crate::service::check_create_container(&admin(), &request.spec).map_err(|e| rejected(e.into()))?;
    Ok(request)
}

/// An admin: the caller every check passes for (host bind mounts included).
fn admin() -> Caller {
    Caller::Operator { name: "fuzz".into(), role: Role::Admin }
}

/// `POST /api/unified/deploy` (and `/api/deploy`, `POST /api/v1/deployments`): the
/// body, its conversion to a deployment spec, and the deploy's own checks before any I/O
/// ([`check_deploy_spec`](crate::service::check_deploy_spec): from an image or from a
/// repository).
pub fn deploy(body: &[u8]) -> Result<DeploymentSpec, StatusCode> {
    let spec = deploy_spec(&Bytes::copy_from_slice(body)).map_err(rejected)?;
    crate::service::check_deploy_spec(&admin(), spec).map_err(|e| rejected(e.into()))
}

/// `PUT /api/v1/deployments/{name}`: the body as the handler reads it for the deployment
/// `name`, then the update's own checks before any I/O
/// ([`check_update_spec`](crate::service::check_update_spec)).
pub fn update_deployment(name: &str, body: &[u8]) -> Result<DeploymentSpec, StatusCode> {
    let spec = update_spec(name, &Bytes::copy_from_slice(body)).map_err(rejected)?;
    crate::service::check_update_spec(&admin(), spec).map_err(|e| rejected(e.into()))
}

/// `POST /api/v1/deployments/{name}/scale`.
pub fn scale(body: &[u8]) -> Result<(), StatusCode> {
    parse_body::<ScaleBody>(&Bytes::copy_from_slice(body)).map(drop).map_err(rejected)
}

/// `POST /api/v1/containers/{id}/exec`.
pub fn exec(body: &[u8]) -> Result<(), StatusCode> {
    parse_body::<ExecBody>(&Bytes::copy_from_slice(body)).map(drop).map_err(rejected)
}
