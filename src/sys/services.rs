//! Restarting the node's Kubernetes services: through `snapctl` inside the MicroK8s snap,
//! `systemctl` on a systemd host, or not at all (`none`, the default when no Kubernetes is
//! installed; the request is only logged).
//!
//! Service names are MicroK8s's (`apiserver`, `kube-proxy`, `k8s-dqlite`, …); each manager
//! maps them to its units. Commands go through [`CommandRunner`] so the argv can be tested.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::runner::{CommandRunner, ServiceError, SystemRunner};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceManagerKind {
    Snap,
    Systemd,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

impl ServiceAction {
    pub fn verb(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
        }
    }
}

/// Starts, stops and restarts services.
pub trait ServiceManager: Send + Sync {
    fn apply(&self, action: ServiceAction, service: &str) -> Result<(), ServiceError>;

    fn restart(&self, service: &str) -> Result<(), ServiceError> {
        self.apply(ServiceAction::Restart, service)
    }
}

/// MicroK8s's short service name for a request (`kube-apiserver` → `apiserver`), with the
/// kubelite mapping when `lite.lock` exists.
pub fn microk8s_service_name(service: &str, kubelite: bool) -> String {
    let name = service.strip_prefix("microk8s.daemon-").unwrap_or(service);
    let name = match name {
        "kube-apiserver" | "kube-proxy" | "kube-scheduler" | "kube-controller-manager" => {
            &name["kube-".len()..]
        }
        other => other,
    };
    if kubelite
        && matches!(
            name,
            "apiserver" | "proxy" | "kubelet" | "scheduler" | "controller-manager"
        )
    {
        return "kubelite".to_string();
    }
    name.to_string()
}

/// `snapctl <verb> microk8s.daemon-<name>`.
pub struct SnapServices<R> {
    pub runner: R,
    /// `$SNAP_DATA/var/lock/lite.lock`, checked at each call as MicroK8s does.
    pub lite_lock: PathBuf,
}

impl<R: CommandRunner> ServiceManager for SnapServices<R> {
    fn apply(&self, action: ServiceAction, service: &str) -> Result<(), ServiceError> {
        let name = microk8s_service_name(service, crate::state::exists(&self.lite_lock));
        tracing::info!(service = %name, action = action.verb(), "snapctl");
        self.runner.run(&[
            "snapctl".into(),
            action.verb().into(),
            format!("microk8s.daemon-{name}"),
        ])
    }
}

/// `systemctl <verb> <unit_prefix><name>.service`.
pub struct SystemdServices<R> {
    pub runner: R,
    pub lite_lock: PathBuf,
    pub unit_prefix: String,
}

impl<R: CommandRunner> ServiceManager for SystemdServices<R> {
    fn apply(&self, action: ServiceAction, service: &str) -> Result<(), ServiceError> {
        let name = microk8s_service_name(service, crate::state::exists(&self.lite_lock));
        tracing::info!(service = %name, action = action.verb(), "systemctl");
        self.runner.run(&[
            "systemctl".into(),
            action.verb().into(),
            format!("{}{name}.service", self.unit_prefix),
        ])
    }
}

/// Does nothing but log: for hosts without Kubernetes services.
#[derive(Debug, Default, Clone)]
pub struct NoServices;

impl ServiceManager for NoServices {
    fn apply(&self, action: ServiceAction, service: &str) -> Result<(), ServiceError> {
        tracing::info!(
            service,
            action = action.verb(),
            "service manager is 'none': not touching services"
        );
        Ok(())
    }
}

/// Records every request; for tests.
#[derive(Debug, Default, Clone)]
pub struct RecordingServices {
    calls: Arc<Mutex<Vec<(ServiceAction, String)>>>,
}

impl RecordingServices {
    pub fn calls(&self) -> Vec<(ServiceAction, String)> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl ServiceManager for RecordingServices {
    fn apply(&self, action: ServiceAction, service: &str) -> Result<(), ServiceError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((action, service.to_string()));
        }
        Ok(())
    }
}

/// Builds the configured manager.
pub fn manager(kind: ServiceManagerKind, lite_lock: PathBuf) -> Arc<dyn ServiceManager> {
    match kind {
        ServiceManagerKind::Snap => Arc::new(SnapServices {
            runner: SystemRunner,
            lite_lock,
        }),
        ServiceManagerKind::Systemd => Arc::new(SystemdServices {
            runner: SystemRunner,
            lite_lock,
            unit_prefix: String::new(),
        }),
        ServiceManagerKind::None => Arc::new(NoServices),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::runner::RecordingRunner;

    #[test]
    fn microk8s_name_mapping() {
        let cases = [
            ("apiserver", false, "apiserver"),
            ("kube-apiserver", false, "apiserver"),
            ("kube-proxy", false, "proxy"),
            ("kubelet", false, "kubelet"),
            ("kube-scheduler", false, "scheduler"),
            ("kube-controller-manager", false, "controller-manager"),
            ("k8s-dqlite", false, "k8s-dqlite"),
            ("cluster-agent", false, "cluster-agent"),
            ("microk8s.daemon-containerd", false, "containerd"),
            ("kube-apiserver", true, "kubelite"),
            ("proxy", true, "kubelite"),
            ("kubelet", true, "kubelite"),
            ("k8s-dqlite", true, "k8s-dqlite"),
        ];
        for (input, lite, want) in cases {
            assert_eq!(
                microk8s_service_name(input, lite),
                want,
                "{input} lite={lite}"
            );
        }
    }

    #[test]
    fn snap_manager_runs_snapctl_with_microk8s_units() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let snap = SnapServices {
            runner: runner.clone(),
            lite_lock: dir.path().join("lite.lock"),
        };
        snap.restart("kube-apiserver").unwrap();
        crate::state::write_atomic(&dir.path().join("lite.lock"), b"", 0o600).unwrap();
        snap.apply(ServiceAction::Stop, "kube-apiserver").unwrap();
        let argvs = runner.argvs.lock().unwrap().clone();
        assert_eq!(
            argvs,
            vec![
                vec!["snapctl", "restart", "microk8s.daemon-apiserver"],
                vec!["snapctl", "stop", "microk8s.daemon-kubelite"],
            ]
        );
    }

    #[test]
    fn systemd_manager_runs_systemctl() {
        let runner = RecordingRunner::default();
        let sd = SystemdServices {
            runner: runner.clone(),
            lite_lock: "/nonexistent/lite.lock".into(),
            unit_prefix: "microk8s-".into(),
        };
        sd.restart("k8s-dqlite").unwrap();
        assert_eq!(
            runner.argvs.lock().unwrap().clone(),
            vec![vec!["systemctl", "restart", "microk8s-k8s-dqlite.service"]]
        );
    }

    #[test]
    fn recording_manager_records() {
        let rec = RecordingServices::default();
        rec.restart("kubelet").unwrap();
        assert_eq!(
            rec.calls(),
            vec![(ServiceAction::Restart, "kubelet".to_string())]
        );
    }
}
