//! Driving k8s-dqlite, which hosts this node's member inside the snap (`--datastore
//! external`): its service is stopped and started through the service manager (`snapctl`
//! in the snap), and a new member is made by writing `init.yaml` into an emptied backend
//! directory before k8s-dqlite starts (dqlite.md §3.2): k8s-dqlite then starts a single-node
//! cluster, or joins the listed cluster by itself.
//!
//! Shared by the external join, leave and the settling of both.

use crate::dqlite::{files, Client, NodeInfo};
use crate::state::{mode, StateDir, StateError};
use crate::sys::services::{ServiceAction, ServiceManager};

/// MicroK8s's name of the service that hosts the member.
pub const SERVICE: &str = "k8s-dqlite";

/// Stops the API server, then k8s-dqlite (MicroK8s's order: nothing writes to the member
/// while it goes). Blocking.
pub fn stop(services: &dyn ServiceManager) -> Result<(), String> {
    for service in ["kubelite", SERVICE] {
        services
            .apply(ServiceAction::Stop, service)
            .map_err(|e| format!("stopping {service}: {e}"))?;
    }
    Ok(())
}

/// Starts k8s-dqlite, then the API server; both are tried, failures are joined. Blocking.
pub fn start(services: &dyn ServiceManager) -> Result<(), String> {
    let failures: Vec<String> = [SERVICE, "kubelite"]
        .iter()
        .filter_map(|service| {
            services
                .apply(ServiceAction::Start, service)
                .err()
                .map(|e| format!("starting {service}: {e}"))
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Writes `init.yaml` into the backend: k8s-dqlite's next start creates a member at
/// `address`, joining `cluster` (empty: a new single-node cluster).
pub fn write_init(state: &StateDir, address: &str, cluster: &[String]) -> Result<(), StateError> {
    state.write(
        &state.layout().backend(files::INIT_YAML),
        files::render_init(address, cluster).as_bytes(),
        mode::SECRET,
    )
}

/// The address a new member of this node takes: `host` (the address the cluster saw this
/// node at; bracketed when IPv6) with the port of the member it replaces (`previous`, from
/// `info.yaml`), else dqlite's default port. MicroK8s's `update_dqlite` rule.
pub fn member_address(host: &str, previous: Option<&str>) -> String {
    let port = previous
        .and_then(files::port_of)
        .unwrap_or(crate::dqlite::host::DEFAULT_PORT);
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => crate::util::addr::host_port(&ip, port),
        Err(_) => format!("{host}:{port}"),
    }
}

/// The member the cluster lists at `address`, if any.
pub fn listed_at<'a>(nodes: &'a [NodeInfo], address: &str) -> Option<&'a NodeInfo> {
    nodes.iter().find(|n| n.address == address)
}

/// Asks the cluster (through `client`) to drop the member at `address`, if it lists one: a
/// join being undone must not leave the cluster a member whose datastore is gone. An error
/// names a member that may still be listed.
pub async fn remove_if_listed(client: &Client, address: &str) -> Result<(), String> {
    let nodes = client.cluster().await.map_err(|e| e.to_string())?;
    let Some(id) = listed_at(&nodes, address).map(|n| n.id) else {
        return Ok(());
    };
    if let Err(e) = client.remove(id).await {
        let nodes = client.cluster().await.map_err(|_| e.to_string())?;
        if listed_at(&nodes, address).is_some() {
            return Err(format!("member {id:#x} at {address}: {e}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::services::RecordingServices;

    #[test]
    fn a_new_member_keeps_the_old_port_on_the_address_the_cluster_saw() {
        assert_eq!(
            member_address("10.0.0.2", Some("127.0.0.1:19002")),
            "10.0.0.2:19002"
        );
        assert_eq!(member_address("fd00::2", None), "[fd00::2]:19001");
        assert_eq!(member_address("node-2", Some("garbage")), "node-2:19001");
    }

    #[test]
    fn the_api_server_stops_first_and_starts_last() {
        let services = RecordingServices::default();
        stop(&services).unwrap();
        start(&services).unwrap();
        let calls: Vec<String> = services
            .calls()
            .into_iter()
            .map(|(a, s)| format!("{} {s}", a.verb()))
            .collect();
        assert_eq!(
            calls,
            [
                "stop kubelite",
                "stop k8s-dqlite",
                "start k8s-dqlite",
                "start kubelite"
            ]
        );
    }
}
