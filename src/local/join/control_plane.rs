//! The control-plane half of `join`, after the cluster granted it: install the cluster's CA
//! and keys, replace this node's single-node datastore by a fresh member of the cluster
//! (added as a spare; the leader's roles manager promotes it), re-issue this node's
//! certificates and kubeconfigs from the cluster CA, adopt the cluster's arguments, restart
//! services. All or nothing: any failure before the end restores the old files, the old
//! datastore directory and the old member.
//!
//! Writes: `var/kubernetes/backend/` (moved aside to `backend.join-backup`, then a fresh
//! member: `cluster.crt`, `cluster.key`, `failure-domain`, `info.yaml`, raft data),
//! `certs/{ca.crt,ca.key,serviceaccount.key,server.crt,server.key}`, every kubeconfig in
//! `credentials/`, `credentials/callback-token.txt`, `args/{kubelet,kube-apiserver}`,
//! `var/lock/no-cert-reissue`, and Calico's `args/cni-network/cni.yaml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::adopt::{adopt_apiserver_args, cluster_kubelet_args};
use super::error::JoinError;
use crate::cluster::node::Node;
use crate::cluster::operation::Ticket;
use crate::dqlite::membership::Membership;
use crate::dqlite::{Client, Role};
use crate::format::wire::JoinResponseV2;
use crate::state::backup::Backup;
use crate::state::mode;
use crate::sys::blocking::{blocking, TaskFailed};

/// How long the new member may take to show up in the cluster's configuration.
const MEMBER_WAIT: Duration = Duration::from_secs(30);

/// Files a control-plane join replaces (the backend directory is moved aside as a whole).
fn touched(node: &Node) -> Vec<PathBuf> {
    let l = node.state().layout();
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
        crate::cluster::bootstrap::KUBECONFIGS
            .iter()
            .chain(&["callback-token.txt"])
            .map(|f| l.credential(f)),
    );
    v.extend(["kubelet", "kube-apiserver"].iter().map(|s| l.args(s)));
    v.push(l.marker("no-cert-reissue"));
    v
}

/// Where a control-plane join keeps this node's previous datastore until it has joined.
pub fn backup_dir(backend: &Path) -> PathBuf {
    backend.with_file_name("backend.join-backup")
}

/// A step of the install failed; the text says which and why.
#[derive(Debug)]
struct StepFailed(String);

impl From<TaskFailed> for StepFailed {
    fn from(e: TaskFailed) -> Self {
        StepFailed(e.to_string())
    }
}

fn fail(e: impl std::fmt::Display) -> StepFailed {
    StepFailed(e.to_string())
}

/// Makes this node a control plane of the cluster that sent `answer` (reached at
/// `contacted`). Returns the lines to show the user.
pub async fn join(
    node: &Node,
    answer: JoinResponseV2,
    contacted: SocketAddr,
    ticket: &Ticket,
) -> Result<Vec<String>, JoinError> {
    let membership = node
        .membership()
        .cloned()
        .ok_or(JoinError::NeedsEmbeddedMember)?;
    let (Some(ca_key), false, false) = (
        answer.ca_key.clone(),
        answer.cluster_cert.is_empty(),
        answer.voters.is_empty(),
    ) else {
        return Err(JoinError::NotAControlPlaneCluster);
    };
    let backend = node.state().layout().backend_dir();
    let aside = backup_dir(&backend);
    if crate::state::exists(&aside) {
        // Left by a join whose rollback failed (or a crash mid-join): it may hold the only
        // copy of this node's previous datastore, so it is never deleted here.
        return Err(JoinError::UnfinishedEarlierJoin {
            backup: aside,
            backend,
        });
    }
    let node2 = node.clone();
    let backup = blocking(move || {
        Backup::take(node2.state(), &touched(&node2))
            .map_err(|e| JoinError::NothingChanged(e.to_string()))
    })
    .await?;
    let mut progress = Progress {
        ticket,
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
    if let Err(StepFailed(cause)) = result {
        if let Some((client, id)) = progress.added {
            // The cluster must not keep a member at our address for a datastore that is
            // about to be replaced by the old one.
            if let Err(r) = client.remove(id).await {
                tracing::warn!(error = %r, id, "could not remove the half-joined member from the cluster");
            }
        }
        return Err(
            match rollback(node, &membership, backup, &backend, &aside).await {
                Ok(()) => JoinError::RolledBack {
                    cause,
                    restored: "This node was restored to its previous single-node cluster.".into(),
                },
                Err(r) => JoinError::RollbackFailed {
                    cause,
                    restore_error: format!(
                        "Restoring the previous state failed too ({r}); see the daemon log."
                    ),
                },
            },
        );
    }
    let node2 = node.clone();
    let warnings = blocking(move || {
        if let Err(e) = crate::state::remove_dir_all(&aside) {
            tracing::warn!(error = %e, "could not delete the previous datastore");
        }
        let mut warnings = Vec::new();
        // The joined node's Calico reaches the cluster over the interface it contacted.
        if let Err(e) = crate::cluster::calico::pin_own_copy(&node2, contacted.ip()) {
            warnings.push(format!("WARNING: failed to update cni configuration: {e}"));
        }
        warnings.extend(node2.restart_each(&["kubelite"]));
        Ok::<_, JoinError>(warnings)
    })
    .await?;
    messages.extend(warnings);
    messages.push("Successfully joined the cluster.".into());
    tracing::info!(%contacted, "joined the cluster as a control-plane node");
    Ok(messages)
}

/// What `install` did so far that a rollback must undo beyond the files, and where it says
/// what it is doing.
struct Progress<'a> {
    ticket: &'a Ticket,
    messages: Vec<String>,
    /// The fresh member was ADDed to the cluster (client to it, member id).
    added: Option<(Arc<Client>, u64)>,
}

async fn install(
    node: &Node,
    membership: &Membership,
    answer: &JoinResponseV2,
    ca_key: &str,
    backend: &Path,
    aside: &Path,
    progress: &mut Progress<'_>,
) -> Result<(), StepFailed> {
    let ticket = progress.ticket;
    ticket.step("replacing this node's datastore and certificates");
    membership.stop().await.map_err(fail)?;
    let (node2, files) = (node.clone(), answer.clone());
    let (ca_key, backend2, aside2) = (
        ca_key.to_string(),
        backend.to_path_buf(),
        aside.to_path_buf(),
    );
    let failure_domain = membership.template().failure_domain;
    blocking(move || install_files(&node2, &files, &ca_key, &backend2, &aside2, failure_domain))
        .await?;

    // A fresh member, added to the cluster as a spare.
    ticket.step("starting the new member");
    let live = membership
        .start(Some(answer.voters.clone()))
        .await
        .map_err(fail)?;
    let client = Arc::new(membership.client(answer.voters.clone()).map_err(fail)?);
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
    ticket.step("waiting for the cluster to list this member");
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
    ticket.step("adopting the cluster's settings");
    let (node2, answer) = (node.clone(), answer.clone());
    blocking(move || adopt_cluster_settings(&node2, &answer).map_err(fail)).await?;
    node.reload_serving_cert().map_err(fail)?;
    Ok(())
}

/// Moves the old datastore aside and installs the cluster's certificates, keys and this
/// node's re-issued leaves and kubeconfigs. Blocking.
fn install_files(
    node: &Node,
    answer: &JoinResponseV2,
    ca_key: &str,
    backend: &Path,
    aside: &Path,
    failure_domain: u64,
) -> Result<(), StepFailed> {
    let state = node.state();
    let l = state.layout();
    crate::state::rename(backend, aside).map_err(fail)?;
    state.ensure_layout().map_err(fail)?;
    state
        .write(
            &l.backend("cluster.key"),
            answer.cluster_key.as_bytes(),
            mode::SECRET,
        )
        .map_err(fail)?;
    state
        .write(
            &l.backend("cluster.crt"),
            answer.cluster_cert.as_bytes(),
            mode::PUBLIC,
        )
        .map_err(fail)?;
    if let Ok(Some(fd)) = crate::state::read_bytes_optional(&aside.join("failure-domain")) {
        state
            .write(&l.backend("failure-domain"), &fd, mode::SECRET)
            .map_err(fail)?;
    }

    // The cluster's CA and keys; this node's leaves and kubeconfigs are re-issued from them.
    let writes: [(PathBuf, &str, u32); 3] = [
        (l.ca_key(), ca_key, mode::SECRET),
        (l.ca_crt(), &answer.ca, mode::PUBLIC),
        (
            l.serviceaccount_key(),
            &answer.service_account_key,
            mode::SECRET,
        ),
    ];
    for (path, content, file_mode) in writes {
        state
            .write(&path, content.as_bytes(), file_mode)
            .map_err(fail)?;
    }
    for f in ["server.crt", "server.key"] {
        state.remove(&l.cert(f)).map_err(fail)?;
    }
    for f in crate::cluster::bootstrap::KUBECONFIGS {
        state.remove(&l.credential(f)).map_err(fail)?;
    }
    node.rebootstrap(failure_domain).map_err(fail)
}

/// The cluster's kubelet and API server arguments and callback token. Blocking.
fn adopt_cluster_settings(
    node: &Node,
    answer: &JoinResponseV2,
) -> Result<(), crate::state::StateError> {
    let state = node.state();
    let l = state.layout();
    state.write(
        &l.args("kubelet"),
        cluster_kubelet_args(answer).render().as_bytes(),
        mode::ARGS,
    )?;
    adopt_apiserver_args(state, answer)?;
    state.write(
        &l.credential("callback-token.txt"),
        answer.callback_token.as_bytes(),
        mode::SECRET,
    )?;
    state.set_marker("no-cert-reissue")
}

async fn rollback(
    node: &Node,
    membership: &Membership,
    backup: Backup,
    backend: &Path,
    aside: &Path,
) -> Result<(), String> {
    // Every step is tried whatever happened to the previous ones; the old datastore is only
    // ever moved, never deleted, so a failed step leaves it where the message says.
    let mut failures = Vec::new();
    if let Err(e) = membership.stop().await {
        failures.push(format!("stopping the new member: {e}"));
    }
    let (backend2, aside2) = (backend.to_path_buf(), aside.to_path_buf());
    let restored = blocking(move || {
        let mut failures = Vec::new();
        if crate::state::exists(&aside2) {
            let moved_back = crate::state::remove_dir_all(&backend2)
                .and_then(|()| crate::state::rename(&aside2, &backend2));
            if let Err(e) = moved_back {
                failures.push(format!(
                    "moving the previous datastore back from {} to {}: {e}",
                    aside2.display(),
                    backend2.display()
                ));
            }
        }
        if let Err(e) = backup.restore() {
            failures.push(format!("restoring files: {e}"));
        }
        Ok::<_, TaskFailed>(failures)
    })
    .await;
    match restored {
        Ok(f) => failures.extend(f),
        Err(e) => failures.push(e.to_string()),
    }
    if failures.is_empty() {
        if let Err(e) = membership.start(None).await {
            failures.push(format!("restarting the previous member: {e}"));
        }
    }
    if let Err(e) = node.reload_serving_cert() {
        failures.push(format!("reloading the :25000 certificate: {e}"));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
