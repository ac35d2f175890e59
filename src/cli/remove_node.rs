//! `cluster-agent remove-node <name|ip|id> [--force]`.

use std::path::PathBuf;

use clap::Args;

use crate::control::wire::{self, RemoveNodeRequest, RemoveNodeResponse};
use crate::state::Environment;

#[derive(Debug, Clone, Args)]
#[command(after_help = super::exit::REMOVE_NODE_HELP)]
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
    let client = super::control_client(state_dir, &env);
    let req = RemoveNodeRequest {
        node: args.node,
        force: args.force,
    };
    let resp: RemoveNodeResponse =
        super::membership_change(&client, wire::REMOVE_NODE, &req, "removal")?;
    super::say_lines(&resp.messages)
}
