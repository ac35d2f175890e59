//! `/cluster/api/v2.0/*`: join, image/import, dqlite/remove.

use std::net::SocketAddr;
use std::process::Stdio;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Json;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::{
    body_bytes, canonical_ip, empty_method_not_allowed, empty_not_found, guard, ApiError, AppState,
};
use crate::ops::callbacks::{self, DqliteRemoveRequest};
use crate::ops::join::{self, JoinRequest, JoinResponseV2, Origin};
use crate::ops::OpError;

pub fn join_route() -> MethodRouter<AppState> {
    post(join).fallback(empty_not_found)
}
pub fn image_import_route() -> MethodRouter<AppState> {
    post(image_import).fallback(empty_not_found)
}
pub fn dqlite_remove_route() -> MethodRouter<AppState> {
    post(dqlite_remove).fallback(empty_method_not_allowed)
}

/// The peer's address and the host it addressed (`Host`, else the URI authority).
pub fn origin(peer: SocketAddr, headers: &HeaderMap) -> Origin {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    Origin {
        remote_ip: canonical_ip(peer.ip()),
        host: crate::datastore::host_of(host).to_string(),
    }
}

async fn join(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<JoinResponseV2>, ApiError> {
    let req = JoinRequest::decode(&body_bytes(body)?)?;
    let token = req.token.clone();
    let mut origin = origin(peer, &headers);
    if origin.host.is_empty() {
        // HTTP/2 carries the host in :authority.
        origin.host = uri
            .authority()
            .map(|a| crate::datastore::host_of(a.as_str()).to_string())
            .unwrap_or_default();
    }
    guard(&app, peer, "/cluster/api/v2.0/join", Some(&token), async {
        Ok(join::join_v2(&app.node, req, origin).await?)
    })
    .await
    .map(Json)
}

async fn dqlite_remove(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<()>, ApiError> {
    let req = DqliteRemoveRequest::decode(&body_bytes(body)?)?;
    let token = headers
        .get("capi-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    guard(
        &app,
        peer,
        "/cluster/api/v2.0/dqlite/remove",
        token.as_deref(),
        async { Ok(callbacks::dqlite_remove(&app.node, token.as_deref(), req).await?) },
    )
    .await
    .map(Json)
}

/// Streams the image tarball into `ctr image import`; the token is checked before a byte of
/// the body is read.
async fn image_import(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = headers
        .get("x-microk8s-callback-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    guard(
        &app,
        peer,
        "/cluster/api/v2.0/image/import",
        token.as_deref(),
        async {
            callbacks::check_image_import_token(&app.node, token.as_deref())?;
            let argv = callbacks::ctr_import_argv(&app.node)?;
            import_with(&argv, body).await?;
            Ok(Json(serde_json::json!({"status": "OK"})).into_response())
        },
    )
    .await
}

async fn import_with(argv: &[String], body: Body) -> Result<(), OpError> {
    let fail = |e: String| OpError::Refused(format!("Failed to import the image: {e}"));
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| fail("empty command".into()))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(format!("microk8s.ctr command failed: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| fail(format!("reading the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if stdin.write_all(&data).await.is_err() {
                    break;
                }
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| fail(format!("microk8s.ctr command failed: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "microk8s.ctr command failed: exit status {}",
            status.code().unwrap_or(-1)
        )))
    }
}
