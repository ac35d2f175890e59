//! Turns an empty state directory into a single-node control plane: PKI, dqlite cluster
//! certificate, callback token, default service arguments, kubeconfigs and markers.
//!
//! Invariant: idempotent and never destructive. Material that exists is kept; a
//! half-present pair (a certificate without its key) is an error that names the file, never a
//! silent regeneration.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::format::kubeconfig::Kubeconfig;
use crate::pki::{self, Authority, LeafSpec, PemPair, PkiError};
use crate::state::{mode, StateDir, StateError};
use crate::sys::host::HostIdentity;
use crate::util::secret;

/// The kubeconfigs bootstrap issues (under `credentials/`).
pub const KUBECONFIGS: [&str; 5] = [
    "client.config",
    "kubelet.config",
    "proxy.config",
    "scheduler.config",
    "controller.config",
];

/// The address kube-apiserver and the local kubeconfigs use.
pub const APISERVER_URL: &str = "https://127.0.0.1:16443";
/// First address of MicroK8s's service range, the in-cluster `kubernetes` service IP.
pub const KUBERNETES_SERVICE_IP: &str = "10.152.183.1";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path}: {source}")]
    Pki { path: PathBuf, source: PkiError },
    #[error("{present} exists but {missing} is missing; restore it or remove both to regenerate")]
    HalfPair { present: PathBuf, missing: PathBuf },
}

#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// The daemon's `--bind`, written into `args/cluster-agent`; a specific IP also becomes a
    /// SAN of the server certificate.
    pub bind: SocketAddr,
    /// Written into `args/ha-conf` when that file is created.
    pub failure_domain: u64,
}

/// What bootstrap created, relative to the state directory.
#[derive(Debug, Default)]
pub struct BootstrapReport {
    pub created: Vec<PathBuf>,
}

/// [`bootstrap`] for this machine after a join or leave removed some material.
pub fn rebootstrap(
    state: &StateDir,
    bind: std::net::SocketAddr,
    failure_domain: u64,
) -> Result<(), BootstrapError> {
    bootstrap(
        state,
        &HostIdentity::discover(),
        &BootstrapOptions {
            bind,
            failure_domain,
        },
    )
    .map(|_| ())
}

pub fn bootstrap(
    state: &StateDir,
    host: &HostIdentity,
    opts: &BootstrapOptions,
) -> Result<BootstrapReport, BootstrapError> {
    state.ensure_layout()?;
    let mut run = Run {
        state,
        report: BootstrapReport::default(),
    };
    let layout = state.layout();

    let ca = run.authority(layout.ca_crt(), layout.ca_key(), KUBERNETES_SERVICE_IP)?;
    if let Some(ca) = &ca {
        run.leaf_pair(
            ca,
            layout.server_crt(),
            layout.server_key(),
            &server_spec(host, opts),
        )?;
        run.kubeconfigs(ca, host)?;
    }
    run.file(layout.serviceaccount_key(), mode::SECRET, || {
        pki::private_key_pem()
    })?;

    if let Some(fp_ca) = run.authority(
        layout.cert("front-proxy-ca.crt"),
        layout.cert("front-proxy-ca.key"),
        "front-proxy-ca",
    )? {
        let spec = LeafSpec {
            common_name: "front-proxy-client".into(),
            client: true,
            ..Default::default()
        };
        run.leaf_pair(
            &fp_ca,
            layout.cert("front-proxy-client.crt"),
            layout.cert("front-proxy-client.key"),
            &spec,
        )?;
    }

    run.pair(
        layout.backend("cluster.crt"),
        layout.backend("cluster.key"),
        || pki::self_signed(&dqlite_spec(host)),
    )?;

    run.text(
        layout.credential("callback-token.txt"),
        mode::SECRET,
        format!("{}\n", secret::random_alnum(64)),
    )?;
    for (service, content) in default_args(opts) {
        run.text(layout.args(service), mode::ARGS, content)?;
    }
    if !state.has_marker("ha-cluster") {
        state.set_marker("ha-cluster")?;
        run.report.created.push("var/lock/ha-cluster".into());
    }
    Ok(run.report)
}

struct Run<'a> {
    state: &'a StateDir,
    report: BootstrapReport,
}

impl Run<'_> {
    fn note(&mut self, path: &std::path::Path) {
        let rel = path
            .strip_prefix(self.state.root())
            .unwrap_or(path)
            .to_path_buf();
        self.report.created.push(rel);
    }

    fn text(&mut self, path: PathBuf, mode: u32, content: String) -> Result<(), BootstrapError> {
        if self
            .state
            .write_if_missing(&path, content.as_bytes(), mode)?
        {
            self.note(&path);
        }
        Ok(())
    }

    fn file(
        &mut self,
        path: PathBuf,
        mode: u32,
        make: impl FnOnce() -> Result<String, PkiError>,
    ) -> Result<(), BootstrapError> {
        if crate::state::exists(&path) {
            return Ok(());
        }
        let content = make().map_err(|source| BootstrapError::Pki {
            path: path.clone(),
            source,
        })?;
        self.text(path, mode, content)
    }

    /// Creates a certificate/key pair unless both exist. The key is written first, so an
    /// interrupted run leaves "key without certificate", which the next run reports.
    fn pair(
        &mut self,
        crt: PathBuf,
        key: PathBuf,
        make: impl FnOnce() -> Result<PemPair, PkiError>,
    ) -> Result<bool, BootstrapError> {
        match (crate::state::exists(&crt), crate::state::exists(&key)) {
            (true, true) => Ok(false),
            (true, false) => Err(BootstrapError::HalfPair {
                present: crt,
                missing: key,
            }),
            (false, true) => Err(BootstrapError::HalfPair {
                present: key,
                missing: crt,
            }),
            (false, false) => {
                let pair = make().map_err(|source| BootstrapError::Pki {
                    path: crt.clone(),
                    source,
                })?;
                self.state
                    .write(&key, pair.key_pem.as_bytes(), mode::SECRET)?;
                self.note(&key);
                self.state
                    .write(&crt, pair.cert_pem.as_bytes(), mode::PUBLIC)?;
                self.note(&crt);
                Ok(true)
            }
        }
    }

    fn leaf_pair(
        &mut self,
        ca: &Authority,
        crt: PathBuf,
        key: PathBuf,
        spec: &LeafSpec,
    ) -> Result<bool, BootstrapError> {
        self.pair(crt, key, || ca.issue(spec))
    }

    /// Loads or creates a CA. A CA certificate without its key (a worker node) yields `None`:
    /// nothing can be issued, and nothing is overwritten.
    fn authority(
        &mut self,
        crt: PathBuf,
        key: PathBuf,
        common_name: &str,
    ) -> Result<Option<Authority>, BootstrapError> {
        let pki_err = |path: &PathBuf| {
            let path = path.clone();
            move |source| BootstrapError::Pki { path, source }
        };
        match (crate::state::exists(&crt), crate::state::exists(&key)) {
            (true, true) => {
                let cert_pem = self.state.read_string(&crt)?;
                let key_pem = self.state.read_string(&key)?;
                Authority::load(&cert_pem, &key_pem)
                    .map(Some)
                    .map_err(pki_err(&crt))
            }
            (true, false) => Ok(None),
            (false, true) => Err(BootstrapError::HalfPair {
                present: key,
                missing: crt,
            }),
            (false, false) => {
                let ca = Authority::generate(common_name).map_err(pki_err(&crt))?;
                self.state
                    .write(&key, ca.key_pem().as_bytes(), mode::SECRET)?;
                self.note(&key);
                self.state
                    .write(&crt, ca.cert_pem().as_bytes(), mode::PUBLIC)?;
                self.note(&crt);
                Ok(Some(ca))
            }
        }
    }

    fn kubeconfigs(&mut self, ca: &Authority, host: &HostIdentity) -> Result<(), BootstrapError> {
        let users = [
            ("client.config", "admin", Some("system:masters")),
            (
                "kubelet.config",
                &format!("system:node:{}", host.hostname) as &str,
                Some("system:nodes"),
            ),
            ("proxy.config", "system:kube-proxy", None),
            ("scheduler.config", "system:kube-scheduler", None),
            ("controller.config", "system:kube-controller-manager", None),
        ];
        for (file, user, group) in users {
            let path = self.state.layout().credential(file);
            if crate::state::exists(&path) {
                continue;
            }
            let spec = LeafSpec {
                common_name: user.to_string(),
                organization: group.map(str::to_string),
                client: true,
                ..Default::default()
            };
            let pair = ca.issue(&spec).map_err(|source| BootstrapError::Pki {
                path: path.clone(),
                source,
            })?;
            let config = Kubeconfig::with_client_cert(
                APISERVER_URL,
                ca.cert_pem(),
                user,
                &pair.cert_pem,
                &pair.key_pem,
            );
            self.text(path, mode::SECRET, config.render())?;
        }
        Ok(())
    }
}

/// SANs of `certs/server.crt`, served on :25000 and by kube-apiserver.
fn server_spec(host: &HostIdentity, opts: &BootstrapOptions) -> LeafSpec {
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        KUBERNETES_SERVICE_IP
            .parse()
            .unwrap_or(IpAddr::from([10, 152, 183, 1])),
    ];
    let bind_ip = opts.bind.ip();
    for ip in host
        .addresses
        .iter()
        .copied()
        .chain((!bind_ip.is_unspecified()).then_some(bind_ip))
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let mut dns_names = vec![host.hostname.clone()];
    for name in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster",
        "kubernetes.default.svc.cluster.local",
    ] {
        if !dns_names.iter().any(|n| n == name) {
            dns_names.push(name.to_string());
        }
    }
    LeafSpec {
        common_name: "127.0.0.1".into(),
        dns_names,
        ips,
        server: true,
        client: true,
        ..Default::default()
    }
}

/// The dqlite cluster certificate: self-signed, shared by every member, with a DNS SAN because
/// go-dqlite uses the first DNS SAN as the TLS server name.
fn dqlite_spec(host: &HostIdentity) -> LeafSpec {
    LeafSpec {
        common_name: "k8s".into(),
        dns_names: vec![host.hostname.clone()],
        ips: vec![IpAddr::from([127, 0, 0, 1])],
        server: true,
        client: true,
        ..Default::default()
    }
}

/// Default service argument files, following MicroK8s's `default-args` (`${SNAP_DATA}` is
/// expanded by whoever starts the service, as in the snap).
pub fn default_args(opts: &BootstrapOptions) -> Vec<(&'static str, String)> {
    vec![
        (
            "cluster-agent",
            format!(
                "--bind {}\n--keyfile \"${{SNAP_DATA}}/certs/server.key\"\n--certfile \"${{SNAP_DATA}}/certs/server.crt\"\n--timeout 240\n",
                opts.bind
            ),
        ),
        ("ha-conf", format!("failure-domain={}\n", opts.failure_domain)),
        (
            "kubelet",
            concat!(
                "--kubeconfig=${SNAP_DATA}/credentials/kubelet.config\n",
                "--cert-dir=${SNAP_DATA}/certs\n",
                "--client-ca-file=${SNAP_DATA}/certs/ca.crt\n",
                "--anonymous-auth=false\n",
                "--root-dir=${SNAP_COMMON}/var/lib/kubelet\n",
                "--fail-swap-on=false\n",
                "--eviction-hard=\"memory.available<100Mi,nodefs.available<1Gi,imagefs.available<1Gi\"\n",
                "--container-runtime-endpoint=${SNAP_COMMON}/run/containerd.sock\n",
                "--node-labels=\"microk8s.io/cluster=true,node.kubernetes.io/microk8s-controlplane=microk8s-controlplane\"\n",
                "--authentication-token-webhook=true\n",
                "--read-only-port=0\n",
            )
            .to_string(),
        ),
        (
            "kube-apiserver",
            concat!(
                "--cert-dir=${SNAP_DATA}/certs\n",
                "--service-cluster-ip-range=10.152.183.0/24\n",
                "--authorization-mode=RBAC,Node\n",
                "--service-account-key-file=${SNAP_DATA}/certs/serviceaccount.key\n",
                "--service-account-signing-key-file=${SNAP_DATA}/certs/serviceaccount.key\n",
                "--service-account-issuer=https://kubernetes.default.svc\n",
                "--client-ca-file=${SNAP_DATA}/certs/ca.crt\n",
                "--tls-cert-file=${SNAP_DATA}/certs/server.crt\n",
                "--tls-private-key-file=${SNAP_DATA}/certs/server.key\n",
                "--secure-port=16443\n",
                "--etcd-servers=\"unix://${SNAP_DATA}/var/kubernetes/backend/kine.sock:12379\"\n",
                "--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP\n",
                "--requestheader-client-ca-file=${SNAP_DATA}/certs/front-proxy-ca.crt\n",
                "--requestheader-allowed-names=front-proxy-client\n",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-\n",
                "--requestheader-group-headers=X-Remote-Group\n",
                "--requestheader-username-headers=X-Remote-User\n",
                "--proxy-client-cert-file=${SNAP_DATA}/certs/front-proxy-client.crt\n",
                "--proxy-client-key-file=${SNAP_DATA}/certs/front-proxy-client.key\n",
            )
            .to_string(),
        ),
        (
            "kube-proxy",
            concat!(
                "--kubeconfig=${SNAP_DATA}/credentials/proxy.config\n",
                "--cluster-cidr=10.1.0.0/16\n",
                "--healthz-bind-address=127.0.0.1\n",
            )
            .to_string(),
        ),
        (
            "apiserver-proxy",
            concat!(
                "--traefik-config ${SNAP_DATA}/args/traefik/traefik.yaml\n",
                "--kubeconfig ${SNAP_DATA}/credentials/kubelet.config\n",
                "--refresh-interval 30s\n",
            )
            .to_string(),
        ),
        (
            "k8s-dqlite",
            concat!(
                "--storage-dir=${SNAP_DATA}/var/kubernetes/backend/\n",
                "--listen=unix://${SNAP_DATA}/var/kubernetes/backend/kine.sock:12379\n",
            )
            .to_string(),
        ),
    ]
}
