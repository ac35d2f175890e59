//! `cluster-agent join <IP:PORT/TOKEN[/FP] | TOKEN-STRING> [--worker] [--skip-verify]`.

use std::path::PathBuf;

use clap::Args;

use crate::control::wire::{self, JoinClusterRequest, JoinClusterResponse};
use crate::local::error::{Failed, Refusal};
use crate::local::join::adopt::Registration;
use crate::local::join::JoinError;
use crate::state::Environment;

#[derive(Debug, Clone, Args)]
#[command(after_help = super::exit::JOIN_HELP)]
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
    /// Labels the node registers with (key=value,…), added to its kubelet's --node-labels.
    #[arg(long, value_delimiter = ',', value_name = "KEY=VALUE,...")]
    pub node_labels: Vec<String>,
    /// Taints the node registers with (key[=value]:Effect,…; Effect: NoSchedule,
    /// PreferNoSchedule, NoExecute).
    #[arg(long, value_delimiter = ',', value_name = "KEY[=VALUE]:EFFECT,...")]
    pub register_with_taints: Vec<String>,
}

pub fn run(args: JoinArgs, state_dir: Option<PathBuf>, env: Environment) -> anyhow::Result<()> {
    // Reject a malformed string before anything else, with MicroK8s's texts.
    crate::format::connection::parse(&args.connection).map_err(|e| {
        Failed::from_refusal(&JoinError::InvalidConnection(e.to_string()) as &dyn Refusal)
    })?;
    let registration = Registration {
        labels: args.node_labels,
        taints: args.register_with_taints,
    };
    registration
        .check()
        .map_err(|e| Failed::from_refusal(&JoinError::BadRegistration(e) as &dyn Refusal))?;
    let client = super::control_client(state_dir, &env);
    let req = JoinClusterRequest {
        connection: args.connection,
        worker: args.worker,
        skip_verify: args.skip_verify,
        registration,
    };
    super::say("Contacting cluster...\n")?;
    let resp: JoinClusterResponse = super::membership_change(&client, wire::JOIN, &req, "join")?;
    super::say_lines(&resp.messages)
}
