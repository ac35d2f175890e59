//! The embedded dqlite member: the daemon hosts the node's libdqlite member in-process with
//! the topology of go-dqlite's app layer (dqlite.md §4, dqlite-hosting-notes.md), so the
//! Debian `dqlite` shell and MicroK8s's k8s-dqlite can talk to it:
//!
//! ```text
//!  peers / clients ──TLS──▶ --dqlite-bind (rustls, client cert required) ──splice──▶ @abstract socket ─▶ libdqlite
//!  libdqlite ─connect callback─▶ socketpair ◀──bridge task──▶ TLS client ──▶ peer's --dqlite-bind
//! ```
//!
//! Invariants:
//! - libdqlite only ever sees an abstract Unix socket (reachable from this process only)
//!   and socketpair ends; every byte on the network is mutual TLS with the cluster cert.
//! - The member's id is in `info.yaml` before the node first starts; a restart reuses it and
//!   never bootstraps over existing raft data.
//! - The node is stopped before the tokio runtime goes away ([`EmbeddedMember::stop`], or
//!   `Drop` as a fallback); the connect callback never blocks a runtime thread.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::ffi::{self, FfiError, BOOTSTRAP_ID};
use super::files;
use super::tls::{self, ClientTls, TlsError};
use super::{NodeInfo, Role};
use crate::state::StateError;

/// go-dqlite's and MicroK8s's dqlite port.
pub const DEFAULT_PORT: u16 = 19001;
/// Outgoing raft connection: TCP connect + TLS handshake (go-dqlite: 5 s). Each attempt
/// holds one of libuv's 4 threadpool threads, so it stays short.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Incoming connection: TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent spliced connections accepted on `--dqlite-bind`.
const MAX_CONNECTIONS: usize = 512;
/// How often `cluster.yaml` is refreshed from the leader (go-dqlite: 30 s).
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
const REFRESH_RETRY_MIN: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Library(FfiError),
    #[error("dqlite member: {0}")]
    Node(FfiError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("dqlite cluster certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen for dqlite on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("dqlite address {address:?} in {path} is not IP:PORT")]
    BadAddress { path: PathBuf, address: String },
    #[error(
        "--dqlite-bind {requested} differs from the member's address {stored} in {path}; \
         a member cannot change its address (omit --dqlite-bind to use {stored})"
    )]
    AddressMismatch {
        path: PathBuf,
        stored: String,
        requested: SocketAddr,
    },
    #[error("{dir} holds raft data but no info.yaml: the member's identity is lost")]
    DataWithoutIdentity { dir: PathBuf },
    #[error("{path} exists: reset the member before joining another cluster")]
    AlreadyMember { path: PathBuf },
    #[error("dqlite member task failed: {0}")]
    Task(String),
}

/// Default expected one-way latency between members. It sets raft's heartbeat (1.5 ×) and
/// election timeout (15 ×, here 2.25 s instead of libdqlite's 3 s default), so a dead leader
/// is replaced sooner; fine for LANs. `--dqlite-network-latency` raises it for a WAN.
pub const DEFAULT_NETWORK_LATENCY: std::time::Duration = std::time::Duration::from_millis(150);

/// How to start the member.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// `var/kubernetes/backend`: identity files, cluster.crt/key and the raft data.
    pub backend_dir: PathBuf,
    /// The member's cluster address (`--dqlite-bind`): raft address and TLS listener.
    pub bind: SocketAddr,
    /// `bind` was given by the user. A default yields to the address in `info.yaml`; an
    /// explicit value that differs is an error.
    pub bind_explicit: bool,
    pub cert_pem: String,
    pub key_pem: String,
    pub failure_domain: u64,
    /// Expected one-way latency between members (raft heartbeat and election timeouts).
    pub network_latency: std::time::Duration,
    /// `Some(seeds)`: start a fresh member that an existing cluster's leader will ADD (no
    /// bootstrap of its own); `seeds` (existing members' addresses) seed `cluster.yaml`.
    pub join: Option<Vec<String>>,
}

/// Who the member is, decided from the backend directory before anything starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `info.yaml` exists: same id and address, no bootstrap.
    Existing { id: u64, address: String },
    /// First member of a new cluster: the bootstrap id, single-voter configuration.
    Bootstrap { address: String },
    /// A fresh member for an existing cluster: a generated id, no configuration.
    Joiner { address: String, seeds: Vec<String> },
}

/// Decides the identity (pure). `info` is `info.yaml` as (id, address).
pub fn plan_identity(
    backend: &Path,
    info: Option<(u64, String)>,
    has_raft_data: bool,
    bind: SocketAddr,
    bind_explicit: bool,
    join: Option<&[String]>,
) -> Result<Identity, HostError> {
    let info_path = backend.join(files::INFO_YAML);
    match (info, join) {
        (Some(_), Some(_)) => Err(HostError::AlreadyMember { path: info_path }),
        (Some((id, address)), None) => {
            if bind_explicit && address != bind.to_string() {
                return Err(HostError::AddressMismatch {
                    path: info_path,
                    stored: address,
                    requested: bind,
                });
            }
            Ok(Identity::Existing { id, address })
        }
        (None, _) if has_raft_data => Err(HostError::DataWithoutIdentity {
            dir: backend.to_path_buf(),
        }),
        (None, None) => Ok(Identity::Bootstrap {
            address: bind.to_string(),
        }),
        (None, Some(seeds)) => Ok(Identity::Joiner {
            address: bind.to_string(),
            seeds: seeds.to_vec(),
        }),
    }
}

/// Is this file name one libdqlite/raft writes (metadata, segments, snapshots)?
pub fn is_raft_file(name: &str) -> bool {
    let segment = |s: &str| {
        let mut parts = s.split('-');
        matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(a), Some(b), None)
                if a.len() == 16 && b.len() == 16
                    && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
        )
    };
    name == "metadata1"
        || name == "metadata2"
        || name.starts_with("open-")
        || name.starts_with("snapshot-")
        || segment(name)
}

fn has_raft_data(dir: &Path) -> Result<bool, StateError> {
    Ok(crate::state::list_dir(dir)?
        .unwrap_or_default()
        .iter()
        .any(|name| is_raft_file(name)))
}

/// `--dqlite-bind` default: the `--bind` IP when it is specific, else the first
/// non-loopback local address, else 127.0.0.1; port 19001.
pub fn default_bind(bind: SocketAddr, local_addresses: &[IpAddr]) -> SocketAddr {
    let ip = if bind.ip().is_unspecified() {
        local_addresses
            .iter()
            .copied()
            .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    } else {
        bind.ip()
    };
    SocketAddr::new(ip, DEFAULT_PORT)
}

/// A running member. Stop it with [`EmbeddedMember::stop`] before the runtime ends.
pub struct EmbeddedMember {
    id: u64,
    address: String,
    local: String,
    node: Option<ffi::Node>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    refresh: Arc<Notify>,
}

impl std::fmt::Debug for EmbeddedMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedMember")
            .field("id", &self.id)
            .field("address", &self.address)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl EmbeddedMember {
    /// [`EmbeddedMember::prepare`], then [`PreparedMember::start`].
    pub async fn start(config: MemberConfig) -> Result<EmbeddedMember, HostError> {
        Self::prepare(config)?.start().await
    }

    /// Everything that can be checked before binding or writing anything: loads libdqlite,
    /// decides the identity from the backend directory, builds both TLS configurations.
    pub fn prepare(config: MemberConfig) -> Result<PreparedMember, HostError> {
        let lib = ffi::Library::load().map_err(HostError::Library)?;
        let backend = config.backend_dir.clone();
        let identity = plan_identity(
            &backend,
            files::read_info(&backend)?,
            has_raft_data(&backend)?,
            config.bind,
            config.bind_explicit,
            config.join.as_deref(),
        )?;
        let listen: SocketAddr = match &identity {
            Identity::Existing { address, .. } => {
                address.parse().map_err(|_| HostError::BadAddress {
                    path: backend.join(files::INFO_YAML),
                    address: address.clone(),
                })?
            }
            Identity::Bootstrap { .. } | Identity::Joiner { .. } => config.bind,
        };
        Ok(PreparedMember {
            lib,
            identity,
            listen,
            server_tls: tls::server_config(&config.cert_pem, &config.key_pem)?,
            client_tls: tls::client_config(&config.cert_pem, &config.key_pem)?,
            backend,
            failure_domain: config.failure_domain,
            network_latency: config.network_latency,
        })
    }
}

/// A member whose configuration has been checked; nothing bound or written yet.
pub struct PreparedMember {
    lib: Arc<ffi::Library>,
    identity: Identity,
    listen: SocketAddr,
    server_tls: Arc<rustls::ServerConfig>,
    client_tls: ClientTls,
    backend: PathBuf,
    failure_domain: u64,
    network_latency: std::time::Duration,
}

impl std::fmt::Debug for PreparedMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMember")
            .field("identity", &self.identity)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl PreparedMember {
    /// Binds the TLS listener, writes the identity files, starts the node and begins
    /// serving. Must run inside a multi-threaded tokio runtime.
    pub async fn start(self) -> Result<EmbeddedMember, HostError> {
        let PreparedMember {
            lib,
            identity,
            listen,
            server_tls,
            client_tls,
            backend,
            failure_domain,
            network_latency,
        } = self;
        ffi::ignore_sigpipe();
        let latency_ms = u32::try_from(network_latency.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let (id, address, seed) = match identity {
            Identity::Existing { id, address } => {
                let seed = vec![own_entry(id, &address)];
                (id, address, seed)
            }
            Identity::Bootstrap { address } => {
                let seed = vec![own_entry(BOOTSTRAP_ID, &address)];
                (BOOTSTRAP_ID, address, seed)
            }
            Identity::Joiner { address, seeds } => {
                let id = lib.generate_node_id(&address).map_err(HostError::Node)?;
                let seed = seeds
                    .into_iter()
                    .map(|a| NodeInfo {
                        id: 0,
                        address: a,
                        role: Role::Voter,
                    })
                    .collect();
                (id, address, seed)
            }
        };
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| HostError::Bind {
                addr: listen,
                source,
            })?;

        // Identity on disk before the node may write raft data.
        {
            let (backend, address) = (backend.clone(), address.clone());
            tokio::task::spawn_blocking(move || -> Result<(), StateError> {
                if files::read_info(&backend)?.is_none() {
                    files::write_info(&backend, id, &address)?;
                    files::write_cluster(&backend, &seed)?;
                } else if files::read_cluster(&backend)?.is_none() {
                    files::write_cluster(&backend, &seed)?;
                }
                files::sync_failure_domain(&backend, failure_domain)?;
                Ok(())
            })
            .await
            .map_err(|e| HostError::Task(e.to_string()))??;
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let local = format!("@cluster-agent-dqlite-{}-{id:x}", std::process::id());
        let dialer = dialer(
            tokio::runtime::Handle::current(),
            client_tls.clone(),
            stop_rx.clone(),
        );
        let node = {
            let (address, local, backend) = (address.clone(), local.clone(), backend.clone());
            tokio::task::spawn_blocking(move || -> Result<ffi::Node, FfiError> {
                let mut node = lib.create_node(id, &address, &backend)?;
                node.set_bind_address(&local)?;
                node.set_connect(dialer)?;
                node.set_failure_domain(failure_domain)?;
                node.set_network_latency_ms(latency_ms)?;
                node.start()?;
                Ok(node)
            })
            .await
            .map_err(|e| HostError::Task(e.to_string()))?
            .map_err(HostError::Node)?
        };
        info!(
            id = format_args!("{id:#x}"),
            %address,
            local = %local,
            failure_domain,
            "dqlite member started"
        );

        let refresh = Arc::new(Notify::new());
        let tasks = vec![
            tokio::spawn(accept_loop(
                listener,
                tokio_rustls::TlsAcceptor::from(server_tls),
                local.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(refresh_loop(
                backend,
                address.clone(),
                client_tls,
                stop_rx,
                Arc::clone(&refresh),
            )),
        ];
        Ok(EmbeddedMember {
            id,
            address,
            local,
            node: Some(node),
            stop_tx,
            tasks,
            refresh,
        })
    }
}

impl EmbeddedMember {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The cluster address (`ip:port`) peers and clients dial.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The node's abstract socket (`@…`): plain protocol, this process only. The dqlite
    /// client accepts it as an address.
    pub fn local_address(&self) -> &str {
        &self.local
    }

    /// Asks for a `cluster.yaml` refresh now (e.g. after a membership change).
    pub fn refresh_cluster_yaml(&self) {
        self.refresh.notify_one();
    }

    /// Stops serving and stops the node (`dqlite_node_stop`, then destroy).
    pub async fn stop(mut self) -> Result<(), HostError> {
        let tasks = self.signal_stop();
        // Wait for the aborted tasks to be gone: the TLS listener must be closed before this
        // returns, so a member started next on the same address can bind it.
        for task in tasks {
            let _ = task.await;
        }
        let Some(mut node) = self.node.take() else {
            return Ok(());
        };
        let id = self.id;
        tokio::task::spawn_blocking(move || {
            let res = node.stop();
            drop(node);
            res
        })
        .await
        .map_err(|e| HostError::Task(e.to_string()))?
        .map_err(HostError::Node)?;
        info!(id = format_args!("{id:#x}"), "dqlite member stopped");
        Ok(())
    }

    fn signal_stop(&mut self) -> Vec<JoinHandle<()>> {
        let _ = self.stop_tx.send(true);
        let tasks: Vec<JoinHandle<()>> = self.tasks.drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        tasks
    }
}

impl Drop for EmbeddedMember {
    fn drop(&mut self) {
        let _ = self.signal_stop();
        if self.node.is_some() {
            warn!("dqlite member dropped without stop(); stopping it synchronously");
        }
        // `ffi::Node`'s Drop stops and destroys the node.
        self.node = None;
    }
}

fn own_entry(id: u64, address: &str) -> NodeInfo {
    NodeInfo {
        id,
        address: address.to_string(),
        role: Role::Voter,
    }
}

/// go-dqlite's socket settings for proxied TCP connections: keepalive 3 s / 3 s / 3 probes
/// and TCP_USER_TIMEOUT 30 s, so a vanished peer is noticed.
fn tune_tcp(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(3))
        .with_interval(Duration::from_secs(3))
        .with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        debug!(error = %e, "cannot set TCP keepalive");
    }
    if let Err(e) = sock.set_tcp_user_timeout(Some(Duration::from_secs(30))) {
        debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

/// Connects to an abstract Unix socket (`@name` or `name`). A Unix connect blocks while the
/// listener's backlog is full (libdqlite's loop busy), so it runs on a blocking thread,
/// never on a runtime worker.
pub(crate) async fn connect_local(name: &str) -> io::Result<tokio::net::UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(
        name.strip_prefix('@').unwrap_or(name).as_bytes(),
    )?;
    let stream = tokio::task::spawn_blocking(move || {
        let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        stream.set_nonblocking(true)?;
        Ok::<_, io::Error>(stream)
    })
    .await
    .map_err(io::Error::other)??;
    tokio::net::UnixStream::from_std(stream)
}

/// Copies both ways until both sides are done. A peer that vanishes without TLS
/// close_notify (kill -9) is an ordinary end.
async fn splice<A, B>(mut a: A, mut b: B, peer: &str)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(&mut a, &mut b).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
        Err(e) => debug!(peer, error = %e, "dqlite connection ended with an error"),
    }
}

/// The TLS terminator on `--dqlite-bind`: client certificate required (verified against
/// the cluster certificate), then spliced to the node's abstract socket. Serves client and
/// raft traffic alike (they share the port).
async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    local: String,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!(error = %e, "dqlite listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "dqlite listener at its connection limit; dropping connection");
            continue;
        };
        tune_tcp(&tcp);
        let acceptor = acceptor.clone();
        let local = local.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let peer = peer.to_string();
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                // Peers can trigger these at will: debug level only.
                Ok(Err(e)) => return debug!(%peer, error = %e, "dqlite TLS handshake failed"),
                Err(_) => return debug!(%peer, "dqlite TLS handshake timed out"),
            };
            match connect_local(&local).await {
                Ok(unix) => splice(tls, unix, &peer).await,
                Err(e) => debug!(%peer, error = %e, "dqlite node not reachable"),
            }
        });
    }
}

/// The connect function given to libdqlite: dial the peer over TLS, bridge it to one end
/// of a socketpair, hand the other end to libdqlite.
fn dialer(
    handle: tokio::runtime::Handle,
    tls: ClientTls,
    stop: watch::Receiver<bool>,
) -> ffi::Dialer {
    Box::new(move |address: &str| {
        // libdqlite calls this on libuv threadpool threads. `block_on` on a runtime
        // thread would panic; refuse instead.
        if tokio::runtime::Handle::try_current().is_ok() {
            warn!("dqlite connect callback called on a runtime thread; refusing");
            return None;
        }
        if *stop.borrow() {
            return None;
        }
        let mut stopped = stop.clone();
        let stream = handle.block_on(async {
            tokio::select! {
                r = tokio::time::timeout(DIAL_TIMEOUT, dial_tls(address, &tls)) => match r {
                    Ok(Ok(s)) => Some(s),
                    Ok(Err(e)) => {
                        debug!(peer = address, error = %e, "dqlite dial failed");
                        None
                    }
                    Err(_) => {
                        debug!(peer = address, "dqlite dial timed out");
                        None
                    }
                },
                _ = stopped.wait_for(|s| *s) => None,
            }
        })?;
        let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot create a socketpair for a dqlite connection");
                return None;
            }
        };
        // Our end goes to tokio (non-blocking); libdqlite's end stays blocking: it writes
        // the protocol word and CONNECT right after we return, then libuv takes over.
        if let Err(e) = ours.set_nonblocking(true) {
            warn!(error = %e, "cannot configure a dqlite socketpair");
            return None;
        }
        let peer = address.to_string();
        handle.spawn(async move {
            match tokio::net::UnixStream::from_std(ours) {
                Ok(ours) => splice(stream, ours, &peer).await,
                Err(e) => debug!(peer, error = %e, "cannot bridge a dqlite connection"),
            }
        });
        Some(OwnedFd::from(theirs))
    })
}

async fn dial_tls(
    address: &str,
    tls: &ClientTls,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    tune_tcp(&tcp);
    tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
        .connect(tls.server_name.clone(), tcp)
        .await
}

/// Keeps `cluster.yaml` equal to the leader's configuration: at start (retrying with
/// backoff until it works), every [`REFRESH_INTERVAL`], and when asked.
async fn refresh_loop(
    backend: PathBuf,
    address: String,
    tls: ClientTls,
    mut stop: watch::Receiver<bool>,
    now: Arc<Notify>,
) {
    let mut retry = REFRESH_RETRY_MIN;
    loop {
        let wait = match refresh_once(&backend, &address, &tls).await {
            Ok(changed) => {
                if changed {
                    debug!("cluster.yaml updated from the leader");
                }
                retry = REFRESH_RETRY_MIN;
                REFRESH_INTERVAL
            }
            Err(e) => {
                debug!(error = %e, "cannot refresh cluster.yaml yet");
                let wait = retry;
                retry = (retry * 2).min(REFRESH_INTERVAL);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = now.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One refresh: seeds are this member and the current `cluster.yaml`. Returns whether the
/// file changed.
async fn refresh_once(backend: &Path, address: &str, tls: &ClientTls) -> Result<bool, String> {
    let current = files::read_cluster(backend).map_err(|e| e.to_string())?;
    let mut seeds = vec![address.to_string()];
    seeds.extend(current.iter().flatten().map(|n| n.address.clone()));
    let opts = super::Options {
        dial_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let client = super::Client::new(seeds, Some(tls.clone()), opts).map_err(|e| e.to_string())?;
    let nodes = client.cluster().await.map_err(|e| e.to_string())?;
    if nodes.is_empty() || current.as_ref() == Some(&nodes) {
        return Ok(false);
    }
    let backend = backend.to_path_buf();
    tokio::task::spawn_blocking(move || files::write_cluster(&backend, &nodes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn identity_fresh_directory_bootstraps() {
        let dir = Path::new("/b");
        let got = plan_identity(dir, None, false, addr("10.0.0.1:19001"), false, None).unwrap();
        assert_eq!(
            got,
            Identity::Bootstrap {
                address: "10.0.0.1:19001".into()
            }
        );
    }

    #[test]
    fn identity_restart_reuses_info_yaml() {
        let dir = Path::new("/b");
        let info = Some((42, "10.0.0.1:19001".to_string()));
        // The default address moved (new DHCP lease): info.yaml wins.
        let got = plan_identity(dir, info.clone(), true, addr("10.0.0.9:19001"), false, None);
        assert_eq!(
            got.unwrap(),
            Identity::Existing {
                id: 42,
                address: "10.0.0.1:19001".into()
            }
        );
        // An explicit, different --dqlite-bind is refused, naming the file.
        let err = plan_identity(dir, info.clone(), true, addr("10.0.0.9:19001"), true, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/b/info.yaml") && err.contains("10.0.0.9:19001"),
            "{err}"
        );
        // An explicit, equal one is fine.
        assert!(plan_identity(dir, info, true, addr("10.0.0.1:19001"), true, None).is_ok());
    }

    #[test]
    fn identity_joiner_and_refusals() {
        let dir = Path::new("/b");
        let seeds = vec!["10.0.0.2:19001".to_string()];
        let got = plan_identity(
            dir,
            None,
            false,
            addr("10.0.0.1:19001"),
            false,
            Some(&seeds),
        );
        assert_eq!(
            got.unwrap(),
            Identity::Joiner {
                address: "10.0.0.1:19001".into(),
                seeds: seeds.clone()
            }
        );
        let info = Some((42, "10.0.0.1:19001".to_string()));
        assert!(matches!(
            plan_identity(dir, info, true, addr("10.0.0.1:19001"), false, Some(&seeds)),
            Err(HostError::AlreadyMember { .. })
        ));
        assert!(matches!(
            plan_identity(dir, None, true, addr("10.0.0.1:19001"), false, None),
            Err(HostError::DataWithoutIdentity { .. })
        ));
    }

    #[test]
    fn raft_file_names() {
        for name in [
            "metadata1",
            "metadata2",
            "open-1",
            "0000000000000001-0000000000000004",
            "snapshot-1-1024-123456",
            "snapshot-1-1024-123456.meta",
        ] {
            assert!(is_raft_file(name), "{name}");
        }
        for name in [
            "info.yaml",
            "cluster.yaml",
            "cluster.crt",
            "failure-domain",
            "init.yaml",
            "1-2",
        ] {
            assert!(!is_raft_file(name), "{name}");
        }
    }

    #[test]
    fn default_bind_rules() {
        let local: Vec<IpAddr> = vec![
            "127.0.0.1".parse().unwrap(),
            "10.1.2.3".parse().unwrap(),
            "fd00::1".parse().unwrap(),
        ];
        assert_eq!(
            default_bind(addr("192.168.1.5:25000"), &local),
            addr("192.168.1.5:19001")
        );
        assert_eq!(
            default_bind(addr("0.0.0.0:25000"), &local),
            addr("10.1.2.3:19001")
        );
        assert_eq!(
            default_bind(addr("0.0.0.0:25000"), &local[..1]),
            addr("127.0.0.1:19001")
        );
        assert_eq!(
            default_bind(addr("[::]:25000"), &[]),
            addr("127.0.0.1:19001")
        );
    }
}
