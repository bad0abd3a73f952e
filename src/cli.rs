//! The command-line client: `causalkv put|get|delete|view`. (Being written.)

use clap::Args;

/// Options shared by every client command.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Replica to talk to, IP:PORT (repeatable).
    #[arg(
        long = "replica",
        env = "CAUSALKV_REPLICA",
        value_delimiter = ',',
        default_value = "127.0.0.1:8082"
    )]
    pub replicas: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    pub key: String,
    pub value: String,
    #[command(flatten)]
    pub opts: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    pub key: String,
    #[command(flatten)]
    pub opts: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct ViewArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// One client command.
#[derive(Debug, Clone)]
pub enum Request {
    Put(PutArgs),
    Get(KeyArgs),
    Delete(KeyArgs),
    View(ViewArgs),
}

/// Runs a client command; returns the process exit code.
pub async fn run(request: Request) -> u8 {
    let _ = request;
    eprintln!("causalkv: not implemented yet");
    2
}
