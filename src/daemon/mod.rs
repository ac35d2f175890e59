//! The long-running daemon: resolves and validates all configuration, takes the state lock,
//! bootstraps the state directory, then serves HTTPS on `--bind` and the control socket until
//! SIGTERM/SIGINT.
//!
//! Modules: [`launcher`] (the launch-configuration watcher).
//!
//! Invariant: nothing is bound before every input (flags, args files, certificate and key) has
//! been loaded and validated, so a bad config never leaves a half-started daemon behind.

pub mod launcher;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, https, AppState};
use crate::clients::peer::HttpsPeers;
use crate::cluster::bootstrap::{self, BootstrapError, BootstrapOptions};
use crate::cluster::datastore::NodeDatastore;
use crate::cluster::metrics::Metrics;
use crate::cluster::node::{Node, NodeParts, NodeSettings};
use crate::cluster::roles::driver::{self as roles, RolesConfig, StepAside};
use crate::cluster::serving::{Serving, ServingError};
use crate::control::server as control;
use crate::control::wire::DaemonInfo;
use crate::dqlite::external::ExternalMember;
use crate::dqlite::membership::{MemberTemplate, Membership};
use crate::state::{StateDir, StateError, StateLock};
use crate::sys::clock::SystemClock;
use crate::sys::host::HostIdentity;
use crate::sys::resolver::SystemResolver;
use crate::sys::runner::SystemRunner;
use crate::sys::services::{self, ServiceManagerKind};

pub use crate::pki::tls::MinTls;

/// How long a stopping leader may spend handing leadership over.
pub const HANDOVER_BUDGET: Duration = Duration::from_secs(2);

/// How long open connections get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A stop ends within this, whatever the cluster does (the README promises 5 s; the
/// runtime's own shutdown adds at most 200 ms).
pub const STOP_BUDGET: Duration = Duration::from_millis(4300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatastoreMode {
    /// The daemon hosts the node's dqlite member.
    Embedded,
    /// k8s-dqlite hosts it (inside the MicroK8s snap); the daemon is a client.
    External,
}

/// Fully resolved daemon configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub bind: SocketAddr,
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub request_timeout: Duration,
    pub min_tls: MinTls,
    pub service_manager: ServiceManagerKind,
    pub datastore: DatastoreMode,
    pub failure_domain: Option<u64>,
    pub dqlite_bind: Option<SocketAddr>,
    /// Expected one-way latency between dqlite members (raft timeouts scale with it).
    pub dqlite_network_latency: Duration,
    /// Failed token attempts per source before HTTP 429 …
    pub auth_failure_limit: usize,
    /// … within this window.
    pub auth_failure_window: Duration,
    pub capi_token_file: PathBuf,
    pub env: crate::state::Environment,
    /// Voter/stand-by targets and probe cadence of the roles manager.
    pub roles: RolesConfig,
    /// Run the roles manager even with `--datastore external` (k8s-dqlite runs go-dqlite's).
    pub manage_roles: bool,
    /// The launch-configuration watcher (`None`: disabled, or no `$SNAP_COMMON`).
    pub launcher: Option<launcher::LauncherConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Serving(#[from] ServingError),
    #[error(transparent)]
    Tls(#[from] crate::pki::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    ControlSocket(#[from] control::ControlSocketError),
    #[error(transparent)]
    Settle(#[from] crate::local::settle::SettleError),
    #[error("dqlite member: {0}")]
    Member(String),
    #[error(transparent)]
    Dqlite(#[from] crate::dqlite::HostError),
}

/// Everything validated and bound, ready to serve.
pub struct Daemon {
    _lock: StateLock,
    config: DaemonConfig,
    listener: TcpListener,
    control: tokio::net::UnixListener,
    tls: Arc<rustls::ServerConfig>,
    app: AppState,
    membership: Option<Arc<Membership>>,
    /// The member k8s-dqlite hosts (external datastore).
    external: Option<Arc<ExternalMember>>,
    failure_domain: u64,
}

impl Daemon {
    /// Validates, locks, bootstraps and binds. Fails with a message naming the culprit.
    pub async fn start(config: DaemonConfig, host: HostIdentity) -> Result<Daemon, DaemonError> {
        let state = StateDir::for_node(&config.state_dir, &config.env);
        state.ensure_layout()?;
        let lock = state.lock()?;
        let services =
            services::manager(config.service_manager, state.layout().marker("lite.lock"));
        // A recovery's install cut between its two renames is completed (or reverted) first:
        // without it there is no backend for anything below to look at.
        if let Some(done) = crate::dqlite::recovery::settle_install(&state.layout().backend_dir())
            .map_err(|e| DaemonError::Member(e.to_string()))?
        {
            tracing::warn!("{done}");
        }
        // An interrupted join or leave is finished or undone before anything else looks at
        // the state directory (bootstrap would fill in what it had removed).
        let settling = crate::local::settle::Settle {
            state: &state,
            bind: config.bind,
            services: services.clone(),
            external: config.datastore == DatastoreMode::External,
        };
        if let Some(done) = crate::local::settle::settle(&settling).await? {
            tracing::warn!(journal = %state.layout().journal().display(), "{done}");
        }
        let report = bootstrap::bootstrap(
            &state,
            &host,
            &BootstrapOptions {
                bind: config.bind,
                failure_domain: config.failure_domain.unwrap_or(1),
            },
        )?;
        if !report.created.is_empty() {
            tracing::info!(
                state_dir = %state.root().display(),
                created = report.created.len(),
                "bootstrapped state directory"
            );
        }
        let failure_domain = match config.failure_domain {
            Some(fd) => fd,
            None => read_failure_domain(&state)?,
        };
        let serving = Serving::load(
            &config.certfile,
            &config.keyfile,
            Some(&state.layout().ca_crt()),
        )?;
        let tls = crate::pki::tls::server_config(serving.resolver(), config.min_tls)?;
        let member = match config.datastore {
            DatastoreMode::Embedded => {
                Some(prepare_member(&config, &state, &host, failure_domain)?)
            }
            DatastoreMode::External => None,
        };

        let listener =
            TcpListener::bind(config.bind)
                .await
                .map_err(|source| DaemonError::Bind {
                    addr: config.bind,
                    source,
                })?;
        let control = control::bind(&state.layout().control_socket())?;
        let membership = match member {
            Some(prepared) => {
                let member = prepared.start().await?;
                let template = MemberTemplate {
                    backend_dir: state.layout().backend_dir(),
                    bind: member.address().parse().unwrap_or_else(|_| {
                        config.dqlite_bind.unwrap_or_else(|| {
                            crate::dqlite::host::default_bind(config.bind, &host.addresses)
                        })
                    }),
                    bind_explicit: config.dqlite_bind.is_some(),
                    failure_domain,
                    network_latency: config.dqlite_network_latency,
                };
                let membership = Membership::new(state.clone(), template);
                membership
                    .adopt(member)
                    .await
                    .map_err(|e| DaemonError::Member(e.to_string()))?;
                Some(membership)
            }
            None => None,
        };
        let external = match config.datastore {
            DatastoreMode::External => Some(ExternalMember::new(
                state.layout().backend_dir(),
                config.dqlite_network_latency,
            )),
            DatastoreMode::Embedded => None,
        };
        let node = Node::new(NodeParts {
            settings: NodeSettings {
                bind: config.bind,
                capi_token_file: config.capi_token_file.clone(),
                env: config.env.clone(),
                external_datastore: config.datastore == DatastoreMode::External,
                roles: config.roles.clone(),
            },
            datastore: Arc::new(NodeDatastore {
                state: state.clone(),
                membership: membership.clone(),
                external: external.clone(),
            }),
            membership: membership.clone(),
            external: external.clone(),
            services,
            runner: Arc::new(SystemRunner),
            resolver: Arc::new(SystemResolver),
            peers: Arc::new(HttpsPeers {
                local: Some(config.bind.ip()),
            }),
            clock: Arc::new(SystemClock),
            serving: Some(serving),
            state,
        });
        let limiter = crate::api::ratelimit::RateLimiter::new(
            config.auth_failure_limit,
            config.auth_failure_window,
        );
        let app = AppState::new(node, limiter, Arc::new(Metrics::default()));
        Ok(Daemon {
            _lock: lock,
            config,
            listener,
            control,
            tls,
            app,
            membership,
            external,
            failure_domain,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` resolves; returns once connections are drained (bounded).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Daemon {
            _lock,
            config,
            listener,
            control,
            tls,
            app,
            membership,
            external,
            failure_domain,
        } = self;
        tracing::info!(
            bind = %config.bind,
            state_dir = %config.state_dir.display(),
            failure_domain,
            datastore = ?config.datastore,
            dqlite_network_latency = ?config.dqlite_network_latency,
            "starting cluster agent on https://{}",
            config.bind
        );
        let reload = app.node.clone();
        let hangup_handled = crate::sys::signal::on_hangup(move || {
            let node = reload.clone();
            tokio::spawn(async move {
                match node.reload_serving_cert().await {
                    Ok(()) => tracing::info!("SIGHUP: reloaded the :25000 certificate"),
                    Err(e) => {
                        tracing::warn!(error = %e, "SIGHUP: keeping the current :25000 certificate")
                    }
                }
            });
        });
        if !hangup_handled {
            tracing::warn!("cannot handle SIGHUP; a hangup will stop the daemon");
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let info = DaemonInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            state_dir: config.state_dir.clone(),
            bind: config.bind.to_string(),
        };
        let control_app = control::router(app.node.clone(), app.metrics.clone(), info);
        let mut control_stop = stop_rx.clone();
        let control_task = tokio::spawn(async move {
            let _ = axum::serve(control, control_app)
                .with_graceful_shutdown(async move {
                    let _ = control_stop.wait_for(|s| *s).await;
                })
                .await;
        });
        let progress: Arc<dyn roles::Progress> = Arc::new(
            crate::cluster::recovery::AgentProgress::new(app.node.clone()),
        );
        let roles_task = match (&membership, &external) {
            (Some(m), _) => {
                let m = m.clone();
                let live = move || m.live().map(|l| (l.client, l.own_id));
                Some(tokio::spawn(roles::run(
                    live,
                    Some(progress.clone()),
                    config.roles.clone(),
                    stop_rx.clone(),
                )))
            }
            (None, Some(external)) if config.manage_roles => {
                // The member's identity and its cluster as the backend says now (a join or
                // leave replaces both).
                let external = external.clone();
                let live = move || external.client().zip(external.own().map(|(id, _)| id));
                Some(tokio::spawn(roles::run(
                    live,
                    Some(progress.clone()),
                    config.roles.clone(),
                    stop_rx.clone(),
                )))
            }
            _ => None,
        };
        let health_task = tokio::spawn(crate::cluster::health::watch(
            app.node.clone(),
            stop_rx.clone(),
        ));
        let launcher_task = config
            .launcher
            .clone()
            .map(|launch| tokio::spawn(launcher::run(app.node.clone(), launch, stop_rx.clone())));
        let operations = app.node.operations().clone();
        let router = api::router(app, config.request_timeout);
        let mut https_stop = stop_rx;
        let https_task = tokio::spawn(https::serve(
            listener,
            tokio_rustls::TlsAcceptor::from(tls),
            router,
            async move {
                let _ = https_stop.wait_for(|s| *s).await;
            },
            SHUTDOWN_GRACE,
        ));
        shutdown.await;
        tracing::info!("shutting down");
        let stop_by = tokio::time::Instant::now() + STOP_BUDGET;
        // A join or leave still running ends at its next checkpoint; the journal has the rest.
        operations.stop();
        let _ = stop_tx.send(true);
        // A round of the roles driver may be waiting on a peer that is gone: it must not hold
        // the stop up, and no role may change while this member goes.
        if let Some(task) = roles_task {
            task.abort();
            let _ = task.await;
        }
        // An apply in progress finishes its current file on the blocking pool; the rename
        // comes at the next start (applying again changes nothing).
        if let Some(task) = launcher_task {
            task.abort();
        }
        health_task.abort();
        // The control socket's requests are not waited for: an operation runs detached and
        // its CLI says how to find out how it ended.
        control_task.abort();
        // The open :25000 connections drain while this member hands leadership over; both
        // are bounded so the whole stop stays within STOP_BUDGET.
        let drain = tokio::time::timeout(SHUTDOWN_GRACE, async {
            let _ = https_task.await;
        });
        let handover = async {
            if let Some(live) = membership.as_ref().and_then(|m| m.live()) {
                match roles::step_aside(&live.client, live.own_id, &config.roles, HANDOVER_BUDGET)
                    .await
                {
                    Ok(StepAside::Transferred { to }) => {
                        tracing::info!(to = format_args!("{to:#x}"), "leadership handed over")
                    }
                    Ok(StepAside::Kept) => tracing::info!(
                        "no other voter answered; the others elect a leader once this member is gone"
                    ),
                    Ok(StepAside::NotLeader) => {}
                    Err(e) => tracing::warn!(error = %e, "leadership handover before stopping failed"),
                }
            }
        };
        let _ = tokio::join!(drain, handover);
        // Before the runtime goes away (dqlite-hosting-notes: stop the node first). Without
        // a quorum raft may take long to close; the process ends by its budget regardless.
        if let Some(m) = membership {
            match tokio::time::timeout_at(stop_by, m.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "dqlite member did not stop cleanly"),
                Err(_) => tracing::warn!("dqlite member did not stop within the stop budget"),
            }
        }
        let _ = crate::state::remove_file(&config.state_dir.join("run/cluster-agent.sock"));
        tracing::info!("stopped");
    }
}

/// Checks everything the node's dqlite member needs (`--datastore embedded`): libdqlite,
/// identity in `var/kubernetes/backend`, the cluster certificate. Binds nothing.
fn prepare_member(
    config: &DaemonConfig,
    state: &StateDir,
    host: &HostIdentity,
    failure_domain: u64,
) -> Result<crate::dqlite::host::PreparedMember, DaemonError> {
    let layout = state.layout();
    let member = crate::dqlite::MemberConfig {
        backend_dir: layout.backend_dir(),
        bind: config
            .dqlite_bind
            .unwrap_or_else(|| crate::dqlite::host::default_bind(config.bind, &host.addresses)),
        bind_explicit: config.dqlite_bind.is_some(),
        cert_pem: state.read_string(&layout.backend("cluster.crt"))?,
        key_pem: state.read_string(&layout.backend("cluster.key"))?,
        failure_domain,
        network_latency: config.dqlite_network_latency,
        join: None,
    };
    Ok(crate::dqlite::EmbeddedMember::prepare(member)?)
}

/// Reads `failure-domain=N` (or `failure-domain N`) from `args/ha-conf`; absent means 1.
pub fn read_failure_domain(state: &StateDir) -> Result<u64, StateError> {
    let path = state.layout().args("ha-conf");
    let Some(text) = state.read_optional(&path)? else {
        return Ok(1);
    };
    let args = crate::format::args::ArgsFile::parse(&text);
    match args.get_unquoted("failure-domain") {
        None => Ok(1),
        Some(v) => v.parse().map_err(|_| StateError::Malformed {
            path,
            reason: format!("failure-domain must be a non-negative integer, found {v:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_domain_from_ha_conf() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.ensure_layout().unwrap();
        assert_eq!(read_failure_domain(&state).unwrap(), 1);
        let path = state.layout().args("ha-conf");
        state.write(&path, b"failure-domain=7\n", 0o660).unwrap();
        assert_eq!(read_failure_domain(&state).unwrap(), 7);
        state.write(&path, b"failure-domain 3\n", 0o660).unwrap();
        assert_eq!(read_failure_domain(&state).unwrap(), 3);
        state.write(&path, b"failure-domain=abc\n", 0o660).unwrap();
        let err = read_failure_domain(&state).unwrap_err().to_string();
        assert!(err.contains("ha-conf") && err.contains("abc"), "{err}");
    }
}
