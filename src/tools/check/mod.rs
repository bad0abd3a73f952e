//! `causalkv check`: randomized session workload, history recorder and causal checker.
//!
//! A run has three steps, each usable on its own as a library (the Docker fault suite
//! drives the workload while it injects faults, then calls the checker):
//!
//! 1. [`workload::run`] sends concurrent client sessions' random requests to the replicas
//!    given and records every request and answer as a [`history::History`];
//! 2. [`settle::collect`] reads every key used from every replica until they agree (or a
//!    deadline passes): the [`settle::FinalState`];
//! 3. [`checker::check`] judges the history and final state (pure, no I/O) and
//!    [`report::Report`] summarizes the run.
//!
//! [`run`] is the command: it does all three, saves the history if asked, prints the report
//! and answers `Ok(true)` for a clean verdict, `Ok(false)` when violations were found, and
//! `Err` when the run could not be made (bad arguments, no replica ever answered, the
//! history could not be saved).

pub mod checker;
#[cfg(test)]
mod checker_tests;
pub mod history;
pub mod past;
pub mod report;
pub mod settle;
#[cfg(test)]
mod sim_tests;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use crate::tools::client::{Client, ClientError};
use checker::Violation;
use history::History;
use report::{Report, RunInfo};
use settle::FinalState;
use workload::WorkloadConfig;

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Replica to include, IP:PORT (plain HTTP) or https://IP:PORT (with --tls-ca);
    /// repeatable or comma-separated.
    #[arg(
        long = "replica",
        value_name = "[https://]IP:PORT",
        value_delimiter = ',',
        required = true
    )]
    pub replicas: Vec<String>,
    /// CA certificate (PEM) that signed the replicas' certificates: needed for https://
    /// replicas.
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 4)]
    pub sessions: u32,
    /// How long the sessions send requests (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Seed of the sessions' random choices [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of shared keys the sessions overwrite and delete.
    #[arg(long, default_value_t = 5)]
    pub keys: u32,
    /// Most operations in total.
    #[arg(long, default_value_t = 100_000)]
    pub max_ops: u64,
    /// Per-request timeout.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Longest wait after the workload for every replica to hold the same store.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Save the history to FILE as JSON lines (one operation per line).
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot save the history to {path}: {source}")]
    SaveHistory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no replica served any of {ops} requests (first failure: {first})")]
    NoAnswers { ops: usize, first: String },
}

impl CheckArgs {
    /// The workload these arguments ask for, with a fresh run tag.
    pub fn workload_config(&self) -> Result<WorkloadConfig, CheckError> {
        let invalid = |why: &str| Err(CheckError::InvalidArgs(why.to_string()));
        if self.replicas.iter().any(|r| r.trim().is_empty()) {
            return invalid("--replica must not be empty");
        }
        if self.sessions == 0 || self.keys == 0 || self.max_ops == 0 {
            return invalid("--sessions, --keys and --max-ops must be at least 1");
        }
        if self.timeout.is_zero() {
            return invalid("--timeout must be positive");
        }
        Ok(WorkloadConfig {
            replicas: self.replicas.iter().map(|r| r.trim().to_string()).collect(),
            sessions: self.sessions,
            duration: self.duration,
            max_ops: self.max_ops,
            keys: self.keys,
            seed: self.seed.unwrap_or_else(clock_seed),
            run_tag: workload::fresh_run_tag(),
        })
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Everything one run produced.
#[derive(Debug)]
pub struct Run {
    pub history: History,
    pub final_state: FinalState,
    pub violations: Vec<Violation>,
    /// How long the workload ran.
    pub elapsed: Duration,
}

/// Runs the workload, collects the final state (waiting up to `settle` for agreement) and
/// checks both.
pub async fn verify(client: &Client, config: &WorkloadConfig, settle: Duration) -> Run {
    let began = Instant::now();
    let history = workload::run(client, config).await;
    let elapsed = began.elapsed();
    let keys: Vec<String> = history.keys().into_iter().collect();
    let final_state = settle::collect(client, &config.replicas, &keys, settle).await;
    let violations = checker::check(&history, &final_state);
    Run {
        history,
        final_state,
        violations,
        elapsed,
    }
}

/// Runs the workload and the checker; `Ok(true)` when no violation was found.
pub async fn run(args: CheckArgs) -> Result<bool, CheckError> {
    let config = args.workload_config()?;
    let client = Client::with_tls_ca(args.timeout, args.tls_ca.as_deref())?;
    let run = verify(&client, &config, args.settle).await;
    if let Some(path) = &args.history {
        std::fs::write(path, run.history.to_jsonl()).map_err(|source| CheckError::SaveHistory {
            path: path.clone(),
            source,
        })?;
    }
    ensure_some_answer(&run.history)?;
    let info = RunInfo {
        replicas: config.replicas.clone(),
        sessions: config.sessions,
        seed: config.seed,
        run_tag: config.run_tag.clone(),
        duration: run.elapsed,
    };
    let report = Report::new(&info, &run.history, &run.final_state, run.violations);
    if args.json {
        // A report holds only strings, numbers and JSON values: it always serializes.
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.render());
    }
    Ok(report.clean)
}

/// A run where no request was served tested nothing: that is an error, not a verdict.
fn ensure_some_answer(history: &History) -> Result<(), CheckError> {
    if history.ops.iter().any(|op| op.is_served()) {
        return Ok(());
    }
    let first = history
        .ops
        .first()
        .and_then(|op| op.error.clone())
        .unwrap_or_else(|| "no request was sent".into());
    Err(CheckError::NoAnswers {
        ops: history.ops.len(),
        first,
    })
}
