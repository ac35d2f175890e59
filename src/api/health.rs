//! `GET /health`: `{"status":"OK"}` (MicroK8s's answer), or 503
//! `{"status":"degraded","reason":…}` while this node's member cannot write or the cluster
//! no longer lists it (`cluster::health`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;

pub async fn health(State(app): State<AppState>) -> Response {
    match app.node.health().degraded() {
        None => Json(json!({"status": "OK"})).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "reason": why.to_string()})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use crate::api::{router, AppState};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tower::ServiceExt;

    fn app() -> axum::Router {
        let (node, _) = crate::cluster::node::Node::for_test(std::path::Path::new("/nonexistent"));
        let limiter = crate::api::ratelimit::RateLimiter::new(10, Duration::from_secs(60));
        router(
            AppState::new(node, limiter, Default::default()),
            Duration::from_secs(5),
        )
    }

    async fn call(method: &str, uri: &str) -> (StatusCode, String) {
        let resp = app()
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_ok() {
        assert_eq!(
            call("GET", "/health").await,
            (StatusCode::OK, r#"{"status":"OK"}"#.into())
        );
    }

    #[tokio::test]
    async fn wrong_method_is_empty_404() {
        assert_eq!(
            call("POST", "/health").await,
            (StatusCode::NOT_FOUND, String::new())
        );
    }

    #[tokio::test]
    async fn unknown_paths_are_json_404() {
        for path in ["/", "/health/", "/cluster/api/v9/join"] {
            assert_eq!(
                call("GET", path).await,
                (StatusCode::NOT_FOUND, r#"{"error":"Not found"}"#.into()),
                "{path}"
            );
        }
    }
}
