//! `/cluster/api/v2.0/recover/{step}`: the calls a recovering survivor makes on this one
//! (see `grant::recover`). Bodies may be large (the winner's raft files): read up to
//! [`MAX_RECOVERY_BODY`] within the request's deadline.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use http_body_util::BodyExt;

use super::{empty_not_found, ApiError, AppState};
use crate::format::recovery::{RunRequest, PROOF_HEADER};
use crate::grant::recover::{recover_step, SignedCall};
use crate::grant::GrantError;
use crate::util::addr::canonical_ip;

/// Largest body of a recovery call (the winner's raft files).
pub const MAX_RECOVERY_BODY: usize = 1 << 30;

pub fn route() -> MethodRouter<AppState> {
    post(step).fallback(empty_not_found)
}

#[derive(Debug, serde::Deserialize, Default)]
struct RunQuery {
    #[serde(default)]
    run: String,
    #[serde(default)]
    coordinator: String,
}

async fn step(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(step): Path<String>,
    Query(query): Query<RunQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let ip = canonical_ip(peer.ip());
    if app.limiter.is_blocked(ip, Instant::now()) {
        return Err(ApiError::TooManyRequests);
    }
    let body = read_large(body).await?;
    let proof = headers.get(PROOF_HEADER).and_then(|v| v.to_str().ok());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    let call = SignedCall {
        step: &step,
        path,
        proof,
        body: &body,
    };
    let run = RunRequest {
        run: query.run,
        coordinator: query.coordinator,
    };
    match recover_step(&app.node, call, run).await {
        Ok(answer) => {
            let kind = if answer.json {
                "application/json"
            } else {
                "application/octet-stream"
            };
            Ok(([("content-type", kind)], answer.body).into_response())
        }
        Err(e) => {
            if matches!(e, GrantError::Unauthorized(_)) {
                app.limiter.record_failure(ip, Instant::now());
                tracing::warn!(source = %ip, step, "a recovery call without a valid proof was refused");
            } else {
                tracing::warn!(source = %ip, step, error = %e, "a recovery call failed");
            }
            Err(e.into())
        }
    }
}

async fn read_large(body: Body) -> Result<Vec<u8>, ApiError> {
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::Grant(GrantError::BadRequest(format!(
                "Cannot read the request body: {e}"
            )))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if out.len() + data.len() > MAX_RECOVERY_BODY {
            return Err(ApiError::PayloadTooLarge(MAX_RECOVERY_BODY));
        }
        out.extend_from_slice(&data);
    }
    Ok(out)
}
