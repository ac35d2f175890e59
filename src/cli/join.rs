//! `cluster-agent join <IP:PORT/TOKEN[/FP] | TOKEN-STRING> [--worker] [--skip-verify]`.
//!
//! Exit codes: 0 joined, 1 failure (nothing changed, or restored), 2 usage, 4 the server's
//! identity could not be verified, 6 the server refused the join.

use std::path::PathBuf;

use clap::Args;

use crate::client::local::LocalClient;
use crate::ops::joiner::{JoinClusterRequest, JoinClusterResponse};
use crate::state::{resolve_state_dir, Environment, StateDir};

use super::{exit, Failure};

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit codes: 0 joined, 1 failure, 2 usage, 4 server identity not verified, 6 join refused by the server."
)]
pub struct JoinArgs {
    /// The connection string printed by `add-node`.
    pub connection: String,
    /// Join as a worker only node.
    #[arg(long)]
    pub worker: bool,
    /// Join running the control plane (the default; accepted for MicroK8s compatibility).
    #[arg(long, conflicts_with = "worker")]
    pub controlplane: bool,
    /// Skip the certificate verification of the node we are joining to.
    #[arg(long)]
    pub skip_verify: bool,
}

pub fn run(args: JoinArgs, state_dir: Option<PathBuf>, env: Environment) -> anyhow::Result<()> {
    // Reject a malformed string before anything else, with MicroK8s's texts.
    crate::connection::parse(&args.connection).map_err(|e| Failure {
        code: exit::FAILURE,
        message: e.to_string(),
    })?;
    let state = StateDir::new(resolve_state_dir(state_dir.as_deref(), &env));
    let client = LocalClient::new(&state.layout().control_socket());
    let req = JoinClusterRequest {
        connection: args.connection,
        worker: args.worker,
        skip_verify: args.skip_verify,
    };
    println!("Contacting cluster...");
    let resp: JoinClusterResponse = super::block_on(client.post("/v3/local/join", &req))??;
    for line in resp.messages {
        println!("{line}");
    }
    Ok(())
}
