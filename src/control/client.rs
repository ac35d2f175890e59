//! HTTP/1.1 over the daemon's control socket (`run/cluster-agent.sock`).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::wire::{ErrorKind, Failed};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot reach the cluster-agent daemon at {path}: {reason}. Is it running? (start it with `cluster-agent daemon`)")]
    Unreachable { path: PathBuf, reason: String },
    /// The request went out but no answer came back: the daemon stopped (or crashed) while
    /// it was working on it.
    #[error("the cluster-agent daemon at {path} stopped answering: {reason}")]
    Lost { path: PathBuf, reason: String },
    /// A refusal of the requested operation: its message is for the user as it is.
    #[error("{0}")]
    Refused(Failed),
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
            .map_err(|e| LocalError::Lost {
                path: self.socket.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| LocalError::Lost {
                path: self.socket.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        if status != 200 {
            return Err(LocalError::Refused(refusal(&bytes)));
        }
        serde_json::from_slice(&bytes).map_err(|e| LocalError::Protocol(e.to_string()))
    }
}

/// The refusal in a non-200 answer. A kind this client does not know (a newer daemon) or
/// none at all reads as `Internal`; the message is kept either way.
fn refusal(body: &[u8]) -> Failed {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok();
    let message = value
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let kind = value
        .and_then(|mut v| v.get_mut("kind").map(serde_json::Value::take))
        .and_then(|k| serde_json::from_value(k).ok())
        .unwrap_or(ErrorKind::Internal);
    Failed { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_kind_and_message() {
        let known = refusal(br#"{"error":"no","kind":"leave-only-voter"}"#);
        assert_eq!(known.kind, ErrorKind::LeaveOnlyVoter);
        assert_eq!(known.message, "no");
        let unknown = refusal(br#"{"error":"later","kind":"a-kind-from-the-future"}"#);
        assert_eq!(
            (unknown.kind, unknown.message.as_str()),
            (ErrorKind::Internal, "later")
        );
        assert_eq!(refusal(b"plain").message, "plain");
    }
}
