//! The worker half of `join`, after the cluster granted it: kubelet and kube-proxy
//! certificates signed by the cluster with the one-time tokens of the grant, kubeconfigs
//! that reach the API servers through the local apiserver-proxy, the proxy's list of control
//! planes, MicroK8s's worker markers. All or nothing: a failure restores every file.
//!
//! Writes: `certs/{ca.remote.crt,kubelet.crt,kubelet.key,proxy.crt,proxy.key}`,
//! `credentials/{kubelet.config,proxy.config,callback-token.txt}`,
//! `args/{kubelet,kube-proxy,kube-apiserver,apiserver-proxy}`,
//! `args/traefik/{provider.yaml,traefik.yaml}`, `var/lock/{clustered.lock,no-k8s-dqlite,
//! no-cert-reissue}` (and removes `var/lock/no-apiserver-proxy`).

use std::net::IpAddr;
use std::path::PathBuf;

use super::adopt::{adopt_apiserver_args, cluster_kubelet_args, register, Registration};
use super::error::JoinError;
use super::target::Target;
use super::{refusal_text, JOIN_TIMEOUT};
use crate::cluster::journal::{Change, Journal, Record, WorkerStep};
use crate::cluster::node::Node;
use crate::cluster::operation::Ticket;
use crate::format::kubeconfig::Kubeconfig;
use crate::format::traefik::{render_provider, render_traefik};
use crate::format::wire::{JoinResponseV2, SignCertRequest, SignCertResponse};
use crate::pki::LeafSpec;
use crate::state::{mode, StateDir};
use crate::sys::blocking::blocking;

/// Configures this node as a worker of the cluster that sent `answer`. Returns the lines to
/// show the user.
pub async fn join(
    node: &Node,
    answer: &JoinResponseV2,
    target: &Target,
    ticket: &Ticket,
    registration: &Registration,
) -> Result<Vec<String>, JoinError> {
    let registration = registration.clone();
    if answer.ca_key.is_some() {
        return Err(JoinError::NotAWorkerCluster);
    }
    // Certificates are signed by the cluster before anything local changes.
    let host = crate::sys::host::hostname();
    let bind_ip = node.settings().bind.ip();
    let mut ips = crate::sys::host::advertised_addresses();
    if !bind_ip.is_unspecified() && !ips.contains(&bind_ip) {
        ips.insert(0, bind_ip);
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
    ticket.step("having the kubelet and kube-proxy certificates signed");
    let kubelet = sign(node, target, "-kubelet", &kubelet_spec, "kubelet").await?;
    let proxy = sign(node, target, "-proxy", &proxy_spec, "proxy").await?;

    ticket.step("configuring this node as a worker");
    let contacted = target.addr.ip();
    let node2 = node.clone();
    let answer = answer.clone();
    let started = node.clock().now_unix();
    let journal = Journal::new(node.state());
    let journal2 = journal.clone();
    blocking(move || {
        let files = WorkerFiles::new(node2.state());
        journal2
            .save_files(&files.all())
            .and_then(|_| {
                journal2.record(&Record {
                    change: Change::JoinWorker {
                        step: WorkerStep::Configuring,
                    },
                    started,
                })
            })
            .map_err(|e| JoinError::NothingChanged(e.to_string()))
    })
    .await?;
    node.checkpoint("join-worker-configuring")
        .await
        .map_err(|_| JoinError::Stopped)?;
    let node2 = node.clone();
    let mut messages = blocking(move || {
        let files = WorkerFiles::new(node2.state());
        let result = configure_worker(
            &node2,
            &files,
            &answer,
            contacted,
            (&kubelet, &proxy),
            &registration,
        );
        if let Err(e) = result {
            let restored = journal
                .saved_files()
                .and_then(|saved| saved.map_or(Ok(()), |s| s.restore()))
                .and_then(|()| journal.clear());
            return Err(match restored {
                Ok(()) => JoinError::RolledBack {
                    cause: e.to_string(),
                    restored: "This node was restored to its previous state.".into(),
                },
                Err(r) => JoinError::RollbackFailed {
                    cause: e.to_string(),
                    restore_error: format!(
                        "Restoring the previous state failed too ({r}); the daemon tries again when it starts."
                    ),
                },
            });
        }
        // Every file is written: from here a crash finishes the join (settling restarts
        // the services) instead of undoing it.
        let mut messages = Vec::new();
        let configured = Record {
            change: Change::JoinWorker {
                step: WorkerStep::Configured,
            },
            started,
        };
        if let Err(e) = journal.record(&configured) {
            messages.push(format!("WARNING: cannot update the journal ({e})."));
        }
        messages.extend(node2.restart_each(&["kubelite", "apiserver-proxy", "k8s-dqlite"]));
        if let Err(e) = journal.clear() {
            messages.push(format!(
                "WARNING: cannot clear the journal ({e}); the daemon finishes the join again when it starts."
            ));
        }
        Ok(messages)
    })
    .await?;
    let layout = node.state().layout();
    messages.extend([
        String::new(),
        "The node has joined the cluster and will appear in the nodes list in a few seconds."
            .into(),
        String::new(),
        "This worker node gets automatically configured with the API server endpoints.".into(),
        "If the API servers are behind a loadbalancer please set the '--refresh-interval' to '0s' in:".into(),
        format!("    {}", layout.args("apiserver-proxy").display()),
        "and replace the API server endpoints with the one provided by the loadbalancer in:".into(),
        format!("    {}", layout.traefik_provider().display()),
        String::new(),
        "Successfully joined the cluster.".into(),
    ]);
    tracing::info!(contacted = %target.addr, "joined the cluster as a worker");
    Ok(messages)
}

/// A signed certificate and its key.
struct Signed {
    cert_pem: String,
    key_pem: String,
}

/// Has the cluster sign a fresh key for `spec` with the grant's `<token><suffix>`.
async fn sign(
    node: &Node,
    target: &Target,
    suffix: &str,
    spec: &LeafSpec,
    what: &str,
) -> Result<Signed, JoinError> {
    let (csr, key_pem) = crate::pki::csr(spec).map_err(|e| JoinError::Internal(e.to_string()))?;
    let request = SignCertRequest {
        token: format!("{}{suffix}", target.token),
        request: csr,
    };
    let body = serde_json::to_vec(&request).map_err(|e| JoinError::Internal(e.to_string()))?;
    let answer = node
        .peers()
        .post_json(
            target.addr,
            &target.pin,
            "/cluster/api/v1.0/sign-cert",
            body,
            JOIN_TIMEOUT,
        )
        .await
        .map_err(|e| JoinError::SignFailed(format!("Failed to sign {what} certificate: {e}")))?;
    if answer.status != 200 {
        let error = refusal_text(&answer).unwrap_or_default();
        return Err(JoinError::SignFailed(format!(
            "Failed to sign {what} certificate ({}). {error}",
            answer.status
        )));
    }
    let signed: SignCertResponse = serde_json::from_slice(&answer.body).map_err(|_| {
        JoinError::SignFailed(format!(
            "Failed to sign {what} certificate: no certificate in the answer"
        ))
    })?;
    Ok(Signed {
        cert_pem: signed.certificate,
        key_pem,
    })
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
        .map(|ip| crate::util::addr::host_port(ip, port))
        .collect()
}

fn configure_worker(
    node: &Node,
    files: &WorkerFiles,
    answer: &JoinResponseV2,
    contacted: IpAddr,
    (kubelet, proxy): (&Signed, &Signed),
    registration: &Registration,
) -> Result<(), crate::state::StateError> {
    let state = node.state();
    state.write(&files.ca_remote, answer.ca.as_bytes(), mode::PUBLIC)?;
    state.write(&files.kubelet_key, kubelet.key_pem.as_bytes(), mode::SECRET)?;
    state.write(
        &files.kubelet_crt,
        kubelet.cert_pem.as_bytes(),
        mode::PUBLIC,
    )?;
    state.write(&files.proxy_key, proxy.key_pem.as_bytes(), mode::SECRET)?;
    state.write(&files.proxy_crt, proxy.cert_pem.as_bytes(), mode::PUBLIC)?;
    let host = crate::sys::host::hostname();
    let server = "https://127.0.0.1:16443";
    let kubelet_config = Kubeconfig::with_client_cert(
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
    let proxy_config = Kubeconfig::with_client_cert(
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
    register(&mut kubelet_args, registration);
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
    if !crate::state::exists(&files.traefik) {
        state.write(
            &files.traefik,
            render_traefik(&files.provider).as_bytes(),
            0o644,
        )?;
    }
    if !crate::state::exists(&files.args[3]) {
        let defaults =
            crate::cluster::bootstrap::default_args(&crate::cluster::bootstrap::BootstrapOptions {
                bind: node.settings().bind,
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
