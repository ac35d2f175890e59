//! What a joining node takes over from the cluster's answer, whatever its role: the
//! kubelet's arguments and the API server's authorisation mode and port.

use serde::{Deserialize, Serialize};

use crate::format::args::ArgsFile;
use crate::format::labels;
use crate::format::wire::JoinResponseV2;
use crate::state::{StateDir, StateError};

/// The cluster's kubelet arguments adapted to this node: its own `--node-ip` (the address
/// the cluster saw), no `--hostname-override`.
pub fn cluster_kubelet_args(answer: &JoinResponseV2) -> ArgsFile {
    let mut args = ArgsFile::parse(&answer.kubelet_args);
    if args.contains("--node-ip") {
        args.set("--node-ip", &answer.hostname_override);
    }
    args.remove("--hostname-override");
    args
}

/// The labels and taints this node registers with (`join --node-labels …
/// --register-with-taints …`), checked by [`labels::check`] before the join starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub taints: Vec<String>,
}

impl Registration {
    pub fn check(&self) -> Result<(), String> {
        labels::check(&self.labels, &self.taints)
    }
}

/// Merges the registration into kubelet arguments (last, after the role's own labels): an
/// entry replaces one with the same key, the value is written quoted.
pub fn register(args: &mut ArgsFile, registration: &Registration) {
    for (flag, added, identity) in [
        (
            "--node-labels",
            &registration.labels,
            labels::label_key as fn(&str) -> &str,
        ),
        (
            "--register-with-taints",
            &registration.taints,
            labels::taint_identity,
        ),
    ] {
        if added.is_empty() {
            continue;
        }
        let current = args.get_unquoted(flag).unwrap_or_default();
        let merged = labels::merge(&current, added, identity);
        args.set(flag, &format!("\"{merged}\""));
    }
}

/// The cluster's API server authorisation mode and port, into `args/kube-apiserver`.
pub fn adopt_apiserver_args(state: &StateDir, answer: &JoinResponseV2) -> Result<(), StateError> {
    state.update_args("kube-apiserver", |f| {
        let mut changed = false;
        if !answer.api_authz_mode.is_empty() {
            changed |= f.set("--authorization-mode", &answer.api_authz_mode);
        }
        if !answer.apiport.is_empty() {
            changed |= f.set("--secure-port", &answer.apiport);
        }
        changed
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_merges_into_the_roles_labels() {
        let mut args = ArgsFile::parse(
            "--node-labels=\"microk8s.io/cluster=true,node.kubernetes.io/microk8s-worker=microk8s-worker\"\n--v=2\n",
        );
        register(
            &mut args,
            &Registration {
                labels: vec!["zone=b".into(), "microk8s.io/cluster=true".into()],
                taints: vec!["gpu=yes:NoSchedule".into()],
            },
        );
        assert_eq!(
            args.render(),
            "--node-labels=\"node.kubernetes.io/microk8s-worker=microk8s-worker,zone=b,microk8s.io/cluster=true\"\n--v=2\n--register-with-taints=\"gpu=yes:NoSchedule\"\n"
        );
        let mut untouched = ArgsFile::parse("--v=2\n");
        register(&mut untouched, &Registration::default());
        assert_eq!(untouched.render(), "--v=2\n");
    }
}
