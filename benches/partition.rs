//! Partitions and lost members, benchmarked (prints figures; not a test), with five control
//! planes (failure domains 1, 1, 2, 2, 3), each in its own network namespace on one bridge
//! (`tests/common/netns.rs`, `Lan`), 150 ms `--dqlite-network-latency` (the default):
//! - a non-leader voter cut off → three live voters again on the majority;
//! - the leader cut off → a new leader, and three live voters again (reported from the
//!   election; target ≤ 3 s);
//! - the leader killed (-9) → three live voters again;
//! - during every cut and for 5 s after the heal: the fewest voters and whether an even
//!   number of voters was ever seen, sampled through `status` on a majority node (target:
//!   never fewer than 3 once repaired, never even).
//!
//! Needs root. Run: `cargo bench --bench partition`.
// Benchmarks set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::netns::Lan;
use common::{dqlite_addr, five_control_planes_on, leader, live_voters, median, members, Node};

const RUNS: usize = 3;

fn leader_index(nodes: &[Node]) -> usize {
    let s = nodes[0].status_json().unwrap();
    let l = leader(&s).unwrap();
    nodes.iter().position(|n| dqlite_addr(n) == l).unwrap()
}

/// Voters in the configuration as a leader gave it to `node`, if one did.
fn voters(node: &Node) -> Option<usize> {
    let s = node.status_json()?;
    let m = members(&s);
    (!m.is_empty() && s["error"].is_null())
        .then(|| m.iter().filter(|(_, r, _)| r == "voter").count())
}

/// The fewest voters and whether an even count was seen, over `samples`.
fn summary(samples: &[usize]) -> (usize, bool) {
    (
        samples.iter().copied().min().unwrap_or(0),
        samples.iter().any(|v| v % 2 == 0),
    )
}

struct Outcome {
    elected: Option<Duration>,
    repaired: Duration,
    samples: Vec<usize>,
}

/// Cuts (or kills) member `victim`; measures on `watch` until the majority has a leader
/// other than the victim and three live voters without it; samples voters until then, for
/// 5 s more, and (if cut) for 5 s after the heal.
fn scenario(lan: &Lan, nodes: &mut [Node], victim: usize, kill: bool) -> Outcome {
    let watch = (victim + 1) % nodes.len();
    let victim_address = dqlite_addr(&nodes[victim]);
    let was_leader = leader_index(nodes) == victim;
    let start = Instant::now();
    if kill {
        nodes[victim].kill();
    } else {
        lan.cut(victim, true);
    }
    let mut samples = Vec::new();
    let mut elected = None;
    let repaired = loop {
        let Some(s) = nodes[watch].status_json() else {
            continue;
        };
        let m = members(&s);
        // A sample is the configuration a leader gave (not the last one this node saw).
        if !m.is_empty() && s["error"].is_null() {
            samples.push(m.iter().filter(|(_, r, _)| r == "voter").count());
        }
        if elected.is_none() && leader(&s).is_some_and(|l| l != victim_address) {
            elected = Some(start.elapsed());
        }
        let repaired = live_voters(&s) == 3
            && !m
                .iter()
                .any(|(a, r, _)| *a == victim_address && r == "voter");
        if repaired && elected.is_some() {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(90), "no repair");
    };
    let after = |samples: &mut Vec<usize>| {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            samples.extend(voters(&nodes[watch]));
        }
    };
    after(&mut samples);
    if !kill {
        lan.cut(victim, false);
        after(&mut samples);
    }
    Outcome {
        elected: was_leader.then_some(elected).flatten(),
        repaired,
        samples,
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("partition benchmark: skipped (network namespaces need root)");
        return;
    }
    println!("partition benchmark: 5 control planes (failure domains 1,1,2,2,3) on a bridge, {RUNS} runs each");
    let mut rows: Vec<(String, Vec<Outcome>)> = Vec::new();
    for (name, pick_leader, kill) in [
        ("non-leader voter cut", false, false),
        ("leader cut", true, false),
        ("leader kill -9", true, true),
    ] {
        let mut outcomes = Vec::new();
        for _ in 0..RUNS {
            let lan = Lan::new(5).unwrap();
            let mut nodes = five_control_planes_on(&lan);
            let leader = leader_index(&nodes);
            let victim = if pick_leader {
                leader
            } else {
                let s = nodes[leader].status_json().unwrap();
                let voters: Vec<String> = members(&s)
                    .into_iter()
                    .filter(|(a, r, _)| r == "voter" && *a != dqlite_addr(&nodes[leader]))
                    .map(|(a, _, _)| a)
                    .collect();
                nodes
                    .iter()
                    .position(|n| voters.contains(&dqlite_addr(n)))
                    .unwrap()
            };
            outcomes.push(scenario(&lan, &mut nodes, victim, kill));
        }
        rows.push((name.to_string(), outcomes));
    }
    for (name, outcomes) in &rows {
        let repaired: Vec<Duration> = outcomes.iter().map(|o| o.repaired).collect();
        let all: Vec<usize> = outcomes.iter().flat_map(|o| o.samples.clone()).collect();
        let (fewest, even) = summary(&all);
        let mut line = format!(
            "  {name:<22} 3 live voters after {:>6.2} s median (runs: {})",
            median(repaired.clone()).as_secs_f64(),
            repaired
                .iter()
                .map(|d| format!("{:.2}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let from_election: Vec<Duration> = outcomes
            .iter()
            .filter_map(|o| o.elected.map(|e| o.repaired.saturating_sub(e)))
            .collect();
        if !from_election.is_empty() {
            let elected: Vec<Duration> = outcomes.iter().filter_map(|o| o.elected).collect();
            line.push_str(&format!(
                "; new leader after {:.2} s, repaired {:.2} s after the election",
                median(elected).as_secs_f64(),
                median(from_election).as_secs_f64()
            ));
        }
        line.push_str(&format!(
            "; fewest voters sampled {fewest}, even count seen: {}",
            if even { "yes" } else { "no" }
        ));
        println!("{line}");
    }
}
