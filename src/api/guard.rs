//! The wrapper around every operation that presents a token: rate limit, audit entry,
//! metrics.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use super::{ApiError, AppState};
use crate::cluster::audit::{now_rfc3339, AuditEntry};
use crate::util::addr::canonical_ip;

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
    app.node
        .audit()
        .record(&AuditEntry {
            time: now_rfc3339(),
            source: ip.to_string(),
            route,
            token_id: token
                .filter(|t| !t.trim().is_empty())
                .map(crate::cluster::tokens::token_id),
            result: label,
            status: Some(status),
            detail: None,
        })
        .await;
    result
}
