//! Cluster benchmark (prints figures; not a test), on loopback with real daemons:
//! - control-plane join: wall time from `join` to "member" and to "voter";
//! - kill -9 of a non-leader voter (5 members) until 3 live voters again, median of runs;
//! - kill -9 of the leader until a new leader with 3 live voters, median of runs.
//!
//! Run: `cargo bench --bench cluster`.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use cluster_agent::dqlite::{Client, ClientTls, Options, Role};
use common::{cli, dqlite_addr, join_url, median, text, Node, TestCluster};

const RUNS: usize = 3;

fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn client(d: &Node, seeds: Vec<String>) -> Client {
    let b = d.state.join("var/kubernetes/backend");
    let tls = ClientTls::load(&b.join("cluster.crt"), &b.join("cluster.key")).unwrap();
    let opts = Options {
        dial_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    Client::new(seeds, Some(tls), opts).unwrap()
}

fn role_of(rt: &tokio::runtime::Runtime, c: &Client, addr: &str) -> Option<Role> {
    rt.block_on(c.cluster())
        .ok()?
        .into_iter()
        .find(|n| n.address == addr)
        .map(|n| n.role)
}

fn live_voters(rt: &tokio::runtime::Runtime, c: &Client, dead: &[String]) -> usize {
    rt.block_on(c.cluster())
        .map(|ns| {
            ns.iter()
                .filter(|n| n.role == Role::Voter && !dead.contains(&n.address))
                .count()
        })
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Join timing: the third node becomes a voter (with two members the policy keeps one).
    let mut to_member = Vec::new();
    let mut to_voter = Vec::new();
    for _ in 0..RUNS {
        let nodes = TestCluster::start(2).nodes;
        let third = Node::start();
        let url = join_url(&nodes[0]);
        let c = client(&nodes[0], vec![dqlite_addr(&nodes[0])]);
        let start = Instant::now();
        let out = cli(&third, &["join", &url]);
        to_member.push(start.elapsed());
        assert!(out.status.success(), "{}", text(&out.stderr));
        wait(Duration::from_secs(30), || {
            role_of(&rt, &c, &dqlite_addr(&third)) == Some(Role::Voter)
        });
        to_voter.push(start.elapsed());
    }
    println!("control-plane join: member after {:.2} s, voter after {:.2} s (median of {RUNS}; target ≤ 2 s)",
        median(to_member).as_secs_f64(), median(to_voter).as_secs_f64());

    // kill -9 of a non-leader voter.
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let mut nodes = TestCluster::start(5).nodes;
        let seeds: Vec<String> = nodes.iter().map(dqlite_addr).collect();
        let c = client(&nodes[0], seeds);
        wait(Duration::from_secs(30), || live_voters(&rt, &c, &[]) == 3);
        let leader = rt.block_on(c.leader()).unwrap().address;
        let ns = rt.block_on(c.cluster()).unwrap();
        let victim = ns
            .iter()
            .find(|n| n.role == Role::Voter && n.address != leader)
            .unwrap()
            .address
            .clone();
        let idx = nodes.iter().position(|d| dqlite_addr(d) == victim).unwrap();
        let start = Instant::now();
        nodes[idx].kill();
        wait(Duration::from_secs(60), || {
            live_voters(&rt, &c, std::slice::from_ref(&victim)) == 3
        });
        times.push(start.elapsed());
    }
    println!("kill -9 of a non-leader voter → 3 live voters: median {:.2} s over {RUNS} runs (target ≤ 3 s; go-dqlite: 25 s)",
        median(times).as_secs_f64());

    // kill -9 of the leader.
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let mut nodes = TestCluster::start(5).nodes;
        let seeds: Vec<String> = nodes.iter().map(dqlite_addr).collect();
        let c = client(&nodes[1], seeds);
        wait(Duration::from_secs(30), || live_voters(&rt, &c, &[]) == 3);
        let leader = rt.block_on(c.leader()).unwrap().address;
        let idx = nodes.iter().position(|d| dqlite_addr(d) == leader).unwrap();
        let start = Instant::now();
        nodes[idx].kill();
        wait(Duration::from_secs(60), || {
            let new_leader = rt
                .block_on(c.leader())
                .map(|l| l.address != leader)
                .unwrap_or(false);
            new_leader && live_voters(&rt, &c, std::slice::from_ref(&leader)) == 3
        });
        times.push(start.elapsed());
    }
    println!("kill -9 of the leader → new leader with 3 live voters: median {:.2} s over {RUNS} runs (target ≤ 6 s)",
        median(times).as_secs_f64());
}
