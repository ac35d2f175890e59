//! The operations behind the :25000 API and the control socket. They know nothing about
//! HTTP: inputs are plain structs, outputs are response structs or an [`OpError`] whose
//! variant says what went wrong; `api::error` alone turns that into a status code.
//!
//! Invariants: a request that fails validation changes nothing on disk; a join token is
//! consumed only once every check has passed; no secret is ever logged.

pub mod add_node;
pub mod calico;
pub mod callbacks;
pub mod decode;
pub mod join;
pub mod join_control_plane;
pub mod joiner;
pub mod leave;
pub mod remove_node;
pub mod sign_cert;
pub mod status;

use crate::datastore::DatastoreError;
use crate::state::StateError;
use crate::tokens::TokenError;

/// Why an operation failed. `message` texts are MicroK8s's where MicroK8s has one.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Invalid token")]
    InvalidToken,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("Not possible to join. This is not an HA MicroK8s cluster")]
    NotHa,
    #[error("The port of the cluster agent port has to be set to {0}")]
    PortMismatch(String),
    #[error("The joining node has the same IP ({0}) as the node we contact")]
    SameIp(String),
    #[error("The hostname ({hostname}) of the joining node does not resolve to the IP \"{ip}\". Refusing join")]
    HostnameMismatch { hostname: String, ip: String },
    /// A refusal or failure whose text the client should see, answered with 500 as MicroK8s.
    #[error("{0}")]
    Refused(String),
    /// Our own fault; details are logged, not sent.
    #[error("{0}")]
    Internal(String),
    /// A CLI-facing failure with the exit code scripts expect (MicroK8s's where it has one).
    #[error("{message}")]
    Exit { code: u8, message: String },
}

impl OpError {
    pub fn exit(code: u8, message: impl Into<String>) -> OpError {
        OpError::Exit {
            code,
            message: message.into(),
        }
    }
}

impl From<StateError> for OpError {
    fn from(e: StateError) -> Self {
        OpError::Internal(e.to_string())
    }
}

impl From<TokenError> for OpError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::TooShort | TokenError::BadCharacters => OpError::BadRequest(e.to_string()),
            other => OpError::Internal(other.to_string()),
        }
    }
}

impl From<DatastoreError> for OpError {
    fn from(e: DatastoreError) -> Self {
        OpError::Refused(format!("Failed to retrieve dqlite cluster nodes: {e}"))
    }
}

/// Runs blocking work (files, child processes) off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OpError::Internal(format!("worker task failed: {e}")))?
}
