//! The embedded dqlite member against independent tools: real `cluster-agent daemon`
//! processes checked with Debian's go-dqlite `dqlite` shell over mutual TLS, and a
//! 3-member cluster of embedded members (one test process, real TCP + TLS between them)
//! formed with our client.
//!
//! Skipped, with a message, when libdqlite0 or go-dqlite is not installed.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster_agent::dqlite::ffi::{self, BOOTSTRAP_ID};
use cluster_agent::dqlite::{self, files, EmbeddedMember, MemberConfig, Role};
use cluster_agent::pki::{self, LeafSpec};
use common::dqlite_shell::{shell, shell_cluster, ShellNode, SHELL};
use common::*;

fn tools_present() -> bool {
    if !Path::new(SHELL).exists() {
        eprintln!("SKIP: {SHELL} is not installed (Debian package go-dqlite)");
        return false;
    }
    if let Err(e) = ffi::Library::load() {
        eprintln!("SKIP: {e}");
        return false;
    }
    true
}

/// Runs the Debian shell against `server` with the cluster certificate in `backend`; the
/// shell retries forever when it finds no leader, hence the hard timeout.
fn backend(state: &Path) -> std::path::PathBuf {
    state.join("var/kubernetes/backend")
}

/// Waits until the shell, asking `server`, lists exactly `want` (id, role) pairs.
fn wait_for_cluster(backend: &Path, server: &str, want: &[(u64, u64)]) -> Vec<ShellNode> {
    eventually(
        ".cluster via the dqlite shell",
        Duration::from_secs(40),
        || {
            let nodes = shell_cluster(backend, server)?;
            let mut got: Vec<(u64, u64)> = nodes.iter().map(|n| (n.id, n.role)).collect();
            let mut want = want.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            (got == want).then_some(nodes)
        },
    )
}

#[test]
fn single_daemon_bootstraps_and_the_shell_lists_it() {
    if !tools_present() {
        return;
    }
    let dq = format!("{}:19001", unique_loopback());
    let node = Node::start_with(&["--dqlite-bind", &dq]);
    let backend = backend(&node.state);

    let nodes = wait_for_cluster(&backend, &dq, &[(BOOTSTRAP_ID, 0)]);
    assert_eq!(nodes[0].address, dq);

    // The files as k8s-dqlite keeps them.
    assert_eq!(
        files::read_info(&backend).unwrap(),
        Some((BOOTSTRAP_ID, dq.clone()))
    );
    let cluster = files::read_cluster(&backend).unwrap().unwrap();
    assert_eq!(cluster.len(), 1);
    assert_eq!(
        (cluster[0].id, cluster[0].address.as_str(), cluster[0].role),
        (BOOTSTRAP_ID, dq.as_str(), Role::Voter)
    );
    // args/ha-conf's failure domain (bootstrap writes 1).
    assert_eq!(files::read_failure_domain(&backend).unwrap(), Some(1));

    // Without the cluster certificate the shell gets nowhere.
    let plain = Command::new("timeout")
        .args(["3", SHELL, "-s", &dq, "k8s", ".cluster"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plain TCP must be refused");
}

#[test]
fn crashed_daemon_restarts_its_member_from_disk_and_sigterm_is_prompt() {
    if !tools_present() {
        return;
    }
    // Default --dqlite-bind: the --bind IP, port 19001.
    let mut node = Node::start();
    let dq = format!("{}:19001", node.ip);
    let backend = backend(&node.state);
    wait_for_cluster(&backend, &dq, &[(BOOTSTRAP_ID, 0)]);
    for sql in ["CREATE TABLE t (n INT)", "INSERT INTO t VALUES (4242)"] {
        shell(&backend, &dq, sql, 10).expect(sql);
    }
    let info_before = std::fs::read(backend.join("info.yaml")).unwrap();

    // kill -9, then the same state directory again.
    let mut child = node.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    node.spawn(&[]);
    node.wait_healthy();
    wait_for_cluster(&backend, &dq, &[(BOOTSTRAP_ID, 0)]);
    assert_eq!(
        std::fs::read(backend.join("info.yaml")).unwrap(),
        info_before
    );
    let rows = shell(&backend, &dq, "SELECT n FROM t", 10).unwrap();
    assert!(
        rows.contains("4242"),
        "data written before the crash: {rows}"
    );

    let (status, took) = node.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(
        node.log_text().contains("dqlite member stopped"),
        "{}",
        node.log_text()
    );
}

#[test]
fn explicit_dqlite_bind_must_match_info_yaml() {
    if !tools_present() {
        return;
    }
    let mut node = Node::start();
    let (status, _) = node.terminate();
    assert!(status.success());
    let other = format!("{}:19001", unique_loopback());
    let out = cli(
        &node,
        &["daemon", "--bind", &node.bind(), "--dqlite-bind", &other],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("info.yaml") && err.contains(&other), "{err}");
}

/// A cluster certificate like bootstrap's: self-signed, one DNS SAN.
fn cluster_pair(dir: &Path) -> pki::PemPair {
    let pair = pki::self_signed(&LeafSpec {
        common_name: "k8s".into(),
        dns_names: vec!["dqlite-host-test".into()],
        ips: vec![[127, 0, 0, 1].into()],
        server: true,
        client: true,
        ..Default::default()
    })
    .unwrap();
    std::fs::write(dir.join("cluster.crt"), &pair.cert_pem).unwrap();
    std::fs::write(dir.join("cluster.key"), &pair.key_pem).unwrap();
    pair
}

fn member_config(
    dir: &Path,
    pair: &pki::PemPair,
    failure_domain: u64,
    join: Option<Vec<String>>,
) -> MemberConfig {
    MemberConfig {
        backend_dir: dir.to_path_buf(),
        bind: format!("{}:19001", unique_loopback()).parse().unwrap(),
        bind_explicit: true,
        cert_pem: pair.cert_pem.clone(),
        key_pem: pair.key_pem.clone(),
        failure_domain,
        network_latency: dqlite::host::DEFAULT_NETWORK_LATENCY,
        join,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_embedded_members_form_a_cluster_over_tls() {
    if !tools_present() {
        return;
    }
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let pair = cluster_pair(dirs[0].path());
    let first = EmbeddedMember::start(member_config(dirs[0].path(), &pair, 1, None))
        .await
        .unwrap();
    let seeds = vec![first.address().to_string()];
    let mut members = vec![first];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let m = EmbeddedMember::start(member_config(
            dir.path(),
            &pair,
            i as u64 + 1,
            Some(seeds.clone()),
        ))
        .await
        .unwrap();
        assert_ne!(m.id(), BOOTSTRAP_ID, "a joiner gets a fresh id");
        // Seeded cluster.yaml, go-dqlite style.
        let seeded = files::read_cluster(dir.path()).unwrap().unwrap();
        assert_eq!(seeded[0].address, seeds[0]);
        members.push(m);
    }

    let tls = dqlite::client_config(&pair.cert_pem, &pair.key_pem).unwrap();
    let client = dqlite::Client::new(seeds.clone(), Some(tls), dqlite::Options::default()).unwrap();
    for m in &members[1..] {
        client.add(m.id(), m.address(), Role::Voter).await.unwrap();
    }
    let want: Vec<(u64, u64)> = members.iter().map(|m| (m.id(), 0)).collect();
    // Every member answers the Debian shell with the same configuration.
    for m in &members {
        wait_for_cluster(dirs[0].path(), m.address(), &want);
    }
    // Failure domains travel through DESCRIBE.
    for (i, m) in members.iter().enumerate() {
        let meta = client.describe(m.address()).await.unwrap();
        assert_eq!(meta.failure_domain, i as u64 + 1);
    }
    // cluster.yaml follows the leader's configuration on request.
    members[2].refresh_cluster_yaml();
    eventually(
        "cluster.yaml of the third member",
        Duration::from_secs(20),
        || {
            let nodes = files::read_cluster(dirs[2].path()).ok()??;
            (nodes.len() == 3 && nodes.iter().all(|n| n.role == Role::Voter)).then_some(())
        },
    );

    // The bootstrap member stops: the other two elect a leader among themselves, which
    // needs raft connections between them through the connect callback.
    let first = members.remove(0);
    first.stop().await.unwrap();
    let survivor = members[0].address().to_string();
    eventually("a new leader", Duration::from_secs(30), || {
        shell(
            dirs[0].path(),
            &survivor,
            "CREATE TABLE IF NOT EXISTS t (n INT)",
            5,
        )
    });
    for m in members {
        m.stop().await.unwrap();
    }
}

/// Not a test on its own: the body of a member process for
/// `killed_members_come_back_from_disk`, which re-runs this test binary with
/// `DQLITE_HOST_CHILD_DIR` set. Hosts one embedded member until stdin closes.
#[test]
fn member_process() {
    use std::io::Read;
    let Some(dir) = std::env::var_os("DQLITE_HOST_CHILD_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let bind = std::env::var("DQLITE_HOST_CHILD_BIND").unwrap();
    let join = std::env::var("DQLITE_HOST_CHILD_SEEDS")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let config = MemberConfig {
        bind: bind.parse().unwrap(),
        bind_explicit: false,
        cert_pem: std::fs::read_to_string(dir.join("cluster.crt")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("cluster.key")).unwrap(),
        failure_domain: 1,
        network_latency: dqlite::host::DEFAULT_NETWORK_LATENCY,
        join,
        backend_dir: dir,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let member = EmbeddedMember::start(config).await.unwrap();
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink)
        })
        .await;
        member.stop().await.unwrap();
    });
}

/// A member hosted by a child process running [`member_process`].
struct MemberProcess {
    dir: tempfile::TempDir,
    bind: String,
    child: Option<std::process::Child>,
}

impl MemberProcess {
    /// A member on a fresh directory and address, sharing `cert_dir`'s cluster certificate.
    fn new(cert_dir: &Path) -> MemberProcess {
        let dir = tempfile::tempdir().unwrap();
        for f in ["cluster.crt", "cluster.key"] {
            std::fs::copy(cert_dir.join(f), dir.path().join(f)).unwrap();
        }
        MemberProcess {
            dir,
            bind: format!("{}:19001", unique_loopback()),
            child: None,
        }
    }

    fn spawn(&mut self, join: Option<&str>) {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "member_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DQLITE_HOST_CHILD_DIR", self.dir.path())
        .env("DQLITE_HOST_CHILD_BIND", &self.bind)
        .env_remove("DQLITE_HOST_CHILD_SEEDS")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(seeds) = join {
            cmd.env("DQLITE_HOST_CHILD_SEEDS", seeds);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    fn id(&self) -> u64 {
        eventually("the member's info.yaml", Duration::from_secs(20), || {
            files::read_info(self.dir.path()).ok()?.map(|(id, _)| id)
        })
    }

    fn kill9(&mut self) {
        kill9(&mut self.child);
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (up to about 20 s) until `address` completes TLS and the protocol handshake.
async fn serving(address: &str, tls: &dqlite::ClientTls) {
    for _ in 0..40 {
        let attempt = dqlite::client::connect(address, Some(tls), Duration::from_millis(500)).await;
        if attempt.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{address} never served");
}

#[test]
fn killed_members_come_back_from_disk() {
    if !tools_present() {
        return;
    }
    // The daemon helper uses blocking HTTP clients, so this test drives async code itself.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Member 1: a real daemon (bootstraps). Members 2 and 3: child processes that join it.
    let mut daemon = Node::start();
    let first = format!("{}:19001", daemon.ip);
    let certs = backend(&daemon.state);
    wait_for_cluster(&certs, &first, &[(BOOTSTRAP_ID, 0)]);
    let tls =
        dqlite::ClientTls::load(&certs.join("cluster.crt"), &certs.join("cluster.key")).unwrap();
    let client = dqlite::Client::new(
        vec![first.clone()],
        Some(tls.clone()),
        dqlite::Options::default(),
    )
    .unwrap();
    let mut others = vec![MemberProcess::new(&certs), MemberProcess::new(&certs)];
    for m in &mut others {
        m.spawn(Some(&first));
        rt.block_on(serving(&m.bind, &tls));
        rt.block_on(client.add(m.id(), &m.bind, Role::Voter))
            .unwrap();
    }
    let mut want = vec![(BOOTSTRAP_ID, 0)];
    want.extend(others.iter().map(|m| (m.id(), 0)));
    wait_for_cluster(&certs, &first, &want);
    shell(&certs, &first, "CREATE TABLE t (n INT)", 10).unwrap();
    shell(&certs, &first, "INSERT INTO t VALUES (1)", 10).unwrap();

    // kill -9 of the leader (the daemon): the two children elect a new leader and accept
    // writes; the daemon restarts from disk, same id, and rejoins.
    let mut child = daemon.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let survivor = others[0].bind.clone();
    eventually(
        "a write through the survivors",
        Duration::from_secs(40),
        || shell(&certs, &survivor, "INSERT INTO t VALUES (2)", 5),
    );
    daemon.spawn(&[]);
    daemon.wait_healthy();
    wait_for_cluster(&certs, &first, &want);

    // kill -9 of a joined member: it restarts from its directory (no join, no bootstrap)
    // with the id in its info.yaml, and is a voter that knows the leader again.
    let id = others[1].id();
    others[1].kill9();
    shell(&certs, &first, "INSERT INTO t VALUES (3)", 10).unwrap();
    others[1].spawn(None);
    rt.block_on(serving(&others[1].bind, &tls));
    assert_eq!(others[1].id(), id);
    wait_for_cluster(&certs, &others[1].bind, &want);
    let rows = shell(&certs, &others[1].bind, "SELECT MAX(n) FROM t", 10).unwrap();
    assert!(rows.contains('3'), "{rows}");

    let (status, _) = daemon.terminate();
    assert!(status.success());
    for m in &mut others {
        drop(m.child.as_mut().unwrap().stdin.take());
        let child = m.child.as_mut().unwrap();
        let status = eventually("member exit", Duration::from_secs(10), || {
            child.try_wait().unwrap()
        });
        assert!(status.success(), "{status}");
        m.child = None;
    }
}
