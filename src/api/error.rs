//! The one mapping from failures to HTTP status codes and `{"error": "..."}` bodies.
//!
//! Status codes are MicroK8s's, idiosyncrasies included (an invalid join token is 500, a
//! port mismatch 502, …), because its clients print them; new refusals use the natural codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::ops::OpError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Not found")]
    NotFound,
    #[error("Too many failed attempts from this address; retry later")]
    TooManyRequests,
    #[error("Request body too large (limit {0} bytes)")]
    PayloadTooLarge(usize),
    #[error(transparent)]
    Op(#[from] OpError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Op(op) => match op {
                OpError::BadRequest(_) | OpError::HostnameMismatch { .. } => {
                    StatusCode::BAD_REQUEST
                }
                OpError::InvalidToken | OpError::Refused(_) | OpError::Internal(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                OpError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                OpError::Forbidden(_) => StatusCode::FORBIDDEN,
                OpError::NotHa => StatusCode::NOT_IMPLEMENTED,
                OpError::PortMismatch(_) => StatusCode::BAD_GATEWAY,
                OpError::SameIp(_) => StatusCode::SERVICE_UNAVAILABLE,
                OpError::Exit { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            },
        }
    }

    /// A short label for metrics and the audit log.
    pub fn result_label(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::TooManyRequests => "rate_limited",
            ApiError::PayloadTooLarge(_) => "too_large",
            ApiError::Op(op) => match op {
                OpError::BadRequest(_) => "bad_request",
                OpError::InvalidToken | OpError::Unauthorized(_) => "invalid_token",
                OpError::Forbidden(_) => "forbidden",
                OpError::Internal(_) => "error",
                _ => "refused",
            },
        }
    }

    /// Did the caller fail to authenticate (counts towards the rate limit)?
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            ApiError::Op(OpError::InvalidToken) | ApiError::Op(OpError::Unauthorized(_))
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Op(OpError::Internal(detail)) => {
                tracing::error!(%detail, "request failed");
                "Internal error; see the cluster-agent log".to_string()
            }
            other => other.to_string(),
        };
        let body = match &self {
            ApiError::Op(OpError::Exit { code, .. }) => {
                serde_json::json!({ "error": message, "exit_code": code })
            }
            _ => serde_json::json!({ "error": message }),
        };
        (self.status(), axum::Json(body)).into_response()
    }
}
