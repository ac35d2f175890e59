//! Join tokens an operator can see, scope and revoke (`token list`, `token revoke`,
//! `add-node --role/--description/--persistent`), and labels and taints at join, between
//! real daemons.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn token_list(node: &Node) -> Vec<Value> {
    let out = cli(node, &["token", "list", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// `add-node --format token <extra…>` on `cp`: the token.
fn issue(cp: &Node, extra: &[&str]) -> String {
    let mut args = vec!["add-node", "--format", "token"];
    args.extend_from_slice(extra);
    let out = cli(cp, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

fn id_of(list: &[Value], kind: &str) -> Vec<Value> {
    list.iter().filter(|t| t["kind"] == kind).cloned().collect()
}

/// `<cp address>/<token>/<fingerprint>` for `token` (the fingerprint of `cp`'s
/// certificate, from a `token-check` add-node whose token is revoked at once).
fn url_with(cp: &Node, token: &str) -> String {
    let out = cli(cp, &["add-node", "--format", "token-check"]);
    let line = text(&out.stdout);
    let (spare, fingerprint) = line.trim().split_once('/').unwrap();
    assert!(cli(cp, &["token", "revoke", spare]).status.success());
    format!("{}/{token}/{fingerprint}", cp.bind())
}

#[test]
fn every_kind_of_token_is_listed_by_id_and_expired_ones_are_pruned() {
    let cp = Node::start();
    let single = issue(&cp, &["--role", "worker", "--description", "rack 4"]);
    let ttl = issue(&cp, &["--token-ttl", "2", "--role", "control-plane"]);
    let persistent = issue(&cp, &["--persistent", "--description", "fleet"]);
    // Tokens made by MicroK8s's own tools: its files, none of our entries.
    let foreign = "microk8s-made-token-0123456789abcdef";
    let foreign_persistent = "microk8s-made-persistent-0123456789ab";
    let creds = cp.state.join("credentials");
    let mut cluster = std::fs::read_to_string(creds.join("cluster-tokens.txt")).unwrap();
    cluster.push_str(&format!("{foreign}\n"));
    std::fs::write(creds.join("cluster-tokens.txt"), cluster).unwrap();
    std::fs::write(
        creds.join("persistent-cluster-tokens.txt"),
        format!("{persistent}\n{foreign_persistent}\n"),
    )
    .unwrap();

    let list = token_list(&cp);
    let raw = serde_json::to_string(&list).unwrap();
    for secret in [
        &single,
        &ttl,
        &persistent,
        &foreign.to_string(),
        &foreign_persistent.to_string(),
    ] {
        assert!(
            !raw.contains(secret.as_str()),
            "a secret in the list: {raw}"
        );
    }
    let single_use = id_of(&list, "single-use");
    assert_eq!(single_use.len(), 2, "{raw}");
    let ours = single_use.iter().find(|t| t["scope"] == "worker").unwrap();
    assert_eq!(ours["description"], "rack 4");
    assert_eq!(ours["id"].as_str().unwrap().len(), 12);
    assert!(ours["created"].as_i64().is_some());
    assert!(
        single_use.iter().any(|t| t["scope"].is_null()),
        "MicroK8s's token is unscoped: {raw}"
    );
    let ttls = id_of(&list, "ttl");
    assert_eq!(ttls.len(), 1);
    assert_eq!(ttls[0]["scope"], "control-plane");
    assert!(ttls[0]["expires"].as_i64().is_some());
    let persistents = id_of(&list, "persistent");
    assert_eq!(persistents.len(), 2);
    assert!(persistents
        .iter()
        .any(|t| t["description"] == "fleet" && t["expires"].is_null()));
    let pretty = text(&cli(&cp, &["token", "list"]).stdout);
    assert!(pretty.starts_with("ID "), "{pretty}");
    assert!(
        pretty.contains("rack 4") && pretty.contains("any (unscoped)"),
        "{pretty}"
    );
    let yaml = cli(&cp, &["token", "list", "--format", "yaml"]);
    assert!(yaml.status.success() && text(&yaml.stdout).contains("kind: ttl"));

    // The TTL token expires: no longer listed, and pruned from MicroK8s's file.
    eventually("the TTL token expired", Duration::from_secs(10), || {
        id_of(&token_list(&cp), "ttl").is_empty().then_some(())
    });
    assert!(!std::fs::read_to_string(creds.join("cluster-tokens.txt"))
        .unwrap()
        .contains(&ttl));
}

#[test]
fn a_revoked_token_joins_nothing_and_an_unknown_id_changes_nothing() {
    let cp = Node::start();
    let token = issue(&cp, &["--persistent"]);
    let other = issue(&cp, &[]);
    let id = token_list(&cp)
        .iter()
        .find(|t| t["kind"] == "persistent")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let before = snapshot(&cp.state);
    let out = cli(&cp, &["token", "revoke", &id, "0123456789ab"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no usable token has id 0123456789ab"),
        "{}",
        text(&out.stderr)
    );
    let after = snapshot(&cp.state);
    let changed: Vec<&String> = after
        .keys()
        .filter(|k| before.get(*k) != after.get(*k) && !k.starts_with("var/log"))
        .collect();
    assert!(changed.is_empty(), "{changed:?}");

    let out = cli(&cp, &["token", "revoke", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("Revoked {id}.\n"));
    let joiner = Node::start();
    let out = cli(&joiner, &["join", &url_with(&cp, &token), "--worker"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "refused like an invalid token: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("Invalid token"),
        "{}",
        text(&out.stderr)
    );
    // Revoking by the token itself works too.
    let out = cli(&cp, &["token", "revoke", &other]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(token_list(&cp).is_empty());
    let audit =
        std::fs::read_to_string(cp.state.join("var/log/cluster-agent-audit.jsonl")).unwrap();
    assert!(!audit.contains(&token) && !audit.contains(&other));
    // Two tokens and the spare `url_with` made, each created and revoked.
    assert_eq!(audit.matches("\"created\"").count(), 3, "{audit}");
    assert_eq!(audit.matches("\"revoked\"").count(), 3, "{audit}");
    assert!(audit.contains("\"persistent token, role any\""), "{audit}");
    assert_eq!(audit.matches("\"invalid_token\"").count(), 1, "{audit}");
}

#[test]
fn a_worker_token_refuses_a_control_plane_and_still_admits_a_worker() {
    let cp = Node::start();
    let token = issue(&cp, &["--role", "worker"]);
    let url = url_with(&cp, &token);
    let joiner = Node::start();
    let before = snapshot(&joiner.state);
    let out = cli(&joiner, &["join", &url]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stdout));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("admits worker nodes only"), "{said}");
    assert_eq!(
        snapshot(&joiner.state),
        before,
        "the refused joiner changed nothing"
    );
    // Not consumed: a worker joins with it, and its certificate requests go through.
    let out = cli(&joiner, &["join", &url, "--worker"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(joiner.state.join("var/lock/clustered.lock").exists());

    // And the reverse.
    let token = issue(&cp, &["--role", "control-plane"]);
    let worker = Node::start();
    let out = cli(&worker, &["join", &url_with(&cp, &token), "--worker"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(
        text(&out.stderr).contains("admits control-plane nodes only"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn labels_and_taints_land_in_the_kubelet_arguments_and_bad_ones_change_nothing() {
    let cp = Node::start();
    let worker = Node::start();
    let url = join_url(&cp);
    let out = cli(
        &worker,
        &[
            "join",
            &url,
            "--worker",
            "--node-labels",
            "zone=eu-1a,example.com/rack=r4",
            "--register-with-taints",
            "dedicated=gpu:NoSchedule",
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let kubelet = std::fs::read_to_string(worker.state.join("args/kubelet")).unwrap();
    assert!(
        kubelet.contains("--node-labels=\"microk8s.io/cluster=true,node.kubernetes.io/microk8s-worker=microk8s-worker,zone=eu-1a,example.com/rack=r4\"\n"),
        "{kubelet}"
    );
    assert!(
        kubelet.contains("--register-with-taints=\"dedicated=gpu:NoSchedule\"\n"),
        "{kubelet}"
    );

    // A control plane, through the embedded member's join.
    let second = Node::start();
    let out = cli(
        &second,
        &["join", &join_url(&cp), "--node-labels", "tier=control"],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let kubelet = std::fs::read_to_string(second.state.join("args/kubelet")).unwrap();
    assert!(kubelet.contains("tier=control\""), "{kubelet}");

    // Refused before anything is asked: the token is still usable, nothing changed.
    let third = Node::start();
    let url = join_url(&cp);
    let before = snapshot(&third.state);
    for (flag, value, says) in [
        ("--node-labels", "bad key=x", "name"),
        (
            "--node-labels",
            "node-role.kubernetes.io/worker=",
            "does not set labels",
        ),
        (
            "--register-with-taints",
            "dedicated=gpu:Sometimes",
            "effect must be",
        ),
    ] {
        let out = cli(&third, &["join", &url, "--worker", flag, value]);
        assert_eq!(out.status.code(), Some(1), "{value}");
        let err = text(&out.stderr);
        assert!(
            err.contains(says) && err.contains("Nothing was changed"),
            "{value}: {err}"
        );
    }
    assert_eq!(snapshot(&third.state), before);
    let out = cli(&third, &["join", &url, "--worker"]);
    assert!(
        out.status.success(),
        "the token was not spent: {}",
        text(&out.stdout)
    );
}
