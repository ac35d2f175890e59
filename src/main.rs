use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use cluster_agent::cli;

fn main() -> ExitCode {
    let parsed = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli::run(parsed, cluster_agent::state::Environment::from_process()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Standard error may be gone too; the exit code still says what happened.
            let _ = writeln!(
                std::io::stderr(),
                "Error: {}",
                cluster_agent::util::errtext::error_chain(err.as_ref())
            );
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
