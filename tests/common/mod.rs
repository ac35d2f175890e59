//! Helpers for end-to-end tests: real `cluster-agent` processes on distinct loopback
//! addresses, each with its own state directory, and polling with deadlines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod dqlite_shell;
pub mod netns;

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

    fn launch(ip: Ipv4Addr, dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Node {
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
        };
        node.spawn(extra);
        node
    }

    pub fn bind(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn spawn(&mut self, extra: &[&str]) {
        self.log = self.state.join("daemon.log");
        let log = std::fs::File::create(&self.log).unwrap();
        let mut args = vec![
            "daemon".to_string(),
            "--state-dir".into(),
            self.state.display().to_string(),
            "--bind".into(),
            self.bind(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = agent(&args)
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
            (resp.status() == 200).then_some(())
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

    /// `status --format json` through this node's control socket; `None` if it fails.
    pub fn status_json(&self) -> Option<serde_json::Value> {
        let out = run_cli(
            &[
                "--state-dir",
                self.state.to_str()?,
                "status",
                "--format",
                "json",
            ],
            &[],
        );
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
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

/// Runs the binary to completion with a timeout.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut cmd = agent(&args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    eventually("command to finish", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    child.wait_with_output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
