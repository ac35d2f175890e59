//! Turning this node back into a fresh standalone one, file by file: after a control plane
//! left (or was removed from) its cluster, after a worker left. Blocking, idempotent (a
//! daemon that starts after a crash in the middle runs it again from the top), and over the
//! state directory alone, so the leave and the settling of its journal share it.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::state::{mode, StateDir};

/// The cluster's material a control plane drops when it stops being a member: CA, keys,
/// certificates, kubeconfigs, callback token.
const CONTROL_PLANE_CERTS: [&str; 9] = [
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "serviceaccount.key",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "front-proxy-client.crt",
    "front-proxy-client.key",
];

/// Wipes the cluster's material (CA, keys, dqlite data and identity) and bootstraps a new
/// single-node cluster in `failure_domain`. Service arguments are kept.
pub fn reset_control_plane(
    state: &StateDir,
    bind: SocketAddr,
    failure_domain: u64,
) -> Result<(), String> {
    let l = state.layout();
    let backend = l.backend_dir();
    crate::state::remove_dir_all(&backend).map_err(|e| e.to_string())?;
    state.ensure_layout().map_err(|e| e.to_string())?;
    state
        .write(
            &l.backend(crate::dqlite::files::FAILURE_DOMAIN),
            crate::dqlite::files::render_failure_domain(failure_domain).as_bytes(),
            mode::SECRET,
        )
        .map_err(|e| e.to_string())?;
    let certs = CONTROL_PLANE_CERTS.iter().map(|f| l.cert(f));
    let credentials = crate::cluster::bootstrap::KUBECONFIGS
        .iter()
        .chain(&["callback-token.txt"])
        .map(|f| l.credential(f));
    for path in certs
        .chain(credentials)
        .chain([l.marker("no-cert-reissue")])
    {
        state.remove(&path).map_err(|e| e.to_string())?;
    }
    crate::cluster::bootstrap::rebootstrap(state, bind, 1)
        .map_err(|e| format!("Bootstrapping a new single-node cluster failed: {e}"))
}

/// [`reset_control_plane`] for a member k8s-dqlite hosts: k8s-dqlite and the API server are
/// stopped first, an `init.yaml` has k8s-dqlite start a new single-node cluster at
/// `member_address` (this member's), and both start again. Blocking.
pub fn reset_external_control_plane(
    state: &StateDir,
    services: &dyn crate::sys::services::ServiceManager,
    bind: SocketAddr,
    failure_domain: u64,
    member_address: &str,
) -> Result<(), String> {
    crate::cluster::k8s_dqlite::stop(services)?;
    reset_control_plane(state, bind, failure_domain)?;
    crate::cluster::k8s_dqlite::write_init(state, member_address, &[])
        .map_err(|e| e.to_string())?;
    crate::cluster::k8s_dqlite::start(services)
}

/// What a worker's join wrote, which its leave removes.
fn worker_files(state: &StateDir) -> Vec<PathBuf> {
    let l = state.layout();
    vec![
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
    ]
}

/// Every file [`reset_worker`] changes (for the copy a leave saves first).
pub fn worker_reset_touches(state: &StateDir) -> Vec<PathBuf> {
    let mut paths = worker_files(state);
    paths.push(state.layout().marker("no-apiserver-proxy"));
    paths
}

/// Makes a worker a standalone node again: its own CA, fresh kubeconfigs, default kubelet
/// and kube-proxy arguments, no apiserver-proxy.
pub fn reset_worker(state: &StateDir, bind: SocketAddr) -> Result<(), String> {
    state
        .set_marker("no-apiserver-proxy")
        .map_err(|e| e.to_string())?;
    for path in worker_files(state) {
        state.remove(&path).map_err(|e| e.to_string())?;
    }
    crate::cluster::bootstrap::rebootstrap(state, bind, 1).map_err(|e| e.to_string())
}

/// The failure domain the member has now (`backend/failure-domain`), kept across a reset.
pub fn current_failure_domain(state: &StateDir) -> u64 {
    crate::dqlite::files::read_failure_domain(&state.layout().backend_dir())
        .ok()
        .flatten()
        .unwrap_or(1)
}
