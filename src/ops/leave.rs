//! `leave` on this node. A worker goes back to a working standalone node: its own CA, fresh
//! kubeconfigs, default kubelet and kube-proxy arguments (MicroK8s leaves a worker unable to
//! start here, #3708). All or nothing: a failure restores every file.

use serde::{Deserialize, Serialize};

use super::joiner::EXIT_FAILURE;
use super::OpError;
use crate::node::Node;
use crate::state::backup::Backup;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaveResponse {
    pub messages: Vec<String>,
}

pub async fn leave(node: &Node) -> Result<LeaveResponse, OpError> {
    let node = node.clone();
    super::blocking(move || {
        let state = &node.state;
        if state.has_marker("clustered.lock") {
            return leave_worker(&node);
        }
        if !state.has_marker("no-cert-reissue") {
            return Err(OpError::exit(
                EXIT_FAILURE,
                "This MicroK8s deployment is not acting as a node in a cluster.",
            ));
        }
        Err(OpError::exit(
            EXIT_FAILURE,
            "Leaving as a control-plane node needs the embedded dqlite member, which this build does not host yet.",
        ))
    })
    .await
}

fn leave_worker(node: &Node) -> Result<LeaveResponse, OpError> {
    let state = &node.state;
    let l = state.layout();
    let removed = vec![
        l.cert("ca.remote.crt"),
        l.cert("kubelet.crt"),
        l.cert("kubelet.key"),
        l.cert("proxy.crt"),
        l.cert("proxy.key"),
        l.credential("kubelet.config"),
        l.credential("proxy.config"),
        l.credential("callback-token.txt"),
        l.args("kubelet"),
        l.args("kube-proxy"),
        l.marker("clustered.lock"),
        l.marker("no-k8s-dqlite"),
        l.marker("no-cert-reissue"),
    ];
    let mut touched = removed.clone();
    touched.push(l.marker("no-apiserver-proxy"));
    let backup = Backup::take(state, &touched)?;
    let result = (|| -> Result<(), OpError> {
        state.set_marker("no-apiserver-proxy")?;
        for path in &removed {
            state.remove(path)?;
        }
        crate::bootstrap::bootstrap(
            state,
            &crate::net::HostIdentity::discover(),
            &crate::bootstrap::BootstrapOptions {
                bind: node.settings.bind,
                failure_domain: 1,
            },
        )
        .map_err(|e| OpError::Internal(e.to_string()))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = backup.restore();
        return Err(OpError::exit(
            EXIT_FAILURE,
            format!("Leaving failed: {e}. This node was restored to its previous state."),
        ));
    }
    let mut messages = vec!["Configuring services.".to_string()];
    if let Err(e) = node
        .services
        .apply(crate::services::ServiceAction::Stop, "apiserver-proxy")
    {
        messages.push(format!("WARNING: could not stop apiserver-proxy: {e}"));
    }
    for service in ["kubelite", "k8s-dqlite"] {
        if let Err(e) = node.services.restart(service) {
            messages.push(format!("WARNING: could not restart {service}: {e}"));
        }
    }
    messages.push("This node left the cluster and is a standalone node again. Remove it on the control plane with 'remove-node'.".into());
    tracing::info!("left the cluster (worker)");
    Ok(LeaveResponse { messages })
}
