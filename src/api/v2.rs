//! `/cluster/api/v2.0/*`: join, image/import, dqlite/remove.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Json;
use http_body_util::BodyExt;

use super::{empty_method_not_allowed, empty_not_found, guard, read_body, ApiError, AppState};
use crate::format::wire::{DqliteRemoveRequest, JoinRequest, JoinResponseV2};
use crate::grant::join::{self, Origin};
use crate::grant::{callbacks, GrantError};
use crate::util::addr::{canonical_ip, host_of};

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
        host: host_of(host).to_string(),
    }
}

async fn join(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Body,
) -> Result<Json<JoinResponseV2>, ApiError> {
    let req = JoinRequest::decode(&read_body(&app, peer, &headers, body).await?)
        .map_err(GrantError::from)?;
    let token = req.token.clone();
    let mut origin = origin(peer, &headers);
    if origin.host.is_empty() {
        // HTTP/2 carries the host in :authority.
        origin.host = uri
            .authority()
            .map(|a| host_of(a.as_str()).to_string())
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
    body: Body,
) -> Result<Json<()>, ApiError> {
    let req = DqliteRemoveRequest::decode(&read_body(&app, peer, &headers, body).await?)
        .map_err(GrantError::from)?;
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
            callbacks::check_image_import_token(&app.node, token.as_deref()).await?;
            let (chunks, input) = tokio::sync::mpsc::channel(4);
            // The body flows to the command as it arrives; when the command stops reading,
            // the channel closes and so does the upload.
            tokio::spawn(async move {
                let mut body = body;
                while let Some(frame) = body.frame().await {
                    let chunk = match frame {
                        Ok(frame) => match frame.into_data() {
                            Ok(data) => Ok(data.to_vec()),
                            Err(_) => continue,
                        },
                        Err(e) => Err(e.to_string()),
                    };
                    let failed = chunk.is_err();
                    if chunks.send(chunk).await.is_err() || failed {
                        return;
                    }
                }
            });
            callbacks::import_image(&app.node, input).await?;
            Ok(Json(serde_json::json!({"status": "OK"})).into_response())
        },
    )
    .await
}
