//! The HTTPS API served on `--bind` (:25000): one route table, one module per endpoint family.
//!
//! Invariants:
//! - Handlers extract, call one `ops` function and map its result; they never touch the
//!   filesystem themselves.
//! - [`error::ApiError`] is the only place that chooses a status code.
//! - Unknown paths answer 404 `{"error":"Not found"}` like MicroK8s; a wrong method on a
//!   known path answers 404 with an empty body (405 for `v2.0/dqlite/remove`), as MicroK8s.
//! - Every request with a token goes through [`guard`]: rate limit, audit entry, metrics.

pub mod error;
pub mod health;
pub mod v1;
pub mod v2;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use crate::audit::{AuditEntry, AuditLog};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::ratelimit::RateLimiter;

pub use error::ApiError;

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
    pub fn new(node: Node, limiter: RateLimiter) -> Self {
        let audit = AuditLog::new(node.state.layout().audit_log());
        AppState {
            node,
            limiter: Arc::new(limiter),
            audit: Arc::new(audit),
            metrics: Arc::new(Metrics::default()),
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

/// Runs an authenticated operation with the rate limit, the audit log and metrics around it.
pub async fn guard<T, F>(
    app: &AppState,
    peer: SocketAddr,
    route: &'static str,
    token: Option<&str>,
    op: F,
) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, ApiError>>,
{
    let ip = canonical_ip(peer.ip());
    let now = Instant::now();
    let result = if app.limiter.is_blocked(ip, now) {
        Err(ApiError::TooManyRequests)
    } else {
        op.await
    };
    let (label, status) = match &result {
        Ok(_) => ("granted", 200),
        Err(e) => (e.result_label(), e.status().as_u16()),
    };
    if let Err(e) = &result {
        if e.is_auth_failure() {
            if app.limiter.record_failure(ip, now) {
                tracing::warn!(source = %ip, route, "too many failed attempts; rate limiting this source");
            } else {
                tracing::debug!(source = %ip, route, "authentication failed");
            }
        }
    }
    if route.ends_with("/join") {
        app.metrics.join_attempt(label);
    }
    if result.is_ok() && token.is_some() {
        app.metrics.token_consumed();
    }
    // A blocked source is not looking at tokens any more; recording each of its attempts
    // would let it grow the audit log at will.
    if matches!(result, Err(ApiError::TooManyRequests)) {
        return result;
    }
    app.audit.record(&AuditEntry {
        time: crate::audit::now_rfc3339(),
        source: ip,
        route,
        token_id: token
            .filter(|t| !t.trim().is_empty())
            .map(crate::tokens::token_id),
        result: label,
        status,
    });
    result
}

/// IPv4-mapped IPv6 peers (dual-stack listeners) are treated as their IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The body, or a JSON 413 when over the limit.
pub fn body_bytes(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::Op(crate::ops::OpError::BadRequest(e.body_text()))
        }
    })
}
