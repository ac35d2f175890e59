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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// `var/lock/ha-cluster` exists.
    pub ha_cluster: bool,
    /// This node is a worker (no datastore member).
    pub worker: bool,
    pub members: Vec<MemberStatus>,
    /// Why the membership could not be read, if it could not.
    pub error: Option<String>,
    /// The membership change this node is making now (a join, leave or removal that goes
    /// on whether or not the command that started it is still there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<InProgress>,
    /// The cluster answered but does not list this node's own member: it was removed
    /// (`remove-node --force`) or a leave did not finish. `leave` resets it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_a_member: bool,
}

pub fn role_word(role: Role) -> &'static str {
    match role {
        Role::Voter => "voter",
        Role::StandBy => "standby",
        Role::Spare => "spare",
    }
}

pub async fn status(node: &Node) -> StatusReport {
    let mut report = StatusReport {
        ha_cluster: node.state().has_marker("ha-cluster"),
        worker: node.state().has_marker("clustered.lock"),
        members: Vec::new(),
        error: None,
        operation: node.operations().current(),
        not_a_member: false,
    };
    let members = match tokio::time::timeout(MEMBERS_TIMEOUT, node.datastore().members()).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            report.error = Some(e.to_string());
            return report;
        }
        Err(_) => {
            report.error = Some(format!(
                "no leader answered within {}s",
                MEMBERS_TIMEOUT.as_secs()
            ));
            return report;
        }
    };
    report.not_a_member = !report.worker
        && !members.is_empty()
        && own_member_id(node).is_some_and(|own| !members.iter().any(|m| m.id == own));
    let leader = tokio::time::timeout(PROBE_TIMEOUT, node.datastore().leader())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let mut probes = tokio::task::JoinSet::new();
    for (i, m) in members.iter().enumerate() {
        let ds: Arc<dyn Datastore> = node.datastore();
        let address = m.address.clone();
        probes.spawn(async move {
            let answer = tokio::time::timeout(PROBE_TIMEOUT, ds.describe(&address)).await;
            (i, answer.ok().and_then(Result::ok))
        });
    }
    let mut meta = vec![None; members.len()];
    while let Some(Ok((i, m))) = probes.join_next().await {
        meta[i] = m;
    }
    report.members = members
        .into_iter()
        .zip(meta)
        .map(|(m, meta)| MemberStatus {
            leader: leader.as_deref() == Some(m.address.as_str()),
            id: m.id,
            role: role_word(m.role).to_string(),
            failure_domain: meta.map(|d| d.failure_domain),
            reachable: meta.is_some(),
            address: m.address,
        })
        .collect();
    report
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
