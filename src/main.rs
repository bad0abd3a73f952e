//! The `causalkv` command: `serve` runs a replica, `cluster` a local cluster, `put`, `get`,
//! `delete` and `view` are the client, `check` verifies a cluster's causal consistency and
//! `bench` measures it.
//!
//! This is the binary's edge: errors become one plain line on stderr and a non-zero exit
//! status.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use causalkv::server;
use causalkv::server::config::ServeArgs;
use causalkv::tools::bench::ceiling::{self, CeilingArgs};
use causalkv::tools::bench::{self, BenchArgs};
use causalkv::tools::check::{self, CheckArgs};
use causalkv::tools::cli::{self, KeyArgs, PutArgs, ViewArgs};
use causalkv::tools::cluster::{self, ClusterArgs};
use causalkv::tools::sim::{self, SimulateArgs};
use causalkv::tools::status::{self, StatusArgs};

/// mimalloc: per-thread free lists suit a server that allocates many small, short-lived
/// buffers per request on several threads (measured in bench/compare.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "causalkv",
    version,
    about = "A replicated, causally consistent key-value store"
)]
struct Cli {
    /// Log lines as text for people, or as JSON objects (one per line, the same fields)
    /// for log shippers.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "LOG_FORMAT",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one replica (configured by SOCKET_ADDRESS and VIEW, or flags).
    Serve(ServeArgs),
    /// Run a local cluster of replicas on loopback until Ctrl-C.
    Cluster(ClusterArgs),
    /// Write a value (JSON if it parses as JSON, else a string).
    Put(PutArgs),
    /// Read a value.
    Get(KeyArgs),
    /// Delete a key.
    Delete(KeyArgs),
    /// Show or change the view.
    View(ViewArgs),
    /// Run a randomized session workload and check the history for causal violations
    /// (exit 0: clean, 1: violations found, 2: could not run).
    Check(CheckArgs),
    /// Measure throughput and latency over the HTTP contract.
    Bench(BenchArgs),
    /// Serve one fixed JSON answer to every request, on a replica's runtime and HTTP
    /// stack: the machine's ceiling that bench/compare.sh measures causalkv against.
    Ceiling(CeilingArgs),
    /// Show the cluster at a glance: one row per replica, its peers' queues and lag
    /// (exit 1 when a replica is unreachable or not ready, or the views disagree).
    Status(StatusArgs),
    /// Run seeded simulations of whole clusters under faults, in simulated time, and
    /// check every history (exit 1 when a seed fails; `--seed S` replays one exactly).
    Simulate(SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) | Command::Cluster(_) => "info",
        // The simulated replicas log every fault they meet; `--verbose` tells the story.
        Command::Simulate(_) => "off",
        _ => "warn",
    };
    init_logging(default_level, cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("causalkv: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Simulate(args) = &cli.command {
        // No runtime: the simulator runs its own clock, on plain threads.
        return Ok(match sim::command(args) {
            true => ExitCode::SUCCESS,
            false => ExitCode::from(1),
        });
    }
    let mut builder = match &cli.command {
        // One worker: a single-threaded runtime does the same work without the
        // multi-threaded scheduler's hand-offs (measured: fewer wake-ups per request).
        Command::Serve(ServeArgs {
            worker_threads: Some(0 | 1),
            ..
        })
        | Command::Ceiling(_) => tokio::runtime::Builder::new_current_thread(),
        Command::Serve(ServeArgs {
            worker_threads: Some(threads),
            ..
        }) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(*threads);
            builder
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = |request| ExitCode::from(runtime.block_on(cli::run(request)));
    Ok(match cli.command {
        Command::Serve(args) => {
            let config = args.validate()?;
            runtime.block_on(server::serve(config, server::shutdown_signal()))?;
            ExitCode::SUCCESS
        }
        Command::Cluster(args) => {
            runtime.block_on(cluster::run(args))?;
            ExitCode::SUCCESS
        }
        Command::Put(args) => client(cli::Request::Put(args)),
        Command::Get(args) => client(cli::Request::Get(args)),
        Command::Delete(args) => client(cli::Request::Delete(args)),
        Command::View(args) => client(cli::Request::View(args)),
        Command::Check(args) => match runtime.block_on(check::run(args)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                eprintln!("causalkv: {error}");
                ExitCode::from(2)
            }
        },
        Command::Bench(args) => {
            runtime.block_on(bench::run(args))?;
            ExitCode::SUCCESS
        }
        Command::Ceiling(args) => {
            runtime
                .block_on(ceiling::serve(args.listen, server::shutdown_signal()))
                .with_context(|| format!("cannot serve on {}", args.listen))?;
            ExitCode::SUCCESS
        }
        Command::Simulate(_) => ExitCode::SUCCESS,
        Command::Status(args) => match runtime.block_on(status::run(args)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                eprintln!("causalkv: {error}");
                ExitCode::from(2)
            }
        },
    })
}

fn init_logging(default_level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The same fields as the text lines (time, level, target, message, fields),
        // each a top-level key.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}
