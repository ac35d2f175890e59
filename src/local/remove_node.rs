//! `remove-node <name|ip|id> [--force]` on a control-plane node: removes a member from the
//! dqlite cluster. A registered member is only removed with `--force` (run `leave` on it
//! first otherwise), matching by exact IP or id, never by substring (MicroK8s's prefix match
//! can pick the wrong node). The departed node can then join again with a new token.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::error::{ErrorKind, Refusal};
use crate::cluster::datastore::Member;
use crate::cluster::node::Node;
use crate::sys::blocking::blocking;

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(
        "This MicroK8s deployment is acting as a node in a cluster. Please use microk8s leave."
    )]
    OnWorker,
    #[error("Please provide the node you want to remove.")]
    NoNodeGiven,
    #[error("Cannot read the datastore membership: {0}")]
    MembershipUnreadable(String),
    /// No leader answers, or too few voters for a quorum: nothing can be removed.
    #[error("The cluster's datastore is unavailable ({0}). Nothing was changed. `cluster-agent status` shows which members answer; bring the missing voters back, or rebuild the cluster from the members that answer with `cluster-agent recover`, first.")]
    QuorumLost(String),
    #[error("{0} is this node. Run 'leave' on it instead.")]
    IsThisNode(String),
    #[error("Node {node} is not part of the cluster. ({detail})")]
    NotMember { node: String, detail: String },
    #[error("Removal failed. Node {node} {state} of the datastore ({address}). Please, run first 'leave' on the departing node. If the node is not available anymore and will never attempt to join the cluster in the future use the '--force' flag to unregister the node while removing it.")]
    NeedsForce {
        node: String,
        state: &'static str,
        address: String,
    },
    #[error("{node} matches several members ({addresses}); name one by id.")]
    Ambiguous { node: String, addresses: String },
    /// The cluster did not remove the member; nothing changed.
    #[error("Contacting node {address} failed. Error: {error}")]
    DatastoreUnchanged { address: String, error: String },
    /// Another membership change is in progress on this node.
    #[error("{0}")]
    Busy(String),
    /// An earlier change is still recorded in the journal.
    #[error("{}", crate::local::error::UNSETTLED)]
    Unsettled,
    #[error("{0}")]
    Internal(String),
}

impl Refusal for RemoveError {
    fn kind(&self) -> ErrorKind {
        match self {
            RemoveError::OnWorker => ErrorKind::RemoveOnWorker,
            RemoveError::NoNodeGiven => ErrorKind::RemoveNoNodeGiven,
            RemoveError::MembershipUnreadable(_) => ErrorKind::RemoveMembershipUnreadable,
            RemoveError::QuorumLost(_) => ErrorKind::RemoveQuorumLost,
            RemoveError::IsThisNode(_) => ErrorKind::RemoveIsThisNode,
            RemoveError::NotMember { .. } => ErrorKind::RemoveNotMember,
            RemoveError::NeedsForce { .. } => ErrorKind::RemoveNeedsForce,
            RemoveError::Ambiguous { .. } => ErrorKind::RemoveAmbiguous,
            RemoveError::DatastoreUnchanged { .. } => ErrorKind::RemoveDatastoreUnchanged,
            RemoveError::Busy(_) => ErrorKind::Busy,
            RemoveError::Unsettled => ErrorKind::Unsettled,
            RemoveError::Internal(_) => ErrorKind::Internal,
        }
    }
}

crate::local::error::membership_change_error!(RemoveError);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveNodeRequest {
    pub node: String,
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveNodeResponse {
    pub messages: Vec<String>,
}

/// How the user named the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    Ip(IpAddr),
    Id(u64),
    Name(String),
}

pub fn parse_node_ref(s: &str) -> NodeRef {
    let s = s.trim();
    let unbracketed = s.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = unbracketed.parse() {
        NodeRef::Ip(ip)
    } else if let Ok(id) = s.parse() {
        NodeRef::Id(id)
    } else {
        NodeRef::Name(s.to_string())
    }
}

/// Members matching any of `ips` exactly, or `id`.
pub fn matching<'a>(members: &'a [Member], ips: &[IpAddr], id: Option<u64>) -> Vec<&'a Member> {
    members
        .iter()
        .filter(|m| Some(m.id) == id || ips.iter().any(|ip| m.is_at(ip)))
        .collect()
}

pub async fn remove_node(
    node: &Node,
    req: RemoveNodeRequest,
) -> Result<RemoveNodeResponse, RemoveError> {
    if node.state().has_marker("clustered.lock") {
        return Err(RemoveError::OnWorker);
    }
    if req.node.trim().is_empty() {
        return Err(RemoveError::NoNodeGiven);
    }
    let ticket = crate::local::error::begin::<RemoveError>(node, "remove-node")?;
    ticket.step("checking the datastore");
    if let Some(why) = crate::local::status::unavailable(node).await {
        return Err(RemoveError::QuorumLost(why));
    }
    ticket.step(&format!("removing {}", req.node.trim()));
    let (ips, id) = match parse_node_ref(&req.node) {
        NodeRef::Ip(ip) => (vec![ip], None),
        NodeRef::Id(id) => (Vec::new(), Some(id)),
        NodeRef::Name(name) => (node.resolver().lookup(&name).await, None),
    };
    let members = node
        .datastore()
        .members()
        .await
        .map_err(|e| RemoveError::MembershipUnreadable(e.to_string()))?;
    let found = matching(&members, &ips, id);
    let mut messages = Vec::new();
    // This node's own member: by the identity it runs with (info.yaml, the live member),
    // and by the --bind address when that names one.
    let bind_ip = node.settings().bind.ip();
    let own = crate::dqlite::files::read_info(&node.state().layout().backend_dir())
        .ok()
        .flatten()
        .or_else(|| {
            node.membership()
                .and_then(|m| m.live())
                .map(|l| (l.own_id, l.own_address))
        });
    for m in &found {
        let is_own = own
            .as_ref()
            .is_some_and(|(id, address)| *id == m.id || *address == m.address);
        if is_own || m.is_at(&bind_ip) {
            return Err(RemoveError::IsThisNode(req.node.clone()));
        }
    }
    match found.as_slice() {
        [] => {
            // Workers are not datastore members: only their Kubernetes Node goes.
            return match delete_kubernetes_node(node, &req.node, &ips).await {
                KubeOutcome::Deleted(msg) => {
                    messages.push(msg);
                    Ok(RemoveNodeResponse { messages })
                }
                other if !req.force => Err(RemoveError::NotMember {
                    node: req.node.clone(),
                    detail: other.text(),
                }),
                other => {
                    messages.push(format!(
                        "Node {} is not a datastore member; nothing to remove there.",
                        req.node
                    ));
                    messages.push(other.text());
                    Ok(RemoveNodeResponse { messages })
                }
            };
        }
        [member] => {
            let alive = tokio::time::timeout(
                super::status::PROBE_TIMEOUT,
                node.datastore().describe(&member.address),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
            if !req.force {
                let state = if alive {
                    "is a live member"
                } else {
                    "is registered (and unreachable)"
                };
                return Err(RemoveError::NeedsForce {
                    node: req.node.clone(),
                    state,
                    address: member.address.clone(),
                });
            }
            if alive {
                messages.push(format!(
                    "WARNING: {} still answers; removing it anyway (--force).",
                    member.address
                ));
            }
            node.datastore()
                .remove_by_address(&member.address)
                .await
                .map_err(|e| RemoveError::DatastoreUnchanged {
                    address: member.address.clone(),
                    error: e.to_string(),
                })?;
            messages.push(format!(
                "Removed {} (id {}) from the datastore.",
                member.address, member.id
            ));
        }
        many => {
            let list: Vec<&str> = many.iter().map(|m| m.address.as_str()).collect();
            return Err(RemoveError::Ambiguous {
                node: req.node.clone(),
                addresses: list.join(", "),
            });
        }
    }
    let ips_for_k8s: Vec<IpAddr> = found
        .iter()
        .filter_map(|m| m.host().parse().ok())
        .chain(ips.iter().copied())
        .collect();
    let node2 = node.clone();
    let cleaned_ips = ips_for_k8s.clone();
    blocking(move || {
        node2
            .tokens()
            .remove_peer_callback_tokens(|host| {
                cleaned_ips
                    .iter()
                    .any(|ip| host.parse::<IpAddr>().ok() == Some(*ip))
            })
            .map_err(|e| RemoveError::Internal(e.to_string()))
    })
    .await?;
    messages.push(
        delete_kubernetes_node(node, &req.node, &ips_for_k8s)
            .await
            .text(),
    );
    tracing::info!(node = %req.node, force = req.force, "remove-node");
    Ok(RemoveNodeResponse { messages })
}

/// What happened to the Kubernetes Node object.
pub(super) enum KubeOutcome {
    Deleted(String),
    Absent(String),
    Skipped(String),
}

impl KubeOutcome {
    pub(super) fn text(self) -> String {
        match self {
            KubeOutcome::Deleted(s) | KubeOutcome::Absent(s) | KubeOutcome::Skipped(s) => s,
        }
    }
}

/// Deletes the Node object through the API server of `credentials/client.config`; the node
/// is found by name, or by InternalIP when given an address.
pub(super) async fn delete_kubernetes_node(
    node: &Node,
    target: &str,
    ips: &[IpAddr],
) -> KubeOutcome {
    let path = node.state().layout().credential("client.config");
    if !crate::state::exists(&path) {
        return KubeOutcome::Skipped(
            "No Kubernetes API is configured: the Node object was not deleted.".into(),
        );
    }
    let api = match crate::clients::kubernetes::ApiClient::from_kubeconfig(&path) {
        Ok(api) => api,
        Err(e) => {
            return KubeOutcome::Skipped(format!(
                "Kubernetes API not usable ({e}): the Node object was not deleted."
            ))
        }
    };
    let nodes = match api.nodes().await {
        Ok(n) => n,
        Err(e) => {
            return KubeOutcome::Skipped(format!(
                "Kubernetes API at {} not reachable ({e}): the Node object was not deleted; delete it with kubectl.",
                api.server()
            ))
        }
    };
    let wanted: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
    let name = nodes
        .iter()
        .find(|(name, node_ips)| name == target || node_ips.iter().any(|ip| wanted.contains(ip)))
        .map(|(name, _)| name.clone());
    let Some(name) = name else {
        return KubeOutcome::Absent(format!("Kubernetes has no node {target}."));
    };
    match api.delete_node(&name).await {
        Ok(200..=299) => KubeOutcome::Deleted(format!("Deleted the Kubernetes node {name}.")),
        Ok(404) => KubeOutcome::Absent(format!("Kubernetes has no node {name}.")),
        Ok(status) => KubeOutcome::Skipped(format!(
            "Deleting the Kubernetes node {name} failed (HTTP {status})."
        )),
        Err(e) => {
            KubeOutcome::Skipped(format!("Deleting the Kubernetes node {name} failed ({e})."))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::datastore::Role;

    fn m(addr: &str, id: u64) -> Member {
        Member {
            address: addr.into(),
            id,
            role: Role::Voter,
        }
    }

    #[test]
    fn refs() {
        assert_eq!(
            parse_node_ref("10.0.0.1"),
            NodeRef::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_node_ref("[fd00::1]"),
            NodeRef::Ip("fd00::1".parse().unwrap())
        );
        assert_eq!(parse_node_ref("12345"), NodeRef::Id(12345));
        assert_eq!(parse_node_ref("node-2"), NodeRef::Name("node-2".into()));
    }

    #[test]
    fn exact_matching_never_substring() {
        let members = vec![
            m("10.0.0.1:19001", 1),
            m("10.0.0.12:19001", 2),
            m("[fd00::1]:19001", 3),
        ];
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let got = matching(&members, &[one], None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, 1);
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(matching(&members, &[v6], None)[0].id, 3);
        assert_eq!(
            matching(&members, &[], Some(2))[0].address,
            "10.0.0.12:19001"
        );
        assert!(matching(&members, &[], Some(9)).is_empty());
    }
}
