//! The launch-configuration watcher: every `$SNAP_COMMON/etc/launcher/*.yaml` (what
//! `snap set microk8s config=…` and operators drop there) is applied in name order and
//! renamed `*.applied`. A file that fails is left in place and never holds the others up: a
//! refused one (invalid, or asking for what this node cannot do) is logged once and tried
//! again only once its content changes; one whose apply failed (an addon command, a join, a
//! restart) is logged once per reason and tried again with a doubling delay, up to
//! [`MAX_RETRY_DELAY`]. No file is applied while a join or leave runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::node::Node;
use crate::control::wire::JoinClusterRequest;
use crate::format::launch::JoinSection;
use crate::local::launch::{self, ApplyError, LaunchEffects, SELF_SERVICE};

/// The shortest interval between two scans (the Go agent's minimum).
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// The longest wait before a failed apply is tried again.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Where and how often to look.
#[derive(Debug, Clone)]
pub struct LauncherConfig {
    pub dir: PathBuf,
    pub interval: Duration,
}

impl LauncherConfig {
    /// `$SNAP_COMMON/etc/launcher`, scanned every `interval` (at least [`MIN_INTERVAL`]).
    pub fn new(snap_common: &Path, interval: Duration) -> Self {
        LauncherConfig {
            dir: snap_common.join("etc/launcher"),
            interval: interval.max(MIN_INTERVAL),
        }
    }
}

/// Scans at start and then every interval until `stop` turns true.
pub async fn run(node: Node, config: LauncherConfig, mut stop: tokio::sync::watch::Receiver<bool>) {
    tracing::info!(dir = %config.dir.display(), interval = ?config.interval, "watching for launch configurations");
    let mut failed = BTreeMap::new();
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        scan(&node, &config.dir, &mut failed).await;
    }
}

/// What is known of a file that failed.
struct Failure {
    /// The content that failed (hex SHA-256).
    content: String,
    reason: String,
    /// `None`: refused, not tried again until the content changes.
    retry: Option<(tokio::time::Instant, Duration)>,
}

/// One pass over the directory.
async fn scan(node: &Node, dir: &Path, failed: &mut BTreeMap<String, Failure>) {
    if node.operations().current().is_some() {
        return;
    }
    let names = match crate::state::list_dir(dir) {
        Ok(Some(names)) => names,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list launch configurations");
            return;
        }
    };
    failed.retain(|name, _| names.contains(name));
    for name in names.into_iter().filter(|n| n.ends_with(".yaml")) {
        let path = dir.join(&name);
        let Ok(bytes) = crate::state::read_bytes(&path) else {
            continue;
        };
        let content = crate::util::hex::sha256_hex(&bytes);
        let previous = match failed.remove(&name).filter(|f| f.content == content) {
            Some(f) => {
                let waiting = match f.retry {
                    None => true,
                    Some((at, _)) => tokio::time::Instant::now() < at,
                };
                if waiting {
                    failed.insert(name, f);
                    continue;
                }
                Some(f)
            }
            None => None,
        };
        match apply_file(node, &path, bytes).await {
            Ok(restart_self) => {
                let applied = dir.join(format!("{name}.applied"));
                if let Err(e) = crate::state::rename(&path, &applied) {
                    tracing::warn!(file = %path.display(), error = %e, "applied, but cannot rename it");
                }
                tracing::info!(file = %path.display(), "launch configuration applied");
                if restart_self {
                    // Last: it ends this process; the file is renamed already.
                    tracing::info!("restarting cluster-agent for its changed arguments");
                    if let Err(e) = node.services().restart(SELF_SERVICE) {
                        tracing::warn!(error = %e, "cannot restart cluster-agent");
                    }
                }
            }
            Err(Failed { reason, refused }) => {
                let same = previous.as_ref().is_some_and(|f| f.reason == reason);
                if !same {
                    tracing::error!(file = %path.display(), error = %reason, "launch configuration not applied");
                }
                let retry = (!refused).then(|| {
                    let delay = previous
                        .and_then(|f| f.retry)
                        .map_or(Duration::from_secs(10), |(_, d)| {
                            (d * 2).min(MAX_RETRY_DELAY)
                        });
                    (tokio::time::Instant::now() + delay, delay)
                });
                failed.insert(
                    name,
                    Failure {
                        content,
                        reason,
                        retry,
                    },
                );
            }
        }
    }
}

/// Why a file was not applied; `refused`: nothing was done and trying again cannot help.
struct Failed {
    reason: String,
    refused: bool,
}

async fn apply_file(node: &Node, path: &Path, bytes: Vec<u8>) -> Result<bool, Failed> {
    let text = String::from_utf8(bytes).map_err(|_| Failed {
        reason: format!("{} is not UTF-8 text", path.display()),
        refused: true,
    })?;
    let node = node.clone();
    let handle = tokio::runtime::Handle::current();
    let applying = tokio::task::spawn_blocking(move || {
        let effects = DaemonEffects {
            node: node.clone(),
            handle,
        };
        launch::apply_text(node.state(), &node.settings().env, &text, false, &effects)
            .map(|applied| applied.restart_self)
            .map_err(|e| Failed {
                refused: matches!(e, ApplyError::Invalid(_) | ApplyError::NeedsSnap { .. }),
                reason: e.to_string(),
            })
    });
    applying.await.map_err(|e| Failed {
        reason: e.to_string(),
        refused: false,
    })?
}

/// The daemon's own hands: its runner and service manager, and its join.
struct DaemonEffects {
    node: Node,
    handle: tokio::runtime::Handle,
}

impl LaunchEffects for DaemonEffects {
    fn run(&self, argv: &[String]) -> Result<(), String> {
        self.node.runner().run(argv).map_err(|e| e.to_string())
    }

    fn restart(&self, service: &str) -> Result<(), String> {
        self.node
            .services()
            .restart(service)
            .map_err(|e| e.to_string())
    }

    fn join(&self, join: &JoinSection) -> Result<Vec<String>, String> {
        let req = JoinClusterRequest::from_section(join);
        self.handle
            .block_on(crate::local::join::join_cluster(&self.node, req))
            .map(|resp| resp.messages)
            .map_err(|e| e.to_string())
    }
}
