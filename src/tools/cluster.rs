//! `causalkv cluster`: a local cluster for trying causalkv out.
//!
//! Starts N `causalkv serve` processes on loopback, each told the whole view and given an
//! equal share of the machine's cores as worker threads, prefixes
//! their log lines with the replica's name, prints where they listen and a `curl` to try,
//! and on Ctrl-C (or SIGTERM) stops them all: SIGTERM first, SIGKILL after a grace period.
//!
//! It listens for Ctrl-C and SIGTERM before it starts any replica, so a signal that comes
//! while the replicas are still starting stops them too (and the command exits 0). Each
//! replica asks the kernel to SIGKILL it when the cluster dies, so even a `kill -9` of the
//! cluster leaves no replica behind.
//!
//! The replicas authenticate their internal traffic with a cluster secret, passed to each
//! as `CLUSTER_SECRET`: one generated for the run (32 random bytes, hex-encoded) unless
//! `CLUSTER_SECRET` is already set in the cluster's own environment, which the replicas
//! then inherit unchanged, or they are given a secret file (`-- --cluster-secret-file`
//! or `CLUSTER_SECRET_FILE`), which they read themselves; `--no-secret` starts them
//! without one. The banner says which, never the secret itself.
//!
//! The replica processes are a [`LocalCluster`](crate::tools::launcher::LocalCluster) of
//! the shared launcher; this module adds the command line, the secret, the signals and
//! the banner.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::signal::unix::{self, SignalKind};

use crate::tools::client::Client;
use crate::tools::launcher::{Launch, LaunchError, SECRET_ENV, SECRET_FILE_ENV};

/// How long replicas get to stop before they are killed.
const GRACE: Duration = Duration::from_secs(5);
/// How long replicas get to list each other at start.
const READY_DEADLINE: Duration = Duration::from_secs(15);
/// Timeout of each readiness request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The `serve` option that names a file holding the secret.
const SECRET_FILE_OPTION: &str = "--cluster-secret-file";
/// Random bytes in a generated cluster secret.
const SECRET_BYTES: usize = 32;

#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Number of replicas.
    #[arg(long, default_value_t = 3)]
    pub replicas: u16,
    /// Port of the first replica; the others follow.
    #[arg(long, default_value_t = 8082)]
    pub base_port: u16,
    /// Address every replica listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Start the replicas without a cluster secret: their internal traffic is not
    /// authenticated. By default they get a secret generated for this run, or the
    /// `CLUSTER_SECRET` of this command's environment when it is set, or read the file
    /// named by `-- --cluster-secret-file` or `CLUSTER_SECRET_FILE`.
    #[arg(long)]
    pub no_secret: bool,
    /// Keep each replica's data under DIR/<port> (`serve --data-dir`), so that the
    /// cluster restarted on the same directory keeps its store.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "causalkv-data",
        conflicts_with = "in_memory"
    )]
    pub data_dir: PathBuf,
    /// Keep the store in memory only: it is gone when the cluster stops.
    #[arg(long)]
    pub in_memory: bool,
    /// Extra `causalkv serve` options for every replica, after `--`.
    #[arg(last = true)]
    pub serve_args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--replicas must be at least 1")]
    NoReplicas,
    #[error("ports {0}..{1} do not fit below 65536")]
    PortRange(u16, u16),
    #[error("--no-secret contradicts --cluster-secret-file in the serve options")]
    SecretConflict,
    #[error("cannot listen for Ctrl-C and SIGTERM: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot start a replica: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("replica {0} exited: {1}")]
    Exited(SocketAddr, std::process::ExitStatus),
    #[error("replicas did not list each other within {0:?}")]
    NotReady(Duration),
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from the moment this is made.
///
/// Both are `tokio::signal::unix::signal` streams, which install their handler when
/// created (`tokio::signal::ctrl_c()` would only install it when first polled), so a
/// signal that arrives any time after [`StopSignals::listen`] is kept until
/// [`StopSignals::recv`] is awaited.
struct StopSignals {
    interrupt: unix::Signal,
    terminate: unix::Signal,
}

impl StopSignals {
    fn listen() -> Result<Self, ClusterError> {
        Ok(Self {
            interrupt: unix::signal(SignalKind::interrupt()).map_err(ClusterError::Signals)?,
            terminate: unix::signal(SignalKind::terminate()).map_err(ClusterError::Signals)?,
        })
    }

    /// Waits for Ctrl-C or SIGTERM (cancel safe: a signal is never lost).
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Where the replicas' cluster secret comes from.
enum Secret {
    /// Made for this run; passed to every replica as `CLUSTER_SECRET`.
    Generated(String),
    /// `CLUSTER_SECRET` is set (non-empty) in this command's environment: the replicas
    /// inherit it unchanged.
    Inherited,
    /// The replicas read it from a file: `--cluster-secret-file` among the serve options,
    /// or `CLUSTER_SECRET_FILE` in this command's environment (which they inherit).
    File,
    /// `--no-secret`: the replicas get neither `CLUSTER_SECRET` nor `CLUSTER_SECRET_FILE`.
    Disabled,
}

impl Secret {
    /// Never overrides a secret the user gave: a secret file (`serve` refuses a
    /// `CLUSTER_SECRET` next to one) or a `CLUSTER_SECRET`; an empty variable counts as
    /// unset, as it does for `serve`.
    fn choose(args: &ClusterArgs) -> Result<Self, ClusterError> {
        let set = |name: &str| std::env::var_os(name).is_some_and(|value| !value.is_empty());
        let file_option = args.serve_args.iter().any(|arg| {
            arg == SECRET_FILE_OPTION
                || arg
                    .strip_prefix(SECRET_FILE_OPTION)
                    .is_some_and(|rest| rest.starts_with('='))
        });
        Ok(if args.no_secret {
            if file_option {
                return Err(ClusterError::SecretConflict);
            }
            Self::Disabled
        } else if file_option || set(SECRET_FILE_ENV) {
            Self::File
        } else if set(SECRET_ENV) {
            Self::Inherited
        } else {
            Self::Generated(generate_secret())
        })
    }

    fn apply(&self, launch: Launch) -> Launch {
        match self {
            Self::Generated(secret) => launch.secret(secret),
            Self::Inherited | Self::File => launch,
            Self::Disabled => launch.no_secret(),
        }
    }

    /// The banner's line about internal traffic; never the secret itself.
    fn describe(&self) -> &'static str {
        match self {
            Self::Generated(_) => {
                "internal traffic: authenticated with a cluster secret generated for this run"
            }
            Self::Inherited => {
                "internal traffic: authenticated with the CLUSTER_SECRET inherited from this environment"
            }
            Self::File => "internal traffic: authenticated with the replicas' cluster secret file",
            Self::Disabled => {
                "internal traffic: not authenticated by a cluster secret (--no-secret)"
            }
        }
    }
}

/// [`SECRET_BYTES`] random bytes from the thread's cryptographically secure generator,
/// hex-encoded.
fn generate_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub async fn run(args: ClusterArgs) -> Result<(), ClusterError> {
    let addrs = addresses(&args)?;
    // First of all, before any replica exists: from here on Ctrl-C and SIGTERM stop the
    // cluster cleanly instead of killing this process and leaving its replicas running.
    let mut signals = StopSignals::listen()?;
    let secret = Secret::choose(&args)?;
    let client =
        Client::new(PROBE_TIMEOUT).map_err(|e| ClusterError::Spawn(std::io::Error::other(e)))?;
    // Replicas are forked by the thread that drives `run` (see `Launch::die_with_parent`).
    let mut replicas = launch(&args, &addrs, &secret).build();
    if let Err(error) = replicas.start_all() {
        replicas.stop(GRACE).await;
        return Err(ClusterError::Spawn(error));
    }
    let deadline = Instant::now() + READY_DEADLINE;
    let starting = tokio::select! {
        () = signals.recv() => None,
        ready = replicas.wait_ready(&client, deadline) => Some(ready.map_err(|error| match error {
            LaunchError::Exited(exit) => ClusterError::Exited(exit.addr, exit.status),
            LaunchError::NotReady { .. } => ClusterError::NotReady(READY_DEADLINE),
        })),
    };
    let outcome = match starting {
        Some(Ok(())) => {
            print_banner(&args, &addrs, &secret);
            tokio::select! {
                () = signals.recv() => Ok(()),
                exit = replicas.first_exit() => Err(ClusterError::Exited(exit.addr, exit.status)),
            }
        }
        Some(Err(error)) => Err(error),
        // A signal before the replicas were ready: stop them all the same.
        None => Ok(()),
    };
    say(&format!("stopping {} replicas...", replicas.len()));
    replicas.stop(GRACE).await;
    outcome
}

fn addresses(args: &ClusterArgs) -> Result<Vec<SocketAddr>, ClusterError> {
    if args.replicas == 0 {
        return Err(ClusterError::NoReplicas);
    }
    let last = args
        .base_port
        .checked_add(args.replicas - 1)
        .ok_or(ClusterError::PortRange(args.base_port, args.replicas))?;
    Ok((args.base_port..=last)
        .map(|port| SocketAddr::new(args.host, port))
        .collect())
}

/// Worker threads per replica: the replicas share this machine, so they split its cores.
fn threads_per_replica(replicas: u16) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / usize::from(replicas.max(1))).max(1)
}

/// The replicas: an equal share of the cores each, the extra `serve` options, the secret;
/// their log lines prefixed on this command's stderr; in their own process group (Ctrl-C
/// at the terminal reaches this command, which stops them) and dying with this command.
fn launch(args: &ClusterArgs, addrs: &[SocketAddr], secret: &Secret) -> Launch {
    let threads = threads_per_replica(args.replicas).to_string();
    let mut launch = Launch::new(addrs.to_vec())
        .env("CAUSALKV_WORKER_THREADS", threads)
        .env_remove("DATA_DIR")
        .args(&args.serve_args)
        .own_process_group()
        .die_with_parent();
    if !args.in_memory {
        for (i, addr) in addrs.iter().enumerate() {
            let dir = args.data_dir.join(addr.port().to_string());
            launch = launch.replica_env(i, "DATA_DIR", dir);
        }
    }
    secret.apply(launch)
}

/// A line on stderr; a closed stderr is no reason to stop (or panic, as `eprintln!` would).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn print_banner(args: &ClusterArgs, addrs: &[SocketAddr], secret: &Secret) {
    let (Some(first), Some(last)) = (addrs.first(), addrs.last()) else {
        return;
    };
    let mut banner = format!("causalkv cluster: {} replicas ready\n", addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        banner += &format!("  replica-{}  http://{addr}\n", i + 1);
    }
    banner += &format!("{}\n", secret.describe());
    banner += &match args.in_memory {
        true => "data: in memory only (--in-memory)\n".to_string(),
        false => format!(
            "data: {}/<port> (kept across restarts; --in-memory for none)\n",
            args.data_dir.display()
        ),
    };
    banner += "\nTry:\n";
    banner += &format!(
        "  curl -s -X PUT http://{first}/kvs/greeting -H 'Content-Type: application/json' \\\n       -d '{{\"value\": \"hello\", \"causal-metadata\": null}}'\n"
    );
    banner += &format!("  curl -s http://{last}/kvs/greeting\n");
    banner += &format!("  curl -s http://{first}/view\n");
    banner += "\nPress Ctrl-C to stop.\n";
    // Like `say`: a closed stdout must not stop the cluster (`println!` would panic).
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
}
