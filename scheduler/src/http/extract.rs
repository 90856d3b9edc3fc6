//! The API's extractors: a JSON body, a path and a query whose refusals are
//! [`ApiError`]s (one JSON line, like every other failure). A leaf: it knows
//! axum and the error type, nothing of the handlers.

use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::header;

/// A JSON body; a bad one is refused with one line of [`ErrorBody`], as every
/// other failure.
pub(crate) struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    /// Parsed with serde_json alone; only a body that fails is parsed again by
    /// `axum::Json`, for its refusal that names where the body went wrong. Its
    /// path tracking costs an allocation per key, and parsing heartbeats was
    /// ~8% of the scheduler in a profile of scenario B (#7; the change alone
    /// did not move B beyond its noise).
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let plain_json = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/json") && matches!(v.get(16), None | Some(b';'))
        });
        if !plain_json {
            // Other JSON types (`+json`), and axum's refusal of the rest.
            return Ok(JsonBody(Json::<T>::from_request(req, state).await?.0));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), one_line(&e.body_text())))?;
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(JsonBody(v)),
            Err(_) => Ok(JsonBody(Json::<T>::from_bytes(&bytes)?.0)),
        }
    }
}

/// A path parameter, refused as [`JsonBody`] is.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub T);

/// Query parameters, refused as [`JsonBody`] is.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(r.status(), one_line(&r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(r.status(), one_line(&r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(r.status(), one_line(&r.body_text()))
    }
}

/// `text` on one line, starting lowercase as the API's other errors do.
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = line.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}
