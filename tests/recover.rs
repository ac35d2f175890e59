//! `cluster-agent recover`: clusters that lost their quorum rebuilt from their survivors, with
//! the data written before the loss checked through the Debian `dqlite` shell.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::dqlite_shell::shell;
use common::*;

const ROWS: usize = 300;

fn backend(node: &Node) -> std::path::PathBuf {
    node.state.join("var/kubernetes/backend")
}

/// Creates table `t` and writes `ROWS` rows into it, in statements of 10 rows, through
/// `servers` (comma-separated).
fn write_rows(cert_dir: &Path, servers: &str) {
    shell(cert_dir, servers, "CREATE TABLE t (n INT)", 10).expect("CREATE TABLE");
    for chunk in 0..ROWS / 10 {
        let values: Vec<String> = (0..10).map(|i| format!("({})", chunk * 10 + i)).collect();
        let sql = format!("INSERT INTO t VALUES {}", values.join(","));
        shell(cert_dir, servers, &sql, 10).expect("INSERT");
    }
}

/// `SELECT count(*) FROM t` through `servers`, if it answers.
fn count_rows(cert_dir: &Path, servers: &str) -> Option<usize> {
    let out = shell(cert_dir, servers, "SELECT count(*) FROM t", 5)?;
    out.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

fn recover(node: &Node, args: &[&str]) -> std::process::Output {
    let mut all = vec!["recover"];
    all.extend_from_slice(args);
    cli(node, &all)
}

fn voters(node: &Node) -> Vec<String> {
    node.status_json()
        .map(|s| {
            members(&s)
                .into_iter()
                .filter(|(_, role, up)| role == "voter" && *up)
                .map(|(a, _, _)| a)
                .collect()
        })
        .unwrap_or_default()
}

/// Three control planes lose two (the leader among them): `recover` on the survivor makes it
/// the one voter, serving every row; two fresh nodes then join and the cluster has three
/// voters again, still with every row.
#[test]
fn three_lose_two_then_the_survivor_alone_serves_every_row_and_new_nodes_restore_ha() {
    let cluster = TestCluster::start(3);
    let [mut a, mut b, mut c] = cluster.into_nodes();
    eventually("three live voters", Duration::from_secs(60), || {
        (live_voters(&a.status_json()?) == 3).then_some(())
    });
    let all = [&a, &b, &c].map(dqlite_addr).join(",");
    write_rows(&backend(&a), &all);
    assert_eq!(count_rows(&backend(&a), &all), Some(ROWS));

    // Kill the leader and one more; the survivor is whoever is left.
    let leader = leader(&a.status_json().unwrap()).unwrap();
    let mut nodes = [&mut a, &mut b, &mut c];
    let leader_at = nodes.iter().position(|n| dqlite_addr(n) == leader).unwrap();
    let survivor_at = (leader_at + 1) % 3;
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != survivor_at {
            n.kill();
        }
    }
    let survivor: &Node = nodes[survivor_at];

    // Refused without confirmation (no terminal), and a dry run changes nothing.
    let before = snapshot(&survivor.state);
    let out = recover(survivor, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Data that wins"),
        "{}",
        text(&out.stdout)
    );
    let out = recover(survivor, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Members dropped"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        snapshot(&survivor.state),
        before,
        "a dry run changes nothing"
    );

    let started = std::time::Instant::now();
    let out = recover(survivor, &["--yes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        survivor.log_text()
    );
    eprintln!("recover took {:?}", started.elapsed());
    let own = dqlite_addr(survivor);
    assert_eq!(count_rows(&backend(survivor), &own), Some(ROWS));
    let report = survivor.status_json().unwrap();
    assert_eq!(report["condition"], "healthy", "{report}");
    assert_eq!(members(&report).len(), 1, "{report}");
    // A backup of the backend as it was, kept.
    let backups: Vec<String> = std::fs::read_dir(survivor.state.join("var/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backend.recover-backup-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");

    // Recovering again is refused: the quorum holds.
    let out = recover(survivor, &["--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("has its quorum"),
        "{}",
        text(&out.stderr)
    );

    // Two fresh nodes join: three voters again, every row still there.
    let d = Node::start();
    let e = Node::start();
    join(survivor, &d, &[]);
    join(survivor, &e, &[]);
    eventually(
        "three live voters after the joins",
        Duration::from_secs(60),
        || (voters(survivor).len() == 3).then_some(()),
    );
    let now = [survivor, &d, &e].map(dqlite_addr);
    for server in &now {
        assert_eq!(
            count_rows(&backend(survivor), server),
            Some(ROWS),
            "through {server}"
        );
    }
}
