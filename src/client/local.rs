//! HTTP/1.1 over the daemon's control socket (`run/cluster-agent.sock`).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot reach the cluster-agent daemon at {path}: {reason}. Is it running? (start it with `cluster-agent daemon`)")]
    Unreachable { path: PathBuf, reason: String },
    /// A refusal of the requested operation: its message is for the user as it is.
    #[error("{message}")]
    Daemon {
        status: u16,
        message: String,
        exit_code: Option<u8>,
    },
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
}

pub struct LocalClient {
    socket: PathBuf,
}

impl LocalClient {
    pub fn new(socket: &Path) -> Self {
        LocalClient {
            socket: socket.to_path_buf(),
        }
    }

    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, LocalError> {
        self.call("GET", path, Bytes::new()).await
    }

    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, LocalError> {
        let body = serde_json::to_vec(body).map_err(|e| LocalError::Protocol(e.to_string()))?;
        self.call("POST", path, Bytes::from(body)).await
    }

    async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<R, LocalError> {
        let unreachable = |reason: String| LocalError::Unreachable {
            path: self.socket.clone(),
            reason,
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "local")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| LocalError::Protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| LocalError::Protocol(e.to_string()))?
            .to_bytes();
        if status != 200 {
            let json = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
            let message = json
                .as_ref()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            let exit_code = json
                .as_ref()
                .and_then(|v| v.get("exit_code").and_then(|c| c.as_u64()))
                .and_then(|c| u8::try_from(c).ok());
            return Err(LocalError::Daemon {
                status,
                message,
                exit_code,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| LocalError::Protocol(e.to_string()))
    }
}
