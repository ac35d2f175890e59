//! The one table from failures to process exit codes. Operations say *what* went wrong
//! (`local::error::ErrorKind`, carried over the control socket); only this module says
//! which number a script sees. Codes are MicroK8s's where it has them.

use crate::control::client::LocalError;
use crate::local::error::{ErrorKind, Failed};

pub const OK: u8 = 0;
/// Anything that went wrong and has no code of its own.
pub const FAILURE: u8 = 1;
/// A bad command line (clap exits with it; nothing else uses it).
pub const USAGE: u8 = 2;
/// `leave`: this node holds the only vote of a multi-node cluster (MicroK8s's 3).
pub const ONLY_VOTER: u8 = 3;
/// `join`: the server's identity could not be verified (MicroK8s's 4).
pub const UNVERIFIED: u8 = 4;
/// `leave`, `remove-node`: the cluster did not apply the membership change; nothing changed.
pub const DATASTORE_UNCHANGED: u8 = 5;
/// `join`: the server refused the join (MicroK8s's 6).
pub const REFUSED: u8 = 6;
/// `status`: the datastore is degraded (a member does not answer, or this node is not one).
pub const STATUS_DEGRADED: u8 = 3;
/// `status`: the datastore is unavailable (no membership answer, or quorum lost); `add-node`,
/// `leave`, `remove-node`: refused for that reason, nothing changed.
pub const STATUS_UNAVAILABLE: u8 = 4;
/// `recover`: the recovery did not complete on every survivor; running it again finishes it.
pub const RECOVER_INCOMPLETE: u8 = 5;
/// The command was interrupted (128 + SIGINT, as shells report it); the daemon goes on.
pub const INTERRUPTED: u8 = 130;

/// The exit code of a failure of `kind`.
pub fn code(kind: ErrorKind) -> u8 {
    use ErrorKind::*;
    match kind {
        JoinIdentityNotVerified => UNVERIFIED,
        JoinRefused => REFUSED,
        LeaveOnlyVoter => ONLY_VOTER,
        LeaveDatastoreUnchanged | RemoveDatastoreUnchanged => DATASTORE_UNCHANGED,
        Interrupted => INTERRUPTED,
        RecoverIncomplete => RECOVER_INCOMPLETE,
        StatusDegraded => STATUS_DEGRADED,
        StatusUnavailable | AddNodeQuorumLost | LeaveQuorumLost | RemoveQuorumLost => {
            STATUS_UNAVAILABLE
        }
        AddNodeBadToken
        | AddNodeOnWorker
        | JoinInvalidConnection
        | JoinBadRegistration
        | JoinAlreadyWorker
        | JoinAlreadyClustered
        | JoinMembershipUnreadable
        | JoinNoMember
        | JoinItself
        | JoinClockSkew
        | JoinUnreachable
        | JoinLostContact
        | JoinUnexpectedAnswer
        | JoinUnsupportedCluster
        | JoinSignFailed
        | JoinUnfinishedEarlier
        | JoinNothingChanged
        | JoinRolledBack
        | JoinRollbackFailed
        | LeaveNotClustered
        | LeaveWouldLoseQuorum
        | LeaveMembershipUnreadable
        | LeaveHandoverFailed
        | LeaveResetFailed
        | LeaveRolledBack
        | RemoveOnWorker
        | RemoveNoNodeGiven
        | RemoveMembershipUnreadable
        | RemoveIsThisNode
        | RemoveNotMember
        | RemoveNeedsForce
        | RemoveAmbiguous
        | TokenUnknown
        | RecoverNotControlPlane
        | RecoverQuorumHolds
        | RecoverBadSurvivor
        | RecoverBusy
        | RecoverPlanChanged
        | RecoverNothingChanged
        | Busy
        | Unsettled
        | OutcomeUnknown
        | Internal => FAILURE,
    }
}

/// The exit code for an error that ended a command.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(failed) = cause.downcast_ref::<Failed>() {
            return code(failed.kind);
        }
        if let Some(LocalError::Refused(failed)) = cause.downcast_ref::<LocalError>() {
            return code(failed.kind);
        }
    }
    FAILURE
}

/// The `--help` footers, listing each command's codes.
pub const HELP: &str = "Exit codes: 0 success, 1 failure, 2 usage error (more specific codes are listed in each command's --help).\n\
State directory: --state-dir, else $SNAP_DATA, else /var/snap/microk8s/current if it exists, \
else /var/lib/cluster-agent.";
pub const DAEMON_HELP: &str = "Exit codes: 0 stopped by SIGTERM/SIGINT, 1 a configuration, file or port problem (the message names it), 2 usage.";
pub const STATUS_HELP: &str = "Exit codes (the same whatever the format): 0 healthy, 1 no daemon answers, 2 usage, 3 degraded (a member does not answer or its log falls behind the leader's, or this node is not a member; writes go on), 4 datastore unavailable (no membership answer, or quorum lost).";
pub const APISERVER_PROXY_HELP: &str = "Exit codes: 0 stopped by SIGTERM/SIGINT after the drain, 1 a file is unreadable or malformed or the port cannot be bound, 2 usage.";
pub const INIT_HELP: &str = "Exit codes: 0 applied, 1 refused (nothing was changed) or failed (the message names the step), 2 usage.";
pub const TOKEN_HELP: &str = "Exit codes: 0 done, 1 failure (revoke: an id that names no usable token; nothing was revoked), 2 usage.";
pub const ADD_NODE_HELP: &str = "Exit codes: 0 token issued, 1 failure, 2 usage, 4 the datastore is unavailable (quorum lost): no token issued.";
pub const JOIN_HELP: &str = "Exit codes: 0 joined, 1 failure, 2 usage, 4 server identity not verified, 6 join refused by the server, 130 interrupted (the daemon goes on; see `status`).";
pub const LEAVE_HELP: &str = "Exit codes: 0 left, 1 failure, 2 usage, 3 this node holds the only copy of the datastore, 4 the datastore is unavailable (quorum lost): nothing changed, 5 the cluster did not remove this node (still a member; its role may have been handed over), 130 interrupted (the daemon goes on; see `status`).";
pub const RECOVER_HELP: &str = "Exit codes: 0 recovered (or the plan printed, with --dry-run), 1 refused or stopped before any survivor's data changed (the quorum holds, a survivor named is not a member or does not answer, another recovery runs, the plan changed, not confirmed), 2 usage, 5 the recovery did not complete on every survivor (their data was backed up; run recover again to finish), 130 interrupted (the daemon goes on; run recover again to see where it stands).";
pub const REMOVE_NODE_HELP: &str = "Exit codes: 0 removed, 1 refused or failed, 2 usage, 4 the datastore is unavailable (quorum lost): nothing changed, 5 the cluster did not remove the member (nothing changed), 130 interrupted (the daemon goes on; see `status`).";

#[cfg(test)]
mod tests {
    use super::*;

    fn help_of(command: &str) -> &'static str {
        match command {
            "add-node" => ADD_NODE_HELP,
            "join" => JOIN_HELP,
            "leave" => LEAVE_HELP,
            "remove-node" => REMOVE_NODE_HELP,
            "token" => TOKEN_HELP,
            "status" => STATUS_HELP,
            "recover" => RECOVER_HELP,
            other => panic!("no help for {other}"),
        }
    }

    #[test]
    fn every_code_a_command_can_exit_with_is_in_its_help() {
        for kind in ErrorKind::ALL {
            let code = code(*kind);
            for command in kind.commands() {
                let help = help_of(command);
                assert!(
                    help.contains(&format!(" {code} ")),
                    "{command} --help does not list {code} ({kind:?}): {help}"
                );
            }
        }
    }

    #[test]
    fn two_is_only_ever_a_usage_error() {
        assert!(ErrorKind::ALL.iter().all(|k| code(*k) != USAGE));
    }

    #[test]
    fn refusals_from_the_daemon_and_the_cli_map_the_same() {
        let failed = Failed {
            kind: ErrorKind::JoinRefused,
            message: "Connection failed. Invalid token (500).".into(),
        };
        let direct = anyhow::Error::new(failed.clone());
        let remote = anyhow::Error::new(LocalError::Refused(failed));
        assert_eq!(exit_code(&direct), REFUSED);
        assert_eq!(exit_code(&remote), REFUSED);
        assert_eq!(exit_code(&anyhow::anyhow!("anything else")), FAILURE);
    }
}
