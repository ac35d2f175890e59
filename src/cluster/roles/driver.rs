//! The roles driver: on the node whose member is the raft leader, probe every member with
//! DESCRIBE each interval (bounded parallelism, short deadline), feed the pure
//! [`super::policy::plan`], apply its first change with ASSIGN, re-snapshot, repeat until the
//! plan is empty. Followers only watch. Also what a stopping member does ([`step_aside`]:
//! leadership only) and the handover of a leaving voter ([`handover`]: its role too).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::policy::{
    apply, has_quorum, plan, plan_for_leader, Change, MemberView, Targets, CANNOT_WRITE_WEIGHT,
};
use crate::dqlite::client::Assigned;
use crate::dqlite::{Client, NodeInfo, Role};

#[derive(Debug, Clone)]
pub struct RolesConfig {
    pub targets: Targets,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub probe_parallelism: usize,
}

impl Default for RolesConfig {
    fn default() -> Self {
        RolesConfig {
            targets: Targets::default(),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(800),
            probe_parallelism: 8,
        }
    }
}

/// Most role changes applied in one round before waiting for the next tick (a guard against
/// a plan that never converges).
const MAX_CHANGES_PER_ROUND: usize = 8;

/// Probes every member: alive iff DESCRIBE answers in time.
pub async fn snapshot(
    client: &Arc<Client>,
    nodes: &[NodeInfo],
    cfg: &RolesConfig,
) -> Vec<MemberView> {
    let permits = Arc::new(Semaphore::new(cfg.probe_parallelism.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, n) in nodes.iter().enumerate() {
        let client = client.clone();
        let permits = permits.clone();
        let address = n.address.clone();
        let timeout = cfg.probe_timeout;
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let meta = tokio::time::timeout(timeout, client.describe(&address)).await;
            (i, meta.ok().and_then(Result::ok))
        });
    }
    let mut metas = vec![None; nodes.len()];
    while let Some(joined) = set.join_next().await {
        // A probe task that failed leaves its member counted as dead, not the rest.
        if let Ok((i, m)) = joined {
            metas[i] = m;
        }
    }
    nodes
        .iter()
        .zip(metas)
        .map(|(n, meta)| MemberView {
            id: n.id,
            role: n.role,
            failure_domain: meta.map(|m| m.failure_domain).unwrap_or(0),
            weight: meta.map(|m| m.weight).unwrap_or(u64::MAX),
            alive: meta.is_some(),
            // The 1.11 protocol does not expose replication progress; a member that answers
            // is treated as able to catch up (raft catches it up before it votes).
            caught_up: meta.is_some(),
            cannot_write: meta.is_some_and(|m| m.weight == CANNOT_WRITE_WEIGHT),
        })
        .collect()
}

/// One round on the leader: apply changes until the plan is empty. Returns how many were
/// applied; `Ok(None)` if this node is not the leader. Each change is made on the leader and
/// configuration it was planned on ([`Client::assign_planned`]); one that can no longer be
/// (leadership or configuration moved on) ends the round, and the next one plans afresh.
pub async fn adjust_once(
    client: &Arc<Client>,
    own_id: u64,
    cfg: &RolesConfig,
) -> Result<Option<usize>, String> {
    let mut applied = 0;
    loop {
        let basis = client.plan_basis().await.map_err(|e| e.to_string())?;
        if basis.leader.id != own_id {
            return Ok(None);
        }
        let views = snapshot(client, &basis.config, cfg).await;
        if !has_quorum(&views) {
            // Cut off from the majority: this view is the minority's; change nothing.
            tracing::debug!("no majority of voters answers this leader; no role changes");
            return Ok(Some(applied));
        }
        let changes = plan_for_leader(&views, own_id, cfg.targets);
        let Some(change) = changes.first() else {
            return Ok(Some(applied));
        };
        if applied >= MAX_CHANGES_PER_ROUND {
            return Ok(Some(applied));
        }
        let address = basis
            .config
            .iter()
            .find(|n| n.id == change.id)
            .map(|n| n.address.clone())
            .unwrap_or_default();
        tracing::info!(id = change.id, %address, role = %change.role, "assigning role");
        match client
            .assign_planned(&basis, change.id, change.role)
            .await
            .map_err(|e| format!("assign {} to {address}: {e}", change.role))?
        {
            Assigned::Applied => applied += 1,
            Assigned::Dropped(why) => {
                tracing::info!(id = change.id, %address, role = %change.role, reason = %why, "role change dropped: planned on a leader or configuration that moved on");
                return Ok(Some(applied));
            }
        }
    }
}

/// Runs the driver until `stop` fires. A join or leave may replace the member (and so the
/// client and id) at any time; each round uses the current one.
pub async fn run(
    live: impl Fn() -> Option<(Arc<Client>, u64)> + Send + 'static,
    cfg: RolesConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_error: Option<String> = None;
    let mut last_round = tokio::time::Instant::now() - cfg.probe_interval;
    let mut last_seen: Vec<(u64, Role)> = Vec::new();
    let mut leading = false;
    loop {
        let live = live();
        // Between full rounds, a cheap look at the membership (one request to the leader)
        // catches joins and leaves within a fraction of the probe interval.
        let due = last_round.elapsed() >= cfg.probe_interval;
        let changed = match (&live, due) {
            (Some((client, _)), false) if leading => match client.cluster().await {
                Ok(nodes) => {
                    let seen: Vec<(u64, Role)> = nodes.iter().map(|n| (n.id, n.role)).collect();
                    let changed = seen != last_seen;
                    last_seen = seen;
                    changed
                }
                Err(_) => false,
            },
            _ => false,
        };
        if !(due || changed) {
            tokio::select! {
                _ = tokio::time::sleep(MEMBERSHIP_POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        last_round = tokio::time::Instant::now();
        let round = match live {
            Some((client, own_id)) => adjust_once(&client, own_id, &cfg).await,
            None => Ok(None),
        };
        leading = matches!(round, Ok(Some(_)));
        match round {
            Ok(_) => last_error = None,
            Err(e) => {
                // Log a failure once until it changes, not every tick.
                if last_error.as_deref() != Some(&e) {
                    tracing::warn!(error = %e, "roles adjustment failed");
                    last_error = Some(e);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(MEMBERSHIP_POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// How often the driver looks at the membership list between full probe rounds.
const MEMBERSHIP_POLL: Duration = Duration::from_millis(200);

/// What a stopping member did for the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAside {
    /// It was not the leader: nothing to do.
    NotLeader,
    /// Leadership went to this voter.
    Transferred { to: u64 },
    /// It leads and no other voter answered (or the transfer did not complete): the others
    /// elect a leader once it is gone.
    Kept,
}

/// What a stopping member does: if it leads, it hands leadership to a voter that answers,
/// so the cluster does not wait out an election. It changes no roles. A stop is not a
/// leave: when every member stops at once (a power cut, `snap stop` everywhere), each one
/// sees a stale view of the others, and demotions decided on those views can leave the
/// restarted cluster without the voters it needs. With the roles as they were, any
/// majority of the voters elects a leader when it comes back; a member that stays down is
/// replaced by the roles manager on the new leader, which sees who answers now.
/// Bounded by `budget`; raft completes a transfer only to a voter that has caught up.
pub async fn step_aside(
    client: &Arc<Client>,
    own_id: u64,
    cfg: &RolesConfig,
    budget: Duration,
) -> Result<StepAside, String> {
    tokio::time::timeout(budget, async {
        let leader = client.leader().await.map_err(|e| e.to_string())?;
        if leader.id != own_id {
            return Ok(StepAside::NotLeader);
        }
        let nodes = client.cluster().await.map_err(|e| e.to_string())?;
        let voters: Vec<NodeInfo> = nodes
            .into_iter()
            .filter(|n| n.id != own_id && n.role == Role::Voter)
            .collect();
        let probed = snapshot(client, &voters, cfg).await;
        let Some(to) = probed
            .iter()
            .filter(|v| v.alive)
            .min_by_key(|v| (v.weight, v.id))
            .map(|v| v.id)
        else {
            return Ok(StepAside::Kept);
        };
        match client.transfer(to).await {
            Ok(()) => Ok(StepAside::Transferred { to }),
            Err(e) => {
                tracing::debug!(error = %e, to, "leadership transfer did not complete");
                Ok(StepAside::Kept)
            }
        }
    })
    .await
    .map_err(|_| format!("stepping aside did not finish within {budget:?}"))?
}

/// What a handover did about this member's own role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// It was a spare already, not a member, or the only voter: nothing to hand over.
    NotNeeded,
    /// A replacement took over and this member is a spare now.
    SteppedDown,
    /// It is still a voter: without it the remaining voters would have no quorum (some of
    /// them are dead), so stepping down would stop the cluster.
    KeptForQuorum { live_voters: usize, voters: usize },
}

/// Handover before this member leaves the cluster: if it is the leader, leadership goes to
/// another voter; the policy's changes for a cluster without this member are applied
/// (promotions of live replacements, demotions of dead voters, in the policy's quorum-safe
/// order); then this member becomes a spare, unless the others would lack a quorum without
/// it. Bounded by `budget`.
pub async fn handover(
    client: &Arc<Client>,
    own_id: u64,
    cfg: &RolesConfig,
    budget: Duration,
) -> Result<Handover, String> {
    tokio::time::timeout(budget, async {
        let nodes = client.cluster().await.map_err(|e| e.to_string())?;
        let Some(me) = nodes.iter().find(|n| n.id == own_id) else {
            return Ok(Handover::NotNeeded);
        };
        if me.role == Role::Spare {
            return Ok(Handover::NotNeeded);
        }
        // One probe round for the whole handover: each round can cost a full probe timeout
        // when a host is down, and stopping has a budget of a few seconds.
        let probed = snapshot(client, &nodes, cfg).await;
        let leader = client.leader().await.map_err(|e| e.to_string())?;
        if leader.id == own_id {
            if !nodes
                .iter()
                .any(|n| n.id != own_id && n.role == Role::Voter)
            {
                return Ok(Handover::NotNeeded); // the only voter: nothing to hand over to
            }
            // To a voter that answers: raft may otherwise pick one that is down, and the
            // cluster then waits out an election.
            let successor = probed
                .iter()
                .filter(|v| v.id != own_id && v.role == Role::Voter && v.alive)
                .min_by_key(|v| (v.weight, v.id))
                .map(|v| v.id);
            match successor {
                Some(id) => client.transfer(id).await,
                None => client.transfer_any().await,
            }
            .map_err(|e| format!("transfer leadership: {e}"))?;
        }
        let leader = client.leader().await.map_err(|e| e.to_string())?;
        // The cluster as it will be without this member: its current roles, the liveness
        // probed above, this member counted as gone.
        let without_me = |now: &[NodeInfo]| -> Vec<MemberView> {
            now.iter()
                .map(|n| {
                    let probe = probed.iter().find(|v| v.id == n.id);
                    let alive = n.id != own_id && probe.is_some_and(|v| v.alive);
                    MemberView {
                        id: n.id,
                        role: n.role,
                        failure_domain: probe.map_or(0, |v| v.failure_domain),
                        weight: probe.map_or(u64::MAX, |v| v.weight),
                        alive,
                        caught_up: alive,
                        cannot_write: false,
                    }
                })
                .collect()
        };
        for change in plan(&without_me(&nodes), leader.id, cfg.targets) {
            if change.id != own_id {
                client
                    .assign(change.id, change.role)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let now = client.cluster().await.map_err(|e| e.to_string())?;
        let stepped_down = apply(
            &without_me(&now),
            &[Change {
                id: own_id,
                role: Role::Spare,
            }],
        );
        // A stand-by's role never counts towards quorum: it always steps down.
        let was_voter = now.iter().any(|n| n.id == own_id && n.role == Role::Voter);
        if was_voter && !has_quorum(&stepped_down) {
            let voters: Vec<&MemberView> = stepped_down
                .iter()
                .filter(|v| v.role == Role::Voter)
                .collect();
            return Ok(Handover::KeptForQuorum {
                live_voters: voters.iter().filter(|v| v.alive).count(),
                voters: voters.len(),
            });
        }
        client
            .assign(own_id, Role::Spare)
            .await
            .map_err(|e| format!("demote self: {e}"))?;
        Ok(Handover::SteppedDown)
    })
    .await
    .map_err(|_| format!("handover did not finish within {budget:?}"))?
}
