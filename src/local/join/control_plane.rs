//! The control-plane half of `join`, after the cluster granted it: install the cluster's CA
//! and keys, replace this node's single-node datastore by a fresh member of the cluster
//! (added as a spare; the leader's roles manager promotes it), re-issue this node's
//! certificates and kubeconfigs from the cluster CA, adopt the cluster's arguments, restart
//! services. All or nothing: any failure before the end restores the old files, the old
//! datastore directory and the old member.
//!
//! Crash-safe: before its first write the join saves the files it replaces and records
//! itself in the journal (`cluster::journal`); it records the new member's identity before
//! it asks the cluster to add it, and that the cluster lists it. A daemon killed at any step
//! settles the join when it starts again (`local::settle`): undone until the cluster may
//! have added the member, finished once it lists it.
//!
//! Writes: `var/kubernetes/backend/` (moved aside to `backend.join-backup`, then a fresh
//! member: `cluster.crt`, `cluster.key`, `failure-domain`, `info.yaml`, raft data),
//! `certs/{ca.crt,ca.key,serviceaccount.key,server.crt,server.key}`, every kubeconfig in
//! `credentials/`, `credentials/callback-token.txt`, `args/{kubelet,kube-apiserver}`,
//! `var/lock/no-cert-reissue`, Calico's `args/cni-network/cni.yaml`, and while it runs
//! `var/cluster-agent/{journal.json,saved/}`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::adopt::{adopt_apiserver_args, cluster_kubelet_args, register, Registration};
use super::error::JoinError;
use crate::cluster::journal::{Change, JoinStep, Journal, Record};
use crate::cluster::node::Node;
use crate::cluster::operation::{Stopping, Ticket};
use crate::dqlite::membership::Membership;
use crate::dqlite::{Client, Role};
use crate::format::wire::JoinResponseV2;
use crate::state::{mode, StateDir};
use crate::sys::blocking::{blocking, TaskFailed};
use crate::sys::services::ServiceAction;

/// How long the new member may take to show up in the cluster's configuration.
const MEMBER_WAIT: Duration = Duration::from_secs(30);

/// Files a control-plane join replaces (the backend directory is moved aside as a whole).
fn touched(state: &StateDir) -> Vec<PathBuf> {
    let l = state.layout();
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

/// Why the install did not get to its end.
#[derive(Debug)]
pub(super) enum StepFailed {
    /// A step failed; the text says which and why.
    Failed(String),
    /// The daemon is stopping: the install ended at a checkpoint, the journal has the rest.
    Stopping,
}

impl From<TaskFailed> for StepFailed {
    fn from(e: TaskFailed) -> Self {
        StepFailed::Failed(e.to_string())
    }
}

impl From<Stopping> for StepFailed {
    fn from(_: Stopping) -> Self {
        StepFailed::Stopping
    }
}

pub(super) fn fail(e: impl std::fmt::Display) -> StepFailed {
    StepFailed::Failed(e.to_string())
}

/// Makes this node a control plane of the cluster that sent `answer` (reached at
/// `contacted`). Returns the lines to show the user.
pub async fn join(
    node: &Node,
    answer: JoinResponseV2,
    contacted: SocketAddr,
    ticket: &Ticket,
    registration: &Registration,
) -> Result<Vec<String>, JoinError> {
    let membership = node
        .membership()
        .cloned()
        .ok_or_else(|| JoinError::NoMember("the embedded member is not running".into()))?;
    let ca_key = cluster_ca_key(&answer)?;
    let mut progress = Progress::new(node, ticket, &answer, contacted);
    progress.registration = registration.clone();
    progress.begin().await?;

    let result = install(node, &membership, &answer, &ca_key, &mut progress).await;
    let mut messages = std::mem::take(&mut progress.messages);
    if let Err(StepFailed::Stopping) = result {
        // The journal says how far it went; the next start settles it.
        return Err(JoinError::Stopped);
    }
    if let Err(StepFailed::Failed(cause)) = result {
        // Decided: undone, whatever the cluster says by now (a crash from here on goes on
        // undoing).
        let _ = progress.record(JoinStep::Undoing).await;
        let mut stale_member = None;
        if let Some((client, id)) = progress.added.take() {
            // The cluster must not keep a member at our address for a datastore that is
            // about to be replaced by the old one.
            if let Err(r) = client.remove(id).await {
                let listed = client
                    .cluster()
                    .await
                    .map(|nodes| nodes.iter().any(|n| n.id == id))
                    .unwrap_or(true);
                if listed {
                    tracing::warn!(error = %r, id, "could not remove the half-joined member from the cluster");
                    stale_member = Some(id);
                }
            }
        }
        return Err(match (rollback(node, &membership).await, stale_member) {
            (Ok(()), None) => JoinError::RolledBack {
                cause,
                restored: "This node was restored to its previous single-node cluster.".into(),
            },
            (Ok(()), Some(id)) => JoinError::RollbackFailed {
                cause,
                restore_error: format!(
                    "This node was restored to its previous single-node cluster, but the cluster may still list its new member ({id:#x}); remove it there with 'remove-node --force {}'.",
                    node.settings().bind.ip()
                ),
            },
            (Err(r), _) => JoinError::RollbackFailed {
                cause,
                restore_error: format!(
                    "Restoring the previous state failed too ({r}); the daemon tries again when it starts."
                ),
            },
        });
    }
    // The cluster lists this member: the join has happened, nothing below undoes it (a
    // failure is a warning, and a crash is finished at the next start).
    let _ = node.checkpoint("join-cp-joined").await;
    messages.extend(conclude(node, contacted, ServiceAction::Restart).await?);
    Ok(messages)
}

/// The end of a control-plane join the cluster took: serve the new :25000 certificate, pin
/// Calico to the contacted interface, `kubelite_action` (restart, or start where the join
/// stopped it), clean up. Nothing here fails the join: the lines it returns are warnings
/// and the closing line.
pub(super) async fn conclude(
    node: &Node,
    contacted: SocketAddr,
    kubelite_action: ServiceAction,
) -> Result<Vec<String>, JoinError> {
    let mut messages = Vec::new();
    if let Err(e) = node.reload_serving_cert().await {
        messages.push(format!(
            "WARNING: could not serve the new :25000 certificate yet ({e}); restart the daemon."
        ));
    }
    let node2 = node.clone();
    let warnings = blocking(move || {
        let mut warnings = Vec::new();
        // The joined node's Calico reaches the cluster over the interface it contacted.
        if let Err(e) = crate::cluster::calico::pin_own_copy(&node2, contacted.ip()) {
            warnings.push(format!("WARNING: failed to update cni configuration: {e}"));
        }
        if let Err(e) = node2.services().apply(kubelite_action, "kubelite") {
            warnings.push(format!(
                "WARNING: could not {} kubelite: {e}",
                kubelite_action.verb()
            ));
        }
        if let Err(e) = finish(node2.state()) {
            warnings.push(format!(
                "WARNING: could not clean up after the join ({e}); the daemon does it when it starts."
            ));
        }
        Ok::<_, JoinError>(warnings)
    })
    .await?;
    messages.extend(warnings);
    messages.push("Successfully joined the cluster.".into());
    tracing::info!(%contacted, "joined the cluster as a control-plane node");
    Ok(messages)
}

/// The CA key of a control-plane answer, which must also carry the dqlite certificate and
/// voters.
pub(super) fn cluster_ca_key(answer: &JoinResponseV2) -> Result<String, JoinError> {
    match (
        answer.ca_key.clone(),
        answer.cluster_cert.is_empty(),
        answer.voters.is_empty(),
    ) {
        (Some(ca_key), false, false) => Ok(ca_key),
        _ => Err(JoinError::NotAControlPlaneCluster),
    }
}

/// What the install did so far, and where it says what it is doing.
pub(super) struct Progress<'a> {
    pub node: &'a Node,
    pub ticket: &'a Ticket,
    journal: Journal,
    pub voters: Vec<String>,
    contacted: String,
    started: i64,
    pub messages: Vec<String>,
    /// The fresh member may have been ADDed to the cluster (client to it, member id).
    added: Option<(Arc<Client>, u64)>,
    /// The labels and taints the node registers with.
    pub registration: Registration,
}

impl<'a> Progress<'a> {
    pub fn new(
        node: &'a Node,
        ticket: &'a Ticket,
        answer: &JoinResponseV2,
        contacted: SocketAddr,
    ) -> Progress<'a> {
        Progress {
            node,
            ticket,
            journal: Journal::new(node.state()),
            voters: answer.voters.clone(),
            contacted: contacted.to_string(),
            started: node.clock().now_unix(),
            messages: vec!["Waiting for this node to finish joining the cluster.".to_string()],
            added: None,
            registration: Registration::default(),
        }
    }

    /// Before the first write: saves what may be replaced and records that a join is under
    /// way.
    pub async fn begin(&mut self) -> Result<(), JoinError> {
        self.record(JoinStep::Installing)
            .await
            .map_err(|e| match e {
                StepFailed::Failed(e) => JoinError::NothingChanged(e),
                StepFailed::Stopping => JoinError::Stopped,
            })?;
        self.node
            .checkpoint("join-cp-installing")
            .await
            .map_err(|_| JoinError::Stopped)
    }

    /// Records `step` in the journal (and, at the first step, saves the files first).
    pub async fn record(&self, step: JoinStep) -> Result<(), StepFailed> {
        let first = step == JoinStep::Installing;
        let (journal, state) = (self.journal.clone(), self.node.state().clone());
        let record = Record {
            change: Change::JoinControlPlane {
                step,
                voters: self.voters.clone(),
                contacted: self.contacted.clone(),
            },
            started: self.started,
        };
        blocking(move || {
            if first {
                journal.save_files(&touched(&state)).map_err(fail)?;
            }
            journal.record(&record).map_err(fail)
        })
        .await
    }
}

async fn install(
    node: &Node,
    membership: &Membership,
    answer: &JoinResponseV2,
    ca_key: &str,
    progress: &mut Progress<'_>,
) -> Result<(), StepFailed> {
    let ticket = progress.ticket;
    ticket.step("replacing this node's datastore and certificates");
    membership.stop().await.map_err(fail)?;
    let (state, files, bind) = (node.state().clone(), answer.clone(), node.settings().bind);
    let ca_key = ca_key.to_string();
    let failure_domain = membership.template().failure_domain;
    let registration = progress.registration.clone();
    blocking(move || install_files(&state, bind, &files, &ca_key, failure_domain, &registration))
        .await?;
    node.checkpoint("join-cp-installed").await?;

    // A fresh member, added to the cluster as a spare.
    ticket.step("starting the new member");
    let live = membership
        .start(Some(answer.voters.clone()))
        .await
        .map_err(fail)?;
    let client = Arc::new(membership.client(answer.voters.clone()).map_err(fail)?);
    // Recorded before the ADD: one that was applied but whose answer was lost (or that a
    // crash interrupted) must be settled by asking the cluster.
    progress
        .record(JoinStep::Adding {
            id: live.own_id,
            address: live.own_address.clone(),
        })
        .await?;
    progress.added = Some((client.clone(), live.own_id));
    node.checkpoint("join-cp-adding").await?;
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
    progress.record(JoinStep::Joined).await?;
    progress.added = None;
    membership.refresh_cluster_yaml().await;
    Ok(())
}

/// Moves the old datastore aside and installs the cluster's certificates, keys, this node's
/// re-issued leaves and kubeconfigs, and the cluster's arguments and callback token.
/// Blocking.
pub(super) fn install_files(
    state: &StateDir,
    bind: SocketAddr,
    answer: &JoinResponseV2,
    ca_key: &str,
    failure_domain: u64,
    registration: &Registration,
) -> Result<(), StepFailed> {
    let l = state.layout();
    let backend = l.backend_dir();
    let aside = backup_dir(&backend);
    crate::state::rename(&backend, &aside).map_err(fail)?;
    state.ensure_layout().map_err(fail)?;
    let writes: [(PathBuf, &str, u32); 5] = [
        (l.backend("cluster.key"), &answer.cluster_key, mode::SECRET),
        (l.backend("cluster.crt"), &answer.cluster_cert, mode::PUBLIC),
        // The cluster's CA and keys; this node's leaves and kubeconfigs are re-issued
        // from them.
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
    if let Ok(Some(fd)) = crate::state::read_bytes_optional(&aside.join("failure-domain")) {
        state
            .write(&l.backend("failure-domain"), &fd, mode::SECRET)
            .map_err(fail)?;
    }
    for f in ["server.crt", "server.key"] {
        state.remove(&l.cert(f)).map_err(fail)?;
    }
    for f in crate::cluster::bootstrap::KUBECONFIGS {
        state.remove(&l.credential(f)).map_err(fail)?;
    }
    crate::cluster::bootstrap::rebootstrap(state, bind, failure_domain).map_err(fail)?;
    // The cluster's kubelet and API server arguments and callback token.
    let mut kubelet_args = cluster_kubelet_args(answer);
    register(&mut kubelet_args, registration);
    state
        .write(
            &l.args("kubelet"),
            kubelet_args.render().as_bytes(),
            mode::ARGS,
        )
        .map_err(fail)?;
    adopt_apiserver_args(state, answer).map_err(fail)?;
    state
        .write(
            &l.credential("callback-token.txt"),
            answer.callback_token.as_bytes(),
            mode::SECRET,
        )
        .map_err(fail)?;
    state.set_marker("no-cert-reissue").map_err(fail)
}

/// Puts the previous datastore and every replaced file back, from the journal's saved copy
/// and `backend.join-backup`; the journal is cleared once both are back. Blocking; also
/// what settling an unfinished join does. The old datastore is only ever moved, never
/// deleted, so a failed step leaves it where the message says.
pub fn undo(state: &StateDir) -> Result<(), String> {
    let backend = state.layout().backend_dir();
    let aside = backup_dir(&backend);
    let mut failures = Vec::new();
    if crate::state::exists(&aside) {
        let moved_back = crate::state::remove_dir_all(&backend)
            .and_then(|()| crate::state::rename(&aside, &backend));
        if let Err(e) = moved_back {
            failures.push(format!(
                "moving the previous datastore back from {} to {}: {e}",
                aside.display(),
                backend.display()
            ));
        }
    }
    let journal = Journal::new(state);
    match journal.saved_files() {
        Ok(Some(saved)) => {
            if let Err(e) = saved.restore() {
                failures.push(format!("restoring files: {e}"));
            }
        }
        Ok(None) => {}
        Err(e) => failures.push(format!("reading the saved files: {e}")),
    }
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    journal.clear().map_err(|e| e.to_string())
}

/// The join is done: the previous datastore and the saved files go, then the journal.
/// Blocking; also what settling a join the cluster took does.
pub fn finish(state: &StateDir) -> Result<(), crate::state::StateError> {
    crate::state::remove_dir_all(&backup_dir(&state.layout().backend_dir()))?;
    Journal::new(state).clear()
}

async fn rollback(node: &Node, membership: &Membership) -> Result<(), String> {
    // Every step is tried whatever happened to the previous ones.
    let mut failures = Vec::new();
    if let Err(e) = membership.stop().await {
        failures.push(format!("stopping the new member: {e}"));
    }
    let state = node.state().clone();
    match blocking(move || Ok::<_, TaskFailed>(undo(&state))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(e),
        Err(e) => failures.push(e.to_string()),
    }
    if failures.is_empty() {
        if let Err(e) = membership.start(None).await {
            failures.push(format!("restarting the previous member: {e}"));
        }
    }
    if let Err(e) = node.reload_serving_cert().await {
        failures.push(format!("reloading the :25000 certificate: {e}"));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
