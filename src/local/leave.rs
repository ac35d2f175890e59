//! `leave` on this node. A control plane hands its role over, has the cluster remove it, and
//! starts again as a fresh single-node cluster; one the cluster no longer lists (removed with
//! `remove-node --force`, or a leave cut short) is just reset. A worker goes back to a
//! working standalone node: its own CA, fresh kubeconfigs, default kubelet and kube-proxy
//! arguments (MicroK8s leaves a worker unable to start here, #3708).
//!
//! Crash-safe: the journal records the removal before it is asked for and the reset before
//! it starts, so a daemon killed at any step finishes the leave (or finds it never happened)
//! when it starts again. Writes: see `local::reset`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{ErrorKind, Refusal};
use super::reset;
use crate::cluster::journal::{Change, Journal, LeaveStep, Record};
use crate::cluster::node::Node;
use crate::cluster::operation::Ticket;
use crate::cluster::roles::driver::{handover, Handover};
use crate::dqlite::external::ExternalMember;
use crate::sys::blocking::blocking;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaveResponse {
    pub messages: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    #[error("This MicroK8s deployment is not acting as a node in a cluster.")]
    NotClustered,
    /// MicroK8s's refusal when this node holds the only vote of a multi-node cluster.
    #[error("This node currently holds the only copy of the Kubernetes database so it cannot leave the cluster.\nTo remove this node you can either first remove all other nodes with 'remove-node' or\nform a highly available cluster by adding at least three nodes.")]
    OnlyVoter,
    #[error("Leaving now would stop the cluster: without this node only {live_voters} of the other {voters} voters are reachable, which is not a quorum. Bring the unreachable voters back, or remove them with 'remove-node --force', then leave.")]
    WouldLoseQuorum { live_voters: usize, voters: usize },
    #[error("Cannot read the cluster membership: {0}")]
    MembershipUnreadable(String),
    /// No leader answers, or too few voters for a quorum: nothing can be removed.
    #[error("The cluster's datastore is unavailable ({0}). Nothing was changed. `cluster-agent status` shows which members answer; bring the missing voters back, or rebuild the cluster from the members that answer with `cluster-agent recover`, first.")]
    QuorumLost(String),
    /// The handover could not be finished, so whether the others keep a quorum without
    /// this member is not known: nothing was removed.
    #[error("Handing this member's role over failed ({0}); it was not removed from the cluster. Retry the leave once the cluster is healthy.")]
    HandoverFailed(String),
    /// The cluster did not take this member out: it is still a member (its role may have
    /// been handed over already).
    #[error("Contacting the cluster to remove {address} failed. Error: {error}. This node is still a member of the cluster (its role may have been handed over).")]
    DatastoreUnchanged { address: String, error: String },
    /// Whether the cluster removed this member is not known (the journal keeps it).
    #[error("{0}")]
    OutcomeUnknown(String),
    /// This member was removed from the cluster, but the reset that follows failed; the
    /// daemon finishes it when it starts again.
    #[error("{0}. This node is out of its cluster; restart the cluster-agent daemon to finish resetting it to a single-node cluster.")]
    ResetFailed(String),
    /// A worker's leave failed; every file was restored.
    #[error("Leaving failed: {0}. This node was restored to its previous state.")]
    RolledBack(String),
    /// Another membership change is in progress on this node.
    #[error("{0}")]
    Busy(String),
    /// An earlier change is still recorded in the journal.
    #[error("{}", crate::local::error::UNSETTLED)]
    Unsettled,
    /// The daemon is stopping: the change ended between two journaled steps.
    #[error("The cluster-agent daemon is stopping: the leave stopped between two of its steps. The daemon finishes or undoes it when it starts again; then `cluster-agent status` shows where this node stands.")]
    Stopped,
    #[error("{0}")]
    Internal(String),
}

impl Refusal for LeaveError {
    fn kind(&self) -> ErrorKind {
        match self {
            LeaveError::NotClustered => ErrorKind::LeaveNotClustered,
            LeaveError::OnlyVoter => ErrorKind::LeaveOnlyVoter,
            LeaveError::WouldLoseQuorum { .. } => ErrorKind::LeaveWouldLoseQuorum,
            LeaveError::MembershipUnreadable(_) => ErrorKind::LeaveMembershipUnreadable,
            LeaveError::QuorumLost(_) => ErrorKind::LeaveQuorumLost,
            LeaveError::HandoverFailed(_) => ErrorKind::LeaveHandoverFailed,
            LeaveError::DatastoreUnchanged { .. } => ErrorKind::LeaveDatastoreUnchanged,
            LeaveError::OutcomeUnknown(_) => ErrorKind::OutcomeUnknown,
            LeaveError::ResetFailed(_) => ErrorKind::LeaveResetFailed,
            LeaveError::RolledBack(_) => ErrorKind::LeaveRolledBack,
            LeaveError::Busy(_) => ErrorKind::Busy,
            LeaveError::Unsettled => ErrorKind::Unsettled,
            LeaveError::Stopped => ErrorKind::OutcomeUnknown,
            LeaveError::Internal(_) => ErrorKind::Internal,
        }
    }
}

crate::local::error::membership_change_error!(LeaveError);

pub async fn leave(node: &Node) -> Result<LeaveResponse, LeaveError> {
    let ticket = crate::local::error::begin::<LeaveError>(node, "leave")?;
    if node.state().has_marker("clustered.lock") {
        ticket.step("resetting this worker to a standalone node");
        let node2 = node.clone();
        let journal = blocking(move || {
            let journal = Journal::new(node2.state());
            journal.save_files(&reset::worker_reset_touches(node2.state()))?;
            journal.record(&Record {
                change: Change::LeaveWorker,
                started: node2.clock().now_unix(),
            })?;
            Ok::<_, LeaveError>(journal)
        })
        .await?;
        node.checkpoint("leave-worker")
            .await
            .map_err(|_| LeaveError::Stopped)?;
        let node2 = node.clone();
        return blocking(move || leave_worker(&node2, &journal)).await;
    }
    leave_control_plane(node, &ticket).await
}

/// A control plane hands its role over, removes itself from the cluster, and starts again as
/// a fresh single-node cluster with new certificates. Either datastore: the embedded
/// member, or the one k8s-dqlite hosts (which is then stopped, reset and started again).
async fn leave_control_plane(node: &Node, ticket: &Ticket) -> Result<LeaveResponse, LeaveError> {
    let live = node.own_member().ok_or(LeaveError::NotClustered)?;
    ticket.step("checking the datastore");
    if let Some(why) = crate::local::status::unavailable(node).await {
        return Err(LeaveError::QuorumLost(why));
    }
    // k8s-dqlite's fresh member keeps this member's address.
    let member_address = node
        .settings()
        .external_datastore
        .then(|| live.own_address.clone());
    let members = live
        .client
        .cluster()
        .await
        .map_err(|e| LeaveError::MembershipUnreadable(e.to_string()))?;
    let mut messages = Vec::new();
    if !members.iter().any(|m| m.id == live.own_id) {
        messages.push(format!(
            "This node ({}) was no longer a member of its cluster (removed with 'remove-node --force', or by a leave that did not finish).",
            live.own_address
        ));
        return reset(node, ticket, messages, member_address).await;
    }
    if members.len() <= 1 {
        return Err(LeaveError::NotClustered);
    }
    let voters: Vec<_> = members
        .iter()
        .filter(|m| m.role == crate::dqlite::Role::Voter)
        .collect();
    if voters.len() == 1 && voters[0].id == live.own_id {
        return Err(LeaveError::OnlyVoter);
    }
    let cfg = node.settings().roles.clone();
    ticket.step("handing this member's role over");
    match handover(&live.client, live.own_id, &cfg, Duration::from_secs(20)).await {
        Ok(Handover::KeptForQuorum {
            live_voters,
            voters,
        }) => {
            return Err(LeaveError::WouldLoseQuorum {
                live_voters,
                voters,
            });
        }
        Ok(_) => {}
        // Whether the others keep a quorum without this member is the handover's to check:
        // without its answer the removal does not go ahead.
        Err(e) => return Err(LeaveError::HandoverFailed(e)),
    }

    // From here the cluster decides: the journal says so before it is asked.
    ticket.step("removing this member from the cluster");
    let failure_domain = reset::current_failure_domain(node.state());
    let journal = Journal::new(node.state());
    let removing = Change::LeaveControlPlane {
        step: LeaveStep::Removing {
            id: live.own_id,
            address: live.own_address.clone(),
        },
        failure_domain,
        member_address: member_address.clone(),
    };
    record(node, &journal, removing).await?;
    node.checkpoint("leave-removing")
        .await
        .map_err(|_| LeaveError::Stopped)?;
    if let Err(e) = live.client.remove(live.own_id).await {
        // An answer can be lost after the change was applied: the cluster says which.
        let listed = live
            .client
            .cluster()
            .await
            .map(|m| m.iter().any(|n| n.id == live.own_id));
        let journal = journal.clone();
        match listed {
            Ok(true) => {
                blocking(move || journal.clear().map_err(LeaveError::from)).await?;
                return Err(LeaveError::DatastoreUnchanged {
                    address: live.own_address.clone(),
                    error: e.to_string(),
                });
            }
            Ok(false) => {}
            Err(unknown) => {
                // The journal stays: the daemon asks again when it starts.
                return Err(LeaveError::OutcomeUnknown(format!(
                    "Asking the cluster to remove {} failed ({e}) and it could not say afterwards whether it did ({unknown}). 'cluster-agent status' shows whether the cluster still lists this node; 'leave' again resets it if not.",
                    live.own_address
                )));
            }
        }
    }
    messages.push(format!("Removed {} from the cluster.", live.own_address));
    reset(node, ticket, messages, member_address).await
}

async fn record(node: &Node, journal: &Journal, change: Change) -> Result<(), LeaveError> {
    let (journal, started) = (journal.clone(), node.clock().now_unix());
    blocking(move || {
        journal
            .record(&Record { change, started })
            .map_err(LeaveError::from)
    })
    .await
}

/// This member is out of its cluster: the node starts again as a fresh single-node cluster
/// with new certificates (journaled, so a crash in the middle is finished at the next start).
/// `member_address` is set with the external datastore: k8s-dqlite's new member takes it.
async fn reset(
    node: &Node,
    ticket: &Ticket,
    mut messages: Vec<String>,
    member_address: Option<String>,
) -> Result<LeaveResponse, LeaveError> {
    ticket.step("resetting this node to a single-node cluster");
    let failure_domain = reset::current_failure_domain(node.state());
    let journal = Journal::new(node.state());
    let resetting = Change::LeaveControlPlane {
        step: LeaveStep::Resetting,
        failure_domain,
        member_address: member_address.clone(),
    };
    record(node, &journal, resetting)
        .await
        .map_err(|e| LeaveError::ResetFailed(format!("Cannot record the reset: {e}")))?;
    node.checkpoint("leave-resetting")
        .await
        .map_err(|_| LeaveError::Stopped)?;
    messages.push("Generating new cluster certificates.".into());
    match (&member_address, node.external()) {
        (Some(address), Some(external)) => {
            let (node2, address) = (node.clone(), address.clone());
            blocking(move || {
                reset::reset_external_control_plane(
                    node2.state(),
                    node2.services(),
                    node2.settings().bind,
                    failure_domain,
                    &address,
                )
                .map_err(LeaveError::ResetFailed)
            })
            .await?;
            external.forget();
            messages.extend(wait_for_fresh_member(external).await);
        }
        _ => {
            let membership = node.membership().cloned().ok_or(LeaveError::NotClustered)?;
            membership.stop().await.map_err(|e| {
                LeaveError::ResetFailed(format!("Stopping the dqlite member failed: {e}"))
            })?;
            let (state, bind) = (node.state().clone(), node.settings().bind);
            blocking(move || {
                reset::reset_control_plane(&state, bind, failure_domain)
                    .map_err(LeaveError::ResetFailed)
            })
            .await?;
            membership.start(None).await.map_err(|e| {
                LeaveError::ResetFailed(format!(
                    "Starting the new single-node datastore failed: {e}"
                ))
            })?;
        }
    }
    node.reload_serving_cert().await.map_err(|e| {
        LeaveError::ResetFailed(format!("Reloading the server certificate failed: {e}"))
    })?;
    let (node2, external) = (node.clone(), member_address.is_some());
    let warnings = blocking(move || {
        // k8s-dqlite's reset started kubelite again already.
        let mut warnings = if external {
            Vec::new()
        } else {
            node2.restart_each(&["kubelite"])
        };
        if let Err(e) = Journal::new(node2.state()).clear() {
            warnings.push(format!(
                "WARNING: cannot clear the journal ({e}); the daemon finishes the reset again when it starts."
            ));
        }
        Ok::<_, LeaveError>(warnings)
    })
    .await?;
    messages.extend(warnings);
    messages.push("This node left the cluster and is a fresh single-node cluster. Remove it from the others' Kubernetes with 'remove-node' if needed.".into());
    tracing::info!("left the cluster (control plane)");
    Ok(LeaveResponse { messages })
}

/// How long k8s-dqlite may take to start the fresh single-node member after a reset.
const FRESH_MEMBER_WAIT: Duration = Duration::from_secs(30);

/// Waits until k8s-dqlite's fresh member answers as the only member of its cluster; a
/// warning line if it does not in time (the reset itself is done).
async fn wait_for_fresh_member(external: &ExternalMember) -> Vec<String> {
    let until = tokio::time::Instant::now() + FRESH_MEMBER_WAIT;
    loop {
        if let Some(live) = external.live() {
            let answer = tokio::time::timeout(Duration::from_secs(5), live.client.cluster()).await;
            if let Ok(Ok(nodes)) = answer {
                if nodes.len() == 1 && nodes[0].id == live.own_id {
                    return Vec::new();
                }
            }
        }
        if tokio::time::Instant::now() > until {
            return vec![format!(
                "WARNING: k8s-dqlite did not start the new single-node datastore within {}s; check its log ('snap logs microk8s.daemon-k8s-dqlite').",
                FRESH_MEMBER_WAIT.as_secs()
            )];
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker goes back to a standalone node; every file is restored if that fails. Blocking.
fn leave_worker(node: &Node, journal: &Journal) -> Result<LeaveResponse, LeaveError> {
    if let Err(e) = reset::reset_worker(node.state(), node.settings().bind) {
        let restored = journal
            .saved_files()
            .and_then(|saved| saved.map_or(Ok(()), |s| s.restore()))
            .and_then(|()| journal.clear());
        return Err(match restored {
            Ok(()) => LeaveError::RolledBack(e),
            // The journal stays: the daemon finishes the leave when it starts.
            Err(r) => LeaveError::ResetFailed(format!(
                "Leaving failed ({e}) and restoring the previous state failed too ({r})"
            )),
        });
    }
    let mut messages = vec!["Configuring services.".to_string()];
    if let Err(e) = node
        .services()
        .apply(crate::sys::services::ServiceAction::Stop, "apiserver-proxy")
    {
        messages.push(format!("WARNING: could not stop apiserver-proxy: {e}"));
    }
    messages.extend(node.restart_each(&["kubelite", "k8s-dqlite"]));
    if let Err(e) = journal.clear() {
        messages.push(format!(
            "WARNING: cannot clear the journal ({e}); the daemon finishes the leave again when it starts."
        ));
    }
    messages.push("This node left the cluster and is a standalone node again. Remove it on the control plane with 'remove-node'.".into());
    tracing::info!("left the cluster (worker)");
    Ok(LeaveResponse { messages })
}
