//! Clusters of real daemons with embedded dqlite members on 127.x.y.z addresses: formation,
//! status on every node (cross-checked with the Debian `dqlite` shell), liveness, leave,
//! remove-node, rejoin, and the roles manager over failure domains.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn status(node: &Node) -> Option<Value> {
    node.status_json()
}

/// The Debian `dqlite` shell's view: `(address, role)` sorted.
fn shell_cluster(node: &Node) -> Option<Vec<(String, String)>> {
    common::dqlite_shell::shell_roles(
        &node.state.join("var/kubernetes/backend"),
        &dqlite_addr(node),
    )
}

fn wait_live_voters(node: &Node, n: usize, what: &str) -> Value {
    eventually(what, Duration::from_secs(30), || {
        let s = status(node)?;
        (live_voters(&s) == n).then_some(s)
    })
}

#[test]
fn three_control_planes_and_a_worker() {
    let [n1, n2] = TestCluster::start(2).into_nodes();
    let n3 = Node::start();
    // n3 ships Calico: joining pins its own copy to the node it contacted (not applied).
    let cni = n3.state.join("args/cni-network/cni.yaml");
    std::fs::create_dir_all(cni.parent().unwrap()).unwrap();
    let first_found = "- name: IP_AUTODETECTION_METHOD\n  value: \"first-found\"\n- name: IP6_AUTODETECTION_METHOD\n  value: \"first-found\"\n";
    std::fs::write(&cni, first_found).unwrap();
    join(&n1, &n3, &[]);
    assert_eq!(
        std::fs::read_to_string(&cni).unwrap(),
        first_found.replace("first-found", &format!("can-reach={}", n1.ip))
    );
    let s1 = wait_live_voters(&n1, 3, "three voters");
    let expected: Vec<(String, String, bool)> = {
        let mut v: Vec<_> = [&n1, &n2, &n3]
            .iter()
            .map(|n| (dqlite_addr(n), "voter".to_string(), true))
            .collect();
        v.sort();
        v
    };
    assert_eq!(members(&s1), expected);
    // Every node agrees, and so does the independent shell.
    for n in [&n2, &n3] {
        let s = eventually("agreeing status", Duration::from_secs(10), || {
            let s = status(n)?;
            (members(&s) == expected).then_some(s)
        });
        assert_eq!(
            s["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["leader"] == true)
                .count(),
            1
        );
    }
    let shell: Vec<(String, String)> = expected
        .iter()
        .map(|(a, r, _)| (a.clone(), r.clone()))
        .collect();
    assert_eq!(shell_cluster(&n2), Some(shell));
    let pretty = text(&cli(&n3, &["status"]).stdout);
    assert!(pretty.starts_with("high-availability: yes\n"), "{pretty}");

    // A worker lists every control plane for its apiserver-proxy.
    let w = Node::start();
    join(&n2, &w, &["--worker"]);
    let provider: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(w.state.join("args/traefik/provider.yaml")).unwrap(),
    )
    .unwrap();
    let servers: BTreeSet<String> = provider["tcp"]["services"]["kube-apiserver"]["loadBalancer"]
        ["servers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = [&n1, &n2, &n3]
        .iter()
        .map(|n| format!("{}:16443", n.ip))
        .collect();
    assert_eq!(servers, want);
    // The worker is not a datastore member.
    assert_eq!(members(&status(&n1).unwrap()).len(), 3);
}

#[test]
fn a_killed_member_shows_unreachable_and_the_others_elect_a_leader() {
    let [mut n1, n2, n3] = TestCluster::start(3).into_nodes();
    wait_live_voters(&n1, 3, "three voters");
    // kill -9 the leader (n1 bootstrapped the cluster and leads it).
    n1.kill();
    let s = eventually(
        "a new leader that reports n1 unreachable",
        Duration::from_secs(30),
        || {
            let s = status(&n2)?;
            let leader = s["members"]
                .as_array()?
                .iter()
                .find(|m| m["leader"] == true)?
                .clone();
            let n1_row = members(&s)
                .into_iter()
                .find(|(a, _, _)| *a == dqlite_addr(&n1))?;
            (!n1_row.2 && leader["address"] != dqlite_addr(&n1)).then_some(s)
        },
    );
    let pretty = text(&cli(&n3, &["status"]).stdout);
    assert!(
        pretty
            .lines()
            .any(|l| l.contains(&dqlite_addr(&n1)) && l.trim_end().ends_with("NO")),
        "{pretty}\n{s}"
    );

    // Two of three voters left. n2 leaving must not stop the cluster: the dead voter is
    // demoted before n2 steps down, so n3 carries on as the only voter, with a leader.
    let out = cli(&n2, &["leave"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let s = eventually(
        "n3 leads a working cluster with n1 no longer voting",
        Duration::from_secs(30),
        || {
            let s = status(&n3)?;
            let rows = members(&s);
            let n1_votes = rows
                .iter()
                .any(|(a, r, _)| *a == dqlite_addr(&n1) && r == "voter");
            let n2_present = rows.iter().any(|(a, _, _)| *a == dqlite_addr(&n2));
            (live_voters(&s) == 1 && !n1_votes && !n2_present).then_some(s)
        },
    );
    assert!(
        members(&s).contains(&(dqlite_addr(&n3), "voter".to_string(), true)),
        "{s}"
    );
}

#[test]
fn leave_remove_node_and_rejoin() {
    let [n1, n2, n3] = TestCluster::start(3).into_nodes();
    wait_live_voters(&n1, 3, "three voters");

    // leave: n3 departs, the other two keep a working cluster.
    let out = cli(&n3, &["leave"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = eventually("n3 gone", Duration::from_secs(30), || {
        let s = status(&n1)?;
        (members(&s).len() == 2 && members(&s).iter().all(|(_, _, ok)| *ok)).then_some(s)
    });
    assert!(members(&s).iter().all(|(a, _, _)| *a != dqlite_addr(&n3)));
    // n3 is a fresh single-node cluster with new certificates.
    let s3 = status(&n3).unwrap();
    assert_eq!(members(&s3), vec![(dqlite_addr(&n3), "voter".into(), true)]);
    let ca1 = std::fs::read(n1.state.join("certs/ca.crt")).unwrap();
    assert_ne!(ca1, std::fs::read(n3.state.join("certs/ca.crt")).unwrap());
    // It joins again with a new token.
    join(&n2, &n3, &[]);
    wait_live_voters(&n1, 3, "three voters again");

    // remove-node refuses a live member, removes a killed one with --force.
    let out = cli(&n1, &["remove-node", &n3.ip.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("Removal failed"));
    let mut n3 = n3;
    n3.kill();
    let out = cli(&n1, &["remove-node", &n3.ip.to_string(), "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = eventually("two healthy members", Duration::from_secs(30), || {
        let s = status(&n2)?;
        (members(&s).len() == 2 && members(&s).iter().all(|(_, _, ok)| *ok)).then_some(s)
    });
    assert_eq!(s["error"], Value::Null);

    // The rebuilt node (same IP, new state) rejoins: no "already known to dqlite".
    let rebuilt = {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node::start_at(n3.ip, dir);
        node.wait_healthy();
        node
    };
    join(&n1, &rebuilt, &[]);
    wait_live_voters(&n2, 3, "three voters with the rebuilt node");
}

#[test]
fn voters_spread_over_failure_domains_and_fail_over() {
    let domains = ["1", "1", "2", "2", "3"];
    let nodes = TestCluster::start_with(&domains.map(|d| ["--failure-domain", d])).nodes;
    let voter_domains = |s: &Value| -> BTreeSet<u64> {
        s["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "voter" && m["reachable"] == true)
            .filter_map(|m| m["failure_domain"].as_u64())
            .collect()
    };
    eventually("voters in three domains", Duration::from_secs(30), || {
        let s = status(&nodes[0])?;
        (live_voters(&s) == 3 && voter_domains(&s).len() == 3 && members(&s).len() == 5)
            .then_some(())
    });

    // kill -9 a non-leader voter: three live voters again, the dead one demoted.
    let s = status(&nodes[0]).unwrap();
    let victim = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "voter" && m["leader"] == false)
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let mut nodes = nodes;
    let idx = nodes.iter().position(|n| dqlite_addr(n) == victim).unwrap();
    let mut dead = nodes.remove(idx);
    dead.kill();
    eventually(
        "failover to three live voters",
        Duration::from_secs(30),
        || {
            let s = status(&nodes[0])?;
            let dead_row = members(&s).into_iter().find(|(a, _, _)| *a == victim)?;
            (live_voters(&s) == 3 && dead_row.1 == "spare").then_some(())
        },
    );
    // The independent shell reads the cluster throughout.
    assert!(shell_cluster(&nodes[0]).is_some());

    // Graceful stop of a voter: the stop itself changes no roles (a stop is not a leave);
    // the roles manager on the leader replaces the voter once it is gone.
    let s = status(&nodes[0]).unwrap();
    let leaving = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "voter" && m["leader"] == false && m["reachable"] == true)
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let idx = nodes
        .iter()
        .position(|n| dqlite_addr(n) == leaving)
        .unwrap();
    let mut stopping = nodes.remove(idx);
    let (st, took) = stopping.terminate();
    assert!(st.success());
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    eventually(
        "the stopped voter replaced",
        Duration::from_secs(30),
        || {
            let s = status(&nodes[0])?;
            let row = members(&s).into_iter().find(|(a, _, _)| *a == leaving)?;
            (row.1 == "spare" && live_voters(&s) == 3).then_some(())
        },
    );
}

#[test]
fn a_new_member_in_an_unused_domain_gets_a_voter() {
    let domain_1 = ["--failure-domain", "1"];
    let [a, _b, _c] = TestCluster::start_with(&[domain_1; 3]).into_nodes();
    wait_live_voters(&a, 3, "three voters in domain 1");
    let d = Node::start_with(&["--failure-domain", "2"]);
    join(&a, &d, &[]);
    eventually("a voter in domain 2", Duration::from_secs(30), || {
        let s = status(&a)?;
        let d_row = members(&s)
            .into_iter()
            .find(|(addr, _, _)| *addr == dqlite_addr(&d))?;
        (d_row.1 == "voter" && live_voters(&s) == 3).then_some(())
    });
}

#[test]
fn external_datastore_status_reads_the_live_cluster() {
    // Inside the snap k8s-dqlite hosts the member; here an embedded daemon plays it, and an
    // external-mode daemon shares its backend files (certificate, info.yaml, cluster.yaml).
    let host = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let backend = dir.path().join("var/kubernetes/backend");
    std::fs::create_dir_all(&backend).unwrap();
    for f in ["cluster.crt", "cluster.key", "info.yaml", "cluster.yaml"] {
        std::fs::copy(
            host.state.join("var/kubernetes/backend").join(f),
            backend.join(f),
        )
        .unwrap();
    }
    let ip = unique_loopback();
    let mut ext = Node::start_at_with(
        ip,
        dir,
        &["--datastore", "external", "--service-manager", "none"],
    );
    ext.wait_healthy();
    let s = ext
        .status_json()
        .expect("status of the external-datastore node");
    assert_eq!(
        members(&s),
        vec![(dqlite_addr(&host), "voter".to_string(), true)],
        "{s}"
    );
}

/// `remove-node` never removes the node it runs on, even when the datastore address is not
/// the `--bind` one (a wildcard bind, or a separate `--dqlite-bind`).
#[test]
fn remove_node_refuses_this_node_by_its_datastore_address() {
    let dqlite_ip = unique_loopback();
    let dqlite_bind = format!("{dqlite_ip}:19001");
    let node = Node::start_with(&["--dqlite-bind", &dqlite_bind]);
    let out = cli(&node, &["remove-node", &dqlite_ip.to_string(), "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("is this node"),
        "{}",
        text(&out.stderr)
    );
    let s = status(&node).unwrap();
    assert_eq!(
        members(&s),
        vec![(dqlite_bind, "voter".to_string(), true)],
        "{s}"
    );
}

/// Checks that can refuse a control-plane join run before the join is asked for: the
/// single-use token survives the refusal and works once the cause is gone.
#[test]
fn a_join_refused_on_the_joining_side_keeps_the_token() {
    let cp = Node::start();
    let joiner = Node::start();
    let url = join_url(&cp);
    let leftover = joiner.state.join("var/kubernetes/backend.join-backup");
    std::fs::create_dir_all(&leftover).unwrap();
    let out = cli(&joiner, &["join", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("backend.join-backup"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir(&leftover).unwrap();
    let out = cli(&joiner, &["join", &url]);
    assert!(
        out.status.success(),
        "the same token must still join: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Quorum lost (two of three voters killed): `status` on the survivor answers in time, exit
/// 4 in every format, says `quorum lost: 1 of 3 voters reachable` and lists which members
/// answer (the last configuration it saw).
#[test]
fn status_with_quorum_lost_answers_in_time_and_says_who_answers() {
    let cluster = TestCluster::start(3);
    let [a, mut b, mut c] = cluster.into_nodes();
    eventually("three live voters", Duration::from_secs(60), || {
        (live_voters(&a.status_json()?) == 3).then_some(())
    });
    let url = join_url(&a);
    b.kill();
    c.kill();
    for format in ["pretty", "yaml", "json"] {
        let started = std::time::Instant::now();
        let out = cli(&a, &["status", "--format", format]);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(6), "{format}: took {took:?}");
        assert_eq!(
            out.status.code(),
            Some(4),
            "{format}: {}",
            text(&out.stderr)
        );
        let printed = text(&out.stdout);
        assert!(
            printed.contains("quorum lost: 1 of 3 voters reachable"),
            "{format}: {printed}"
        );
        assert!(printed.contains(&dqlite_addr(&b)), "{format}: {printed}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&cli(&a, &["status", "--format", "json"]).stdout).unwrap();
    assert_eq!(report["condition"], "unavailable");
    // (From a leader that has not noticed yet, or from the last configuration this node
    // saw: either way every member is probed now.)
    let answering: Vec<(String, bool)> = members(&report)
        .into_iter()
        .map(|(addr, _, up)| (addr, up))
        .collect();
    assert!(
        answering.contains(&(dqlite_addr(&a), true)),
        "{answering:?}"
    );
    assert!(
        answering.contains(&(dqlite_addr(&b), false)),
        "{answering:?}"
    );

    // add-node, leave and remove-node refuse in time, exit 4, and change nothing.
    let before = snapshot(&a.state);
    let removed = dqlite_addr(&b);
    for args in [
        vec!["add-node"],
        vec!["leave"],
        vec!["remove-node", removed.as_str()],
        vec!["remove-node", removed.as_str(), "--force"],
    ] {
        let started = std::time::Instant::now();
        let out = cli(&a, &args);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(8), "{args:?}: took {took:?}");
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(
            err.contains("quorum lost: 1 of 3 voters reachable"),
            "{args:?}: {err}"
        );
    }
    let after = snapshot(&a.state);
    let changed: Vec<&String> = after
        .keys()
        .filter(|k| before.get(*k) != after.get(*k) && !k.starts_with("var/kubernetes/backend/"))
        .collect();
    assert!(changed.is_empty(), "{changed:?}");

    // A node asking to join is refused in time, and nothing on it changes.
    let d = Node::start();
    let before = snapshot(&d.state);
    let started = std::time::Instant::now();
    let out = cli(&d, &["join", &url]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "join took {took:?}");
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("quorum lost: 1 of 3 voters reachable"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(snapshot(&d.state), before);
}
