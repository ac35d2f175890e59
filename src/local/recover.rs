//! `recover` on one survivor of a cluster that lost its quorum: it coordinates the whole
//! procedure of `dqlite.h` across every survivor it can reach, so no command is needed on
//! the others.
//!
//! 1. Refuses while the quorum holds (unless `--force`, or an earlier run was cut short).
//! 2. Asks every other member of the last configuration it saw for a survey, over its
//!    :25000, signed with the cluster's key (`clients::recovery`): the members that answer
//!    are the survivors (all of them, or the ones `--survivor` names), the rest are dropped.
//! 3. Plans: the survivor whose log ends with the most recent entry (term, then index) wins;
//!    it keeps the vote, the others come back as stand-bys (the roles manager promotes them
//!    as the survivors allow). `--dry-run` stops here.
//! 4. Prepares every survivor (member stopped, backend backed up, log read again with the
//!    member stopped), writes the new configuration into the winner's log, copies the
//!    winner's raft files to the others, starts the winner then the others, and waits until
//!    the recovered cluster lists exactly the survivors.
//! 5. Deletes the dropped members' Kubernetes Nodes (when an API server answers), finishes
//!    the run on every survivor, and says how to regain high availability.
//!
//! Invariants: nothing changes before every survivor is prepared (a refusal or an
//! unreachable survivor then restarts every member on its own data); backups are never
//! deleted; a survivor's part is idempotent for its run, so re-running `recover` after a
//! crash at any step finishes the job (see `cluster::recovery` for the lease that keeps two
//! runs apart).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{ErrorKind, Refusal};
use super::status;
use crate::clients::recovery::{CallError, RecoveryClient};
use crate::cluster::node::Node;
use crate::cluster::recovery as survivor;
use crate::dqlite::files;
use crate::dqlite::{NodeInfo, Role};
use crate::format::bundle::{self, BundleFile};
use crate::format::recovery::{
    self as wire, LogPosition, Prepared, ReconfigureRequest, RecoveredMember, RunRequest,
    SurvivorReport,
};

/// How long a survivor gets to answer its survey.
const SURVEY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a step that stops, copies or starts a member may take on a survivor.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the recovered cluster gets to list every survivor.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecoverRequest {
    /// Print the plan and change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Recover although the quorum holds.
    #[serde(default)]
    pub force: bool,
    /// The survivors to keep (ids or addresses); empty: every member that answers.
    #[serde(default)]
    pub survivors: Vec<String>,
    /// The survivors (ids) of the plan the user confirmed: refused if they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<Vec<u64>>,
}

/// One member in the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedMember {
    pub id: u64,
    pub address: String,
    /// Its role in the last configuration this node saw (`voter`, `standby`, `spare`).
    pub role: String,
    /// Its role after the recovery (kept members only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_role: Option<String>,
    /// The last entry of its log (kept members only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_entry: Option<LogPosition>,
    /// Why it is dropped (dropped members only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryPlan {
    /// The datastore as `status` sees it now.
    pub condition: String,
    pub kept: Vec<PlannedMember>,
    pub dropped: Vec<PlannedMember>,
    /// Whose data wins (its id and address).
    pub winner: PlannedMember,
    /// An earlier run that did not finish on some survivor, if one is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverResponse {
    pub plan: RecoveryPlan,
    /// The plan was carried out (false for `--dry-run`).
    pub executed: bool,
    pub messages: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("This node has no dqlite member to recover ({0}). Run `cluster-agent recover` on a control-plane node that survived.")]
    NotControlPlane(String),
    #[error("The cluster has its quorum ({0}): there is nothing to recover. Remove members that are gone for good with `cluster-agent remove-node --force`; `recover --force` rebuilds the cluster from the members that answer anyway.")]
    QuorumHolds(String),
    #[error("{0}")]
    BadSurvivor(String),
    #[error("{0}")]
    Busy(String),
    #[error("The survivors changed since the plan was shown ({0}). Nothing was changed; run `cluster-agent recover` again to see the new plan.")]
    PlanChanged(String),
    #[error("The recovery stopped before it changed any survivor's data: {0}. Every member was started again on its own data; nothing else changed.")]
    NothingChanged(String),
    #[error("The recovery did not complete on every survivor:\n{0}\nEvery survivor's data was backed up first. Run `cluster-agent recover` again (on any survivor) to finish it.")]
    Incomplete(String),
    #[error("{0}")]
    Internal(String),
}

impl Refusal for RecoverError {
    fn kind(&self) -> ErrorKind {
        match self {
            RecoverError::NotControlPlane(_) => ErrorKind::RecoverNotControlPlane,
            RecoverError::QuorumHolds(_) => ErrorKind::RecoverQuorumHolds,
            RecoverError::BadSurvivor(_) => ErrorKind::RecoverBadSurvivor,
            RecoverError::Busy(_) => ErrorKind::RecoverBusy,
            RecoverError::PlanChanged(_) => ErrorKind::RecoverPlanChanged,
            RecoverError::NothingChanged(_) => ErrorKind::RecoverNothingChanged,
            RecoverError::Incomplete(_) => ErrorKind::RecoverIncomplete,
            RecoverError::Internal(_) => ErrorKind::Internal,
        }
    }
}

crate::util::internal_from!(RecoverError: crate::state::StateError, crate::sys::blocking::TaskFailed);

/// A survivor: this node, or another one reached over its :25000.
#[derive(Debug, Clone)]
enum Whom {
    Here,
    There(SocketAddr),
}

#[derive(Debug, Clone)]
struct Survivor {
    member: NodeInfo,
    whom: Whom,
    report: SurvivorReport,
}

/// Why a survivor's step failed: another run holds it, or anything else.
#[derive(Debug)]
enum StepFailure {
    Busy(String),
    Failed(String),
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepFailure::Busy(t) | StepFailure::Failed(t) => f.write_str(t),
        }
    }
}

impl From<String> for StepFailure {
    fn from(text: String) -> Self {
        StepFailure::Failed(text)
    }
}

impl From<survivor::RecoveryError> for StepFailure {
    fn from(e: survivor::RecoveryError) -> Self {
        match e {
            survivor::RecoveryError::Busy(_) | survivor::RecoveryError::NotPrepared(_) => {
                StepFailure::Busy(e.to_string())
            }
            other => StepFailure::Failed(other.to_string()),
        }
    }
}

/// Talks to survivors, here or there, with one signature.
struct Crew<'a> {
    node: &'a Node,
    client: RecoveryClient,
    run: RunRequest,
}

impl Crew<'_> {
    async fn call(
        &self,
        agent: SocketAddr,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, StepFailure> {
        let now = self.node.clock().now_unix();
        self.client
            .call(agent, path, body, now, timeout)
            .await
            .map_err(|e| match e {
                CallError::Transport(t) => {
                    StepFailure::Failed(format!("no answer from {agent} ({t})"))
                }
                // 409: another run holds that survivor (or this one lost its lease there).
                CallError::Refused { status: 409, .. } => StepFailure::Busy(e.to_string()),
                CallError::Refused { .. } => StepFailure::Failed(e.to_string()),
            })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        agent: SocketAddr,
        path: &str,
        body: &impl Serialize,
        timeout: Duration,
    ) -> Result<T, StepFailure> {
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let answer = self.call(agent, path, body, timeout).await?;
        serde_json::from_slice(&answer).map_err(|e| {
            StepFailure::Failed(format!(
                "{agent} answered {path} with something unreadable: {e}"
            ))
        })
    }

    async fn survey(&self, whom: &Whom) -> Result<SurvivorReport, StepFailure> {
        match whom {
            Whom::Here => survivor::survey(self.node).await.map_err(StepFailure::from),
            Whom::There(a) => self.json(*a, wire::SURVEY, &self.run, SURVEY_TIMEOUT).await,
        }
    }

    async fn prepare(&self, whom: &Whom) -> Result<Prepared, StepFailure> {
        match whom {
            Whom::Here => survivor::prepare(self.node, &self.run)
                .await
                .map_err(StepFailure::from),
            Whom::There(a) => self.json(*a, wire::PREPARE, &self.run, STEP_TIMEOUT).await,
        }
    }

    async fn export(&self, whom: &Whom) -> Result<Vec<u8>, StepFailure> {
        match whom {
            Whom::Here => survivor::export(self.node, &self.run)
                .await
                .map_err(StepFailure::from),
            Whom::There(a) => {
                let body = serde_json::to_vec(&self.run).map_err(|e| e.to_string())?;
                self.call(*a, wire::EXPORT, body, STEP_TIMEOUT).await
            }
        }
    }

    async fn reconfigure(
        &self,
        whom: &Whom,
        members: &[RecoveredMember],
    ) -> Result<(), StepFailure> {
        match whom {
            Whom::Here => survivor::reconfigure(self.node, &self.run, members)
                .await
                .map(drop)
                .map_err(StepFailure::from),
            Whom::There(a) => {
                let req = ReconfigureRequest {
                    run: self.run.run.clone(),
                    coordinator: self.run.coordinator.clone(),
                    members: members.to_vec(),
                };
                self.json::<wire::StepDone>(*a, wire::RECONFIGURE, &req, STEP_TIMEOUT)
                    .await
                    .map(drop)
            }
        }
    }

    async fn install(&self, whom: &Whom, data: &[u8]) -> Result<(), StepFailure> {
        match whom {
            Whom::Here => survivor::install(self.node, &self.run, data)
                .await
                .map(drop)
                .map_err(StepFailure::from),
            Whom::There(a) => {
                let path = format!(
                    "{}?run={}&coordinator={}",
                    wire::INSTALL,
                    self.run.run,
                    self.run.coordinator
                );
                self.call(*a, &path, data.to_vec(), STEP_TIMEOUT)
                    .await
                    .map(drop)
            }
        }
    }

    async fn start(&self, whom: &Whom) -> Result<(), StepFailure> {
        match whom {
            Whom::Here => survivor::start(self.node, &self.run)
                .await
                .map(drop)
                .map_err(StepFailure::from),
            Whom::There(a) => self
                .json::<wire::StepDone>(*a, wire::START, &self.run, STEP_TIMEOUT)
                .await
                .map(drop),
        }
    }

    async fn finish(&self, whom: &Whom) -> Result<(), StepFailure> {
        match whom {
            Whom::Here => survivor::finish(self.node, &self.run)
                .await
                .map(drop)
                .map_err(StepFailure::from),
            Whom::There(a) => self
                .json::<wire::StepDone>(*a, wire::FINISH, &self.run, SURVEY_TIMEOUT)
                .await
                .map(drop),
        }
    }
}

/// The survivor whose log is the most recent: term, then index; on a tie this node (its
/// data needs no copy), then the lowest id.
fn pick_winner<'a>(
    candidates: impl Iterator<Item = (&'a NodeInfo, Option<LogPosition>, bool)>,
) -> Option<&'a NodeInfo> {
    candidates
        .max_by(|(a, pa, here_a), (b, pb, here_b)| {
            pa.cmp(pb).then(here_a.cmp(here_b)).then(b.id.cmp(&a.id))
        })
        .map(|(m, _, _)| m)
}

/// Does `wanted` (an id, in decimal or 0x-hex, an address or a host) name `member`?
fn names(wanted: &str, member: &NodeInfo) -> bool {
    let wanted = wanted.trim();
    let id = wanted
        .strip_prefix("0x")
        .map(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| wanted.parse().ok());
    id == Some(member.id)
        || member.address == wanted
        || crate::util::addr::host_of(&member.address) == wanted
}

pub async fn recover(node: &Node, req: RecoverRequest) -> Result<RecoverResponse, RecoverError> {
    if node.state().has_marker("clustered.lock") {
        return Err(RecoverError::NotControlPlane(
            "this node is a worker".into(),
        ));
    }
    let (own_id, own_address) = files::read_info(&node.state().layout().backend_dir())?
        .ok_or_else(|| RecoverError::NotControlPlane("no info.yaml in the backend".into()))?;
    let own_record =
        survivor::read_record(node).map_err(|e| RecoverError::Internal(e.to_string()))?;

    // The configuration this node's log ends with (what raft itself starts from; the
    // leader's view or `cluster.yaml` may be stale), else the one `status` saw.
    let backend = node.state().layout().backend_dir();
    let from_log = crate::sys::blocking::blocking(move || {
        crate::dqlite::recovery::last_configuration(&backend)
            .map_err(|e| RecoverError::Internal(e.to_string()))
    })
    .await;
    let mut config: Vec<NodeInfo> = match from_log {
        Ok(Some(c)) if !c.is_empty() => c,
        other => {
            if let Err(e) = other {
                tracing::warn!(error = %e, "cannot read the configuration from this member's log; using the last one this node saw");
            }
            status::status(node)
                .await
                .members
                .iter()
                .map(|m| NodeInfo {
                    id: m.id,
                    address: m.address.clone(),
                    role: match m.role.as_str() {
                        "voter" => Role::Voter,
                        "standby" => Role::StandBy,
                        _ => Role::Spare,
                    },
                })
                .collect()
        }
    };
    if !config.iter().any(|m| m.id == own_id) {
        config.push(NodeInfo {
            id: own_id,
            address: own_address.clone(),
            role: Role::Voter,
        });
    }

    let coordinator =
        crate::util::addr::host_port(&node.settings().bind.ip(), node.settings().bind.port());
    let crew = Crew {
        node,
        client: survivor::signed_client(node).map_err(|e| RecoverError::Internal(e.to_string()))?,
        run: RunRequest {
            run: own_record
                .as_ref()
                .filter(|r| r.coordinator == coordinator)
                .map(|r| r.run.clone())
                .unwrap_or_else(|| crate::util::secret::random_alnum(12)),
            coordinator,
        },
    };

    // Survey every member at once; members another survivor's log lists and this node's
    // does not are surveyed in a second round.
    let crew_ref = &crew;
    let mut answers = Vec::new();
    let mut round: Vec<NodeInfo> = config.clone();
    for _ in 0..2 {
        let mut surveys = Vec::new();
        for member in round {
            let whom = if member.id == own_id {
                Some(Whom::Here)
            } else {
                survivor::agent_address(node, &member.address).map(Whom::There)
            };
            surveys.push(async move {
                let answer = match &whom {
                    Some(w) => crew_ref.survey(w).await,
                    None => Err(StepFailure::Failed(format!(
                        "{} is not an IP address this node can reach",
                        member.address
                    ))),
                };
                (member, whom, answer)
            });
        }
        let got = futures_join_all(surveys).await;
        let mut more: Vec<NodeInfo> = Vec::new();
        for (_, _, answer) in &got {
            for m in answer.iter().flat_map(|a| &a.configuration) {
                if !config.iter().chain(&more).any(|c| c.id == m.id) {
                    more.push(NodeInfo {
                        id: m.id,
                        address: m.address.clone(),
                        role: Role::from_code(m.role).unwrap_or(Role::Spare),
                    });
                }
            }
        }
        answers.extend(got);
        config.extend(more.iter().cloned());
        if more.is_empty() {
            break;
        }
        round = more;
    }
    for wanted in &req.survivors {
        if !config.iter().any(|m| names(wanted, m)) {
            let listed: Vec<String> = config
                .iter()
                .map(|m| format!("{} ({:#x})", m.address, m.id))
                .collect();
            return Err(RecoverError::BadSurvivor(format!(
                "{wanted} is not a member of this cluster (members: {}). Nothing was changed.",
                listed.join(", ")
            )));
        }
    }
    let mut kept: Vec<Survivor> = Vec::new();
    let mut running: Vec<u64> = Vec::new();
    let mut dropped: Vec<PlannedMember> = Vec::new();
    let named = |m: &NodeInfo| {
        req.survivors.is_empty() || m.id == own_id || req.survivors.iter().any(|w| names(w, m))
    };
    let mut unfinished = own_record.as_ref().map(|r| {
        format!(
            "run {} from {} stopped at \"{}\"",
            r.run, r.coordinator, r.step
        )
    });
    for (member, whom, answer) in answers {
        let planned = |reason: String| PlannedMember {
            id: member.id,
            address: member.address.clone(),
            role: status::role_word(member.role).into(),
            new_role: None,
            last_entry: None,
            reason: Some(reason),
        };
        match (whom, answer) {
            (Some(whom), Ok(survey)) if survey.id == member.id => {
                if survey.member_running {
                    running.push(member.id);
                }
                if let Some(other) = survey.held_by.as_ref().filter(|h| h.run != crew.run.run) {
                    return Err(RecoverError::Busy(format!(
                        "Another recovery holds {}: run {} from {}. Nothing was changed; wait for it to end, or run `cluster-agent recover` again where it started.",
                        member.address, other.run, other.coordinator
                    )));
                }
                if let Some(r) = &survey.recovery {
                    unfinished.get_or_insert_with(|| {
                        format!(
                            "run {} from {} stopped at \"{}\" on {}",
                            r.run, r.coordinator, r.step, member.address
                        )
                    });
                }
                if named(&member) {
                    kept.push(Survivor {
                        member,
                        whom,
                        report: survey,
                    });
                } else {
                    dropped.push(planned("not named with --survivor".into()));
                }
            }
            (_, Ok(survey)) => {
                if req.survivors.iter().any(|w| names(w, &member)) {
                    return Err(RecoverError::BadSurvivor(format!(
                        "{} answers as member {:#x} at {}, not as {:#x}. Nothing was changed.",
                        member.address, survey.id, survey.address, member.id
                    )));
                }
                dropped.push(planned(format!(
                    "its agent answers for another member ({:#x})",
                    survey.id
                )));
            }
            (_, Err(e)) => {
                if member.id == own_id {
                    return Err(RecoverError::NotControlPlane(e.to_string()));
                }
                if req.survivors.iter().any(|w| names(w, &member)) {
                    return Err(RecoverError::BadSurvivor(format!(
                        "The survivor {} does not answer ({e}). Nothing was changed. Start its cluster-agent, or leave it out.",
                        member.address
                    )));
                }
                dropped.push(planned(format!("does not answer: {e}")));
            }
        }
    }

    // The quorum, as the survivors answer: a voter counts when its agent answers and its
    // member runs.
    let voters: Vec<&NodeInfo> = config.iter().filter(|m| m.role == Role::Voter).collect();
    let voting = voters.iter().filter(|v| running.contains(&v.id)).count();
    let quorum_lost = voting * 2 <= voters.len();
    let condition = format!(
        "{}: {voting} of {} voters answer with their member running",
        if quorum_lost {
            "quorum lost"
        } else {
            "quorum holds"
        },
        voters.len()
    );
    if !quorum_lost && !req.force && unfinished.is_none() {
        return Err(RecoverError::QuorumHolds(condition));
    }
    kept.sort_by(|a, b| a.member.address.cmp(&b.member.address));
    let plan = plan_of(
        &kept,
        &dropped,
        own_id,
        condition.clone(),
        unfinished.clone(),
    )
    .ok_or_else(|| RecoverError::Internal("no survivor to keep".into()))?;
    if req.dry_run {
        return Ok(RecoverResponse {
            plan,
            executed: false,
            messages: vec!["Dry run: nothing was changed.".into()],
        });
    }
    if let Some(confirmed) = &req.confirmed {
        let mut now: Vec<u64> = kept.iter().map(|s| s.member.id).collect();
        let mut then = confirmed.clone();
        now.sort_unstable();
        then.sort_unstable();
        if now != then {
            return Err(RecoverError::PlanChanged(format!(
                "{} survivor(s) then, {} now",
                then.len(),
                now.len()
            )));
        }
    }
    execute(&crew, node, kept, plan).await
}

fn plan_of(
    kept: &[Survivor],
    dropped: &[PlannedMember],
    own_id: u64,
    condition: String,
    unfinished: Option<String>,
) -> Option<RecoveryPlan> {
    let winner = pick_winner(
        kept.iter()
            .map(|s| (&s.member, s.report.last_entry, s.member.id == own_id)),
    )?;
    let kept_members = kept
        .iter()
        .map(|s| PlannedMember {
            id: s.member.id,
            address: s.member.address.clone(),
            role: status::role_word(s.member.role).into(),
            new_role: Some(
                if s.member.id == winner.id {
                    "voter"
                } else {
                    "standby"
                }
                .into(),
            ),
            last_entry: s.report.last_entry,
            reason: None,
        })
        .collect();
    Some(RecoveryPlan {
        condition,
        kept: kept_members,
        dropped: dropped.to_vec(),
        winner: PlannedMember {
            id: winner.id,
            address: winner.address.clone(),
            role: status::role_word(winner.role).into(),
            new_role: Some("voter".into()),
            last_entry: kept
                .iter()
                .find(|s| s.member.id == winner.id)
                .and_then(|s| s.report.last_entry),
            reason: None,
        },
        unfinished,
    })
}

async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    // Polled together on this task: a survey is a short network wait.
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in out.iter_mut().zip(pinned.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

async fn execute(
    crew: &Crew<'_>,
    node: &Node,
    kept: Vec<Survivor>,
    mut plan: RecoveryPlan,
) -> Result<RecoverResponse, RecoverError> {
    let clock = std::time::Instant::now();
    let mut messages = Vec::new();
    tracing::warn!(run = %crew.run.run, survivors = kept.len(), dropped = plan.dropped.len(), "recovering the cluster from its survivors");

    // 1. Every survivor stops its member and backs up its data; nothing changes before all did.
    let mut prepared: Vec<(Survivor, Prepared)> = Vec::new();
    for s in &kept {
        match crew.prepare(&s.whom).await {
            Ok(p) => {
                messages.push(format!(
                    "{}: member stopped, data backed up to {}",
                    s.member.address, p.backup
                ));
                prepared.push((s.clone(), p));
            }
            Err(e) => {
                for (p, _) in &prepared {
                    let _ = crew.start(&p.whom).await;
                    let _ = crew.finish(&p.whom).await;
                }
                let reason = format!("{} could not be prepared: {e}", s.member.address);
                return Err(match e {
                    StepFailure::Busy(_) => {
                        RecoverError::Busy(format!("{reason}. Nothing was changed."))
                    }
                    StepFailure::Failed(_) => RecoverError::NothingChanged(reason),
                });
            }
        }
    }
    node.checkpoint("recover-prepared").await.ok();

    tracing::info!(run = %crew.run.run, elapsed_ms = clock.elapsed().as_millis() as u64, "every survivor prepared");
    // 2. The winner, from the logs read with every member stopped.
    let own_id = files::read_info(&node.state().layout().backend_dir())?
        .map(|(id, _)| id)
        .unwrap_or_default();
    let winner = pick_winner(
        prepared
            .iter()
            .map(|(s, p)| (&s.member, p.last_entry, s.member.id == own_id)),
    )
    .cloned()
    .ok_or_else(|| RecoverError::Internal("no survivor prepared".into()))?;
    if winner.id != plan.winner.id {
        messages.push(format!(
            "With every member stopped, {} has the most recent log: its data wins.",
            winner.address
        ));
        plan.winner.id = winner.id;
        plan.winner.address = winner.address.clone();
    }
    let Some((winner_survivor, winner_prepared)) = prepared
        .iter()
        .find(|(s, _)| s.member.id == winner.id)
        .cloned()
    else {
        return Err(RecoverError::Internal(
            "the winner is not among the prepared".into(),
        ));
    };
    plan.winner.last_entry = winner_prepared.last_entry;
    let members: Vec<RecoveredMember> = prepared
        .iter()
        .map(|(s, _)| RecoveredMember {
            id: s.member.id,
            address: s.member.address.clone(),
            role: if s.member.id == winner.id {
                Role::Voter
            } else {
                Role::StandBy
            }
            .code(),
        })
        .collect();

    // 3. The new configuration goes into the winner's log; its raft files go to the others.
    let copy = async {
        crew.reconfigure(&winner_survivor.whom, &members).await?;
        let exported = crew.export(&winner_survivor.whom).await?;
        let mut files_of_winner = bundle::decode(&exported)
            .map_err(|e| StepFailure::Failed(format!("the winner's data: {e}")))?;
        let nodes: Vec<NodeInfo> = members
            .iter()
            .map(|m| NodeInfo {
                id: m.id,
                address: m.address.clone(),
                role: Role::from_code(m.role).unwrap_or(Role::StandBy),
            })
            .collect();
        files_of_winner.push(BundleFile::new(
            files::CLUSTER_YAML,
            files::render_cluster(&nodes),
        ));
        bundle::encode(&files_of_winner).map_err(|e| StepFailure::Failed(e.to_string()))
    };
    let copied_data = copy.await;
    node.checkpoint("recover-copying").await.ok();
    let data = match copied_data {
        Ok(d) => d,
        Err(e) => {
            for (s, _) in &prepared {
                let _ = crew.start(&s.whom).await;
            }
            return Err(RecoverError::Incomplete(format!(
                "  - the winner {} could not be reconfigured or read: {e}\n  - every member was started again",
                winner.address
            )));
        }
    };
    let mut failures = Vec::new();
    let mut copied = Vec::new();
    for (s, _) in prepared.iter().filter(|(s, _)| s.member.id != winner.id) {
        match crew.install(&s.whom, &data).await {
            Ok(()) => {
                messages.push(format!("{}: the winner's data installed", s.member.address));
                copied.push(s.member.id);
            }
            Err(e) => failures.push(format!(
                "  - {} did not get the winner's data: {e}",
                s.member.address
            )),
        }
    }

    tracing::info!(run = %crew.run.run, elapsed_ms = clock.elapsed().as_millis() as u64, "the winner's data copied");
    // 4. The winner starts first (it holds the only vote), then the others.
    let mut started = Vec::new();
    let mut order: Vec<&Survivor> = vec![&winner_survivor];
    order.extend(
        prepared
            .iter()
            .map(|(s, _)| s)
            .filter(|s| s.member.id != winner.id),
    );
    for s in order {
        match crew.start(&s.whom).await {
            Ok(()) => started.push(s.member.id),
            Err(e) => failures.push(format!(
                "  - {} did not start its member: {e}",
                s.member.address
            )),
        }
    }

    tracing::info!(run = %crew.run.run, elapsed_ms = clock.elapsed().as_millis() as u64, "members started");
    // 5. The recovered cluster answers and lists exactly the survivors.
    match wait_for_cluster(node, &members).await {
        Ok(()) => messages.push(format!(
            "The recovered cluster answers with {} member(s); {} holds the vote.",
            members.len(),
            winner.address
        )),
        Err(e) => failures.push(format!(
            "  - the recovered cluster did not answer as expected: {e}"
        )),
    }

    tracing::info!(run = %crew.run.run, elapsed_ms = clock.elapsed().as_millis() as u64, "the recovered cluster answers");
    // 6. The dropped members' Kubernetes Nodes go.
    for d in &plan.dropped {
        let host = crate::util::addr::host_of(&d.address)
            .trim_matches(['[', ']'])
            .to_string();
        let ips: Vec<std::net::IpAddr> = host.parse().into_iter().collect();
        messages.push(
            super::remove_node::delete_kubernetes_node(node, &host, &ips)
                .await
                .text(),
        );
    }

    tracing::info!(run = %crew.run.run, elapsed_ms = clock.elapsed().as_millis() as u64, "lost Kubernetes nodes handled");
    // 7. The run ends on every survivor that did all of its part.
    for (s, _) in &prepared {
        let whole = started.contains(&s.member.id)
            && (s.member.id == winner.id || copied.contains(&s.member.id));
        if whole {
            if let Err(e) = crew.finish(&s.whom).await {
                failures.push(format!(
                    "  - {} did not close the run: {e}",
                    s.member.address
                ));
            }
        }
    }
    if !failures.is_empty() {
        return Err(RecoverError::Incomplete(failures.join("\n")));
    }
    if members.len() < 3 {
        messages.push(format!(
            "The cluster runs with {} member(s); one votes now and the roles manager promotes the others as it can. Add nodes (`cluster-agent add-node`, then `join` on each new node) to regain high availability: it needs at least 3 voters.",
            members.len()
        ));
    } else {
        messages.push("The roles manager promotes the stand-bys to voters over the next seconds (`cluster-agent status` shows it).".into());
    }
    tracing::warn!(run = %crew.run.run, "the recovery finished");
    Ok(RecoverResponse {
        plan,
        executed: true,
        messages,
    })
}

/// Polls this node's member until its cluster lists exactly `members`.
async fn wait_for_cluster(node: &Node, members: &[RecoveredMember]) -> Result<(), String> {
    let mut wanted: Vec<u64> = members.iter().map(|m| m.id).collect();
    wanted.sort_unstable();
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    let mut last = String::from("no member of this node runs");
    while tokio::time::Instant::now() < deadline {
        if let Some(live) = node.own_member() {
            match tokio::time::timeout(Duration::from_secs(3), live.client.cluster()).await {
                Ok(Ok(nodes)) => {
                    let mut ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
                    ids.sort_unstable();
                    if ids == wanted {
                        return Ok(());
                    }
                    last = format!(
                        "it lists {} member(s), not the {} survivors",
                        ids.len(),
                        wanted.len()
                    );
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no leader answered within 3 s".into(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{last} after {} s", SETTLE_TIMEOUT.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, address: &str) -> NodeInfo {
        NodeInfo {
            id,
            address: address.into(),
            role: Role::Voter,
        }
    }

    #[test]
    fn the_most_recent_log_wins_term_first() {
        let (a, b, c) = (
            member(1, "10.0.0.1:19001"),
            member(2, "10.0.0.2:19001"),
            member(3, "10.0.0.3:19001"),
        );
        let at = |term, index| Some(LogPosition { term, index });
        let winner = pick_winner(
            [
                (&a, at(2, 90), true),
                (&b, at(3, 10), false),
                (&c, at(2, 95), false),
            ]
            .into_iter(),
        );
        assert_eq!(winner.map(|m| m.id), Some(2));
        let winner = pick_winner([(&a, at(3, 10), false), (&b, at(3, 10), true)].into_iter());
        assert_eq!(winner.map(|m| m.id), Some(2), "a tie goes to this node");
        let winner = pick_winner([(&a, None, true), (&c, at(1, 1), false)].into_iter());
        assert_eq!(
            winner.map(|m| m.id),
            Some(3),
            "an empty log never wins over a log"
        );
    }

    #[test]
    fn survivors_are_named_by_id_address_or_host() {
        let m = member(0x2a, "10.0.0.7:19001");
        for name in ["42", "0x2a", "10.0.0.7:19001", "10.0.0.7"] {
            assert!(names(name, &m), "{name}");
        }
        for name in ["43", "10.0.0.70", "10.0.0.7:19002", "", "0xzz"] {
            assert!(!names(name, &m), "{name}");
        }
    }
}
