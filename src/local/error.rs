//! The kinds of failure of the local operations. Each operation has its own error type
//! (`AddNodeError`, `JoinError`, `LeaveError`, `RemoveError`); each variant names a stable
//! [`ErrorKind`], which the control socket carries next to the message and `cli::exit`
//! alone turns into a process exit code.

use serde::{Deserialize, Serialize};

/// Why a local operation failed, for scripts. The serialised names are part of the control
/// socket's wire format: never rename one, only add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// `add-node --token` with a token MicroK8s would refuse.
    AddNodeBadToken,
    /// `add-node` on a worker.
    AddNodeOnWorker,
    /// `add-node` while the datastore is unavailable (no token issued).
    AddNodeQuorumLost,
    JoinInvalidConnection,
    /// Node labels or taints Kubernetes would refuse.
    JoinBadRegistration,
    JoinAlreadyWorker,
    JoinAlreadyClustered,
    /// This node's own datastore membership cannot be read.
    JoinMembershipUnreadable,
    /// No dqlite member to join with (its wire name is from when only the embedded member
    /// could join).
    #[serde(rename = "join-needs-embedded-member")]
    JoinNoMember,
    JoinItself,
    JoinClockSkew,
    JoinUnreachable,
    /// The server did not prove the pinned identity (fingerprint or CA).
    JoinIdentityNotVerified,
    /// The server answered the join with an error status.
    JoinRefused,
    JoinLostContact,
    JoinUnexpectedAnswer,
    JoinUnsupportedCluster,
    JoinSignFailed,
    /// A backup of an earlier, unfinished join is in the way.
    JoinUnfinishedEarlier,
    /// Failed before this node changed anything.
    JoinNothingChanged,
    /// Failed while configuring; every change was undone.
    JoinRolledBack,
    /// Failed while configuring and the undo failed too.
    JoinRollbackFailed,
    LeaveNotClustered,
    /// This node holds the only vote of a multi-node cluster.
    LeaveOnlyVoter,
    LeaveWouldLoseQuorum,
    LeaveMembershipUnreadable,
    /// The datastore is unavailable: nothing was removed.
    LeaveQuorumLost,
    /// The role handover failed: nothing was removed.
    LeaveHandoverFailed,
    /// The cluster did not take this member out: nothing changed.
    LeaveDatastoreUnchanged,
    /// Removed from the cluster, but resetting this node to a single-node cluster failed.
    LeaveResetFailed,
    /// A worker's leave failed and every change was undone.
    LeaveRolledBack,
    RemoveOnWorker,
    RemoveNoNodeGiven,
    RemoveMembershipUnreadable,
    /// The datastore is unavailable: nothing was removed.
    RemoveQuorumLost,
    RemoveIsThisNode,
    RemoveNotMember,
    RemoveNeedsForce,
    RemoveAmbiguous,
    /// The cluster did not take the member out: nothing changed.
    RemoveDatastoreUnchanged,
    /// `token revoke` of an id that names no usable token (nothing was revoked).
    TokenUnknown,
    /// `status`: writes go on, but a member does not answer (or this node is not one).
    StatusDegraded,
    /// `status`: no membership answer, or quorum lost.
    StatusUnavailable,
    /// `recover` on a worker, or on a node without a dqlite member.
    RecoverNotControlPlane,
    /// `recover` while the cluster has its quorum (without `--force`).
    RecoverQuorumHolds,
    /// A survivor named with `--survivor` is not a member, or does not answer.
    RecoverBadSurvivor,
    /// Another recovery holds a survivor now.
    RecoverBusy,
    /// The survivors or their logs changed since the plan was shown.
    RecoverPlanChanged,
    /// The recovery stopped before it changed any survivor's data; every member runs again.
    RecoverNothingChanged,
    /// The recovery did not complete on every survivor: running it again finishes it.
    RecoverIncomplete,
    /// Another membership change is in progress on this node.
    Busy,
    /// An earlier change is recorded in the journal, not finished and not undone: a restart
    /// of the daemon settles it first.
    Unsettled,
    /// The daemon went away while it was doing the operation: its outcome is settled when it
    /// starts again.
    OutcomeUnknown,
    /// The command was interrupted (Ctrl-C, a lost terminal); the daemon carries on.
    Interrupted,
    /// A fault of this agent (see its log).
    Internal,
}

impl ErrorKind {
    /// Every kind, for tables and tests.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::AddNodeBadToken,
        ErrorKind::AddNodeOnWorker,
        ErrorKind::AddNodeQuorumLost,
        ErrorKind::JoinInvalidConnection,
        ErrorKind::JoinBadRegistration,
        ErrorKind::JoinAlreadyWorker,
        ErrorKind::JoinAlreadyClustered,
        ErrorKind::JoinMembershipUnreadable,
        ErrorKind::JoinNoMember,
        ErrorKind::JoinItself,
        ErrorKind::JoinClockSkew,
        ErrorKind::JoinUnreachable,
        ErrorKind::JoinIdentityNotVerified,
        ErrorKind::JoinRefused,
        ErrorKind::JoinLostContact,
        ErrorKind::JoinUnexpectedAnswer,
        ErrorKind::JoinUnsupportedCluster,
        ErrorKind::JoinSignFailed,
        ErrorKind::JoinUnfinishedEarlier,
        ErrorKind::JoinNothingChanged,
        ErrorKind::JoinRolledBack,
        ErrorKind::JoinRollbackFailed,
        ErrorKind::LeaveNotClustered,
        ErrorKind::LeaveOnlyVoter,
        ErrorKind::LeaveWouldLoseQuorum,
        ErrorKind::LeaveMembershipUnreadable,
        ErrorKind::LeaveQuorumLost,
        ErrorKind::LeaveHandoverFailed,
        ErrorKind::LeaveDatastoreUnchanged,
        ErrorKind::LeaveResetFailed,
        ErrorKind::LeaveRolledBack,
        ErrorKind::RemoveOnWorker,
        ErrorKind::RemoveNoNodeGiven,
        ErrorKind::RemoveMembershipUnreadable,
        ErrorKind::RemoveQuorumLost,
        ErrorKind::RemoveIsThisNode,
        ErrorKind::RemoveNotMember,
        ErrorKind::RemoveNeedsForce,
        ErrorKind::RemoveAmbiguous,
        ErrorKind::RemoveDatastoreUnchanged,
        ErrorKind::TokenUnknown,
        ErrorKind::StatusDegraded,
        ErrorKind::StatusUnavailable,
        ErrorKind::RecoverNotControlPlane,
        ErrorKind::RecoverQuorumHolds,
        ErrorKind::RecoverBadSurvivor,
        ErrorKind::RecoverBusy,
        ErrorKind::RecoverPlanChanged,
        ErrorKind::RecoverNothingChanged,
        ErrorKind::RecoverIncomplete,
        ErrorKind::Busy,
        ErrorKind::Unsettled,
        ErrorKind::OutcomeUnknown,
        ErrorKind::Interrupted,
        ErrorKind::Internal,
    ];

    /// The commands that can fail with this kind.
    pub fn commands(self) -> &'static [&'static str] {
        const MEMBERSHIP: &[&str] = &["join", "leave", "remove-node"];
        const ALL: &[&str] = &[
            "add-node",
            "join",
            "leave",
            "remove-node",
            "token",
            "status",
            "recover",
        ];
        match self {
            ErrorKind::Busy
            | ErrorKind::Unsettled
            | ErrorKind::OutcomeUnknown
            | ErrorKind::Interrupted => MEMBERSHIP,
            ErrorKind::Internal => ALL,
            other => {
                let name = serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                ALL.iter()
                    .find(|command| {
                        let prefix = command.trim_end_matches("-node");
                        name.starts_with(&format!("{prefix}-"))
                    })
                    .map(std::slice::from_ref)
                    .unwrap_or(ALL)
            }
        }
    }
}

/// The text of a refusal because an earlier change is still in the journal.
pub const UNSETTLED: &str = "An earlier join or leave on this node did not finish and could not be undone (see the daemon's log). Restart the cluster-agent daemon: it finishes or undoes that change before it serves anything. Then try again.";

/// Takes the slot for a membership change: refused while another runs, or while an earlier
/// one is still recorded in the journal (starting a new one would overwrite the copy of the
/// files that change saved).
pub fn begin<E>(
    node: &crate::cluster::node::Node,
    operation: &'static str,
) -> Result<crate::cluster::operation::Ticket, E>
where
    E: From<crate::cluster::operation::InProgress>
        + From<Unsettled>
        + From<crate::state::StateError>,
{
    let ticket = node.operations().begin(operation)?;
    if crate::cluster::journal::Journal::new(node.state()).pending()? {
        return Err(E::from(Unsettled));
    }
    Ok(ticket)
}

/// An earlier change is still recorded in the journal.
#[derive(Debug, Clone, Copy)]
pub struct Unsettled;

/// The refusal of an operation that found another one in progress.
pub fn busy_message(running: &crate::cluster::operation::InProgress) -> String {
    format!(
        "Another operation is in progress on this node: {} ({}, for {} s). Wait for it to end; `cluster-agent status` shows it.",
        running.operation, running.step, running.running_for_secs
    )
}

/// A local operation's error: its message is for the user as it is, its kind for scripts.
pub trait Refusal: std::error::Error {
    fn kind(&self) -> ErrorKind;
}

/// A refusal as it crosses a process boundary (the control socket) or leaves the CLI:
/// the message and the kind, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct Failed {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failed {
    pub fn from_refusal(e: &dyn Refusal) -> Failed {
        Failed {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// The conversions every membership change's error has: another change in progress is
/// `Busy`; a state file it cannot read or a worker task that died is `Internal`.
macro_rules! membership_change_error {
    ($error:ident) => {
        impl From<crate::cluster::operation::InProgress> for $error {
            fn from(running: crate::cluster::operation::InProgress) -> Self {
                $error::Busy(crate::local::error::busy_message(&running))
            }
        }
        impl From<crate::local::error::Unsettled> for $error {
            fn from(_: crate::local::error::Unsettled) -> Self {
                $error::Unsettled
            }
        }
        crate::util::internal_from!(
            $error: crate::sys::blocking::TaskFailed,
            crate::state::StateError
        );
    };
}
pub(crate) use membership_change_error;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_stable_names_and_commands() {
        assert_eq!(
            serde_json::to_value(ErrorKind::JoinIdentityNotVerified).unwrap(),
            "join-identity-not-verified"
        );
        assert_eq!(ErrorKind::RemoveNeedsForce.commands(), ["remove-node"]);
        assert_eq!(ErrorKind::AddNodeBadToken.commands(), ["add-node"]);
        assert_eq!(ErrorKind::LeaveOnlyVoter.commands(), ["leave"]);
        assert_eq!(ErrorKind::Internal.commands().len(), 7);
        assert_eq!(ErrorKind::StatusDegraded.commands(), ["status"]);
        assert_eq!(ErrorKind::TokenUnknown.commands(), ["token"]);
        assert_eq!(ErrorKind::Busy.commands(), ["join", "leave", "remove-node"]);
        let names: std::collections::BTreeSet<String> = ErrorKind::ALL
            .iter()
            .map(|k| {
                serde_json::to_value(k)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names.len(), ErrorKind::ALL.len(), "every kind listed once");
    }
}
