//! REST gateway (JSON): thin axum handlers over [`ControlPlane`], and the web dashboard
//! ([`dashboard`]). Every route but `GET /healthz`, `GET /api/openapi.json`,
//! `GET /api/docs`, the dashboard's page, assets, login and logout needs
//! `Authorization: Bearer <token>` or a dashboard session cookie (writes with the cookie
//! also need the session's `X-CSRF-Token`). Errors are problem documents (`application/problem+json`,
//! see [`error`]); lists are paged (see [`page`]).

mod admin;
mod builds;
mod cache;
mod compute;
mod container_ops;
mod containers;
pub mod dashboard;
mod deployments;
pub mod error;
pub mod fuzz;
mod metrics;
mod node_resources;
pub mod openapi;
pub mod page;
mod registries;
mod stacks;
mod status;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::auth::Caller;
use crate::error::ServiceError;
use crate::service::{COMMAND_TIMEOUT, ControlPlane};

pub use error::{ApiError, Problem};

/// How long a REST call that does not stream may take before it is answered 503: a
/// little longer than a command may take on a node, so that a node's own timeout is
/// what a caller normally sees.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(COMMAND_TIMEOUT.as_secs() + 30);

/// Builds the REST router.
pub fn router(control_plane: Arc<ControlPlane>) -> Router {
    // Calls answered once done: each within [`REQUEST_TIMEOUT`].
    let timed = Router::new()
        .route("/api/status", get(status::system_status))
        .route("/api/v1/compute/cluster/status", get(status::cluster_status))
        .route("/api/v1/nodes", get(status::list_nodes))
        .route("/api/v1/nodes/{node}", get(status::get_node).delete(admin::remove))
        .route("/api/v1/nodes/{node}/cordon", post(admin::cordon))
        .route("/api/v1/nodes/{node}/uncordon", post(admin::uncordon))
        .route("/api/v1/nodes/{node}/drain", post(admin::drain))
        .route("/api/v1/api-tokens", get(admin::list_tokens).post(admin::create_token))
        .route("/api/v1/api-tokens/{id}", axum::routing::delete(admin::revoke_token))
        .route("/ui/session", get(dashboard::session))
        .route("/api/v1/containers", get(containers::list).post(containers::create))
        .route("/api/v1/containers/{id}", axum::routing::delete(containers::remove))
        .route("/api/v1/containers/{id}/start", post(containers::start))
        .route("/api/v1/containers/{id}/stop", post(containers::stop))
        .route("/api/v1/containers/{id}/restart", post(containers::restart))
        .route("/api/v1/containers/{id}/exec", post(containers::exec))
        .route("/api/v1/runtime/info", get(containers::runtime_info))
        .route("/api/v1/registries", get(registries::list).post(registries::login))
        .route("/api/v1/registries/{registry}", axum::routing::delete(registries::logout))
        .route("/api/{runtime}/status", get(containers::runtime_status))
        .route("/api/unified/deploy", post(deployments::deploy))
        .route("/api/deploy", post(deployments::deploy))
        .route("/api/v1/deployments", get(deployments::list).post(deployments::deploy))
        .route("/api/v1/deployments/{name}", get(deployments::get).put(deployments::update).delete(deployments::delete))
        .route("/api/v1/deployments/{name}/scale", post(deployments::scale))
        .route("/api/v1/deployments/{name}/rollback", post(deployments::rollback))
        .route("/api/v1/compute/instances", get(deployments::instances).post(compute::create_instance))
        .route(
            "/api/v1/compute/instances/{id}",
            get(deployments::instance).put(compute::update_instance).delete(deployments::delete_instance),
        )
        .route("/api/v1/compute/backends/{backend}/info", get(compute::backend_info))
        .route("/api/v1/compute/instances/{id}/start", put(deployments::start_instance))
        .route("/api/v1/compute/instances/{id}/stop", put(deployments::stop_instance))
        .route("/api/v1/compute/instances/{id}/restart", put(deployments::restart_instance))
        .route("/api/v1/compute/instances/{id}/usage", get(deployments::instance_usage))
        .route("/api/v1/images/build", post(builds::start))
        .route("/api/v1/images/builds", get(builds::list))
        .route("/api/v1/images/build/{id}", get(builds::get).delete(builds::cancel))
        // Images, networks and volumes on a node (`?node=&runtime=`), and under /api/v1/docker/* with Docker.
        .route("/api/v1/images", get(node_resources::list_images))
        .route("/api/v1/images/pull", post(node_resources::pull_image))
        .route("/api/v1/images/prune", post(node_resources::prune_images))
        .route("/api/v1/images/{reference}", get(node_resources::inspect_image).delete(node_resources::remove_image))
        .route("/api/v1/networks", get(node_resources::list_networks).post(node_resources::create_network))
        .route("/api/v1/networks/{name}", get(node_resources::inspect_network).delete(node_resources::remove_network))
        .route("/api/v1/networks/{name}/connect", post(node_resources::connect_network))
        .route("/api/v1/networks/{name}/disconnect", post(node_resources::disconnect_network))
        .route("/api/v1/volumes", get(node_resources::list_volumes).post(node_resources::create_volume))
        .route("/api/v1/volumes/prune", post(node_resources::prune_volumes))
        .route("/api/v1/volumes/{name}", get(node_resources::inspect_volume).delete(node_resources::remove_volume))
        .route("/api/v1/docker/images", get(node_resources::docker_list_images))
        .route("/api/v1/docker/images/pull", post(node_resources::docker_pull_image))
        .route("/api/v1/docker/images/prune", post(node_resources::docker_prune_images))
        .route("/api/v1/docker/images/{reference}", get(node_resources::docker_inspect_image).delete(node_resources::docker_remove_image))
        .route("/api/v1/docker/networks", get(node_resources::docker_list_networks).post(node_resources::docker_create_network))
        .route("/api/v1/docker/networks/{name}", get(node_resources::docker_inspect_network).delete(node_resources::docker_remove_network))
        .route("/api/v1/docker/networks/{name}/connect", post(node_resources::docker_connect_network))
        .route("/api/v1/docker/networks/{name}/disconnect", post(node_resources::docker_disconnect_network))
        .route("/api/v1/docker/volumes", get(node_resources::docker_list_volumes).post(node_resources::docker_create_volume))
        .route("/api/v1/docker/volumes/prune", post(node_resources::docker_prune_volumes))
        .route("/api/v1/docker/volumes/{name}", get(node_resources::docker_inspect_volume).delete(node_resources::docker_remove_volume))
        .route_layer(middleware::from_fn_with_state(REQUEST_TIMEOUT, time_limit));
    // Calls that may stream for as long as the caller reads (followed logs, events).
    let streaming = Router::new()
        .route("/api/v1/containers/{id}/logs", get(containers::logs))
        .route("/api/v1/events", get(deployments::events))
        .route("/api/v1/images/build/{id}/logs", get(builds::logs));
    // Container operations (pause, stats, tar copies), also under mikrocloud's Docker
    // paths; a sample stream lasts as long as the caller reads, the others are timed.
    let ops_timed = Router::new()
        .route("/api/v1/containers/{id}/pause", post(container_ops::pause))
        .route("/api/v1/containers/{id}/unpause", post(container_ops::unpause))
        .route("/api/v1/containers/{id}/archive", get(container_ops::copy_out).put(container_ops::copy_in).layer(unlimited()))
        .route("/api/v1/docker/containers/{id}/pause", post(container_ops::pause))
        .route("/api/v1/docker/containers/{id}/unpause", post(container_ops::unpause))
        .route("/api/v1/docker/containers/{id}/archive", get(container_ops::copy_out).put(container_ops::copy_in).layer(unlimited()));
    let ops_streaming = Router::new()
        .route("/api/v1/containers/{id}/stats", get(container_ops::stats))
        .route("/api/v1/docker/containers/{id}/stats", get(container_ops::stats));
    let streaming = streaming.merge(ops_streaming);
    // Stacks take compose documents: YAML or JSON bodies, checked by the handler.
    let stacks = Router::new()
        .route("/api/v1/stacks", get(stacks::list).post(stacks::deploy))
        .route("/api/v1/stacks/{name}", get(stacks::get).delete(stacks::delete))
        .route_layer(middleware::from_fn_with_state(REQUEST_TIMEOUT, time_limit));
    let api = timed
        .merge(streaming)
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn(error::require_json))
        // Copies into containers carry tar bodies, not JSON; pause and unpause carry none.
        .merge(ops_timed.route_layer(middleware::from_fn_with_state(REQUEST_TIMEOUT, time_limit)))
        .merge(stacks)
        .route_layer(middleware::from_fn_with_state(control_plane.clone(), authenticate));
    Router::new()
        .route("/healthz", get(openapi::healthz))
        .route("/api/openapi.json", get(openapi::openapi_json))
        .route("/api/docs", get(openapi::docs))
        .route("/api/docs/redoc.standalone.js", get(openapi::redoc_js))
        .route("/", get(dashboard::index))
        .route("/ui/assets/{file}", get(dashboard::asset))
        .merge(
            Router::new()
                .route("/ui/login", post(dashboard::login))
                .route("/ui/logout", post(dashboard::logout))
                .route_layer(middleware::from_fn(error::require_json))
                .route_layer(middleware::from_fn_with_state(REQUEST_TIMEOUT, time_limit)),
        )
        .merge(api)
        .route_layer(middleware::from_fn(metrics::matched_route))
        .fallback(error::no_route)
        .layer(middleware::from_fn(error::problems))
        .layer(middleware::from_fn_with_state(control_plane.clone(), metrics::observe))
        .layer(axum::Extension(Arc::new(cache::ListCache::default())))
        .with_state(control_plane)
}

/// No body limit of axum's: the handler reads the body up to its own bound and
/// answers 413 beyond it.
fn unlimited() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::disable()
}

/// Answers 503 for a call that is not done within `limit` (its handler is dropped,
/// which releases whatever it held).
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%method, path, limit_s = limit.as_secs(), "REST call timed out");
            ApiError::from(ServiceError::Unavailable(format!("{method} {path} did not finish within {limit:?}"))).into_response()
        }
    }
}

/// Serves the REST gateway on `listener` until `shutdown` resolves: over HTTPS with
/// `tls` (see [`tls::server_config`]), else plain HTTP.
pub async fn serve(
    control_plane: Arc<ControlPlane>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, scheme, "REST listening");
    }
    match tls {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config)?;
            axum::serve(listener, router(control_plane)).with_graceful_shutdown(shutdown).await
        }
        None => axum::serve(listener, router(control_plane)).with_graceful_shutdown(shutdown).await,
    }
}

/// Resolves the bearer token, or else the dashboard session cookie (see
/// [`dashboard::session_caller`]), into a [`Caller`] stored in the request's extensions.
async fn authenticate(State(control_plane): State<Arc<ControlPlane>>, mut request: Request, next: Next) -> Response {
    let header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(bearer) = header.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))) else {
        return match dashboard::session_caller(&control_plane, &request) {
            Some(Ok(session)) => {
                request.extensions_mut().insert::<Caller>(session.caller.clone());
                request.extensions_mut().insert(session);
                next.run(request).await
            }
            Some(Err(err)) => ApiError::from(err).into_response(),
            None => ApiError::from(ServiceError::Unauthenticated(
                "missing `Authorization: Bearer <token>` header (or a dashboard session cookie)".into(),
            ))
            .into_response(),
        };
    };
    match control_plane.authenticate_bearer(bearer.trim()) {
        Ok(caller) => {
            request.extensions_mut().insert::<Caller>(caller);
            next.run(request).await
        }
        Err(err) => ApiError::from(err).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn calls_that_do_not_finish_in_time_are_answered_503() {
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        };
        // Fallback handlers, so that these test paths stay out of the route walk of the authz tests.
        let limited = |app: Router| app.layer(middleware::from_fn_with_state(Duration::from_millis(100), time_limit));
        let (slow, quick) = (limited(Router::new().fallback(slow)), limited(Router::new().fallback(|| async { "ok" })));
        let started = std::time::Instant::now();
        let response = slow.oneshot(Request::get("/slow").body(Body::empty()).expect("request")).await.expect("response");
        assert_eq!(response.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < Duration::from_secs(10));
        let body = axum::body::to_bytes(response.into_body(), 4096).await.expect("body");
        assert!(String::from_utf8_lossy(&body).contains("GET /slow did not finish within"), "{body:?}");
        let response = quick.oneshot(Request::get("/quick").body(Body::empty()).expect("request")).await.expect("response");
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        assert!(REQUEST_TIMEOUT > COMMAND_TIMEOUT);
    }
}
