//! `token list` and `token revoke` on the daemon side: the node's usable tokens (ids, never
//! secrets) and their removal, each revoke in the audit log.

use serde::{Deserialize, Serialize};

use super::error::{ErrorKind, Refusal};
use crate::cluster::audit::{now_rfc3339, AuditEntry, LOCAL};
use crate::cluster::node::Node;
use crate::cluster::tokens::{TokenError, TokenInfo};
use crate::sys::blocking::{blocking, TaskFailed};

#[derive(Debug, thiserror::Error)]
pub enum TokenCommandError {
    /// An id (or token) that names no usable token; nothing was revoked.
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Internal(String),
}

impl Refusal for TokenCommandError {
    fn kind(&self) -> ErrorKind {
        match self {
            TokenCommandError::Unknown(_) => ErrorKind::TokenUnknown,
            TokenCommandError::Internal(_) => ErrorKind::Internal,
        }
    }
}

crate::util::internal_from!(TokenCommandError: TaskFailed);

impl From<TokenError> for TokenCommandError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Unknown(_) => TokenCommandError::Unknown(e.to_string()),
            other => TokenCommandError::Internal(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// Ids (`token list`) or the tokens themselves.
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeResponse {
    pub revoked: Vec<String>,
}

pub async fn list(node: &Node) -> Result<TokenList, TokenCommandError> {
    let node = node.clone();
    blocking(move || {
        Ok(TokenList {
            tokens: node.tokens().list()?,
        })
    })
    .await
}

pub async fn revoke(node: &Node, req: RevokeRequest) -> Result<RevokeResponse, TokenCommandError> {
    let node2 = node.clone();
    let revoked = blocking(move || -> Result<_, TokenCommandError> {
        Ok(node2.tokens().revoke(&req.tokens)?)
    })
    .await?;
    for id in &revoked {
        tracing::info!(token_id = %id, "token revoked");
        node.audit()
            .record(&AuditEntry {
                time: now_rfc3339(),
                source: LOCAL.to_string(),
                route: "token revoke",
                token_id: Some(id.clone()),
                result: "revoked",
                status: None,
                detail: None,
            })
            .await;
    }
    Ok(RevokeResponse { revoked })
}
