//! One error type per API family, each mapped to its own wire shape:
//!
//! - platform (seed 000 / Vessel v2): `{"result": null, "error": {"message", "code"}}`
//! - v1 (seed 001 / Vessel v1): `{"message", "errorCode"}`
//!
//! Internal errors are logged once, here, with their cause chain, and
//! returned opaque.

use std::marker::PhantomData;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_connections::PlatformError;
use serde_json::json;

/// Marker for the platform (v2) API family.
pub struct V2;
/// Marker for the v1 API family.
pub struct V1;

/// An API family: how its errors look on the wire and which headers carry
/// its API token.
pub trait Family: Send + Sync + 'static {
    const API_TOKEN_HEADERS: &'static [&'static str];
    fn body(status: StatusCode, code: &str, message: &str) -> serde_json::Value;
}

impl Family for V2 {
    const API_TOKEN_HEADERS: &'static [&'static str] = &["x-vessel-api-token", "vessel-api-token"];
    fn body(_status: StatusCode, code: &str, message: &str) -> serde_json::Value {
        json!({"result": null, "error": {"message": message, "code": code}})
    }
}

impl Family for V1 {
    const API_TOKEN_HEADERS: &'static [&'static str] = &["vessel-api-token", "x-vessel-api-token"];
    fn body(_status: StatusCode, code: &str, message: &str) -> serde_json::Value {
        json!({"message": message, "errorCode": code})
    }
}

/// An error answered in family `F`'s shape.
pub struct ApiError<F> {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (seconds).
    pub retry_after: Option<u64>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    _family: PhantomData<F>,
}

impl<F> std::fmt::Debug for ApiError<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ApiError({}, {}, {})",
            self.status, self.code, self.message
        )
    }
}

impl<F> ApiError<F> {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            source: None,
            _family: PhantomData,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
}

impl<F> From<PlatformError> for ApiError<F> {
    fn from(e: PlatformError) -> Self {
        let message = e.to_string();
        match e {
            PlatformError::Unauthorized { code, .. } => {
                Self::new(StatusCode::UNAUTHORIZED, code, message)
            }
            PlatformError::BadRequest { code, .. } => {
                Self::new(StatusCode::BAD_REQUEST, code, message)
            }
            PlatformError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message),
            PlatformError::Conflict { code, .. } => Self::new(StatusCode::CONFLICT, code, message),
            PlatformError::InvalidCredentials(_) => {
                Self::new(StatusCode::BAD_REQUEST, "INVALID_CREDENTIALS", message)
            }
            PlatformError::ProviderUnavailable(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "PROVIDER_UNAVAILABLE", message)
            }
            PlatformError::ProviderTimeout(_) => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "PROVIDER_TIMEOUT", message)
            }
            PlatformError::RateLimited {
                retry_after_secs, ..
            } => Self {
                retry_after: Some(retry_after_secs),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message)
            },
            PlatformError::StoreUnavailable(source) => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "STORE_UNAVAILABLE",
                message,
                retry_after: Some(1),
                source: Some(source),
                _family: PhantomData,
            },
            PlatformError::Internal(source) => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "INTERNAL",
                message: "internal error; the details are in the server log".into(),
                retry_after: None,
                source: Some(source),
                _family: PhantomData,
            },
        }
    }
}

impl<F: Family> IntoResponse for ApiError<F> {
    fn into_response(self) -> Response {
        if let Some(source) = &self.source {
            let mut chain = source.to_string();
            let mut cur = source.source();
            while let Some(s) = cur {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                cur = s.source();
            }
            tracing::error!(error = %chain, "internal error");
        }
        let mut resp = (
            self.status,
            Json(F::body(self.status, self.code, &self.message)),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}
