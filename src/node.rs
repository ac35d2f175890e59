//! The node as the API and CLI handlers see it: state, tokens, datastore, services and the
//! daemon's settings. One cheap-to-clone handle shared by every request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::datastore::Datastore;
use crate::services::ServiceManager;
use crate::state::{Environment, StateDir};
use crate::tokens::TokenStore;

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
    pub roles: crate::daemon::roles::RolesConfig,
}

#[derive(Clone)]
pub struct Node {
    pub state: StateDir,
    pub tokens: TokenStore,
    pub services: Arc<dyn ServiceManager>,
    pub settings: Arc<NodeSettings>,
    /// The embedded dqlite member and the client to its cluster (embedded datastore).
    pub membership: Option<Arc<crate::membership::Membership>>,
    /// The :25000 certificate, reloaded when a join or leave replaces it.
    pub serving: Option<Arc<crate::daemon::tls::ServingCert>>,
    /// Client to k8s-dqlite's cluster (external datastore).
    pub external_client: Option<Arc<crate::dqlite::Client>>,
}

impl Node {
    /// The node over `state`; membership and serving certificate are attached by the daemon.
    pub fn new(state: StateDir, services: Arc<dyn ServiceManager>, settings: NodeSettings) -> Node {
        Node {
            tokens: TokenStore::new(state.clone(), Arc::new(crate::tokens::SystemClock)),
            services,
            settings: Arc::new(settings),
            state,
            membership: None,
            serving: None,
            external_client: None,
        }
    }

    /// The datastore as it is now: the live dqlite cluster when this node hosts a member;
    /// k8s-dqlite's cluster (falling back to its `cluster.yaml`) with the external datastore.
    pub fn datastore(&self) -> Arc<dyn Datastore> {
        let yaml = crate::datastore::ClusterYaml {
            state: self.state.clone(),
        };
        if let Some(live) = self.membership.as_ref().and_then(|m| m.live()) {
            return Arc::new(crate::datastore::Dqlite {
                client: live.client,
            });
        }
        match &self.external_client {
            Some(client) => Arc::new(crate::datastore::External {
                live: crate::datastore::Dqlite {
                    client: client.clone(),
                },
                yaml,
            }),
            None => Arc::new(yaml),
        }
    }

    /// Fills in whatever material is missing (after join or leave removed some), for this
    /// host and bind address.
    pub fn rebootstrap(&self, failure_domain: u64) -> Result<(), crate::ops::OpError> {
        crate::bootstrap::bootstrap(
            &self.state,
            &crate::net::HostIdentity::discover(),
            &crate::bootstrap::BootstrapOptions {
                bind: self.settings.bind,
                failure_domain,
            },
        )
        .map(|_| ())
        .map_err(|e| crate::ops::OpError::Internal(e.to_string()))
    }

    /// `$SNAP`, if running inside the snap.
    pub fn snap_dir(&self) -> Option<&std::path::Path> {
        self.settings.env.snap.as_deref()
    }

    /// Values for `${SNAP_DATA}`-style expansion in args files.
    pub fn snap_vars(&self) -> Vec<(&'static str, String)> {
        let s = |p: Option<&std::path::Path>| {
            p.map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        vec![
            (
                "SNAP_DATA",
                self.state.root().to_string_lossy().into_owned(),
            ),
            ("SNAP", s(self.settings.env.snap.as_deref())),
            ("SNAP_COMMON", s(self.settings.env.snap_common.as_deref())),
        ]
    }
}
