//! The control-plane half of `join`, after the cluster granted it: install the cluster's CA
//! and keys, replace this node's single-node datastore by a fresh member of the cluster
//! (added as a spare; the leader's roles manager promotes it), re-issue this node's
//! certificates and kubeconfigs from the cluster CA, adopt the cluster's arguments, restart
//! services. All or nothing: any failure before the end restores the old files, the old
//! datastore directory and the old member.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::join::JoinResponseV2;
use super::joiner::{JoinClusterResponse, EXIT_FAILURE};
use super::OpError;
use crate::dqlite::Role;
use crate::membership::Membership;
use crate::node::Node;
use crate::state::backup::Backup;
use crate::state::mode;

/// How long the new member may take to show up in the cluster's configuration.
const MEMBER_WAIT: Duration = Duration::from_secs(30);

/// Files a control-plane join replaces (the backend directory is moved aside as a whole).
fn touched(node: &Node) -> Vec<PathBuf> {
    let l = node.state.layout();
    let mut v: Vec<PathBuf> = [
        "ca.crt",
        "ca.key",
        "serviceaccount.key",
        "server.crt",
        "server.key",
    ]
    .iter()
    .map(|f| l.cert(f))
    .collect();
    v.extend(
        crate::bootstrap::KUBECONFIGS
            .iter()
            .chain(&["callback-token.txt"])
            .map(|f| l.credential(f)),
    );
    v.extend(["kubelet", "kube-apiserver"].iter().map(|s| l.args(s)));
    v.push(l.marker("no-cert-reissue"));
    v
}

fn fail(e: impl std::fmt::Display) -> OpError {
    OpError::Internal(e.to_string())
}

pub async fn join(
    node: &Node,
    answer: JoinResponseV2,
    contacted: SocketAddr,
) -> Result<JoinClusterResponse, OpError> {
    let membership = node
        .membership
        .clone()
        .ok_or_else(|| OpError::exit(EXIT_FAILURE, "no embedded dqlite member"))?;
    let (Some(ca_key), false, false) = (
        answer.ca_key.clone(),
        answer.cluster_cert.is_empty(),
        answer.voters.is_empty(),
    ) else {
        return Err(OpError::exit(
            EXIT_FAILURE,
            "The cluster's answer lacks the CA key or the dqlite certificate and voters: it does not accept control-plane nodes this way.",
        ));
    };
    let backend = node.state.layout().backend_dir();
    let aside = backend.with_file_name("backend.join-backup");
    if aside.exists() {
        // Left by a join whose rollback failed (or a crash mid-join): it may hold the only
        // copy of this node's previous datastore, so it is never deleted here.
        return Err(OpError::exit(
            EXIT_FAILURE,
            format!(
                "{} exists: an earlier join did not finish. It holds this node's previous datastore; move it back to {} or delete it, then join again.",
                aside.display(),
                backend.display()
            ),
        ));
    }
    let backup = Backup::take(&node.state, &touched(node)).map_err(|e| {
        OpError::exit(
            EXIT_FAILURE,
            format!("Join failed before changing anything on this node: {e}"),
        )
    })?;
    let mut progress = Progress {
        messages: vec!["Waiting for this node to finish joining the cluster.".to_string()],
        added: None,
    };

    let result = install(
        node,
        &membership,
        &answer,
        &ca_key,
        &backend,
        &aside,
        &mut progress,
    )
    .await;
    let mut messages = progress.messages;
    if let Err(e) = result {
        if let Some((client, id)) = progress.added {
            // The cluster must not keep a member at our address for a datastore that is
            // about to be replaced by the old one.
            if let Err(r) = client.remove(id).await {
                tracing::warn!(error = %r, id, "could not remove the half-joined member from the cluster");
            }
        }
        let restored = rollback(node, &membership, &backup, &backend, &aside).await;
        let how = match restored {
            Ok(()) => "This node was restored to its previous single-node cluster.".to_string(),
            Err(r) => format!("Restoring the previous state failed too ({r}); see the daemon log."),
        };
        return Err(OpError::exit(
            EXIT_FAILURE,
            format!("Join failed while configuring this node: {e}. {how} Fix the cause and join again with a new token."),
        ));
    }
    let _ = std::fs::remove_dir_all(&aside);
    // The joined node's Calico reaches the cluster over the interface it contacted.
    if let Err(e) = super::calico::pin_own_copy(node, contacted.ip()) {
        messages.push(format!("WARNING: failed to update cni configuration: {e}"));
    }
    if let Err(e) = node.services.restart("kubelite") {
        messages.push(format!("WARNING: could not restart kubelite: {e}"));
    }
    messages.push("Successfully joined the cluster.".into());
    tracing::info!(%contacted, "joined the cluster as a control-plane node");
    Ok(JoinClusterResponse {
        contacted: contacted.to_string(),
        messages,
    })
}

/// What `install` did so far that a rollback must undo beyond the files.
struct Progress {
    messages: Vec<String>,
    /// The fresh member was ADDed to the cluster (client to it, member id).
    added: Option<(std::sync::Arc<crate::dqlite::Client>, u64)>,
}

async fn install(
    node: &Node,
    membership: &Membership,
    answer: &JoinResponseV2,
    ca_key: &str,
    backend: &std::path::Path,
    aside: &std::path::Path,
    progress: &mut Progress,
) -> Result<(), OpError> {
    let state = &node.state;
    let l = state.layout();
    membership.stop().await.map_err(fail)?;
    std::fs::rename(backend, aside)
        .map_err(|e| fail(format!("cannot move {} aside: {e}", backend.display())))?;
    state.ensure_layout()?;
    state.write(
        &l.backend("cluster.key"),
        answer.cluster_key.as_bytes(),
        mode::SECRET,
    )?;
    state.write(
        &l.backend("cluster.crt"),
        answer.cluster_cert.as_bytes(),
        mode::PUBLIC,
    )?;
    if let Ok(fd) = std::fs::read(aside.join("failure-domain")) {
        state.write(&l.backend("failure-domain"), &fd, mode::SECRET)?;
    }

    // The cluster's CA and keys; this node's leaves and kubeconfigs are re-issued from them.
    state.write(&l.ca_key(), ca_key.as_bytes(), mode::SECRET)?;
    state.write(&l.ca_crt(), answer.ca.as_bytes(), mode::PUBLIC)?;
    state.write(
        &l.serviceaccount_key(),
        answer.service_account_key.as_bytes(),
        mode::SECRET,
    )?;
    for f in ["server.crt", "server.key"] {
        state.remove(&l.cert(f))?;
    }
    for f in crate::bootstrap::KUBECONFIGS {
        state.remove(&l.credential(f))?;
    }
    node.rebootstrap(membership.template().failure_domain)
        .map_err(fail)?;

    // A fresh member, added to the cluster as a spare.
    let live = membership
        .start(Some(answer.voters.clone()))
        .await
        .map_err(fail)?;
    let client = std::sync::Arc::new(membership.client(answer.voters.clone()).map_err(fail)?);
    // Recorded before the ADD: one that was applied but whose answer was lost must be undone
    // too (removing a member that was never added only fails, harmlessly).
    progress.added = Some((client.clone(), live.own_id));
    client
        .add(live.own_id, &live.own_address, Role::Spare)
        .await
        .map_err(|e| {
            fail(format!(
                "adding this member ({}) to the cluster: {e}",
                live.own_address
            ))
        })?;
    let deadline = tokio::time::Instant::now() + MEMBER_WAIT;
    loop {
        if let Ok(nodes) = client.cluster().await {
            if nodes.iter().any(|n| n.id == live.own_id) {
                break;
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(fail("this member did not appear in the cluster in time"));
        }
        progress.messages.push(". ".into());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    membership.refresh_cluster_yaml().await;

    // Arguments and tokens of the cluster.
    let kubelet_args = super::joiner::cluster_kubelet_args(answer);
    state.write(
        &l.args("kubelet"),
        kubelet_args.render().as_bytes(),
        mode::ARGS,
    )?;
    super::joiner::adopt_apiserver_args(state, answer)?;
    state.write(
        &l.credential("callback-token.txt"),
        answer.callback_token.as_bytes(),
        mode::SECRET,
    )?;
    state.set_marker("no-cert-reissue")?;
    if let Some(serving) = &node.serving {
        serving.reload().map_err(fail)?;
    }
    Ok(())
}

async fn rollback(
    node: &Node,
    membership: &Membership,
    backup: &Backup,
    backend: &std::path::Path,
    aside: &std::path::Path,
) -> Result<(), String> {
    // Every step is tried whatever happened to the previous ones; the old datastore is only
    // ever moved, never deleted, so a failed step leaves it where the message says.
    let mut failures = Vec::new();
    if let Err(e) = membership.stop().await {
        failures.push(format!("stopping the new member: {e}"));
    }
    if aside.exists() {
        let moved_back = std::fs::remove_dir_all(backend)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .and_then(|()| std::fs::rename(aside, backend));
        if let Err(e) = moved_back {
            failures.push(format!(
                "moving the previous datastore back from {} to {}: {e}",
                aside.display(),
                backend.display()
            ));
        }
    }
    if let Err(e) = backup.restore() {
        failures.push(format!("restoring files: {e}"));
    }
    if failures.is_empty() {
        if let Err(e) = membership.start(None).await {
            failures.push(format!("restarting the previous member: {e}"));
        }
    }
    if let Some(serving) = &node.serving {
        if let Err(e) = serving.reload() {
            failures.push(format!("reloading the :25000 certificate: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
