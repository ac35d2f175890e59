//! `cluster-agent recover [--yes] [--dry-run] [--force] [--survivor ID|ADDRESS]…`: rebuilds a
//! cluster that lost its quorum from the members that survived, run on any one of them (see
//! `local::recover` and docs/recovery.md). The plan is shown first and carried out only once
//! confirmed (`--yes`, or `yes` typed at the prompt).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;

use crate::control::wire::{self, RecoverRequest, RecoverResponse, RecoveryPlan};
use crate::local::error::{ErrorKind, Failed};
use crate::state::Environment;

#[derive(Debug, Clone, Args)]
#[command(after_help = super::exit::RECOVER_HELP)]
pub struct RecoverArgs {
    /// Carry the plan out without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Recover even though the cluster has its quorum (members that do not answer are dropped).
    #[arg(long)]
    pub force: bool,
    /// Keep only these survivors (an id, an address or an IP; repeat or separate with commas);
    /// default: every member that answers.
    #[arg(long = "survivor", value_name = "ID|ADDRESS", value_delimiter = ',')]
    pub survivors: Vec<String>,
    /// Print the plan and the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: RecoverArgs, state_dir: Option<PathBuf>, env: Environment) -> anyhow::Result<()> {
    let client = super::control_client(state_dir, &env);
    let ask = RecoverRequest {
        dry_run: true,
        force: args.force,
        survivors: args.survivors.clone(),
        confirmed: None,
    };
    let planned: RecoverResponse = super::block_on(client.post(wire::RECOVER, &ask))??;
    if args.json && args.dry_run {
        return super::say(&format!("{}\n", serde_json::to_string_pretty(&planned)?));
    }
    if !args.json {
        super::say(&render_plan(&planned.plan))?;
    }
    if args.dry_run {
        return super::say("Dry run: nothing was changed.\n");
    }
    if !args.yes && !confirmed()? {
        return Err(Failed {
            kind: ErrorKind::RecoverNothingChanged,
            message: "Not confirmed: nothing was changed.".into(),
        }
        .into());
    }
    let go = RecoverRequest {
        dry_run: false,
        confirmed: Some(planned.plan.kept.iter().map(|m| m.id).collect()),
        ..ask
    };
    let done: RecoverResponse = super::membership_change(&client, wire::RECOVER, &go, "recovery")?;
    if args.json {
        return super::say(&format!("{}\n", serde_json::to_string_pretty(&done)?));
    }
    super::say_lines(&done.messages)
}

/// Asks on the terminal; without one, there is no one to ask.
fn confirmed() -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(Failed {
            kind: ErrorKind::RecoverNothingChanged,
            message: "No terminal to confirm the plan on: run `cluster-agent recover --yes` to carry it out. Nothing was changed.".into(),
        });
    }
    eprint!("Recover the cluster this way? Type 'yes' to go on: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}

/// The plan as the user reads it.
pub fn render_plan(plan: &RecoveryPlan) -> String {
    let mut out = String::new();
    out.push_str(&format!("Datastore: {}\n", plan.condition));
    if let Some(u) = &plan.unfinished {
        out.push_str(&format!(
            "An earlier recovery did not finish: {u}; this one completes it.\n"
        ));
    }
    out.push_str("Members kept (every one is stopped, backed up, and started again):\n");
    for m in &plan.kept {
        let entry = m
            .last_entry
            .map(|e| format!("log ends at term {} index {}", e.term, e.index))
            .unwrap_or_else(|| "empty log".into());
        out.push_str(&format!(
            "  {} (id {:#x}): {} -> {}, {entry}\n",
            m.address,
            m.id,
            m.role,
            m.new_role.as_deref().unwrap_or("?")
        ));
    }
    if plan.dropped.is_empty() {
        out.push_str("Members dropped: none\n");
    } else {
        out.push_str(
            "Members dropped (out of the cluster for good; their Kubernetes nodes are deleted):\n",
        );
        for m in &plan.dropped {
            out.push_str(&format!(
                "  {} (id {:#x}, {}): {}\n",
                m.address,
                m.id,
                m.role,
                m.reason.as_deref().unwrap_or("")
            ));
        }
    }
    out.push_str(&format!(
        "Data that wins: {}'s (the most recent log); the others get a copy of it.\n",
        plan.winner.address
    ));
    out
}
