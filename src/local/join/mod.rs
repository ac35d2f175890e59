//! `join` on the joining node: reach the cluster (pinned TLS, from this node's own bind
//! address), preflight (identity, clock skew, not joining itself), ask for the join, then
//! reconfigure this node as a worker ([`worker`]) or a control plane ([`control_plane`]) —
//! all or nothing: any failure after the answer restores every file it touched.

pub mod adopt;
pub mod control_plane;
pub mod error;
pub mod external;
pub mod target;
pub mod worker;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::JoinError;
use target::{clock_skew, is_self, targets, Target, MAX_CLOCK_SKEW};

use crate::clients::peer::{Answer, PeerError};
use crate::cluster::node::Node;
use crate::format::connection;
use crate::format::wire::{ErrorBody, JoinRequest, JoinResponseV2};

/// How long the preflight `/health` may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long this node's own membership may take to answer before a control-plane join.
const MEMBERSHIP_CHECK: Duration = Duration::from_secs(5);
/// How long the join request may take (the cluster may first move its datastore).
pub(crate) const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinClusterRequest {
    pub connection: String,
    pub worker: bool,
    pub skip_verify: bool,
    /// Labels and taints to register the node with.
    #[serde(default)]
    pub registration: adopt::Registration,
}

impl JoinClusterRequest {
    /// The join a launch configuration's `join` section asks for (verified, as `join`).
    pub fn from_section(join: &crate::format::launch::JoinSection) -> Self {
        JoinClusterRequest {
            connection: join.url.clone(),
            worker: join.worker,
            skip_verify: false,
            registration: adopt::Registration {
                labels: join.node_labels.clone(),
                taints: join.taints.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinClusterResponse {
    /// The control-plane node that granted the join.
    pub contacted: String,
    /// Lines to show the user, in order.
    pub messages: Vec<String>,
}

/// Finds a target that answers with the pinned identity and a sane clock.
async fn preflight(node: &Node, targets: &[Target]) -> Result<Target, JoinError> {
    let bind = node.settings().bind;
    let local = crate::sys::host::local_addresses();
    let mut failures = Vec::new();
    for target in targets {
        if is_self(target.addr, bind, &local) {
            return Err(JoinError::JoiningItself(target.addr));
        }
        let health = node
            .peers()
            .get(target.addr, &target.pin, "/health", HEALTH_TIMEOUT)
            .await;
        match health {
            Ok(answer) => {
                let now = std::time::UNIX_EPOCH
                    + Duration::from_secs(node.clock().now_unix().max(0) as u64);
                if let Some(skew) = clock_skew(answer.date.as_deref(), now) {
                    if skew > MAX_CLOCK_SKEW {
                        return Err(JoinError::ClockSkew {
                            peer: target.addr.ip(),
                            skew_secs: skew.as_secs(),
                            max_secs: MAX_CLOCK_SKEW.as_secs(),
                        });
                    }
                }
                return Ok(target.clone());
            }
            Err(PeerError::Identity(_)) => {
                return Err(JoinError::IdentityNotVerified(target.addr.ip()));
            }
            Err(e) => failures.push(format!("{}: {e}", target.addr)),
        }
    }
    Err(JoinError::Unreachable(failures.join("; ")))
}

/// The join request MicroK8s's clients send.
fn join_request(node: &Node, token: &str, worker: bool) -> JoinRequest {
    JoinRequest {
        token: token.to_string(),
        hostname: crate::sys::host::hostname(),
        port: node.settings().bind.port().to_string(),
        worker: Some(serde_json::Value::Bool(worker)),
        callback: String::new(),
        can_handle_x509_auth: true,
        can_handle_custom_etcd: false,
    }
}

/// The `error` of a refusal's body, if it has one.
pub(crate) fn refusal_text(answer: &Answer) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(&answer.body)
        .ok()
        .map(|b| b.error)
}

/// MicroK8s's "Connection failed. <error> (<status>)." for a refused join.
fn refused(answer: &Answer) -> JoinError {
    let status = answer.status;
    JoinError::Refused(match refusal_text(answer) {
        Some(e) => format!("Connection failed. {e} ({status})."),
        None => format!("Connection failed. ({status})."),
    })
}

pub async fn join_cluster(
    node: &Node,
    req: JoinClusterRequest,
) -> Result<JoinClusterResponse, JoinError> {
    let conn = connection::parse(&req.connection)
        .map_err(|e| JoinError::InvalidConnection(e.to_string()))?;
    req.registration
        .check()
        .map_err(JoinError::BadRegistration)?;
    let ticket = crate::local::error::begin::<JoinError>(node, "join")?;
    if node.state().has_marker("clustered.lock") {
        return Err(JoinError::AlreadyWorker);
    }
    if !req.worker {
        ticket.step("checking this node's datastore");
        check_can_join_as_control_plane(node).await?;
    }
    let targets = targets(&conn, req.skip_verify)?;
    ticket.step("contacting the cluster");
    let target = preflight(node, &targets).await?;
    ticket.step("asking the cluster to join");
    let body = serde_json::to_vec(&join_request(node, &target.token, req.worker))
        .map_err(|e| JoinError::Internal(e.to_string()))?;
    let answer = node
        .peers()
        .post_json(
            target.addr,
            &target.pin,
            "/cluster/api/v2.0/join",
            body,
            JOIN_TIMEOUT,
        )
        .await
        .map_err(|e| JoinError::LostContact(e.to_string()))?;
    if answer.status != 200 {
        return Err(refused(&answer));
    }
    let granted: JoinResponseV2 = serde_json::from_slice(&answer.body)
        .map_err(|e| JoinError::UnexpectedAnswer(e.to_string()))?;
    let messages = if req.worker {
        worker::join(node, &granted, &target, &ticket, &req.registration).await?
    } else if node.settings().external_datastore {
        external::join(node, granted, target.addr, &ticket, &req.registration).await?
    } else {
        control_plane::join(node, granted, target.addr, &ticket, &req.registration).await?
    };
    Ok(JoinClusterResponse {
        contacted: target.addr.to_string(),
        messages,
    })
}

/// A control-plane join replaces this node's datastore: refuse before any token is used if
/// it cannot (no member, a backup of an unfinished join in the way) or should not (it has
/// other members, or its membership cannot be read: a cluster that lost quorum must never
/// have its data replaced). Either datastore: the embedded member, or k8s-dqlite's.
async fn check_can_join_as_control_plane(node: &Node) -> Result<(), JoinError> {
    let Some(live) = node.own_member() else {
        return Err(JoinError::NoMember(if node.settings().external_datastore {
            "k8s-dqlite has not started it yet (no info.yaml in the backend directory); start the snap's services and retry".into()
        } else {
            "the embedded member is not running".into()
        }));
    };
    let backend = node.state().layout().backend_dir();
    let backup = control_plane::backup_dir(&backend);
    if crate::state::exists(&backup) {
        return Err(JoinError::UnfinishedEarlierJoin { backup, backend });
    }
    let members = tokio::time::timeout(MEMBERSHIP_CHECK, live.client.cluster())
        .await
        .map_err(|_| {
            JoinError::MembershipUnreadable(format!(
                "no leader answered within {}s",
                MEMBERSHIP_CHECK.as_secs()
            ))
        })?
        .map_err(|e| JoinError::MembershipUnreadable(e.to_string()))?;
    // A member the cluster no longer lists (removed by force, or a leave cut short) holds
    // a stale replica of a cluster it is not part of: replacing it loses nothing.
    let orphaned = !members.iter().any(|m| m.id == live.own_id);
    if members.len() > 1 && !orphaned {
        return Err(JoinError::AlreadyClustered);
    }
    Ok(())
}
