//! `causalkv check`: randomized session workload, history recorder and causal checker.
//! (Being written.)

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Replica to include, IP:PORT (repeatable).
    #[arg(long = "replica", value_delimiter = ',', required = true)]
    pub replicas: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("not implemented yet")]
    NotImplemented,
}

/// Runs the workload and the checker; `Ok(true)` when no violation was found.
pub async fn run(args: CheckArgs) -> Result<bool, CheckError> {
    let _ = args;
    Err(CheckError::NotImplemented)
}
