//! What the join API needs from the datastore, behind a trait: the current members (for
//! `voters` and the "already known" check), the cluster certificate, and removal.
//!
//! The real implementation talks to dqlite; [`ClusterYaml`] reads the membership list that
//! k8s-dqlite (or our embedded member) keeps current in `var/kubernetes/backend/cluster.yaml`.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dqlite::external::ExternalMember;
use crate::dqlite::membership::Membership;
use crate::state::{StateDir, StateError};
pub use crate::sys::runner::BoxFuture;

pub use crate::dqlite::Role;

/// One member of the dqlite cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "ID", default)]
    pub id: u64,
    #[serde(rename = "Role", default = "default_role", with = "role_code")]
    pub role: Role,
}

fn default_role() -> Role {
    Role::Voter
}

/// Roles are numbers in cluster.yaml (0 voter, 1 stand-by, 2 spare).
mod role_code {
    use super::Role;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(role.code())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let code = u64::deserialize(d)?;
        Role::from_code(code).map_err(serde::de::Error::custom)
    }
}

/// Liveness and placement of one member, from DESCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberMetadata {
    pub failure_domain: u64,
    pub weight: u64,
}

impl Member {
    /// The host part of `address` (`ip:port` or `[ipv6]:port`).
    pub fn host(&self) -> &str {
        crate::util::addr::host_of(&self.address)
    }

    /// Does this member live at `ip`? Exact host comparison (never a substring match).
    pub fn is_at(&self, ip: &IpAddr) -> bool {
        crate::util::addr::address_is_ip(&self.address, ip)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Unavailable(String),
    #[error("no node has address {0:?}")]
    NoSuchMember(String),
}

/// The datastore as seen by the join and remove endpoints.
pub trait Datastore: Send + Sync {
    /// Current members, from the leader when there is one.
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, DatastoreError>>;
    fn remove_by_address<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), DatastoreError>>;
    /// Asks one member directly for its metadata: answers only if it is alive.
    fn describe<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<MemberMetadata, DatastoreError>>;
    /// The leader's address, if one can be found.
    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, DatastoreError>>;
}

/// Reads `var/kubernetes/backend/cluster.yaml`.
pub struct ClusterYaml {
    pub state: StateDir,
}

impl ClusterYaml {
    pub fn read(&self) -> Result<Vec<Member>, DatastoreError> {
        let path = self.state.layout().backend("cluster.yaml");
        let Some(text) = self.state.read_optional(&path)? else {
            return Ok(Vec::new());
        };
        parse_cluster_yaml(&text).map_err(|reason| StateError::Malformed { path, reason }.into())
    }
}

/// `cluster.yaml` in k8s-dqlite's format (the one parser: `dqlite::files`).
pub fn parse_cluster_yaml(text: &str) -> Result<Vec<Member>, String> {
    crate::dqlite::files::parse_cluster(text)
        .map(|nodes| nodes.into_iter().map(Member::from).collect())
}

impl From<crate::dqlite::NodeInfo> for Member {
    fn from(n: crate::dqlite::NodeInfo) -> Member {
        Member {
            address: n.address,
            id: n.id,
            role: n.role,
        }
    }
}

impl Datastore for ClusterYaml {
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, DatastoreError>> {
        Box::pin(async move { self.read() })
    }

    fn remove_by_address<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move {
            Err(DatastoreError::Unavailable(format!(
                "cannot remove {address}: no dqlite client configured"
            )))
        })
    }

    fn describe<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<MemberMetadata, DatastoreError>> {
        Box::pin(async move {
            Err(DatastoreError::Unavailable(format!(
                "cannot reach {address}: no dqlite client configured"
            )))
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, DatastoreError>> {
        Box::pin(async { Ok(None) })
    }
}

/// The live dqlite cluster, through our wire-protocol client (mutual TLS with the cluster
/// certificate, as go-dqlite and k8s-dqlite).
pub struct Dqlite {
    pub client: Arc<crate::dqlite::Client>,
}

fn unavailable(e: crate::dqlite::ClientError) -> DatastoreError {
    DatastoreError::Unavailable(e.to_string())
}

impl Datastore for Dqlite {
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, DatastoreError>> {
        Box::pin(async move {
            let nodes = self.client.cluster().await.map_err(unavailable)?;
            Ok(nodes.into_iter().map(Member::from).collect())
        })
    }

    fn remove_by_address<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move {
            let members = self.members().await?;
            let member = members
                .iter()
                .find(|m| m.address == address)
                .ok_or_else(|| DatastoreError::NoSuchMember(address.to_string()))?;
            self.client.remove(member.id).await.map_err(unavailable)
        })
    }

    fn describe<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<MemberMetadata, DatastoreError>> {
        Box::pin(async move {
            let m = self.client.describe(address).await.map_err(unavailable)?;
            Ok(MemberMetadata {
                failure_domain: m.failure_domain,
                weight: m.weight,
            })
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, DatastoreError>> {
        Box::pin(async move {
            let leader = self.client.leader().await.map_err(unavailable)?;
            Ok(Some(leader.address))
        })
    }
}

/// k8s-dqlite's member (inside the snap): the live cluster through our client when it
/// answers, else the membership list k8s-dqlite keeps in `cluster.yaml`.
pub struct External {
    pub live: Dqlite,
    pub yaml: ClusterYaml,
}

/// How long the live cluster may take to list its members before `cluster.yaml` answers
/// instead (k8s-dqlite may be down or restarting).
const LIVE_MEMBERS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl Datastore for External {
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, DatastoreError>> {
        Box::pin(async move {
            match tokio::time::timeout(LIVE_MEMBERS_WAIT, self.live.members()).await {
                Ok(Ok(m)) if !m.is_empty() => Ok(m),
                _ => self.yaml.read(),
            }
        })
    }

    fn remove_by_address<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        self.live.remove_by_address(address)
    }

    fn describe<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<MemberMetadata, DatastoreError>> {
        self.live.describe(address)
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, DatastoreError>> {
        Box::pin(async move { Ok(self.live.leader().await.ok().flatten()) })
    }
}

/// This node's datastore as it is at each call: the live dqlite cluster of the member this
/// node hosts (it changes with join and leave), k8s-dqlite's cluster (with its `cluster.yaml`
/// as fallback) with the external datastore, else `cluster.yaml` alone.
pub struct NodeDatastore {
    pub state: StateDir,
    pub membership: Option<Arc<Membership>>,
    pub external: Option<Arc<ExternalMember>>,
}

impl NodeDatastore {
    fn current(&self) -> Box<dyn Datastore + '_> {
        let yaml = ClusterYaml {
            state: self.state.clone(),
        };
        if let Some(live) = self.membership.as_ref().and_then(|m| m.live()) {
            return Box::new(Dqlite {
                client: live.client,
            });
        }
        match self.external.as_ref().and_then(|e| e.client()) {
            Some(client) => Box::new(External {
                live: Dqlite { client },
                yaml,
            }),
            None => Box::new(yaml),
        }
    }
}

impl Datastore for NodeDatastore {
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, DatastoreError>> {
        Box::pin(async move { self.current().members().await })
    }

    fn remove_by_address<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move { self.current().remove_by_address(address).await })
    }

    fn describe<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<MemberMetadata, DatastoreError>> {
        Box::pin(async move { self.current().describe(address).await })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, DatastoreError>> {
        Box::pin(async move { self.current().leader().await })
    }
}

/// How many voters of `members` answer DESCRIBE within `timeout` (probed in parallel):
/// `(answering, voters)`. A leader that has not noticed it lost its followers still answers
/// CLUSTER; this is how a caller learns that no change could be committed now.
pub async fn voters_answering(
    ds: &Arc<dyn Datastore>,
    members: &[Member],
    timeout: std::time::Duration,
) -> (usize, usize) {
    let mut probes = tokio::task::JoinSet::new();
    let voters: Vec<String> = members
        .iter()
        .filter(|m| m.role == Role::Voter)
        .map(|m| m.address.clone())
        .collect();
    for address in voters.clone() {
        let ds = ds.clone();
        probes.spawn(async move {
            tokio::time::timeout(timeout, ds.describe(&address))
                .await
                .is_ok_and(|r| r.is_ok())
        });
    }
    let mut answering = 0;
    while let Some(joined) = probes.join_next().await {
        if joined.unwrap_or(false) {
            answering += 1;
        }
    }
    (answering, voters.len())
}

/// A datastore held in memory, whose members all answer (or, when `unavailable`, none
/// does); for tests.
#[derive(Debug, Default)]
pub struct FixedDatastore {
    pub members: std::sync::Mutex<Vec<Member>>,
    pub unavailable: std::sync::atomic::AtomicBool,
}

impl FixedDatastore {
    pub fn set(&self, members: Vec<Member>) {
        if let Ok(mut m) = self.members.lock() {
            *m = members;
        }
    }

    fn list(&self) -> Result<Vec<Member>, DatastoreError> {
        if self.unavailable.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(DatastoreError::Unavailable(
                "no quorum (a test datastore)".into(),
            ));
        }
        Ok(self.members.lock().map(|m| m.clone()).unwrap_or_default())
    }
}

impl Datastore for FixedDatastore {
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, DatastoreError>> {
        let list = self.list();
        Box::pin(async move { list })
    }

    fn remove_by_address<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move {
            let mut members = self
                .members
                .lock()
                .map_err(|_| DatastoreError::Unavailable("poisoned".into()))?;
            let before = members.len();
            members.retain(|m| m.address != address);
            if members.len() == before {
                return Err(DatastoreError::NoSuchMember(address.to_string()));
            }
            Ok(())
        })
    }

    fn describe<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<MemberMetadata, DatastoreError>> {
        let known = self.list().map(|l| l.iter().any(|m| m.address == address));
        Box::pin(async move {
            if known? {
                Ok(MemberMetadata {
                    failure_domain: 1,
                    weight: 0,
                })
            } else {
                Err(DatastoreError::NoSuchMember(address.to_string()))
            }
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, DatastoreError>> {
        let first = self.list().map(|l| {
            l.into_iter()
                .find(|m| m.role == Role::Voter)
                .map(|m| m.address)
        });
        Box::pin(async move { first })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k8s_dqlite_cluster_yaml() {
        let text = "- Address: 10.10.10.10:19001\n  ID: 1\n  Role: 0\n- Address: 10.10.10.11:19001\n  ID: 2\n- Address: 10.10.10.100:19001\n  ID: 3\n  Role: 2\n";
        let members = parse_cluster_yaml(text).unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[1].role, Role::Voter, "missing Role means voter");
        assert_eq!(members[2].role, Role::Spare);
        assert!(parse_cluster_yaml("- Address: x\n  Role: 7\n").is_err());
        assert!(parse_cluster_yaml("").unwrap().is_empty());
    }
}
