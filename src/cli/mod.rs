//! The command line: one module per subcommand, each with its clap `Args` and a `run`.
//!
//! Invariant: [`exit`] is the only place that turns an error into a process exit code.

pub mod add_node;
pub mod apiserver_proxy;
pub mod daemon;
pub mod exit;
pub mod init;
pub mod join;
pub mod leave;
pub mod recover;
pub mod remove_node;
pub mod status;
pub mod token;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::state::Environment;

#[derive(Debug, Parser)]
#[command(
    name = "cluster-agent",
    version,
    about = "Node-join agent for MicroK8s-style Kubernetes clusters",
    after_help = exit::HELP
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
    /// Bring a cluster that lost its quorum back from its survivors (run on any one of them).
    Recover(recover::RecoverArgs),
    /// List or revoke the tokens that can join a node to this one.
    Token(token::TokenArgs),
    /// Apply a MicroK8s launch configuration (what the snap's install hook and
    /// `snap set microk8s config=…` use; see docs/launch-configuration.md).
    Init(init::InitArgs),
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
        Command::Recover(args) => recover::run(args, cli.state_dir, env),
        Command::Init(args) => init::run(args, cli.state_dir, env),
        Command::Token(args) => token::run(args, cli.state_dir, env),
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

/// Asks the daemon for a membership change (`what`: join, leave, removal) and waits for its
/// answer. The daemon carries the change through whatever happens here: if this command is
/// interrupted (Ctrl-C, a lost terminal) it says so and exits 130; if the daemon goes away
/// before answering, it says how the outcome will be known, never that nothing changed.
pub fn membership_change<R, B>(
    client: &crate::control::client::LocalClient,
    path: &str,
    body: &B,
    what: &str,
) -> anyhow::Result<R>
where
    R: serde::de::DeserializeOwned,
    B: serde::Serialize,
{
    use crate::control::client::LocalError;
    use crate::local::error::{ErrorKind, Failed};
    let answer = block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut hup), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
        ) else {
            return Some(client.post::<B, R>(path, body).await);
        };
        tokio::select! {
            answer = client.post::<B, R>(path, body) => Some(answer),
            _ = int.recv() => None,
            _ = hup.recv() => None,
            _ = term.recv() => None,
        }
    })?;
    match answer {
        Some(Ok(answer)) => Ok(answer),
        Some(Err(LocalError::Lost { reason, .. })) => Err(Failed {
            kind: ErrorKind::OutcomeUnknown,
            message: format!(
                "The cluster-agent daemon stopped during the {what} ({reason}). When it starts again it finishes or undoes the {what} before it serves anything; then `cluster-agent status` shows where this node stands."
            ),
        }
        .into()),
        Some(Err(e)) => Err(e.into()),
        None => Err(Failed {
            kind: ErrorKind::Interrupted,
            message: format!(
                "Interrupted. The daemon goes on with the {what}; `cluster-agent status` shows it while it runs and where this node stands after."
            ),
        }
        .into()),
    }
}

/// Writes `text` to standard output. A failed write (a closed pipe, a full disk) is an error
/// for the caller to report, never a panic.
pub fn say(text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to standard output")
}

/// [`say`] each line, with a newline after it.
pub fn say_lines<S: AsRef<str>>(lines: &[S]) -> anyhow::Result<()> {
    let mut text = String::new();
    for line in lines {
        text.push_str(line.as_ref());
        text.push('\n');
    }
    say(&text)
}

/// Maps an error to the process exit code (see [`exit`]).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    exit::exit_code(err)
}

/// The control socket of the daemon that owns the state directory.
pub fn control_client(
    state_dir: Option<PathBuf>,
    env: &Environment,
) -> crate::control::client::LocalClient {
    let state =
        crate::state::StateDir::new(crate::state::resolve_state_dir(state_dir.as_deref(), env));
    crate::control::client::LocalClient::new(&state.layout().control_socket())
}
