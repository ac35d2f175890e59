//! Settling the journal when the daemon starts: a join, leave or reset that a crash, a kill
//! or a power cut interrupted is finished or undone before the daemon serves anything (and
//! before it bootstraps, which would fill in what the change had removed). Each case says in
//! the log what it found and what it did.
//!
//! - A control-plane join is undone while the cluster cannot have added the new member; once
//!   it may have, the cluster says: listed, the join is finished; not listed, it is undone;
//!   no answer within a minute, it is undone and the log names the member to remove there if
//!   it was added after all.
//! - With k8s-dqlite's member (`--datastore external`) k8s-dqlite adds the member by itself
//!   once started with `init.yaml`: settling stops it first (the answer cannot change behind
//!   the decision); an `init.yaml` it never consumed means nothing was added; an undo drops
//!   the member if the cluster took it and starts k8s-dqlite and kubelite on the old backend,
//!   a finish starts them on the new one.
//! - A worker join is undone from the saved copy while it was writing files, and finished
//!   once they were all written.
//! - A leave is finished once the cluster no longer lists the member (the reset is redone
//!   from the top: it is idempotent); a leave cut short before the cluster removed the
//!   member leaves the node as it was.
//!
//! Invariant: a decision is recorded in the journal before it is acted on (`Undoing`,
//! `Joined`, `Resetting`), so a crash while settling carries on with the same decision
//! instead of asking again and finding half of its own work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::journal::{Change, JoinStep, Journal, LeaveStep, Record, WorkerStep};
use crate::dqlite::{Client, ClientTls, NodeInfo, Options};
use crate::state::{StateDir, StateError};
use crate::sys::blocking::{blocking, TaskFailed};
use crate::sys::services::{ServiceAction, ServiceManager};

/// How long one question to the cluster may take.
const ASK_ONCE: Duration = Duration::from_secs(10);
/// How long settling keeps asking a cluster that does not answer (it may be coming back
/// from the same power cut) before it decides without it.
const ASK_PATIENCE: Duration = Duration::from_secs(60);

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

/// What settling needs: the state directory, this node's `--bind` (for the bootstrap a
/// reset ends with), the service manager (the restarts the interrupted change still owed)
/// and who hosts the member (`external`: k8s-dqlite, stopped and started around the undo
/// or reset).
pub struct Settle<'a> {
    pub state: &'a StateDir,
    pub bind: SocketAddr,
    pub services: Arc<dyn ServiceManager>,
    pub external: bool,
}

/// Finishes or undoes the change the journal records, if any. Returns what it did, for the
/// log.
pub async fn settle(ctx: &Settle<'_>) -> Result<Option<String>, SettleError> {
    let journal = Journal::new(ctx.state);
    let read = journal.clone();
    let Some(record) = blocking(move || read.read().map_err(SettleError::from)).await? else {
        return Ok(None);
    };
    let operation = operation_name(&record);
    let failed = |reason: String| SettleError::Failed {
        operation,
        journal: ctx.state.layout().journal().display().to_string(),
        reason,
    };
    let done = match record.change.clone() {
        Change::JoinControlPlane { step, voters, .. } => {
            let mut note = None;
            let listed = |nodes: &[NodeInfo], id: Option<u64>, address: &str| {
                nodes
                    .iter()
                    .any(|n| Some(n.id) == id || n.address == address)
            };
            let finish = match &step {
                JoinStep::Installing | JoinStep::Undoing => false,
                JoinStep::Joined => true,
                JoinStep::Adding { id: _, address } | JoinStep::Starting { address } => {
                    let id = match &step {
                        JoinStep::Adding { id, .. } => Some(*id),
                        _ => None,
                    };
                    // k8s-dqlite adds the member by itself: stopped first, the cluster's
                    // answer cannot change behind the decision. While `init.yaml` is still
                    // there it never started the new member, so nothing was added.
                    let frozen = if ctx.external {
                        let services = ctx.services.clone();
                        off_runtime(move || {
                            services
                                .apply(ServiceAction::Stop, crate::cluster::k8s_dqlite::SERVICE)
                                .map_err(|e| format!("stopping k8s-dqlite: {e}"))
                        })
                        .await
                        .map_err(&failed)?;
                        let init = ctx.state.layout().backend(crate::dqlite::files::INIT_YAML);
                        Some(crate::state::exists(&init))
                    } else {
                        None
                    };
                    if frozen == Some(true) {
                        false
                    } else {
                        match ask(ctx.state, &voters).await {
                            Some(nodes) => listed(&nodes, id, address),
                            None => {
                                note = Some(format!(
                                " The cluster did not say within {}s whether it added this node's member at {address}; if it lists it, remove it there with 'remove-node --force {}'.",
                                ASK_PATIENCE.as_secs(),
                                crate::util::addr::host_of(address)
                            ));
                                false
                            }
                        }
                    }
                }
            };
            if finish {
                decide(&journal, &record, JoinStep::Joined)
                    .await
                    .map_err(&failed)?;
                if ctx.external {
                    // k8s-dqlite may not have been started yet, and kubelite was stopped.
                    let services = ctx.services.clone();
                    off_runtime(move || crate::cluster::k8s_dqlite::start(services.as_ref()))
                        .await
                        .map_err(&failed)?;
                } else {
                    restart(&ctx.services, &["kubelite"]).await;
                }
                let state = ctx.state.clone();
                off_runtime(move || {
                    super::join::control_plane::finish(&state).map_err(|e| e.to_string())
                })
                .await
                .map_err(failed)?;
                "finished a control-plane join the cluster had taken: this node is its member"
                    .to_string()
            } else {
                decide(&journal, &record, JoinStep::Undoing)
                    .await
                    .map_err(&failed)?;
                if ctx.external {
                    undo_external_join(ctx, &voters).await.map_err(failed)?;
                } else {
                    let state = ctx.state.clone();
                    off_runtime(move || super::join::control_plane::undo(&state))
                        .await
                        .map_err(failed)?;
                }
                format!(
                    "undid an unfinished control-plane join: this node is its previous single-node cluster again.{}",
                    note.unwrap_or_default()
                )
            }
        }
        Change::JoinWorker {
            step: WorkerStep::Configuring,
        } => {
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
        Change::JoinWorker {
            step: WorkerStep::Configured,
        } => {
            restart(
                &ctx.services,
                &["kubelite", "apiserver-proxy", "k8s-dqlite"],
            )
            .await;
            clear(&journal).await.map_err(failed)?;
            "finished a worker join: this node is a worker of its cluster".to_string()
        }
        Change::LeaveControlPlane {
            step,
            failure_domain,
            member_address,
        } => {
            let removed = match &step {
                LeaveStep::Removing { id, .. } => ask(ctx.state, &[])
                    .await
                    .map(|nodes| !nodes.iter().any(|n| n.id == *id)),
                LeaveStep::Resetting => Some(true),
            };
            if removed == Some(true) {
                if let LeaveStep::Removing { .. } = step {
                    let resetting = Change::LeaveControlPlane {
                        step: LeaveStep::Resetting,
                        failure_domain,
                        member_address: member_address.clone(),
                    };
                    record_change(&journal, &record, resetting)
                        .await
                        .map_err(&failed)?;
                }
                let (state, bind) = (ctx.state.clone(), ctx.bind);
                if ctx.external {
                    let address = member_address.unwrap_or_else(|| {
                        crate::cluster::k8s_dqlite::member_address(&bind.ip().to_string(), None)
                    });
                    let services = ctx.services.clone();
                    off_runtime(move || {
                        super::reset::reset_external_control_plane(
                            &state,
                            services.as_ref(),
                            bind,
                            failure_domain,
                            &address,
                        )
                    })
                    .await
                    .map_err(&failed)?;
                } else {
                    off_runtime(move || {
                        super::reset::reset_control_plane(&state, bind, failure_domain)
                    })
                    .await
                    .map_err(&failed)?;
                    restart(&ctx.services, &["kubelite"]).await;
                }
                clear(&journal).await.map_err(failed)?;
                "finished a leave: this node is a fresh single-node cluster".to_string()
            } else {
                clear(&journal).await.map_err(failed)?;
                if removed.is_none() {
                    "a leave was cut short and the cluster could not be asked whether it removed this member: the node is kept as it was; 'cluster-agent status' shows whether the cluster still lists it and 'leave' resets it if not".to_string()
                } else {
                    "a leave was cut short before the cluster removed this member: this node is still its member".to_string()
                }
            }
        }
        Change::LeaveWorker => {
            let (state, bind) = (ctx.state.clone(), ctx.bind);
            off_runtime(move || super::reset::reset_worker(&state, bind))
                .await
                .map_err(&failed)?;
            let services = ctx.services.clone();
            blocking(move || {
                if let Err(e) = services.apply(ServiceAction::Stop, "apiserver-proxy") {
                    tracing::warn!(error = %e, "could not stop apiserver-proxy");
                }
                Ok::<_, TaskFailed>(())
            })
            .await
            .ok();
            restart(&ctx.services, &["kubelite", "k8s-dqlite"]).await;
            clear(&journal).await.map_err(failed)?;
            "finished a worker's leave: this node is a standalone node again".to_string()
        }
    };
    Ok(Some(done))
}

/// Records the decision `step` for the control-plane join in `record`.
async fn decide(journal: &Journal, record: &Record, step: JoinStep) -> Result<(), String> {
    let Change::JoinControlPlane {
        voters, contacted, ..
    } = record.change.clone()
    else {
        return Err("not a control-plane join".into());
    };
    record_change(
        journal,
        record,
        Change::JoinControlPlane {
            step,
            voters,
            contacted,
        },
    )
    .await
}

async fn record_change(journal: &Journal, record: &Record, change: Change) -> Result<(), String> {
    let (journal, record) = (
        journal.clone(),
        Record {
            change,
            started: record.started,
        },
    );
    off_runtime(move || journal.record(&record).map_err(|e| e.to_string())).await
}

async fn clear(journal: &Journal) -> Result<(), String> {
    let journal = journal.clone();
    off_runtime(move || journal.clear().map_err(|e| e.to_string())).await
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
        Change::JoinWorker { .. } => "worker join",
        Change::LeaveControlPlane { .. } => "leave",
        Change::LeaveWorker => "worker leave",
    }
}

/// The restarts an interrupted change still owed (on the blocking pool; a failure is only
/// logged: the node's files are what they should be).
async fn restart(services: &Arc<dyn ServiceManager>, names: &[&'static str]) {
    let (services, names) = (services.clone(), names.to_vec());
    let _ = tokio::task::spawn_blocking(move || {
        for name in names {
            if let Err(e) = services.restart(name) {
                tracing::warn!(service = name, error = %e, "could not restart");
            }
        }
    })
    .await;
}

/// The members the cluster of this node's backend lists. Asked again until it answers or
/// [`ASK_PATIENCE`] runs out (`None`).
async fn ask(state: &StateDir, seeds: &[String]) -> Option<Vec<NodeInfo>> {
    let until = tokio::time::Instant::now() + ASK_PATIENCE;
    loop {
        if let Some(nodes) = members(state, seeds).await {
            return Some(nodes);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tracing::info!("the cluster does not answer yet; asking again");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A client to the cluster this node's backend belongs to: `seeds` and the members
/// `info.yaml` and `cluster.yaml` name, with the backend's cluster certificate.
fn backend_client(state: &StateDir, seeds: &[String]) -> Option<Client> {
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
        call_timeout: ASK_ONCE,
        ..Default::default()
    };
    Client::new(all, Some(tls), options).ok()
}

/// The members the cluster of this node's backend lists; `None` when no leader answers in
/// time (or the backend cannot say who to ask).
async fn members(state: &StateDir, seeds: &[String]) -> Option<Vec<NodeInfo>> {
    let client = backend_client(state, seeds)?;
    tokio::time::timeout(ASK_ONCE, client.cluster())
        .await
        .ok()?
        .ok()
}

/// Undoes an external control-plane join: k8s-dqlite and the API server stop, the cluster
/// drops the member k8s-dqlite may have added (while the new backend is still in place to
/// say which), the old backend and files come back, both start again.
async fn undo_external_join(ctx: &Settle<'_>, voters: &[String]) -> Result<(), String> {
    let services = ctx.services.clone();
    off_runtime(move || crate::cluster::k8s_dqlite::stop(services.as_ref())).await?;
    let backend = ctx.state.layout().backend_dir();
    let replaced = crate::state::exists(&super::join::control_plane::backup_dir(&backend));
    if let (true, Ok(Some((_, address)))) = (replaced, crate::dqlite::files::read_info(&backend)) {
        if let Some(client) = backend_client(ctx.state, voters) {
            let removed = tokio::time::timeout(
                ASK_PATIENCE,
                crate::cluster::k8s_dqlite::remove_if_listed(&client, &address),
            )
            .await
            .unwrap_or_else(|_| Err("no answer".into()));
            if let Err(e) = removed {
                tracing::warn!(error = %e, address, "could not make sure the cluster dropped the half-joined member; if it lists it, remove it there with 'remove-node --force'");
            }
        }
    }
    let state = ctx.state.clone();
    off_runtime(move || super::join::control_plane::undo(&state)).await?;
    let services = ctx.services.clone();
    off_runtime(move || crate::cluster::k8s_dqlite::start(services.as_ref())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::services::RecordingServices;

    /// A control-plane join stopped after it moved the old datastore aside and replaced
    /// `ca.crt`, recorded at `step`.
    fn half_joined(dir: &std::path::Path, step: JoinStep) -> StateDir {
        let state = StateDir::new(dir);
        state.ensure_layout().unwrap();
        let l = state.layout();
        state.write(&l.ca_crt(), b"old CA", 0o644).unwrap();
        state.write(&l.backend("old-data"), b"x", 0o600).unwrap();
        let journal = Journal::new(&state);
        journal.save_files(&[l.ca_crt()]).unwrap();
        journal
            .record(&Record {
                change: Change::JoinControlPlane {
                    step,
                    voters: vec!["127.0.0.1:1".into()],
                    contacted: "127.0.0.1:25000".into(),
                },
                started: 0,
            })
            .unwrap();
        let aside = super::super::join::control_plane::backup_dir(&l.backend_dir());
        crate::state::rename(&l.backend_dir(), &aside).unwrap();
        state.write(&l.backend("new-data"), b"y", 0o600).unwrap();
        state.write(&l.ca_crt(), b"cluster CA", 0o644).unwrap();
        state
    }

    async fn run(state: &StateDir) -> (Option<String>, RecordingServices) {
        run_with(state, false).await
    }

    async fn run_with(state: &StateDir, external: bool) -> (Option<String>, RecordingServices) {
        let services = RecordingServices::default();
        let done = settle(&Settle {
            state,
            bind: "127.0.0.1:25000".parse().unwrap(),
            services: Arc::new(services.clone()),
            external,
        })
        .await
        .unwrap();
        (done, services)
    }

    fn calls(services: &RecordingServices) -> Vec<String> {
        services
            .calls()
            .into_iter()
            .map(|(a, s)| format!("{} {s}", a.verb()))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_external_join_is_undone_around_a_stopped_k8s_dqlite() {
        let dir = tempfile::tempdir().unwrap();
        let state = half_joined(dir.path(), JoinStep::Installing);
        let (done, services) = run_with(&state, true).await;
        assert!(done.unwrap().starts_with("undid"));
        assert!(crate::state::exists(&state.layout().backend("old-data")));
        assert_eq!(
            calls(&services),
            [
                "stop kubelite",
                "stop k8s-dqlite",
                "start k8s-dqlite",
                "start kubelite"
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unconsumed_init_yaml_means_nothing_was_added_so_nothing_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let state = half_joined(
            dir.path(),
            JoinStep::Starting {
                address: "127.0.0.1:1".into(),
            },
        );
        state
            .write(&state.layout().backend("init.yaml"), b"Address: x\n", 0o600)
            .unwrap();
        // Nothing answers at the voters: asking would take a minute.
        let started = std::time::Instant::now();
        let (done, services) = run_with(&state, true).await;
        assert!(
            started.elapsed() < ASK_PATIENCE / 2,
            "the cluster was asked"
        );
        assert!(done.unwrap().starts_with("undid"));
        assert!(crate::state::exists(&state.layout().backend("old-data")));
        assert_eq!(calls(&services)[0], "stop k8s-dqlite", "frozen first");
        assert_eq!(calls(&services).last().unwrap(), "start kubelite");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_undo_decided_earlier_is_carried_through() {
        for step in [JoinStep::Installing, JoinStep::Undoing] {
            let dir = tempfile::tempdir().unwrap();
            let state = half_joined(dir.path(), step.clone());
            let (done, services) = run(&state).await;
            assert!(done.unwrap().starts_with("undid"), "{step:?}");
            let l = state.layout();
            assert!(crate::state::exists(&l.backend("old-data")), "{step:?}");
            assert!(!crate::state::exists(&l.backend("new-data")), "{step:?}");
            assert_eq!(state.read_string(&l.ca_crt()).unwrap(), "old CA");
            assert!(!Journal::new(&state).pending().unwrap());
            assert!(
                services.calls().is_empty(),
                "nothing to restart after an undo"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_join_the_cluster_took_is_finished_without_asking_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = half_joined(dir.path(), JoinStep::Joined);
        let (done, services) = run(&state).await;
        assert!(done.unwrap().starts_with("finished"));
        let l = state.layout();
        assert!(crate::state::exists(&l.backend("new-data")));
        assert!(!crate::state::exists(
            &super::super::join::control_plane::backup_dir(&l.backend_dir())
        ));
        assert_eq!(state.read_string(&l.ca_crt()).unwrap(), "cluster CA");
        assert!(!Journal::new(&state).pending().unwrap());
        assert_eq!(services.calls().len(), 1, "kubelite restarted once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_to_settle_is_nothing_done() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.ensure_layout().unwrap();
        assert_eq!(run(&state).await.0, None);
    }
}
