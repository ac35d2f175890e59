//! What the join API needs from the datastore, behind a trait: the current members (for
//! `voters` and the "already known" check), the cluster certificate, and removal.
//!
//! The real implementation talks to dqlite; [`ClusterYaml`] reads the membership list that
//! k8s-dqlite (or our embedded member) keeps current in `var/kubernetes/backend/cluster.yaml`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::state::{StateDir, StateError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// dqlite roles as numbered on the wire and in cluster.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Role {
    Voter = 0,
    StandBy = 1,
    Spare = 2,
}

impl From<Role> for u8 {
    fn from(r: Role) -> u8 {
        r as u8
    }
}

impl TryFrom<u8> for Role {
    type Error = String;
    fn try_from(v: u8) -> Result<Role, String> {
        match v {
            0 => Ok(Role::Voter),
            1 => Ok(Role::StandBy),
            2 => Ok(Role::Spare),
            other => Err(format!("unknown dqlite role {other}")),
        }
    }
}

/// One member of the dqlite cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "ID", default)]
    pub id: u64,
    #[serde(rename = "Role", default = "default_role")]
    pub role: Role,
}

fn default_role() -> Role {
    Role::Voter
}

impl Member {
    /// The host part of `address` (`ip:port` or `[ipv6]:port`).
    pub fn host(&self) -> &str {
        host_of(&self.address)
    }
}

/// The host part of `host:port`, brackets removed.
pub fn host_of(address: &str) -> &str {
    let host = match address.rfind(':') {
        Some(i) if !address.ends_with(']') => &address[..i],
        _ => address,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Does `address` belong to `ip`? Exact host comparison (never a substring match).
pub fn address_is_ip(address: &str, ip: &IpAddr) -> bool {
    host_of(address)
        .parse::<IpAddr>()
        .map(|h| &h == ip)
        .unwrap_or(false)
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
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, DatastoreError>>;
    fn remove_by_address<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), DatastoreError>>;
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

pub fn parse_cluster_yaml(text: &str) -> Result<Vec<Member>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_yaml::from_str::<Option<Vec<Member>>>(text)
        .map(Option::unwrap_or_default)
        .map_err(|e| e.to_string())
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

    #[test]
    fn host_matching_is_exact() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(address_is_ip("10.0.0.1:19001", &ip));
        assert!(!address_is_ip("10.0.0.12:19001", &ip));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert!(address_is_ip("[fd00::1]:19001", &v6));
        assert_eq!(host_of("[fd00::1]:19001"), "fd00::1");
    }
}
