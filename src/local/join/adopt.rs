//! What a joining node takes over from the cluster's answer, whatever its role: the
//! kubelet's arguments and the API server's authorisation mode and port.

use crate::format::args::ArgsFile;
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
