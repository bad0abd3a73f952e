//! The `causalkv` command: `serve` runs a replica, `cluster` runs a local cluster.
//!
//! This is the binary's edge: configuration errors become one plain line on stderr and a
//! non-zero exit status.

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use causalkv::cluster::{self, ClusterArgs};
use causalkv::config::ServeArgs;
use causalkv::server;

#[derive(Parser, Debug)]
#[command(
    name = "causalkv",
    version,
    about = "A replicated, causally consistent key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one replica (configured by SOCKET_ADDRESS and VIEW, or flags).
    Serve(ServeArgs),
    /// Run a local cluster of replicas on loopback until Ctrl-C.
    Cluster(ClusterArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("causalkv: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => {
            let config = args.validate()?;
            runtime.block_on(server::serve(config, server::shutdown_signal()))?;
        }
        Command::Cluster(args) => runtime.block_on(cluster::run(args))?,
    }
    Ok(())
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
