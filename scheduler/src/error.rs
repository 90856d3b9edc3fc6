//! The one error type of the API: a status and one line for the user, and the
//! one place where the domain's errors ([`state::Error`]) get their HTTP status.

use crate::state;
use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skiff_api::ErrorBody;

/// An API call that failed, with what the caller should know.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let full = matches!(
            &e,
            StoreError::Sql(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull
        );
        if let StoreError::Etcd(_) | StoreError::NotLeader = e {
            // Not this request's fault and not for good: etcd lost its quorum or
            // another server took over; the client retries (elsewhere). The
            // etcd errors say themselves whether anything may have changed.
            tracing::warn!("{e}");
            let text = if let StoreError::NotLeader = e { format!("{e}; nothing was changed") } else { e.to_string() };
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, text);
        }
        if full {
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the scheduler's data directory is full; nothing was changed; free space and retry",
            )
        } else {
            tracing::error!("{e}");
            ApiError::internal(format!("{e}; nothing was changed"))
        }
    }
}

impl From<state::Error> for ApiError {
    fn from(e: state::Error) -> Self {
        match e {
            state::Error::NotFound(m) => ApiError::not_found(m),
            state::Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            e @ state::Error::TooMany { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            state::Error::Invalid(m) => ApiError::bad_request(m),
            state::Error::Store(e) => ApiError::from(e),
            state::Error::Internal(m) => ApiError::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.message })).into_response()
    }
}
