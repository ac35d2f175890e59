//! The member's identity files in `var/kubernetes/backend/`, in the formats go-dqlite's app
//! layer (and so k8s-dqlite) reads and writes (dqlite.md §3.1, §3.2):
//! - `info.yaml`: this node, `Address` / `ID` / `Role` (Role is always 0);
//! - `cluster.yaml`: a list of such entries, the last known configuration (a seed list for
//!   leader discovery, not authoritative);
//! - `failure-domain`: a YAML document holding one unsigned integer.
//!
//! Parsing and rendering are pure; the `read_*` / `write_*` helpers are the only I/O and go
//! through [`crate::state::write_atomic`] (mode 0600, as go-dqlite writes them).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{NodeInfo, Role};
use crate::state::{self, mode, StateError};

pub const INFO_YAML: &str = "info.yaml";
pub const CLUSTER_YAML: &str = "cluster.yaml";
pub const FAILURE_DOMAIN: &str = "failure-domain";
/// k8s-dqlite's first-start instructions (dqlite.md §3.2): consumed, then deleted.
pub const INIT_YAML: &str = "init.yaml";

/// One YAML entry. Keys are case-sensitive; on output the order is Address, ID, Role (what
/// Debian's go-dqlite 1.11 writes); on input any order. IDs routinely exceed `i64::MAX`.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "Address")]
    address: String,
    #[serde(rename = "ID", default)]
    id: u64,
    #[serde(rename = "Role", default)]
    role: u64,
}

impl Entry {
    fn from_node(n: &NodeInfo) -> Entry {
        Entry {
            address: n.address.clone(),
            id: n.id,
            role: n.role.code(),
        }
    }

    fn into_node(self) -> Result<NodeInfo, String> {
        let role = Role::from_code(self.role).map_err(|e| e.to_string())?;
        if self.address.trim().is_empty() {
            return Err("empty Address".into());
        }
        Ok(NodeInfo {
            id: self.id,
            address: self.address,
            role,
        })
    }
}

fn to_yaml<T: Serialize>(value: &T) -> String {
    // Serialising plain strings and integers cannot fail; an empty document is the
    // harmless fallback.
    serde_yaml::to_string(value).unwrap_or_default()
}

/// `info.yaml` for this node. go-dqlite always writes `Role: 0` there.
pub fn render_info(id: u64, address: &str) -> String {
    to_yaml(&Entry {
        address: address.to_string(),
        id,
        role: 0,
    })
}

/// Parses `info.yaml`; returns (id, address). A zero id is rejected: a node needs one.
pub fn parse_info(text: &str) -> Result<(u64, String), String> {
    let entry: Entry = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    if entry.id == 0 {
        return Err("ID is missing or 0".into());
    }
    let node = entry.into_node()?;
    Ok((node.id, node.address))
}

/// `cluster.yaml` from a configuration (in the order given: raft's order).
pub fn render_cluster(nodes: &[NodeInfo]) -> String {
    let entries: Vec<Entry> = nodes.iter().map(Entry::from_node).collect();
    to_yaml(&entries)
}

/// Parses `cluster.yaml`; an empty file is an empty list. A missing `Role` reads as voter
/// (0) and a missing `ID` as 0, like go-dqlite's seed entries.
pub fn parse_cluster(text: &str) -> Result<Vec<NodeInfo>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Option<Vec<Entry>> = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    entries
        .unwrap_or_default()
        .into_iter()
        .map(Entry::into_node)
        .collect()
}

/// `init.yaml` for k8s-dqlite: this member's `Address` and the `Cluster` it joins (empty for
/// a new single-node cluster). Quoted where YAML needs it (`[fd00::1]:19001`).
pub fn render_init(address: &str, cluster: &[String]) -> String {
    #[derive(Serialize)]
    struct Init<'a> {
        #[serde(rename = "Address")]
        address: &'a str,
        #[serde(rename = "Cluster")]
        cluster: &'a [String],
    }
    to_yaml(&Init { address, cluster })
}

/// The port of a member address (`host:port`, `[v6]:port`), if it has one.
pub fn port_of(address: &str) -> Option<u16> {
    address.rsplit_once(':')?.1.parse().ok()
}

pub fn render_failure_domain(code: u64) -> String {
    format!("{code}\n")
}

pub fn parse_failure_domain(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    serde_yaml::from_str::<u64>(text)
        .map_err(|_| format!("expected a non-negative integer, found {text:?}"))
}

fn read_parsed<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, StateError> {
    let Some(text) = state::read_optional(path)? else {
        return Ok(None);
    };
    parse(&text)
        .map(Some)
        .map_err(|reason| StateError::Malformed {
            path: path.to_path_buf(),
            reason,
        })
}

/// `backend/info.yaml` as (id, address), if present.
pub fn read_info(backend: &Path) -> Result<Option<(u64, String)>, StateError> {
    read_parsed(&backend.join(INFO_YAML), parse_info)
}

pub fn write_info(backend: &Path, id: u64, address: &str) -> Result<(), StateError> {
    state::write_atomic(
        &backend.join(INFO_YAML),
        render_info(id, address).as_bytes(),
        mode::SECRET,
    )
}

pub fn read_cluster(backend: &Path) -> Result<Option<Vec<NodeInfo>>, StateError> {
    read_parsed(&backend.join(CLUSTER_YAML), parse_cluster)
}

pub fn write_cluster(backend: &Path, nodes: &[NodeInfo]) -> Result<(), StateError> {
    state::write_atomic(
        &backend.join(CLUSTER_YAML),
        render_cluster(nodes).as_bytes(),
        mode::SECRET,
    )
}

pub fn read_failure_domain(backend: &Path) -> Result<Option<u64>, StateError> {
    read_parsed(&backend.join(FAILURE_DOMAIN), parse_failure_domain)
}

/// Writes `failure-domain` unless it already holds `code`. Returns whether it wrote.
pub fn sync_failure_domain(backend: &Path, code: u64) -> Result<bool, StateError> {
    if read_failure_domain(backend)? == Some(code) {
        return Ok(false);
    }
    state::write_atomic(
        &backend.join(FAILURE_DOMAIN),
        render_failure_domain(code).as_bytes(),
        mode::SECRET,
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, address: &str, role: Role) -> NodeInfo {
        NodeInfo {
            id,
            address: address.into(),
            role,
        }
    }

    #[test]
    fn info_yaml_matches_go_dqlite() {
        let text = render_info(3297041220608546238, "10.0.0.1:19001");
        assert_eq!(
            text,
            "Address: 10.0.0.1:19001\nID: 3297041220608546238\nRole: 0\n"
        );
        assert_eq!(
            parse_info(&text).unwrap(),
            (3297041220608546238, "10.0.0.1:19001".into())
        );
        // Other key order (go-dqlite HEAD), ids above i64::MAX.
        assert_eq!(
            parse_info("ID: 10999694518841497859\nAddress: 10.0.0.2:19001\nRole: 0\n").unwrap(),
            (10999694518841497859, "10.0.0.2:19001".into())
        );
        assert!(parse_info("Address: 10.0.0.1:19001\n").is_err(), "no id");
        assert!(parse_info("ID: 5\n").is_err(), "no address");
        assert!(parse_info("- x\n").is_err());
    }

    #[test]
    fn cluster_yaml_matches_k8s_dqlite() {
        let nodes = vec![
            node(3297041220608546238, "10.0.0.1:19001", Role::Voter),
            node(10999694518841497859, "10.0.0.2:19001", Role::StandBy),
            node(7, "10.0.0.3:19001", Role::Spare),
        ];
        let text = render_cluster(&nodes);
        assert_eq!(
            text,
            "- Address: 10.0.0.1:19001\n  ID: 3297041220608546238\n  Role: 0\n\
             - Address: 10.0.0.2:19001\n  ID: 10999694518841497859\n  Role: 1\n\
             - Address: 10.0.0.3:19001\n  ID: 7\n  Role: 2\n"
        );
        assert_eq!(parse_cluster(&text).unwrap(), nodes);
    }

    #[test]
    fn cluster_yaml_leniency_and_errors() {
        // go-dqlite's seed entries: ID 0; a missing Role is a voter.
        let seeds = parse_cluster("- Address: 10.0.0.1:19001\n  ID: 0\n- Address: x:1\n").unwrap();
        assert_eq!(seeds[0], node(0, "10.0.0.1:19001", Role::Voter));
        assert_eq!(seeds[1].role, Role::Voter);
        assert!(parse_cluster("").unwrap().is_empty());
        assert!(parse_cluster("[]\n").unwrap().is_empty());
        assert!(parse_cluster("- Address: a:1\n  Role: 7\n").is_err());
        assert!(parse_cluster("Address: a:1\n").is_err(), "not a list");
    }

    #[test]
    fn ipv6_addresses_are_quoted_and_round_trip() {
        let nodes = vec![node(9, "[fd00::1]:19001", Role::Voter)];
        let text = render_cluster(&nodes);
        assert!(text.contains("'[fd00::1]:19001'"), "{text}");
        assert_eq!(parse_cluster(&text).unwrap(), nodes);
    }

    #[test]
    fn failure_domain_document() {
        assert_eq!(render_failure_domain(3), "3\n");
        assert_eq!(parse_failure_domain("3\n").unwrap(), 3);
        assert_eq!(parse_failure_domain("").unwrap(), 0);
        assert!(parse_failure_domain("-1").is_err());
        assert!(parse_failure_domain("abc").is_err());
    }

    #[test]
    fn files_are_written_atomically_and_private() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_info(dir.path()).unwrap(), None);
        write_info(dir.path(), 42, "127.0.0.1:19001").unwrap();
        assert_eq!(
            read_info(dir.path()).unwrap(),
            Some((42, "127.0.0.1:19001".into()))
        );
        let mode = state::mode_of(&dir.path().join(INFO_YAML)).unwrap();
        assert_eq!(mode & 0o777, 0o600);

        assert!(sync_failure_domain(dir.path(), 2).unwrap());
        assert!(!sync_failure_domain(dir.path(), 2).unwrap());
        assert_eq!(read_failure_domain(dir.path()).unwrap(), Some(2));

        state::write_atomic(
            &dir.path().join(CLUSTER_YAML),
            b"- Address: a:1\n  Role: 9\n",
            0o600,
        )
        .unwrap();
        let err = read_cluster(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cluster.yaml"), "{err}");
    }

    #[test]
    fn init_yaml_is_what_k8s_dqlite_reads() {
        let text = render_init(
            "[fd00::2]:19001",
            &["10.0.0.1:19001".into(), "[fd00::1]:19001".into()],
        );
        #[derive(Deserialize)]
        struct Init {
            #[serde(rename = "Address")]
            address: String,
            #[serde(rename = "Cluster")]
            cluster: Vec<String>,
        }
        let back: Init = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back.address, "[fd00::2]:19001");
        assert_eq!(back.cluster, vec!["10.0.0.1:19001", "[fd00::1]:19001"]);
        assert_eq!(
            render_init("127.0.0.1:19001", &[]),
            "Address: 127.0.0.1:19001\nCluster: []\n"
        );
        assert_eq!(port_of("[fd00::1]:19002"), Some(19002));
        assert_eq!(port_of("10.0.0.1"), None);
    }
}
