//! The S-9.1 envelope `{"code","message","data"}` for every answer, success or error, and the
//! extractors that turn axum's plain-text rejections into it.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::shadow::ShadowError;
use crate::things::ThingsError;

/// Builds the envelope response: HTTP status `status`, body `{"code":status,"message","data"}`.
pub fn envelope<T: Serialize>(status: StatusCode, message: &str, data: T) -> Response {
    let body = iothub_spec::payload::ApiResponse {
        code: status.as_u16(),
        message,
        data: Some(data),
    };
    match serde_json::to_vec(&body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "response not serializable");
            let body = iothub_spec::payload::ApiResponse {
                code: 500,
                message: "internal error",
                data: None::<()>,
            };
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&body).unwrap_or_default(),
            )
                .into_response()
        }
    }
}

/// A successful answer: 200 (or another 2xx) with `data`.
pub fn ok<T: Serialize>(data: T) -> Response {
    envelope(StatusCode::OK, "ok", data)
}

/// An error answer of the REST API: its status and message become the envelope, `data` is null.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status (and envelope `code`).
    pub status: StatusCode,
    /// The human-readable message.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 413 Payload Too Large.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// An error from a status code alone, with its canonical reason as message.
    pub fn from_status(status: StatusCode) -> Self {
        Self::new(
            status,
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        envelope(self.status, &self.message, ())
    }
}

impl From<ThingsError> for ApiError {
    fn from(e: ThingsError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        ApiError::new(status, e.to_string())
    }
}

impl From<ShadowError> for ApiError {
    fn from(e: ShadowError) -> Self {
        // The shadow service carries the protocol's code (400/404/409/413/429/503, S-3.8, S-9.3).
        let status = StatusCode::from_u16(e.code.as_u16())
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.message)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("request body too large")
        } else {
            ApiError::bad_request(format!("cannot read request body: {r}"))
        }
    }
}

/// The whole request body, or a 413/400 envelope.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Ok(Bytes::from_request(req, state).await?)
}

/// Parses `bytes` as JSON into `T`; every failure (syntax, missing field, wrong type) is a 400
/// envelope whose message says where.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Like `axum::Json`, but every rejection is our envelope: a body over the limit is 413, bad
/// JSON, missing or mistyped fields are 400. The content type is not checked (a JSON body sent
/// as `text/plain` by `curl -d` is accepted).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Like `axum::extract::Path`, with a 400 envelope on rejection.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {e}")))
    }
}

/// Like `axum::extract::Query`, with a 400 envelope on rejection.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
    }
}
