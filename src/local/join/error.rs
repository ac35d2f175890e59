//! Why `join` failed, from the joining node's side.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::local::error::{ErrorKind, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The connection string is malformed (MicroK8s's `Invalid connection: …` texts).
    #[error("{0}")]
    InvalidConnection(String),
    /// `--node-labels` or `--register-with-taints` that Kubernetes would refuse.
    #[error("{0}. Nothing was changed.")]
    BadRegistration(String),
    #[error("This node is already a worker of a cluster. Run 'cluster-agent leave' first.")]
    AlreadyWorker,
    #[error("This node is already part of a cluster with other members. Run 'cluster-agent leave' first.")]
    AlreadyClustered,
    /// This node's own datastore did not answer: joining would replace data that may be
    /// the only copy of a cluster that lost quorum.
    #[error("Cannot read this node's datastore membership ({0}). Joining would replace its data; if this node's cluster lost quorum, recover it first. Nothing was changed.")]
    MembershipUnreadable(String),
    /// There is no member to replace: no embedded one, or k8s-dqlite never started one.
    #[error("This node has no dqlite member to join with: {0}. Nothing was changed.")]
    NoMember(String),
    #[error("{0} is this node: a node cannot join itself. Run the join command on the node you want to add.")]
    JoiningItself(SocketAddr),
    #[error("The clocks of this node and {peer} differ by {skew_secs}s (more than {max_secs}s). Synchronise them (e.g. with NTP) and retry.")]
    ClockSkew {
        peer: IpAddr,
        skew_secs: u64,
        max_secs: u64,
    },
    /// The server did not prove the pinned identity.
    #[error("Joining cluster failed. Could not verify the identity of {0}. Use '--skip-verify' to skip server certificate check.")]
    IdentityNotVerified(IpAddr),
    #[error("Could not reach the cluster ({0}). Check the address and that the cluster agent port is reachable from this node.")]
    Unreachable(String),
    #[error("Please ensure the master node is reachable. {0}")]
    LostContact(String),
    /// The server refused the join: MicroK8s's `Connection failed. <error> (<status>).`
    #[error("{0}")]
    Refused(String),
    #[error("The cluster answered with an unexpected join response: {0}")]
    UnexpectedAnswer(String),
    #[error("Joining process failed. Make sure the cluster you connect to supports joining worker nodes.")]
    NotAWorkerCluster,
    #[error("The cluster's answer lacks the CA key or the dqlite certificate and voters: it does not accept control-plane nodes this way.")]
    NotAControlPlaneCluster,
    #[error("{0}")]
    SignFailed(String),
    #[error("{backup} exists: an earlier join did not finish. It holds this node's previous datastore; move it back to {backend} or delete it, then join again.")]
    UnfinishedEarlierJoin { backup: PathBuf, backend: PathBuf },
    #[error("Join failed before changing anything on this node: {0}")]
    NothingChanged(String),
    /// Configuring this node failed; every change was undone.
    #[error("Join failed while configuring this node: {cause}. {restored} Fix the cause and join again with a new token.")]
    RolledBack { cause: String, restored: String },
    /// Configuring this node failed and so did undoing it.
    #[error("Join failed while configuring this node: {cause}. {restore_error} Fix the cause and join again with a new token.")]
    RollbackFailed {
        cause: String,
        restore_error: String,
    },
    /// Another membership change is in progress on this node.
    #[error("{0}")]
    Busy(String),
    /// An earlier change is still recorded in the journal.
    #[error("{}", crate::local::error::UNSETTLED)]
    Unsettled,
    /// The daemon is stopping: the change ended between two journaled steps.
    #[error("The cluster-agent daemon is stopping: the join stopped between two of its steps. The daemon finishes or undoes it when it starts again; then `cluster-agent status` shows where this node stands.")]
    Stopped,
    #[error("{0}")]
    Internal(String),
}

impl Refusal for JoinError {
    fn kind(&self) -> ErrorKind {
        match self {
            JoinError::InvalidConnection(_) => ErrorKind::JoinInvalidConnection,
            JoinError::BadRegistration(_) => ErrorKind::JoinBadRegistration,
            JoinError::AlreadyWorker => ErrorKind::JoinAlreadyWorker,
            JoinError::AlreadyClustered => ErrorKind::JoinAlreadyClustered,
            JoinError::MembershipUnreadable(_) => ErrorKind::JoinMembershipUnreadable,
            JoinError::NoMember(_) => ErrorKind::JoinNoMember,
            JoinError::JoiningItself(_) => ErrorKind::JoinItself,
            JoinError::ClockSkew { .. } => ErrorKind::JoinClockSkew,
            JoinError::IdentityNotVerified(_) => ErrorKind::JoinIdentityNotVerified,
            JoinError::Unreachable(_) => ErrorKind::JoinUnreachable,
            JoinError::LostContact(_) => ErrorKind::JoinLostContact,
            JoinError::Refused(_) => ErrorKind::JoinRefused,
            JoinError::UnexpectedAnswer(_) => ErrorKind::JoinUnexpectedAnswer,
            JoinError::NotAWorkerCluster | JoinError::NotAControlPlaneCluster => {
                ErrorKind::JoinUnsupportedCluster
            }
            JoinError::SignFailed(_) => ErrorKind::JoinSignFailed,
            JoinError::UnfinishedEarlierJoin { .. } => ErrorKind::JoinUnfinishedEarlier,
            JoinError::NothingChanged(_) => ErrorKind::JoinNothingChanged,
            JoinError::RolledBack { .. } => ErrorKind::JoinRolledBack,
            JoinError::RollbackFailed { .. } => ErrorKind::JoinRollbackFailed,
            JoinError::Busy(_) => ErrorKind::Busy,
            JoinError::Unsettled => ErrorKind::Unsettled,
            JoinError::Stopped => ErrorKind::OutcomeUnknown,
            JoinError::Internal(_) => ErrorKind::Internal,
        }
    }
}

crate::local::error::membership_change_error!(JoinError);
