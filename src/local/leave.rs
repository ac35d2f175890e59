//! `leave` on this node. A worker goes back to a working standalone node: its own CA, fresh
//! kubeconfigs, default kubelet and kube-proxy arguments (MicroK8s leaves a worker unable to
//! start here, #3708). All or nothing: a failure restores every file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{ErrorKind, Refusal};
use crate::cluster::node::Node;
use crate::cluster::operation::Ticket;
use crate::cluster::roles::driver::{handover, Handover};
use crate::state::backup::Backup;
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
    /// The cluster did not take this member out; nothing changed.
    #[error("Contacting the cluster to remove {address} failed. Error: {error}")]
    DatastoreUnchanged { address: String, error: String },
    /// This member was removed from the cluster, but the reset that follows failed.
    #[error("{0}")]
    ResetFailed(String),
    /// A worker's leave failed; every file was restored.
    #[error("Leaving failed: {0}. This node was restored to its previous state.")]
    RolledBack(String),
    /// Another membership change is in progress on this node.
    #[error("{0}")]
    Busy(String),
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
            LeaveError::DatastoreUnchanged { .. } => ErrorKind::LeaveDatastoreUnchanged,
            LeaveError::ResetFailed(_) => ErrorKind::LeaveResetFailed,
            LeaveError::RolledBack(_) => ErrorKind::LeaveRolledBack,
            LeaveError::Busy(_) => ErrorKind::Busy,
            LeaveError::Internal(_) => ErrorKind::Internal,
        }
    }
}

crate::local::error::membership_change_error!(LeaveError);

pub async fn leave(node: &Node) -> Result<LeaveResponse, LeaveError> {
    let ticket = node.operations().begin("leave")?;
    if node.state().has_marker("clustered.lock") {
        ticket.step("resetting this worker to a standalone node");
        let node = node.clone();
        return blocking(move || leave_worker(&node)).await;
    }
    leave_control_plane(node, &ticket).await
}

/// A control plane hands its role over, removes itself from the cluster, and starts again as
/// a fresh single-node cluster with new certificates.
async fn leave_control_plane(node: &Node, ticket: &Ticket) -> Result<LeaveResponse, LeaveError> {
    let membership = node.membership().cloned().ok_or(LeaveError::NotClustered)?;
    let live = membership.live().ok_or(LeaveError::NotClustered)?;
    let members = live
        .client
        .cluster()
        .await
        .map_err(|e| LeaveError::MembershipUnreadable(e.to_string()))?;
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
    let mut messages = Vec::new();
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
        Err(e) => messages.push(format!(
            "WARNING: handing the role over failed ({e}); removing anyway."
        )),
    }
    ticket.step("removing this member from the cluster");
    live.client
        .remove(live.own_id)
        .await
        .map_err(|e| LeaveError::DatastoreUnchanged {
            address: live.own_address.clone(),
            error: e.to_string(),
        })?;
    messages.push(format!("Removed {} from the cluster.", live.own_address));

    ticket.step("resetting this node to a single-node cluster");
    membership
        .stop()
        .await
        .map_err(|e| LeaveError::ResetFailed(format!("Stopping the dqlite member failed: {e}")))?;
    messages.push("Generating new cluster certificates.".into());
    let node2 = node.clone();
    blocking(move || reset_to_single_node(&node2)).await?;
    membership.start(None).await.map_err(|e| {
        LeaveError::ResetFailed(format!(
            "Starting the new single-node datastore failed: {e}"
        ))
    })?;
    node.reload_serving_cert().map_err(|e| {
        LeaveError::ResetFailed(format!("Reloading the server certificate failed: {e}"))
    })?;
    let node2 = node.clone();
    let warnings = blocking(move || Ok::<_, LeaveError>(node2.restart_each(&["kubelite"]))).await?;
    messages.extend(warnings);
    messages.push("This node left the cluster and is a fresh single-node cluster. Remove it from the others' Kubernetes with 'remove-node' if needed.".into());
    tracing::info!("left the cluster (control plane)");
    Ok(LeaveResponse { messages })
}

/// Wipes the cluster's material (CA, keys, dqlite data and identity) and bootstraps a new
/// single-node cluster. Service arguments are kept.
fn reset_to_single_node(node: &Node) -> Result<(), LeaveError> {
    let state = node.state();
    let l = state.layout();
    let backend = l.backend_dir();
    let failure_domain = crate::state::read_bytes_optional(&l.backend("failure-domain"))
        .ok()
        .flatten();
    crate::state::remove_dir_all(&backend).map_err(|e| LeaveError::ResetFailed(e.to_string()))?;
    state
        .ensure_layout()
        .map_err(|e| LeaveError::ResetFailed(e.to_string()))?;
    if let Some(fd) = failure_domain {
        state.write(
            &l.backend("failure-domain"),
            &fd,
            crate::state::mode::SECRET,
        )?;
    }
    for f in [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "serviceaccount.key",
        "front-proxy-ca.crt",
        "front-proxy-ca.key",
        "front-proxy-client.crt",
        "front-proxy-client.key",
    ] {
        state.remove(&l.cert(f))?;
    }
    for f in crate::cluster::bootstrap::KUBECONFIGS
        .iter()
        .chain(&["callback-token.txt"])
    {
        state.remove(&l.credential(f))?;
    }
    state.remove(&l.marker("no-cert-reissue"))?;
    node.rebootstrap(1).map_err(|e| {
        LeaveError::ResetFailed(format!(
            "Bootstrapping a new single-node cluster failed: {e}"
        ))
    })?;
    Ok(())
}

fn leave_worker(node: &Node) -> Result<LeaveResponse, LeaveError> {
    let state = node.state();
    let l = state.layout();
    let removed = vec![
        l.cert("ca.remote.crt"),
        l.cert("kubelet.crt"),
        l.cert("kubelet.key"),
        l.cert("proxy.crt"),
        l.cert("proxy.key"),
        l.credential("kubelet.config"),
        l.credential("proxy.config"),
        l.credential("callback-token.txt"),
        l.args("kubelet"),
        l.args("kube-proxy"),
        l.marker("clustered.lock"),
        l.marker("no-k8s-dqlite"),
        l.marker("no-cert-reissue"),
    ];
    let mut touched = removed.clone();
    touched.push(l.marker("no-apiserver-proxy"));
    let backup = Backup::take(state, &touched)?;
    let result = (|| -> Result<(), String> {
        state
            .set_marker("no-apiserver-proxy")
            .map_err(|e| e.to_string())?;
        for path in &removed {
            state.remove(path).map_err(|e| e.to_string())?;
        }
        node.rebootstrap(1).map_err(|e| e.to_string())?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = backup.restore();
        return Err(LeaveError::RolledBack(e));
    }
    let mut messages = vec!["Configuring services.".to_string()];
    if let Err(e) = node
        .services()
        .apply(crate::sys::services::ServiceAction::Stop, "apiserver-proxy")
    {
        messages.push(format!("WARNING: could not stop apiserver-proxy: {e}"));
    }
    messages.extend(node.restart_each(&["kubelite", "k8s-dqlite"]));
    messages.push("This node left the cluster and is a standalone node again. Remove it on the control plane with 'remove-node'.".into());
    tracing::info!("left the cluster (worker)");
    Ok(LeaveResponse { messages })
}
