//! Service errors as JSON responses: `{"error": {"code", "message"}}` with the HTTP
//! status of the same meaning.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ServiceError;

/// Seconds a client is told to wait (`Retry-After`) before retrying a request answered
/// 503: the database or node it needs is away, and comes back on its own.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A service error on its way out as JSON.
#[derive(Debug)]
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        ApiError(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self.0 {
            ServiceError::InvalidArgument { .. } | ServiceError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            ServiceError::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
            ServiceError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ServiceError::ResourceExhausted(_) => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            ServiceError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ServiceError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            ServiceError::FailedPrecondition(_) => (StatusCode::CONFLICT, "failed_precondition"),
            ServiceError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let body = serde_json::json!({ "error": { "code": code, "message": self.0.to_string() } });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(err: ServiceError) -> Response {
        ApiError(err).into_response()
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
}
