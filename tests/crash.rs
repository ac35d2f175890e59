//! Crash safety of join and leave, between real daemons with embedded dqlite members: the
//! node doing the change is killed (-9) at each step of it (deterministically, through the
//! daemon's test hold points, and at random moments), or its CLI is interrupted, and after
//! a restart the node is either a member that can `leave` or an unchanged node that can
//! `join` — every time, with no journal or backup left behind.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// What a node turned out to be after a crash and a restart.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// A member of the cluster it was joining (or never left).
    Member,
    /// A single-node cluster of its own, as before the join (or after the leave).
    Alone,
}

/// A daemon whose multi-step changes stop at `point`.
fn start_holding(point: &str) -> Node {
    Node::start_with_env(&[], &[("CLUSTER_AGENT_TEST_HOLD", point)])
}

/// Restarts `node` without hold points (and without whatever the kill left of its CLI).
fn restart_plain(node: &mut Node) {
    node.env.clear();
    node.restart();
}

/// Waits until `node` has no membership change in progress.
fn wait_idle(node: &Node) {
    eventually("the operation to end", Duration::from_secs(30), || {
        let s = node.status_json()?;
        s.get("operation").is_none().then_some(())
    });
}

fn member_count(node: &Node) -> usize {
    node.status_json().map(|s| members(&s).len()).unwrap_or(0)
}

/// Where `node` stands after a restart; fails the test if it is neither a member of `cp`'s
/// cluster nor a node of its own, or if a journal or a backup is left behind.
fn outcome(cp: &Node, node: &Node) -> Outcome {
    assert!(
        !node.state.join("var/cluster-agent/journal.json").exists(),
        "the journal was settled:\n{}",
        node.log_text()
    );
    assert!(
        !node
            .state
            .join("var/kubernetes/backend.join-backup")
            .exists(),
        "no backup of the previous datastore is left"
    );
    let own = dqlite_addr(node);
    eventually(
        "a settled view of the node",
        Duration::from_secs(40),
        || {
            let s = node.status_json()?;
            if s["not_a_member"] == true {
                panic!("the node is neither: {s}\n{}", node.log_text());
            }
            let listed: Vec<String> = members(&s).into_iter().map(|(a, _, _)| a).collect();
            let on_cp: Vec<String> = members(&cp.status_json()?)
                .into_iter()
                .map(|(a, _, _)| a)
                .collect();
            match (listed.len(), on_cp.contains(&own)) {
                (1, false) if listed == [own.clone()] => Some(Outcome::Alone),
                (n, true) if n >= 2 && listed.contains(&own) => Some(Outcome::Member),
                _ => None,
            }
        },
    )
}

/// Checks the node can go on from `outcome`: a member leaves, a node of its own joins.
/// Returns with the node on its own again.
fn go_on(cp: &Node, node: &Node, outcome: Outcome) {
    match outcome {
        Outcome::Member => {
            let out = cli(node, &["leave"]);
            assert!(
                out.status.success(),
                "a member can leave: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        Outcome::Alone => {
            join(cp, node, &[]);
            let out = cli(node, &["leave"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
    }
    eventually("the node on its own", Duration::from_secs(30), || {
        (member_count(node) == 1).then_some(())
    });
}

/// Kills the joining node at `point` and checks where it stands after a restart.
fn kill_joiner_at(point: &str, expected: Outcome) {
    let cp = Node::start();
    let mut joiner = start_holding(point);
    let url = join_url(&cp);
    let background = cli_background(&joiner, &["join", &url]);
    wait_held(&joiner, point);
    joiner.kill();
    let out = wait_output(background);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("stopped during the join") && err.contains("status"),
        "the CLI does not claim the node is unchanged: {err}"
    );
    restart_plain(&mut joiner);
    let got = outcome(&cp, &joiner);
    assert_eq!(got, expected, "killed at {point}:\n{}", joiner.log_text());
    go_on(&cp, &joiner, got);
}

#[test]
fn joiner_killed_before_the_cluster_knows_it_is_unchanged() {
    for point in ["join-cp-installing", "join-cp-installed", "join-cp-adding"] {
        kill_joiner_at(point, Outcome::Alone);
    }
}

#[test]
fn joiner_killed_after_the_cluster_listed_it_is_a_member() {
    kill_joiner_at("join-cp-joined", Outcome::Member);
}

#[test]
fn joiner_killed_at_random_moments_is_always_one_or_the_other() {
    let cp = Node::start();
    let mut joiner = Node::start();
    let mut seen = Vec::new();
    // Spread over the join: before the request, while installing, while adding, after.
    for delay_ms in [30, 90, 160, 250, 400, 700] {
        let url = join_url(&cp);
        let background = cli_background(&joiner, &["join", &url]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        joiner.kill();
        let _ = wait_output(background);
        restart_plain(&mut joiner);
        let got = outcome(&cp, &joiner);
        seen.push((delay_ms, format!("{got:?}")));
        go_on(&cp, &joiner, got);
    }
    println!("kill after ms → outcome: {seen:?}");
}

#[test]
fn the_granting_node_killed_mid_join_leaves_the_joiner_unchanged() {
    let mut cp = start_holding("grant-join-granted");
    let joiner = Node::start();
    let url = join_url(&cp);
    let background = cli_background(&joiner, &["join", &url]);
    wait_held(&cp, "grant-join-granted");
    cp.kill();
    let out = wait_output(background);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    restart_plain(&mut cp);
    assert_eq!(outcome(&cp, &joiner), Outcome::Alone);
    go_on(&cp, &joiner, Outcome::Alone);
}

#[test]
fn an_interrupted_join_cli_does_not_stop_the_join() {
    let cp = Node::start();
    let joiner = start_holding("join-cp-adding");
    let url = join_url(&cp);
    let background = cli_background(&joiner, &["join", &url]);
    wait_held(&joiner, "join-cp-adding");
    let in_progress = joiner.status_json().unwrap();
    assert_eq!(
        in_progress["operation"]["operation"], "join",
        "{in_progress}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(background.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = wait_output(background);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("goes on with the join"));
    // A second change is refused while this one runs.
    let busy = cli(&joiner, &["leave"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        text(&busy.stderr).contains("in progress"),
        "{}",
        text(&busy.stderr)
    );
    release(&joiner, "join-cp-adding");
    wait_idle(&joiner);
    assert_eq!(outcome(&cp, &joiner), Outcome::Member);
}

#[test]
fn an_interrupted_leave_cli_does_not_stop_the_leave() {
    let cp = Node::start();
    let member = start_holding("leave-removing");
    join(&cp, &member, &[]);
    let background = cli_background(&member, &["leave"]);
    wait_held(&member, "leave-removing");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(background.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let out = wait_output(background);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    release(&member, "leave-removing");
    wait_idle(&member);
    assert_eq!(outcome(&cp, &member), Outcome::Alone);
    // The :25000 certificate in use is the new one (a half-done leave once kept the old).
    let health = https_client(&member.state)
        .get(format!("https://{}/health", member.bind()))
        .send()
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Kills a member at `point` of its leave and checks where it stands after a restart.
fn kill_leaver_at(point: &str, expected: Outcome) {
    let cp = Node::start();
    let mut member = start_holding(point);
    join(&cp, &member, &[]);
    let background = cli_background(&member, &["leave"]);
    wait_held(&member, point);
    member.kill();
    let out = wait_output(background);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    restart_plain(&mut member);
    let got = outcome(&cp, &member);
    assert_eq!(got, expected, "killed at {point}:\n{}", member.log_text());
    go_on(&cp, &member, got);
}

#[test]
fn a_member_killed_before_the_cluster_removed_it_is_still_a_member() {
    kill_leaver_at("leave-removing", Outcome::Member);
}

#[test]
fn a_member_killed_after_the_cluster_removed_it_is_reset() {
    kill_leaver_at("leave-resetting", Outcome::Alone);
}

#[test]
fn a_worker_killed_mid_join_or_mid_leave_comes_back_as_it_was() {
    let cp = Node::start();
    let mut worker = start_holding("join-worker-configuring");
    let url = join_url(&cp);
    let background = cli_background(&worker, &["join", &url, "--worker"]);
    wait_held(&worker, "join-worker-configuring");
    let before_kill = std::fs::read_to_string(worker.state.join("args/kubelet")).unwrap();
    worker.kill();
    let _ = wait_output(background);
    restart_plain(&mut worker);
    assert!(!worker.state.join("var/lock/clustered.lock").exists());
    assert!(!worker.state.join("var/cluster-agent/journal.json").exists());
    assert_eq!(
        std::fs::read_to_string(worker.state.join("args/kubelet")).unwrap(),
        before_kill,
        "the worker join was undone"
    );
    join(&cp, &worker, &["--worker"]);
    assert!(worker.state.join("var/lock/clustered.lock").exists());

    worker.terminate();
    worker.env = vec![("CLUSTER_AGENT_TEST_HOLD".into(), "leave-worker".into())];
    worker.restart();
    let background = cli_background(&worker, &["leave"]);
    wait_held(&worker, "leave-worker");
    worker.kill();
    let _ = wait_output(background);
    restart_plain(&mut worker);
    assert!(
        !worker.state.join("var/lock/clustered.lock").exists(),
        "the worker's leave was finished:\n{}",
        worker.log_text()
    );
    assert_eq!(member_count(&worker), 1);
    join(&cp, &worker, &["--worker"]);
}

#[test]
fn a_member_removed_by_force_says_so_then_leaves_and_joins_again() {
    let cp = Node::start();
    let member = Node::start();
    join(&cp, &member, &[]);
    let out = cli(&cp, &["remove-node", &member.ip.to_string(), "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually(
        "the member to see it is out",
        Duration::from_secs(30),
        || {
            let s = member.status_json()?;
            (s["not_a_member"] == true).then_some(())
        },
    );
    let pretty = cli(&member, &["status"]);
    assert!(
        text(&pretty.stdout).contains("not a member of its cluster any more"),
        "{}",
        text(&pretty.stdout)
    );
    let out = cli(&member, &["leave"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("no longer a member"));
    assert_eq!(outcome(&cp, &member), Outcome::Alone);
    join(&cp, &member, &[]);
}

#[test]
fn a_join_on_a_node_that_lost_quorum_is_refused_and_keeps_the_data() {
    let [a, mut b, mut c] = TestCluster::start(3).into_nodes();
    eventually("three voters", Duration::from_secs(30), || {
        (live_voters(&a.status_json()?) == 3).then_some(())
    });
    let other = Node::start();
    b.kill();
    c.kill();
    // Once the survivor has noticed: no leader answers any more.
    eventually(
        "the survivor to lose its leader",
        Duration::from_secs(30),
        || {
            let s = a.status_json()?;
            (leader(&s).is_none() || !s["error"].is_null()).then_some(())
        },
    );
    let backend = a.state.join("var/kubernetes/backend");
    let files_before: std::collections::BTreeSet<String> = std::fs::read_dir(&backend)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let started = Instant::now();
    let out = cli(&a, &["join", &join_url(&other)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("Cannot read this node's datastore membership"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!a.state.join("var/kubernetes/backend.join-backup").exists());
    let files_after: std::collections::BTreeSet<String> = std::fs::read_dir(&backend)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files_before.is_subset(&files_after),
        "the datastore is intact: {files_before:?} → {files_after:?}"
    );
}

#[test]
fn a_daemon_stopped_mid_join_ends_at_a_checkpoint_and_settles_at_start() {
    let cp = Node::start();
    let mut joiner = start_holding("join-cp-adding");
    let url = join_url(&cp);
    let background = cli_background(&joiner, &["join", &url]);
    wait_held(&joiner, "join-cp-adding");
    let (status, took) = joiner.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "the stop took {took:?}");
    let out = wait_output(background);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("stopping") || err.contains("stopped during the join"),
        "{err}"
    );
    restart_plain(&mut joiner);
    let got = outcome(&cp, &joiner);
    assert_eq!(got, Outcome::Alone, "{}", joiner.log_text());
    go_on(&cp, &joiner, got);
}

#[test]
fn no_new_change_starts_while_an_earlier_one_is_unsettled() {
    let cp = Node::start();
    let joiner = Node::start();
    let journal = joiner.state.join("var/cluster-agent/journal.json");
    std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
    std::fs::write(
        &journal,
        r#"{"change":{"operation":"join-worker","step":{"step":"configuring"}},"started":0}"#,
    )
    .unwrap();
    let out = cli(&joiner, &["join", &join_url(&cp)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Restart the cluster-agent daemon"),
        "{}",
        text(&out.stderr)
    );
    assert!(journal.exists(), "the unsettled record is kept");
}
