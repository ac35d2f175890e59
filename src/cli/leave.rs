//! `cluster-agent leave`: the node departs from the cluster it is in.

use std::path::PathBuf;

use clap::Args;

use crate::control::wire::{self, LeaveResponse};
use crate::state::Environment;

#[derive(Debug, Clone, Args)]
#[command(after_help = super::exit::LEAVE_HELP)]
pub struct LeaveArgs {}

pub fn run(_args: LeaveArgs, state_dir: Option<PathBuf>, env: Environment) -> anyhow::Result<()> {
    let client = super::control_client(state_dir, &env);
    let resp: LeaveResponse =
        super::membership_change(&client, wire::LEAVE, &serde_json::json!({}), "leave")?;
    super::say_lines(&resp.messages)
}
