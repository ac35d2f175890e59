//! `cluster-agent init -c FILE|- [--pre-init]`: applies a MicroK8s launch configuration (the
//! snap's install hook runs it with `--pre-init` before the node's services exist).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::control::client::LocalClient;
use crate::control::wire::{self, DaemonInfo, JoinClusterRequest, JoinClusterResponse};
use crate::format::launch;
use crate::format::launch::JoinSection;
use crate::local::launch::{self as applying, LaunchEffects, SELF_SERVICE};
use crate::state::{resolve_state_dir, Environment, StateDir};
use crate::sys::runner::{CommandRunner, SystemRunner};
use crate::sys::services::{self, ServiceManager, ServiceManagerKind};

#[derive(Debug, Clone, Args)]
#[command(after_help = super::exit::INIT_HELP)]
pub struct InitArgs {
    /// The launch configuration to apply, or '-' for standard input.
    #[arg(long = "config-file", short = 'c', value_name = "FILE")]
    pub config_file: String,
    /// Write the files only: no service restarts, no addons, no join (for the install hook).
    #[arg(long, short = 'p')]
    pub pre_init: bool,
    /// How services are restarted (default: snap inside the snap, none elsewhere).
    #[arg(long, value_enum)]
    pub service_manager: Option<ServiceManagerKind>,
}

pub fn run(args: InitArgs, state_dir: Option<PathBuf>, env: Environment) -> anyhow::Result<()> {
    let text = read_config(&args.config_file)?;
    let config = launch::parse(&text).with_context(|| {
        format!(
            "{} is refused, nothing was changed",
            shown(&args.config_file)
        )
    })?;
    for field in config.unknown_fields() {
        eprintln!("warning: unknown field ignored: {field}");
    }
    let root = resolve_state_dir(state_dir.as_deref(), &env);
    let client = LocalClient::new(&StateDir::new(&root).layout().control_socket());
    if config.joins() && !args.pre_init && !daemon_answers(&client) {
        anyhow::bail!(
            "{} asks to join a cluster, which needs the cluster-agent daemon running; start it, or apply with --pre-init to write the files only. Nothing was changed.",
            shown(&args.config_file)
        );
    }
    let state = StateDir::for_node(&root, &env);
    let kind = args.service_manager.unwrap_or(if env.in_snap() {
        ServiceManagerKind::Snap
    } else {
        ServiceManagerKind::None
    });
    let effects = CliEffects {
        runner: SystemRunner,
        services: services::manager(kind, state.layout().marker("lite.lock")),
        client,
    };
    let applied = applying::apply(&state, &env, &config, args.pre_init, &effects)
        .with_context(|| format!("applying {}", shown(&args.config_file)))?;
    let mut lines = applied.join_messages.clone();
    lines.push(format!(
        "Applied {} part(s): {} file(s) written, {} command(s) run, restarted: {}.",
        config.parts.len(),
        applied.written.len(),
        applied.commands.len(),
        if applied.restarted.is_empty() && !applied.restart_self {
            "nothing".to_string()
        } else {
            let mut all = applied.restarted.clone();
            if applied.restart_self {
                all.push(SELF_SERVICE.to_string());
            }
            all.join(", ")
        }
    ));
    super::say_lines(&lines)?;
    if applied.restart_self {
        effects
            .services
            .restart(SELF_SERVICE)
            .context("restarting cluster-agent")?;
    }
    Ok(())
}

fn shown(file: &str) -> String {
    if file == "-" {
        "the configuration on standard input".into()
    } else {
        file.to_string()
    }
}

fn read_config(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the configuration from standard input")?;
        return Ok(text);
    }
    let bytes = crate::state::read_bytes(std::path::Path::new(file))?;
    String::from_utf8(bytes).with_context(|| format!("{file} is not UTF-8 text"))
}

fn daemon_answers(client: &LocalClient) -> bool {
    matches!(
        super::block_on(client.get::<DaemonInfo>(wire::INFO)),
        Ok(Ok(_))
    )
}

struct CliEffects {
    runner: SystemRunner,
    services: std::sync::Arc<dyn ServiceManager>,
    client: LocalClient,
}

impl LaunchEffects for CliEffects {
    fn run(&self, argv: &[String]) -> Result<(), String> {
        self.runner.run(argv).map_err(|e| e.to_string())
    }

    fn restart(&self, service: &str) -> Result<(), String> {
        self.services.restart(service).map_err(|e| e.to_string())
    }

    fn join(&self, join: &JoinSection) -> Result<Vec<String>, String> {
        let req = JoinClusterRequest::from_section(join);
        super::membership_change::<JoinClusterResponse, _>(&self.client, wire::JOIN, &req, "join")
            .map(|resp| resp.messages)
            .map_err(|e| format!("{e:#}"))
    }
}
