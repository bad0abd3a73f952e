//! `causalkv bench`: a closed-loop load generator over the public contract, and the tools
//! around it.
//!
//! * By default it drives replicas that speak the causalkv contract (the original system
//!   or any compatible store): `--concurrency` sessions, each carrying its causal metadata,
//!   spread over the `--replica` addresses, running a YCSB-style `--workload` for
//!   `--duration` or `--ops`; at the end a report of throughput, latency percentiles (from
//!   HDR histograms) and status counts, as a table or `--json`.
//! * `--target etcd` runs the same loop against etcd's JSON gateway, for comparisons.
//! * `--summarize FILE...` turns several reports into one comparison table, with the
//!   ratios of causalkv to its peers, and `--save PATH` writes it as JSON and a PNG chart
//!   (the chart needs the `charts` cargo feature, on by default; without it the chart is
//!   skipped with a notice).
//! * `--scale` starts its own three replicas, loads `--keys` keys of `--value-size` bytes,
//!   and reports memory against raw data size and the time a killed replica needs to come
//!   back with the whole store (`--durable`: from its data directory; `--under-writes`:
//!   read latency and lock holds under a write load).
//!
//! Modules: [`workload`] (operation mix, key distributions), [`driver`] (one request to a
//! target), [`load`] (the closed loop), [`stats`] and [`report`] (what is measured and
//! shown), [`cpu`] (the servers' CPU time per operation), [`progress`] (the bar), [`compare`] and `chart` (comparisons; `chart`, the only
//! user of plotters, is built with the `charts` feature alone), [`scale`] with
//! [`recovery`], [`pressure`] and [`scrape`] (what it reads of `/metrics` and `/health`).

pub mod ceiling;
#[cfg(feature = "charts")]
pub mod chart;
pub mod compare;
pub mod cpu;
pub mod driver;
pub mod load;
pub mod pressure;
pub mod progress;
pub mod recovery;
pub mod report;
pub mod scale;
pub mod scrape;
pub mod stats;
pub mod workload;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use driver::{Driver, DriverConfig, Target};
use load::Plan;
use progress::Progress;
use report::{Report, RunInfo};
use workload::{Distribution, KeyChooser, Workload};

/// The measured period when neither `--duration` nor `--ops` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// The longest an `--ops` run may take when no `--duration` bounds it.
pub const OPS_TIME_CAP: Duration = Duration::from_secs(600);

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Replica (or etcd member) to target, IP:PORT (plain HTTP) or https://IP:PORT (a
    /// causalkv replica, with --tls-ca); repeatable or comma-separated. Sessions are
    /// spread over them.
    #[arg(
        long = "replica",
        value_name = "[https://]IP:PORT",
        value_delimiter = ',',
        default_value = "127.0.0.1:8082"
    )]
    pub replicas: Vec<String>,
    /// CA certificate (PEM) that signed the replicas' certificates: needed for https://
    /// replicas (causalkv target only).
    #[arg(long, value_name = "PATH", conflicts_with = "scale")]
    pub tls_ca: Option<PathBuf>,
    /// Protocol to speak: the causalkv contract, or etcd's JSON gateway.
    #[arg(long, value_enum, default_value = "causalkv")]
    pub target: Target,
    /// Concurrent sessions (closed loop: one request in flight each).
    #[arg(long, short = 'c', default_value_t = 16)]
    pub concurrency: usize,
    /// Length of the measured period [default: 10s, or up to 10 min with --ops].
    #[arg(long, short = 'd', value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Number of measured operations (the run ends at the first of --ops and --duration).
    #[arg(long, short = 'n')]
    pub ops: Option<u64>,
    /// Operation mix: a = 50% read / 50% update, b = 95/5, c = read only, write = update
    /// only.
    #[arg(long, short = 'w', value_enum, default_value = "a")]
    pub workload: Workload,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// How keys are drawn.
    #[arg(long, value_enum, default_value = "uniform")]
    pub distribution: Distribution,
    /// Size of each written value, in bytes (a JSON string of that many characters).
    #[arg(long, default_value_t = 32)]
    pub value_size: usize,
    /// Run the load this long before measuring.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Write every key once before the warm-up.
    #[arg(long)]
    pub prepopulate: bool,
    /// Seed of the sessions' random generators.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Longest wait for one answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON on stdout (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Processes of the servers under load (comma-separated PIDs): the report then gives
    /// the CPU time they spent per operation in the measured period (from
    /// `/proc/PID/stat`), a figure far steadier from run to run than throughput.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Name of the system in the report [default: the target].
    #[arg(long)]
    pub label: Option<String>,
    /// Threads of the load generator's own async runtime (1: every session on one
    /// thread, the leanest on a small machine that also runs the servers).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// etcd only: linearizable reads (default: serializable, answered by the member).
    #[arg(long)]
    pub linearizable: bool,
    /// Scale report: start three replicas, load --keys keys of --value-size bytes, report
    /// memory and the time a killed replica needs to hold the whole store again.
    #[arg(long, conflicts_with_all = ["summarize", "target"])]
    pub scale: bool,
    /// With --scale: give each replica a data directory (`--data-dir`, in a temp dir, the
    /// default fsync policy), so that a killed replica recovers from it; also time a
    /// restart of all three replicas at once.
    #[arg(long, requires = "scale")]
    pub durable: bool,
    /// With --scale: once loaded, run --concurrency writer sessions and as many readers
    /// for this long; report read latency and each replica's lock holds meanwhile.
    #[arg(long, requires = "scale", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub under_writes: Option<Duration>,
    /// With --scale: keep the replicas' logs (in a temp dir) after a successful run.
    #[arg(long, requires = "scale")]
    pub keep_logs: bool,
    /// Summarize reports (`--json` outputs, or rows in the same shape) into one comparison
    /// table with the ratios of causalkv to its peers.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub summarize: Vec<PathBuf>,
    /// With --summarize: also write PATH.json and a chart PATH.png (if built with the
    /// `charts` feature); with --scale: also write the report to PATH.json.
    #[arg(long, value_name = "PATH")]
    pub save: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("interrupted")]
    Interrupted,
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    if !args.summarize.is_empty() {
        let summary = compare::run(&args.summarize, args.save.as_deref(), args.json)?;
        if let Some(path) = &args.save {
            save_chart(&summary, &path.with_extension("png"));
        }
        return Ok(());
    }
    validate(&args)?;
    if args.save.is_some() && !args.scale {
        return Err(BenchError::Usage(
            "--save goes with --summarize or --scale".into(),
        ));
    }
    if args.scale {
        return scale::run(&args).await;
    }
    let threads = args.threads;
    let json = args.json;
    let report = on_own_runtime(threads, move || async move { load_run(&args).await }).await?;
    print_report(&report, json)
}

/// Draws the chart of `summary` to `png_path`. The table and PATH.json are the result: a
/// chart that cannot be drawn is a one-line notice, not a failure.
#[cfg(feature = "charts")]
fn save_chart(summary: &compare::Summary, png_path: &Path) {
    match chart::draw(summary, png_path) {
        Ok(()) => eprintln!("saved {}", png_path.display()),
        Err(error) => eprintln!("no chart: {error}"),
    }
}

/// Without the `charts` feature (the server's build) there is no plotting code: say so.
#[cfg(not(feature = "charts"))]
fn save_chart(_summary: &compare::Summary, png_path: &Path) {
    eprintln!(
        "no chart: {} not drawn, this causalkv was built without the `charts` feature",
        png_path.display()
    );
}

/// Runs `task` on a runtime of its own with `threads` worker threads (the caller's runtime
/// has one per core; a load generator that shares a small machine with the servers it
/// measures does better with fewer, and one thread spares the cross-thread wake-ups).
async fn on_own_runtime<F, Fut, T>(threads: usize, task: F) -> Result<T, BenchError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, BenchError>>,
    T: Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench".into())
        .spawn(move || {
            let outcome = match runtime(threads) {
                Ok(runtime) => runtime.block_on(task()),
                Err(error) => Err(BenchError::Setup(format!(
                    "cannot start a runtime: {error}"
                ))),
            };
            let _ = done.send(outcome);
        })?;
    result
        .await
        .map_err(|_| BenchError::Setup("the load generator stopped unexpectedly".into()))?
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

fn validate(args: &BenchArgs) -> Result<(), BenchError> {
    let fail = |message: &str| Err(BenchError::Usage(message.to_string()));
    if args.concurrency == 0 {
        return fail("--concurrency must be at least 1");
    }
    if args.keys == 0 {
        return fail("--keys must be at least 1");
    }
    if args.threads == 0 {
        return fail("--threads must be at least 1");
    }
    if args.ops == Some(0) || args.duration.is_some_and(|d| d.is_zero()) {
        return fail("--ops and --duration must be positive");
    }
    if args.tls_ca.is_some() && args.target != Target::Causalkv {
        return fail("--tls-ca goes with --target causalkv");
    }
    Ok(())
}

/// The sessions' configuration of the target.
fn driver_config(args: &BenchArgs, endpoints: Vec<String>) -> DriverConfig {
    DriverConfig {
        target: args.target,
        endpoints,
        timeout: args.timeout,
        value_size: args.value_size,
        serializable_reads: !args.linearizable,
        tls_ca: args.tls_ca.clone(),
    }
}

fn plan(args: &BenchArgs) -> Plan {
    let duration = match (args.duration, args.ops) {
        (Some(duration), _) => duration,
        (None, Some(_)) => OPS_TIME_CAP,
        (None, None) => DEFAULT_DURATION,
    };
    Plan {
        workload: args.workload,
        keys: load::key_names(args.keys),
        chooser: KeyChooser::new(args.distribution, args.keys),
        concurrency: args.concurrency,
        warmup: args.warmup,
        duration,
        ops: args.ops,
        prepopulate: args.prepopulate,
        seed: args.seed,
        server_pids: args.server_pids.clone(),
    }
}

/// Runs one load against the targets of `args` and builds its report.
async fn load_run(args: &BenchArgs) -> Result<Report, BenchError> {
    let driver = Arc::new(Driver::new(&driver_config(args, args.replicas.clone()))?);
    driver.probe_all().await?;
    let progress = Progress::new(!args.json && std::io::stderr().is_terminal());
    let measured = load::run(driver, Arc::new(plan(args)), &progress).await;
    progress.finish();
    let info = RunInfo {
        system: args
            .label
            .clone()
            .unwrap_or_else(|| args.target.name().to_string()),
        target: args.target,
        workload: args.workload,
        distribution: args.distribution,
        keys: args.keys,
        value_size: args.value_size,
        concurrency: args.concurrency,
        endpoints: args.replicas.clone(),
        seed: args.seed,
        warmup_s: args.warmup.as_secs_f64(),
    };
    Ok(Report::new(info, &measured?))
}

fn print_report(report: &Report, json: bool) -> Result<(), BenchError> {
    if json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| BenchError::Setup(format!("cannot encode the report: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
