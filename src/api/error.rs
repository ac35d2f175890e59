//! The one mapping from failures to HTTP status codes and `{"error": "..."}` bodies.
//!
//! Status codes are MicroK8s's, idiosyncrasies included (an invalid join token is 500, a
//! port mismatch 502, …), because its clients print them; new refusals use the natural codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::format::wire::ErrorBody;
use crate::grant::GrantError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Not found")]
    NotFound,
    #[error("Too many failed attempts from this address; retry later")]
    TooManyRequests,
    #[error("Request body too large (limit {0} bytes)")]
    PayloadTooLarge(usize),
    #[error("The request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error(transparent)]
    Grant(#[from] GrantError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Grant(refusal) => match refusal {
                GrantError::BadRequest(_) | GrantError::HostnameMismatch { .. } => {
                    StatusCode::BAD_REQUEST
                }
                GrantError::InvalidToken | GrantError::Refused(_) | GrantError::Internal(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                GrantError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                GrantError::Forbidden(_) | GrantError::WrongRole(_) => StatusCode::FORBIDDEN,
                GrantError::NotHa => StatusCode::NOT_IMPLEMENTED,
                GrantError::Conflict(_) => StatusCode::CONFLICT,
                GrantError::PortMismatch(_) => StatusCode::BAD_GATEWAY,
                GrantError::SameIp(_) | GrantError::Unavailable(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
        }
    }

    /// A short label for metrics and the audit log.
    pub fn result_label(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::TooManyRequests => "rate_limited",
            ApiError::PayloadTooLarge(_) => "too_large",
            ApiError::BodyTimeout(_) => "timeout",
            ApiError::Grant(refusal) => match refusal {
                GrantError::BadRequest(_) => "bad_request",
                GrantError::InvalidToken | GrantError::Unauthorized(_) => "invalid_token",
                GrantError::Forbidden(_) => "forbidden",
                GrantError::WrongRole(_) => "wrong_role",
                GrantError::Unavailable(_) => "unavailable",
                GrantError::Internal(_) => "error",
                _ => "refused",
            },
        }
    }

    /// Did the caller fail to authenticate (counts towards the rate limit)?
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            ApiError::Grant(GrantError::InvalidToken | GrantError::Unauthorized(_))
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = match &self {
            ApiError::Grant(GrantError::Internal(detail)) => {
                tracing::error!(%detail, "request failed");
                "Internal error; see the cluster-agent log".to_string()
            }
            other => other.to_string(),
        };
        (self.status(), axum::Json(ErrorBody { error })).into_response()
    }
}
