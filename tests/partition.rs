//! Partitions and silent peers, on a LAN of network namespaces (`common::netns::Lan`): a cut
//! leader changes no roles and the majority repairs without dropping below three voters; a
//! cut follower is replaced; `status` answers within its bound with a silent peer. Needs
//! root (network namespaces); as another user each test says so and passes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::time::{Duration, Instant};

use common::netns::Lan;
use common::*;

fn lan(hosts: usize) -> Option<Lan> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: network namespaces need root");
        return None;
    }
    Some(Lan::new(hosts).unwrap())
}

/// The index of the node whose member leads, as `nodes[from]` sees it.
fn leader_index(nodes: &[Node], from: usize) -> Option<usize> {
    let s = nodes[from].status_json()?;
    let leader = leader(&s)?;
    nodes.iter().position(|n| dqlite_addr(n) == leader)
}

/// Voters in the configuration as `node` reads it (reachable or not); `None` without an
/// answer.
fn voters(node: &Node) -> Option<usize> {
    let s = node.status_json()?;
    let m = members(&s);
    (!m.is_empty()).then(|| m.iter().filter(|(_, r, _)| r == "voter").count())
}

/// Cuts `cut` off, waits for the majority (seen from `watch`) to have three live voters
/// again, heals, and waits for every member to answer. Returns the voter counts sampled on
/// `watch` after the first repair.
fn cut_repair_heal(lan: &Lan, nodes: &[Node], cut: usize, watch: usize) -> Vec<usize> {
    lan.cut(cut, true);
    let cut_address = dqlite_addr(&nodes[cut]);
    eventually("the majority repaired", Duration::from_secs(60), || {
        let s = nodes[watch].status_json()?;
        let repaired = live_voters(&s) == 3
            && !members(&s)
                .iter()
                .any(|(a, r, _)| *a == cut_address && r == "voter");
        repaired.then_some(())
    });
    let mut samples = Vec::new();
    // The cut goes on a while after the repair, then heals.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        samples.extend(voters(&nodes[watch]));
    }
    lan.cut(cut, false);
    eventually(
        "every member answers again",
        Duration::from_secs(60),
        || {
            let s = nodes[watch].status_json()?;
            let m = members(&s);
            (m.len() == 5 && m.iter().all(|(_, _, up)| *up) && live_voters(&s) == 3).then_some(())
        },
    );
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        samples.extend(voters(&nodes[watch]));
    }
    samples
}

#[test]
fn a_cut_leader_changes_no_roles_and_the_majority_never_drops_below_three_voters() {
    let Some(lan) = lan(5) else { return };
    let nodes = five_control_planes_on(&lan);
    let old = leader_index(&nodes, 0).unwrap();
    let watch = (old + 1) % nodes.len();
    let log_before = nodes[old].log_text().len();
    let samples = cut_repair_heal(&lan, &nodes, old, watch);
    assert!(!samples.is_empty());
    assert!(samples.iter().all(|v| *v >= 3), "{samples:?}");
    // The cut leader planned nothing from its minority view, so nothing it planned could
    // be carried to the new leader after the heal.
    let log = nodes[old].log_text();
    let since_cut = &log[log_before..];
    assert!(!since_cut.contains("assigning role"), "{since_cut}");
    let s = nodes[watch].status_json().unwrap();
    assert_eq!(live_voters(&s), 3, "{s}");
}

#[test]
fn a_cut_follower_voter_is_replaced_and_rejoins_as_a_stand_by() {
    let Some(lan) = lan(5) else { return };
    let nodes = five_control_planes_on(&lan);
    let leader = leader_index(&nodes, 0).unwrap();
    let s = nodes[leader].status_json().unwrap();
    let follower = nodes
        .iter()
        .position(|n| {
            members(&s)
                .iter()
                .any(|(a, r, _)| *a == dqlite_addr(n) && r == "voter")
                && dqlite_addr(n) != dqlite_addr(&nodes[leader])
        })
        .unwrap();
    let samples = cut_repair_heal(&lan, &nodes, follower, leader);
    assert!(samples.iter().all(|v| *v >= 3), "{samples:?}");
}

#[test]
fn status_answers_within_its_bound_with_a_silent_peer() {
    let Some(lan) = lan(5) else { return };
    let nodes = five_control_planes_on(&lan);
    let leader = leader_index(&nodes, 0).unwrap();
    let other = (leader + 1) % nodes.len();
    lan.cut(leader, true);
    // On the majority side: the silent member is named, the answer comes in time.
    let started = Instant::now();
    let out = cli(&nodes[other], &["status"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "status took {took:?}");
    assert!(
        matches!(out.status.code(), Some(0 | 3 | 4)),
        "{}",
        text(&out.stderr)
    );
    // On the cut node: nothing answers it, and it says so in time, with its exit code.
    let started = Instant::now();
    let out = cli(&nodes[leader], &["status", "--format", "json"]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "status on the cut node took {took:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["condition"], "unavailable", "{report}");
    lan.cut(leader, false);
    // Once the majority has repaired, the healed cluster is healthy everywhere.
    eventually("healthy again", Duration::from_secs(60), || {
        let out = cli(&nodes[other], &["status"]);
        (out.status.code() == Some(0)).then_some(())
    });
}
