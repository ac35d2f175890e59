//! The command line: one module per subcommand, each with its clap `Args` and a `run`.
//!
//! Invariant: [`exit_code`] is the only place that turns an error into a process exit code.

pub mod add_node;
pub mod apiserver_proxy;
pub mod daemon;
pub mod join;
pub mod leave;
pub mod remove_node;
pub mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::state::Environment;

/// Exit codes scripts can rely on (also listed in `--help`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
}

const AFTER_HELP: &str = "Exit codes: 0 success, 1 failure, 2 usage error.\n\
State directory: --state-dir, else $SNAP_DATA, else /var/snap/microk8s/current if it exists, \
else /var/lib/cluster-agent.";

#[derive(Debug, Parser)]
#[command(
    name = "cluster-agent",
    version,
    about = "Node-join agent for MicroK8s-style Kubernetes clusters",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// State directory (defaults: $SNAP_DATA, /var/snap/microk8s/current, /var/lib/cluster-agent).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon: HTTPS API on --bind, control socket, dqlite membership.
    Daemon(daemon::DaemonArgs),
    /// The MicroK8s spelling of `daemon` (as run by the snap's run-cluster-agent-with-args).
    #[command(name = "cluster-agent")]
    ClusterAgent(daemon::DaemonArgs),
    /// Issue a join token and print the commands that join another node to this one.
    AddNode(add_node::AddNodeArgs),
    /// The worker's TCP load balancer to the control planes' API servers (MicroK8s flags).
    ApiserverProxy(apiserver_proxy::ApiserverProxyArgs),
    /// Show the datastore members: roles, failure domains, liveness.
    Status(status::StatusArgs),
    /// Join the node to a cluster.
    Join(join::JoinArgs),
    /// The node will depart from the cluster it is in.
    Leave(leave::LeaveArgs),
    /// Remove a node from the cluster.
    RemoveNode(remove_node::RemoveNodeArgs),
}

/// An error that carries the exit code a script should see.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

/// Runs the parsed command line.
pub fn run(cli: Cli, env: Environment) -> anyhow::Result<()> {
    match cli.command {
        Command::Daemon(args) | Command::ClusterAgent(args) => {
            daemon::run(args, cli.state_dir, env)
        }
        Command::AddNode(args) => add_node::run(args, cli.state_dir, env),
        Command::ApiserverProxy(args) => apiserver_proxy::run(args, cli.state_dir, env),
        Command::Status(args) => status::run(args, cli.state_dir, env),
        Command::Join(args) => join::run(args, cli.state_dir, env),
        Command::Leave(args) => leave::run(args, cli.state_dir, env),
        Command::RemoveNode(args) => remove_node::run(args, cli.state_dir, env),
    }
}

/// The runtime of the long-running commands (daemon, apiserver-proxy): two workers are
/// plenty for a node agent and keep its footprint small.
pub fn server_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs one future on a small current-thread runtime (CLI commands are short-lived).
pub fn block_on<F: std::future::Future>(fut: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(fut))
}

/// Maps an error to the process exit code.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code;
        }
        if let Some(crate::client::local::LocalError::Daemon {
            exit_code: Some(code),
            ..
        }) = cause.downcast_ref()
        {
            return *code;
        }
    }
    exit::FAILURE
}
