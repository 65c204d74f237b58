//! The tower layer in front of every gRPC service: each request runs in a
//! `grpc.request` span (a child of the caller's span when a valid `traceparent` came in
//! its metadata) and its latency is recorded by service, method and status code.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tracing::Instrument;

use crate::metrics::grpc_method;
use crate::service::ControlPlane;

/// Wraps services in [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer {
    control_plane: Arc<ControlPlane>,
}

impl ObserveLayer {
    /// Records into `control_plane`'s metrics.
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        ObserveLayer { control_plane }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, control_plane: self.control_plane.clone() }
    }
}

/// A gRPC service whose requests are traced and timed. The latency runs until the
/// response headers (for a unary call: its whole handling); the code is the
/// `grpc-status` of a response that carries it in its headers (every error a handler
/// returns does), else `OK`.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    control_plane: Arc<ControlPlane>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service that was polled ready handles this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let control_plane = self.control_plane.clone();
        let path = request.uri().path().to_owned();
        let (service, method) = grpc_method(&path);
        let span = tracing::info_span!(
            "grpc.request",
            otel.name = %format!("{service}/{method}"),
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        if let Some(traceparent) = request.headers().get(diplo_api::telemetry::TRACEPARENT_HEADER).and_then(|v| v.to_str().ok()) {
            diplo_api::telemetry::continue_trace(&span, traceparent);
        }
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let result = inner.call(request).instrument(span.clone()).await;
            let code = match &result {
                Ok(response) => response_code(response.headers()),
                Err(_) => tonic::Code::Internal,
            };
            span.record("rpc.grpc.status_code", code as i32);
            control_plane.metrics().grpc_request(&path, code, started.elapsed());
            result
        })
    }
}

/// The `grpc-status` in response headers, `OK` when absent.
fn response_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_comes_from_the_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(response_code(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(response_code(&headers), tonic::Code::NotFound);
        headers.insert("grpc-status", http::HeaderValue::from_static("junk"));
        assert_eq!(response_code(&headers), tonic::Code::Ok);
        assert_eq!(crate::metrics::code_name(tonic::Code::NotFound), "NOT_FOUND");
    }
}
