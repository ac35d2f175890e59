//! The HTTPS API served on `--bind` (:25000): one route table, one module per endpoint family.
//!
//! Invariants:
//! - Handlers extract, call one `ops` function and map its result; they never touch the
//!   filesystem themselves.
//! - [`error::ApiError`] is the only place that chooses a status code.
//! - Unknown paths answer 404 `{"error":"Not found"}` like MicroK8s; a wrong method on a
//!   known path answers 404 with an empty body (405 for `v2.0/dqlite/remove`), as MicroK8s.
//! - Every request with a token goes through [`guard`]: rate limit, audit entry, metrics.

pub mod audit;
pub mod error;
pub mod guard;
pub mod health;
pub mod https;
pub mod ratelimit;
pub mod v1;
pub mod v2;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use audit::AuditLog;
use ratelimit::RateLimiter;

use crate::cluster::metrics::Metrics;
use crate::cluster::node::Node;

pub use error::ApiError;
pub use guard::guard;

/// Largest request body accepted on any route but image import (join requests are a few
/// hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything handlers need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub node: Node,
    pub limiter: Arc<RateLimiter>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(node: Node, limiter: RateLimiter, metrics: Arc<Metrics>) -> Self {
        let audit = AuditLog::new(node.state().layout().audit_log());
        AppState {
            node,
            limiter: Arc::new(limiter),
            audit: Arc::new(audit),
            metrics,
        }
    }
}

/// The :25000 route table.
pub fn router(app: AppState, request_timeout: Duration) -> Router {
    let limited = Router::new()
        // MicroK8s answers HEAD like any other wrong method (axum would serve it as GET).
        .route(
            "/health",
            get(health::health)
                .head(empty_not_found)
                .fallback(empty_not_found),
        )
        .route("/metrics", any(metrics))
        .route("/cluster/api/v1.0/join", v1::join_route())
        .route("/cluster/api/v1.0/sign-cert", v1::sign_cert_route())
        .route("/cluster/api/v1.0/configure", v1::configure_route())
        .route("/cluster/api/v1.0/upgrade", v1::upgrade_route())
        .route("/cluster/api/v2.0/join", v2::join_route())
        .route("/cluster/api/v2.0/dqlite/remove", v2::dqlite_remove_route())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    limited
        // Image tarballs are streamed to containerd: no body limit on this route.
        .route("/cluster/api/v2.0/image/import", v2::image_import_route())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(app)
}

async fn observe(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    app.metrics.observe(&route, start.elapsed());
    resp
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// MicroK8s answers a wrong method with 404 and no body.
pub async fn empty_not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

pub async fn empty_method_not_allowed() -> Response {
    StatusCode::METHOD_NOT_ALLOWED.into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// The body, or a JSON 413 when over the limit.
pub fn body_bytes(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::Grant(crate::grant::GrantError::BadRequest(e.body_text()))
        }
    })
}
