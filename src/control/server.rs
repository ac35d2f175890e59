//! The local control socket (`run/cluster-agent.sock`, mode 0600) the CLI talks to.
//!
//! Only root (or the state directory's owner) can reach it: it lives in the private `run/`
//! directory and is chmod-ed 0600. Requests are plain HTTP/1.1 with JSON bodies.
//! Invariant: [`ControlError`] is the only place choosing this socket's status codes; a
//! refusal always carries its [`ErrorKind`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::UnixListener;

use super::wire::{self, DaemonInfo, ErrorKind, Refused};
use crate::cluster::metrics::Metrics;
use crate::cluster::node::Node;
use crate::local::error::Refusal;
use crate::local::{add_node, join, leave, recover, remove_node, status, tokens};

#[derive(Debug, thiserror::Error)]
#[error("cannot open control socket {path}: {reason}")]
pub struct ControlSocketError {
    pub path: PathBuf,
    pub reason: String,
}

/// Binds the control socket. The caller holds the state lock, so a leftover socket file is
/// from a dead daemon and safe to replace.
pub fn bind(path: &Path) -> Result<UnixListener, ControlSocketError> {
    let err = |reason: String| ControlSocketError {
        path: path.to_path_buf(),
        reason,
    };
    crate::state::remove_file(path).map_err(|e| err(e.to_string()))?;
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    crate::state::set_mode(path, crate::state::mode::SECRET).map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

#[derive(Clone)]
struct ControlState {
    node: Node,
    metrics: Arc<Metrics>,
    info: DaemonInfo,
}

/// A local operation's refusal, as the socket answers it.
struct ControlError {
    kind: ErrorKind,
    message: String,
}

impl<E: Refusal> From<E> for ControlError {
    fn from(e: E) -> Self {
        ControlError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let body = Refused {
            error: self.message,
            kind: Some(self.kind),
        };
        (status, Json(body)).into_response()
    }
}

pub fn router(node: Node, metrics: Arc<Metrics>, info: DaemonInfo) -> Router {
    Router::new()
        .route(wire::INFO, get(info_handler))
        .route(wire::ADD_NODE, post(add_node_handler))
        .route(wire::STATUS, get(status_handler))
        .route(wire::JOIN, post(join_handler))
        .route(wire::LEAVE, post(leave_handler))
        .route(wire::REMOVE_NODE, post(remove_node_handler))
        .route(wire::RECOVER, post(recover_handler))
        .route(wire::TOKENS, get(tokens_handler))
        .route(wire::TOKENS_REVOKE, post(revoke_handler))
        .fallback(not_found)
        .with_state(ControlState {
            node,
            metrics,
            info,
        })
}

async fn not_found() -> Response {
    let body = Refused {
        error: "Not found".into(),
        kind: None,
    };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn info_handler(State(s): State<ControlState>) -> Json<DaemonInfo> {
    Json(s.info.clone())
}

async fn add_node_handler(
    State(s): State<ControlState>,
    Json(req): Json<wire::AddNodeRequest>,
) -> Result<Json<wire::AddNodeResponse>, ControlError> {
    let resp = add_node::add_node(&s.node, req).await?;
    s.metrics.token_issued();
    Ok(Json(resp))
}

async fn tokens_handler(
    State(s): State<ControlState>,
) -> Result<Json<wire::TokenList>, ControlError> {
    Ok(Json(tokens::list(&s.node).await?))
}

async fn revoke_handler(
    State(s): State<ControlState>,
    Json(req): Json<wire::RevokeRequest>,
) -> Result<Json<wire::RevokeResponse>, ControlError> {
    Ok(Json(tokens::revoke(&s.node, req).await?))
}

async fn status_handler(State(s): State<ControlState>) -> Json<wire::StatusReport> {
    Json(status::status(&s.node).await)
}

/// Runs a membership change to its end (or its own rollback) as a task of its own: the CLI
/// that asked for it may go away (Ctrl-C, a lost terminal) without cancelling it halfway.
async fn detached<T, E>(
    op: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, ControlError>
where
    T: Send + 'static,
    E: Refusal + Send + 'static,
{
    match tokio::spawn(op).await {
        Ok(result) => result.map_err(ControlError::from),
        Err(e) => Err(ControlError {
            kind: ErrorKind::Internal,
            message: format!("the operation's task failed: {e}"),
        }),
    }
}

async fn join_handler(
    State(s): State<ControlState>,
    Json(req): Json<wire::JoinClusterRequest>,
) -> Result<Json<wire::JoinClusterResponse>, ControlError> {
    let node = s.node;
    Ok(Json(
        detached(async move { join::join_cluster(&node, req).await }).await?,
    ))
}

async fn leave_handler(
    State(s): State<ControlState>,
) -> Result<Json<wire::LeaveResponse>, ControlError> {
    let node = s.node;
    Ok(Json(
        detached(async move { leave::leave(&node).await }).await?,
    ))
}

async fn remove_node_handler(
    State(s): State<ControlState>,
    Json(req): Json<wire::RemoveNodeRequest>,
) -> Result<Json<wire::RemoveNodeResponse>, ControlError> {
    let node = s.node;
    Ok(Json(
        detached(async move { remove_node::remove_node(&node, req).await }).await?,
    ))
}

async fn recover_handler(
    State(s): State<ControlState>,
    Json(req): Json<wire::RecoverRequest>,
) -> Result<Json<wire::RecoverResponse>, ControlError> {
    let node = s.node;
    Ok(Json(
        detached(async move { recover::recover(&node, req).await }).await?,
    ))
}
