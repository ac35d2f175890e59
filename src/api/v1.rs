//! `/cluster/api/v1.0/*`: join (legacy), sign-cert, configure, upgrade.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::{post, MethodRouter};
use axum::Json;

use super::{empty_not_found, guard, read_body, ApiError, AppState};
use crate::format::wire::{
    ConfigureRequest, JoinRequest, JoinResponseV1, ResultOk, SignCertRequest, SignCertResponse,
    UpgradeRequest,
};
use crate::grant::{callbacks, join, sign_cert, GrantError};

pub fn join_route() -> MethodRouter<AppState> {
    post(join).fallback(empty_not_found)
}
pub fn sign_cert_route() -> MethodRouter<AppState> {
    post(sign_cert).fallback(empty_not_found)
}
pub fn configure_route() -> MethodRouter<AppState> {
    post(configure).fallback(empty_not_found)
}
pub fn upgrade_route() -> MethodRouter<AppState> {
    post(upgrade).fallback(empty_not_found)
}

async fn join(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<JoinResponseV1>, ApiError> {
    let req = JoinRequest::decode(&read_body(&app, peer, &headers, body).await?)
        .map_err(GrantError::from)?;
    let token = req.token.clone();
    let origin = super::v2::origin(peer, &headers);
    guard(&app, peer, "/cluster/api/v1.0/join", Some(&token), async {
        Ok(join::join_v1(&app.node, req, origin).await?)
    })
    .await
    .map(Json)
}

async fn sign_cert(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SignCertResponse>, ApiError> {
    let req = SignCertRequest::decode(&read_body(&app, peer, &headers, body).await?)
        .map_err(GrantError::from)?;
    let token = req.token.clone();
    guard(
        &app,
        peer,
        "/cluster/api/v1.0/sign-cert",
        Some(&token),
        async { Ok(sign_cert::sign_cert(&app.node, req).await?) },
    )
    .await
    .map(Json)
}

async fn configure(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ResultOk>, ApiError> {
    let req = ConfigureRequest::decode(&read_body(&app, peer, &headers, body).await?)
        .map_err(GrantError::from)?;
    let token = req.callback.clone();
    guard(
        &app,
        peer,
        "/cluster/api/v1.0/configure",
        Some(&token),
        async { Ok(callbacks::configure(&app.node, req).await?) },
    )
    .await
    .map(Json)
}

async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ResultOk>, ApiError> {
    let req = UpgradeRequest::decode(&read_body(&app, peer, &headers, body).await?)
        .map_err(GrantError::from)?;
    let token = req.callback.clone();
    guard(
        &app,
        peer,
        "/cluster/api/v1.0/upgrade",
        Some(&token),
        async { Ok(callbacks::upgrade(&app.node, req).await?) },
    )
    .await
    .map(Json)
}
