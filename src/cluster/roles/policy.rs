//! The roles policy: which dqlite members vote, stand by, or are spares. Pure: members in,
//! ordered role changes out; the driver (on the raft leader) applies them one at a time.
//!
//! Rules:
//! - voters: an odd number, at most the target, chosen among live, caught-up members, spread
//!   over as many failure domains as exist, then stand-bys likewise among the rest;
//! - preference: a domain not yet covered, then the member's current role (no churn), then
//!   lower weight, then lower id — so equal inputs give equal outputs, whatever their order;
//! - a dead member keeps its role until a live replacement takes it; the leader keeps voting;
//! - a member that cannot write (its agent says so through its weight,
//!   [`CANNOT_WRITE_WEIGHT`]) is never promoted, and a voter that cannot write is replaced;
//! - a leader that cannot reach a majority of the voters changes nothing (its view is the
//!   minority's: whatever it decided would be wrong, and it could not commit it anyway);
//! - changes are ordered so that quorum (live voters > half the voters) is never lost:
//!   promotions to voter first, then voter demotions (dead ones first), then stand-bys.

use std::collections::BTreeSet;

use crate::dqlite::Role;

/// What the policy knows about one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    pub role: Role,
    pub failure_domain: u64,
    pub weight: u64,
    /// Answered DESCRIBE on the last probe.
    pub alive: bool,
    /// Close enough to the leader's log to vote without stalling commits.
    pub caught_up: bool,
    /// Its agent reports that it cannot write (a full disk, a failing one).
    pub cannot_write: bool,
}

/// The election weight an agent gives its member while the member cannot write. Weight is
/// the one value every member reports about itself (DESCRIBE) and nothing else uses this
/// high; go-dqlite's own adjuster just prefers members with a lower one.
pub const CANNOT_WRITE_WEIGHT: u64 = u64::MAX - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub voters: usize,
    pub standbys: usize,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            voters: 3,
            standbys: 3,
        }
    }
}

/// One ASSIGN to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub id: u64,
    pub role: Role,
}

fn role_rank(role: Role) -> u8 {
    match role {
        Role::Voter => 0,
        Role::StandBy => 1,
        Role::Spare => 2,
    }
}

/// Picks up to `n` members from `pool`, each time preferring a failure domain not yet in
/// `covered`, then `prefer` (current role), then lower weight, then lower id.
fn pick(pool: &[&MemberView], n: usize, covered: &mut BTreeSet<u64>, prefer: Role) -> Vec<u64> {
    let mut left: Vec<&MemberView> = pool.to_vec();
    let mut out = Vec::new();
    while out.len() < n && !left.is_empty() {
        left.sort_by_key(|m| {
            (
                covered.contains(&m.failure_domain),
                m.role != prefer,
                role_rank(m.role),
                m.weight,
                m.id,
            )
        });
        let chosen = left.remove(0);
        covered.insert(chosen.failure_domain);
        out.push(chosen.id);
    }
    out
}

/// The largest odd number ≤ `n` (0 stays 0).
fn odd_at_most(n: usize) -> usize {
    if n == 0 {
        0
    } else if n % 2 == 0 {
        n - 1
    } else {
        n
    }
}

/// What the leader's driver applies: [`plan`], unless a majority of the voters does not
/// answer this leader (its view is the minority's).
pub fn plan_for_leader(members: &[MemberView], leader: u64, targets: Targets) -> Vec<Change> {
    if !has_quorum(members) {
        return Vec::new();
    }
    plan(members, leader, targets)
}

/// The role changes that bring `members` to the policy, in a quorum-safe order (also used
/// on a cluster as it will be without a leaving member, which may not have a majority yet).
pub fn plan(members: &[MemberView], leader: u64, targets: Targets) -> Vec<Change> {
    let target_voters = odd_at_most(targets.voters.max(1));
    let can_vote = |m: &&MemberView| m.alive && (m.caught_up || m.role == Role::Voter);
    // A voter that cannot write is replaced only when healthy members can fill the same
    // number of votes; until then it keeps voting (as a dead voter keeps its role).
    let healthy: Vec<&MemberView> = members
        .iter()
        .filter(can_vote)
        .filter(|m| !m.cannot_write)
        .collect();
    let with_failing_voters: Vec<&MemberView> = members
        .iter()
        .filter(can_vote)
        .filter(|m| !m.cannot_write || m.role == Role::Voter)
        .collect();
    let eligible = if odd_at_most(target_voters.min(healthy.len()))
        >= odd_at_most(target_voters.min(with_failing_voters.len()))
    {
        healthy
    } else {
        with_failing_voters
    };
    let current_voters: Vec<&MemberView> =
        members.iter().filter(|m| m.role == Role::Voter).collect();
    let want = odd_at_most(target_voters.min(eligible.len()));

    // Voters. Without enough live members for a full set, keep the voters we have (a dead
    // voter is only replaced, never just dropped) and promote nobody into an even count.
    let mut covered = BTreeSet::new();
    let live_voters = current_voters.iter().filter(|m| m.alive).count();
    let voters: Vec<u64> = if want < live_voters && current_voters.iter().any(|m| !m.alive) {
        current_voters.iter().map(|m| m.id).collect()
    } else {
        let mut chosen = Vec::new();
        if let Some(l) = members
            .iter()
            .find(|m| m.id == leader && m.role == Role::Voter)
        {
            covered.insert(l.failure_domain);
            chosen.push(l.id);
        }
        let rest: Vec<&MemberView> = eligible
            .iter()
            .copied()
            .filter(|m| m.id != leader)
            .collect();
        let need = want.saturating_sub(chosen.len());
        chosen.extend(pick(&rest, need, &mut covered, Role::Voter));
        chosen
    };
    for id in &voters {
        if let Some(m) = members.iter().find(|m| m.id == *id) {
            covered.insert(m.failure_domain);
        }
    }

    // Stand-bys among the live rest; a dead stand-by keeps its role unless replaced.
    let rest: Vec<&MemberView> = members
        .iter()
        .filter(|m| m.alive && !voters.contains(&m.id))
        .collect();
    let mut sb_covered = BTreeSet::new();
    let mut standbys = pick(&rest, targets.standbys, &mut sb_covered, Role::StandBy);
    let mut dead_standbys: Vec<u64> = members
        .iter()
        .filter(|m| !m.alive && m.role == Role::StandBy)
        .map(|m| m.id)
        .collect();
    dead_standbys.sort_unstable();
    let room = targets.standbys.saturating_sub(standbys.len());
    standbys.extend(dead_standbys.iter().take(room));

    // Everyone else is a spare: dead voters and stand-bys not kept above have replacements.
    let desired = |m: &MemberView| {
        if voters.contains(&m.id) {
            Role::Voter
        } else if standbys.contains(&m.id) {
            Role::StandBy
        } else {
            Role::Spare
        }
    };

    let mut promote_voter = Vec::new();
    let mut demote_voter_dead = Vec::new();
    let mut demote_voter_live = Vec::new();
    let mut standby_changes = Vec::new();
    for m in members {
        let to = desired(m);
        if to == m.role {
            continue;
        }
        let change = Change { id: m.id, role: to };
        match (m.role, to) {
            (_, Role::Voter) => promote_voter.push((m.id, change)),
            (Role::Voter, _) if !m.alive => demote_voter_dead.push((m.id, change)),
            (Role::Voter, _) => demote_voter_live.push((m.id, change)),
            _ => standby_changes.push((role_rank(to), m.id, change)),
        }
    }
    // Stand-by promotions before spare demotions, each by id for determinism.
    standby_changes.sort_by_key(|(rank, id, _)| (*rank, *id));
    promote_voter.sort_by_key(|(id, _)| *id);
    demote_voter_dead.sort_by_key(|(id, _)| *id);
    demote_voter_live.sort_by_key(|(id, _)| *id);

    let mut out: Vec<Change> = Vec::new();
    out.extend(promote_voter.into_iter().map(|(_, c)| c));
    out.extend(demote_voter_dead.into_iter().map(|(_, c)| c));
    out.extend(demote_voter_live.into_iter().map(|(_, c)| c));
    out.extend(standby_changes.into_iter().map(|(_, _, c)| c));
    out
}

/// Applies `changes` to a copy of `members` (what the cluster looks like afterwards).
pub fn apply(members: &[MemberView], changes: &[Change]) -> Vec<MemberView> {
    let mut out = members.to_vec();
    for c in changes {
        if let Some(m) = out.iter_mut().find(|m| m.id == c.id) {
            m.role = c.role;
        }
    }
    out
}

/// Live voters are a strict majority of voters.
pub fn has_quorum(members: &[MemberView]) -> bool {
    let voters = members.iter().filter(|m| m.role == Role::Voter).count();
    let live = members
        .iter()
        .filter(|m| m.role == Role::Voter && m.alive)
        .count();
    live * 2 > voters
}

#[cfg(test)]
mod tests;
