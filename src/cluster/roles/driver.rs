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
use crate::sys::runner::BoxFuture;

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

/// Where members' logs end, measured: each member's agent reads its own data directory
/// (`cluster::recovery::progress`). The DQLITE protocol of libdqlite 1.11 says nothing of
/// replication progress, so this is the driver's only way to know a member has caught up.
pub trait Progress: Send + Sync {
    /// The index of the last entry of the log of the member at `address`; `None` when it
    /// cannot be told (no agent of ours there, no answer in time).
    fn last_index<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Option<u64>>;
}

/// How far (in log entries) a member's log may be behind the leader's and still count as
/// caught up: the two are read a moment apart, while writes go on.
pub const CATCH_UP_LAG: u64 = 512;

/// Has a member whose log ends at `member` caught up with a leader whose log ends at
/// `leader`? `None` when either is unknown.
pub fn caught_up(leader: Option<u64>, member: Option<u64>) -> Option<bool> {
    match (leader, member) {
        (Some(l), Some(m)) => Some(m.saturating_add(CATCH_UP_LAG) >= l),
        _ => None,
    }
}

/// Plans with `plan`; while the first change promotes a member to voter whose log is
/// measurably behind the leader's (at `leader_address`), that member is marked not caught up
/// and the plan is made again. A member whose progress cannot be told is judged by its
/// liveness alone (libraft still catches it up before the change applies).
pub async fn hold_back_lagging(
    views: &mut [MemberView],
    config: &[NodeInfo],
    leader_address: &str,
    progress: &dyn Progress,
    plan: impl Fn(&[MemberView]) -> Vec<Change>,
) -> Vec<Change> {
    let mut changes = plan(views);
    while let Some(change) = changes.first() {
        let promoting = change.role == Role::Voter
            && views
                .iter()
                .any(|v| v.id == change.id && v.role != Role::Voter && v.caught_up);
        if !promoting {
            break;
        }
        let address = config
            .iter()
            .find(|n| n.id == change.id)
            .map(|n| n.address.clone())
            .unwrap_or_default();
        let (leader, member) = tokio::join!(
            progress.last_index(leader_address),
            progress.last_index(&address)
        );
        if caught_up(leader, member) != Some(false) {
            break;
        }
        tracing::info!(id = change.id, %address, leader_index = leader, member_index = member, "not promoting yet: its log is behind the leader's");
        if let Some(v) = views.iter_mut().find(|v| v.id == change.id) {
            v.caught_up = false;
        }
        changes = plan(views);
    }
    changes
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
    progress: Option<&dyn Progress>,
) -> Result<Option<usize>, String> {
    let mut applied = 0;
    loop {
        let basis = client.plan_basis().await.map_err(|e| e.to_string())?;
        if basis.leader.id != own_id {
            return Ok(None);
        }
        let mut views = snapshot(client, &basis.config, cfg).await;
        if !has_quorum(&views) {
            // Cut off from the majority: this view is the minority's; change nothing.
            tracing::debug!("no majority of voters answers this leader; no role changes");
            return Ok(Some(applied));
        }
        let changes = match progress {
            Some(progress) => {
                hold_back_lagging(
                    &mut views,
                    &basis.config,
                    &basis.leader.address,
                    progress,
                    |v| plan_for_leader(v, own_id, cfg.targets),
                )
                .await
            }
            None => plan_for_leader(&views, own_id, cfg.targets),
        };
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
    progress: Option<Arc<dyn Progress>>,
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
            Some((client, own_id)) => adjust_once(&client, own_id, &cfg, progress.as_deref()).await,
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

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[test]
    fn a_member_within_the_lag_has_caught_up_and_unknown_is_unknown() {
        assert_eq!(caught_up(Some(1000), Some(1000)), Some(true));
        assert_eq!(caught_up(Some(1000), Some(1000 - CATCH_UP_LAG)), Some(true));
        assert_eq!(
            caught_up(Some(1000), Some(1000 - CATCH_UP_LAG - 1)),
            Some(false)
        );
        assert_eq!(caught_up(Some(10), Some(u64::MAX)), Some(true));
        assert_eq!(caught_up(None, Some(5)), None);
        assert_eq!(caught_up(Some(5), None), None);
    }
}

#[cfg(test)]
mod hold_back_tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Logs(BTreeMap<String, u64>);

    impl Progress for Logs {
        fn last_index<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Option<u64>> {
            Box::pin(async move { self.0.get(address).copied() })
        }
    }

    fn view(id: u64, role: Role, alive: bool) -> MemberView {
        MemberView {
            id,
            role,
            failure_domain: id,
            weight: 0,
            alive,
            caught_up: alive,
            cannot_write: false,
        }
    }

    fn node(id: u64) -> NodeInfo {
        NodeInfo {
            id,
            address: format!("10.0.0.{id}:19001"),
            role: Role::Voter,
        }
    }

    /// Three voters, one of them dead, and two stand-bys: the policy would promote one.
    fn cluster() -> (Vec<MemberView>, Vec<NodeInfo>) {
        let views = vec![
            view(1, Role::Voter, true),
            view(2, Role::Voter, true),
            view(3, Role::Voter, false),
            view(4, Role::StandBy, true),
            view(5, Role::StandBy, true),
        ];
        (views, (1..=5).map(node).collect())
    }

    fn logs(entries: &[(u64, u64)]) -> Logs {
        Logs(
            entries
                .iter()
                .map(|(id, i)| (node(*id).address, *i))
                .collect(),
        )
    }

    fn promotions(changes: &[Change]) -> Vec<u64> {
        changes
            .iter()
            .filter(|c| c.role == Role::Voter)
            .map(|c| c.id)
            .collect()
    }

    #[tokio::test]
    async fn a_lagging_stand_by_is_passed_over_for_one_that_caught_up() {
        let targets = Targets::default();
        let plan_it = |v: &[MemberView]| plan_for_leader(v, 1, targets);
        let (mut views, config) = cluster();
        let first = plan_it(&views);
        let chosen = promotions(&first)[0];
        let other = if chosen == 4 { 5 } else { 4 };
        let progress = logs(&[(1, 10_000), (chosen, 10), (other, 9_990)]);
        let changes =
            hold_back_lagging(&mut views, &config, &node(1).address, &progress, plan_it).await;
        assert_eq!(promotions(&changes).first(), Some(&other), "{changes:?}");

        // Both behind: nobody is promoted to voter now.
        let (mut views, config) = cluster();
        let progress = logs(&[(1, 10_000), (4, 10), (5, 20)]);
        let changes =
            hold_back_lagging(&mut views, &config, &node(1).address, &progress, plan_it).await;
        assert!(promotions(&changes).is_empty(), "{changes:?}");

        // Unknown progress (no agent of ours answers): liveness decides, as before.
        let (mut views, config) = cluster();
        let changes =
            hold_back_lagging(&mut views, &config, &node(1).address, &logs(&[]), plan_it).await;
        assert_eq!(promotions(&changes), promotions(&first));
    }
}
