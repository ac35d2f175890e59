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
pub mod guard;
pub mod health;
pub mod https;
pub mod ratelimit;
pub mod recover;
pub mod v1;
pub mod v2;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use ratelimit::RateLimiter;

use crate::cluster::metrics::Metrics;
use crate::cluster::node::Node;

pub use error::ApiError;
pub use guard::guard;

/// Largest request body accepted on any route but image import (join requests are a few
/// hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How much of an over-limit body is still read (and dropped) so that the client, which
/// sends its whole body before it reads an answer (Python's `requests`, most HTTP/2
/// clients), gets the 413 instead of a connection torn down under it.
pub const DISCARD_BYTES: usize = 16 * 1024 * 1024;

/// The longest a request body may take to arrive (a stalled upload gets 408), unless the
/// whole request's `--timeout` is shorter.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Everything handlers need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub node: Node,
    pub limiter: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    /// How long a request body may take to arrive ([`BODY_DEADLINE`], or less).
    pub body_deadline: Duration,
}

impl AppState {
    pub fn new(node: Node, limiter: RateLimiter, metrics: Arc<Metrics>) -> Self {
        AppState {
            node,
            limiter: Arc::new(limiter),
            metrics,
            body_deadline: BODY_DEADLINE,
        }
    }
}

/// The :25000 route table.
pub fn router(app: AppState, request_timeout: Duration) -> Router {
    // The body must be in (or refused) before the request as a whole times out.
    let app = AppState {
        body_deadline: BODY_DEADLINE.min(request_timeout / 2),
        ..app
    };
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
        .route("/cluster/api/v2.0/dqlite/remove", v2::dqlite_remove_route());
    limited
        // Image tarballs are streamed to containerd: no body limit on this route.
        .route("/cluster/api/v2.0/image/import", v2::image_import_route())
        // The winner's raft files travel here: its own, larger limit.
        .route("/cluster/api/v2.0/recover/{step}", recover::route())
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

/// The request body, at most [`MAX_BODY_BYTES`]. An over-limit body is read on and dropped
/// (up to [`DISCARD_BYTES`]) before the 413, so the client is still listening when it comes;
/// a body that does not arrive within the deadline gets 408. Nothing is read for a source
/// that is rate limited, for a body announced larger than the discard bound, or for a client
/// that waits for `100 Continue` before sending an over-limit body: those get their answer
/// at once.
pub async fn read_body(
    app: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    if app
        .limiter
        .is_blocked(crate::util::addr::canonical_ip(peer.ip()), Instant::now())
    {
        return Err(ApiError::TooManyRequests);
    }
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let waits_to_send = headers
        .get(axum::http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if let Some(length) = announced {
        let over = length > MAX_BODY_BYTES as u64;
        if over && (waits_to_send || length > DISCARD_BYTES as u64) {
            return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
        }
    }
    let read = async {
        let mut body = body;
        let mut kept = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::Grant(crate::grant::GrantError::BadRequest(format!(
                    "Cannot read the request body: {e}"
                )))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total = total.saturating_add(data.len());
            if total > DISCARD_BYTES {
                break;
            }
            if total <= MAX_BODY_BYTES {
                kept.extend_from_slice(&data);
            }
        }
        if total > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
        }
        Ok(Bytes::from(kept))
    };
    tokio::time::timeout(app.body_deadline, read)
        .await
        .map_err(|_| ApiError::BodyTimeout(app.body_deadline))?
}
