//! Entry points for the fuzz targets in `fuzz/`: each REST JSON body parsed and
//! converted exactly as its handler does before calling the service, followed by the
//! service's own input checks that need no I/O. Errors become the JSON response the
//! client would get (its status is returned). None of these may panic, whatever the bytes.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::ApiError;
use super::containers::{CreateBody, ExecBody, parse_body};
use super::deployments::{DeployBody, ScaleBody};
use crate::error::ServiceError;
use crate::model::DeploymentSpec;
use crate::service::CreateContainer;

/// The status of the JSON error response the client would get.
fn rejected(err: ApiError) -> StatusCode {
    err.into_response().status()
}

/// `POST /api/v1/containers`: the body, its conversion to a request, and the name,
/// image and port checks `create_container` makes before placing it.
pub fn create_container(body: &[u8]) -> Result<CreateContainer, StatusCode> {
    let request = parse_body::<CreateBody>(&Bytes::copy_from_slice(body))
        .and_then(|body| body.into_request().map_err(ApiError::from))
        .map_err(rejected)?;
    crate::service::check_container_spec(&request.spec).map_err(|e| rejected(e.into()))?;
    Ok(request)
}

/// `POST /api/unified/deploy` (and `/api/deploy`, `POST /api/v1/deployments`): the
/// body, its conversion to a deployment spec, and `validate_deployment_spec`.
pub fn deploy(body: &[u8]) -> Result<DeploymentSpec, StatusCode> {
    let mut spec = parse_body::<DeployBody>(&Bytes::copy_from_slice(body))
        .and_then(|body| body.into_spec().map_err(ApiError::from))
        .map_err(rejected)?;
    spec.max_parallel = spec.max_parallel.max(1);
    crate::service::validate_deployment_spec(&spec).map_err(|e| rejected(e.into()))?;
    Ok(spec)
}

/// `PUT /api/v1/deployments/{name}`: as [`deploy`], for the deployment `name`.
pub fn update_deployment(name: &str, body: &[u8]) -> Result<DeploymentSpec, StatusCode> {
    let spec = deploy(body)?;
    if spec.name != name {
        let err = ServiceError::invalid("name", format!("the body names {:?} but the path {name:?}", spec.name));
        return Err(rejected(err.into()));
    }
    Ok(spec)
}

/// `POST /api/v1/deployments/{name}/scale`.
pub fn scale(body: &[u8]) -> Result<(), StatusCode> {
    parse_body::<ScaleBody>(&Bytes::copy_from_slice(body)).map(drop).map_err(rejected)
}

/// `POST /api/v1/containers/{id}/exec`.
pub fn exec(body: &[u8]) -> Result<(), StatusCode> {
    parse_body::<ExecBody>(&Bytes::copy_from_slice(body)).map(drop).map_err(rejected)
}
