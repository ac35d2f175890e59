//! `cluster-agent recover`: clusters that lost their quorum rebuilt from their survivors, with
//! the data written before the loss checked through the Debian `dqlite` shell.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::time::Duration;

use common::dqlite_shell::{count_rows, write_rows};
use common::*;

const ROWS: usize = 300;

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
    write_rows(&a.backend(), &all, ROWS);
    assert_eq!(count_rows(&a.backend(), &all), Some(ROWS));

    let (a_ip, b_ip, c_ip) = (a.ip, b.ip, c.ip);
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

    // status names the way out.
    let out = cli(survivor, &["status"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stdout).contains("run `cluster-agent recover`"),
        "{}",
        text(&out.stdout)
    );

    // Refused without confirmation (no terminal), and a dry run changes nothing.
    let before = snapshot(&survivor.state);
    let out = recover(survivor, &[]);
    exited_saying(&out, 1, "Data that wins");
    let out = recover(survivor, &["--dry-run"]);
    exited_saying(&out, 0, "Members dropped");
    assert_eq!(
        snapshot(&survivor.state),
        before,
        "a dry run changes nothing"
    );

    // A stand-in kube-apiserver on the survivor knows the lost nodes as Nodes.
    let lost: Vec<String> = [&a_ip, &b_ip, &c_ip]
        .into_iter()
        .filter(|ip| **ip != survivor.ip)
        .map(|ip| ip.to_string())
        .collect();
    let deleted = fake_kubernetes(survivor, &lost);

    let started = std::time::Instant::now();
    let out = recover_ok(survivor);
    eprintln!("recover took {:?}", started.elapsed());
    for line in survivor
        .log_text()
        .lines()
        .filter(|l| l.contains("elapsed_ms") || l.contains("recovering"))
    {
        eprintln!("{line}");
    }
    let mut gone = deleted.lock().unwrap().clone();
    gone.sort();
    assert_eq!(gone, ["node-0", "node-1"], "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("Deleted the Kubernetes node node-0"),
        "{}",
        text(&out.stdout)
    );
    let own = dqlite_addr(survivor);
    assert_eq!(count_rows(&survivor.backend(), &own), Some(ROWS));
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
    exited_saying(&out, 1, "has its quorum");

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
            count_rows(&survivor.backend(), server),
            Some(ROWS),
            "through {server}"
        );
    }
}

/// `n` control planes, the first one started with `env`; returns once every join succeeded
/// and `n.min(3)` voters answer.
fn cluster_with(n: usize, env: &[(&str, &str)]) -> Vec<Node> {
    let mut nodes = vec![Node::start_with_env(&[], env)];
    for _ in 1..n {
        let joiner = Node::start();
        join(&nodes[0], &joiner, &[]);
        nodes.push(joiner);
    }
    eventually("the voters", Duration::from_secs(90), || {
        (live_voters(&nodes[0].status_json()?) == n.min(3)).then_some(())
    });
    nodes
}

/// Puts at index 1 a node that, with node 0, holds at most one vote: killing every other
/// node then loses the quorum whoever the voters are.
fn survivors_first(nodes: &mut [Node]) {
    let addresses: Vec<String> = nodes.iter().map(dqlite_addr).collect();
    let report = nodes[0].status_json().unwrap();
    let keep = one_vote_survivors(&report, &addresses, 2, None);
    assert_eq!(keep[0], 0);
    nodes.swap(1, keep[1]);
}

/// `a` and `b` are the two members of one healthy cluster, and it serves every row whichever
/// of them the shell asks first.
fn assert_both_serve_every_row(a: &Node, b: &Node) {
    eventually(
        "both survivors listed and answering",
        Duration::from_secs(30),
        || {
            let s = a.status_json()?;
            (members(&s).len() == 2 && s["condition"] == "healthy").then_some(())
        },
    );
    for (first, other) in [(a, b), (b, a)] {
        let servers = all_servers(&[first, other]);
        let rows = eventually("the rows", Duration::from_secs(20), || {
            count_rows(&first.backend(), &servers)
        });
        assert_eq!(rows, ROWS, "asked through {} first", dqlite_addr(first));
    }
}

fn all_servers(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| dqlite_addr(n))
        .collect::<Vec<_>>()
        .join(",")
}

/// Five control planes lose three: bad survivors are refused and change nothing, a second
/// `recover` while one runs is refused, and the recovery leaves both survivors in one
/// cluster serving every row, asked through either of them first.
#[test]
fn five_lose_three_then_both_survivors_serve_every_row() {
    let mut nodes = cluster_with(5, &[("CLUSTER_AGENT_TEST_HOLD", "recover-prepared")]);
    survivors_first(&mut nodes);
    let refs: Vec<&Node> = nodes.iter().collect();
    let everyone = all_servers(&refs);
    write_rows(&nodes[0].backend(), &everyone, ROWS);
    let lost: Vec<String> = nodes[2..].iter().map(|n| n.ip.to_string()).collect();
    for n in nodes[2..].iter_mut() {
        n.kill();
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    eventually("quorum lost seen on a", Duration::from_secs(30), || {
        (a.status_json()?["condition"] == "unavailable").then_some(())
    });

    // Bad input: a survivor that is not a member, one that does not answer.
    let before = (snapshot(&a.state), snapshot(&b.state));
    let out = recover(a, &["--yes", "--survivor", "127.250.250.250"]);
    exited_saying(&out, 1, "is not a member");
    let out = recover(a, &["--yes", "--survivor", &lost[0]]);
    exited_saying(&out, 1, "does not answer");
    assert!(
        before == (snapshot(&a.state), snapshot(&b.state)),
        "a refused recover changes nothing"
    );

    // One run at a time: a holds with every survivor prepared; b's own recover is refused.
    let running = cli_background(a, &["recover", "--yes"]);
    wait_held(a, "recover-prepared");
    let out = recover(b, &["--yes"]);
    exited_saying(&out, 1, "Another recovery holds");
    release(a, "recover-prepared");
    succeeded(wait_output(running), a);

    let ab = [a, b];
    assert_both_serve_every_row(a, b);
    // Both keep their backups; the lost members are out of the configuration.
    for n in ab {
        let kept = std::fs::read_dir(n.state.join("var/kubernetes"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("backend.recover-backup-")
            })
            .count();
        assert_eq!(kept, 1, "{}", n.ip);
    }
    let listed = common::dqlite_shell::shell_roles(&a.backend(), &all_servers(&[a, b])).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
}

/// A survivor killed -9 in the middle of `recover` (every survivor prepared, nothing changed
/// yet): the run ends incomplete (exit 5); with the survivor back, `recover` again finishes
/// the job, and every row is there through either survivor.
#[test]
fn a_survivor_killed_during_recover_then_recover_again_ends_with_every_row() {
    let mut nodes = cluster_with(5, &[("CLUSTER_AGENT_TEST_HOLD", "recover-prepared")]);
    survivors_first(&mut nodes);
    let refs: Vec<&Node> = nodes.iter().collect();
    write_rows(&nodes[0].backend(), &all_servers(&refs), ROWS);
    for n in nodes[2..].iter_mut() {
        n.kill();
    }
    eventually("quorum lost seen on a", Duration::from_secs(30), || {
        (nodes[0].status_json()?["condition"] == "unavailable").then_some(())
    });
    let running = cli_background(&nodes[0], &["recover", "--yes"]);
    wait_held(&nodes[0], "recover-prepared");
    nodes[1].kill();
    release(&nodes[0], "recover-prepared");
    let out = wait_output(running);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("Run `cluster-agent recover` again"),
        "{}",
        text(&out.stderr)
    );

    nodes[1].restart();
    // (node 0 still holds at every run's "prepared" point.)
    let child = cli_background(&nodes[0], &["recover", "--yes"]);
    wait_held(&nodes[0], "recover-prepared");
    release(&nodes[0], "recover-prepared");
    succeeded(wait_output(child), &nodes[0]);
    let (a, b) = (&nodes[0], &nodes[1]);
    assert_both_serve_every_row(a, b);
    // No run is left recorded on either survivor.
    for n in [a, b] {
        assert!(
            !n.state.join("var/cluster-agent/recovery.json").exists(),
            "{}",
            n.ip
        );
    }
}

/// The coordinator itself killed -9 after it rewrote the winner's log (its own) and before
/// the copy: started again, it serves; `recover` again finishes the run (same run, no second
/// backup of the same data) and every row is there.
#[test]
fn the_coordinator_killed_mid_recover_finishes_the_job_when_run_again() {
    let mut nodes = cluster_with(3, &[("CLUSTER_AGENT_TEST_HOLD", "recover-copying")]);
    let refs: Vec<&Node> = nodes.iter().collect();
    write_rows(&nodes[0].backend(), &all_servers(&refs), ROWS);
    nodes[1].kill();
    nodes[2].kill();
    let a = &mut nodes[0];
    let running = cli_background(a, &["recover", "--yes"]);
    wait_held(a, "recover-copying");
    a.kill();
    let out = wait_output(running);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let record = a.state.join("var/cluster-agent/recovery.json");
    assert!(record.exists(), "the cut run is recorded");
    a.env.retain(|(k, _)| k != "CLUSTER_AGENT_TEST_HOLD");
    a.restart();
    let out = recover_ok(a);
    assert!(
        text(&out.stdout).contains("did not finish"),
        "{}",
        text(&out.stdout)
    );
    assert!(!record.exists());
    assert_eq!(count_rows(&a.backend(), &dqlite_addr(a)), Some(ROWS));
    let backups: Vec<_> = std::fs::read_dir(a.state.join("var/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("backend.recover-backup-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    // The backup is the member's data as it was: its identity and its raft log.
    assert_eq!(
        std::fs::read(backups[0].join("info.yaml")).unwrap(),
        std::fs::read(a.backend().join("info.yaml")).unwrap()
    );
    assert!(backups[0].join("metadata1").exists() || backups[0].join("metadata2").exists());
}

/// `progress` (where a member's log ends, for the roles driver) answers only calls signed
/// with the cluster's key, and follows the log: after more writes every member's index is
/// higher and, once writes stop, the same on every member.
#[test]
fn progress_is_signed_and_follows_the_log() {
    let nodes = cluster_with(3, &[]);
    let refs: Vec<&Node> = nodes.iter().collect();
    let servers = all_servers(&refs);
    let a = &nodes[0];
    let client = https_client(&a.state);
    let url = |n: &Node| format!("https://{}/cluster/api/v2.0/recover/progress", n.bind());
    let path = "/cluster/api/v2.0/recover/progress";
    let key = std::fs::read(a.backend().join("cluster.key")).unwrap();
    let index_of = |n: &Node| -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let proof = cluster_agent::util::mac::request_proof(&key, now, "POST", path, b"{}");
        let resp = client
            .post(url(n))
            .header("x-cluster-agent-recovery", proof)
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().unwrap();
        assert_eq!(v["address"], dqlite_addr(n));
        // (A position read a moment ago is answered again for up to a second.)
        v["last_entry"]["index"].as_u64()
    };
    // Unsigned, or signed with another key: refused.
    let resp = client.post(url(a)).body("{}").send().unwrap();
    assert_eq!(resp.status(), 401);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let forged = cluster_agent::util::mac::request_proof(b"not the key", now, "POST", path, b"{}");
    let resp = client
        .post(url(a))
        .header("x-cluster-agent-recovery", forged)
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);

    let before: Vec<u64> = eventually("every member's position", Duration::from_secs(10), || {
        refs.iter()
            .map(|n| index_of(n))
            .collect::<Option<Vec<u64>>>()
    });
    write_rows(&a.backend(), &servers, ROWS);
    eventually(
        "every member at the same index",
        Duration::from_secs(20),
        || {
            let now: Vec<u64> = refs.iter().map(|n| index_of(n)).collect::<Option<_>>()?;
            let moved = now[0] >= before[0] + (ROWS / 10) as u64;
            (moved && now.iter().all(|&i| i == now[0])).then_some(now)
        },
    )
    .iter()
    .zip(&before)
    .for_each(|(after, before)| {
        assert!(
            after >= &(before + (ROWS / 10) as u64),
            "{before} -> {after}"
        );
    });
    // `status` shows each member's position, and a cluster keeping up is healthy.
    let report = eventually(
        "status with every log position",
        Duration::from_secs(10),
        || {
            let s = a.status_json()?;
            let all = s["members"]
                .as_array()?
                .iter()
                .all(|m| m["log_index"].is_u64());
            all.then_some(s)
        },
    );
    assert_eq!(report["condition"], "healthy", "{report}");
}
