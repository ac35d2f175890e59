//! `status`: the dqlite membership as the live leader sees it, plus each member's own answer
//! to DESCRIBE (failure domain), which doubles as a liveness probe: a dead voter shows as
//! unreachable instead of silently counting as a master (MicroK8s issue #2400).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::datastore::{Datastore, Role};
use crate::cluster::node::Node;
use crate::cluster::operation::InProgress;

/// How long the membership may take to answer: `status` answers within a few seconds even
/// when no leader does (a cluster that lost its quorum).
pub const MEMBERS_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a member gets to answer DESCRIBE before it is reported unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    pub id: u64,
    pub address: String,
    /// `voter`, `standby` or `spare` (MicroK8s's words).
    pub role: String,
    pub failure_domain: Option<u64>,
    pub reachable: bool,
    pub leader: bool,
    /// The index of the last entry of its log, as its agent reads it (absent: not told, e.g.
    /// no agent of ours, or no leader answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_index: Option<u64>,
}

/// How the datastore is, as `status` exits with it (`cli::exit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// Every member answers and this node is one of them (or it is a worker).
    Healthy,
    /// Writes go on, but a member does not answer, or this node is not a member any more.
    Degraded,
    /// No membership answer, or too few voters answer for a quorum: writes stop.
    Unavailable,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// `var/lock/ha-cluster` exists (the node runs a dqlite datastore).
    pub ha_cluster: bool,
    /// More than two voters: what pretty, yaml and json all call high availability.
    #[serde(default)]
    pub high_availability: bool,
    /// Healthy, degraded or unavailable, and why.
    #[serde(default = "healthy")]
    pub condition: Condition,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// This node is a worker (no datastore member).
    pub worker: bool,
    pub members: Vec<MemberStatus>,
    /// Why the membership could not be read, if it could not.
    pub error: Option<String>,
    /// The membership change this node is making now (a join, leave or removal that goes
    /// on whether or not the command that started it is still there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<InProgress>,
    /// No leader answered: `members` is the last configuration this node saw
    /// (`cluster.yaml`; roles as of then), each member probed now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last_known: bool,
    /// The cluster answered but does not list this node's own member: it was removed
    /// (`remove-node --force`) or a leave did not finish. `leave` resets it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_a_member: bool,
}

/// What `status` says to do when the quorum is lost.
pub const RECOVERY_HINT: &str = "to rebuild the cluster from the members that answer, run `cluster-agent recover` on one of them (docs/recovery.md)";

fn healthy() -> Condition {
    Condition::Healthy
}

/// The condition of a report and why, from its members as probed.
pub fn assess(report: &StatusReport) -> (Condition, Vec<String>) {
    if report.worker {
        return (Condition::Healthy, Vec::new());
    }
    let voters = report.members.iter().filter(|m| m.role == "voter").count();
    let live_voters = report
        .members
        .iter()
        .filter(|m| m.role == "voter" && m.reachable)
        .count();
    if voters > 0 && live_voters * 2 <= voters {
        let mut reasons = vec![format!(
            "quorum lost: {live_voters} of {voters} voters reachable"
        )];
        reasons.extend(
            report
                .members
                .iter()
                .filter(|m| !m.reachable)
                .map(|m| format!("{} ({}) does not answer", m.address, m.role)),
        );
        reasons.push(RECOVERY_HINT.into());
        return (Condition::Unavailable, reasons);
    }
    if let Some(e) = &report.error {
        return (
            Condition::Unavailable,
            vec![format!("the membership could not be read: {e}")],
        );
    }
    let mut reasons: Vec<String> = report
        .members
        .iter()
        .filter(|m| !m.reachable)
        .map(|m| format!("{} ({}) does not answer", m.address, m.role))
        .collect();
    // Answering is not enough: a voter or stand-by whose log is far behind the leader's is
    // not keeping up (spares get no log).
    let leader_index = report
        .members
        .iter()
        .find(|m| m.leader)
        .and_then(|m| m.log_index);
    if let Some(leader_index) = leader_index {
        reasons.extend(
            report
                .members
                .iter()
                .filter(|m| m.reachable && m.role != "spare")
                .filter_map(|m| {
                    let index = m.log_index?;
                    let behind = leader_index.saturating_sub(index);
                    (behind > crate::cluster::roles::driver::CATCH_UP_LAG).then(|| {
                        format!(
                            "{} ({}) is {behind} log entries behind the leader",
                            m.address, m.role
                        )
                    })
                }),
        );
    }
    if report.not_a_member {
        reasons.push("this node is not a member of its cluster".into());
    }
    if reasons.is_empty() {
        (Condition::Healthy, reasons)
    } else {
        (Condition::Degraded, reasons)
    }
}

pub fn role_word(role: Role) -> &'static str {
    match role {
        Role::Voter => "voter",
        Role::StandBy => "standby",
        Role::Spare => "spare",
    }
}

pub async fn status(node: &Node) -> StatusReport {
    let mut report = gather(node).await;
    report.high_availability = report.members.iter().filter(|m| m.role == "voter").count() > 2;
    let (condition, reasons) = assess(&report);
    report.condition = condition;
    report.reasons = reasons;
    report
}

async fn gather(node: &Node) -> StatusReport {
    let mut report = StatusReport {
        ha_cluster: node.state().has_marker("ha-cluster"),
        high_availability: false,
        condition: Condition::Healthy,
        reasons: Vec::new(),
        worker: node.state().has_marker("clustered.lock"),
        members: Vec::new(),
        error: None,
        operation: node.operations().current(),
        last_known: false,
        not_a_member: false,
    };
    // The last configuration this node saw is probed at once, while the leader is asked for
    // the current one: when no leader answers, those probes are done by then, and the whole
    // answer takes MEMBERS_TIMEOUT, not MEMBERS_TIMEOUT + PROBE_TIMEOUT.
    let known = crate::dqlite::files::read_cluster(&node.state().layout().backend_dir())
        .ok()
        .flatten()
        .unwrap_or_default();
    let early = (!known.is_empty() && !report.worker).then(|| probe(node, &known));
    let members = match tokio::time::timeout(MEMBERS_TIMEOUT, node.datastore().members()).await {
        Ok(Ok(m)) => m,
        failed => {
            report.error = Some(match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no leader answered within {}s", MEMBERS_TIMEOUT.as_secs()),
            });
            // Say what is known: the last configuration this node saw, each member probed.
            if known.is_empty() || report.worker {
                return report;
            }
            report.last_known = true;
            known.iter().cloned().map(Into::into).collect()
        }
    };
    report.not_a_member = !report.worker
        && !report.last_known
        && !members.is_empty()
        && own_member_id(node).is_some_and(|own| !members.iter().any(|m| m.id == own));
    // With a membership answer the members are probed now (an early probe may have caught a
    // member still starting); without one the early probes are what there is.
    let probed = match early {
        Some(task) if report.last_known => task.await.ok(),
        Some(task) => {
            task.abort();
            None
        }
        None => None,
    };
    // Where each member's log ends, asked while the members are probed (a leader answered:
    // the members are known; each agent answers within 1 s).
    let logs = (!report.last_known && !report.worker).then(|| {
        let progress =
            std::sync::Arc::new(crate::cluster::recovery::AgentProgress::new(node.clone()));
        let addresses: Vec<String> = members.iter().map(|m| m.address.clone()).collect();
        tokio::spawn(async move {
            use crate::cluster::roles::driver::Progress;
            let mut asks = tokio::task::JoinSet::new();
            for (i, address) in addresses.into_iter().enumerate() {
                let progress = progress.clone();
                asks.spawn(async move { (i, progress.last_index(&address).await) });
            }
            let mut out = Vec::new();
            while let Some(Ok((i, index))) = asks.join_next().await {
                out.push((i, index));
            }
            out
        })
    });
    let (meta, leader) = match probed {
        Some(done) => done,
        None => {
            let addresses: Vec<crate::dqlite::NodeInfo> = members
                .iter()
                .map(|m| crate::dqlite::NodeInfo {
                    id: m.id,
                    address: m.address.clone(),
                    role: m.role,
                })
                .collect();
            probe(node, &addresses).await.unwrap_or_default()
        }
    };
    let mut log_index = vec![None; members.len()];
    if let Some(task) = logs {
        for (i, index) in task.await.unwrap_or_default() {
            if let Some(slot) = log_index.get_mut(i) {
                *slot = index;
            }
        }
    }
    report.members = members
        .into_iter()
        .zip(meta.into_iter().chain(std::iter::repeat(None)))
        .zip(log_index)
        .map(|((m, meta), log_index)| MemberStatus {
            leader: leader.as_deref() == Some(m.address.as_str()),
            id: m.id,
            role: role_word(m.role).to_string(),
            failure_domain: meta.map(|d| d.failure_domain),
            reachable: meta.is_some(),
            address: m.address,
            log_index: log_index.filter(|_| meta.is_some()),
        })
        .collect();
    report
}

type Probed = (
    Vec<Option<crate::cluster::datastore::MemberMetadata>>,
    Option<String>,
);

/// Asks every member of `members` for DESCRIBE, and the cluster for its leader, at once;
/// each answer within PROBE_TIMEOUT.
fn probe(node: &Node, members: &[crate::dqlite::NodeInfo]) -> tokio::task::JoinHandle<Probed> {
    let ds = node.datastore();
    let addresses: Vec<String> = members.iter().map(|m| m.address.clone()).collect();
    tokio::spawn(async move {
        let leader_ds = ds.clone();
        let leader_task = tokio::spawn(async move {
            tokio::time::timeout(PROBE_TIMEOUT, leader_ds.leader())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        });
        let mut probes = tokio::task::JoinSet::new();
        for (i, address) in addresses.iter().enumerate() {
            let ds: Arc<dyn Datastore> = ds.clone();
            let address = address.clone();
            probes.spawn(async move {
                let answer = tokio::time::timeout(PROBE_TIMEOUT, ds.describe(&address)).await;
                (i, answer.ok().and_then(Result::ok))
            });
        }
        let mut meta = vec![None; addresses.len()];
        while let Some(Ok((i, m))) = probes.join_next().await {
            meta[i] = m;
        }
        (meta, leader_task.await.ok().flatten())
    })
}

/// Why no membership change can be made now, if the datastore is unavailable (no leader
/// answers, or too few voters for a quorum): what `status` would say, within its bound.
pub async fn unavailable(node: &Node) -> Option<String> {
    if node.state().has_marker("clustered.lock") || node.own_member().is_none() {
        return None;
    }
    let report = status(node).await;
    (report.condition == Condition::Unavailable).then(|| report.reasons.join("; "))
}

/// The id of this node's own dqlite member: the running embedded member's, else the one in
/// `info.yaml` (k8s-dqlite's).
pub fn own_member_id(node: &Node) -> Option<u64> {
    node.membership()
        .and_then(|m| m.live())
        .map(|l| l.own_id)
        .or_else(|| {
            crate::dqlite::files::read_info(&node.state().layout().backend_dir())
                .ok()
                .flatten()
                .map(|(id, _)| id)
        })
}
