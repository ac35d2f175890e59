//! The snap's external datastore, benchmarked (prints figures; not a test), with real
//! daemons and the go-dqlite fixture as k8s-dqlite (`tests/common/k8s_dqlite.rs`):
//! - external control-plane join: wall time of `cluster-agent join` (target ≤ 3 s; MicroK8s
//!   sleeps 10 s before its first check), and until the cluster lists the member;
//! - voter loss → 3 live voters in an all-fixture cluster of four: go-dqlite's own adjuster
//!   alone (30 s `RolesAdjustmentFrequency`, as k8s-dqlite runs it) vs ours with
//!   `--manage-roles` next to it, same run (target ≤ 3 s); then role changes over 60 s with
//!   both running (target: none).
//!
//! Run: `cargo bench --bench external`.
// Benchmarks set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::k8s_dqlite::SnapNode;
use common::{cli, join_url, leader, live_voters, median, members, text, Node};

const RUNS: usize = 3;

/// Polls `f` every 50 ms until it holds; how long that took.
fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn lists(node: &Node, address: &str) -> bool {
    node.status_json()
        .is_some_and(|s| members(&s).iter().any(|(a, _, _)| a == address))
}

/// `address → role` as `node`'s status reports it.
fn roles(node: &Node) -> Option<BTreeMap<String, String>> {
    let s = node.status_json()?;
    Some(members(&s).into_iter().map(|(a, r, _)| (a, r)).collect())
}

/// Four snap nodes whose daemons get `flags`, joined into one cluster with three live
/// voters; returns them and the leader's index.
fn four_node_cluster(flags: &[&str]) -> (Vec<SnapNode>, usize) {
    let nodes: Vec<SnapNode> = (0..4).map(|_| SnapNode::start_with(flags)).collect();
    for joiner in &nodes[1..] {
        let url = join_url(&nodes[0]);
        let out = cli(joiner, &["join", &url]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    wait(Duration::from_secs(60), || {
        nodes[0]
            .status_json()
            .is_some_and(|s| live_voters(&s) == 3 && members(&s).len() == 4)
    });
    let s = nodes[0].status_json().unwrap();
    let at = leader(&s).unwrap();
    let index = nodes.iter().position(|n| n.member_address() == at).unwrap();
    (nodes, index)
}

/// Kills the member of a voter that does not lead; how long until the leader's agent reports
/// three live voters again.
fn voter_loss(nodes: &[SnapNode], leader: usize) -> Duration {
    let s = nodes[leader].status_json().unwrap();
    let voters = members(&s);
    let victim = nodes
        .iter()
        .enumerate()
        .find(|(i, n)| {
            *i != leader && voters.contains(&(n.member_address(), "voter".to_string(), true))
        })
        .unwrap()
        .1;
    victim.kill_member();
    wait(Duration::from_secs(120), || {
        nodes[leader]
            .status_json()
            .is_some_and(|s| live_voters(&s) == 3)
    })
}

fn main() {
    // External control-plane join.
    let mut wall = Vec::new();
    let mut listed = Vec::new();
    for _ in 0..RUNS {
        let a = SnapNode::start();
        let b = SnapNode::start();
        let url = join_url(&a);
        let start = Instant::now();
        let out = cli(&b, &["join", &url]);
        wall.push(start.elapsed());
        assert!(out.status.success(), "{}", text(&out.stderr));
        wait(Duration::from_secs(30), || lists(&a, &b.member_address()));
        listed.push(start.elapsed());
    }
    println!(
        "external control-plane join: `join` returns after {:.2} s, listed by the cluster after {:.2} s (median of {RUNS}; runs {:?}; target ≤ 3 s; MicroK8s sleeps 10 s before it first looks)",
        median(wall.clone()).as_secs_f64(),
        median(listed).as_secs_f64(),
        wall.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>(),
    );

    // Voter loss: go-dqlite's adjuster alone, then ours next to it.
    let (nodes, leader) = four_node_cluster(&[]);
    let alone = voter_loss(&nodes, leader);
    drop(nodes);
    let (nodes, leader) = four_node_cluster(&["--manage-roles"]);
    let ours = voter_loss(&nodes, leader);
    println!(
        "voter loss → 3 live voters, four k8s-dqlite members: go-dqlite's adjuster alone {:.2} s, with --manage-roles {:.2} s (target ≤ 3 s)",
        alone.as_secs_f64(),
        ours.as_secs_f64()
    );

    // Both adjusters side by side: any role change from here on is a flap.
    let mut last = roles(&nodes[leader]).unwrap();
    let mut changes = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(250));
        let Some(now) = roles(&nodes[leader]) else {
            continue;
        };
        if now != last {
            changes.push(format!("{:.1} s: {now:?}", start.elapsed().as_secs_f64()));
            last = now;
        }
    }
    println!(
        "role changes over 60 s with both adjusters running: {} (target 0){}",
        changes.len(),
        if changes.is_empty() {
            String::new()
        } else {
            format!(": {changes:?}")
        }
    );
}
