//! `cluster-agent leave`: the node departs from the cluster it is in.

use std::path::PathBuf;

use clap::Args;

use crate::client::local::LocalClient;
use crate::ops::leave::LeaveResponse;
use crate::state::{resolve_state_dir, Environment, StateDir};

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit codes: 0 left, 1 failure, 3 this node holds the only copy of the datastore."
)]
pub struct LeaveArgs {}

pub fn run(_args: LeaveArgs, state_dir: Option<PathBuf>, env: Environment) -> anyhow::Result<()> {
    let state = StateDir::new(resolve_state_dir(state_dir.as_deref(), &env));
    let client = LocalClient::new(&state.layout().control_socket());
    let resp: LeaveResponse =
        super::block_on(client.post("/v3/local/leave", &serde_json::json!({})))??;
    for line in resp.messages {
        println!("{line}");
    }
    Ok(())
}
