//! `causalkv bench`: a closed-loop load generator over the public contract. (Being written.)

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Replica to target, IP:PORT (repeatable).
    #[arg(
        long = "replica",
        value_delimiter = ',',
        default_value = "127.0.0.1:8082"
    )]
    pub replicas: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("not implemented yet")]
    NotImplemented,
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let _ = args;
    Err(BenchError::NotImplemented)
}
