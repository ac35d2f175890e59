//! Helpers for end-to-end tests: real `cluster-agent` processes on distinct loopback
//! addresses, each with its own state directory, the CLI run against one of them, clusters
//! formed with `add-node`/`join`, snapshots of a state directory, and polling with deadlines.
//! Suites include it with `mod common;`, benches with `#[path = "../tests/common/mod.rs"]`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod dqlite_shell;
pub mod k8s_dqlite;
pub mod netns;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cluster-agent");

/// A loopback address no other test in any concurrently running test binary uses: the second
/// octet comes from the process id, the last two from a counter.
pub fn unique_loopback() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let a = 10 + (std::process::id() % 200) as u8;
    Ipv4Addr::new(127, a, (n / 250) as u8, (n % 250 + 2) as u8)
}

/// The agent binary with a clean snap environment and no stdin (outside a snap, whatever the
/// calling shell exports).
pub fn agent(args: &[String]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SNAP_DATA")
        .env_remove("SNAP")
        .stdin(Stdio::null());
    cmd
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub fn eventually<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon process; killed on drop.
pub struct Node {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub state: PathBuf,
    _dir: Option<tempfile::TempDir>,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Extra environment for the daemon process (e.g. a PATH with stand-in tools).
    pub env: Vec<(String, String)>,
    /// The extra flags it was started with; [`Node::restart`] starts it with them again.
    pub flags: Vec<String>,
    /// A program (and its arguments) the daemon is started through, which ends by exec'ing
    /// the agent's argv it is given (e.g. entering a mount namespace); empty: none.
    pub wrapper: Vec<String>,
}

impl Node {
    /// Starts a daemon on a fresh loopback address and state directory and waits for /health.
    pub fn start() -> Node {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Node {
        Self::start_with_env(extra, &[])
    }

    /// Like [`Node::start_with`], with extra environment variables for the daemon.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Self::launch(unique_loopback(), dir, extra, env);
        node.wait_healthy();
        node
    }

    /// A node on a given address (a rebuilt machine keeps its IP); call `wait_healthy`.
    pub fn start_at(ip: Ipv4Addr, dir: tempfile::TempDir) -> Node {
        Self::start_at_with(ip, dir, &[])
    }

    pub fn start_at_with(ip: Ipv4Addr, dir: tempfile::TempDir, extra: &[&str]) -> Node {
        Self::launch(ip, dir, extra, &[])
    }

    pub fn launch(
        ip: Ipv4Addr,
        dir: tempfile::TempDir,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        Self::launch_through(&[], ip, dir, extra, env)
    }

    /// [`Node::launch`] with the daemon started through `wrapper` (see [`Node::wrapper`]).
    pub fn launch_through(
        wrapper: &[&str],
        ip: Ipv4Addr,
        dir: tempfile::TempDir,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let state = dir.path().to_path_buf();
        let mut node = Node {
            ip,
            port: 25000,
            state,
            _dir: Some(dir),
            child: None,
            log: PathBuf::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: extra.iter().map(|s| s.to_string()).collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        node.spawn(&[]);
        node
    }

    pub fn bind(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The dqlite backend directory (`var/kubernetes/backend`).
    pub fn backend(&self) -> PathBuf {
        self.state.join("var/kubernetes/backend")
    }

    /// Starts the daemon with the node's flags and `extra`.
    pub fn spawn(&mut self, extra: &[&str]) {
        self.log = self.state.join("daemon.log");
        // Appended: a restarted daemon's log follows the one before it.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut args = vec![
            "daemon".to_string(),
            "--state-dir".into(),
            self.state.display().to_string(),
            "--bind".into(),
            self.bind(),
        ];
        args.extend(self.flags.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut command = agent(&args);
        if let Some((program, wrapper_args)) = self.wrapper.split_first() {
            let mut wrapped = Command::new(program);
            wrapped
                .args(wrapper_args)
                .arg(BIN)
                .args(&args)
                .env_remove("SNAP_DATA")
                .env_remove("SNAP")
                .stdin(Stdio::null());
            command = wrapped;
        }
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn wait_healthy(&mut self) {
        let url = format!("https://{}/health", self.bind());
        let log = self.log.clone();
        let state = self.state.clone();
        let child = self.child.as_mut().unwrap();
        eventually("daemon /health", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "daemon exited with {status} before serving:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            // The daemon creates the CA on first start: build the client once it exists.
            if !state.join("certs/ca.crt").exists() {
                return None;
            }
            let resp = https_client(&state).get(&url).send().ok()?;
            // Serving: healthy, or saying why not (a member that cannot write, or one the
            // cluster no longer lists, answers 503 "degraded").
            let serving = resp.status() == 200
                || (resp.status() == 503 && resp.text().is_ok_and(|t| t.contains("degraded")));
            serving.then_some(())
        });
    }

    /// Sends SIGTERM and waits for exit; returns the status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = eventually("daemon exit", Duration::from_secs(10), || {
            child.try_wait().unwrap()
        });
        self.child = None;
        (status, start.elapsed())
    }

    /// Starts the daemon again on the same address, state directory and flags (stopping it
    /// first if it still runs) and waits for /health.
    pub fn restart(&mut self) {
        // A daemon still running is stopped first: two on one address would race, and the
        // old one's /health could answer for the new.
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if running {
            self.terminate();
        }
        self.spawn(&[]);
        self.wait_healthy();
    }

    /// `status --format json` through this node's control socket; `None` if no daemon
    /// answered. A degraded (exit 3) or unavailable (exit 4) datastore still prints the
    /// report; its `condition` says which.
    pub fn status_json(&self) -> Option<serde_json::Value> {
        let out = cli(self, &["status", "--format", "json"]);
        if !matches!(out.status.code(), Some(0 | 3 | 4)) {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9: the daemon dies without shutting down, as a crashed machine would.
    pub fn kill(&mut self) {
        kill9(&mut self.child);
    }
}

/// SIGTERM to every node at the same moment (a power cut with systemd, `snap stop` on every
/// machine), then waits for each to exit. Returns each node's exit status and how long it took
/// from the signal.
pub fn stop_all(nodes: &mut [&mut Node]) -> Vec<(std::process::ExitStatus, Duration)> {
    let start = Instant::now();
    for node in nodes.iter() {
        let pid = node.child.as_ref().expect("the daemon is running").id();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    nodes
        .iter_mut()
        .map(|node| {
            let child = node.child.as_mut().unwrap();
            let status = eventually("daemon exit", Duration::from_secs(30), || {
                child.try_wait().unwrap()
            });
            node.child = None;
            (status, start.elapsed())
        })
        .collect()
}

/// kill -9 and reap the running process in `child`, leaving `None`.
pub fn kill9(child: &mut Option<Child>) {
    let mut child = child.take().expect("the process is running");
    child.kill().unwrap();
    child.wait().unwrap();
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A blocking HTTPS client that trusts exactly the state directory's CA.
pub fn https_client(state: &Path) -> reqwest::blocking::Client {
    let mut builder = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_built_in_root_certs(false);
    if let Ok(ca) = std::fs::read(state.join("certs/ca.crt")) {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
    }
    builder.build().unwrap()
}

/// Runs the binary to completion, for at most 30 s. It returns as soon as the command exits,
/// so a time measured around it is the command's own (benches do).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut cmd = agent(&args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let limit = Duration::from_secs(30);
    match finished.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("timed out after {limit:?} waiting for command to finish"),
    }
}

/// `cluster-agent --state-dir <state> <args…>` (see [`run_cli`]): the CLI of the node whose
/// state directory is `state`, running or not.
pub fn cli_in(state: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--state-dir", state.to_str().unwrap()];
    all.extend_from_slice(args);
    run_cli(&all, &[])
}

/// The CLI on `node`: `cluster-agent --state-dir <node.state> <args…>`.
pub fn cli(node: &Node, args: &[&str]) -> Output {
    cli_in(&node.state, args)
}

/// `add-node --format <format>` on `cp`: its standard output; fails the test unless it
/// succeeded.
pub fn add_node(cp: &Node, format: &str) -> String {
    let out = cli(cp, &["add-node", "--format", format]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// A fresh connection string `<address>/<token>/<fingerprint>` for joining `cp` (what
/// `add-node --format short` prints after `cluster-agent join `).
pub fn join_url(cp: &Node) -> String {
    add_node(cp, "short")
        .trim()
        .strip_prefix("cluster-agent join ")
        .unwrap()
        .to_string()
}

/// Joins `joiner` to the cluster of `cp` as an operator does: [`join_url`] on `cp`, then
/// `join <url> <extra…>` on `joiner` (e.g. `--worker`); fails the test unless both succeed.
pub fn join(cp: &Node, joiner: &Node, extra: &[&str]) {
    let url = join_url(cp);
    let mut args = vec!["join", url.as_str()];
    args.extend_from_slice(extra);
    let out = cli(joiner, &args);
    assert!(
        out.status.success(),
        "join failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The address of `node`'s embedded dqlite member (port 19001 on its IP, when it runs with
/// no `--dqlite-bind`).
pub fn dqlite_addr(node: &Node) -> String {
    format!("{}:19001", node.ip)
}

/// A CLI command on `node` running in the background.
pub fn cli_background(node: &Node, args: &[&str]) -> Child {
    let mut all = vec!["--state-dir".to_string(), node.state.display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    agent(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The output of a background command, once it ends (at most two minutes).
pub fn wait_output(child: Child) -> std::process::Output {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    finished
        .recv_timeout(Duration::from_secs(120))
        .expect("the command finished")
        .unwrap()
}

/// Waits until `node` (started with `CLUSTER_AGENT_TEST_HOLD=<point>`) holds at `point`.
pub fn wait_held(node: &Node, point: &str) {
    let file = node.state.join(format!("run/held-at-{point}"));
    eventually(
        &format!("the hold at {point}"),
        Duration::from_secs(60),
        || file.exists().then_some(()),
    );
}

/// Lets `node` go on from its hold at `point`.
pub fn release(node: &Node, point: &str) {
    std::fs::remove_file(node.state.join(format!("run/held-at-{point}"))).unwrap();
}

/// Control planes of one cluster, formed as operators form one: node 0 bootstraps it and
/// every other node joins node 0 in turn. The daemons are killed when it is dropped.
pub struct TestCluster {
    pub nodes: Vec<Node>,
}

impl TestCluster {
    /// `n` control planes started with no extra flags; returns once every join succeeded.
    pub fn start(n: usize) -> TestCluster {
        let none: [&str; 0] = [];
        Self::start_with(&vec![none; n])
    }

    /// One control plane per entry of `flags`, each daemon started with that entry's extra
    /// flags (e.g. `["--failure-domain", "2"]`); returns once every join succeeded.
    pub fn start_with<'a, F: AsRef<[&'a str]>>(flags: &[F]) -> TestCluster {
        let nodes: Vec<Node> = flags.iter().map(|f| Node::start_with(f.as_ref())).collect();
        for joiner in nodes.iter().skip(1) {
            join(&nodes[0], joiner, &[]);
        }
        TestCluster { nodes }
    }

    /// The nodes by value, for tests that name each one: `let [a, b, c] = cluster.into_nodes();`.
    pub fn into_nodes<const N: usize>(self) -> [Node; N] {
        let n = self.nodes.len();
        match self.nodes.try_into() {
            Ok(nodes) => nodes,
            Err(_) => panic!("the cluster has {n} nodes, not {N}"),
        }
    }
}

/// What a running daemon changes by itself, relative to its state directory: its control
/// socket and lock file (`run/`), the audit log (`var/log/`) and its own output
/// (`daemon.log`, see [`Node::spawn`]).
const CHANGED_BY_A_RUNNING_DAEMON: [&str; 3] = ["run", "var/log", "daemon.log"];

/// The content of every file under the state directory `root`, keyed by its path relative
/// to `root`, except [`CHANGED_BY_A_RUNNING_DAEMON`]: two snapshots are equal when nothing
/// but the daemon's own bookkeeping changed in between.
pub fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap();
            if CHANGED_BY_A_RUNNING_DAEMON
                .iter()
                .any(|skip| rel.starts_with(skip))
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                out.insert(rel.display().to_string(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `(address, role, reachable)` of every member in a `status --format json` answer, sorted.
pub fn members(status: &serde_json::Value) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = status["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["address"].as_str().unwrap_or("").to_string(),
                        m["role"].as_str().unwrap_or("").to_string(),
                        m["reachable"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Voters that answer, in a `status --format json` answer.
pub fn live_voters(status: &serde_json::Value) -> usize {
    members(status)
        .iter()
        .filter(|(_, r, ok)| r == "voter" && *ok)
        .count()
}

/// The raft leader's address in a `status --format json` answer, if one is known.
pub fn leader(status: &serde_json::Value) -> Option<String> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["leader"] == true)
        .and_then(|m| m["address"].as_str())
        .map(str::to_string)
}

/// Five control planes in failure domains 1, 1, 2, 2, 3, each on its own host of `lan`,
/// joined to the first; returns once it lists five members: three live voters and two
/// stand-bys.
pub fn five_control_planes_on(lan: &netns::Lan) -> Vec<Node> {
    let domains = ["1", "1", "2", "2", "3"];
    let mut nodes: Vec<Node> = Vec::new();
    for (i, domain) in domains.iter().enumerate() {
        let on = lan.on(i);
        let wrapper: Vec<&str> = on.iter().map(String::as_str).collect();
        let mut node = Node::launch_through(
            &wrapper,
            lan.host(i).ip,
            tempfile::tempdir().unwrap(),
            &["--failure-domain", domain],
            &[],
        );
        node.wait_healthy();
        nodes.push(node);
    }
    for i in 1..nodes.len() {
        join(&nodes[0], &nodes[i], &[]);
    }
    eventually(
        "three live voters and two stand-bys",
        Duration::from_secs(60),
        || {
            let s = nodes[0].status_json()?;
            let m = members(&s);
            let standbys = m.iter().filter(|(_, r, _)| r == "standby").count();
            (live_voters(&s) == 3 && standbys == 2 && m.len() == 5).then_some(())
        },
    );
    nodes
}

/// Serves `app` over TLS with the certificate pair in `dir` on `addr`, on `rt`, until the
/// runtime is dropped: a stand-in for kube-apiserver or a peer agent.
pub fn serve_tls(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    crt: &std::path::Path,
    key: &std::path::Path,
    app: axum::Router,
) {
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
    let serving = cluster_agent::cluster::serving::Serving::load(crt, key, None).unwrap();
    let tls = cluster_agent::pki::tls::server_config(
        serving.resolver(),
        cluster_agent::pki::tls::MinTls::Tls12,
    )
    .unwrap();
    rt.spawn(cluster_agent::api::https::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        app,
        std::future::pending(),
        std::time::Duration::from_secs(1),
    ));
}

/// A stand-in kube-apiserver on `node`'s address (port 16443, its own serving certificate),
/// which `credentials/client.config` is pointed at: it lists a Node `node-<i>` per address
/// of `ips` and records the names it is asked to delete.
pub fn fake_kubernetes(
    node: &Node,
    ips: &[String],
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::sync::{Arc, Mutex};
    let deleted: Arc<Mutex<Vec<String>>> = Arc::default();
    let items: Vec<serde_json::Value> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            serde_json::json!({
                "metadata": {"name": format!("node-{i}")},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
            })
        })
        .collect();
    let nodes = serde_json::json!({ "items": items });
    let record = deleted.clone();
    let app = axum::Router::new()
        .route(
            "/api/v1/nodes",
            axum::routing::get(move || async move { axum::Json(nodes) }),
        )
        .route(
            "/api/v1/nodes/{name}",
            axum::routing::delete(
                move |axum::extract::Path(name): axum::extract::Path<String>| async move {
                    record.lock().unwrap().push(name);
                    "{}"
                },
            ),
        );
    let rt = Box::leak(Box::new(tokio::runtime::Runtime::new().unwrap()));
    let api = std::net::SocketAddr::new(node.ip.into(), 16443);
    let certs = node.state.join("certs");
    serve_tls(
        rt,
        api,
        &certs.join("server.crt"),
        &certs.join("server.key"),
        app,
    );
    let config = node.state.join("credentials/client.config");
    let text_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_config.replace("https://127.0.0.1:16443", &format!("https://{api}")),
    )
    .unwrap();
    deleted
}

/// Fails the test unless `out` (a command run against `node`) succeeded, showing its output
/// and the daemon's log. Returns it.
pub fn succeeded(out: Output, node: &Node) -> Output {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        node.log_text()
    );
    out
}

/// `recover --yes` on `node`; fails the test unless it succeeded. Returns its output.
pub fn recover_ok(node: &Node) -> Output {
    succeeded(cli(node, &["recover", "--yes"]), node)
}

/// Fails the test unless `out` exited with `code` and said `what` (on either stream).
pub fn exited_saying(out: &Output, code: i32, what: &str) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(code), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(what) || stderr.contains(what),
        "wanted {what:?}:\n{stdout}\n{stderr}"
    );
}

/// The median of `v` (its upper middle for an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Indices of `count` members (by dqlite address, in the order of `addresses`) that hold at
/// most one vote between them in `report` (a status), none at `avoid`: with every other
/// member killed the quorum is lost, whoever the voters are. Greedy from the first.
pub fn one_vote_survivors(
    report: &serde_json::Value,
    addresses: &[String],
    count: usize,
    avoid: Option<&str>,
) -> Vec<usize> {
    let roles = members(report);
    let voter = |a: &str| roles.iter().any(|(m, r, _)| m == a && r == "voter");
    let mut keep: Vec<usize> = Vec::new();
    for (i, a) in addresses.iter().enumerate() {
        let votes = keep.iter().filter(|&&k| voter(&addresses[k])).count();
        if keep.len() < count && Some(a.as_str()) != avoid && !(voter(a) && votes > 0) {
            keep.push(i);
        }
    }
    keep
}
