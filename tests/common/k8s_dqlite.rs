//! The external datastore as the snap runs it: a daemon with `--datastore external
//! --service-manager snap`, a `snapctl` on its PATH, and k8s-dqlite played by the Go fixture
//! in `tests/fixtures/k8s-dqlite` (the go-dqlite `app` layer k8s-dqlite hosts its member
//! with, on the same backend-directory conventions).
//!
//! The stand-in `snapctl` starts and stops the fixture for `microk8s.daemon-k8s-dqlite`
//! (not while `var/lock/no-k8s-dqlite` exists, as the snap's wrapper exits then), waits for
//! a stop as systemd does, and logs every call to `<state>/snapctl.log`. The fixture exits
//! by itself when the test process is gone, so a failed test leaves no member running.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::{eventually, unique_loopback, Node};

/// The fixture binary, built once per test binary (about 2 s). Panics with what to install
/// when Go or go-dqlite is missing: these tests are part of the suite, not optional.
pub fn fixture() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let out = tmp.join("k8s-dqlite-fixture");
        let building = tmp.join(format!("k8s-dqlite-fixture.{}", std::process::id()));
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k8s-dqlite/main.go");
        let gopath = tmp.join("gopath");
        std::fs::create_dir_all(&gopath).unwrap();
        let result = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&building)
            .arg(&source)
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
            .env("GOCACHE", tmp.join("go-cache"))
            .env("CGO_LDFLAGS_ALLOW", "-Wl,-z,now")
            .output();
        match result {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "building the k8s-dqlite fixture failed (install golang-go, golang-github-canonical-go-dqlite-dev and libdqlite-dev):\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!(
                "cannot run go to build the k8s-dqlite fixture ({e}); install golang-go, golang-github-canonical-go-dqlite-dev and libdqlite-dev"
            ),
        }
        // Renamed into place: test binaries running at once each see a whole binary.
        std::fs::rename(&building, &out).unwrap();
        out
    })
}

/// The daemon flags of a node inside the snap.
pub const SNAP_FLAGS: [&str; 4] = ["--datastore", "external", "--service-manager", "snap"];

/// The stand-in `snapctl` for the node with state directory `state`.
fn snapctl_script(state: &Path, name: &str) -> String {
    format!(
        r#"#!/bin/bash
# snapctl as the MicroK8s snap has it, for tests: k8s-dqlite is the go-dqlite fixture.
set -u
state={state}
echo "$*" >> "$state/snapctl.log"
[ "${{2:-}}" = microk8s.daemon-k8s-dqlite ] || exit 0
# One job at a time, as systemd runs a unit's jobs (a killed agent may leave one running).
exec 9> "$state/snapctl.lock"
flock 9
pidfile="$state/k8s-dqlite.pid"
# Running, not a zombie (nothing may reap the fixture here).
running() {{ s=$(awk '{{print $3}}' "/proc/$1/stat" 2>/dev/null); [ -n "$s" ] && [ "$s" != Z ]; }}
alive() {{ [ -f "$pidfile" ] && running "$(cat "$pidfile")"; }}
stop() {{
  if alive; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 150); do running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
}}
start() {{
  alive && return 0
  [ -e "$state/var/lock/no-k8s-dqlite" ] && return 0
  # Extra fixture flags a test wants (the snap keeps k8s-dqlite's in args/k8s-dqlite).
  extra=$(cat "$state/k8s-dqlite-fixture.args" 2>/dev/null)
  SNAP_INSTANCE_NAME={name} setsid {fixture} --storage-dir "$state/var/kubernetes/backend" \
    --exit-with {watch} $extra >> "$state/k8s-dqlite.log" 2>&1 < /dev/null 9>&- &
  echo $! > "$pidfile"
}}
case "$1" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
esac
"#,
        state = state.display(),
        fixture = fixture().display(),
        watch = std::process::id(),
    )
}

/// Puts the stand-in `snapctl` in `<state>/bin`; returns the PATH the daemon runs with.
pub fn install_snapctl(state: &Path, ip: Ipv4Addr) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = state.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("snapctl");
    // A distinct snap instance per node: go-dqlite names its local socket after it.
    let name = format!("ca-{}", ip.to_string().replace('.', "-"));
    std::fs::write(&script, snapctl_script(state, &name)).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A node inside the snap: its daemon and the k8s-dqlite that hosts its member. The member
/// is killed when it is dropped (the daemon too, as every [`Node`]).
pub struct SnapNode {
    pub node: Node,
}

impl std::ops::Deref for SnapNode {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl std::ops::DerefMut for SnapNode {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

impl Drop for SnapNode {
    fn drop(&mut self) {
        self.kill_member();
    }
}

impl SnapNode {
    /// A fresh node: the daemon bootstraps the state directory (CA, cluster certificate);
    /// then, as the snap's install hook does, `init.yaml` names the member's address and
    /// k8s-dqlite starts a single-node cluster.
    pub fn start() -> SnapNode {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> SnapNode {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> SnapNode {
        Self::start_full(extra, env, &[])
    }

    /// A fresh node whose daemon gets `extra` flags and `env`, and whose k8s-dqlite gets
    /// `fixture_flags` (e.g. `--roles-adjustment-frequency 1h`).
    pub fn start_full(extra: &[&str], env: &[(&str, &str)], fixture_flags: &[&str]) -> SnapNode {
        let dir = tempfile::tempdir().unwrap();
        if !fixture_flags.is_empty() {
            std::fs::write(
                dir.path().join("k8s-dqlite-fixture.args"),
                fixture_flags.join(" "),
            )
            .unwrap();
        }
        let node = Self::launch_at(unique_loopback(), dir, extra, env);
        node.init_member(&node.member_address());
        node
    }

    /// The daemon alone, on `ip` with state directory `dir`, healthy; k8s-dqlite has not
    /// started a member yet (see [`SnapNode::init_member`]).
    pub fn launch_at(
        ip: Ipv4Addr,
        dir: tempfile::TempDir,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> SnapNode {
        let path = install_snapctl(dir.path(), ip);
        let mut flags: Vec<&str> = SNAP_FLAGS.to_vec();
        flags.extend_from_slice(extra);
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("PATH", &path));
        let mut node = SnapNode {
            node: Node::launch(ip, dir, &flags, &env),
        };
        node.wait_healthy();
        node
    }

    /// What the snap's install hook does: `init.yaml` names the member's `address`, and
    /// k8s-dqlite starts a single-node cluster there. Returns once it runs.
    pub fn init_member(&self, address: &str) {
        std::fs::write(
            self.backend().join("init.yaml"),
            format!("Address: {address}\nCluster: []\n"),
        )
        .unwrap();
        self.snapctl("start");
        self.wait_member();
    }

    /// The member's `(id, address)` from k8s-dqlite's `info.yaml`.
    pub fn member_info(&self) -> Option<(u64, String)> {
        let text = std::fs::read_to_string(self.backend().join("info.yaml")).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        Some((field("ID:")?.parse().ok()?, field("Address:")?))
    }

    /// Restarts the daemon without test hold points (the rest of its environment, its
    /// `snapctl` PATH, stays).
    pub fn restart_plain(&mut self) {
        self.node
            .env
            .retain(|(k, _)| k != "CLUSTER_AGENT_TEST_HOLD");
        self.node.restart();
    }

    /// Where k8s-dqlite serves this node's member (the address its `init.yaml` named).
    pub fn member_address(&self) -> String {
        format!("{}:19001", self.ip)
    }

    /// Runs the stand-in `snapctl <action> microk8s.daemon-k8s-dqlite`, as the snap would.
    pub fn snapctl(&self, action: &str) {
        let status = Command::new(self.state.join("bin/snapctl"))
            .args([action, "microk8s.daemon-k8s-dqlite"])
            .status()
            .unwrap();
        assert!(status.success(), "snapctl {action}");
    }

    /// Waits until k8s-dqlite wrote this member's identity (`info.yaml`): it runs.
    pub fn wait_member(&self) {
        let info = self.backend().join("info.yaml");
        eventually("k8s-dqlite's info.yaml", Duration::from_secs(60), || {
            info.exists().then_some(())
        });
    }

    /// The k8s-dqlite process id, if one runs.
    pub fn member_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.state.join("k8s-dqlite.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        running(pid).then_some(pid)
    }

    /// kill -9 of k8s-dqlite (a dead machine's member); waits until it is gone.
    pub fn kill_member(&self) {
        if let Some(pid) = self.member_pid() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            eventually("k8s-dqlite to die", Duration::from_secs(10), || {
                (!running(pid.as_raw())).then_some(())
            });
        }
    }

    /// Every `snapctl` call made so far, one per line.
    pub fn snapctl_log(&self) -> String {
        std::fs::read_to_string(self.state.join("snapctl.log")).unwrap_or_default()
    }

    pub fn member_log(&self) -> String {
        std::fs::read_to_string(self.state.join("k8s-dqlite.log")).unwrap_or_default()
    }
}

/// Is process `pid` running (not gone, not a zombie nothing reaped)?
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}
