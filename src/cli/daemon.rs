//! `cluster-agent daemon` and its MicroK8s spelling `cluster-agent cluster-agent`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Args};

use crate::daemon::{DaemonConfig, DatastoreMode, MinTls};
use crate::state::{resolve_state_dir, Environment};
use crate::sys::host::HostIdentity;
use crate::sys::services::ServiceManagerKind;
use crate::util::addr::parse_bind;

#[derive(Debug, Clone, Args)]
#[command(after_help = super::exit::DAEMON_HELP)]
pub struct DaemonArgs {
    /// Address of the HTTPS API (IP:PORT, [IPv6]:PORT or :PORT).
    #[arg(long, default_value = "0.0.0.0:25000", value_parser = parse_bind)]
    pub bind: std::net::SocketAddr,

    /// TLS private key (default: <state>/certs/server.key).
    #[arg(long)]
    pub keyfile: Option<PathBuf>,

    /// TLS certificate chain (default: <state>/certs/server.crt).
    #[arg(long)]
    pub certfile: Option<PathBuf>,

    /// Per-request deadline in seconds.
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    /// Serve /metrics (always served; accepted for MicroK8s compatibility).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    pub enable_metrics: bool,

    /// Minimum TLS version: tls12 or tls13 (tls10/tls11 are accepted and mean tls12).
    #[arg(long, default_value = "tls12", value_parser = MinTls::parse)]
    pub min_tls_version: MinTls,

    /// Apply the launch configurations dropped in $SNAP_COMMON/etc/launcher/*.yaml.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true")]
    pub launch_configurations_enable: bool,

    /// How often to look for launch configurations (Go duration syntax, at least 5s).
    #[arg(long, default_value = "5s", value_parser = crate::util::goduration::parse_arg)]
    pub launch_configurations_interval: Duration,

    /// Address of the node's dqlite member (default: <node ip>:19001).
    #[arg(long, value_parser = parse_bind)]
    pub dqlite_bind: Option<std::net::SocketAddr>,

    /// Who hosts the dqlite member (default: external inside the snap, embedded elsewhere).
    #[arg(long, value_enum)]
    pub datastore: Option<DatastoreMode>,

    /// How services are restarted (default: snap inside the snap, none elsewhere).
    #[arg(long, value_enum)]
    pub service_manager: Option<ServiceManagerKind>,

    /// Failure domain of this node (default: args/ha-conf, else 1).
    #[arg(long)]
    pub failure_domain: Option<u64>,

    /// Expected one-way network latency between dqlite members (Go duration, 1ms–10s). Raft's
    /// heartbeat is 1.5 × and its election timeout 15 × this: raise it for members across a
    /// WAN, where the default would cause needless elections.
    #[arg(long, default_value = "150ms", value_parser = parse_network_latency)]
    pub dqlite_network_latency: Duration,

    /// Failed token attempts from one address before it gets HTTP 429.
    #[arg(long, default_value_t = 10)]
    pub auth_failure_limit: usize,

    /// Window for --auth-failure-limit (Go duration syntax).
    #[arg(long, default_value = "60s", value_parser = crate::util::goduration::parse_arg)]
    pub auth_failure_window: Duration,

    /// Voters the roles manager keeps (odd).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub voters: u64,

    /// Stand-bys the roles manager keeps.
    #[arg(long, default_value_t = 3)]
    pub standbys: u64,

    /// How often the roles manager probes members (Go duration syntax).
    #[arg(long, default_value = "1s", value_parser = crate::util::goduration::parse_arg)]
    pub probe_interval: Duration,

    /// Run the roles manager with --datastore external too (k8s-dqlite normally does it).
    #[arg(long)]
    pub manage_roles: bool,

    /// File holding the Cluster API token for v2.0/dqlite/remove.
    #[arg(long, default_value = "/capi/etc/token")]
    pub capi_token_file: PathBuf,
}

impl DaemonArgs {
    /// Resolves defaults against the environment into a complete configuration.
    pub fn resolve(&self, state_dir: Option<&Path>, env: &Environment) -> DaemonConfig {
        let state_dir = resolve_state_dir(state_dir, env);
        let expand = |p: &PathBuf| {
            let vars = [
                ("SNAP_DATA", state_dir.to_string_lossy().into_owned()),
                (
                    "SNAP",
                    env.snap
                        .as_ref()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
            ];
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            PathBuf::from(crate::format::args::expand_snap_vars(
                &p.to_string_lossy(),
                &vars,
            ))
        };
        let in_snap = env.in_snap();
        DaemonConfig {
            certfile: self
                .certfile
                .as_ref()
                .map(expand)
                .unwrap_or_else(|| state_dir.join("certs/server.crt")),
            keyfile: self
                .keyfile
                .as_ref()
                .map(expand)
                .unwrap_or_else(|| state_dir.join("certs/server.key")),
            state_dir,
            bind: self.bind,
            request_timeout: Duration::from_secs(self.timeout),
            min_tls: self.min_tls_version,
            service_manager: self.service_manager.unwrap_or(if in_snap {
                ServiceManagerKind::Snap
            } else {
                ServiceManagerKind::None
            }),
            datastore: self.datastore.unwrap_or(if in_snap {
                DatastoreMode::External
            } else {
                DatastoreMode::Embedded
            }),
            failure_domain: self.failure_domain,
            dqlite_bind: self.dqlite_bind,
            dqlite_network_latency: self.dqlite_network_latency,
            auth_failure_limit: self.auth_failure_limit,
            auth_failure_window: self.auth_failure_window,
            capi_token_file: self.capi_token_file.clone(),
            env: env.clone(),
            roles: crate::cluster::roles::driver::RolesConfig {
                targets: crate::cluster::roles::policy::Targets {
                    voters: self.voters as usize,
                    standbys: self.standbys as usize,
                },
                probe_interval: self.probe_interval.max(Duration::from_millis(100)),
                ..Default::default()
            },
            manage_roles: self.manage_roles,
            launcher: env
                .snap_common
                .as_ref()
                .filter(|_| self.launch_configurations_enable)
                .map(|common| {
                    crate::daemon::launcher::LauncherConfig::new(
                        common,
                        self.launch_configurations_interval,
                    )
                }),
        }
    }
}

/// `--dqlite-network-latency`: a Go duration within 1 ms and 10 s (beyond that raft would
/// take minutes to notice a dead leader).
fn parse_network_latency(input: &str) -> Result<Duration, String> {
    let latency = crate::util::goduration::parse_arg(input)?;
    if latency < Duration::from_millis(1) || latency > Duration::from_secs(10) {
        return Err(format!("{input} is outside 1ms..10s"));
    }
    Ok(latency)
}

pub fn run(args: DaemonArgs, state_dir: Option<PathBuf>, env: Environment) -> anyhow::Result<()> {
    let config = args.resolve(state_dir.as_deref(), &env);
    let runtime = super::server_runtime()?;
    let result = runtime.block_on(async move {
        let daemon = crate::daemon::Daemon::start(config, HostIdentity::discover()).await?;
        daemon.serve(crate::sys::signal::shutdown_signal()).await;
        Ok::<(), anyhow::Error>(())
    });
    // A blocking task that is still running (a member that would not stop in time) must not
    // keep the process from exiting: the stop budget is the promise.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}
