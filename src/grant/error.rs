//! Why a request to :25000 was not granted. Each variant is one kind of refusal; its text is
//! MicroK8s's where MicroK8s has one (its clients print it).

use crate::cluster::datastore::DatastoreError;
use crate::cluster::tokens::TokenError;
use crate::format::decode::DecodeError;
use crate::state::StateError;
use crate::sys::blocking::TaskFailed;

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Invalid token")]
    InvalidToken,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The cluster's datastore cannot take a member now (no leader, or quorum lost).
    #[error("The cluster's datastore is unavailable ({0}): no node can join it now. Nothing was consumed.")]
    Unavailable(String),
    /// A valid token that does not admit this kind of node (worker or control plane).
    #[error("{0}")]
    WrongRole(String),
    #[error("Not possible to join. This is not an HA MicroK8s cluster")]
    NotHa,
    #[error("The port of the cluster agent port has to be set to {0}")]
    PortMismatch(String),
    #[error("The joining node has the same IP ({0}) as the node we contact")]
    SameIp(String),
    #[error("The hostname ({hostname}) of the joining node does not resolve to the IP \"{ip}\". Refusing join")]
    HostnameMismatch { hostname: String, ip: String },
    /// Something else holds what the request needs now (another recovery run).
    #[error("{0}")]
    Conflict(String),
    /// A refusal or failure whose text the client should see, answered with 500 as MicroK8s.
    #[error("{0}")]
    Refused(String),
    /// Our own fault; details are logged, not sent.
    #[error("{0}")]
    Internal(String),
}

impl From<TokenError> for GrantError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::TooShort | TokenError::BadCharacters => {
                GrantError::BadRequest(e.to_string())
            }
            other => GrantError::Internal(other.to_string()),
        }
    }
}

impl From<DatastoreError> for GrantError {
    fn from(e: DatastoreError) -> Self {
        GrantError::Refused(format!("Failed to retrieve dqlite cluster nodes: {e}"))
    }
}

impl From<DecodeError> for GrantError {
    fn from(e: DecodeError) -> Self {
        GrantError::BadRequest(e.0)
    }
}

crate::util::internal_from!(GrantError: StateError, TaskFailed);
