//! The daemon as a user runs it: real processes on 127.0.0.x addresses.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

#[test]
fn serves_health_over_tls_verified_against_the_cluster_ca() {
    let node = Node::start();
    let client = https_client(&node.state);
    let resp = client
        .get(format!("https://{}/health", node.bind()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), r#"{"status":"OK"}"#);

    let resp = client
        .get(format!("https://{}/no/such/route", node.bind()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().unwrap(), r#"{"error":"Not found"}"#);
}

#[test]
fn tls_below_1_2_is_refused() {
    let node = Node::start();
    // openssl s_client with TLS 1.1 only must fail the handshake.
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &node.bind(),
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "TLS 1.1 handshake unexpectedly succeeded"
    );
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &node.bind(), "-tls1_2"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "TLS 1.2 handshake failed: {}",
        text(&out.stderr)
    );
}

#[test]
fn second_daemon_on_the_same_state_dir_refuses() {
    let node = Node::start();
    let other = unique_loopback();
    let out = cli(&node, &["daemon", "--bind", &format!("{other}:25000")]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
    assert!(err.contains(node.state.to_str().unwrap()), "{err}");
}

#[test]
fn busy_port_is_a_clear_error() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let out = cli_in(dir.path(), &["daemon", "--bind", &node.bind()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {}", node.bind())),
        "{err}"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let out = run_cli(&["daemon", "--bind", "not-an-address"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid bind address"));
    let out = run_cli(&["daemon", "--min-tls-version", "tls99"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_cli(&["daemon", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
    for latency in ["0s", "11s", "fast"] {
        let out = run_cli(&["daemon", "--dqlite-network-latency", latency], &[]);
        assert_eq!(out.status.code(), Some(2), "{latency}");
        assert!(
            text(&out.stderr).contains("--dqlite-network-latency"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// A WAN member's raft timing: the latency reaches the member, which serves as usual.
#[test]
fn dqlite_network_latency_is_configurable() {
    let node = Node::start_with(&["--dqlite-network-latency", "400ms"]);
    assert!(
        node.log_text().contains("dqlite_network_latency=400ms"),
        "{}",
        node.log_text()
    );
    let status = node.status_json().expect("status");
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
}

#[test]
fn unreadable_or_malformed_certificate_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ip = unique_loopback();
    let missing = dir.path().join("nope.crt");
    let out = cli_in(
        dir.path(),
        &[
            "daemon",
            "--bind",
            &format!("{ip}:25000"),
            "--certfile",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(missing.to_str().unwrap()));

    // The state dir is bootstrapped now; corrupt the served certificate.
    let crt = dir.path().join("certs/server.crt");
    std::fs::write(&crt, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let out = cli_in(dir.path(), &["daemon", "--bind", &format!("{ip}:25000")]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(crt.to_str().unwrap()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_ha_conf_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("args")).unwrap();
    let ha = dir.path().join("args/ha-conf");
    std::fs::write(&ha, "failure-domain=east\n").unwrap();
    let out = cli_in(
        dir.path(),
        &["daemon", "--bind", &format!("{}:25000", unique_loopback())],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(ha.to_str().unwrap()) && err.contains("east"),
        "{err}"
    );
    // The user's file is left as it was.
    assert_eq!(
        std::fs::read_to_string(&ha).unwrap(),
        "failure-domain=east\n"
    );
}

#[test]
fn sigterm_stops_cleanly_within_five_seconds() {
    let mut node = Node::start();
    // An idle keep-alive connection must not hold the shutdown up.
    let client = https_client(&node.state);
    client
        .get(format!("https://{}/health", node.bind()))
        .send()
        .unwrap();
    let (status, took) = node.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(!node.state.join("run/cluster-agent.sock").exists());
    // The lock is released: a new daemon can own the state directory.
    node.spawn(&[]);
    node.wait_healthy();
}

#[test]
fn control_socket_is_private_and_answers() {
    let node = Node::start();
    let sock = node.state.join("run/cluster-agent.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let run_dir = std::fs::metadata(node.state.join("run")).unwrap();
    assert_eq!(run_dir.permissions().mode() & 0o777, 0o700);

    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /v3/local/info HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains(&format!("\"bind\":\"{}\"", node.bind())),
        "{resp}"
    );
}

#[test]
fn microk8s_service_spelling_works() {
    // As run by the snap's run-cluster-agent-with-args, with $SNAP_DATA as state directory.
    let dir = tempfile::tempdir().unwrap();
    let snap_data = dir.path().to_str().unwrap();
    let ip = unique_loopback();
    let bind = format!("{ip}:25000");
    let mut child = std::process::Command::new(BIN)
        .args([
            "cluster-agent",
            "--bind",
            &bind,
            "--keyfile",
            "${SNAP_DATA}/certs/server.key",
            "--certfile",
            "${SNAP_DATA}/certs/server.crt",
            "--timeout",
            "240",
            "--enable-metrics",
            "--launch-configurations-interval",
            "5s",
            "--service-manager",
            "none",
            "--datastore",
            "embedded",
        ])
        .env("SNAP_DATA", snap_data)
        .env_remove("SNAP")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = https_client(dir.path());
    let ok = eventually(
        "health via MicroK8s spelling",
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("exited early: {status}");
            }
            let client = https_client(dir.path());
            let resp = client.get(format!("https://{bind}/health")).send().ok()?;
            Some(resp.status() == 200)
        },
    );
    drop(client);
    assert!(ok);
    assert!(dir.path().join("certs/ca.crt").exists());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sighup_neither_stops_the_daemon_nor_loses_its_certificate() {
    let mut node = Node::start();
    let pid = nix::unistd::Pid::from_raw(node.child.as_ref().unwrap().id() as i32);
    for _ in 0..3 {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    }
    eventually("the reload to be logged", Duration::from_secs(10), || {
        node.log_text()
            .contains("SIGHUP: reloaded the :25000 certificate")
            .then_some(())
    });
    assert!(
        node.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the daemon died of SIGHUP:\n{}",
        node.log_text()
    );
    let resp = https_client(&node.state)
        .get(format!("https://{}/health", node.bind()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = node.terminate();
    assert!(status.success());
}

#[test]
fn a_failed_write_to_stdout_is_an_error_not_a_panic() {
    let node = Node::start();
    let out = agent(&[
        "--state-dir".into(),
        node.state.display().to_string(),
        "add-node".into(),
    ])
    .stdout(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    )
    .stderr(std::process::Stdio::piped())
    .output()
    .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write to standard output"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
