//! Errors as RFC 9457 problem documents (`application/problem+json`): a stable `type`
//! URI per kind of error, a `title`, the HTTP `status`, a `detail` naming what is wrong,
//! the request `field` at fault when there is one, and the gRPC status `code` of the same
//! error (one classification for both adapters: [`ServiceError::grpc_code`]).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;

/// Seconds a client is told to wait (`Retry-After`) before retrying a request answered
/// 503: the database or node it needs is away, and comes back on its own.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where the `type` URIs of problems live; a kind is appended (`.../not-found`).
pub const PROBLEM_TYPE_BASE: &str = "https://diplo.dev/problems/";

/// An error as REST answers it (RFC 9457).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// `https://diplo.dev/problems/<kind>`: stable, one per kind of error.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of error (the same for every error of the kind).
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this request.
    pub detail: String,
    /// The request field at fault (invalid arguments only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The gRPC status name of the same error, e.g. `INVALID_ARGUMENT`.
    pub code: String,
}

/// The gRPC status name (`INVALID_ARGUMENT`) of `code`, as the gRPC specification spells it.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The HTTP status, problem kind and title of a service error.
pub fn classify(err: &ServiceError) -> (StatusCode, &'static str, &'static str) {
    match err {
        ServiceError::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "invalid-argument", "Invalid argument"),
        ServiceError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid-request", "Invalid request"),
        ServiceError::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "unsupported", "Not supported"),
        ServiceError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Temporarily unavailable"),
        ServiceError::ResourceExhausted(_) => (StatusCode::TOO_MANY_REQUESTS, "resource-exhausted", "Too many requests"),
        ServiceError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated", "Not authenticated"),
        ServiceError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission-denied", "Permission denied"),
        ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
        ServiceError::AlreadyExists(_) => (StatusCode::CONFLICT, "already-exists", "Already exists"),
        ServiceError::FailedPrecondition(_) => (StatusCode::CONFLICT, "failed-precondition", "Failed precondition"),
        ServiceError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
    }
}

impl Problem {
    /// The problem document of a service error.
    pub fn from_service(err: &ServiceError) -> Self {
        let (status, kind, title) = classify(err);
        let field = match err {
            ServiceError::InvalidArgument { field, .. } => Some((*field).to_owned()),
            _ => None,
        };
        Problem {
            kind: format!("{PROBLEM_TYPE_BASE}{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: err.to_string(),
            field,
            code: grpc_code_name(err.grpc_code()).to_owned(),
        }
    }

    /// A problem the HTTP layer finds before any service call (no such route, wrong
    /// method, a body that is not JSON, ...), classified by its status.
    pub fn from_http(status: StatusCode, detail: impl Into<String>) -> Self {
        let (kind, title, code) = match status {
            StatusCode::NOT_FOUND => ("not-found", "Not found", tonic::Code::NotFound),
            StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed", tonic::Code::Unimplemented),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", "Unsupported media type", tonic::Code::InvalidArgument),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "Payload too large", tonic::Code::ResourceExhausted),
            StatusCode::UNAUTHORIZED => ("unauthenticated", "Not authenticated", tonic::Code::Unauthenticated),
            StatusCode::FORBIDDEN => ("permission-denied", "Permission denied", tonic::Code::PermissionDenied),
            StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "Temporarily unavailable", tonic::Code::Unavailable),
            s if s.is_server_error() => ("internal", "Internal error", tonic::Code::Internal),
            _ => ("invalid-request", "Invalid request", tonic::Code::InvalidArgument),
        };
        Problem {
            kind: format!("{PROBLEM_TYPE_BASE}{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            code: grpc_code_name(code).to_owned(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// A service error on its way out as a problem document.
#[derive(Debug)]
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        ApiError(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Problem::from_service(&self.0).into_response()
    }
}

/// Answers an unknown route: 404 problem.
pub async fn no_route(method: Method, uri: axum::http::Uri) -> Problem {
    Problem::from_http(StatusCode::NOT_FOUND, format!("no route for {method} {}", uri.path()))
}

/// The most of an error body the HTTP layer made itself that is quoted as a detail.
const MAX_DETAIL: usize = 4096;

/// Turns every error answer that is not a problem document yet (those the HTTP layer
/// makes itself: a wrong method, a query string that does not parse, a body too large)
/// into one, keeping its status and headers (`Allow` on 405); success answers pass.
pub async fn problems(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_DETAIL).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let detail = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => format!("{method} is not allowed on {path} (the Allow header lists the methods that are)"),
        (_, true) => format!("{method} {path}: {}", status.canonical_reason().unwrap_or("error")),
        (_, false) => text,
    };
    let problem = Problem::from_http(status, detail);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        parts.headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    Response::from_parts(parts, Body::from(serde_json::to_vec(&problem).unwrap_or_default()))
}

/// Whether `value` (a `Content-Type`) is JSON: `application/json` or `application/*+json`,
/// parameters allowed.
pub fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Refuses a request body that is not declared JSON: 415 when a POST, PUT or PATCH
/// carries a body with a `Content-Type` other than JSON, or none.
pub async fn require_json(request: Request, next: Next) -> Response {
    let writes = matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH);
    let headers = request.headers();
    let has_body = headers.get(header::TRANSFER_ENCODING).is_some()
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    if writes && has_body {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        match content_type {
            Some(value) if is_json_media_type(value) => {}
            Some(value) => {
                let detail = format!("the body must be application/json, not {value:?}");
                return Problem::from_http(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail).into_response();
            }
            None => {
                let detail = "the body must be application/json: the Content-Type header is missing";
                return Problem::from_http(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail).into_response();
            }
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(err: ServiceError) -> Response {
        ApiError(err).into_response()
    }

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[test]
    fn unavailable_answers_503_with_retry_after_and_other_errors_without() {
        let response = answer(ServiceError::Unavailable("database unavailable: gone".into()));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some(RETRY_AFTER_SECS.to_string().as_str()));
        for (err, status) in [
            (ServiceError::Internal("boom".into()), StatusCode::INTERNAL_SERVER_ERROR),
            (ServiceError::NotFound("x".into()), StatusCode::NOT_FOUND),
            (ServiceError::invalid("replicas", "negative"), StatusCode::BAD_REQUEST),
            (ServiceError::ResourceExhausted("slow down".into()), StatusCode::TOO_MANY_REQUESTS),
        ] {
            let response = answer(err);
            assert_eq!(response.status(), status);
            assert!(response.headers().get(header::RETRY_AFTER).is_none(), "{status}");
        }
    }

    #[test]
    fn an_unreachable_database_is_503_and_a_broken_statement_500() {
        use crate::store::StoreError;
        let away = StoreError::Database(sqlx::Error::PoolTimedOut);
        assert_eq!(answer(away.into()).status(), StatusCode::SERVICE_UNAVAILABLE);
        let wrong = StoreError::Database(sqlx::Error::RowNotFound);
        assert_eq!(answer(wrong.into()).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// Every kind of service error: its status, stable type, gRPC code (the same as the
    /// gRPC adapter answers), and the field only for invalid arguments.
    #[tokio::test]
    async fn every_service_error_is_a_problem_document_of_its_own_kind() {
        let cases = [
            (ServiceError::invalid("replicas", "negative"), 400, "invalid-argument", "INVALID_ARGUMENT", Some("replicas")),
            (ServiceError::InvalidRequest("bad name".into()), 400, "invalid-request", "INVALID_ARGUMENT", None),
            (ServiceError::Unauthenticated("no token".into()), 401, "unauthenticated", "UNAUTHENTICATED", None),
            (ServiceError::PermissionDenied("viewer".into()), 403, "permission-denied", "PERMISSION_DENIED", None),
            (ServiceError::NotFound("no x".into()), 404, "not-found", "NOT_FOUND", None),
            (ServiceError::AlreadyExists("x exists".into()), 409, "already-exists", "ALREADY_EXISTS", None),
            (ServiceError::FailedPrecondition("busy".into()), 409, "failed-precondition", "FAILED_PRECONDITION", None),
            (ServiceError::ResourceExhausted("slow down".into()), 429, "resource-exhausted", "RESOURCE_EXHAUSTED", None),
            (ServiceError::Internal("boom".into()), 500, "internal", "INTERNAL", None),
            (ServiceError::Unsupported("lxc cannot".into()), 501, "unsupported", "UNIMPLEMENTED", None),
            (ServiceError::Unavailable("node away".into()), 503, "unavailable", "UNAVAILABLE", None),
        ];
        let mut kinds = std::collections::BTreeSet::new();
        for (err, status, kind, code, field) in cases {
            let detail = err.to_string();
            assert_eq!(grpc_code_name(err.grpc_code()), code, "{detail}");
            let response = answer(err);
            assert_eq!(response.status().as_u16(), status, "{detail}");
            assert_eq!(response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()), Some(PROBLEM_JSON), "{detail}");
            let body = body_of(response).await;
            assert_eq!(body["type"], format!("https://diplo.dev/problems/{kind}"), "{body}");
            assert_eq!(body["status"], status, "{body}");
            assert_eq!(body["code"], code, "{body}");
            assert_eq!(body["detail"], detail, "{body}");
            assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
            assert_eq!(body.get("field").and_then(|f| f.as_str()), field, "{body}");
            let mut keys: Vec<&str> = body.as_object().expect("object").keys().map(String::as_str).collect();
            keys.sort_unstable();
            let expected: &[&str] = if field.is_some() {
                &["code", "detail", "field", "status", "title", "type"]
            } else {
                &["code", "detail", "status", "title", "type"]
            };
            assert_eq!(keys, expected, "{body}");
            assert!(kinds.insert(kind), "{kind} twice");
        }
    }

    /// The gRPC adapter answers the code REST names.
    #[test]
    fn grpc_and_rest_classify_alike() {
        for err in [ServiceError::invalid("x", "y"), ServiceError::NotFound("n".into()), ServiceError::Unsupported("u".into())] {
            let code = err.grpc_code();
            let problem = Problem::from_service(&err);
            assert_eq!(crate::grpc::convert::status_from(err).code(), code);
            assert_eq!(problem.code, grpc_code_name(code));
        }
    }

    #[test]
    fn json_media_types_are_recognised() {
        for (value, json) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("", false),
            ("application/jsonx", false),
        ] {
            assert_eq!(is_json_media_type(value), json, "{value:?}");
        }
    }
}
