//! Inside the MicroK8s snap: k8s-dqlite hosts each node's member (here the go-dqlite fixture
//! that plays it, see `common::k8s_dqlite`), the daemon runs with `--datastore external
//! --service-manager snap`, and every command drives k8s-dqlite through `snapctl`.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::time::Duration;

use common::k8s_dqlite::SnapNode;
use common::*;

#[test]
fn a_snap_node_reports_the_member_k8s_dqlite_hosts() {
    let node = SnapNode::start();
    let s = eventually("status with the member", Duration::from_secs(30), || {
        let s = node.status_json()?;
        (!members(&s).is_empty()).then_some(s)
    });
    assert_eq!(
        members(&s),
        vec![(node.member_address(), "voter".to_string(), true)],
        "{s}"
    );
}

/// The members `node`'s status lists, once it lists `n` of them (all reachable).
fn wait_members(node: &Node, n: usize) -> Vec<(String, String, bool)> {
    eventually(
        &format!("{n} reachable members"),
        Duration::from_secs(60),
        || {
            let m = members(&node.status_json()?);
            (m.len() == n && m.iter().all(|(_, _, up)| *up)).then_some(m)
        },
    )
}

/// The Debian `dqlite` shell's `(address, role)` list, asking `node`'s member.
fn shell_view(node: &SnapNode) -> Option<Vec<(String, String)>> {
    common::dqlite_shell::shell_roles(&node.backend(), &node.member_address())
}

/// `join` on `joiner` with a fresh connection string from `cp`; fails the test unless it
/// succeeded. Returns its standard output.
fn join_cli(cp: &Node, joiner: &Node, extra: &[&str]) -> String {
    let url = join_url(cp);
    let mut args = vec!["join", url.as_str()];
    args.extend_from_slice(extra);
    let out = cli(joiner, &args);
    assert!(
        out.status.success(),
        "join failed: {}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        joiner.log_text()
    );
    text(&out.stdout)
}

/// Three snap control planes, b and c joined to a with the CLI; returns once a lists three
/// live voters.
fn three_snap_nodes() -> [SnapNode; 3] {
    let nodes = [SnapNode::start(), SnapNode::start(), SnapNode::start()];
    join_cli(&nodes[0], &nodes[1], &[]);
    join_cli(&nodes[0], &nodes[2], &[]);
    eventually("three live voters", Duration::from_secs(60), || {
        let s = nodes[0].status_json()?;
        (live_voters(&s) == 3).then_some(())
    });
    nodes
}

#[test]
fn three_snap_control_planes_form_a_cluster_and_one_leaves() {
    let [a, b, c] = three_snap_nodes();
    let want: Vec<(String, String)> = {
        let mut v: Vec<_> = [&a, &b, &c]
            .iter()
            .map(|n| (n.member_address(), "voter".to_string()))
            .collect();
        v.sort();
        v
    };
    // Every node's status and the independent shell agree.
    for node in [&a, &b, &c] {
        let m = wait_members(node, 3);
        let ours: Vec<(String, String)> = m.into_iter().map(|(a, r, _)| (a, r)).collect();
        assert_eq!(ours, want, "status on {}", node.ip);
    }
    assert_eq!(shell_view(&b), Some(want.clone()));
    // The joiners drove k8s-dqlite through snapctl, the API server around it.
    let log = c.snapctl_log();
    assert!(
        log.contains("stop microk8s.daemon-kubelite\nstop microk8s.daemon-k8s-dqlite\nstart microk8s.daemon-k8s-dqlite\nstart microk8s.daemon-kubelite"),
        "{log}"
    );
    // The joined node adopted the cluster's CA and dqlite certificate.
    for f in ["certs/ca.crt", "var/kubernetes/backend/cluster.crt"] {
        assert_eq!(
            std::fs::read(a.state.join(f)).unwrap(),
            std::fs::read(c.state.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(
        !c.backend().join("init.yaml").exists(),
        "k8s-dqlite consumed init.yaml"
    );

    // c leaves: the others list two members, c is a fresh single node at the same address.
    let (old_id, _) = c.member_info().unwrap();
    let out = cli(&c, &["leave"]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        c.log_text()
    );
    let m = wait_members(&a, 2);
    assert!(
        !m.iter().any(|(addr, _, _)| *addr == c.member_address()),
        "{m:?}"
    );
    let alone = wait_members(&c, 1);
    assert_eq!(alone[0].0, c.member_address());
    assert_eq!(alone[0].1, "voter");
    let (new_id, _) = c.member_info().unwrap();
    assert_ne!(new_id, old_id, "a fresh member");
    assert_ne!(
        std::fs::read(a.state.join("certs/ca.crt")).unwrap(),
        std::fs::read(c.state.join("certs/ca.crt")).unwrap(),
        "a new CA"
    );
    assert_eq!(
        shell_view(&c),
        Some(vec![(c.member_address(), "voter".to_string())])
    );
    // It can join again.
    join_cli(&a, &c, &[]);
    wait_members(&a, 3);
}

#[test]
fn the_only_voter_cannot_leave_and_a_lone_node_is_not_clustered() {
    let a = SnapNode::start();
    let out = cli(&a, &["leave"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not acting as a node in a cluster"),
        "{}",
        text(&out.stderr)
    );
    // With one voter and a spare the voter holds the only vote.
    let b = SnapNode::start();
    join_cli(&a, &b, &[]);
    let m = wait_members(&a, 2);
    let voter = m.iter().find(|(_, r, _)| r == "voter").unwrap().0.clone();
    let only = if voter == a.member_address() { &a } else { &b };
    let out = cli(only, &["leave"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("holds the only copy"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(wait_members(&a, 2).len(), 2, "nothing changed");
}

#[test]
fn a_killed_snap_node_is_removed_by_force_and_its_rebuild_rejoins_at_the_same_address() {
    let [a, b, mut c] = three_snap_nodes();
    let ip = c.ip;
    c.kill();
    c.kill_member();
    let out = cli(&a, &["remove-node", &ip.to_string()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "needs --force: {}",
        text(&out.stderr)
    );
    let out = cli(&a, &["remove-node", &ip.to_string(), "--force"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let m = wait_members(&b, 2);
    assert!(
        !m.iter()
            .any(|(addr, _, _)| addr.starts_with(&format!("{ip}:"))),
        "{m:?}"
    );
    drop(c);

    // The machine is rebuilt with the same address and joins again.
    let rebuilt = SnapNode::launch_at(ip, tempfile::tempdir().unwrap(), &[], &[]);
    rebuilt.init_member(&rebuilt.member_address());
    join_cli(&a, &rebuilt, &[]);
    let m = wait_members(&a, 3);
    assert!(
        m.iter()
            .any(|(addr, _, _)| *addr == rebuilt.member_address()),
        "{m:?}"
    );
    assert_eq!(shell_view(&rebuilt).map(|v| v.len()), Some(3));
}

#[test]
fn a_worker_joins_a_snap_cluster() {
    let a = SnapNode::start();
    let w = SnapNode::start();
    join_cli(&a, &w, &["--worker"]);
    assert!(w.state.join("var/lock/clustered.lock").exists());
    assert!(w.state.join("var/lock/no-k8s-dqlite").exists());
    // The snap's k8s-dqlite does not run on a worker; the cluster has one member still.
    eventually(
        "k8s-dqlite stopped on the worker",
        Duration::from_secs(20),
        || w.member_pid().is_none().then_some(()),
    );
    assert_eq!(wait_members(&a, 1)[0].0, a.member_address());
    let log = w.snapctl_log();
    assert!(log.contains("restart microk8s.daemon-k8s-dqlite"), "{log}");
}
