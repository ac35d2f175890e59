//! Calico's IP autodetection in `args/cni-network/cni.yaml`, kept as MicroK8s keeps it.
//!
//! Calico's default `first-found` picks the first interface it sees, which on a multi-NIC
//! machine is often not the one the cluster talks over. MicroK8s pins it when nodes join:
//! - the node that grants a join rewrites `IP_AUTODETECTION_METHOD` (or
//!   `IP6_AUTODETECTION_METHOD` for an IPv6 joiner) from `first-found` to
//!   `can-reach=<joining node's IP>` and applies the manifest with kubectl;
//! - the joining control-plane node rewrites every `first-found` in its own copy to
//!   `can-reach=<address it contacted>` (not applied: the cluster already runs Calico).
//!
//! The rewrites are pure functions; [`pin_for_joining_node`] adds the file and kubectl I/O.
//! Failures are only logged, as in MicroK8s: a join never fails because of Calico.
//! Invariant: an unchanged manifest is neither written nor applied.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::node::Node;
use crate::state::mode;
use crate::sys::runner::CommandRunner;

/// How often and how patiently the manifest is applied (MicroK8s: 20 tries, 3 s apart).
pub const APPLY_ATTEMPTS: u32 = 20;
pub const APPLY_PAUSE: Duration = Duration::from_secs(3);

/// MicroK8s's pattern (agent `pkg/snap/util/calico.go`): the variable's name, then the rest of
/// its line and the next line, or nothing, then `first-found`.
fn autodetection_pattern(ip: IpAddr) -> String {
    let name = match ip {
        IpAddr::V4(_) => "IP_AUTODETECTION_METHOD",
        IpAddr::V6(_) => "IP6_AUTODETECTION_METHOD",
    };
    format!("(?m)({name}(.*\n.*)?)first-found")
}

/// The granting node's rewrite: `None` when nothing changes.
pub fn pin_autodetection(manifest: &str, joining: IpAddr) -> Option<String> {
    let pattern = match regex::Regex::new(&autodetection_pattern(joining)) {
        Ok(p) => p,
        Err(e) => {
            // A constant pattern; logged rather than trusted blindly.
            tracing::warn!(error = %e, "calico autodetection pattern does not compile");
            return None;
        }
    };
    let replacement = format!("${{1}}can-reach={joining}");
    match pattern.replace_all(manifest, replacement.as_str()) {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(changed) => Some(changed),
    }
}

/// The joining control plane's rewrite of its own copy: every `first-found`, unless the
/// manifest already names a `can-reach` target. `None` when nothing changes.
pub fn pin_first_found(manifest: &str, contacted: IpAddr) -> Option<String> {
    if manifest.contains("can-reach") || !manifest.contains("first-found") {
        return None;
    }
    Some(manifest.replace("first-found", &format!("can-reach={contacted}")))
}

fn manifest_path(node: &Node) -> PathBuf {
    node.state().layout().args("cni-network").join("cni.yaml")
}

/// The kubectl command that applies the manifest: the snap's wrapper inside MicroK8s,
/// otherwise `kubectl` with this node's admin kubeconfig.
pub fn apply_argv(node: &Node) -> Vec<String> {
    let manifest = manifest_path(node).display().to_string();
    match node.snap_dir() {
        Some(snap) => vec![
            snap.join("microk8s-kubectl.wrapper").display().to_string(),
            "apply".into(),
            "-f".into(),
            manifest,
        ],
        None => vec![
            "kubectl".into(),
            "--kubeconfig".into(),
            node.state()
                .layout()
                .credential("client.config")
                .display()
                .to_string(),
            "apply".into(),
            "-f".into(),
            manifest,
        ],
    }
}

/// The joiner's own copy, during a control-plane join; errors are the caller's to report.
pub fn pin_own_copy(node: &Node, contacted: IpAddr) -> Result<(), crate::state::StateError> {
    let path = manifest_path(node);
    let Some(manifest) = node.state().read_optional(&path)? else {
        return Ok(());
    };
    if let Some(changed) = pin_first_found(&manifest, contacted) {
        node.state().write(&path, changed.as_bytes(), mode::ARGS)?;
        tracing::info!(path = %path.display(), %contacted, "calico autodetection pinned to the contacted node");
    }
    Ok(())
}

/// The granting node's step of a v2 join: rewrite the manifest for the joining node and, if
/// it changed, apply it in the background (a slow or missing kubectl never holds the join).
/// Joins are serialised here so two of them never interleave their read and write.
pub async fn pin_for_joining_node(node: &Node, joining: IpAddr) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let path = manifest_path(node);
    let (state, file) = (node.state().clone(), path.clone());
    let rewritten = tokio::task::spawn_blocking(move || -> Result<bool, String> {
        let Some(manifest) = state.read_optional(&file).map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let Some(changed) = pin_autodetection(&manifest, joining) else {
            return Ok(false);
        };
        state
            .write(&file, changed.as_bytes(), mode::ARGS)
            .map_err(|e| e.to_string())?;
        Ok(true)
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match rewritten {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(error = %e, "failed to update cni configuration");
            return;
        }
    }
    tracing::info!(path = %path.display(), %joining, "calico autodetection pinned to the joining node; applying");
    let argv = apply_argv(node);
    tokio::spawn(apply_with_retries(
        node.runner(),
        argv,
        APPLY_ATTEMPTS,
        APPLY_PAUSE,
    ));
}

/// Runs `argv` until it succeeds, at most `attempts` times, `pause` apart. True on success.
pub async fn apply_with_retries(
    runner: Arc<dyn CommandRunner>,
    argv: Vec<String>,
    attempts: u32,
    pause: Duration,
) -> bool {
    for attempt in 1..=attempts {
        let (run, args) = (runner.clone(), argv.clone());
        let result = tokio::task::spawn_blocking(move || run.run(&args)).await;
        match result {
            Ok(Ok(())) => {
                tracing::info!(attempt, "calico manifest applied");
                return true;
            }
            Ok(Err(e)) => {
                tracing::debug!(attempt, error = %e, "applying the calico manifest failed")
            }
            Err(e) => tracing::debug!(attempt, error = %e, "applying the calico manifest failed"),
        }
        if attempt < attempts {
            tokio::time::sleep(pause).await;
        }
    }
    tracing::warn!(
        attempts,
        command = %argv.join(" "),
        "failed to update cni configuration: failed after {attempts} retries"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::runner::{BoxFuture, Input, RecordingRunner, ServiceError};
    use std::sync::atomic::{AtomicU32, Ordering};

    const MANIFEST: &str = "\
            - name: IP_AUTODETECTION_METHOD
              value: \"first-found\"
            - name: IP6_AUTODETECTION_METHOD
              value: \"first-found\"
";

    fn v4() -> IpAddr {
        "10.10.10.10".parse().unwrap()
    }

    #[test]
    fn ipv4_joiner_pins_only_the_ipv4_entry() {
        let changed = pin_autodetection(MANIFEST, v4()).unwrap();
        assert_eq!(
            changed,
            MANIFEST.replacen("\"first-found\"", "\"can-reach=10.10.10.10\"", 1)
        );
        assert!(changed.contains("IP6_AUTODETECTION_METHOD\n              value: \"first-found\""));
    }

    #[test]
    fn ipv6_joiner_pins_only_the_ipv6_entry() {
        let ip: IpAddr = "fd00::7".parse().unwrap();
        let changed = pin_autodetection(MANIFEST, ip).unwrap();
        assert!(changed.contains("IP_AUTODETECTION_METHOD\n              value: \"first-found\""));
        assert!(changed
            .contains("IP6_AUTODETECTION_METHOD\n              value: \"can-reach=fd00::7\""));
    }

    #[test]
    fn already_pinned_or_absent_entries_are_left_alone() {
        let pinned = pin_autodetection(MANIFEST, v4()).unwrap();
        assert_eq!(
            pin_autodetection(&pinned, "10.0.0.9".parse().unwrap()),
            None
        );
        assert_eq!(pin_autodetection("kind: DaemonSet\n", v4()), None);
    }

    #[test]
    fn same_line_and_distant_values_follow_microk8s_pattern() {
        // The value must be on the variable's line right after its name, or on the next line.
        assert_eq!(
            pin_autodetection("IP_AUTODETECTION_METHODfirst-found", v4()).as_deref(),
            Some("IP_AUTODETECTION_METHODcan-reach=10.10.10.10")
        );
        assert_eq!(
            pin_autodetection("IP_AUTODETECTION_METHOD\n\n  first-found\n", v4()),
            None
        );
        // Leftmost-first with a greedy next line: the last `first-found` on that line.
        assert_eq!(
            pin_autodetection(
                "IP_AUTODETECTION_METHOD: x\nfirst-found,first-found\n",
                v4()
            )
            .as_deref(),
            Some("IP_AUTODETECTION_METHOD: x\nfirst-found,can-reach=10.10.10.10\n")
        );
    }

    #[test]
    fn joiner_rewrites_every_first_found_once() {
        let changed = pin_first_found(MANIFEST, v4()).unwrap();
        assert_eq!(changed.matches("can-reach=10.10.10.10").count(), 2);
        assert_eq!(pin_first_found(&changed, "10.0.0.9".parse().unwrap()), None);
        assert_eq!(pin_first_found("kind: DaemonSet\n", v4()), None);
    }

    /// Fails the first `failures` runs.
    struct Flaky {
        failures: u32,
        runs: AtomicU32,
        seen: RecordingRunner,
    }

    impl CommandRunner for Flaky {
        fn run(&self, argv: &[String]) -> Result<(), ServiceError> {
            self.seen.run(argv)?;
            if self.runs.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(ServiceError::Command {
                    argv: argv.join(" "),
                    reason: "exit status 1".into(),
                });
            }
            Ok(())
        }

        fn run_piped(
            &self,
            argv: Vec<String>,
            input: Input,
        ) -> BoxFuture<'static, Result<(), ServiceError>> {
            self.seen.run_piped(argv, input)
        }
    }

    #[tokio::test]
    async fn apply_is_retried_until_it_succeeds_or_attempts_run_out() {
        let argv: Vec<String> = vec!["kubectl".into(), "apply".into()];
        for (failures, attempts, ok, runs) in [(0, 20, true, 1), (3, 20, true, 4), (5, 5, false, 5)]
        {
            let flaky = Arc::new(Flaky {
                failures,
                runs: AtomicU32::new(0),
                seen: RecordingRunner::default(),
            });
            let done =
                apply_with_retries(flaky.clone(), argv.clone(), attempts, Duration::ZERO).await;
            assert_eq!(done, ok, "failures {failures}");
            assert_eq!(flaky.runs.load(Ordering::SeqCst), runs);
            assert!(flaky.seen.argvs.lock().unwrap().iter().all(|a| *a == argv));
        }
    }
}
