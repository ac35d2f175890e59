//! Launch configurations end to end: `cluster-agent init` as the snap's hooks run it, the
//! daemon's watcher, persistent tokens, and the snap group's ownership of shared files.
//! The snap's own commands (`$SNAP/microk8s-*.wrapper`, `snapctl`) are stand-ins that log
//! their argv, so each test sees exactly what the agent asked of the snap.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A stand-in snap: `$SNAP` with the addon wrappers, `$SNAP_COMMON`, a `snapctl` on PATH;
/// every call is a line in `calls.log`.
struct FakeSnap {
    _dir: tempfile::TempDir,
    snap: PathBuf,
    common: PathBuf,
    log: PathBuf,
    path: String,
}

impl FakeSnap {
    fn new() -> FakeSnap {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap");
        let common = dir.path().join("common");
        let bin = dir.path().join("bin");
        let log = dir.path().join("calls.log");
        for d in [&snap, &common.join("etc/launcher"), &bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        let logger = format!(
            "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> '{}'\n",
            log.display()
        );
        for script in [
            snap.join("microk8s-enable.wrapper"),
            snap.join("microk8s-disable.wrapper"),
            snap.join("microk8s-addons.wrapper"),
            bin.join("snapctl"),
        ] {
            std::fs::write(&script, &logger).unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        FakeSnap {
            _dir: dir,
            snap,
            common,
            log,
            path,
        }
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(&self.log);
    }

    /// `cluster-agent --state-dir <state> init <args…>` with this snap's environment and
    /// `config` on standard input when `-c -` is among the args.
    fn init(&self, state: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--state-dir")
            .arg(state)
            .arg("init")
            .args(args)
            .env_remove("SNAP_DATA")
            .env("SNAP", &self.snap)
            .env("SNAP_COMMON", &self.common)
            .env("PATH", &self.path)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }
}

/// A state directory as the snap's install hook leaves it when it calls `init`: default
/// args, the stock csr template, an empty credentials directory.
fn install_time_state(root: &Path) {
    std::fs::create_dir_all(root.join("args")).unwrap();
    std::fs::create_dir_all(root.join("credentials")).unwrap();
    std::fs::create_dir_all(root.join("certs")).unwrap();
    std::fs::write(
        root.join("args/kubelet"),
        "--kubeconfig=${SNAP_DATA}/credentials/kubelet.config\n--cluster-domain=cluster.local\n--event-ttl 5m\n",
    )
    .unwrap();
    std::fs::write(
        root.join("args/kube-apiserver"),
        "--secure-port=16443\n--event-ttl=5m\n",
    )
    .unwrap();
    std::fs::write(root.join("certs/csr.conf.template"), "stock template\n").unwrap();
}

const TOKEN: &str = "launch-persistent-token-0123456789";

fn full_config() -> String {
    format!(
        r#"---
version: 0.2.0
persistentClusterToken: {TOKEN}
extraSANs:
  - 10.10.10.10
  - microk8s.example.com
extraKubeAPIServerArgs:
  --authorization-mode: RBAC,Node
  --event-ttl: null
extraKubeletArgs:
  --cluster-dns: 10.152.183.10
extraKubeProxyArgs:
  --cluster-cidr: 10.1.0.0/16
extraKubeControllerManagerArgs:
  --leader-elect-lease-duration: 30s
extraKubeSchedulerArgs:
  --leader-elect-renew-deadline: 15s
extraKubeliteEnv:
  GOMAXPROCS: 2
extraContainerdArgs:
  -l: debug
extraContainerdEnv:
  http_proxy: http://squid.internal:3128
extraDqliteArgs:
  --disk-mode: "true"
extraDqliteEnv:
  LIBRAFT_TRACE: "1"
extraMicroK8sClusterAgentArgs:
  --timeout: 300
extraMicroK8sClusterAgentEnv:
  RUST_LOG: debug
extraMicroK8sAPIServerProxyArgs:
  --refresh-interval: 15s
extraMicroK8sAPIServerProxyEnv:
  GOFIPS: 0
extraEtcdArgs:
  --data-dir: /var/etcd
extraEtcdEnv:
  ETCD_DEBUG: 1
extraFlanneldArgs:
  --iface: eth1
extraFlanneldEnv:
  FLANNEL_MTU: 1400
extraCNIEnv:
  IPv4_SUPPORT: true
  IPv4_CLUSTER_CIDR: 10.2.0.0/16
extraFIPSEnv:
  GOFIPS: 1
extraConfigFiles:
  flannel-network-mgr-config: |
    {{"Network": "10.1.0.0/16", "Backend": {{"Type": "vxlan"}}}}
addons:
  - name: dns
  - name: mayastor
    args: [--default-pool-size, 20GB]
  - name: registry
    disable: true
addonRepositories:
  - name: community
    url: /snap/microk8s/current/addons/community
    reference: 1.26
containerdRegistryConfigs:
  docker.io: server = "http://my.proxy:5000"
"#
    )
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn every_field_is_applied_and_applying_again_changes_nothing() {
    let snap = FakeSnap::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    install_time_state(root);
    let config = root.join("launch.yaml");
    std::fs::write(&config, full_config()).unwrap();
    let config = config.to_str().unwrap();

    let out = snap.init(root, &["-c", config, "--service-manager", "snap"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    assert_eq!(
        read(root, "args/kube-apiserver"),
        "--secure-port=16443\n--authorization-mode=RBAC,Node\n",
        "a null value removes the flag"
    );
    assert_eq!(
        read(root, "args/kubelet"),
        "--kubeconfig=${SNAP_DATA}/credentials/kubelet.config\n--cluster-domain=cluster.local\n--event-ttl 5m\n--cluster-dns=10.152.183.10\n"
    );
    for (file, line) in [
        ("args/kube-proxy", "--cluster-cidr=10.1.0.0/16"),
        (
            "args/kube-controller-manager",
            "--leader-elect-lease-duration=30s",
        ),
        ("args/kube-scheduler", "--leader-elect-renew-deadline=15s"),
        ("args/kubelite-env", "GOMAXPROCS=2"),
        ("args/containerd", "-l=debug"),
        (
            "args/containerd-env",
            "http_proxy=http://squid.internal:3128",
        ),
        ("args/k8s-dqlite", "--disk-mode=true"),
        ("args/k8s-dqlite-env", "LIBRAFT_TRACE=1"),
        ("args/cluster-agent", "--timeout=300"),
        ("args/cluster-agent-env", "RUST_LOG=debug"),
        ("args/apiserver-proxy", "--refresh-interval=15s"),
        ("args/apiserver-proxy-env", "GOFIPS=0"),
        ("args/etcd", "--data-dir=/var/etcd"),
        ("args/etcd-env", "ETCD_DEBUG=1"),
        ("args/flanneld", "--iface=eth1"),
        ("args/flanneld-env", "FLANNEL_MTU=1400"),
        (
            "args/cni-env",
            "IPv4_SUPPORT=true\nIPv4_CLUSTER_CIDR=10.2.0.0/16",
        ),
        ("args/fips-env", "GOFIPS=1"),
    ] {
        assert_eq!(read(root, file), format!("{line}\n"), "{file}");
    }
    assert_eq!(
        read(root, "args/flannel-network-mgr-config"),
        "{\"Network\": \"10.1.0.0/16\", \"Backend\": {\"Type\": \"vxlan\"}}\n"
    );
    assert_eq!(
        read(root, "args/certs.d/docker.io/hosts.toml"),
        "server = \"http://my.proxy:5000\""
    );
    let csr = read(root, "certs/csr.conf.template");
    assert!(csr.contains("DNS.6 = microk8s.example.com\n"), "{csr}");
    assert!(csr.contains("IP.3 = 10.10.10.10\n#MOREIPS\n"), "{csr}");
    assert_eq!(
        read(root, "credentials/persistent-cluster-tokens.txt"),
        format!("{TOKEN}\n")
    );

    let calls = snap.calls();
    assert_eq!(
        calls[..4],
        [
            "microk8s-addons.wrapper repo add community /snap/microk8s/current/addons/community --reference 1.26 --force",
            "microk8s-enable.wrapper dns",
            "microk8s-enable.wrapper mayastor --default-pool-size 20GB",
            "microk8s-disable.wrapper registry",
        ]
    );
    let mut restarts: Vec<&str> = calls[4..].iter().map(String::as_str).collect();
    assert_eq!(
        restarts.pop(),
        Some("snapctl restart microk8s.daemon-cluster-agent"),
        "the agent restarts itself last"
    );
    restarts.sort();
    assert_eq!(
        restarts,
        [
            "snapctl restart microk8s.daemon-apiserver-proxy",
            "snapctl restart microk8s.daemon-containerd",
            "snapctl restart microk8s.daemon-etcd",
            "snapctl restart microk8s.daemon-flanneld",
            "snapctl restart microk8s.daemon-k8s-dqlite",
            "snapctl restart microk8s.daemon-kubelite",
        ],
        "each service once"
    );

    // The same file again: addons are asked for again (the snap's commands are idempotent),
    // but no file changes and nothing restarts.
    let before = snapshot(root);
    snap.clear_calls();
    let out = snap.init(root, &["-c", config, "--service-manager", "snap"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(snapshot(root), before);
    assert!(
        snap.calls().iter().all(|c| !c.starts_with("snapctl")),
        "{:?}",
        snap.calls()
    );
    assert!(
        text(&out.stdout).contains("0 file(s) written"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn pre_init_writes_the_files_and_nothing_else() {
    let snap = FakeSnap::new();
    let dir = tempfile::tempdir().unwrap();
    install_time_state(dir.path());
    let out = snap.init(
        dir.path(),
        &["--pre-init", "-c", "-", "--service-manager", "snap"],
        Some(&full_config()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(read(dir.path(), "args/fips-env"), "GOFIPS=1\n");
    assert!(read(dir.path(), "certs/csr.conf.template").contains("10.10.10.10"));
    assert_eq!(snap.calls(), Vec::<String>::new(), "no addons, no restarts");
}

#[test]
fn the_install_hooks_command_line_applies_before_the_node_exists() {
    let snap = FakeSnap::new();
    let data = tempfile::tempdir().unwrap();
    install_time_state(data.path());
    std::fs::create_dir_all(snap.snap.join("bin")).unwrap();
    std::os::unix::fs::symlink(BIN, snap.snap.join("bin/cluster-agent")).unwrap();
    std::fs::write(
        snap.common.join("etc/launcher/install.yaml"),
        "version: 0.1.0\nextraKubeletArgs:\n  --max-pods: \"250\"\npersistentClusterToken: launch-persistent-token-0123456789\n",
    )
    .unwrap();
    // As the install hook has it, under `set -e`.
    let hook = r#"set -eux
"${SNAP}/bin/cluster-agent" init --pre-init --config-file "${SNAP_COMMON}/etc/launcher/install.yaml""#;
    let out = Command::new("bash")
        .args(["-c", hook])
        .env("SNAP", &snap.snap)
        .env("SNAP_DATA", data.path())
        .env("SNAP_COMMON", &snap.common)
        .env("PATH", &snap.path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(read(data.path(), "args/kubelet").ends_with("--max-pods=250\n"));
    assert_eq!(
        read(data.path(), "credentials/persistent-cluster-tokens.txt"),
        "launch-persistent-token-0123456789\n"
    );
    assert!(snap.calls().is_empty(), "{:?}", snap.calls());
}

#[test]
fn bad_files_are_refused_and_change_nothing() {
    let snap = FakeSnap::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    install_time_state(&root);
    let good = "version: 0.1.0\nextraKubeletArgs:\n  --v: \"2\"\n";
    let cases: Vec<(String, &str)> = vec![
        ("[ test".into(), "not a valid launch configuration"),
        ("version: 0.3.0\n".into(), "version: 0.3.0 is not supported"),
        ("version: 0.0.1\n".into(), "not supported"),
        ("version: not semantic\n".into(), "not a semantic version"),
        (
            "extraKubeletArgs:\n  --v: \"2\"\n".into(),
            "version: missing",
        ),
        ("version: 0.1.0\naddons: [dns, rbac]\n".into(), "addons"),
        (
            format!("{good}---\nversion: 0.1.0\nextraConfigFiles:\n  ../escape: x\n"),
            "part 2, extraConfigFiles.../escape",
        ),
        (
            format!("{good}---\nversion: 0.1.0\nextraConfigFiles:\n  sub/file: x\n"),
            "plain file name",
        ),
        (
            format!("{good}extraKubeAPIServerArgs:\n  --x: \"a\\n--privileged=true\"\n"),
            "extraKubeAPIServerArgs.--x: must be one line",
        ),
        (
            format!("{good}containerdRegistryConfigs:\n  ../../../etc: x\n"),
            "is not a registry host[:port]",
        ),
        (
            format!("{good}containerdRegistryConfigs:\n  \"docker.io:http\": x\n"),
            "is not a registry host[:port]",
        ),
        (
            format!("{good}persistentClusterToken: short\n"),
            "too short",
        ),
        (
            format!("{good}join:\n  url: not-a-join-string\n"),
            "join.url",
        ),
    ];
    let before = snapshot(&root);
    for (config, says) in cases {
        let out = snap.init(
            &root,
            &["-c", "-", "--service-manager", "snap"],
            Some(&config),
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{config:?}: {}",
            text(&out.stdout)
        );
        let err = text(&out.stderr);
        assert!(err.contains(says), "{config:?}: {err}");
        assert!(err.contains("nothing was changed"), "{config:?}: {err}");
        assert_eq!(
            snapshot(&root),
            before,
            "{config:?} changed the state directory"
        );
    }
    // Addons with no snap to run them, and a join with no daemon to do it: refused up front.
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(&root)
        .args(["init", "-c", "-"])
        .env_remove("SNAP")
        .env_remove("SNAP_DATA")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{good}addons:\n  - name: dns\n").as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("needs the MicroK8s snap"),
        "{}",
        text(&out.stderr)
    );
    let join = format!(
        "{good}join:\n  url: 127.0.0.1:25000/0123456789abcdef0123456789abcdef/a1b2c3d4e5f6a7b8\n"
    );
    let out = snap.init(&root, &["-c", "-"], Some(&join));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("needs the cluster-agent daemon running"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(snapshot(&root), before);
    assert!(snap.calls().is_empty(), "{:?}", snap.calls());
}

#[test]
fn the_watcher_applies_in_name_order_renames_and_logs_a_bad_file_once() {
    let snap = FakeSnap::new();
    let launcher = snap.common.join("etc/launcher");
    std::fs::write(
        launcher.join("10-args.yaml"),
        "version: 0.1.0\nextraKubeletArgs:\n  --v: \"3\"\nextraMicroK8sClusterAgentArgs:\n  --enable-metrics: \"true\"\n",
    )
    .unwrap();
    std::fs::write(launcher.join("20-bad.yaml"), "version: 9.9.9\n").unwrap();
    std::fs::write(
        launcher.join("30-later.yaml"),
        "version: 0.1.0\nextraKubeletArgs:\n  --v: \"4\"\n",
    )
    .unwrap();
    std::fs::write(launcher.join("notes.txt"), "not a launch configuration").unwrap();
    let common = snap.common.display().to_string();
    let node = Node::start_with_env(
        &[
            "--service-manager",
            "snap",
            "--launch-configurations-interval",
            "1s",
        ],
        &[
            ("SNAP_COMMON", common.as_str()),
            ("PATH", snap.path.as_str()),
        ],
    );
    eventually("both good files applied", Duration::from_secs(30), || {
        (launcher.join("10-args.yaml.applied").exists()
            && launcher.join("30-later.yaml.applied").exists())
        .then_some(())
    });
    // In name order: the later file's value won.
    assert!(read(&node.state, "args/kubelet").contains("--v=4\n"));
    assert!(read(&node.state, "args/cluster-agent").contains("--enable-metrics=true\n"));
    assert!(launcher.join("20-bad.yaml").exists() && launcher.join("notes.txt").exists());
    let calls = snap.calls();
    assert!(
        calls.contains(&"snapctl restart microk8s.daemon-kubelite".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"snapctl restart microk8s.daemon-cluster-agent".to_string()),
        "{calls:?}"
    );

    // A new file is picked up on a later scan (every 5 s at least); the bad one was
    // reported once, not at every scan.
    std::fs::write(
        launcher.join("40-new.yaml"),
        "version: 0.1.0\nextraCNIEnv:\n  X: \"1\"\n",
    )
    .unwrap();
    eventually("the new file applied", Duration::from_secs(30), || {
        launcher.join("40-new.yaml.applied").exists().then_some(())
    });
    assert_eq!(read(&node.state, "args/cni-env"), "X=1\n");
    let log = node.log_text();
    assert_eq!(log.matches("20-bad.yaml").count(), 1, "{log}");
    assert!(log.contains("9.9.9 is not supported"), "{log}");
}

#[test]
fn a_persistent_token_joins_two_nodes_and_is_never_consumed() {
    let snap = FakeSnap::new();
    let a = Node::start();
    let out = snap.init(
        &a.state,
        &["-c", "-"],
        Some(&format!(
            "version: 0.2.0\npersistentClusterToken: {TOKEN}\n"
        )),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tokens_before = read(&a.state, "credentials/persistent-cluster-tokens.txt");
    let fingerprint = join_url(&a).rsplit('/').next().unwrap().to_string();
    let url = format!("{}/{TOKEN}/{fingerprint}", a.bind());

    // One joins through `init`'s join section (the CLI asks its daemon) …
    let b = Node::start();
    let out = snap.init(
        &b.state,
        &["-c", "-"],
        Some(&format!("version: 0.2.0\njoin:\n  url: {url}\n")),
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // … the other through its daemon's watcher, as a worker.
    let c_snap = FakeSnap::new();
    std::fs::write(
        c_snap.common.join("etc/launcher/join.yaml"),
        format!("version: 0.2.0\njoin:\n  url: {url}\n  worker: true\n"),
    )
    .unwrap();
    let common = c_snap.common.display().to_string();
    let c = Node::start_with_env(&[], &[("SNAP_COMMON", common.as_str())]);
    eventually("the watcher's join", Duration::from_secs(60), || {
        c_snap
            .common
            .join("etc/launcher/join.yaml.applied")
            .exists()
            .then_some(())
    });
    assert!(
        c.state.join("var/lock/clustered.lock").exists(),
        "{}",
        c.log_text()
    );
    let status = a.status_json().unwrap();
    assert_eq!(members(&status).len(), 2, "{status}");
    assert_eq!(
        read(&a.state, "credentials/persistent-cluster-tokens.txt"),
        tokens_before,
        "a persistent token is never consumed"
    );
}

/// A copy of this machine's /etc/group with a `microk8s` group, for a mount namespace.
fn group_file(dir: &Path, gid: u32) -> PathBuf {
    let host = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let mut text: String = host
        .lines()
        .filter(|l| !l.starts_with("microk8s:"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("microk8s:x:{gid}:\n"));
    let path = dir.join("group");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the rest of its argv with `$GROUP_FILE` mounted over /etc/group, in a mount
/// namespace of its own (the machine's /etc/group is untouched).
const IN_GROUP_NAMESPACE: [&str; 7] = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    r#"mount --bind "$GROUP_FILE" /etc/group && exec "$@""#,
];

fn gid_and_mode(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.gid(), meta.permissions().mode() & 0o777)
}

#[test]
fn shared_files_belong_to_the_snap_group_from_creation() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: a mount namespace and chgrp to a foreign group need root");
        return;
    }
    let gid = 4242;
    let groups = tempfile::tempdir().unwrap();
    let group = group_file(groups.path(), gid);
    let group = group.to_str().unwrap();
    let mut wrapper: Vec<&str> = IN_GROUP_NAMESPACE.to_vec();
    wrapper.push("sh");
    let a = {
        let mut node = Node::launch_through(
            &wrapper,
            unique_loopback(),
            tempfile::tempdir().unwrap(),
            &[],
            &[("GROUP_FILE", group)],
        );
        node.wait_healthy();
        node
    };
    for file in [
        "certs/ca.key",
        "certs/ca.crt",
        "certs/server.key",
        "credentials/callback-token.txt",
    ] {
        assert_eq!(gid_and_mode(&a.state.join(file)), (gid, 0o660), "{file}");
    }
    add_node(&a, "token");
    let tokens = a.state.join("credentials/cluster-tokens.txt");
    assert_eq!(gid_and_mode(&tokens), (gid, 0o660));

    // Consuming the token rewrites the file: it keeps its group and mode.
    let b = Node::start();
    join(&a, &b, &[]);
    assert_eq!(gid_and_mode(&tokens), (gid, 0o660));

    // `init` run by the snap's hook in the same setting.
    let mut init = Command::new(IN_GROUP_NAMESPACE[0]);
    init.args(&IN_GROUP_NAMESPACE[1..])
        .arg("sh")
        .arg(BIN)
        .arg("--state-dir")
        .arg(&a.state)
        .args(["init", "-c", "-"])
        .env("GROUP_FILE", group)
        .env_remove("SNAP")
        .env_remove("SNAP_DATA")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = init.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("version: 0.1.0\npersistentClusterToken: {TOKEN}\n").as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        gid_and_mode(&a.state.join("credentials/persistent-cluster-tokens.txt")),
        (gid, 0o660)
    );
    // Without the group (the machine's own /etc/group): private, root's.
    let c = Node::start();
    assert_eq!(gid_and_mode(&c.state.join("certs/ca.key")), (0, 0o600));
}

#[test]
fn the_watcher_tries_a_failed_apply_again_and_logs_it_once() {
    let snap = FakeSnap::new();
    // The first `enable` fails (the addon's images are not pulled yet, say); later ones work.
    let enable = snap.snap.join("microk8s-enable.wrapper");
    let marker = snap.snap.join("failed-once");
    std::fs::write(
        &enable,
        format!(
            "#!/bin/sh\necho \"enable $*\" >> '{log}'\nif [ ! -e '{m}' ]; then touch '{m}'; echo 'not yet' >&2; exit 1; fi\n",
            log = snap.log.display(),
            m = marker.display()
        ),
    )
    .unwrap();
    let launcher = snap.common.join("etc/launcher");
    std::fs::write(
        launcher.join("addons.yaml"),
        "version: 0.1.0\naddons:\n  - name: dns\nextraKubeletArgs:\n  --v: \"2\"\n",
    )
    .unwrap();
    let common = snap.common.display().to_string();
    let snap_dir = snap.snap.display().to_string();
    let node = Node::start_with_env(
        &[],
        &[
            ("SNAP_COMMON", common.as_str()),
            ("SNAP", snap_dir.as_str()),
        ],
    );
    eventually("the retried apply", Duration::from_secs(60), || {
        launcher.join("addons.yaml.applied").exists().then_some(())
    });
    assert_eq!(snap.calls(), ["enable dns", "enable dns"]);
    assert!(read(&node.state, "args/kubelet").contains("--v=2\n"));
    let log = node.log_text();
    assert_eq!(
        log.matches("launch configuration not applied").count(),
        1,
        "{log}"
    );
}
