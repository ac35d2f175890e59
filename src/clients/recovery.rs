//! The coordinator's client to another survivor's recovery calls (`format::recovery`): HTTPS
//! to its :25000, the server proven by the cluster CA, each request signed with the cluster's
//! dqlite key (`util::mac`), so only a member of the same cluster can drive a survivor's
//! recovery and no join token is ever used for it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::peer::{self, Pin};
use crate::format::recovery::PROOF_HEADER;
use crate::util::errtext::error_chain;

/// Largest answer read (the winner's raft files).
pub const MAX_ANSWER_BYTES: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: refused, unreachable, timed out, cut off.
    #[error("{0}")]
    Transport(String),
    /// The survivor answered with an error.
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
}

/// Signs and sends recovery calls.
#[derive(Clone)]
pub struct RecoveryClient {
    key: Vec<u8>,
    ca_sha256: String,
    local: Option<IpAddr>,
}

impl std::fmt::Debug for RecoveryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryClient")
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

impl RecoveryClient {
    /// `key`: the cluster's `cluster.key` (as bytes); `ca_sha256`: the cluster CA's digest.
    pub fn new(key: Vec<u8>, ca_sha256: String, local: Option<IpAddr>) -> RecoveryClient {
        RecoveryClient {
            key,
            ca_sha256,
            local,
        }
    }

    /// `POST path` with `body` to the survivor whose agent is at `agent`; the answer's body.
    pub async fn call(
        &self,
        agent: SocketAddr,
        path: &str,
        body: Vec<u8>,
        now_unix: i64,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let client = peer::client(Pin::Ca(self.ca_sha256.clone()), self.local, timeout)
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let proof = crate::util::mac::request_proof(&self.key, now_unix, "POST", path, &body);
        let send = client
            .post(format!("{}{path}", peer::base_url(agent)))
            .header(PROOF_HEADER, proof)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send();
        let mut response = send
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?;
        let status = response.status().as_u16();
        let mut answer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?
        {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(CallError::Transport(format!(
                    "the answer is larger than {} MiB",
                    MAX_ANSWER_BYTES >> 20
                )));
            }
            answer.extend_from_slice(&chunk);
        }
        if status >= 300 {
            let message = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
            return Err(CallError::Refused { status, message });
        }
        Ok(answer)
    }
}
