//! `join --worker` and `leave` between real daemons on 127.x.y.z addresses.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;

fn openssl_verify(ca: &Path, cert: &Path) -> bool {
    std::process::Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
        ])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn worker_join_then_leave_then_rejoin_with_the_token_string() {
    let cp = Node::start();
    let worker = Node::start();
    let url = join_url(&cp);
    let out = cli(&worker, &["join", &url, "--worker"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("Successfully joined the cluster."));

    // Certificates signed by the cluster CA, kubeconfigs through the local proxy.
    let cp_ca = cp.state.join("certs/ca.crt");
    assert!(openssl_verify(
        &cp_ca,
        &worker.state.join("certs/kubelet.crt")
    ));
    assert!(openssl_verify(
        &cp_ca,
        &worker.state.join("certs/proxy.crt")
    ));
    assert_eq!(
        std::fs::read(&cp_ca).unwrap(),
        std::fs::read(worker.state.join("certs/ca.remote.crt")).unwrap()
    );
    let kubelet_config =
        std::fs::read_to_string(worker.state.join("credentials/kubelet.config")).unwrap();
    assert!(kubelet_config.contains("https://127.0.0.1:16443"));
    let provider: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(worker.state.join("args/traefik/provider.yaml")).unwrap(),
    )
    .unwrap();
    let servers = &provider["tcp"]["services"]["kube-apiserver"]["loadBalancer"]["servers"];
    assert_eq!(
        servers[0]["address"].as_str().unwrap(),
        format!("{}:16443", cp.ip)
    );
    for marker in ["clustered.lock", "no-k8s-dqlite", "no-cert-reissue"] {
        assert!(
            worker.state.join("var/lock").join(marker).exists(),
            "{marker}"
        );
    }
    let kubelet_args = std::fs::read_to_string(worker.state.join("args/kubelet")).unwrap();
    assert!(kubelet_args.contains("--client-ca-file=${SNAP_DATA}/certs/ca.remote.crt"));
    assert!(kubelet_args.contains("microk8s-worker"));
    // A worker cannot issue join tokens.
    let out = cli(&worker, &["add-node"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("acting as a node in a cluster"));

    // Leave: a working standalone node again.
    let out = cli(&worker, &["leave"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!worker.state.join("var/lock/clustered.lock").exists());
    assert!(!worker.state.join("certs/ca.remote.crt").exists());
    let own_ca = worker.state.join("certs/ca.crt");
    assert!(openssl_verify(
        &own_ca,
        &worker.state.join("certs/server.crt")
    ));
    let creds = cluster_agent::format::kubeconfig::Kubeconfig::parse(
        &std::fs::read_to_string(worker.state.join("credentials/kubelet.config")).unwrap(),
    )
    .unwrap()
    .credentials()
    .unwrap();
    assert_eq!(
        creds.ca_pem.unwrap(),
        std::fs::read_to_string(&own_ca).unwrap()
    );
    let out = cli(&worker, &["add-node", "--format", "token"]);
    assert!(
        out.status.success(),
        "standalone again: {}",
        text(&out.stderr)
    );

    // Rejoin with our self-contained token (pins the CA, no /FP part).
    let json: serde_json::Value = serde_json::from_str(&add_node(&cp, "json")).unwrap();
    let token_string = json["token_string"].as_str().unwrap();
    let out = cli(&worker, &["join", token_string, "--worker"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn failed_joins_leave_the_joiner_as_it_was() {
    let cp = Node::start();
    let worker = Node::start();
    let before = snapshot(&worker.state);
    let url = join_url(&cp);
    let (addr_token, _fp) = url.rsplit_once('/').unwrap();

    // Wrong fingerprint: exit 4, the token is not used.
    let out = cli(
        &worker,
        &["join", &format!("{addr_token}/0123456789ab"), "--worker"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("Could not verify the identity of {}", cp.ip)));

    // Unreachable server: exit 1 with a clear message.
    let nobody = unique_loopback();
    let token = addr_token.split('/').nth(1).unwrap();
    let out = cli(
        &worker,
        &["join", &format!("{nobody}:25000/{token}"), "--worker"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("Could not reach the cluster") && !err.contains("panicked"),
        "{err}"
    );

    // Unknown token: the server refuses, exit 6 with MicroK8s's text.
    let out = cli(
        &worker,
        &[
            "join",
            &format!("{}:25000/{}", cp.ip, "f".repeat(32)),
            "--worker",
        ],
    );
    assert_eq!(out.status.code(), Some(6));
    assert!(text(&out.stderr).contains("Connection failed. Invalid token (500)."));

    // Joining a node to itself.
    let own = join_url(&worker);
    let out = cli(&worker, &["join", &own, "--worker"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot join itself"));

    // Malformed connection strings: MicroK8s's texts, exit 1.
    let out = cli(&worker, &["join", "not-a-connection", "--worker"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("Invalid connection: Expected format"));

    let mut after = snapshot(&worker.state);
    // add-node on the worker itself issued a token (and its entry); nothing else may differ.
    let mut before = before;
    for issued in [
        "credentials/cluster-tokens.txt",
        "credentials/cluster-agent-tokens.json",
    ] {
        after.remove(issued);
        before.remove(issued);
    }
    assert_eq!(before, after);

    // The original token still works.
    let out = cli(&worker, &["join", &url, "--worker"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The manifest as MicroK8s ships it (the two autodetection entries of calico-node).
const CNI_YAML: &str = "\
            - name: IP_AUTODETECTION_METHOD
              value: \"first-found\"
            - name: IP6_AUTODETECTION_METHOD
              value: \"first-found\"
";

/// MicroK8s's step 10 of a v2 join: the granting node pins Calico's IPv4 autodetection to the
/// joining node and applies the manifest (here a stand-in `kubectl` on the daemon's PATH that
/// records its arguments); a refused join changes nothing.
#[test]
fn a_granted_join_pins_calico_to_the_joining_node_and_applies_it() {
    let tools = tempfile::tempdir().unwrap();
    let calls = tools.path().join("kubectl.calls");
    let kubectl = tools.path().join("kubectl");
    std::fs::write(
        &kubectl,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        tools.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cp = Node::start_with_env(&[], &[("PATH", &path)]);
    let manifest = cp.state.join("args/cni-network/cni.yaml");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, CNI_YAML).unwrap();

    // A refused join (an unknown token) leaves the manifest alone.
    let worker = Node::start();
    let url = join_url(&cp);
    let (addr, _) = url.split_once('/').unwrap();
    let bad = format!("{addr}/{}", "x".repeat(32));
    let out = cli(&worker, &["join", &bad, "--worker", "--skip-verify"]);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), CNI_YAML);

    let out = cli(&worker, &["join", &url, "--worker"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pinned = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(
        pinned,
        CNI_YAML.replacen(
            "\"first-found\"",
            &format!("\"can-reach={}\"", worker.ip),
            1
        )
    );
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let applied = eventually("the manifest is applied", Duration::from_secs(20), || {
        std::fs::read_to_string(&calls)
            .ok()
            .filter(|c| !c.is_empty())
    });
    assert_eq!(
        applied.trim(),
        format!(
            "--kubeconfig {} apply -f {}",
            cp.state.join("credentials/client.config").display(),
            manifest.display()
        )
    );
}

/// The network steps (join, both certificate signatures) all happen before any local write,
/// and the local writes are covered by a backup (unit-tested in `state::backup`); here an
/// unusable path makes the local step fail.
#[test]
fn a_local_failure_changes_nothing() {
    let cp = Node::start();
    let worker = Node::start();
    // Make one write of the join fail: a directory where a file must go.
    std::fs::create_dir_all(worker.state.join("args/traefik/provider.yaml/blocker")).unwrap();
    let before = snapshot(&worker.state);
    let url = join_url(&cp);
    let out = cli(&worker, &["join", &url, "--worker"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("provider.yaml"),
        "the message names the culprit: {err}"
    );
    assert_eq!(before, snapshot(&worker.state));
    assert!(!worker.state.join("var/lock/clustered.lock").exists());
}

/// remove-node deletes the Kubernetes Node object through the API server named in
/// `credentials/client.config`; here a small HTTPS server on the control plane's address
/// (with its own serving certificate) plays kube-apiserver.
#[test]
fn remove_node_deletes_the_kubernetes_node_of_a_worker() {
    let cp = Node::start();
    let worker = Node::start();
    let url = join_url(&cp);
    let out = cli(&worker, &["join", &url, "--worker"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let deleted = fake_kubernetes(&cp, &[worker.ip.to_string()]);

    let out = cli(&cp, &["remove-node", &worker.ip.to_string()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("Deleted the Kubernetes node node-0"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(*deleted.lock().unwrap(), vec!["node-0".to_string()]);

    // An address Kubernetes does not know (and no datastore member): refused.
    let out = cli(&cp, &["remove-node", &unique_loopback().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not part of the cluster"));
}

/// A peer whose clock is an hour off is refused before any token is used.
#[test]
fn clock_skew_is_refused() {
    let joiner = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let pair = cluster_agent::pki::self_signed(&cluster_agent::pki::LeafSpec {
        common_name: "skewed".into(),
        dns_names: vec!["skewed".into()],
        server: true,
        ..Default::default()
    })
    .unwrap();
    std::fs::write(dir.path().join("s.crt"), &pair.cert_pem).unwrap();
    std::fs::write(dir.path().join("s.key"), &pair.key_pem).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = std::net::SocketAddr::new(unique_loopback().into(), 25000);
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(|| async {
            let skewed = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            (
                [("date", httpdate::fmt_http_date(skewed))],
                "{\"status\":\"OK\"}",
            )
        }),
    );
    serve_tls(
        &rt,
        addr,
        &dir.path().join("s.crt"),
        &dir.path().join("s.key"),
        app,
    );
    let out = cli(
        &joiner,
        &["join", &format!("{addr}/{}", "a".repeat(32)), "--worker"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("clocks of this node") && err.contains("more than 30s"),
        "{err}"
    );
}
