//! `GET /metrics` (Prometheus text, any valid token), and the layers every REST request
//! passes: a span continuing the caller's `traceparent`, and its latency by route
//! template, method and status.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::ApiError;
use crate::auth::Caller;
use crate::service::ControlPlane;

/// The route label of a request that matched no route (the raw path is never a label).
pub const UNMATCHED: &str = "unmatched";

/// The OpenAPI description of this module's routes, merged into the served document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics))]
pub(super) struct Doc;

/// `GET /metrics`: the control plane's metrics, for any authenticated caller.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every `diplo_` series in the Prometheus (OpenMetrics) text format", body = String, content_type = "application/openmetrics-text"),
        (status = 401, description = "No valid bearer token"),
    )
)]
pub(super) async fn metrics(State(control_plane): State<Arc<ControlPlane>>, Extension(caller): Extension<Caller>) -> Response {
    match control_plane.render_metrics(&caller) {
        Ok(text) => ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

/// Copies the matched route template into the response, for [`observe`] (which runs
/// before routing and cannot see it in the request).
pub(super) async fn matched_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// Runs a request inside an `http.request` span (a child of the caller's span when a
/// valid `traceparent` header came with it) and records its latency, until the response
/// headers, by route template, method and status.
pub(super) async fn observe(State(control_plane): State<Arc<ControlPlane>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let span = tracing::info_span!(
        "http.request",
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(traceparent) = request.headers().get(diplo_api::telemetry::TRACEPARENT_HEADER).and_then(|v| v.to_str().ok()) {
        diplo_api::telemetry::continue_trace(&span, traceparent);
    }
    let started = tokio::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let route = response.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str);
    let status = response.status().as_u16();
    diplo_api::telemetry::rename(&span, format!("{method} {route}"));
    span.record("http.route", route);
    span.record("http.response.status_code", status);
    control_plane.metrics().rest_request(route, &method, status, started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    #[test]
    fn the_openapi_description_names_the_route_and_its_answers() {
        let doc = serde_json::to_value(super::Doc::openapi()).expect("serializable");
        let get = &doc["paths"]["/metrics"]["get"];
        assert!(get["responses"]["200"]["content"]["application/openmetrics-text"].is_object(), "{get}");
        assert!(get["responses"]["401"].is_object(), "{get}");
    }
}
