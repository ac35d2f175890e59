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

/// The members `node`'s status lists, once it lists `n` of them.
fn wait_members(node: &Node, n: usize) -> Vec<(String, String, bool)> {
    eventually(&format!("{n} members"), Duration::from_secs(60), || {
        let m = members(&node.status_json()?);
        (m.len() == n).then_some(m)
    })
}

#[test]
fn a_snap_node_joins_a_snap_cluster_as_a_control_plane() {
    let a = SnapNode::start();
    let b = SnapNode::start();
    let url = join_url(&a);
    let out = cli(&b, &["join", &url]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        b.log_text()
    );
    let m = wait_members(&a, 2);
    assert!(
        m.iter().any(|(addr, _, _)| *addr == b.member_address()),
        "{m:?}"
    );
    eprintln!("{}", b.snapctl_log());
}
