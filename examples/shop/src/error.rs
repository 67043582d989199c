//! `ApiError`: the one place where the shop's failures become HTTP statuses
//! and JSON bodies (`{"error": "<code>", "message": "..."}`), so `?` in a
//! handler is enough.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer: status, a stable machine-readable code, a human message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short stable code, e.g. `out_of_stock`, `token_expired`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Seconds the client should wait (429 and 503 only).
    pub retry_after: Option<Duration>,
    /// The order the failure leaves behind, so the client can look it up.
    pub order_id: Option<String>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            order_id: None,
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401 with a reason code such as `token_expired`.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 503: a dependency (`what`) is down or too slow.
    pub fn unavailable(what: &str, detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            format!("{what} is unavailable: {detail}"),
        )
        .retry_after(Duration::from_secs(1))
    }

    /// 500: our own fault (database errors and the like).
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            detail.to_string(),
        )
    }

    /// Names the order this failure is about in the answer.
    pub fn for_order(mut self, id: &str) -> ApiError {
        self.order_id = Some(id.to_string());
        self
    }

    /// Adds a `Retry-After` (rounded up to whole seconds, at least 1).
    pub fn retry_after(mut self, wait: Duration) -> ApiError {
        self.retry_after = Some(wait);
        self
    }
}

impl From<sled::Error> for ApiError {
    fn from(error: sled::Error) -> ApiError {
        ApiError::internal(format!("database: {error}"))
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(error: serde_json::Error) -> ApiError {
        ApiError::internal(format!("stored record: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, status = self.status.as_u16(), message = %self.message, "request failed");
        } else {
            tracing::warn!(code = self.code, status = self.status.as_u16(), message = %self.message, "request refused");
        }
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(id) = self.order_id {
            body["order_id"] = id.into();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(seconds.max(1)),
            );
        }
        response
    }
}

/// Handler results.
pub type ApiResult<T> = Result<T, ApiError>;
