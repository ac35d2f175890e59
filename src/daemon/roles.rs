//! The roles driver: on the node whose member is the raft leader, probe every member with
//! DESCRIBE each interval (bounded parallelism, short deadline), feed the pure
//! [`crate::roles::plan`], apply its first change with ASSIGN, re-snapshot, repeat until the
//! plan is empty. Followers only watch. Also the graceful handover of a stopping voter.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::dqlite::{Client, NodeInfo, Role};
use crate::roles::{plan, MemberView, Targets};

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
    while let Some(Ok((i, m))) = set.join_next().await {
        metas[i] = m;
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
        })
        .collect()
}

/// One round on the leader: apply changes until the plan is empty. Returns how many were
/// applied; `Ok(None)` if this node is not the leader.
pub async fn adjust_once(
    client: &Arc<Client>,
    own_id: u64,
    cfg: &RolesConfig,
) -> Result<Option<usize>, String> {
    let mut applied = 0;
    loop {
        let leader = client.leader().await.map_err(|e| e.to_string())?;
        if leader.id != own_id {
            return Ok(None);
        }
        let nodes = client.cluster().await.map_err(|e| e.to_string())?;
        let views = snapshot(client, &nodes, cfg).await;
        let changes = plan(&views, own_id, cfg.targets);
        let Some(change) = changes.first() else {
            return Ok(Some(applied));
        };
        if applied >= MAX_CHANGES_PER_ROUND {
            return Ok(Some(applied));
        }
        let address = nodes
            .iter()
            .find(|n| n.id == change.id)
            .map(|n| n.address.clone())
            .unwrap_or_default();
        tracing::info!(id = change.id, %address, role = %change.role, "assigning role");
        client
            .assign(change.id, change.role)
            .await
            .map_err(|e| format!("assign {} to {address}: {e}", change.role))?;
        applied += 1;
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

/// Graceful handover before this member stops: if it is the leader, leadership goes to
/// another voter; if it votes or stands by, a live replacement is promoted first, then this
/// member becomes a spare. Bounded by `budget`.
pub async fn handover(
    client: &Arc<Client>,
    own_id: u64,
    cfg: &RolesConfig,
    budget: Duration,
) -> Result<(), String> {
    tokio::time::timeout(budget, async {
        let nodes = client.cluster().await.map_err(|e| e.to_string())?;
        let Some(me) = nodes.iter().find(|n| n.id == own_id) else {
            return Ok(());
        };
        if me.role == Role::Spare {
            return Ok(());
        }
        let leader = client.leader().await.map_err(|e| e.to_string())?;
        if leader.id == own_id {
            let others = nodes
                .iter()
                .any(|n| n.id != own_id && n.role == Role::Voter);
            if !others {
                return Ok(()); // the only voter: nothing to hand over to
            }
            client
                .transfer_any()
                .await
                .map_err(|e| format!("transfer leadership: {e}"))?;
        }
        let leader = client.leader().await.map_err(|e| e.to_string())?;
        let mut views = snapshot(client, &nodes, cfg).await;
        for v in views.iter_mut().filter(|v| v.id == own_id) {
            v.alive = false;
            v.caught_up = false;
        }
        // Promote the replacement(s) the policy picks with this member gone.
        for change in plan(&views, leader.id, cfg.targets) {
            if change.id != own_id && change.role != Role::Spare {
                client
                    .assign(change.id, change.role)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let replaced = {
            let after = client.cluster().await.map_err(|e| e.to_string())?;
            let count = |role: Role| {
                after
                    .iter()
                    .filter(|n| n.id != own_id && n.role == role)
                    .count()
            };
            me.role != Role::Voter || count(Role::Voter) >= 1
        };
        if replaced {
            client
                .assign(own_id, Role::Spare)
                .await
                .map_err(|e| format!("demote self: {e}"))?;
        }
        Ok(())
    })
    .await
    .map_err(|_| format!("handover did not finish within {budget:?}"))?
}
