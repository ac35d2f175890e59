//! The control socket's wire format: `/v3/local/*` requests and answers are the local
//! operations' own types (listed here so the socket's whole contract is in one place), and
//! a refusal is `{"error": "<message>", "kind": "<ErrorKind>"}`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::local::add_node::{AddNodeRequest, AddNodeResponse};
pub use crate::local::error::{ErrorKind, Failed};
pub use crate::local::join::{JoinClusterRequest, JoinClusterResponse};
pub use crate::local::leave::LeaveResponse;
pub use crate::local::recover::{RecoverRequest, RecoverResponse, RecoveryPlan};
pub use crate::local::remove_node::{RemoveNodeRequest, RemoveNodeResponse};
pub use crate::local::status::StatusReport;
pub use crate::local::tokens::{RevokeRequest, RevokeResponse, TokenList};

/// `GET /v3/local/info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub version: String,
    pub pid: u32,
    pub state_dir: PathBuf,
    pub bind: String,
}

/// The body of a refusal. `kind` is absent when the daemon could not say (a request it
/// could not read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refused {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

pub const INFO: &str = "/v3/local/info";
pub const ADD_NODE: &str = "/v3/local/add-node";
pub const STATUS: &str = "/v3/local/status";
pub const JOIN: &str = "/v3/local/join";
pub const LEAVE: &str = "/v3/local/leave";
pub const REMOVE_NODE: &str = "/v3/local/remove-node";
pub const RECOVER: &str = "/v3/local/recover";
pub const TOKENS: &str = "/v3/local/tokens";
pub const TOKENS_REVOKE: &str = "/v3/local/tokens/revoke";
