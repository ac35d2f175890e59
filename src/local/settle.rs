//! Settling the journal when the daemon starts: a join, leave or reset that a crash, a kill
//! or a power cut interrupted is finished or undone before the daemon serves anything (and
//! before it bootstraps, which would fill in what the change had removed). Each case says in
//! the log what it found and what it did.
//!
//! - A control-plane join is undone while the cluster cannot have added the new member; once
//!   it may have, the cluster says: listed, the join is finished; not listed (or the cluster
//!   cannot be asked), it is undone, and the log names the member to remove there if it was
//!   added after all.
//! - A worker join (local files only) is undone from the saved copy.
//! - A leave is finished once the cluster no longer lists the member (the reset is redone
//!   from the top: it is idempotent); a leave cut short before the cluster removed the
//!   member leaves the node as it was.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cluster::journal::{Change, JoinStep, Journal, LeaveStep, Record};
use crate::dqlite::{Client, ClientTls, Options};
use crate::state::{StateDir, StateError};
use crate::sys::blocking::{blocking, TaskFailed};
use crate::sys::services::{ServiceAction, ServiceManager};

/// How long the cluster gets to say whether it lists a member.
const ASK_CLUSTER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("cannot read the journal of an unfinished change: {0}")]
    Journal(#[from] StateError),
    #[error("settling the journal failed: {0}")]
    Task(String),
    #[error("cannot settle the unfinished {operation} recorded in {journal}: {reason}. Fix the cause and start the daemon again; nothing is served until it is settled")]
    Failed {
        operation: &'static str,
        journal: String,
        reason: String,
    },
}

impl From<TaskFailed> for SettleError {
    fn from(e: TaskFailed) -> Self {
        SettleError::Task(e.to_string())
    }
}

/// Finishes or undoes the change the journal of `state` records, if any. Returns what it
/// did, for the log.
pub async fn settle(
    state: &StateDir,
    bind: SocketAddr,
    services: &dyn ServiceManager,
) -> Result<Option<String>, SettleError> {
    let journal = Journal::new(state);
    let read = journal.clone();
    let Some(record) = blocking(move || read.read().map_err(SettleError::from)).await? else {
        return Ok(None);
    };
    let operation = operation_name(&record);
    let failed = |reason: String| SettleError::Failed {
        operation,
        journal: state.layout().journal().display().to_string(),
        reason,
    };
    let done = match record.change {
        Change::JoinControlPlane { step, voters, .. } => {
            let listed = match &step {
                JoinStep::Installing => Some(false),
                JoinStep::Adding { id, .. } => is_listed(state, &voters, *id).await,
                JoinStep::Joined => Some(true),
            };
            let state2 = state.clone();
            if listed == Some(true) {
                off_runtime(move || {
                    super::join::control_plane::finish(&state2).map_err(|e| e.to_string())
                })
                .await
                .map_err(failed)?;
                restart(services, &["kubelite"]);
                "finished a control-plane join the cluster had taken: this node is its member"
                    .to_string()
            } else {
                off_runtime(move || super::join::control_plane::undo(&state2))
                    .await
                    .map_err(failed)?;
                match (&step, listed) {
                    (JoinStep::Adding { id, address }, None) => format!(
                        "undid an unfinished control-plane join: this node is its previous single-node cluster again. The cluster could not be asked whether it added member {id:#x} at {address}; if it lists that member, remove it there with 'remove-node --force {}'",
                        crate::util::addr::host_of(address)
                    ),
                    _ => "undid an unfinished control-plane join the cluster had not taken: this node is its previous single-node cluster again".to_string(),
                }
            }
        }
        Change::JoinWorker => {
            let journal2 = journal.clone();
            off_runtime(move || {
                journal2
                    .saved_files()
                    .and_then(|saved| saved.map_or(Ok(()), |s| s.restore()))
                    .and_then(|()| journal2.clear())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(failed)?;
            "undid an unfinished worker join: this node is as it was before it".to_string()
        }
        Change::LeaveControlPlane {
            step,
            failure_domain,
        } => {
            let removed = match &step {
                LeaveStep::Removing { id, .. } => is_listed(state, &[], *id).await.map(|l| !l),
                LeaveStep::Resetting => Some(true),
            };
            if removed == Some(true) {
                let (state2, journal2) = (state.clone(), journal.clone());
                off_runtime(move || {
                    super::reset::reset_control_plane(&state2, bind, failure_domain)
                        .and_then(|()| journal2.clear().map_err(|e| e.to_string()))
                })
                .await
                .map_err(failed)?;
                restart(services, &["kubelite"]);
                "finished a leave: this node is a fresh single-node cluster".to_string()
            } else {
                let journal2 = journal.clone();
                off_runtime(move || journal2.clear().map_err(|e| e.to_string()))
                    .await
                    .map_err(failed)?;
                if removed.is_none() {
                    "a leave was cut short and the cluster could not be asked whether it removed this member: the node is kept as it was; 'cluster-agent status' shows whether the cluster still lists it and 'leave' resets it if not".to_string()
                } else {
                    "a leave was cut short before the cluster removed this member: this node is still its member".to_string()
                }
            }
        }
        Change::LeaveWorker => {
            let (state2, journal2) = (state.clone(), journal.clone());
            off_runtime(move || {
                super::reset::reset_worker(&state2, bind)
                    .and_then(|()| journal2.clear().map_err(|e| e.to_string()))
            })
            .await
            .map_err(failed)?;
            if let Err(e) = services.apply(ServiceAction::Stop, "apiserver-proxy") {
                tracing::warn!(error = %e, "could not stop apiserver-proxy");
            }
            restart(services, &["kubelite", "k8s-dqlite"]);
            "finished a worker's leave: this node is a standalone node again".to_string()
        }
    };
    Ok(Some(done))
}

/// Runs `f` on the blocking pool; its failure, or the task's, is the reason text.
async fn off_runtime(
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

fn operation_name(record: &Record) -> &'static str {
    match record.change {
        Change::JoinControlPlane { .. } => "control-plane join",
        Change::JoinWorker => "worker join",
        Change::LeaveControlPlane { .. } => "leave",
        Change::LeaveWorker => "worker leave",
    }
}

fn restart(services: &dyn ServiceManager, names: &[&str]) {
    for name in names {
        if let Err(e) = services.restart(name) {
            tracing::warn!(service = name, error = %e, "could not restart");
        }
    }
}

/// Does the cluster this node's backend belongs to list member `id`? Asked of `seeds` and
/// the members `info.yaml` and `cluster.yaml` name, with the backend's cluster certificate;
/// `None` when no leader answers in time.
async fn is_listed(state: &StateDir, seeds: &[String], id: u64) -> Option<bool> {
    let backend = state.layout().backend_dir();
    let tls = ClientTls::load(&backend.join("cluster.crt"), &backend.join("cluster.key")).ok()?;
    let mut all: Vec<String> = seeds.to_vec();
    if let Ok(Some(nodes)) = crate::dqlite::files::read_cluster(&backend) {
        all.extend(nodes.into_iter().map(|n| n.address));
    }
    if let Ok(Some((_, address))) = crate::dqlite::files::read_info(&backend) {
        all.push(address);
    }
    all.sort();
    all.dedup();
    let options = Options {
        dial_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        call_timeout: ASK_CLUSTER,
        ..Default::default()
    };
    let client = Client::new(all, Some(tls), options).ok()?;
    let nodes = tokio::time::timeout(ASK_CLUSTER, client.cluster())
        .await
        .ok()?
        .ok()?;
    Some(nodes.iter().any(|n| n.id == id))
}
