//! This node's part in a lost-quorum recovery, whoever coordinates it (`local::recover` on
//! this node, or another survivor over :25000): say what it has (`survey`), stop its member
//! and back up its data (`prepare`), hand its raft files over (`export`), write the new
//! configuration into its log (`reconfigure`, on the winner), take the winner's files
//! (`install`, on the others), start its member again (`start`) and forget the run
//! (`finish`).
//!
//! Invariants:
//! - One run at a time: `prepare` takes a lease for its run (and this node's operation
//!   slot, so no join or leave interleaves); another run is refused while the lease holds.
//!   The lease lasts [`LEASE`] from the coordinator's last call; when it runs out (the
//!   coordinator died or went silent) the member is started again on whatever data it has,
//!   the slot is freed, and the record stays, so the next `recover` knows a run was cut.
//! - Every step but `survey` needs the lease of its run; the member is stopped before any
//!   file of its data changes, and backed up before the first change.
//! - The record (`var/cluster-agent/recovery.json`) is written before each step and removed
//!   only by `finish`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::node::Node;
use super::operation::Ticket;
use crate::dqlite::{recovery, NodeInfo, Role};
use crate::format::bundle::{self, BundleFile};
use crate::format::recovery::{
    LogPosition, MemberProgress, Prepared, RecoveredMember, RecoveryRecord, RunRequest, StepDone,
    SurvivorReport,
};
use crate::state::{mode, StateError};
use crate::sys::blocking::{blocking, TaskFailed};

/// How long a run holds this node after the coordinator's last call.
pub const LEASE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("the request is not signed with this cluster's key")]
    Unauthorized,
    #[error("another recovery holds this node: {0}")]
    Busy(String),
    #[error("this node takes no part in recovery run {0}: it was never prepared for it, or its lease ran out (re-run `cluster-agent recover`)")]
    NotPrepared(String),
    #[error("this node has no dqlite member to recover (a worker, or a node that never ran one)")]
    NoMember,
    #[error("{0}")]
    Failed(String),
}

impl From<StateError> for RecoveryError {
    fn from(e: StateError) -> Self {
        RecoveryError::Failed(e.to_string())
    }
}

impl From<recovery::RecoveryError> for RecoveryError {
    fn from(e: recovery::RecoveryError) -> Self {
        RecoveryError::Failed(e.to_string())
    }
}

impl From<TaskFailed> for RecoveryError {
    fn from(e: TaskFailed) -> Self {
        RecoveryError::Failed(e.to_string())
    }
}

/// The run holding this node now.
struct Lease {
    run: String,
    coordinator: String,
    until: Instant,
    member_stopped: bool,
    _ticket: Ticket,
}

/// The lease slot of one node (part of [`Node`]).
#[derive(Clone, Default)]
pub struct Leases {
    current: Arc<Mutex<Option<Lease>>>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").finish_non_exhaustive()
    }
}

impl Leases {
    /// The run holding this node, if its lease has not run out.
    fn holder(&self) -> Option<(String, String)> {
        let current = self.current.lock().ok()?;
        current
            .as_ref()
            .filter(|l| l.until > Instant::now())
            .map(|l| (l.run.clone(), l.coordinator.clone()))
    }

    /// Renews `run`'s lease; `false` if it does not hold this node.
    fn renew(&self, run: &str) -> bool {
        let Ok(mut current) = self.current.lock() else {
            return false;
        };
        match current.as_mut() {
            Some(l) if l.run == run && l.until > Instant::now() => {
                l.until = Instant::now() + LEASE;
                true
            }
            _ => false,
        }
    }

    fn set_member_stopped(&self, run: &str, stopped: bool) {
        if let Ok(mut current) = self.current.lock() {
            if let Some(l) = current.as_mut().filter(|l| l.run == run) {
                l.member_stopped = stopped;
            }
        }
    }

    fn release(&self, run: &str) {
        if let Ok(mut current) = self.current.lock() {
            if current.as_ref().is_some_and(|l| l.run == run) {
                *current = None;
            }
        }
    }
}

fn require(node: &Node, req: &RunRequest) -> Result<(), RecoveryError> {
    if node.recovery().renew(&req.run) {
        Ok(())
    } else {
        Err(RecoveryError::NotPrepared(req.run.clone()))
    }
}

/// The recovery record on disk, if any.
pub fn read_record(node: &Node) -> Result<Option<RecoveryRecord>, RecoveryError> {
    let path = node.state().layout().recovery_record();
    let Some(text) = node.state().read_optional(&path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| RecoveryError::Failed(format!("{}: {e}", path.display())))
}

fn write_record(node: &Node, record: &RecoveryRecord) -> Result<(), RecoveryError> {
    let path = node.state().layout().recovery_record();
    let text =
        serde_json::to_vec_pretty(record).map_err(|e| RecoveryError::Failed(e.to_string()))?;
    node.state().write(&path, &text, mode::SECRET)?;
    Ok(())
}

fn record_step(node: &Node, run: &str, step: &str) -> Result<(), RecoveryError> {
    if let Some(mut record) = read_record(node)?.filter(|r| r.run == run) {
        record.step = step.into();
        write_record(node, &record)?;
    }
    Ok(())
}

/// This node's member identity (`info.yaml`).
fn identity(node: &Node) -> Result<(u64, String), RecoveryError> {
    crate::dqlite::files::read_info(&node.state().layout().backend_dir())?
        .ok_or(RecoveryError::NoMember)
}

fn position(summary: &crate::dqlite::raft_log::LogSummary) -> Option<LogPosition> {
    summary.last.map(|e| LogPosition {
        term: e.term,
        index: e.index,
    })
}

/// Does this node's member run? The embedded one runs while the slot holds it; k8s-dqlite's
/// is known from its files whether it runs or not, so it must answer DESCRIBE within 1 s.
async fn member_answers(node: &Node) -> bool {
    let Some(live) = node.own_member() else {
        return false;
    };
    if node.membership().is_some() {
        return true;
    }
    tokio::time::timeout(
        Duration::from_secs(1),
        live.client.describe(&live.own_address),
    )
    .await
    .is_ok_and(|answer| answer.is_ok())
}

/// What this node has: its member, whether it runs, its log's last entry, any run recorded.
pub async fn survey(node: &Node) -> Result<SurvivorReport, RecoveryError> {
    if node.state().has_marker("clustered.lock") {
        return Err(RecoveryError::NoMember);
    }
    let (id, address) = identity(node)?;
    let backend = node.state().layout().backend_dir();
    let (summary, configuration) = blocking(move || {
        let summary = recovery::last_entry(&backend)?;
        // A log whose configuration cannot be read still has a last entry to compare.
        let configuration = recovery::last_configuration(&backend)
            .ok()
            .flatten()
            .unwrap_or_default();
        Ok::<_, RecoveryError>((summary, configuration))
    })
    .await?;
    Ok(SurvivorReport {
        configuration: configuration
            .into_iter()
            .map(|m| RecoveredMember {
                id: m.id,
                address: m.address,
                role: m.role.code(),
            })
            .collect(),
        id,
        address,
        datastore: if node.settings().external_datastore {
            "external"
        } else {
            "embedded"
        }
        .into(),
        member_running: member_answers(node).await,
        last_entry: position(&summary),
        recovery: read_record(node)?,
        held_by: node
            .recovery()
            .holder()
            .map(|(run, coordinator)| RunRequest { run, coordinator }),
    })
}

/// Joins `req.run`: takes the lease (refused while another run holds it), stops the member,
/// backs its data up and reads its log's last entry with the member stopped. Idempotent for
/// the run holding the lease (the member stays stopped, a new backup is not made).
pub async fn prepare(node: &Node, req: &RunRequest) -> Result<Prepared, RecoveryError> {
    identity(node)?;
    let stamp = backup_stamp(node.clock().now_unix());
    let already = node.recovery().renew(&req.run);
    if !already {
        if let Some((run, coordinator)) = node.recovery().holder() {
            return Err(RecoveryError::Busy(format!(
                "recovery run {run}, coordinated by {coordinator}, is under way; wait for it to end (its lease lasts {} s after its last step) or re-run `cluster-agent recover` on {coordinator}",
                LEASE.as_secs()
            )));
        }
        let ticket = node.operations().begin("recover").map_err(|p| {
            RecoveryError::Busy(format!(
                "a {} is in progress on this node ({})",
                p.operation, p.step
            ))
        })?;
        ticket.step("stopping the member for a recovery");
        if let Ok(mut current) = node.recovery().current.lock() {
            *current = Some(Lease {
                run: req.run.clone(),
                coordinator: req.coordinator.clone(),
                until: Instant::now() + LEASE,
                member_stopped: false,
                _ticket: ticket,
            });
        }
        spawn_watchdog(node.clone(), req.run.clone());
    }
    let previous = read_record(node)?;
    let mut record = match previous {
        Some(r) if r.run == req.run => r,
        earlier => {
            if let Some(e) = earlier {
                tracing::warn!(run = %e.run, coordinator = %e.coordinator, step = %e.step, "an earlier recovery run did not finish here; this one takes over");
            }
            RecoveryRecord {
                run: req.run.clone(),
                coordinator: req.coordinator.clone(),
                started: node.clock().now_unix(),
                step: "preparing".into(),
                backup: None,
            }
        }
    };
    write_record(node, &record)?;
    stop_member(node).await?;
    node.recovery().set_member_stopped(&req.run, true);
    let backend = node.state().layout().backend_dir();
    if record.backup.is_none() {
        let dir = backend.clone();
        let path =
            blocking(move || recovery::backup(&dir, &stamp).map_err(RecoveryError::from)).await?;
        tracing::info!(run = %req.run, backup = %path.display(), "backed up the datastore for the recovery");
        record.backup = Some(path.display().to_string());
    }
    record.step = "prepared".into();
    write_record(node, &record)?;
    let summary =
        blocking(move || recovery::last_entry(&backend).map_err(RecoveryError::from)).await?;
    Ok(Prepared {
        backup: record.backup.unwrap_or_default(),
        last_entry: position(&summary),
    })
}

/// This node's raft files, as a bundle (the winner's data for the others).
pub async fn export(node: &Node, req: &RunRequest) -> Result<Vec<u8>, RecoveryError> {
    require(node, req)?;
    let backend = node.state().layout().backend_dir();
    let files =
        blocking(move || recovery::raft_files(&backend).map_err(RecoveryError::from)).await?;
    bundle::encode(&files).map_err(|e| RecoveryError::Failed(e.to_string()))
}

/// Writes the configuration `members` into this node's log (the winner's), and
/// `cluster.yaml` to match.
pub async fn reconfigure(
    node: &Node,
    req: &RunRequest,
    members: &[RecoveredMember],
) -> Result<StepDone, RecoveryError> {
    require(node, req)?;
    let nodes = members
        .iter()
        .map(|m| {
            Ok(NodeInfo {
                id: m.id,
                address: m.address.clone(),
                role: Role::from_code(m.role).map_err(|e| RecoveryError::Failed(e.to_string()))?,
            })
        })
        .collect::<Result<Vec<_>, RecoveryError>>()?;
    record_step(node, &req.run, "reconfiguring")?;
    node.checkpoint("recover-reconfigure").await.ok();
    let backend = node.state().layout().backend_dir();
    blocking(move || recovery::reconfigure(&backend, &nodes).map_err(RecoveryError::from)).await?;
    record_step(node, &req.run, "reconfigured")?;
    tracing::warn!(run = %req.run, members = members.len(), "wrote the recovered configuration into this member's log");
    Ok(StepDone {
        message: format!(
            "the log now holds a configuration of {} member(s)",
            members.len()
        ),
    })
}

/// Replaces this node's raft files with the winner's (`bundle`).
pub async fn install(
    node: &Node,
    req: &RunRequest,
    data: &[u8],
) -> Result<StepDone, RecoveryError> {
    require(node, req)?;
    let files: Vec<BundleFile> = bundle::decode(data)
        .map_err(|e| RecoveryError::Failed(format!("the winner's data: {e}")))?;
    record_step(node, &req.run, "installing")?;
    node.checkpoint("recover-install").await.ok();
    require(node, req)?;
    let backend = node.state().layout().backend_dir();
    let count = files.len();
    blocking(move || recovery::install(&backend, &files).map_err(RecoveryError::from)).await?;
    record_step(node, &req.run, "installed")?;
    tracing::warn!(run = %req.run, files = count, "installed the winner's data");
    Ok(StepDone {
        message: format!("installed {count} file(s) of the winner's data"),
    })
}

/// Starts this node's member again on the data it has now.
pub async fn start(node: &Node, req: &RunRequest) -> Result<StepDone, RecoveryError> {
    require(node, req)?;
    record_step(node, &req.run, "starting")?;
    start_member(node).await?;
    node.recovery().set_member_stopped(&req.run, false);
    record_step(node, &req.run, "started")?;
    Ok(StepDone {
        message: "the member runs".into(),
    })
}

/// The run is over for this node: the record goes, the lease and the slot are freed.
pub async fn finish(node: &Node, req: &RunRequest) -> Result<StepDone, RecoveryError> {
    if read_record(node)?.is_some_and(|r| r.run == req.run) {
        crate::state::remove_file_durably(&node.state().layout().recovery_record())?;
    }
    node.recovery().release(&req.run);
    Ok(StepDone {
        message: "the recovery is finished here".into(),
    })
}

/// Starts the member again (and frees the node) when `run`'s lease runs out.
fn spawn_watchdog(node: Node, run: String) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let expired = {
                let Ok(current) = node.recovery().current.lock() else {
                    return;
                };
                match current.as_ref() {
                    Some(l) if l.run == run => {
                        (l.until <= Instant::now()).then_some(l.member_stopped)
                    }
                    _ => return,
                }
            };
            let Some(member_stopped) = expired else {
                continue;
            };
            tracing::warn!(%run, "the recovery's coordinator went silent: its lease ran out; starting the member again on the data it has (re-run `cluster-agent recover` to finish)");
            if member_stopped {
                if let Err(e) = start_member(&node).await {
                    tracing::error!(%run, error = %e, "cannot start the member again after the recovery's lease ran out");
                }
            }
            node.recovery().release(&run);
            return;
        }
    });
}

async fn stop_member(node: &Node) -> Result<(), RecoveryError> {
    if let Some(membership) = node.membership() {
        return membership
            .stop()
            .await
            .map_err(|e| RecoveryError::Failed(format!("stopping the member: {e}")));
    }
    if node.settings().external_datastore {
        let services = node.services_arc();
        blocking(move || super::k8s_dqlite::stop(services.as_ref()).map_err(RecoveryError::Failed))
            .await?;
        if let Some(external) = node.external() {
            external.forget();
        }
        return Ok(());
    }
    Err(RecoveryError::NoMember)
}

async fn start_member(node: &Node) -> Result<(), RecoveryError> {
    if let Some(membership) = node.membership() {
        membership
            .start(None)
            .await
            .map_err(|e| RecoveryError::Failed(format!("starting the member: {e}")))?;
        return Ok(());
    }
    if node.settings().external_datastore {
        let services = node.services_arc();
        blocking(move || {
            super::k8s_dqlite::start(services.as_ref()).map_err(RecoveryError::Failed)
        })
        .await?;
        if let Some(external) = node.external() {
            external.forget();
        }
        return Ok(());
    }
    Err(RecoveryError::NoMember)
}

/// `20261202T045500Z`: the UTC time a backup is named after.
pub fn backup_stamp(now_unix: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(now_unix) else {
        return now_unix.to_string();
    };
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The :25000 address of the agent of the member at `member_address`: its host, this node's
/// agent port (every node of a cluster serves on the same port, as MicroK8s's do).
pub fn agent_address(node: &Node, member_address: &str) -> Option<std::net::SocketAddr> {
    let host = crate::util::addr::host_of(member_address);
    let ip: std::net::IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    Some(std::net::SocketAddr::new(ip, node.settings().bind.port()))
}

/// A client for calls to other control planes, signed with this cluster's key and checking
/// their certificate against this cluster's CA.
pub fn signed_client(
    node: &Node,
) -> Result<crate::clients::recovery::RecoveryClient, RecoveryError> {
    let layout = node.state().layout();
    let key = crate::state::read_bytes(&layout.backend("cluster.key"))?;
    let ca = node.state().read_string(&layout.ca_crt())?;
    let ca_sha256 = crate::pki::cert_sha256_hex(&ca, "the cluster CA")
        .map_err(|e| RecoveryError::Failed(e.to_string()))?;
    Ok(crate::clients::recovery::RecoveryClient::new(
        key,
        ca_sha256,
        Some(node.settings().bind.ip()),
    ))
}

/// How long a log position read from disk is answered again: `status` asks every member on
/// every call, and a read means reading the open segments (8 MiB each).
const PROGRESS_FRESH: Duration = Duration::from_secs(1);

/// The last answer of [`progress`] and when it was read (part of [`Node`]).
#[derive(Clone, Default)]
pub struct ProgressCache {
    last: Arc<Mutex<Option<(Instant, MemberProgress)>>>,
}

impl std::fmt::Debug for ProgressCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressCache").finish_non_exhaustive()
    }
}

/// This node's member and where its log ends (read from its data directory at most
/// [`PROGRESS_FRESH`] ago): what the roles driver compares with the leader's before it
/// promotes a member, and what `status` shows.
pub async fn progress(node: &Node) -> Result<MemberProgress, RecoveryError> {
    let cache = node.progress_cache().last.clone();
    if let Ok(last) = cache.lock() {
        if let Some((_, p)) = last
            .as_ref()
            .filter(|(at, _)| at.elapsed() < PROGRESS_FRESH)
        {
            return Ok(p.clone());
        }
    }
    let (id, address) = identity(node)?;
    let backend = node.state().layout().backend_dir();
    let summary =
        blocking(move || recovery::last_entry(&backend).map_err(RecoveryError::from)).await?;
    let answer = MemberProgress {
        id,
        address,
        last_entry: position(&summary),
    };
    if let Ok(mut last) = cache.lock() {
        *last = Some((Instant::now(), answer.clone()));
    }
    Ok(answer)
}

/// Where members' logs end, as their agents read them (this node's own log is read here):
/// what the roles driver checks before it promotes a member.
pub struct AgentProgress {
    node: Node,
}

impl AgentProgress {
    pub fn new(node: Node) -> AgentProgress {
        AgentProgress { node }
    }

    async fn ask(&self, address: &str) -> Option<u64> {
        if identity(&self.node).is_ok_and(|(_, own)| own == address) {
            return progress(&self.node).await.ok()?.last_entry.map(|e| e.index);
        }
        let agent = agent_address(&self.node, address)?;
        // Built for each question: a join or leave replaces the key and CA it is made from.
        let client = signed_client(&self.node).ok()?;
        let body = b"{}".to_vec();
        let now = self.node.clock().now_unix();
        let answer = client
            .call(
                agent,
                crate::format::recovery::PROGRESS,
                body,
                now,
                PROGRESS_TIMEOUT,
            )
            .await
            .ok()?;
        let told: MemberProgress = serde_json::from_slice(&answer).ok()?;
        // An agent that answers for another member (a rebuilt machine) tells nothing of this one.
        (told.address == address).then_some(told.last_entry?.index)
    }
}

/// How long a member's agent gets to say where its log ends.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(1);

impl super::roles::driver::Progress for AgentProgress {
    fn last_index<'a>(
        &'a self,
        address: &'a str,
    ) -> crate::sys::runner::BoxFuture<'a, Option<u64>> {
        Box::pin(self.ask(address))
    }
}

/// Checks a request's proof: signed with this cluster's key (`cluster.key`) within the
/// proof window.
pub fn authorize(
    node: &Node,
    proof: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(), RecoveryError> {
    let proof = proof.ok_or(RecoveryError::Unauthorized)?;
    let key = crate::state::read_bytes(&node.state().layout().backend("cluster.key"))
        .map_err(|_| RecoveryError::Unauthorized)?;
    let now = node.clock().now_unix();
    if crate::util::mac::check_proof(&key, proof, now, method, path, body) {
        Ok(())
    } else {
        Err(RecoveryError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backup_stamps_are_utc_and_sortable() {
        assert_eq!(super::backup_stamp(1_796_187_300), "20261202T045500Z");
    }
}
