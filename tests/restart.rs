//! Whole-cluster restarts: every control plane stopped at once (a power cut with systemd,
//! `snap stop` everywhere, an unattended reboot) or one after another, then started again,
//! with or without one member staying down. A graceful stop must never be what costs the
//! cluster its quorum, and each stop ends within its 5 s budget.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::time::Duration;

use common::*;

/// How long a restarted cluster may take to elect a leader and settle its voters.
const SETTLE: Duration = Duration::from_secs(40);

/// Waits until `node` sees a leader and `voters` voters that answer; returns the status.
fn wait_settled(node: &Node, voters: usize, what: &str) -> serde_json::Value {
    eventually(what, SETTLE, || {
        let s = node.status_json()?;
        (leader(&s).is_some() && live_voters(&s) == voters).then_some(s)
    })
}

fn assert_prompt(stops: &[(std::process::ExitStatus, Duration)], what: &str) {
    for (status, took) in stops {
        assert!(status.success(), "{what}: exit {status}");
        assert!(
            *took < Duration::from_secs(5),
            "{what}: a stop took {took:?} (budget 5 s)"
        );
    }
}

fn stop_and_start_all_rounds(n: usize, rounds: usize) {
    let mut cluster = TestCluster::start(n);
    let voters = n.min(3);
    wait_settled(&cluster.nodes[0], voters, "the cluster formed");
    for round in 1..=rounds {
        let mut all: Vec<&mut Node> = cluster.nodes.iter_mut().collect();
        let stops = stop_all(&mut all);
        assert_prompt(&stops, &format!("round {round}"));
        for node in cluster.nodes.iter_mut() {
            node.restart();
        }
        for node in &cluster.nodes {
            wait_settled(
                node,
                voters,
                &format!("round {round}: a leader and {voters} voters"),
            );
        }
    }
}

#[test]
fn three_members_stopped_at_once_always_come_back() {
    stop_and_start_all_rounds(3, 4);
}

#[test]
fn five_members_stopped_at_once_always_come_back() {
    stop_and_start_all_rounds(5, 2);
}

#[test]
fn stopped_at_once_with_one_member_staying_down() {
    let [mut a, mut b, mut c] = TestCluster::start(3).into_nodes();
    wait_settled(&a, 3, "the cluster formed");
    for round in 1..=2 {
        assert_prompt(
            &stop_all(&mut [&mut a, &mut b, &mut c]),
            &format!("round {round}"),
        );
        // A different member stays down each round.
        let (up1, up2, down) = if round == 1 {
            (&mut a, &mut b, &mut c)
        } else {
            (&mut b, &mut c, &mut a)
        };
        up1.restart();
        up2.restart();
        for node in [&*up1, &*up2] {
            wait_settled(
                node,
                2,
                &format!("round {round}: a leader with 2 of 3 voters"),
            );
        }
        down.restart();
        wait_settled(down, 3, &format!("round {round}: the third one back"));
    }
}

#[test]
fn stopped_one_by_one_with_the_last_staying_down() {
    let mut cluster = TestCluster::start(5);
    wait_settled(&cluster.nodes[0], 3, "the cluster formed");
    for node in cluster.nodes.iter_mut() {
        let (status, took) = node.terminate();
        assert!(
            status.success() && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
    let (up, _down) = cluster.nodes.split_at_mut(4);
    for node in up.iter_mut() {
        node.restart();
    }
    for node in up.iter() {
        wait_settled(node, 3, "a leader and 3 live voters with 4 of 5 up");
    }
}

#[test]
fn a_member_without_quorum_stops_within_its_budget() {
    let [a, mut b, mut c] = TestCluster::start(3).into_nodes();
    wait_settled(&a, 3, "the cluster formed");
    let mut a = a;
    b.kill();
    c.kill();
    let (status, took) = a.terminate();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(5),
        "stopping without quorum took {took:?}:\n{}",
        a.log_text()
    );
}
