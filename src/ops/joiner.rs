//! The joining side of `join`: reach the cluster (pinned TLS, from this node's own bind
//! address), preflight (identity, clock skew, not joining itself), ask for the join, then
//! reconfigure this node — all or nothing: any failure after the answer restores every file
//! it touched.
//!
//! Exit codes are MicroK8s's: 4 the server's identity could not be verified, 6 the server
//! refused (HTTP status ≠ 200), 1 anything else.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::join::JoinResponseV2;
use super::OpError;
use crate::client::peer::{self, Pin};
use crate::connection::{self, Connection};
use crate::node::Node;
use crate::pki::LeafSpec;
use crate::state::backup::Backup;
use crate::state::{mode, StateDir};

/// Largest clock difference tolerated between the two nodes (certificates and token
/// expiries depend on it).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_UNVERIFIED: u8 = 4;
pub const EXIT_REFUSED: u8 = 6;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinClusterRequest {
    pub connection: String,
    pub worker: bool,
    pub skip_verify: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinClusterResponse {
    /// The control-plane node that granted the join.
    pub contacted: String,
    /// Lines to show the user, in order.
    pub messages: Vec<String>,
}

/// One address to try, with what it must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub token: String,
    pub pin: Pin,
}

/// The addresses to try for a connection string, in order.
pub fn targets(conn: &Connection, skip_verify: bool) -> Result<Vec<Target>, OpError> {
    match conn {
        Connection::Legacy {
            addr,
            token,
            fingerprint,
        } => Ok(vec![Target {
            addr: *addr,
            token: token.clone(),
            pin: match fingerprint {
                Some(fp) if !skip_verify => Pin::LeafPrefix(fp.clone()),
                _ => Pin::None,
            },
        }]),
        Connection::Token(t) => t
            .addresses
            .iter()
            .map(|a| {
                let addr: SocketAddr = a.parse().map_err(|_| {
                    OpError::exit(
                        EXIT_FAILURE,
                        format!("Invalid connection: bad address {a:?} in the token string"),
                    )
                })?;
                Ok(Target {
                    addr,
                    token: t.secret.clone(),
                    pin: if skip_verify {
                        Pin::None
                    } else {
                        Pin::Ca(t.ca_sha256.clone())
                    },
                })
            })
            .collect(),
    }
}

/// Is `target` this very node?
pub fn is_self(target: SocketAddr, bind: SocketAddr, local: &[IpAddr]) -> bool {
    if target.port() != bind.port() {
        return false;
    }
    if bind.ip().is_unspecified() {
        target.ip().is_loopback() || local.contains(&target.ip())
    } else {
        target.ip() == bind.ip()
    }
}

/// Seconds between our clock and the server's `Date` header, if it sent one.
pub fn clock_skew(date_header: Option<&str>, now: std::time::SystemTime) -> Option<Duration> {
    let server = httpdate::parse_http_date(date_header?).ok()?;
    Some(match now.duration_since(server) {
        Ok(d) => d,
        Err(e) => e.duration(),
    })
}

fn is_identity_error(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("fingerprint mismatch")
            || text.contains("pinned cluster CA")
            || text.contains("invalid peer certificate")
        {
            return true;
        }
        source = s.source();
    }
    false
}

pub(crate) fn describe_error(e: &reqwest::Error) -> String {
    crate::errtext::error_chain(e)
}

/// Finds a target that answers with the pinned identity and a sane clock.
async fn preflight(node: &Node, targets: &[Target]) -> Result<(Target, reqwest::Client), OpError> {
    let bind = node.settings.bind;
    let local = crate::net::local_addresses();
    let mut failures = Vec::new();
    for target in targets {
        if is_self(target.addr, bind, &local) {
            return Err(OpError::exit(
                EXIT_FAILURE,
                format!("{} is this node: a node cannot join itself. Run the join command on the node you want to add.", target.addr),
            ));
        }
        let client = peer::client(target.pin.clone(), Some(bind.ip()), Duration::from_secs(60))
            .map_err(|e| OpError::exit(EXIT_FAILURE, e.to_string()))?;
        let health = client
            .get(format!("{}/health", peer::base_url(target.addr)))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match health {
            Ok(resp) => {
                let date = resp
                    .headers()
                    .get("date")
                    .and_then(|d| d.to_str().ok())
                    .map(str::to_string);
                if let Some(skew) = clock_skew(date.as_deref(), std::time::SystemTime::now()) {
                    if skew > MAX_CLOCK_SKEW {
                        return Err(OpError::exit(
                            EXIT_FAILURE,
                            format!(
                                "The clocks of this node and {} differ by {}s (more than {}s). Synchronise them (e.g. with NTP) and retry.",
                                target.addr.ip(),
                                skew.as_secs(),
                                MAX_CLOCK_SKEW.as_secs()
                            ),
                        ));
                    }
                }
                return Ok((target.clone(), client));
            }
            Err(e) if is_identity_error(&e) => {
                return Err(OpError::exit(
                    EXIT_UNVERIFIED,
                    format!(
                        "Joining cluster failed. Could not verify the identity of {}. Use '--skip-verify' to skip server certificate check.",
                        target.addr.ip()
                    ),
                ));
            }
            Err(e) => failures.push(format!("{}: {}", target.addr, describe_error(&e))),
        }
    }
    Err(OpError::exit(
        EXIT_FAILURE,
        format!(
            "Could not reach the cluster ({}). Check the address and that the cluster agent port is reachable from this node.",
            failures.join("; ")
        ),
    ))
}

/// The join request body MicroK8s's clients send.
fn join_body(node: &Node, token: &str, worker: bool) -> serde_json::Value {
    serde_json::json!({
        "token": token,
        "hostname": crate::net::hostname(),
        "port": node.settings.bind.port().to_string(),
        "worker": worker,
        "can_handle_x509_auth": true,
        "can_handle_custom_etcd": false,
    })
}

/// MicroK8s's "Connection failed. <error> (<status>)." for a refused join.
async fn refused(resp: reqwest::Response) -> OpError {
    let status = resp.status().as_u16();
    let error = resp
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
    let message = match error {
        Some(e) => format!("Connection failed. {e} ({status})."),
        None => format!("Connection failed. ({status})."),
    };
    OpError::exit(EXIT_REFUSED, message)
}

pub async fn join_cluster(
    node: &Node,
    req: JoinClusterRequest,
) -> Result<JoinClusterResponse, OpError> {
    let conn = connection::parse(&req.connection)
        .map_err(|e| OpError::exit(EXIT_FAILURE, e.to_string()))?;
    if node.state.has_marker("clustered.lock") {
        return Err(OpError::exit(
            EXIT_FAILURE,
            "This node is already a worker of a cluster. Run 'cluster-agent leave' first.",
        ));
    }
    if !req.worker {
        check_can_join_as_control_plane(node).await?;
    }
    let targets = targets(&conn, req.skip_verify)?;
    let (target, client) = preflight(node, &targets).await?;
    let base = peer::base_url(target.addr);
    let resp = client
        .post(format!("{base}/cluster/api/v2.0/join"))
        .json(&join_body(node, &target.token, req.worker))
        .send()
        .await
        .map_err(|e| {
            OpError::exit(
                EXIT_FAILURE,
                format!(
                    "Please ensure the master node is reachable. {}",
                    describe_error(&e)
                ),
            )
        })?;
    if resp.status() != 200 {
        return Err(refused(resp).await);
    }
    let answer: JoinResponseV2 = resp.json().await.map_err(|e| {
        OpError::exit(
            EXIT_FAILURE,
            format!("The cluster answered with an unexpected join response: {e}"),
        )
    })?;
    if !req.worker {
        return super::join_control_plane::join(node, answer, target.addr).await;
    }
    if answer.ca_key.is_some() {
        return Err(OpError::exit(
            EXIT_FAILURE,
            "Joining process failed. Make sure the cluster you connect to supports joining worker nodes.",
        ));
    }

    // Certificates are signed by the cluster before anything local changes.
    let host = crate::net::hostname();
    let mut ips = crate::net::advertised_addresses();
    if !node.settings.bind.ip().is_unspecified() && !ips.contains(&node.settings.bind.ip()) {
        ips.insert(0, node.settings.bind.ip());
    }
    let kubelet_spec = LeafSpec {
        common_name: format!("system:node:{host}"),
        organization: Some("system:nodes".into()),
        dns_names: vec![host.clone()],
        ips,
        ..Default::default()
    };
    let proxy_spec = LeafSpec {
        common_name: "system:kube-proxy".into(),
        ..Default::default()
    };
    let kubelet = sign(
        &client,
        &base,
        &format!("{}-kubelet", target.token),
        &kubelet_spec,
        "kubelet",
    )
    .await?;
    let proxy = sign(
        &client,
        &base,
        &format!("{}-proxy", target.token),
        &proxy_spec,
        "proxy",
    )
    .await?;

    let contacted = target.addr.ip();
    let node2 = node.clone();
    let messages = super::blocking(move || {
        let files = WorkerFiles::new(&node2.state);
        let backup = Backup::take(&node2.state, &files.all()).map_err(|e| {
            OpError::exit(
                EXIT_FAILURE,
                format!("Join failed before changing anything on this node: {e}"),
            )
        })?;
        let result = configure_worker(&node2, &files, &answer, contacted, &kubelet, &proxy);
        if let Err(e) = result {
            let restored = backup.restore();
            let how = match restored {
                Ok(()) => "This node was restored to its previous state.".to_string(),
                Err(r) => format!("Restoring the previous state failed too ({r})."),
            };
            return Err(OpError::exit(
                EXIT_FAILURE,
                format!("Join failed while configuring this node: {e}. {how} Fix the cause and join again with a new token."),
            ));
        }
        let mut messages = Vec::new();
        for service in ["kubelite", "apiserver-proxy", "k8s-dqlite"] {
            if let Err(e) = node2.services.restart(service) {
                messages.push(format!("WARNING: could not restart {service}: {e}"));
            }
        }
        Ok(messages)
    })
    .await?;
    let mut out = messages;
    out.push(String::new());
    out.push(
        "The node has joined the cluster and will appear in the nodes list in a few seconds."
            .into(),
    );
    out.push(String::new());
    out.push(
        "This worker node gets automatically configured with the API server endpoints.".into(),
    );
    out.push("If the API servers are behind a loadbalancer please set the '--refresh-interval' to '0s' in:".into());
    out.push(format!(
        "    {}",
        node.state.layout().args("apiserver-proxy").display()
    ));
    out.push(
        "and replace the API server endpoints with the one provided by the loadbalancer in:".into(),
    );
    out.push(format!(
        "    {}",
        node.state.layout().traefik_provider().display()
    ));
    out.push(String::new());
    out.push("Successfully joined the cluster.".into());
    tracing::info!(contacted = %target.addr, "joined the cluster as a worker");
    Ok(JoinClusterResponse {
        contacted: target.addr.to_string(),
        messages: out,
    })
}

/// A control-plane join replaces this node's datastore: refuse before any token is used if
/// it cannot (no embedded member) or should not (it already has other members).
async fn check_can_join_as_control_plane(node: &Node) -> Result<(), OpError> {
    let Some(live) = node.membership.as_ref().and_then(|m| m.live()) else {
        return Err(OpError::exit(
            EXIT_FAILURE,
            "Joining as a control-plane node needs the embedded dqlite member (--datastore embedded).",
        ));
    };
    if let Ok(members) = live.client.cluster().await {
        if members.len() > 1 {
            return Err(OpError::exit(
                EXIT_FAILURE,
                "This node is already part of a cluster with other members. Run 'cluster-agent leave' first.",
            ));
        }
    }
    Ok(())
}

/// A signed certificate and its key.
struct Signed {
    cert_pem: String,
    key_pem: String,
}

async fn sign(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    spec: &LeafSpec,
    what: &str,
) -> Result<Signed, OpError> {
    let (csr, key_pem) = crate::pki::csr(spec).map_err(|e| OpError::Internal(e.to_string()))?;
    let resp = client
        .post(format!("{base}/cluster/api/v1.0/sign-cert"))
        .json(&serde_json::json!({"token": token, "request": csr}))
        .send()
        .await
        .map_err(|e| {
            OpError::exit(
                EXIT_FAILURE,
                format!("Failed to sign {what} certificate: {}", describe_error(&e)),
            )
        })?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status != 200 {
        let error = body.get("error").and_then(|e| e.as_str()).unwrap_or("");
        return Err(OpError::exit(
            EXIT_FAILURE,
            format!("Failed to sign {what} certificate ({status}). {error}"),
        ));
    }
    let cert_pem = body
        .get("certificate")
        .and_then(|c| c.as_str())
        .ok_or_else(|| {
            OpError::exit(
                EXIT_FAILURE,
                format!("Failed to sign {what} certificate: no certificate in the answer"),
            )
        })?
        .to_string();
    Ok(Signed { cert_pem, key_pem })
}

/// Every file a worker join writes (so the backup covers exactly them).
struct WorkerFiles {
    ca_remote: PathBuf,
    kubelet_crt: PathBuf,
    kubelet_key: PathBuf,
    proxy_crt: PathBuf,
    proxy_key: PathBuf,
    kubelet_config: PathBuf,
    proxy_config: PathBuf,
    callback: PathBuf,
    provider: PathBuf,
    traefik: PathBuf,
    args: Vec<PathBuf>,
    markers: Vec<PathBuf>,
}

const WORKER_MARKERS: [&str; 4] = [
    "clustered.lock",
    "no-k8s-dqlite",
    "no-cert-reissue",
    "no-apiserver-proxy",
];

impl WorkerFiles {
    fn new(state: &StateDir) -> Self {
        let l = state.layout();
        WorkerFiles {
            ca_remote: l.cert("ca.remote.crt"),
            kubelet_crt: l.cert("kubelet.crt"),
            kubelet_key: l.cert("kubelet.key"),
            proxy_crt: l.cert("proxy.crt"),
            proxy_key: l.cert("proxy.key"),
            kubelet_config: l.credential("kubelet.config"),
            proxy_config: l.credential("proxy.config"),
            callback: l.credential("callback-token.txt"),
            provider: l.traefik_provider(),
            traefik: l.args("traefik/traefik.yaml"),
            args: ["kubelet", "kube-proxy", "kube-apiserver", "apiserver-proxy"]
                .iter()
                .map(|s| l.args(s))
                .collect(),
            markers: WORKER_MARKERS.iter().map(|m| l.marker(m)).collect(),
        }
    }

    fn all(&self) -> Vec<PathBuf> {
        let mut v = vec![
            self.ca_remote.clone(),
            self.kubelet_crt.clone(),
            self.kubelet_key.clone(),
            self.proxy_crt.clone(),
            self.proxy_key.clone(),
            self.kubelet_config.clone(),
            self.proxy_config.clone(),
            self.callback.clone(),
            self.provider.clone(),
            self.traefik.clone(),
        ];
        v.extend(self.args.iter().cloned());
        v.extend(self.markers.iter().cloned());
        v
    }
}

/// The addresses the worker's apiserver-proxy balances over: every control plane, at the
/// API server port.
pub fn control_plane_endpoints(answer: &JoinResponseV2, contacted: IpAddr) -> Vec<String> {
    let port: u16 = answer.apiport.parse().unwrap_or(16443);
    let mut ips: Vec<IpAddr> = answer
        .control_plane_nodes
        .iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.push(contacted);
    }
    ips.iter()
        .map(|ip| crate::net::host_port(ip, port))
        .collect()
}

fn configure_worker(
    node: &Node,
    files: &WorkerFiles,
    answer: &JoinResponseV2,
    contacted: IpAddr,
    kubelet: &Signed,
    proxy: &Signed,
) -> Result<(), OpError> {
    let state = &node.state;
    state.write(&files.ca_remote, answer.ca.as_bytes(), mode::PUBLIC)?;
    state.write(&files.kubelet_key, kubelet.key_pem.as_bytes(), mode::SECRET)?;
    state.write(
        &files.kubelet_crt,
        kubelet.cert_pem.as_bytes(),
        mode::PUBLIC,
    )?;
    state.write(&files.proxy_key, proxy.key_pem.as_bytes(), mode::SECRET)?;
    state.write(&files.proxy_crt, proxy.cert_pem.as_bytes(), mode::PUBLIC)?;
    let host = crate::net::hostname();
    let server = "https://127.0.0.1:16443";
    let kubelet_config = crate::kubeconfig::Kubeconfig::with_client_cert(
        server,
        &answer.ca,
        &format!("system:node:{host}"),
        &kubelet.cert_pem,
        &kubelet.key_pem,
    );
    state.write(
        &files.kubelet_config,
        kubelet_config.render().as_bytes(),
        mode::SECRET,
    )?;
    let proxy_config = crate::kubeconfig::Kubeconfig::with_client_cert(
        server,
        &answer.ca,
        "system:kube-proxy",
        &proxy.cert_pem,
        &proxy.key_pem,
    );
    state.write(
        &files.proxy_config,
        proxy_config.render().as_bytes(),
        mode::SECRET,
    )?;

    // kubelet arguments come from the cluster, adapted to a worker.
    let mut kubelet_args = cluster_kubelet_args(answer);
    kubelet_args.set("--client-ca-file", "${SNAP_DATA}/certs/ca.remote.crt");
    kubelet_args.set(
        "--node-labels",
        "\"microk8s.io/cluster=true,node.kubernetes.io/microk8s-worker=microk8s-worker\"",
    );
    state.write(&files.args[0], kubelet_args.render().as_bytes(), mode::ARGS)?;
    state.update_args("kube-proxy", |f| {
        let mut changed = f.remove("--master");
        changed |= f.remove("--hostname-override");
        if !answer.cluster_cidr.is_empty() {
            changed |= f.set("--cluster-cidr", &answer.cluster_cidr);
        }
        changed
    })?;
    adopt_apiserver_args(state, answer)?;
    state.write(
        &files.callback,
        answer.callback_token.as_bytes(),
        mode::SECRET,
    )?;

    let endpoints = control_plane_endpoints(answer, contacted);
    state.write(
        &files.provider,
        render_provider(&endpoints).as_bytes(),
        0o644,
    )?;
    if !files.traefik.exists() {
        state.write(
            &files.traefik,
            render_traefik(&files.provider).as_bytes(),
            0o644,
        )?;
    }
    if !files.args[3].exists() {
        let defaults = crate::bootstrap::default_args(&crate::bootstrap::BootstrapOptions {
            bind: node.settings.bind,
            failure_domain: 1,
        });
        if let Some((_, content)) = defaults.iter().find(|(s, _)| *s == "apiserver-proxy") {
            state.write(&files.args[3], content.as_bytes(), mode::ARGS)?;
        }
    }
    state.remove(&state.layout().marker("no-apiserver-proxy"))?;
    for marker in ["clustered.lock", "no-k8s-dqlite", "no-cert-reissue"] {
        state.set_marker(marker)?;
    }
    Ok(())
}

/// The cluster's kubelet arguments adapted to this node: its own `--node-ip` (the address
/// the cluster saw), no `--hostname-override`.
pub(crate) fn cluster_kubelet_args(answer: &JoinResponseV2) -> crate::args::ArgsFile {
    let mut args = crate::args::ArgsFile::parse(&answer.kubelet_args);
    if args.contains("--node-ip") {
        args.set("--node-ip", &answer.hostname_override);
    }
    args.remove("--hostname-override");
    args
}

/// The cluster's API server authorisation mode and port.
pub(crate) fn adopt_apiserver_args(
    state: &StateDir,
    answer: &JoinResponseV2,
) -> Result<(), OpError> {
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

/// `args/traefik/provider.yaml` in MicroK8s's format.
pub fn render_provider(endpoints: &[String]) -> String {
    crate::proxy::config::render_provider(endpoints)
}

/// `args/traefik/traefik.yaml`: the listen address and where the provider file is.
pub fn render_traefik(provider: &std::path::Path) -> String {
    format!(
        "entryPoints:\n  apiserver:\n    address: \":16443\"\nproviders:\n  file:\n    filename: {}\n    watch: true\n",
        provider.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_detection() {
        let bind: SocketAddr = "10.0.0.5:25000".parse().unwrap();
        assert!(is_self("10.0.0.5:25000".parse().unwrap(), bind, &[]));
        assert!(!is_self("10.0.0.6:25000".parse().unwrap(), bind, &[]));
        assert!(!is_self("10.0.0.5:25001".parse().unwrap(), bind, &[]));
        let any: SocketAddr = "0.0.0.0:25000".parse().unwrap();
        let local: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        assert!(is_self("10.0.0.5:25000".parse().unwrap(), any, &local));
        assert!(is_self("127.0.0.1:25000".parse().unwrap(), any, &local));
    }

    #[test]
    fn skew_from_date_header() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            clock_skew(Some("Sun, 06 Nov 1994 08:49:37 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            clock_skew(Some("Sun, 06 Nov 1994 08:50:37 GMT"), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(clock_skew(Some("garbage"), now), None);
        assert_eq!(clock_skew(None, now), None);
    }

    #[test]
    fn targets_from_both_connection_forms() {
        let t = "a".repeat(32);
        let c = connection::parse(&format!("10.0.0.1:25000/{t}/abcdef012345")).unwrap();
        assert_eq!(
            targets(&c, false).unwrap()[0].pin,
            Pin::LeafPrefix("abcdef012345".into())
        );
        assert_eq!(targets(&c, true).unwrap()[0].pin, Pin::None);
        let s = connection::TokenString {
            secret: t.clone(),
            ca_sha256: "b".repeat(64),
            addresses: vec!["10.0.0.1:25000".into(), "[fd00::1]:25000".into()],
        };
        let c = connection::parse(&s.render()).unwrap();
        let ts = targets(&c, false).unwrap();
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[1].addr, "[fd00::1]:25000".parse().unwrap());
        assert_eq!(ts[1].pin, Pin::Ca("b".repeat(64)));
    }

    #[test]
    fn provider_lists_every_control_plane() {
        let text = render_provider(&["10.0.0.4:16443".into(), "[fd00::1]:16443".into()]);
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let servers = &v["tcp"]["services"]["kube-apiserver"]["loadBalancer"]["servers"];
        assert_eq!(servers[0]["address"].as_str(), Some("10.0.0.4:16443"));
        assert_eq!(servers[1]["address"].as_str(), Some("[fd00::1]:16443"));
    }
}
