//! The local control socket (`run/cluster-agent.sock`, mode 0600) the CLI talks to.
//!
//! Only root (or the state directory's owner) can reach it: it lives in the private `run/`
//! directory and is chmod-ed 0600. Requests are plain HTTP/1.1 with JSON bodies.

use std::path::{Path, PathBuf};

use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;

use crate::api::AppState;

#[derive(Debug, thiserror::Error)]
#[error("cannot open control socket {path}: {source}")]
pub struct ControlSocketError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Binds the control socket. The caller holds the state lock, so a leftover socket file is
/// from a dead daemon and safe to replace.
pub fn bind(path: &Path) -> Result<UnixListener, ControlSocketError> {
    let err = |source| ControlSocketError {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// What `GET /v3/local/info` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub version: String,
    pub pid: u32,
    pub state_dir: PathBuf,
    pub bind: String,
}

#[derive(Clone)]
struct ControlState {
    app: AppState,
    info: DaemonInfo,
}

pub fn router(app: AppState, info: DaemonInfo) -> Router {
    Router::new()
        .route("/v3/local/info", get(info_handler))
        .route("/v3/local/add-node", post(add_node_handler))
        .route("/v3/local/status", get(status_handler))
        .route("/v3/local/join", post(join_handler))
        .route("/v3/local/leave", post(leave_handler))
        .route("/v3/local/remove-node", post(remove_node_handler))
        .fallback(crate::api::not_found)
        .with_state(ControlState { app, info })
}

async fn info_handler(
    axum::extract::State(s): axum::extract::State<ControlState>,
) -> Json<DaemonInfo> {
    Json(s.info.clone())
}

async fn add_node_handler(
    axum::extract::State(s): axum::extract::State<ControlState>,
    Json(req): Json<crate::ops::add_node::AddNodeRequest>,
) -> Result<Json<crate::ops::add_node::AddNodeResponse>, crate::api::ApiError> {
    let resp = crate::ops::add_node::add_node(&s.app.node, req).await?;
    s.app.metrics.token_issued();
    Ok(Json(resp))
}

async fn status_handler(
    axum::extract::State(s): axum::extract::State<ControlState>,
) -> Json<crate::ops::status::StatusReport> {
    Json(crate::ops::status::status(&s.app.node).await)
}

async fn join_handler(
    axum::extract::State(s): axum::extract::State<ControlState>,
    Json(req): Json<crate::ops::joiner::JoinClusterRequest>,
) -> Result<Json<crate::ops::joiner::JoinClusterResponse>, crate::api::ApiError> {
    Ok(Json(
        crate::ops::joiner::join_cluster(&s.app.node, req).await?,
    ))
}

async fn leave_handler(
    axum::extract::State(s): axum::extract::State<ControlState>,
) -> Result<Json<crate::ops::leave::LeaveResponse>, crate::api::ApiError> {
    Ok(Json(crate::ops::leave::leave(&s.app.node).await?))
}

async fn remove_node_handler(
    axum::extract::State(s): axum::extract::State<ControlState>,
    Json(req): Json<crate::ops::remove_node::RemoveNodeRequest>,
) -> Result<Json<crate::ops::remove_node::RemoveNodeResponse>, crate::api::ApiError> {
    Ok(Json(
        crate::ops::remove_node::remove_node(&s.app.node, req).await?,
    ))
}
