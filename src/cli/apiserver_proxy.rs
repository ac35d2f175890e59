//! `cluster-agent apiserver-proxy`: MicroK8s's flags (so the snap's
//! `run-apiserver-proxy-with-args` works unchanged) plus a few of ours.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::proxy::{Proxy, ProxyConfig, Settings};
use crate::state::{resolve_state_dir, Environment};
use crate::util::addr::parse_bind;
use crate::util::goduration::parse_arg as duration;

#[derive(Debug, Clone, Args)]
#[command(after_help = super::exit::APISERVER_PROXY_HELP)]
pub struct ApiserverProxyArgs {
    /// traefik-style static config: listen address and provider file
    /// (default: <state>/args/traefik/traefik.yaml).
    #[arg(long, value_name = "FILE")]
    pub traefik_config: Option<PathBuf>,

    /// Kubeconfig used to refresh the endpoint list (default: <state>/credentials/kubelet.config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// How often to refresh the control-plane endpoints from the API (Go duration); 0 disables.
    /// Values below 15s are raised to 15s.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub refresh_interval: Duration,

    /// Listen address (IP:PORT, [IPv6]:PORT or :PORT); overrides traefik.yaml's
    /// entryPoints.apiserver.address.
    #[arg(long, value_parser = parse_bind)]
    pub listen: Option<SocketAddr>,

    /// Deadline of one connect attempt to an upstream before trying the next one (the last
    /// upstream left to try gets at least 7s).
    #[arg(long, default_value = "500ms", value_parser = positive)]
    pub connect_timeout: Duration,

    /// How long open connections may continue after SIGTERM/SIGINT.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// Period of the stats log line; 0 disables it.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub stats_interval: Duration,

    /// Serve Prometheus metrics on http://ADDR/metrics (off by default).
    #[arg(long, value_parser = parse_bind, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// How often upstreams marked down are test-dialled.
    #[arg(long, default_value = "2s", value_parser = positive, hide = true)]
    pub probe_interval: Duration,

    /// Floor of --refresh-interval (15s like MicroK8s; lowered by tests only).
    #[arg(long, default_value = "15s", value_parser = positive, hide = true)]
    pub min_refresh_interval: Duration,
}

fn positive(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be greater than 0".into()),
        d => Ok(d),
    }
}

/// `None` when refresh is disabled; otherwise the interval raised to `floor`.
pub fn effective_refresh(interval: Duration, floor: Duration) -> Option<Duration> {
    (!interval.is_zero()).then(|| interval.max(floor))
}

impl ApiserverProxyArgs {
    pub fn settings(&self, state_dir: Option<&std::path::Path>, env: &Environment) -> Settings {
        let state = resolve_state_dir(state_dir, env);
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        Settings {
            traefik_config: self
                .traefik_config
                .clone()
                .unwrap_or_else(|| state.join("args/traefik/traefik.yaml")),
            kubeconfig: self
                .kubeconfig
                .clone()
                .unwrap_or_else(|| state.join("credentials/kubelet.config")),
            refresh_interval: effective_refresh(self.refresh_interval, self.min_refresh_interval),
            listen: self.listen,
            connect_timeout: self.connect_timeout,
            probe_interval: self.probe_interval,
            drain_timeout: self.drain_timeout,
            stats_interval: nonzero(self.stats_interval),
            metrics_listen: self.metrics_listen,
        }
    }
}

pub fn run(
    args: ApiserverProxyArgs,
    state_dir: Option<PathBuf>,
    env: Environment,
) -> anyhow::Result<()> {
    let settings = args.settings(state_dir.as_deref(), &env);
    if let Some(used) = settings.refresh_interval {
        if used != args.refresh_interval {
            tracing::info!(requested = ?args.refresh_interval, ?used, "refresh interval raised to the minimum");
        }
    }
    let config = ProxyConfig::load(settings).context("proxy failed")?;
    let runtime = super::server_runtime()?;
    runtime.block_on(async move {
        let proxy = Proxy::bind(config).await.context("proxy failed")?;
        crate::sys::signal::on_hangup(|| {
            tracing::info!("SIGHUP ignored: the provider file is re-read when it changes")
        });
        proxy.serve(crate::sys::signal::shutdown_signal()).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_interval_rules() {
        let floor = Duration::from_secs(15);
        assert_eq!(effective_refresh(Duration::ZERO, floor), None);
        assert_eq!(
            effective_refresh(Duration::from_secs(5), floor),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            effective_refresh(Duration::from_secs(30), floor),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn defaults_come_from_the_state_directory() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            args: ApiserverProxyArgs,
        }
        let t = T::parse_from(["x", "--refresh-interval", "0"]);
        let s = t
            .args
            .settings(Some(std::path::Path::new("/sd")), &Environment::default());
        assert_eq!(
            s.traefik_config,
            PathBuf::from("/sd/args/traefik/traefik.yaml")
        );
        assert_eq!(
            s.kubeconfig,
            PathBuf::from("/sd/credentials/kubelet.config")
        );
        assert_eq!(s.refresh_interval, None);
        assert_eq!(s.connect_timeout, Duration::from_millis(500));
        assert_eq!(s.stats_interval, Some(Duration::from_secs(300)));
        assert!(T::try_parse_from(["x", "--refresh-interval", "30"]).is_err());
        assert!(T::try_parse_from(["x", "--connect-timeout", "0"]).is_err());
    }
}
