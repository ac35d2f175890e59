//! This node's dqlite membership: the embedded member it hosts (if any) and a client to the
//! cluster it belongs to. Join and leave replace both; everything else reads the live view.
//!
//! Invariants: at most one member runs at a time (the slot's async mutex serialises start,
//! stop and replacement); the live view always describes the member that runs (or none);
//! the member is stopped before the runtime ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::dqlite::{Client, ClientTls, EmbeddedMember, HostError, MemberConfig, Options};
use crate::state::StateDir;

/// What the rest of the daemon sees: a client and this member's identity.
#[derive(Clone, Debug)]
pub struct Live {
    pub client: Arc<Client>,
    pub own_id: u64,
    pub own_address: String,
}

/// How to (re)start the member: everything but the certificate, read from the backend
/// directory each time, and the join seeds.
#[derive(Debug, Clone)]
pub struct MemberTemplate {
    pub backend_dir: PathBuf,
    pub bind: SocketAddr,
    pub bind_explicit: bool,
    pub failure_domain: u64,
    pub network_latency: std::time::Duration,
}

pub struct Membership {
    state: StateDir,
    template: MemberTemplate,
    slot: tokio::sync::Mutex<Option<EmbeddedMember>>,
    live: RwLock<Option<Live>>,
    /// Set when the daemon stops: no member starts any more.
    closed: std::sync::atomic::AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("dqlite client: {0}")]
    Client(String),
}

impl Membership {
    pub fn new(state: StateDir, template: MemberTemplate) -> Arc<Membership> {
        Arc::new(Membership {
            state,
            template,
            slot: tokio::sync::Mutex::new(None),
            live: RwLock::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn template(&self) -> &MemberTemplate {
        &self.template
    }

    /// The running member's identity and a client to its cluster.
    pub fn live(&self) -> Option<Live> {
        self.live.read().ok().and_then(|l| l.clone())
    }

    /// A client to the cluster of this node, seeded with `seeds`, using the cluster
    /// certificate currently in the backend directory.
    pub fn client(&self, seeds: Vec<String>) -> Result<Client, MembershipError> {
        let layout = self.state.layout();
        let tls = ClientTls::load(
            &layout.backend("cluster.crt"),
            &layout.backend("cluster.key"),
        )
        .map_err(|e| MembershipError::Client(e.to_string()))?;
        let opts = Options {
            call_timeout: std::time::Duration::from_secs(30),
            ..Options::for_latency(self.template.network_latency)
        };
        Client::new(seeds, Some(tls), opts).map_err(|e| MembershipError::Client(e.to_string()))
    }

    /// Adopts a member started elsewhere (the daemon's first start).
    pub async fn adopt(&self, member: EmbeddedMember) -> Result<(), MembershipError> {
        let mut slot = self.slot.lock().await;
        self.publish(&member)?;
        *slot = Some(member);
        Ok(())
    }

    fn publish(&self, member: &EmbeddedMember) -> Result<(), MembershipError> {
        let mut seeds = vec![member.address().to_string()];
        if let Ok(Some(nodes)) = crate::dqlite::files::read_cluster(&self.template.backend_dir) {
            seeds.extend(nodes.into_iter().map(|n| n.address));
        }
        seeds.dedup();
        let live = Live {
            client: Arc::new(self.client(seeds)?),
            own_id: member.id(),
            own_address: member.address().to_string(),
        };
        if let Ok(mut l) = self.live.write() {
            *l = Some(live);
        }
        Ok(())
    }

    /// Stops the running member for good (the daemon is stopping): a join or leave still
    /// running cannot start another one behind the stop's back.
    pub async fn close(&self) -> Result<(), MembershipError> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.stop().await
    }

    /// Stops the running member (if any). The live view is cleared first.
    pub async fn stop(&self) -> Result<(), MembershipError> {
        let mut slot = self.slot.lock().await;
        if let Ok(mut l) = self.live.write() {
            *l = None;
        }
        if let Some(member) = slot.take() {
            member.stop().await?;
        }
        Ok(())
    }

    /// Starts the member from the backend directory: its existing identity, a new single-node
    /// cluster (empty directory), or a fresh member for the cluster at `join` seeds.
    pub async fn start(&self, join: Option<Vec<String>>) -> Result<Live, MembershipError> {
        let mut slot = self.slot.lock().await;
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(MembershipError::Client(
                "the daemon is stopping: no member starts any more".into(),
            ));
        }
        // No view of a stopped member may outlive it, even if the new one fails to start.
        if let Ok(mut l) = self.live.write() {
            *l = None;
        }
        if let Some(old) = slot.take() {
            old.stop().await?;
        }
        let layout = self.state.layout();
        let config = MemberConfig {
            backend_dir: self.template.backend_dir.clone(),
            bind: self.template.bind,
            bind_explicit: self.template.bind_explicit,
            cert_pem: self.state.read_string(&layout.backend("cluster.crt"))?,
            key_pem: self.state.read_string(&layout.backend("cluster.key"))?,
            failure_domain: self.template.failure_domain,
            network_latency: self.template.network_latency,
            join,
        };
        let member = EmbeddedMember::start(config).await?;
        self.publish(&member)?;
        *slot = Some(member);
        self.live()
            .ok_or_else(|| MembershipError::Client("member started but not published".into()))
    }

    /// Asks the member to rewrite `cluster.yaml` from the leader now.
    pub async fn refresh_cluster_yaml(&self) {
        if let Some(m) = self.slot.lock().await.as_ref() {
            m.refresh_cluster_yaml();
        }
    }
}
