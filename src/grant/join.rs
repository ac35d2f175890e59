//! Granting joins: `POST /cluster/api/v2.0/join` (dqlite clusters, control plane or worker) and
//! the legacy `POST /cluster/api/v1.0/join`.
//!
//! MicroK8s's checks, status codes and texts are kept, in MicroK8s's order, with one change of
//! substance: the token is validated first but consumed only after every check has passed,
//! so a refused join can be retried with the same token, and only one of several concurrent
//! joins with a single-use token is granted.

use std::net::IpAddr;

use super::GrantError;
use crate::cluster::datastore::{Member, Role};
use crate::cluster::node::Node;
use crate::cluster::tokens::{Grant, Scope};
use crate::format::wire::{JoinRequest, JoinResponseV1, JoinResponseV2};
use crate::state::StateDir;
use crate::sys::blocking::blocking;

/// How long the datastore may take to say who is in it (k8s-dqlite's falls back to its
/// cluster.yaml after 3 s) …
const MEMBERS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// … and each voter to answer DESCRIBE.
const QUORUM_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The substring of `--etcd-servers` that means "the datastore is dqlite".
const KINE_SOCKET: &str = "/var/kubernetes/backend/kine.sock:12379";

/// Where the request came from and which address it was sent to.
#[derive(Debug, Clone)]
pub struct Origin {
    pub remote_ip: IpAddr,
    /// Host part of the `Host` header (or `:authority`), brackets removed.
    pub host: String,
}

/// MicroK8s's "kube-apiserver prefers InternalIP" test (a substring search, not list parsing).
pub fn prefers_internal_ip(preferred: &str) -> bool {
    match (preferred.find("InternalIP"), preferred.find("Hostname")) {
        (Some(_), None) => true,
        (Some(i), Some(h)) => i < h,
        (None, _) => false,
    }
}

fn arg(state: &StateDir, service: &str, flag: &str) -> Result<String, GrantError> {
    Ok(state
        .read_args(service)?
        .get(flag)
        .unwrap_or_default()
        .to_string())
}

/// Does `hostname` resolve to `ip`?
async fn resolves_to(node: &Node, hostname: &str, ip: IpAddr) -> bool {
    node.resolver().lookup(hostname).await.contains(&ip)
}

/// MicroK8s's choice of the joining node's name: its hostname if that resolves to the
/// address it connected from, else that address.
async fn remote_host(node: &Node, hostname: &str, ip: IpAddr) -> String {
    if resolves_to(node, hostname, ip).await {
        hostname.to_string()
    } else {
        ip.to_string()
    }
}

/// Checks the token, and that it admits this kind of node (a worker, or a control plane),
/// before anything is consumed.
fn check_token(node: &Node, token: &str, worker: bool) -> Result<Grant, GrantError> {
    let Some((grant, scope)) = node.tokens().check_join(token)? else {
        return Err(GrantError::InvalidToken);
    };
    if !scope.admits(worker) {
        return Err(GrantError::WrongRole(match scope {
            Scope::Worker => "This token admits worker nodes only: join with --worker, or ask for a token with `add-node --role control-plane`".into(),
            _ => "This token admits control-plane nodes only: join without --worker, or ask for a token with `add-node --role worker`".into(),
        }));
    }
    Ok(grant)
}

/// Consumes the token after all checks; a concurrent join may have won the race.
fn consume(node: &Node, token: &str) -> Result<(), GrantError> {
    match node.tokens().consume_join_token(token)? {
        Some(_) => Ok(()),
        None => Err(GrantError::InvalidToken),
    }
}

/// The v2 join.
pub async fn join_v2(
    node: &Node,
    req: JoinRequest,
    origin: Origin,
) -> Result<JoinResponseV2, GrantError> {
    // 1. Token (checked, not consumed) and 2. HA cluster, with the API server's settings
    // the later checks need, read in one go off the runtime.
    let (node2, token, worker) = (node.clone(), req.token.clone(), req.is_worker());
    let apiserver = blocking(move || -> Result<_, GrantError> {
        check_token(&node2, &token, worker)?;
        if !node2.state().has_marker("ha-cluster") {
            return Err(GrantError::NotHa);
        }
        Ok(node2.state().read_args("kube-apiserver")?)
    })
    .await?;
    let apiserver_arg = |flag: &str| apiserver.get(flag).unwrap_or_default().to_string();
    // 3. Port: this node's actual cluster-agent port.
    let port = node.settings().bind.port().to_string();
    if req.port != port {
        return Err(GrantError::PortMismatch(port));
    }
    // 4. Joining from the address we are contacted on.
    let remote = origin.remote_ip.to_string();
    if remote == origin.host {
        return Err(GrantError::SameIp(origin.host));
    }
    // 5. Hostname, unless kube-apiserver reaches kubelets by InternalIP.
    let preferred = apiserver_arg("--kubelet-preferred-address-types");
    if !prefers_internal_ip(&preferred) && !resolves_to(node, &req.hostname, origin.remote_ip).await
    {
        return Err(GrantError::HostnameMismatch {
            hostname: req.hostname.clone(),
            ip: remote,
        });
    }
    // 6. Datastore.
    let etcd_servers = apiserver_arg("--etcd-servers");
    let dqlite = etcd_servers.contains(KINE_SOCKET);
    let members = if dqlite {
        let members = tokio::time::timeout(MEMBERS_WAIT, node.datastore().members())
            .await
            .map_err(|_| {
                GrantError::Unavailable(format!(
                    "no datastore leader answered within {}s",
                    MEMBERS_WAIT.as_secs()
                ))
            })??;
        // Only a node with a member of its own can ask the voters (without one, the list is
        // the last configuration in cluster.yaml).
        let (answering, voters) = if node.own_member().is_some() {
            crate::cluster::datastore::voters_answering(&node.datastore(), &members, QUORUM_CHECK)
                .await
        } else {
            (1, 1)
        };
        if voters > 0 && answering * 2 <= voters {
            return Err(GrantError::Unavailable(format!(
                "quorum lost: {answering} of {voters} voters reachable"
            )));
        }
        if members.iter().any(|m| m.is_at(&origin.remote_ip)) {
            return Err(GrantError::Refused(format!(
                "Failed to retrieve dqlite cluster nodes: the joining node ({remote}) is already known to dqlite"
            )));
        }
        members
    } else {
        if !req.can_handle_custom_etcd {
            return Err(GrantError::Refused("This MicroK8s cluster uses a custom etcd endpoint. update MicroK8s to version 1.28 or newer and retry the join operation".into()));
        }
        Vec::new()
    };
    let worker = req.is_worker();
    let token_auth_file = apiserver_arg("--token-auth-file");
    if !worker && token_auth_file.is_empty() && !req.can_handle_x509_auth {
        return Err(GrantError::Refused("Joining this MicroK8s cluster requires x509 authentication. update MicroK8s to version 1.28 or newer and retry the join operation".into()));
    }
    let members = if dqlite && node.settings().external_datastore {
        ensure_routable_address(node, &origin.host, members).await?
    } else {
        members
    };

    let node2 = node.clone();
    let token = req.token.clone();
    let joining = origin.remote_ip;
    let granted = blocking(move || -> Result<_, GrantError> {
        let node = node2;
        let state = node.state();
        let layout = state.layout();
        // Everything that can fail is read before the token is consumed, so a join refused
        // here can be retried with the same token.
        let callback_token = node.tokens().self_callback_token().map_err(|e| {
            GrantError::Internal(format!("Could not retrieve self callback token: {e}"))
        })?;
        let ca = state.read_string(&layout.ca_crt())?;
        let kubelet_args = state
            .read_optional(&layout.args("kubelet"))?
            .unwrap_or_default();
        let mut resp = JoinResponseV2 {
            ca,
            callback_token,
            apiport: arg(state, "kube-apiserver", "--secure-port")?,
            api_authz_mode: arg(state, "kube-apiserver", "--authorization-mode")?,
            kubelet_args,
            hostname_override: remote,
            voters: Vec::new(),
            service_account_key: String::new(),
            admin_token: String::new(),
            ca_key: None,
            cluster_cert: String::new(),
            cluster_key: String::new(),
            control_plane_nodes: None,
            cluster_cidr: arg(state, "kube-proxy", "--cluster-cidr")?,
            etcd_servers: String::new(),
            etcd_ca: String::new(),
            etcd_cert: String::new(),
            etcd_key: String::new(),
        };
        if worker {
            resp.control_plane_nodes = Some(control_plane_ips(&members, &node));
        } else {
            control_plane_material(
                &node,
                &mut resp,
                &members,
                dqlite,
                etcd_servers,
                &token_auth_file,
            )?;
        }

        // Every check passed: the join is granted.
        consume(&node, &token)?;
        if worker {
            node.tokens()
                .add_cert_request_token(&format!("{token}-kubelet"))?;
            node.tokens()
                .add_cert_request_token(&format!("{token}-proxy"))?;
        }
        state.set_marker("no-cert-reissue")?;
        Ok(resp)
    })
    .await?;
    // The grant is done whatever happens now: a stop may come, nothing is left to undo.
    let _ = node.checkpoint("grant-join-granted").await;
    // 10. (after the grant here, so a refused join changes nothing) Calico's autodetection.
    crate::cluster::calico::pin_for_joining_node(node, joining).await;
    Ok(granted)
}

/// The control-plane part of a v2 answer: CA and service-account keys, the admin token in
/// token-auth clusters, and the dqlite certificate and voters (or the etcd client material).
fn control_plane_material(
    node: &Node,
    resp: &mut JoinResponseV2,
    members: &[Member],
    dqlite: bool,
    etcd_servers: String,
    token_auth_file: &str,
) -> Result<(), GrantError> {
    let state = node.state();
    let layout = state.layout();
    resp.ca_key = Some(state.read_string(&layout.ca_key())?);
    resp.service_account_key = state.read_string(&layout.serviceaccount_key())?;
    if !token_auth_file.is_empty() {
        resp.admin_token = node.tokens().known_token("admin")?.ok_or_else(|| {
            GrantError::Refused("Failed to retrieve token for admin user: no admin token".into())
        })?;
    }
    if dqlite {
        resp.cluster_cert = state.read_string(&layout.backend("cluster.crt"))?;
        resp.cluster_key = state.read_string(&layout.backend("cluster.key"))?;
        resp.voters = members
            .iter()
            .filter(|m| m.role == Role::Voter)
            .map(|m| m.address.clone())
            .collect();
        return Ok(());
    }
    resp.etcd_servers = etcd_servers;
    let vars = node.snap_vars();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (flag, field) in [
        ("--etcd-cafile", &mut resp.etcd_ca),
        ("--etcd-certfile", &mut resp.etcd_cert),
        ("--etcd-keyfile", &mut resp.etcd_key),
    ] {
        let value = arg(state, "kube-apiserver", flag)?;
        if value.is_empty() {
            continue;
        }
        let path = crate::format::args::expand_snap_vars(value.trim_matches('"'), &vars);
        *field = state
            .read_string(std::path::Path::new(&path))
            .map_err(|e| GrantError::Refused(format!("Failed to read etcd certificates: {e}")))?;
    }
    Ok(())
}

/// How long a first join waits for k8s-dqlite to come back on its new address.
const REBIND_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// MicroK8s's first-join step: a fresh k8s-dqlite listens on 127.0.0.1, which no other node
/// can reach. Before the first join it is moved to the interface address the joiner
/// contacted (`update.yaml`, restart k8s-dqlite), and the join waits until it is back.
async fn ensure_routable_address(
    node: &Node,
    host: &str,
    members: Vec<Member>,
) -> Result<Vec<Member>, GrantError> {
    let on_loopback = |m: &[Member]| m.len() == 1 && m[0].address.starts_with("127.0.0.1:");
    if !on_loopback(&members) {
        return Ok(members);
    }
    let fail =
        |e: String| GrantError::Refused(format!("Failed to retrieve dqlite cluster nodes: {e}"));
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => {
            crate::util::addr::matching_bind_address(ip, &crate::sys::host::interface_cidrs())
                .map_err(|e| {
                    fail(format!(
                        "failed to find matching dqlite bind address for {host}: {e}"
                    ))
                })?
                .to_string()
        }
        Err(_) => host.to_string(),
    };
    let node2 = node.clone();
    blocking(move || -> Result<_, GrantError> {
        let state = node2.state();
        let port = crate::dqlite::files::read_info(&state.layout().backend_dir())?
            .and_then(|(_, address)| crate::dqlite::files::port_of(&address))
            .unwrap_or(crate::dqlite::host::DEFAULT_PORT);
        let host = if ip.contains(':') { format!("[{ip}]") } else { ip.clone() };
        state.write(
            &state.layout().backend("update.yaml"),
            format!("Address: {host}:{port}\n").as_bytes(),
            crate::state::mode::ARGS,
        )?;
        node2
            .services()
            .restart("k8s-dqlite")
            .map_err(|e| GrantError::Refused(format!("Failed to retrieve dqlite cluster nodes: failed to update dqlite address to \"{ip}\": {e}")))
    })
    .await?;
    let deadline = tokio::time::Instant::now() + REBIND_WAIT;
    loop {
        if let Ok(m) = node.datastore().members().await {
            if !m.is_empty() && !on_loopback(&m) {
                return Ok(m);
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(fail(
                "failed waiting for dqlite cluster to come up: timed out".into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Control-plane addresses for a worker: the hosts of the dqlite members (voters first),
/// else this node's own address. (MicroK8s asks the Kubernetes API for nodes labelled
/// control plane; without an API server the datastore is the source of truth.)
fn control_plane_ips(members: &[Member], node: &Node) -> Vec<String> {
    let mut sorted: Vec<_> = members.iter().collect();
    sorted.sort_by_key(|m| m.role.code());
    let mut out: Vec<String> = Vec::new();
    for m in sorted {
        let host = m.host().to_string();
        if !out.contains(&host) {
            out.push(host);
        }
    }
    if out.is_empty() && !node.settings().bind.ip().is_unspecified() {
        out.push(node.settings().bind.ip().to_string());
    }
    out
}

/// The legacy v1 join (non-HA clusters). Our nodes are always dqlite (HA) clusters, so this
/// answers MicroK8s's "this is an HA cluster" refusal unless `ha-cluster` was removed.
pub async fn join_v1(
    node: &Node,
    req: JoinRequest,
    origin: Origin,
) -> Result<JoinResponseV1, GrantError> {
    let (node2, token, x509) = (node.clone(), req.token.clone(), req.can_handle_x509_auth);
    let kube_proxy_token = blocking(move || -> Result<_, GrantError> {
        let state = node2.state();
        // A v1 join makes a worker (a non-HA cluster has one control plane).
        check_token(&node2, &token, true)?;
        if state.has_marker("ha-cluster") {
            return Err(GrantError::Refused("Failed to join the cluster. This is an HA MicroK8s cluster.\nPlease retry after enabling HA on this joining node with 'microk8s enable ha-cluster'".into()));
        }
        // Cert mode for x509-capable joiners; Token mode (static tokens from
        // known_tokens.csv) for older ones when the API server has a token file; otherwise
        // refused.
        if x509 {
            Ok(None)
        } else if !arg(state, "kube-apiserver", "--token-auth-file")?.is_empty() {
            Ok(Some(node2.tokens().known_token("system:kube-proxy")?.ok_or_else(|| {
                GrantError::Refused(
                    "Failed to retrieve kube-proxy token: no token for system:kube-proxy in known_tokens.csv"
                        .into(),
                )
            })?))
        } else {
            Err(GrantError::Refused("Joining this MicroK8s cluster requires x509 authentication. update MicroK8s to version 1.28 or newer and retry the join operation".into()))
        }
    })
    .await?;
    // The callback token and port end up in `callback-tokens.txt` as `host:port token`
    // lines that MicroK8s's tools read: nothing may break that line format.
    if req.callback.is_empty() || !req.callback.chars().all(|c| c.is_ascii_graphic()) {
        return Err(GrantError::BadRequest(
            "The callback token must be printable ASCII without spaces".into(),
        ));
    }
    if req.port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(GrantError::BadRequest(format!(
            "The port must be a TCP port number, not {:?}",
            req.port
        )));
    }
    let host = remote_host(node, &req.hostname, origin.remote_ip).await;
    let node = node.clone();
    blocking(move || -> Result<_, GrantError> {
        let state = node.state();
        // Read everything that can fail first, so a join refused on its inputs keeps its
        // token. (Token mode's API server restart comes after the grant, as in MicroK8s: a
        // failed restart is reported but the token is spent.)
        let ca = state.read_string(&state.layout().ca_crt())?;
        let mut kubelet_args = state
            .read_optional(&state.layout().args("kubelet"))?
            .unwrap_or_default();
        if host != req.hostname {
            kubelet_args.push_str(&format!("\n--hostname-override={host}"));
        }
        let etcd = arg(state, "etcd", "--listen-client-urls")?;
        let apiport = arg(state, "kube-apiserver", "--secure-port")?;
        let cluster_cidr = arg(state, "kube-proxy", "--cluster-cidr")?;

        consume(&node, &req.token)?;
        let token = req.token.trim().to_string();
        node.tokens().add_cert_request_token(&token)?;
        let endpoint = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", req.port),
            _ => format!("{host}:{}", req.port),
        };
        node.tokens()
            .add_peer_callback_token(&endpoint, &req.callback)?;
        let (api_authn_mode, kubeproxy, kubelet) = match kube_proxy_token {
            None => {
                node.tokens()
                    .add_cert_request_token(&format!("{token}-proxy"))?;
                node.tokens()
                    .add_cert_request_token(&format!("{token}-kubelet"))?;
                ("Cert", token.clone(), token)
            }
            Some(kube_proxy) => {
                let kubelet = node.tokens().kubelet_token(&host)?;
                // The API server reads its token file only at start.
                node.services().restart("apiserver").map_err(|e| {
                    GrantError::Refused(format!("Failed to restart apiserver service: {e}"))
                })?;
                ("Token", kube_proxy, kubelet)
            }
        };
        state.set_marker("no-cert-reissue")?;
        Ok(JoinResponseV1 {
            ca,
            etcd,
            api_authn_mode: api_authn_mode.into(),
            apiport,
            kubeproxy,
            kubelet,
            kubelet_args,
            hostname_override: host,
            cluster_cidr,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_internal_ip_pinned_cases() {
        for v in [
            "",
            "Hostname",
            "Hostname,InternalIP",
            "Hostname,ExternalIP,ExternalDNS",
            "Hostname,ExternalIP,ExternalDNS,InternalIP",
        ] {
            assert!(!prefers_internal_ip(v), "{v}");
        }
        for v in [
            "InternalIP",
            "InternalIP,Hostname",
            "InternalIP,ExternalIP,Hostname",
            "InternalIP,ExternalIP",
        ] {
            assert!(prefers_internal_ip(v), "{v}");
        }
    }
}
