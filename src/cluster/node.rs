//! The node as the API and CLI operations see it: one cheap-to-clone handle, built once from
//! its parts (state, datastore, service manager, command runner, resolver, peer client,
//! clock), shared by every request.
//!
//! Invariant: every effect an operation has on the machine goes through one of these parts,
//! so [`Node::for_test`] can run any operation against recording fakes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clients::peer::PeerClient;
use crate::cluster::audit::AuditLog;
use crate::cluster::bootstrap::{self, BootstrapError};
use crate::cluster::datastore::Datastore;
use crate::cluster::health::LocalHealth;
use crate::cluster::operation::{Operations, Stopping};
use crate::cluster::recovery::{Leases, ProgressCache};
use crate::cluster::roles::driver::RolesConfig;
use crate::cluster::serving::{Serving, ServingError};
use crate::cluster::tokens::TokenStore;
use crate::dqlite::external::ExternalMember;
use crate::dqlite::membership::{Live, Membership};
use crate::state::{Environment, StateDir};
use crate::sys::clock::Clock;
use crate::sys::resolver::Resolver;
use crate::sys::runner::CommandRunner;
use crate::sys::services::ServiceManager;

/// Settings the operations need from the daemon's configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The daemon's `--bind`; its port is "this node's cluster-agent port".
    pub bind: SocketAddr,
    /// File holding the Cluster API token (`/capi/etc/token` in MicroK8s).
    pub capi_token_file: PathBuf,
    pub env: Environment,
    /// k8s-dqlite hosts the member (inside the snap); the agent only talks to it.
    pub external_datastore: bool,
    /// The roles manager's settings (`--voters`, `--standbys`, probes): `leave` hands over
    /// with the same ones.
    pub roles: RolesConfig,
}

/// Everything a [`Node`] is made of.
pub struct NodeParts {
    pub state: StateDir,
    pub settings: NodeSettings,
    /// The cluster's membership as this node sees it now.
    pub datastore: Arc<dyn Datastore>,
    /// The embedded dqlite member this node hosts (embedded datastore); join and leave
    /// replace it.
    pub membership: Option<Arc<Membership>>,
    /// The member k8s-dqlite hosts for this node (external datastore).
    pub external: Option<Arc<ExternalMember>>,
    pub services: Arc<dyn ServiceManager>,
    pub runner: Arc<dyn CommandRunner>,
    pub resolver: Arc<dyn Resolver>,
    /// Other nodes' :25000, for the joining side.
    pub peers: Arc<dyn PeerClient>,
    pub clock: Arc<dyn Clock>,
    /// The :25000 certificate, reloaded when a join or leave replaces it.
    pub serving: Option<Arc<Serving>>,
}

#[derive(Clone)]
pub struct Node {
    parts: Arc<NodeParts>,
    tokens: TokenStore,
    audit: Arc<AuditLog>,
    health: Arc<LocalHealth>,
    operations: Operations,
    recovery: Leases,
    progress_cache: ProgressCache,
}

impl Node {
    pub fn new(parts: NodeParts) -> Node {
        Node {
            tokens: TokenStore::new(parts.state.clone(), parts.clock.clone()),
            audit: Arc::new(AuditLog::new(parts.state.layout().audit_log())),
            health: Arc::new(LocalHealth::default()),
            operations: Operations::default(),
            recovery: Leases::default(),
            progress_cache: ProgressCache::default(),
            parts: Arc::new(parts),
        }
    }

    /// The membership change in progress on this node (one at a time).
    pub fn operations(&self) -> &Operations {
        &self.operations
    }

    /// The lost-quorum recovery run holding this node, if any (`cluster::recovery`).
    pub fn recovery(&self) -> &Leases {
        &self.recovery
    }

    /// Where this node's log ended when last read (`cluster::recovery::progress`).
    pub fn progress_cache(&self) -> &ProgressCache {
        &self.progress_cache
    }

    pub fn state(&self) -> &StateDir {
        &self.parts.state
    }

    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// This node's last measured health (`cluster::health`).
    pub fn health(&self) -> &LocalHealth {
        &self.health
    }

    /// The audit log of token events.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.parts.settings
    }

    /// The datastore as it is now (see [`crate::cluster::datastore::NodeDatastore`]).
    pub fn datastore(&self) -> Arc<dyn Datastore> {
        self.parts.datastore.clone()
    }

    pub fn membership(&self) -> Option<&Arc<Membership>> {
        self.parts.membership.as_ref()
    }

    pub fn external(&self) -> Option<&Arc<ExternalMember>> {
        self.parts.external.as_ref()
    }

    /// This node's dqlite member, whoever hosts it: its identity and a client to its
    /// cluster. `None` when no member runs (a worker, an embedded member being replaced, a
    /// k8s-dqlite that never started one).
    pub fn own_member(&self) -> Option<Live> {
        match (self.membership(), self.external()) {
            (Some(m), _) => m.live(),
            (None, Some(e)) => e.live(),
            (None, None) => None,
        }
    }

    pub fn services(&self) -> &dyn ServiceManager {
        self.parts.services.as_ref()
    }

    /// The service manager, for work on the blocking pool.
    pub fn services_arc(&self) -> Arc<dyn ServiceManager> {
        self.parts.services.clone()
    }

    pub fn runner(&self) -> Arc<dyn CommandRunner> {
        self.parts.runner.clone()
    }

    pub fn resolver(&self) -> &dyn Resolver {
        self.parts.resolver.as_ref()
    }

    pub fn peers(&self) -> &dyn PeerClient {
        self.parts.peers.as_ref()
    }

    pub fn clock(&self) -> &dyn Clock {
        self.parts.clock.as_ref()
    }

    /// Serves the certificate files' current content on :25000 (after a join or leave
    /// replaced them), reading them on the blocking pool. Without a served certificate
    /// (tests) there is nothing to reload.
    pub async fn reload_serving_cert(&self) -> Result<(), ServingError> {
        let Some(serving) = self.parts.serving.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || serving.reload())
            .await
            .map_err(|e| ServingError::Task(e.to_string()))?
    }

    /// A checkpoint between two steps of a multi-step change, each one journaled: if the
    /// daemon is stopping, the change ends here (`Err(Stopping)`) and the journal tells the
    /// next start how to finish or undo it.
    ///
    /// It is also a test hold point. In production that does nothing; when the daemon was
    /// started with `CLUSTER_AGENT_TEST_HOLD` naming `point`, the change waits here: it
    /// creates `run/held-at-<point>` and waits until that file is removed (or 10 minutes
    /// pass), so a test can kill the daemon, interrupt its CLI or just watch at a known step.
    pub async fn checkpoint(&self, point: &str) -> Result<(), Stopping> {
        self.hold(point).await;
        self.operations.check()
    }

    async fn hold(&self, point: &str) {
        if !self.settings().env.test_holds.iter().any(|h| h == point) {
            return;
        }
        let file = self.state().layout().hold_file(point);
        if let Err(e) = self.state().write(&file, b"", crate::state::mode::SECRET) {
            tracing::warn!(error = %e, point, "cannot create the hold file; not holding");
            return;
        }
        tracing::warn!(
            point,
            "test hold: waiting until {} is removed",
            file.display()
        );
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
        while crate::state::exists(&file)
            && tokio::time::Instant::now() < until
            && self.operations.check().is_ok()
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::warn!(point, "test hold released");
    }

    /// Restarts `services` in order. A failure is a warning line for the user, not an error:
    /// the node's files are already what they should be. Blocking (`sys::blocking`).
    pub fn restart_each(&self, services: &[&str]) -> Vec<String> {
        services
            .iter()
            .filter_map(|service| {
                self.services()
                    .restart(service)
                    .err()
                    .map(|e| format!("WARNING: could not restart {service}: {e}"))
            })
            .collect()
    }

    /// Fills in whatever material is missing (after join or leave removed some), for this
    /// host and bind address.
    pub fn rebootstrap(&self, failure_domain: u64) -> Result<(), BootstrapError> {
        bootstrap::rebootstrap(self.state(), self.settings().bind, failure_domain)
    }

    /// `$SNAP`, if running inside the snap.
    pub fn snap_dir(&self) -> Option<&Path> {
        self.settings().env.snap.as_deref()
    }

    /// Values for `${SNAP_DATA}`-style expansion in args files.
    pub fn snap_vars(&self) -> Vec<(&'static str, String)> {
        let s = |p: Option<&Path>| {
            p.map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        vec![
            (
                "SNAP_DATA",
                self.state().root().to_string_lossy().into_owned(),
            ),
            ("SNAP", s(self.settings().env.snap.as_deref())),
            ("SNAP_COMMON", s(self.settings().env.snap_common.as_deref())),
        ]
    }
}

#[cfg(test)]
pub mod testing {
    //! A node over a temporary state directory whose parts are all recording fakes.

    use super::*;
    use crate::clients::peer::{Answer, Pin};
    use crate::cluster::datastore::FixedDatastore;
    use crate::sys::clock::FixedClock;
    use crate::sys::resolver::StaticResolver;
    use crate::sys::runner::{BoxFuture, RecordingRunner};
    use crate::sys::services::RecordingServices;

    /// A peer that is never reachable.
    pub struct NoPeers;

    impl PeerClient for NoPeers {
        fn get<'a>(
            &'a self,
            addr: SocketAddr,
            _pin: &'a Pin,
            _path: &'a str,
            _timeout: std::time::Duration,
        ) -> BoxFuture<'a, Result<Answer, crate::clients::peer::PeerError>> {
            Box::pin(async move {
                Err(crate::clients::peer::PeerError::Transport(format!(
                    "{addr}: unreachable in tests"
                )))
            })
        }

        fn post_json<'a>(
            &'a self,
            addr: SocketAddr,
            pin: &'a Pin,
            path: &'a str,
            _body: Vec<u8>,
            timeout: std::time::Duration,
        ) -> BoxFuture<'a, Result<Answer, crate::clients::peer::PeerError>> {
            self.get(addr, pin, path, timeout)
        }
    }

    /// The fakes behind a test node, to script and inspect.
    pub struct Fakes {
        pub datastore: Arc<FixedDatastore>,
        pub services: RecordingServices,
        pub runner: RecordingRunner,
        pub clock: Arc<FixedClock>,
    }

    impl NodeParts {
        /// Parts over `dir` (not bootstrapped): bound to 127.0.0.1:25000, an empty
        /// in-memory datastore, recording services and runner, a clock standing still, a
        /// resolver that knows no name and peers that never answer.
        pub fn for_test(dir: &Path) -> (NodeParts, Fakes) {
            let fakes = Fakes {
                datastore: Arc::new(FixedDatastore::default()),
                services: RecordingServices::default(),
                runner: RecordingRunner::default(),
                clock: Arc::new(FixedClock::at(1_800_000_000)),
            };
            let parts = NodeParts {
                state: StateDir::new(dir),
                settings: NodeSettings {
                    bind: SocketAddr::from(([127, 0, 0, 1], 25000)),
                    capi_token_file: dir.join("capi-token"),
                    env: Environment::default(),
                    external_datastore: false,
                    roles: RolesConfig::default(),
                },
                datastore: fakes.datastore.clone(),
                membership: None,
                external: None,
                services: Arc::new(fakes.services.clone()),
                runner: Arc::new(fakes.runner.clone()),
                resolver: Arc::new(StaticResolver::default()),
                peers: Arc::new(NoPeers),
                clock: fakes.clock.clone(),
                serving: None,
            };
            (parts, fakes)
        }
    }

    impl Node {
        /// A node over `dir` with every part a fake (see [`NodeParts::for_test`]).
        pub fn for_test(dir: &Path) -> (Node, Fakes) {
            let (parts, fakes) = NodeParts::for_test(dir);
            (Node::new(parts), fakes)
        }
    }
}
