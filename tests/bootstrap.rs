//! Bootstrap of an empty state directory, checked with openssl as an independent verifier.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use cluster_agent::cluster::bootstrap::{bootstrap, BootstrapOptions};
use cluster_agent::format::kubeconfig::Kubeconfig;
use cluster_agent::state::StateDir;
use cluster_agent::sys::host::HostIdentity;
use common::snapshot;

fn host() -> HostIdentity {
    HostIdentity {
        hostname: "node-a".into(),
        addresses: vec!["127.0.0.1".parse().unwrap(), "10.9.8.7".parse().unwrap()],
    }
}

fn opts() -> BootstrapOptions {
    BootstrapOptions {
        bind: "127.0.0.42:25000".parse().unwrap(),
        failure_domain: 1,
    }
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn produces_a_valid_chain_with_the_expected_sans() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    bootstrap(&state, &host(), &opts()).unwrap();
    let certs = dir.path().join("certs");
    let ca = certs.join("ca.crt");
    let ca = ca.to_str().unwrap();

    let verified = openssl(&[
        "verify",
        "-CAfile",
        ca,
        certs.join("server.crt").to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
    let text = openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        certs.join("server.crt").to_str().unwrap(),
    ]);
    for san in [
        "IP Address:127.0.0.1",
        "IP Address:10.152.183.1",
        "IP Address:10.9.8.7",
        "IP Address:127.0.0.42",
        "DNS:node-a",
        "DNS:kubernetes.default.svc.cluster.local",
    ] {
        assert!(text.contains(san), "server.crt lacks {san}:\n{text}");
    }
    let ca_text = openssl(&["x509", "-noout", "-text", "-in", ca]);
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");

    let fp = dir.path().join("certs/front-proxy-client.crt");
    let verified = openssl(&[
        "verify",
        "-CAfile",
        certs.join("front-proxy-ca.crt").to_str().unwrap(),
        fp.to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"));

    // The dqlite certificate is self-signed and has a DNS SAN (go-dqlite needs one).
    let dq = dir.path().join("var/kubernetes/backend/cluster.crt");
    let dq = dq.to_str().unwrap();
    assert!(openssl(&["verify", "-CAfile", dq, dq]).contains(": OK"));
    assert!(openssl(&["x509", "-noout", "-text", "-in", dq]).contains("DNS:node-a"));

    // Every kubeconfig's client certificate chains to the CA.
    for name in [
        "client.config",
        "kubelet.config",
        "proxy.config",
        "scheduler.config",
        "controller.config",
    ] {
        let path = dir.path().join("credentials").join(name);
        let creds = Kubeconfig::parse(&std::fs::read_to_string(&path).unwrap())
            .unwrap()
            .credentials()
            .unwrap();
        assert_eq!(creds.server, "https://127.0.0.1:16443");
        let leaf = dir.path().join(format!("{name}.pem"));
        std::fs::write(&leaf, creds.client_cert_pem.unwrap()).unwrap();
        let verified = openssl(&["verify", "-CAfile", ca, leaf.to_str().unwrap()]);
        assert!(verified.contains(": OK"), "{name}: {verified}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
}

#[test]
fn secrets_are_private_and_defaults_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    bootstrap(&state, &host(), &opts()).unwrap();
    for secret in [
        "certs/ca.key",
        "certs/server.key",
        "certs/serviceaccount.key",
        "certs/front-proxy-ca.key",
        "var/kubernetes/backend/cluster.key",
        "credentials/callback-token.txt",
    ] {
        let mode = std::fs::metadata(dir.path().join(secret))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{secret}");
    }
    let agent = state.read_args("cluster-agent").unwrap();
    assert_eq!(agent.get("--bind"), Some("127.0.0.42:25000"));
    assert_eq!(
        agent.get_unquoted("--keyfile").unwrap(),
        "${SNAP_DATA}/certs/server.key"
    );
    assert_eq!(
        state.read_args("ha-conf").unwrap().get("failure-domain"),
        Some("1")
    );
    assert_eq!(
        state
            .read_args("kube-apiserver")
            .unwrap()
            .get("--secure-port"),
        Some("16443")
    );
    assert_eq!(
        state.read_args("kube-proxy").unwrap().get("--cluster-cidr"),
        Some("10.1.0.0/16")
    );
    assert_eq!(
        state
            .read_args("apiserver-proxy")
            .unwrap()
            .get("--refresh-interval"),
        Some("30s")
    );
    assert!(state.has_marker("ha-cluster"));
    let token = std::fs::read_to_string(dir.path().join("credentials/callback-token.txt")).unwrap();
    assert_eq!(token.trim().len(), 64);
}

#[test]
fn is_idempotent_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let first = bootstrap(&state, &host(), &opts()).unwrap();
    assert!(first.created.len() > 10);
    // A hand edit must survive a second bootstrap.
    std::fs::write(dir.path().join("args/kubelet"), "--v=4\n").unwrap();
    let before = snapshot(dir.path());
    let second = bootstrap(&state, &host(), &opts()).unwrap();
    assert!(second.created.is_empty(), "{:?}", second.created);
    assert_eq!(before, snapshot(dir.path()));
}

#[test]
fn missing_leaf_is_reissued_from_the_existing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    bootstrap(&state, &host(), &opts()).unwrap();
    let ca_before = std::fs::read(dir.path().join("certs/ca.crt")).unwrap();
    std::fs::remove_file(dir.path().join("certs/server.crt")).unwrap();
    std::fs::remove_file(dir.path().join("certs/server.key")).unwrap();
    let report = bootstrap(&state, &host(), &opts()).unwrap();
    assert_eq!(report.created.len(), 2, "{:?}", report.created);
    assert_eq!(
        ca_before,
        std::fs::read(dir.path().join("certs/ca.crt")).unwrap()
    );
    let certs = dir.path().join("certs");
    let verified = openssl(&[
        "verify",
        "-CAfile",
        certs.join("ca.crt").to_str().unwrap(),
        certs.join("server.crt").to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"));
}

#[test]
fn half_pairs_are_reported_not_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    bootstrap(&state, &host(), &opts()).unwrap();
    let key = dir.path().join("certs/server.key");
    std::fs::remove_file(&key).unwrap();
    let err = bootstrap(&state, &host(), &opts()).unwrap_err().to_string();
    assert!(err.contains(key.to_str().unwrap()), "{err}");
    assert!(!key.exists());
}

#[test]
fn worker_without_ca_key_keeps_its_material() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    bootstrap(&state, &host(), &opts()).unwrap();
    std::fs::remove_file(dir.path().join("certs/ca.key")).unwrap();
    std::fs::remove_file(dir.path().join("credentials/client.config")).unwrap();
    let report = bootstrap(&state, &host(), &opts()).unwrap();
    assert!(report.created.is_empty(), "{:?}", report.created);
    assert!(!dir.path().join("certs/ca.key").exists());
}

#[test]
fn foreign_openssl_ca_is_used_for_missing_leaves() {
    // A MicroK8s state dir: CA made by openssl (RSA, SHA-1 key identifiers).
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let key = certs.join("ca.key");
    let crt = certs.join("ca.crt");
    openssl(&["genrsa", "-out", key.to_str().unwrap(), "2048"]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/CN=10.152.183.1",
        "-days",
        "3650",
        "-out",
        crt.to_str().unwrap(),
    ]);
    let state = StateDir::new(dir.path());
    bootstrap(&state, &host(), &opts()).unwrap();
    let verified = openssl(&[
        "verify",
        "-CAfile",
        crt.to_str().unwrap(),
        certs.join("server.crt").to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
}
