//! `apiserver-proxy`: the worker's L4 load balancer in front of the control planes' API
//! servers (MicroK8s's `cluster-agent apiserver-proxy`, same flags and files).
//!
//! - `format::traefik` (a lower layer): traefik.yaml / provider.yaml parsing and rendering,
//!   upstream addresses (pure).
//! - `endpoints`: EndpointSlice / Endpoints JSON → sorted upstream list (pure).
//! - `balancer`: upstream choice and health state (pure).
//! - `metrics`: Prometheus text and the stats line (pure).
//! - `pool`: the shared balancer plus dialing (client fail-over, active probe).
//! - `refresh`: the refresh loop over the Kubernetes API client (`clients::kubernetes`).
//! - `server`: accept, forward, drain; `splice`: zero-copy forwarding (Linux `splice(2)`).
//!
//! Invariants: every input file is read and validated before anything is bound; the upstream
//! list is only ever replaced by a non-empty list; a list change never closes the listener or
//! an established connection.

pub mod balancer;
pub mod endpoints;
pub mod metrics;
pub mod pool;
pub mod refresh;
pub mod server;
pub mod splice;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;

use self::pool::Pool;
use self::refresh::Refresher;
use crate::format::traefik::{self as config, Upstream};
use crate::state::StateError;

/// How often the provider file is re-read when traefik.yaml says `watch: true`.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    File(#[from] StateError),
    #[error("invalid listen address {address:?} in {path}: {reason}")]
    Listen {
        address: String,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the command line says (paths resolved, durations parsed).
#[derive(Debug, Clone)]
pub struct Settings {
    pub traefik_config: PathBuf,
    pub kubeconfig: PathBuf,
    /// `None`: never refresh.
    pub refresh_interval: Option<Duration>,
    /// Overrides traefik.yaml's `entryPoints.apiserver.address`.
    pub listen: Option<SocketAddr>,
    pub connect_timeout: Duration,
    pub probe_interval: Duration,
    pub drain_timeout: Duration,
    /// `None`: no stats line.
    pub stats_interval: Option<Duration>,
    pub metrics_listen: Option<SocketAddr>,
}

/// Everything the proxy needs, read and validated.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub settings: Settings,
    pub listen: SocketAddr,
    pub provider_file: PathBuf,
    pub watch: bool,
    pub upstreams: Vec<Upstream>,
}

impl ProxyConfig {
    /// Reads traefik.yaml and the provider file it names. Unknown keys and invalid addresses
    /// are logged and skipped; unreadable or malformed files are errors. An empty upstream list
    /// is allowed (logged): the provider file or a refresh may fill it later.
    pub fn load(settings: Settings) -> Result<ProxyConfig, ProxyError> {
        let traefik_path = &settings.traefik_config;
        let traefik =
            config::parse_static(&crate::state::read_string(traefik_path)?).map_err(|reason| {
                StateError::Malformed {
                    path: traefik_path.clone(),
                    reason,
                }
            })?;
        for key in &traefik.ignored_keys {
            tracing::warn!(path = %traefik_path.display(), key, "ignoring unsupported traefik setting");
        }
        let listen = match settings.listen {
            Some(addr) => addr,
            None => crate::util::addr::parse_bind(&traefik.address).map_err(|reason| {
                ProxyError::Listen {
                    address: traefik.address.clone(),
                    path: traefik_path.clone(),
                    reason,
                }
            })?,
        };
        let provider_file = provider_path(traefik_path, traefik.provider_file.as_deref());
        let upstreams = read_provider(&provider_file)?;
        if upstreams.is_empty() {
            tracing::warn!(
                path = %provider_file.display(),
                "no control plane endpoints configured; connections are refused until there are"
            );
        }
        Ok(ProxyConfig {
            settings,
            listen,
            provider_file,
            watch: traefik.watch,
            upstreams,
        })
    }
}

/// `providers.file.filename` (relative to traefik.yaml's directory), else `provider.yaml`
/// next to traefik.yaml (where MicroK8s keeps it).
pub fn provider_path(traefik: &Path, filename: Option<&Path>) -> PathBuf {
    let dir = traefik.parent().unwrap_or(Path::new("."));
    match filename {
        Some(f) => dir.join(f),
        None => dir.join("provider.yaml"),
    }
}

/// Reads the upstream list from a provider file; invalid entries are logged and skipped.
pub fn read_provider(path: &Path) -> Result<Vec<Upstream>, StateError> {
    let text = crate::state::read_string(path)?;
    let addresses = config::parse_provider(&text).map_err(|reason| StateError::Malformed {
        path: path.to_path_buf(),
        reason,
    })?;
    let (upstreams, bad) = config::parse_upstreams(&addresses);
    for reason in bad {
        tracing::warn!(path = %path.display(), %reason, "skipping upstream");
    }
    Ok(upstreams)
}

/// A bound proxy, ready to serve.
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    pool: Pool,
}

impl Proxy {
    /// Binds the listener (and the metrics listener, if asked for).
    pub async fn bind(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let metrics = match config.settings.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let pool = Pool::new(&config.upstreams, config.settings.connect_timeout);
        Ok(Proxy {
            config,
            listener,
            metrics,
            pool,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Proxy {
            config,
            listener,
            metrics,
            pool,
        } = self;
        let upstreams: Vec<&str> = config.upstreams.iter().map(Upstream::as_str).collect();
        tracing::info!(
            listen = %config.listen,
            ?upstreams,
            provider = %config.provider_file.display(),
            "starting apiserver proxy"
        );
        let settings = &config.settings;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(pool.clone().probe_every(settings.probe_interval));
        match settings.refresh_interval {
            Some(interval) => {
                let refresher = Refresher {
                    kubeconfig: settings.kubeconfig.clone(),
                    provider_file: config.provider_file.clone(),
                    interval,
                };
                tasks.spawn(refresher.run(pool.clone()));
            }
            None => tracing::info!("will not auto-refresh the list of control plane endpoints"),
        }
        if config.watch {
            tasks.spawn(watch_provider(config.provider_file.clone(), pool.clone()));
        }
        if let Some(interval) = settings.stats_interval {
            tasks.spawn(log_stats(pool.clone(), interval));
        }
        if let Some(listener) = metrics {
            tasks.spawn(serve_metrics(listener, pool.clone()));
        }
        server::serve(listener, pool, settings.drain_timeout, shutdown).await;
        tasks.shutdown().await;
        tracing::info!("stopped");
    }
}

/// Re-reads the provider file every [`WATCH_INTERVAL`] and applies a changed, non-empty list.
/// Each unusable content is logged once.
async fn watch_provider(path: PathBuf, pool: Pool) {
    let mut last = read_bytes(&path).await;
    let mut ticks = tokio::time::interval(WATCH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let current = read_bytes(&path).await;
        if current == last {
            continue;
        }
        last = current;
        let file = path.clone();
        let Ok(read) = tokio::task::spawn_blocking(move || read_provider(&file)).await else {
            continue;
        };
        match read {
            Ok(list) if list.is_empty() => tracing::warn!(
                path = %path.display(),
                "provider file lists no endpoints; keeping the current list"
            ),
            Ok(list) => {
                if pool.set_upstreams(&list) {
                    let shown: Vec<&str> = list.iter().map(Upstream::as_str).collect();
                    tracing::info!(upstreams = ?shown, "provider file changed; using its endpoints");
                }
            }
            Err(e) => tracing::warn!(error = %e, "keeping the current endpoints"),
        }
    }
}

/// The file's bytes, read on the blocking pool; `None` if unreadable.
async fn read_bytes(path: &Path) -> Option<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::state::read_bytes(&path).ok())
        .await
        .ok()
        .flatten()
}

async fn log_stats(pool: Pool, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        ticks.tick().await;
        tracing::info!(stats = %metrics::stats_line(&pool.snapshot()), "apiserver proxy stats");
    }
}

async fn serve_metrics(listener: TcpListener, pool: Pool) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let pool = pool.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    metrics::render_prometheus(&pool.snapshot()),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_path_rules() {
        let traefik = Path::new("/snap/args/traefik/traefik.yaml");
        assert_eq!(
            provider_path(traefik, None),
            PathBuf::from("/snap/args/traefik/provider.yaml")
        );
        assert_eq!(
            provider_path(traefik, Some(Path::new("/elsewhere/p.yaml"))),
            PathBuf::from("/elsewhere/p.yaml")
        );
        assert_eq!(
            provider_path(traefik, Some(Path::new("p.yaml"))),
            PathBuf::from("/snap/args/traefik/p.yaml")
        );
    }
}
