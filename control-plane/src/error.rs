//! The service layer's error type. gRPC and REST adapters map each kind to a status
//! code (`InvalidArgument` / 400, `NotFound` / 404, ...); messages name the field or
//! record at fault and never contain a secret.

use crate::store::StoreError;

/// What went wrong in a service call.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; `field` names the culprit.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// Request field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The request is malformed; the message (from an agent) already names the field.
    #[error("{0}")]
    InvalidRequest(String),
    /// No credential, or one that is not valid.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A valid credential that may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows this.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The runtime cannot do this operation.
    #[error("{0}")]
    Unsupported(String),
    /// A node or runtime that should do this cannot be reached right now.
    #[error("{0}")]
    Unavailable(String),
    /// Too many attempts from the same source; the message says when to retry.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Anything else: a database or internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Shorthand for [`ServiceError::InvalidArgument`].
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ServiceError::InvalidArgument { field, message: message.into() }
    }

    /// The gRPC status code of this error: the one classification both adapters use
    /// (gRPC answers with it, REST names it in a problem document's `code`).
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ServiceError::InvalidArgument { .. } | ServiceError::InvalidRequest(_) => tonic::Code::InvalidArgument,
            ServiceError::Unsupported(_) => tonic::Code::Unimplemented,
            ServiceError::Unavailable(_) => tonic::Code::Unavailable,
            ServiceError::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            ServiceError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            ServiceError::PermissionDenied(_) => tonic::Code::PermissionDenied,
            ServiceError::NotFound(_) => tonic::Code::NotFound,
            ServiceError::AlreadyExists(_) => tonic::Code::AlreadyExists,
            ServiceError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            ServiceError::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::AlreadyExists { .. } => ServiceError::AlreadyExists(err.to_string()),
            StoreError::NotFound { .. } => ServiceError::NotFound(err.to_string()),
            // The database is away: the caller may retry the same request later.
            other if other.is_unavailable() => ServiceError::Unavailable(format!("database unavailable: {other}")),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

/// Result alias for service calls.
pub type ServiceResult<T> = Result<T, ServiceError>;
