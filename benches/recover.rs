//! Lost quorum, benchmarked (prints figures; not a test), with real daemons and embedded
//! members on loopback addresses, 300 rows written through the Debian `dqlite` shell first:
//! - `status` answer time on a survivor with the quorum lost (target ≤ 5 s);
//! - `cluster-agent recover --yes` wall time, and until every survivor serves every row
//!   (target ≤ 10 s): three control planes losing two, five losing three.
//!
//! Run: `cargo bench --bench recover`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::dqlite_shell::{count_rows, write_rows};
use common::{
    cli, dqlite_addr, eventually, join, live_voters, median, one_vote_survivors, text, Node,
};

const RUNS: usize = 3;
const ROWS: usize = 300;

/// One run: `size` control planes, rows written, every node but `survivors` killed (keeping
/// at most one voter among them); returns (status time, recover time, until served).
fn run(size: usize, survivors: usize) -> (Duration, Duration, Duration) {
    let mut nodes = vec![Node::start()];
    for _ in 1..size {
        let n = Node::start();
        join(&nodes[0], &n, &[]);
        nodes.push(n);
    }
    eventually("voters", Duration::from_secs(90), || {
        (live_voters(&nodes[0].status_json()?) == size.min(3)).then_some(())
    });
    let all: Vec<String> = nodes.iter().map(dqlite_addr).collect();
    write_rows(&nodes[0].backend(), &all.join(","), ROWS);
    // Survivors: never the leader (its loss is the hard case), at most one voter among
    // them, so that the quorum is lost.
    let report = nodes[0].status_json().unwrap();
    let leader = common::leader(&report).unwrap();
    let keep = one_vote_survivors(&report, &all, survivors, Some(&leader));
    for (i, n) in nodes.iter_mut().enumerate() {
        if !keep.contains(&i) {
            n.kill();
        }
    }
    let a = &nodes[keep[0]];
    // The first `status` right after the loss (its cached leader is one of the dead), then
    // the slowest of five more.
    let started = Instant::now();
    cli(a, &["status"]);
    let mut status_took = started.elapsed();
    for _ in 0..5 {
        let started = Instant::now();
        let out = cli(a, &["status"]);
        status_took = status_took.max(started.elapsed());
        assert!(
            matches!(out.status.code(), Some(3 | 4)),
            "{}",
            text(&out.stdout)
        );
    }
    eventually("quorum lost", Duration::from_secs(30), || {
        (a.status_json()?["condition"] == "unavailable").then_some(())
    });

    let started = Instant::now();
    let out = cli(a, &["recover", "--yes"]);
    let recover_took = started.elapsed();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let kept: Vec<&Node> = keep.iter().map(|&i| &nodes[i]).collect();
    loop {
        let all_serve = kept.iter().all(|first| {
            let mut servers = vec![dqlite_addr(first)];
            servers.extend(
                kept.iter()
                    .filter(|n| n.ip != first.ip)
                    .map(|n| dqlite_addr(n)),
            );
            count_rows(&first.backend(), &servers.join(",")) == Some(ROWS)
        });
        if all_serve {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rows not served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (status_took, recover_took, started.elapsed())
}

fn main() {
    for (size, survivors) in [(3, 1), (5, 2)] {
        let mut status = Vec::new();
        let mut recover = Vec::new();
        let mut served = Vec::new();
        for _ in 0..RUNS {
            let (s, r, v) = run(size, survivors);
            status.push(s);
            recover.push(r);
            served.push(v);
        }
        println!(
            "{size} control planes, {survivors} survivor(s): status with the quorum lost {:.2} s (target ≤ 5 s); recover --yes {:.2} s; every survivor serves all {ROWS} rows after {:.2} s (target ≤ 10 s)   [medians of {RUNS}; runs: {:?}]",
            median(status.clone()).as_secs_f64(),
            median(recover.clone()).as_secs_f64(),
            median(served.clone()).as_secs_f64(),
            served.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>()
        );
    }
}
