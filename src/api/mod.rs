//! The HTTPS API served on `--bind` (:25000): one route table, one module per endpoint family.
//!
//! Invariants:
//! - Handlers extract, validate, call one core function and map its result; they never touch
//!   the filesystem themselves.
//! - [`error::ApiError`] is the only place that chooses a status code.
//! - Unknown paths answer 404 `{"error":"Not found"}` like MicroK8s; a wrong method on a
//!   known path answers 404 with an empty body (MicroK8s's handlers do this).

pub mod error;
pub mod health;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::services::ServiceManager;
use crate::state::StateDir;

pub use error::ApiError;

/// Largest request body accepted on any route (join requests are a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything handlers need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<AppInner>,
}

pub struct AppInner {
    pub state: StateDir,
    pub services: Arc<dyn ServiceManager>,
}

impl AppState {
    pub fn new(state: StateDir, services: Arc<dyn ServiceManager>) -> Self {
        AppState {
            inner: Arc::new(AppInner { state, services }),
        }
    }
}

/// The :25000 route table.
pub fn router(app: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/health", get(health::health).fallback(empty_not_found))
        .fallback(not_found)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(app)
}

/// MicroK8s answers a wrong method with 404 and no body.
pub async fn empty_not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}
