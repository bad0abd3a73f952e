//! `causalkv cluster`: a local cluster for trying causalkv out.
//!
//! Starts N `causalkv serve` processes on loopback, each told the whole view and given an
//! equal share of the machine's cores as worker threads, prefixes
//! their log lines with the replica's name, prints where they listen and a `curl` to try,
//! and on Ctrl-C (or SIGTERM) stops them all: SIGTERM first, SIGKILL after a grace period.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::server::shutdown_signal;

/// How long replicas get to stop before they are killed.
const GRACE: Duration = Duration::from_secs(5);
/// How long replicas get to list each other at start.
const READY_DEADLINE: Duration = Duration::from_secs(15);

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
    #[error("cannot start a replica: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("replica {0} exited: {1}")]
    Exited(SocketAddr, std::process::ExitStatus),
    #[error("replicas did not list each other within {0:?}")]
    NotReady(Duration),
}

struct Replica {
    addr: SocketAddr,
    child: Child,
}

pub async fn run(args: ClusterArgs) -> Result<(), ClusterError> {
    let addrs = addresses(&args)?;
    let view = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut replicas = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        replicas.push(spawn_replica(i + 1, *addr, &view, &args)?);
    }
    let outcome = tokio::select! {
        ready = wait_ready(&addrs) => ready,
        exited = first_exit(&mut replicas) => Err(exited),
    };
    if let Err(error) = outcome {
        stop_all(&mut replicas).await;
        return Err(error);
    }
    print_banner(&addrs);
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        exited = first_exit(&mut replicas) => Err(exited),
    };
    eprintln!("stopping {} replicas...", replicas.len());
    stop_all(&mut replicas).await;
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

fn spawn_replica(
    number: usize,
    addr: SocketAddr,
    view: &str,
    args: &ClusterArgs,
) -> Result<Replica, ClusterError> {
    let threads = threads_per_replica(args.replicas).to_string();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .args(["--listen", &addr.to_string(), "--view", view])
        .env("CAUSALKV_WORKER_THREADS", threads)
        .args(&args.serve_args)
        .env_remove("SOCKET_ADDRESS")
        .env_remove("VIEW")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[replica-{number}] {line}");
            }
        });
    }
    Ok(Replica { addr, child })
}

/// Polls `GET /view` on every replica until each lists all of them.
async fn wait_ready(addrs: &[SocketAddr]) -> Result<(), ClusterError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| ClusterError::Spawn(std::io::Error::other(e)))?;
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    for addr in addrs {
        while view_size(&client, *addr).await != Some(addrs.len()) {
            if tokio::time::Instant::now() > deadline {
                return Err(ClusterError::NotReady(READY_DEADLINE));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn view_size(client: &reqwest::Client, addr: SocketAddr) -> Option<usize> {
    let response = client
        .get(format!("http://{addr}/view"))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    Some(body.get("view")?.as_array()?.len())
}

async fn first_exit(replicas: &mut [Replica]) -> ClusterError {
    loop {
        for replica in replicas.iter_mut() {
            if let Ok(Some(status)) = replica.child.try_wait() {
                return ClusterError::Exited(replica.addr, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stop_all(replicas: &mut [Replica]) {
    for replica in replicas.iter() {
        if let Some(pid) = replica.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for replica in replicas.iter_mut() {
        if tokio::time::timeout(GRACE, replica.child.wait())
            .await
            .is_err()
        {
            let _ = replica.child.kill().await;
        }
    }
}

fn print_banner(addrs: &[SocketAddr]) {
    println!("causalkv cluster: {} replicas ready", addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        println!("  replica-{}  http://{addr}", i + 1);
    }
    let first = addrs[0];
    let last = addrs[addrs.len() - 1];
    println!("\nTry:");
    println!(
        "  curl -s -X PUT http://{first}/kvs/greeting -H 'Content-Type: application/json' \\\n       -d '{{\"value\": \"hello\", \"causal-metadata\": null}}'"
    );
    println!("  curl -s http://{last}/kvs/greeting");
    println!("  curl -s http://{first}/view");
    println!("\nPress Ctrl-C to stop.");
}
