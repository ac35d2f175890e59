//! `leave` on this node. A worker goes back to a working standalone node: its own CA, fresh
//! kubeconfigs, default kubelet and kube-proxy arguments (MicroK8s leaves a worker unable to
//! start here, #3708). All or nothing: a failure restores every file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::joiner::EXIT_FAILURE;
use super::OpError;
use crate::node::Node;
use crate::state::backup::Backup;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaveResponse {
    pub messages: Vec<String>,
}

pub async fn leave(node: &Node) -> Result<LeaveResponse, OpError> {
    if node.state.has_marker("clustered.lock") {
        let node = node.clone();
        return super::blocking(move || leave_worker(&node)).await;
    }
    leave_control_plane(node).await
}

/// MicroK8s's refusal when this node holds the only vote of a multi-node cluster.
pub const ONLY_VOTER: &str = "This node currently holds the only copy of the Kubernetes database so it cannot leave the cluster.\nTo remove this node you can either first remove all other nodes with 'remove-node' or\nform a highly available cluster by adding at least three nodes.";
pub const EXIT_ONLY_VOTER: u8 = 3;

/// A control plane hands its role over, removes itself from the cluster, and starts again as
/// a fresh single-node cluster with new certificates.
async fn leave_control_plane(node: &Node) -> Result<LeaveResponse, OpError> {
    let not_clustered = || {
        OpError::exit(
            EXIT_FAILURE,
            "This MicroK8s deployment is not acting as a node in a cluster.",
        )
    };
    let membership = node.membership.clone().ok_or_else(not_clustered)?;
    let live = membership.live().ok_or_else(not_clustered)?;
    let members = live.client.cluster().await.map_err(|e| {
        OpError::exit(
            EXIT_FAILURE,
            format!("Cannot read the cluster membership: {e}"),
        )
    })?;
    if members.len() <= 1 {
        return Err(not_clustered());
    }
    let voters: Vec<_> = members
        .iter()
        .filter(|m| m.role == crate::dqlite::Role::Voter)
        .collect();
    if voters.len() == 1 && voters[0].id == live.own_id {
        return Err(OpError::exit(EXIT_ONLY_VOTER, ONLY_VOTER));
    }
    let mut messages = Vec::new();
    let cfg = node.settings.roles.clone();
    match crate::daemon::roles::handover(&live.client, live.own_id, &cfg, Duration::from_secs(20))
        .await
    {
        Ok(crate::daemon::roles::Handover::KeptForQuorum {
            live_voters,
            voters,
        }) => {
            return Err(OpError::exit(
                EXIT_FAILURE,
                format!(
                    "Leaving now would stop the cluster: without this node only {live_voters} of the other {voters} voters are reachable, which is not a quorum. Bring the unreachable voters back, or remove them with 'remove-node --force', then leave."
                ),
            ));
        }
        Ok(_) => {}
        Err(e) => messages.push(format!(
            "WARNING: handing the role over failed ({e}); removing anyway."
        )),
    }
    live.client.remove(live.own_id).await.map_err(|e| {
        OpError::exit(
            2,
            format!(
                "Contacting the cluster to remove {} failed. Error: {e}",
                live.own_address
            ),
        )
    })?;
    messages.push(format!("Removed {} from the cluster.", live.own_address));

    membership.stop().await.map_err(|e| {
        OpError::exit(
            EXIT_FAILURE,
            format!("Stopping the dqlite member failed: {e}"),
        )
    })?;
    messages.push("Generating new cluster certificates.".into());
    let node2 = node.clone();
    super::blocking(move || reset_to_single_node(&node2)).await?;
    membership.start(None).await.map_err(|e| {
        OpError::exit(
            EXIT_FAILURE,
            format!("Starting the new single-node datastore failed: {e}"),
        )
    })?;
    if let Some(serving) = &node.serving {
        serving.reload().map_err(|e| {
            OpError::exit(
                EXIT_FAILURE,
                format!("Reloading the server certificate failed: {e}"),
            )
        })?;
    }
    for service in ["kubelite"] {
        if let Err(e) = node.services.restart(service) {
            messages.push(format!("WARNING: could not restart {service}: {e}"));
        }
    }
    messages.push("This node left the cluster and is a fresh single-node cluster. Remove it from the others' Kubernetes with 'remove-node' if needed.".into());
    tracing::info!("left the cluster (control plane)");
    Ok(LeaveResponse { messages })
}

/// Wipes the cluster's material (CA, keys, dqlite data and identity) and bootstraps a new
/// single-node cluster. Service arguments are kept.
fn reset_to_single_node(node: &Node) -> Result<(), OpError> {
    let state = &node.state;
    let l = state.layout();
    let backend = l.backend_dir();
    let failure_domain = std::fs::read(l.backend("failure-domain")).ok();
    std::fs::remove_dir_all(&backend).map_err(|e| {
        OpError::exit(
            EXIT_FAILURE,
            format!("cannot clear {}: {e}", backend.display()),
        )
    })?;
    state.ensure_layout()?;
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
    for f in crate::bootstrap::KUBECONFIGS
        .iter()
        .chain(&["callback-token.txt"])
    {
        state.remove(&l.credential(f))?;
    }
    state.remove(&l.marker("no-cert-reissue"))?;
    node.rebootstrap(1).map_err(|e| {
        OpError::exit(
            EXIT_FAILURE,
            format!("Bootstrapping a new single-node cluster failed: {e}"),
        )
    })?;
    Ok(())
}

fn leave_worker(node: &Node) -> Result<LeaveResponse, OpError> {
    let state = &node.state;
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
    let result = (|| -> Result<(), OpError> {
        state.set_marker("no-apiserver-proxy")?;
        for path in &removed {
            state.remove(path)?;
        }
        node.rebootstrap(1)
            .map_err(|e| OpError::Internal(e.to_string()))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = backup.restore();
        return Err(OpError::exit(
            EXIT_FAILURE,
            format!("Leaving failed: {e}. This node was restored to its previous state."),
        ));
    }
    let mut messages = vec!["Configuring services.".to_string()];
    if let Err(e) = node
        .services
        .apply(crate::services::ServiceAction::Stop, "apiserver-proxy")
    {
        messages.push(format!("WARNING: could not stop apiserver-proxy: {e}"));
    }
    for service in ["kubelite", "k8s-dqlite"] {
        if let Err(e) = node.services.restart(service) {
            messages.push(format!("WARNING: could not restart {service}: {e}"));
        }
    }
    messages.push("This node left the cluster and is a standalone node again. Remove it on the control plane with 'remove-node'.".into());
    tracing::info!("left the cluster (worker)");
    Ok(LeaveResponse { messages })
}
