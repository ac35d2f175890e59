//! `cluster-agent remove-node <name|ip|id> [--force]`.

use std::path::PathBuf;

use clap::Args;

use crate::client::local::LocalClient;
use crate::ops::remove_node::{RemoveNodeRequest, RemoveNodeResponse};
use crate::state::{resolve_state_dir, Environment, StateDir};

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit codes: 0 removed, 1 refused or failed, 2 the datastore could not be changed."
)]
pub struct RemoveNodeArgs {
    /// The node: its hostname, IP address (IPv4 or IPv6) or dqlite id.
    pub node: String,
    /// Force the node removal operation (for a node that is dead or gone for good).
    #[arg(long)]
    pub force: bool,
}

pub fn run(
    args: RemoveNodeArgs,
    state_dir: Option<PathBuf>,
    env: Environment,
) -> anyhow::Result<()> {
    let state = StateDir::new(resolve_state_dir(state_dir.as_deref(), &env));
    let client = LocalClient::new(&state.layout().control_socket());
    let req = RemoveNodeRequest {
        node: args.node,
        force: args.force,
    };
    let resp: RemoveNodeResponse = super::block_on(client.post("/v3/local/remove-node", &req))??;
    for line in resp.messages {
        println!("{line}");
    }
    Ok(())
}
