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
    // Leaving, the worker is a standalone node again: k8s-dqlite serves its own member.
    let out = cli(&w, &["leave"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!w.state.join("var/lock/no-k8s-dqlite").exists());
    eventually("k8s-dqlite runs again", Duration::from_secs(20), || {
        w.member_pid().map(|_| ())
    });
    assert_eq!(wait_members(&w, 1)[0].0, w.member_address());
}

/// Writes a row into `node`'s datastore through the dqlite shell: proof, later, that the
/// same data is served.
fn write_marker_row(node: &SnapNode) {
    for sql in [
        "CREATE TABLE marker (n INT)",
        "INSERT INTO marker VALUES (4242)",
    ] {
        eventually(sql, Duration::from_secs(20), || {
            common::dqlite_shell::shell(&node.backend(), &node.member_address(), sql, 10)
        });
    }
}

/// Is the row of [`write_marker_row`] served by `node`'s member?
fn serves_marker_row(node: &SnapNode) -> bool {
    common::dqlite_shell::shell(
        &node.backend(),
        &node.member_address(),
        "SELECT n FROM marker",
        10,
    )
    .is_some_and(|out| out.contains("4242"))
}

/// `node` is its old single-node cluster: the same member (`id`), alone, serving the marker
/// row, k8s-dqlite running, no journal or backup left.
fn assert_old_single_node(node: &SnapNode, id: u64) {
    assert!(
        !node.state.join("var/cluster-agent/journal.json").exists(),
        "settled:\n{}",
        node.log_text()
    );
    assert!(!node
        .state
        .join("var/kubernetes/backend.join-backup")
        .exists());
    assert!(
        node.member_pid().is_some(),
        "k8s-dqlite runs:\n{}",
        node.snapctl_log()
    );
    assert_eq!(
        node.member_info().map(|(i, _)| i),
        Some(id),
        "the same member"
    );
    let m = wait_members(node, 1);
    assert_eq!(m[0].0, node.member_address());
    assert!(serves_marker_row(node), "the old data is served");
}

/// Kills (-9) the daemon of a snap node joining a snap cluster at hold point `point` (once
/// `before_kill` returned), then restarts it. Returns the cluster's first node, the joiner
/// and its member id before.
fn kill_snap_joiner_at(
    point: &str,
    before_kill: impl FnOnce(&SnapNode, &SnapNode),
) -> (SnapNode, SnapNode, u64) {
    let a = SnapNode::start();
    let mut b = SnapNode::start_with_env(&[], &[("CLUSTER_AGENT_TEST_HOLD", point)]);
    write_marker_row(&b);
    let (id, _) = b.member_info().unwrap();
    let url = join_url(&a);
    let background = cli_background(&b, &["join", &url]);
    wait_held(&b, point);
    before_kill(&a, &b);
    b.kill();
    let out = wait_output(background);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    b.restart_plain();
    (a, b, id)
}

#[test]
fn a_joiner_killed_after_init_yaml_is_written_is_its_old_single_node_again() {
    let (a, b, id) = kill_snap_joiner_at("join-cp-installed", |_, _| {});
    assert_old_single_node(&b, id);
    assert_eq!(wait_members(&a, 1)[0].0, a.member_address());
    // And it can join now.
    join_cli(&a, &b, &[]);
    wait_members(&a, 2);
}

#[test]
fn a_joiner_killed_before_k8s_dqlite_starts_is_its_old_single_node_again() {
    let (a, b, id) = kill_snap_joiner_at("join-cp-starting", |_, _| {});
    assert_old_single_node(&b, id);
    assert_eq!(wait_members(&a, 1).len(), 1);
}

#[test]
fn a_joiner_killed_once_k8s_dqlite_started_is_a_member() {
    // k8s-dqlite runs on without the agent and joins by itself; killed once the cluster
    // lists it (before that, settling stops k8s-dqlite and undoes the join).
    let (a, b, id) = kill_snap_joiner_at("join-cp-started", |a, b| {
        eventually(
            "the cluster to list the new member",
            Duration::from_secs(30),
            || {
                let m = members(&a.status_json()?);
                m.iter()
                    .any(|(addr, _, _)| *addr == b.member_address())
                    .then_some(())
            },
        );
    });
    let m = wait_members(&a, 2);
    assert!(
        m.iter().any(|(addr, _, _)| *addr == b.member_address()),
        "{m:?}"
    );
    assert!(!b.state.join("var/cluster-agent/journal.json").exists());
    assert!(!b.state.join("var/kubernetes/backend.join-backup").exists());
    assert_ne!(b.member_info().map(|(i, _)| i), Some(id), "the new member");
    assert_eq!(wait_members(&b, 2).len(), 2);
    assert!(
        b.snapctl_log()
            .ends_with("start microk8s.daemon-kubelite\n"),
        "the API server runs again:\n{}",
        b.snapctl_log()
    );
    // A member: it can leave.
    let out = cli(&b, &["leave"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_members(&a, 1);
}

#[test]
fn a_joiner_killed_after_the_cluster_listed_it_is_a_member() {
    let (a, b, _) = kill_snap_joiner_at("join-cp-joined", |_, _| {});
    assert_eq!(snap_outcome(&a, &b), Outcome::Member);
    assert!(
        b.snapctl_log()
            .ends_with("start microk8s.daemon-kubelite\n"),
        "{}",
        b.snapctl_log()
    );
}

#[test]
fn a_join_into_an_unreachable_or_refusing_cluster_changes_nothing() {
    let mut a = SnapNode::start();
    let b = SnapNode::start();
    write_marker_row(&b);
    let (id, _) = b.member_info().unwrap();
    let before = snapshot(&b.state);
    // Refusing: a token the cluster does not know.
    let url = join_url(&a);
    let (head, token_and_fp) = url.split_once('/').unwrap();
    let fingerprint = token_and_fp.split_once('/').unwrap().1;
    let forged = format!("{head}/{}/{fingerprint}", "f".repeat(32));
    let out = cli(&b, &["join", &forged]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    // Unreachable: the cluster's agent is down.
    a.kill();
    let out = cli(&b, &["join", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Could not reach the cluster"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(snapshot(&b.state), before, "no file changed");
    assert!(!b.snapctl_log().contains("stop"), "{}", b.snapctl_log());
    assert_old_single_node(&b, id);
}

#[test]
fn a_member_the_cluster_never_lists_is_rolled_back_to_the_old_datastore() {
    let a = SnapNode::start();
    let mut b = SnapNode::start_with_env(&[], &[("CLUSTER_AGENT_TEST_HOLD", "join-cp-installed")]);
    write_marker_row(&b);
    let (id, _) = b.member_info().unwrap();
    let url = join_url(&a);
    let background = cli_background(&b, &["join", &url]);
    wait_held(&b, "join-cp-installed");
    // The cluster's datastore goes silent after it granted the join.
    a.kill_member();
    release(&b, "join-cp-installed");
    let out = wait_output(background);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("was not listed by the cluster within 60s"),
        "says what failed: {err}"
    );
    assert!(err.contains("previous single-node cluster"), "{err}");
    b.restart_plain();
    assert_old_single_node(&b, id);
}

/// Where a snap node stands after a kill and a restart.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// A member of `a`'s cluster.
    Member,
    /// A single-node cluster of its own.
    Alone,
}

/// Fails the test unless `b` is a member of `a`'s cluster or a node of its own, settled (no
/// journal, no backup) and with k8s-dqlite running.
fn snap_outcome(a: &SnapNode, b: &SnapNode) -> Outcome {
    assert!(
        !b.state.join("var/cluster-agent/journal.json").exists(),
        "settled:\n{}",
        b.log_text()
    );
    assert!(!b.state.join("var/kubernetes/backend.join-backup").exists());
    let own = b.member_address();
    eventually(
        "a settled view of the node",
        Duration::from_secs(60),
        || {
            b.member_pid()?;
            let s = b.status_json()?;
            let listed: Vec<String> = members(&s).into_iter().map(|(a, _, _)| a).collect();
            let on_a: Vec<String> = members(&a.status_json()?)
                .into_iter()
                .map(|(a, _, _)| a)
                .collect();
            match (listed.len(), on_a.contains(&own)) {
                (1, false) if listed == [own.clone()] => Some(Outcome::Alone),
                (n, true) if n >= 2 && listed.contains(&own) => Some(Outcome::Member),
                _ => None,
            }
        },
    )
}

#[test]
fn a_snap_joiner_or_leaver_killed_at_random_moments_is_always_one_or_the_other() {
    let a = SnapNode::start();
    let mut b = SnapNode::start();
    let mut seen = Vec::new();
    // Spread over the join (about 300 ms here) and over the leave that follows a join.
    for delay_ms in [20, 80, 150, 250, 400, 800] {
        let url = join_url(&a);
        let background = cli_background(&b, &["join", &url]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        b.kill();
        let _ = wait_output(background);
        b.restart();
        let joined = snap_outcome(&a, &b);
        let left = if joined == Outcome::Member {
            let background = cli_background(&b, &["leave"]);
            // The leave is shorter than the join: killed earlier into it.
            std::thread::sleep(Duration::from_millis(delay_ms / 4));
            b.kill();
            let _ = wait_output(background);
            b.restart();
            let got = snap_outcome(&a, &b);
            if got == Outcome::Member {
                let out = cli(&b, &["leave"]);
                assert!(out.status.success(), "{}", text(&out.stderr));
            }
            Some(got)
        } else {
            None
        };
        seen.push((delay_ms, joined, left));
        assert_eq!(snap_outcome(&a, &b), Outcome::Alone);
    }
    println!("kill after ms → (join, leave) outcome: {seen:?}");
}

/// Kills (-9) the daemon of a snap node leaving a snap cluster at hold point `point`, then
/// restarts it; returns where it stands.
fn kill_snap_leaver_at(point: &str) -> Outcome {
    let a = SnapNode::start();
    let mut b = SnapNode::start_with_env(&[], &[("CLUSTER_AGENT_TEST_HOLD", point)]);
    join_cli(&a, &b, &[]);
    wait_members(&a, 2);
    let background = cli_background(&b, &["leave"]);
    wait_held(&b, point);
    b.kill();
    let _ = wait_output(background);
    b.restart_plain();
    let got = snap_outcome(&a, &b);
    if got == Outcome::Member {
        let out = cli(&b, &["leave"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert_eq!(snap_outcome(&a, &b), Outcome::Alone);
    got
}

#[test]
fn a_leaver_killed_before_the_cluster_removed_it_is_still_a_member() {
    assert_eq!(kill_snap_leaver_at("leave-removing"), Outcome::Member);
}

#[test]
fn a_leaver_killed_while_resetting_is_a_fresh_single_node() {
    assert_eq!(kill_snap_leaver_at("leave-resetting"), Outcome::Alone);
}

#[test]
fn a_snap_node_joins_a_cluster_of_embedded_members_and_leaves_it() {
    let [e1, e2] = TestCluster::start(2).into_nodes();
    let s = SnapNode::start();
    join_cli(&e1, &s, &[]);
    // The embedded leader's roles manager promotes the go-dqlite-hosted member.
    eventually("three live voters", Duration::from_secs(60), || {
        (live_voters(&e1.status_json()?) == 3).then_some(())
    });
    let mut want = vec![
        (dqlite_addr(&e1), "voter".to_string()),
        (dqlite_addr(&e2), "voter".to_string()),
        (s.member_address(), "voter".to_string()),
    ];
    want.sort();
    assert_eq!(
        shell_view(&s),
        Some(want.clone()),
        "the shell, through k8s-dqlite's member"
    );
    let ours: Vec<(String, String)> = wait_members(&s, 3)
        .into_iter()
        .map(|(a, r, _)| (a, r))
        .collect();
    assert_eq!(ours, want, "status on the snap node");
    let out = cli(&s, &["leave"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = wait_members(&e2, 2);
    assert!(!m.iter().any(|(a, _, _)| *a == s.member_address()), "{m:?}");
    assert_eq!(wait_members(&s, 1)[0].0, s.member_address());
}

#[test]
fn embedded_nodes_join_a_cluster_whose_leader_k8s_dqlite_hosts() {
    let a = SnapNode::start();
    let b = Node::start();
    let c = Node::start();
    join_cli(&a, &b, &[]);
    join_cli(&a, &c, &[]);
    // Roles: go-dqlite's own adjuster on the leader (every 30 s, as k8s-dqlite runs it); the
    // embedded members' roles managers only act where they lead.
    eventually("three live voters", Duration::from_secs(90), || {
        (live_voters(&b.status_json()?) == 3).then_some(())
    });
    let mut want = vec![
        (a.member_address(), "voter".to_string()),
        (dqlite_addr(&b), "voter".to_string()),
        (dqlite_addr(&c), "voter".to_string()),
    ];
    want.sort();
    assert_eq!(
        common::dqlite_shell::shell_roles(
            &b.state.join("var/kubernetes/backend"),
            &dqlite_addr(&b)
        ),
        Some(want),
        "the shell, through an embedded member"
    );
    // An embedded member leaves the mixed cluster.
    let out = cli(&c, &["leave"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = wait_members(&a, 2);
    assert!(
        !m.iter().any(|(addr, _, _)| *addr == dqlite_addr(&c)),
        "{m:?}"
    );
}

#[test]
fn the_first_join_moves_k8s_dqlite_off_the_loopback_address() {
    // A fresh snap's k8s-dqlite serves on 127.0.0.1:19001 (the install hook's init.yaml).
    let a = SnapNode::launch_at(unique_loopback(), tempfile::tempdir().unwrap(), &[], &[]);
    a.init_member("127.0.0.1:19001");
    let b = SnapNode::start();
    join_cli(&a, &b, &[]);
    // a's member moved to the address the joiner reached it at (update.yaml, k8s-dqlite
    // restarted through snapctl), and b joined it there.
    let m = wait_members(&b, 2);
    let mut want = vec![a.member_address(), b.member_address()];
    want.sort();
    assert_eq!(
        m.iter().map(|(a, _, _)| a.clone()).collect::<Vec<_>>(),
        want
    );
    assert_eq!(
        a.member_info().map(|(_, addr)| addr),
        Some(a.member_address())
    );
    assert!(!a.backend().join("update.yaml").exists(), "consumed");
    assert!(
        a.snapctl_log()
            .contains("restart microk8s.daemon-k8s-dqlite"),
        "{}",
        a.snapctl_log()
    );
}

#[test]
fn the_roles_manager_replaces_a_lost_voter_in_a_snap_cluster() {
    // Without --manage-roles this fails: nothing promotes a replacement within 30 s.
    lost_voter_is_replaced(&["--manage-roles"]);
}

/// Four snap nodes (three voters), go-dqlite's own adjuster slowed down to an hour so only
/// ours can act in time; a voter that is not the leader dies with its machine; three live
/// voters again within 30 s.
fn lost_voter_is_replaced(daemon_flags: &[&str]) {
    let start = || SnapNode::start_full(daemon_flags, &[], &["--roles-adjustment-frequency", "1h"]);
    let nodes = [start(), start(), start(), start()];
    for joiner in &nodes[1..] {
        join_cli(&nodes[0], joiner, &[]);
    }
    let s = eventually("three live voters of four", Duration::from_secs(60), || {
        let s = nodes[0].status_json()?;
        (live_voters(&s) == 3 && members(&s).len() == 4).then_some(s)
    });
    let leader = leader(&s).unwrap();
    let victim = nodes
        .iter()
        .find(|n| {
            n.member_address() != leader
                && members(&s).contains(&(n.member_address(), "voter".to_string(), true))
        })
        .unwrap();
    victim.kill_member();
    let watcher = nodes.iter().find(|n| n.member_address() == leader).unwrap();
    eventually("three live voters again", Duration::from_secs(30), || {
        (live_voters(&watcher.status_json()?) == 3).then_some(())
    });
}

/// A launch configuration applied inside the snap: `init` writes k8s-dqlite's environment,
/// joins through the daemon (k8s-dqlite stopped and started around the join), then restarts
/// k8s-dqlite once for its changed file; the member comes back in the cluster.
#[test]
fn a_launch_configuration_joins_a_snap_node_and_restarts_k8s_dqlite() {
    let a = SnapNode::start();
    let b = SnapNode::start();
    let url = join_url(&a);
    let config = b.state.join("launch.yaml");
    std::fs::write(
        &config,
        format!("version: 0.2.0\nextraDqliteEnv:\n  LIBDQLITE_TRACE: \"0\"\njoin:\n  url: {url}\n"),
    )
    .unwrap();
    let path = b
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap();
    let state = b.state.display().to_string();
    let out = run_cli(
        &[
            "--state-dir",
            &state,
            "init",
            "-c",
            config.to_str().unwrap(),
            "--service-manager",
            "snap",
        ],
        &[("PATH", path.as_str())],
    );
    assert!(
        out.status.success(),
        "{}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        b.log_text()
    );
    assert!(
        text(&out.stdout).contains("restarted: k8s-dqlite"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(b.state.join("args/k8s-dqlite-env")).unwrap(),
        "LIBDQLITE_TRACE=0\n"
    );
    let log = b.snapctl_log();
    let lines: Vec<&str> = log.lines().collect();
    let started = lines
        .iter()
        .rposition(|l| *l == "start microk8s.daemon-k8s-dqlite")
        .unwrap();
    let restarted = lines
        .iter()
        .rposition(|l| *l == "restart microk8s.daemon-k8s-dqlite")
        .unwrap();
    assert!(
        started < restarted,
        "the restart comes after the join: {log}"
    );
    let members = wait_members(&a, 2);
    assert!(
        members
            .iter()
            .any(|(addr, _, _)| *addr == b.member_address()),
        "{members:?}"
    );
    wait_members(&b, 2);
}

/// Inside the snap: a worker-scoped token is refused for a control-plane join before
/// k8s-dqlite is touched, and a worker joins with it, its labels and taints in its kubelet
/// arguments; `token list` and `token revoke` work the same.
#[test]
fn scoped_tokens_labels_and_taints_inside_the_snap() {
    let a = SnapNode::start();
    let b = SnapNode::start();
    let out = cli(
        &a,
        &["add-node", "--format", "token-check", "--role", "worker"],
    );
    let token_check = text(&out.stdout).trim().to_string();
    let url = format!("{}/{token_check}", a.bind());
    let calls_before = b.snapctl_log();
    let out = cli(&b, &["join", &url]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("admits worker nodes only"));
    assert_eq!(b.snapctl_log(), calls_before, "k8s-dqlite untouched");
    let out = cli(
        &b,
        &[
            "join",
            &url,
            "--worker",
            "--node-labels",
            "zone=b",
            "--register-with-taints",
            "spot:NoSchedule",
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let kubelet = std::fs::read_to_string(b.state.join("args/kubelet")).unwrap();
    assert!(
        kubelet.contains(",zone=b\"")
            && kubelet.contains("--register-with-taints=\"spot:NoSchedule\""),
        "{kubelet}"
    );
    // The single-use token is spent and its two certificate requests were used.
    let list = cli(&a, &["token", "list", "--format", "json"]);
    let tokens: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(tokens, serde_json::json!([]), "{tokens}");
    let out = cli(&a, &["add-node", "--format", "token", "--persistent"]);
    let persistent = text(&out.stdout).trim().to_string();
    assert!(cli(&a, &["token", "revoke", &persistent]).status.success());
    let list = cli(&a, &["token", "list", "--format", "json"]);
    assert_eq!(text(&list.stdout).trim(), "[]");
}

/// Inside the snap, three control planes lose two (the leader among them, daemons and
/// k8s-dqlite both): `recover` on the survivor stops its k8s-dqlite, rebuilds the member's
/// log on k8s-dqlite's own directory, starts it again as the one voter with every row, and
/// a new snap node then joins it and serves the same rows.
#[test]
fn a_snap_cluster_that_lost_two_of_three_is_recovered_with_its_rows() {
    let mut nodes = three_snap_nodes();
    let all: Vec<String> = nodes.iter().map(|n| n.member_address()).collect();
    let servers = all.join(",");
    common::dqlite_shell::write_rows(&nodes[0].backend(), &servers, 200);
    let leader = leader(&nodes[0].status_json().unwrap()).unwrap();
    let leader_at = all.iter().position(|a| *a == leader).unwrap();
    let survivor_at = (leader_at + 1) % 3;
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != survivor_at {
            n.kill();
            n.kill_member();
        }
    }
    let survivor = &nodes[survivor_at];
    recover_ok(survivor);
    let count =
        |node: &SnapNode, through: &str| common::dqlite_shell::count_rows(&node.backend(), through);
    assert_eq!(count(survivor, &survivor.member_address()), Some(200));
    let calls = survivor.snapctl_log();
    assert!(
        calls.contains("stop") && calls.contains("start"),
        "k8s-dqlite stopped and started through snapctl: {calls}"
    );
    let m = wait_members(survivor, 1);
    assert_eq!(m[0].1, "voter", "{m:?}");

    let fresh = SnapNode::start();
    join_cli(survivor, &fresh, &[]);
    wait_members(survivor, 2);
    let both = format!("{},{}", fresh.member_address(), survivor.member_address());
    assert_eq!(count(&fresh, &both), Some(200));
}

/// Inside the snap, the only survivor's daemon killed -9 in the middle of `recover` (the
/// member's log already rewritten, k8s-dqlite stopped): started again, `recover` finishes
/// the job and k8s-dqlite serves every row as the one voter.
#[test]
fn a_snap_survivor_killed_mid_recover_finishes_when_run_again() {
    let mut a = SnapNode::start_with_env(&[], &[("CLUSTER_AGENT_TEST_HOLD", "recover-copying")]);
    let (b, c) = (SnapNode::start(), SnapNode::start());
    join_cli(&a, &b, &[]);
    join_cli(&a, &c, &[]);
    eventually("three live voters", Duration::from_secs(60), || {
        (live_voters(&a.status_json()?) == 3).then_some(())
    });
    let servers = [&a, &b, &c].map(|n| n.member_address()).join(",");
    for sql in ["CREATE TABLE t (n INT)", "INSERT INTO t VALUES (1),(2),(3)"] {
        common::dqlite_shell::shell(&a.backend(), &servers, sql, 10).expect(sql);
    }
    for n in [&b, &c] {
        n.kill_member();
    }
    drop((b, c));
    let running = cli_background(&a, &["recover", "--yes"]);
    wait_held(&a, "recover-copying");
    a.kill();
    assert_ne!(wait_output(running).status.code(), Some(0));
    a.restart_plain();
    recover_ok(&a);
    let rows = common::dqlite_shell::shell(
        &a.backend(),
        &a.member_address(),
        "SELECT count(*) FROM t",
        5,
    );
    assert!(
        rows.is_some_and(|r| r.contains('3')),
        "rows after the recovery"
    );
    let m = wait_members(&a, 1);
    assert_eq!(m[0].1, "voter", "{m:?}");
}

/// Inside the snap, five control planes: `recover` is refused while the quorum holds; then
/// three are lost (daemons and k8s-dqlite) with at most one voter among the survivors, and
/// `recover` on one survivor leaves both in one cluster serving every row through either.
#[test]
fn a_snap_cluster_that_lost_three_of_five_keeps_both_survivors_with_their_rows() {
    let mut nodes: Vec<SnapNode> = (0..5).map(|_| SnapNode::start()).collect();
    for joiner in &nodes[1..] {
        join_cli(&nodes[0], joiner, &[]);
    }
    eventually("three live voters", Duration::from_secs(90), || {
        (live_voters(&nodes[0].status_json()?) == 3).then_some(())
    });
    let servers: Vec<String> = nodes.iter().map(|n| n.member_address()).collect();
    common::dqlite_shell::write_rows(&nodes[0].backend(), &servers.join(","), 100);
    exited_saying(&cli(&nodes[0], &["recover", "--yes"]), 1, "has its quorum");

    // Survivors: node 0 and a node that, with it, holds at most one vote.
    let report = nodes[0].status_json().unwrap();
    let keep = one_vote_survivors(&report, &servers, 2, None);
    assert_eq!(keep[0], 0);
    nodes.swap(1, keep[1]);
    for n in nodes[2..].iter_mut() {
        n.kill();
        n.kill_member();
    }
    recover_ok(&nodes[0]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let m = wait_members(a, 2);
    assert_eq!(m.len(), 2, "{m:?}");
    for (first, other) in [(a, b), (b, a)] {
        let through = format!("{},{}", first.member_address(), other.member_address());
        let rows = eventually("the rows", Duration::from_secs(20), || {
            common::dqlite_shell::count_rows(&first.backend(), &through)
        });
        assert_eq!(rows, 100, "asked through {} first", first.member_address());
    }
}
