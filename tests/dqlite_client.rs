//! Our dqlite client against real 3-member clusters run by Debian's `dqlite-demo`
//! (libdqlite 1.11.1, go-dqlite 1.11.5), cross-checked with Debian's `dqlite` shell.
//!
//! Each cluster uses its own loopback addresses (derived from the process id and a
//! counter), so no (bootstrap id, address) pair is reused within a run. Skipped, with a
//! message, when the go-dqlite binaries are not installed.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use cluster_agent::dqlite::client::connect;
use cluster_agent::dqlite::{Client, LeaderInfo, Metadata, NodeInfo, Options, Role};
use common::dqlite_shell::ShellNode;
use tokio::time::Instant;

const DEMO: &str = "/usr/bin/dqlite-demo";
const SHELL: &str = "/usr/bin/dqlite";
const DB_PORT: u16 = 29_001;
const API_PORT: u16 = 28_001;

fn tools_present() -> bool {
    for tool in [DEMO, SHELL] {
        if !Path::new(tool).exists() {
            eprintln!("SKIP: {tool} is not installed (Debian package go-dqlite); dqlite client tests not run");
            return false;
        }
    }
    true
}

/// 127.<pid-derived>.<pid-derived>.<counter>: distinct per member and per cluster.
fn member_ip(slot: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, (100 + pid % 100) as u8, (pid / 100 % 250) as u8, slot)
}

fn next_slot() -> u8 {
    static NEXT: AtomicU8 = AtomicU8::new(10);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// Polls `f` until it returns `Some`, or fails the test at the deadline.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct DemoNode {
    db: String,
    child: Option<Child>,
}

impl DemoNode {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        self.kill();
    }
}

struct DemoCluster {
    nodes: Vec<DemoNode>,
    dir: tempfile::TempDir,
}

impl DemoCluster {
    /// Starts the bootstrap member, waits until it leads, starts two joiners and waits
    /// until our client sees three voters.
    async fn start() -> DemoCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = DemoCluster {
            nodes: Vec::new(),
            dir,
        };
        cluster.spawn(None);
        let first = cluster.nodes[0].db.clone();
        eventually("bootstrap member to lead", Duration::from_secs(30), || {
            let first = first.clone();
            async move {
                let mut conn = connect(&first, None, Duration::from_secs(1)).await.ok()?;
                let leader = conn.leader(Duration::from_secs(1)).await.ok()??;
                (leader.address == first).then_some(())
            }
        })
        .await;
        cluster.spawn(Some(&first));
        cluster.spawn(Some(&first));
        let client = cluster.client(&[0]);
        eventually("three voters", Duration::from_secs(60), || async {
            let nodes = client.cluster().await.ok()?;
            (nodes.len() == 3 && nodes.iter().all(|n| n.role == Role::Voter)).then_some(())
        })
        .await;
        cluster
    }

    fn spawn(&mut self, join: Option<&str>) {
        let ip = member_ip(next_slot());
        let db = format!("{ip}:{DB_PORT}");
        let api = format!("{ip}:{API_PORT}");
        let log = std::fs::File::create(self.dir.path().join(format!("{ip}.log"))).unwrap();
        let mut cmd = Command::new(DEMO);
        cmd.args(["--api", &api, "--db", &db, "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(join) = join {
            cmd.args(["--join", join]);
        }
        let child = cmd.spawn().unwrap();
        self.nodes.push(DemoNode {
            db,
            child: Some(child),
        });
    }

    fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.db.clone()).collect()
    }

    fn client(&self, seeds: &[usize]) -> Client {
        let seeds: Vec<String> = seeds.iter().map(|i| self.nodes[*i].db.clone()).collect();
        Client::new(
            seeds,
            None,
            Options {
                call_timeout: Duration::from_secs(30),
                ..Options::default()
            },
        )
        .unwrap()
    }

    /// An address in this cluster's range where nothing runs (a member that is "down").
    fn unused_address() -> String {
        format!("{}:{DB_PORT}", member_ip(next_slot()))
    }
}

/// Runs the Debian shell with a hard timeout (it retries forever when it finds no leader).
async fn shell(servers: &[String], command: &str) -> Option<String> {
    let mut cmd = tokio::process::Command::new(SHELL);
    cmd.args(["-s", &servers.join(","), "-f", "json", "demo", command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .ok()?
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn shell_cluster(servers: &[String]) -> Option<Vec<NodeInfo>> {
    let text = shell(servers, ".cluster").await?;
    let nodes: Vec<ShellNode> = serde_json::from_str(&text).ok()?;
    nodes
        .into_iter()
        .map(|n| {
            Some(NodeInfo {
                id: n.id,
                address: n.address,
                role: Role::from_code(n.role).ok()?,
            })
        })
        .collect()
}

/// Polls until our client and the shell report the same configuration; returns it.
async fn agreed_cluster(client: &Client, servers: &[String]) -> Vec<NodeInfo> {
    eventually(
        "client and shell to agree on .cluster",
        Duration::from_secs(30),
        || async {
            let ours = client.cluster().await.ok()?;
            let theirs = shell_cluster(servers).await?;
            (ours == theirs).then_some(ours)
        },
    )
    .await
}

fn role_of(nodes: &[NodeInfo], id: u64) -> Option<Role> {
    nodes.iter().find(|n| n.id == id).map(|n| n.role)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_assign_remove_describe_weight_transfer() {
    if !tools_present() {
        return;
    }
    let cluster = DemoCluster::start().await;
    let all = cluster.addresses();
    let client = cluster.client(&[0, 1, 2]);

    let before = agreed_cluster(&client, &all).await;
    assert_eq!(before.len(), 3);

    // ADD as spare, a member that is not running (raft does not need it to be).
    let spare_id = 0x5eed_0000_0000_0001 ^ u64::from(std::process::id());
    let spare_addr = DemoCluster::unused_address();
    client
        .add(spare_id, &spare_addr, Role::Spare)
        .await
        .unwrap();
    let nodes = client.cluster().await.unwrap();
    assert!(nodes.contains(&NodeInfo {
        id: spare_id,
        address: spare_addr.clone(),
        role: Role::Spare
    }));
    assert_eq!(
        role_of(&agreed_cluster(&client, &all).await, spare_id),
        Some(Role::Spare)
    );

    // Duplicate id: a hard error from raft, not retried.
    let err = client
        .add(spare_id, &DemoCluster::unused_address(), Role::Spare)
        .await
        .unwrap_err();
    assert_eq!(err.failure_code(), Some(1), "{err}");

    // ASSIGN spare → stand-by (checked at once: dqlite-demo's own roles loop demotes offline
    // stand-bys again on its 30 s tick).
    client.assign(spare_id, Role::StandBy).await.unwrap();
    assert_eq!(
        role_of(&client.cluster().await.unwrap(), spare_id),
        Some(Role::StandBy)
    );

    // ADD straight to stand-by (ADD + ASSIGN).
    let standby_id = spare_id + 1;
    let standby_addr = DemoCluster::unused_address();
    client
        .add(standby_id, &standby_addr, Role::StandBy)
        .await
        .unwrap();
    assert_eq!(
        role_of(&client.cluster().await.unwrap(), standby_id),
        Some(Role::StandBy)
    );
    let five = agreed_cluster(&client, &all).await;
    assert_eq!(five.len(), 5);

    // REMOVE both; removing again is refused.
    client.remove(spare_id).await.unwrap();
    client.remove(standby_id).await.unwrap();
    let err = client.remove(standby_id).await.unwrap_err();
    assert_eq!(err.failure_code(), Some(1), "{err}");
    let after = agreed_cluster(&client, &all).await;
    assert_eq!(after, before);

    // DESCRIBE and WEIGHT are per node.
    for (i, address) in all.iter().enumerate() {
        let w = 10 + i as u64;
        client.weight(address, w).await.unwrap();
        assert_eq!(
            client.describe(address).await.unwrap(),
            Metadata {
                failure_domain: 0,
                weight: w
            }
        );
    }

    // TRANSFER to another voter; the client follows the new leader and the shell agrees.
    let old = client.leader().await.unwrap();
    let target = before.iter().find(|n| n.id != old.id).unwrap().clone();
    client.transfer(target.id).await.unwrap();
    let expected = LeaderInfo {
        id: target.id,
        address: target.address.clone(),
    };
    eventually(
        "the transfer target to lead",
        Duration::from_secs(30),
        || async { (client.leader().await.ok()? == expected).then_some(()) },
    )
    .await;
    eventually(
        "the shell to see the new leader",
        Duration::from_secs(30),
        || async { (shell(&all, ".leader").await? == target.address).then_some(()) },
    )
    .await;
    // Membership changes go to the new leader.
    client
        .add(spare_id + 2, &DemoCluster::unused_address(), Role::Spare)
        .await
        .unwrap();
    client.remove(spare_id + 2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_the_new_leader_after_the_leader_dies() {
    if !tools_present() {
        return;
    }
    let mut cluster = DemoCluster::start().await;
    // Seeded with the bootstrap member only: the others are learned from CLUSTER.
    let client = cluster.client(&[0]);
    let old = client.leader().await.unwrap();
    let dead = cluster
        .nodes
        .iter()
        .position(|n| n.db == old.address)
        .unwrap();
    cluster.nodes[dead].kill();
    let survivors: Vec<String> = cluster
        .addresses()
        .into_iter()
        .filter(|a| *a != old.address)
        .collect();

    let started = Instant::now();
    let new = eventually("a new leader", Duration::from_secs(60), || async {
        let l = client.leader().await.ok()?;
        (l.address != old.address).then_some(l)
    })
    .await;
    eprintln!(
        "new leader {} found {:?} after the kill",
        new.address,
        started.elapsed()
    );
    assert!(survivors.contains(&new.address));
    eventually(
        "the shell to agree on the leader",
        Duration::from_secs(30),
        || async { (shell(&survivors, ".leader").await? == new.address).then_some(()) },
    )
    .await;

    // The dead member is still in the configuration; changes work through the new leader.
    let nodes = client.cluster().await.unwrap();
    assert_eq!(nodes.len(), 3);
    let id = 0x5eed_0000_0001_0000 ^ u64::from(std::process::id());
    client
        .add(id, &DemoCluster::unused_address(), Role::Spare)
        .await
        .unwrap();
    client.remove(id).await.unwrap();
}

/// Our mutual-TLS server configuration accepts go-dqlite's TLS client (the Debian shell with
/// `-c/-k`), which picks its server name from the certificate's DNS SAN, and refuses the
/// shell without a certificate. The peer behind TLS is a scripted one-member cluster
/// ([`cluster_agent::dqlite::fake`], built with our codec; Debian's dqlite-demo has no TLS
/// flags); the embedded member host runs the same configuration in front of a real libdqlite
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_shell_accepts_our_tls_server_config() {
    use cluster_agent::dqlite::fake;

    if !tools_present() {
        return;
    }
    let pair = cluster_agent::pki::self_signed(&cluster_agent::pki::LeafSpec {
        common_name: "k8s".into(),
        dns_names: vec!["dqlite-test".into()],
        server: true,
        client: true,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (
        dir.path().join("cluster.crt"),
        dir.path().join("cluster.key"),
    );
    std::fs::write(&crt, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();

    let config = cluster_agent::dqlite::tls::load_server_config(&crt, &key).unwrap();
    let listener = tokio::net::TcpListener::bind((member_ip(next_slot()), 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap().to_string();
    fake::spawn_tls(listener, config, fake::leader_of_one_with_id(7, &address));

    let run = |tls: bool, limit: Duration| {
        let mut cmd = tokio::process::Command::new(SHELL);
        cmd.args(["-s", &address, "-f", "json"]);
        if tls {
            cmd.arg("-c").arg(&crt).arg("-k").arg(&key);
        }
        cmd.args(["demo", ".cluster"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        async move { tokio::time::timeout(limit, cmd.output()).await }
    };
    let out = run(true, Duration::from_secs(10))
        .await
        .expect("shell timed out")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes: Vec<ShellNode> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].id, nodes[0].address.as_str(), nodes[0].role),
        (7, address.as_str(), 0)
    );

    // Without a client certificate the shell never gets an answer (it retries forever).
    let refused = run(false, Duration::from_secs(3)).await;
    assert!(refused.is_err() || !refused.unwrap().unwrap().status.success());
}
