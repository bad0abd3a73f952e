//! Configuration of a replica: environment variables, flags, and their validation.
//!
//! `SOCKET_ADDRESS` and `VIEW` come from the environment (the reference deployment passes
//! nothing else); every flag overrides its variable. A missing or malformed address or view
//! is an error before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::protocol::causal::{self, Addr, addr_of};
use crate::server::auth::{AuthError, Keyring};
use crate::server::storage::Fsync;

/// Errors in the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0}")]
    Secret(#[from] AuthError),
    #[error("set either CLUSTER_SECRET or --cluster-secret-file, not both")]
    TwoSecrets,
    #[error("--tls-cert and --tls-key go together")]
    HalfTls,
    #[error(
        "--tls-cert needs --tls-ca: the CA that signed every replica's certificate, with \
         which replicas verify each other"
    )]
    TlsWithoutCa,
    #[error("--tls-ca without --tls-cert: a replica needs its own certificate to serve TLS")]
    CaWithoutCert,
    #[error("--max-connections must be at least 1")]
    NoConnections,
    #[error("no socket address: set SOCKET_ADDRESS or pass --listen IP:PORT")]
    MissingAddress,
    #[error("no view: set VIEW or pass --view IP:PORT,IP:PORT,...")]
    MissingView,
    #[error("{what} {value:?} is not an IP:PORT socket address")]
    BadAddress { what: &'static str, value: String },
}

/// `causalkv serve` options.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// This replica's socket address, IP:PORT, as the others reach it.
    #[arg(long, env = "SOCKET_ADDRESS")]
    pub listen: Option<String>,
    /// Every replica of the cluster, comma-separated, this one included.
    #[arg(long, env = "VIEW")]
    pub view: Option<String>,
    /// Address to bind [default: the listen address if it is loopback, else 0.0.0.0 with
    /// its port].
    #[arg(long)]
    pub bind: Option<String>,
    /// Longest wait for a request's causal dependencies before answering 503.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub causal_wait: Duration,
    /// Longest wait for a peer to acknowledge replicated writes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub replication_timeout: Duration,
    /// How often peers are probed.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// A peer that answers no probe for this long leaves the view.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub failure_timeout: Duration,
    /// A peer that left returns only after answering every probe for this long.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    pub stability_period: Duration,
    /// Shortest time between two anti-entropy pulls from one peer (waiting requests and
    /// re-admissions pull at once).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub anti_entropy_interval: Duration,
    /// Largest request body a client may send; larger ones get 413.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most replicated writes waiting for their dependencies.
    #[arg(long, default_value_t = 100_000)]
    pub delivery_buffer: usize,
    /// Most writes queued for one peer; past it, the peer catches up by anti-entropy.
    #[arg(long, default_value_t = 65_536)]
    pub peer_queue: usize,
    /// Threads serving requests [default: one per core]; 1 runs a single-threaded
    /// runtime. Replicas that share a machine do best splitting its cores (`causalkv
    /// cluster` does).
    #[arg(long, env = "CAUSALKV_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// File holding the cluster secret that authenticates replica-to-replica traffic: the
    /// current secret on the first line, optionally the previous one (still accepted) on
    /// the second. Re-read when it changes, for rotation without downtime. The environment
    /// variable CLUSTER_SECRET is the other way to give a secret; without either, internal
    /// messages are accepted only from the source address they claim.
    #[arg(long, env = "CLUSTER_SECRET_FILE", value_name = "PATH")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The secret from the environment (`CLUSTER_SECRET`); never a flag, so that it stays
    /// out of `ps`.
    #[arg(skip = std::env::var("CLUSTER_SECRET").ok().filter(|s| !s.is_empty()))]
    pub cluster_secret: Option<String>,
    /// This replica's TLS certificate (PEM, with an IP subject alternative name for its
    /// address): serve HTTPS instead of HTTP. Needs --tls-key and --tls-ca.
    #[arg(long, env = "TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that signed every replica's certificate: peers are verified against
    /// it, and the internal endpoints accept only clients presenting a certificate it
    /// signed (mutual TLS between replicas).
    #[arg(long, env = "TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// Most open client connections; past it, new connections get 503 and are closed.
    /// Replicas of the view keep a separate reserve, so a flood of clients cannot starve
    /// replication or probes.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// A connection that has not sent a whole request head within this time (including
    /// an idle keep-alive connection) is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Keep the store and causal state in DIR (a journal and its snapshots) and recover
    /// them at start-up; a restarted replica then fetches from its peers only what it
    /// missed. Without it, the store lives in memory only.
    #[arg(long, env = "DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When the journal is synced to the disk (with --data-dir). always: before a write
    /// is acknowledged (survives a power loss); interval: every --fsync-interval (a power
    /// loss may lose that much); never: when the OS chooses. Under every policy an
    /// acknowledged write has been handed to the OS, so it survives a crash of the
    /// process.
    #[arg(long, env = "FSYNC", value_enum, default_value = "interval")]
    pub fsync: Fsync,
    /// Longest time between two syncs with --fsync interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub fsync_interval: Duration,
    /// Also time each hold of the protocol machine's lock in the holding thread's CPU
    /// time (`causalkv_lock_hold_cpu_seconds`), which tells work under the lock from a
    /// thread preempted while holding it. Costs two clock reads per hold.
    #[arg(long, env = "LOCK_CPU_METRICS")]
    pub lock_cpu_metrics: bool,
}

/// Where the cluster secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// `CLUSTER_SECRET`: fixed for the life of the process.
    Env(Arc<Keyring>),
    /// `--cluster-secret-file`: loaded now, re-read when it changes.
    File(PathBuf, Arc<Keyring>),
}

/// TLS files, all present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub me: Addr,
    pub view: Vec<Addr>,
    pub bind: SocketAddr,
    pub causal_wait: Duration,
    pub replication_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub failure_timeout: Duration,
    pub stability_period: Duration,
    pub anti_entropy_interval: Duration,
    pub max_body_bytes: usize,
    pub delivery_buffer: usize,
    pub peer_queue: usize,
    pub secret: Option<SecretSource>,
    pub tls: Option<TlsFiles>,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub data_dir: Option<PathBuf>,
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    pub lock_cpu_metrics: bool,
}

impl ServeArgs {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let listen = self.listen.as_deref().ok_or(ConfigError::MissingAddress)?;
        let me = parse_addr("socket address", listen)?;
        let view_text = self.view.as_deref().ok_or(ConfigError::MissingView)?;
        let mut view = parse_view(view_text)?;
        let me_addr = addr_of(me);
        if !view.contains(&me_addr) {
            view.push(me_addr.clone());
        }
        let bind = match &self.bind {
            Some(text) => parse_addr("bind address", text)?,
            None => default_bind(me),
        };
        Ok(Config {
            me: me_addr,
            view,
            bind,
            causal_wait: self.causal_wait,
            replication_timeout: self.replication_timeout,
            heartbeat_interval: self.heartbeat_interval,
            failure_timeout: self.failure_timeout,
            stability_period: self.stability_period,
            anti_entropy_interval: self.anti_entropy_interval,
            max_body_bytes: self.max_body_bytes,
            delivery_buffer: self.delivery_buffer,
            peer_queue: self.peer_queue,
            secret: self.secret()?,
            tls: self.tls()?,
            max_connections: match self.max_connections {
                0 => return Err(ConfigError::NoConnections),
                n => n,
            },
            header_timeout: self.header_timeout,
            data_dir: self.data_dir.clone(),
            fsync: self.fsync,
            fsync_interval: self.fsync_interval,
            lock_cpu_metrics: self.lock_cpu_metrics,
        })
    }

    fn secret(&self) -> Result<Option<SecretSource>, ConfigError> {
        match (&self.cluster_secret, &self.cluster_secret_file) {
            (Some(_), Some(_)) => Err(ConfigError::TwoSecrets),
            (Some(secret), None) => Ok(Some(SecretSource::Env(Arc::new(Keyring::single(secret)?)))),
            (None, Some(path)) => Ok(Some(SecretSource::File(
                path.clone(),
                Arc::new(Keyring::load(path)?),
            ))),
            (None, None) => Ok(None),
        }
    }

    fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (Some(_), None, _) | (None, Some(_), _) => Err(ConfigError::HalfTls),
            (Some(_), Some(_), None) => Err(ConfigError::TlsWithoutCa),
            (None, None, Some(_)) => Err(ConfigError::CaWithoutCert),
        }
    }
}

/// Parses `IP:PORT` (see `causal::parse_addr`); `what` names it in the error.
fn parse_addr(what: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    causal::parse_addr(text).ok_or_else(|| ConfigError::BadAddress {
        what,
        value: text.to_string(),
    })
}

/// Parses a comma-separated view into canonical, de-duplicated addresses.
pub fn parse_view(text: &str) -> Result<Vec<Addr>, ConfigError> {
    let mut view: Vec<Addr> = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let addr = addr_of(parse_addr("view entry", part)?);
        if !view.contains(&addr) {
            view.push(addr);
        }
    }
    if view.is_empty() {
        return Err(ConfigError::MissingView);
    }
    Ok(view)
}

fn default_bind(me: SocketAddr) -> SocketAddr {
    if me.ip().is_loopback() {
        me
    } else {
        SocketAddr::from(([0, 0, 0, 0], me.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(list: &[&str]) -> ServeArgs {
        Cli::parse_from(std::iter::once("x").chain(list.iter().copied())).serve
    }

    #[test]
    fn parses_a_full_configuration() {
        let config = args(&[
            "--listen",
            "10.10.0.2:8090",
            "--view",
            "10.10.0.2:8090, 10.10.0.3:8090",
        ])
        .validate()
        .unwrap();
        assert_eq!(&*config.me, "10.10.0.2:8090");
        assert_eq!(config.view.len(), 2);
        assert_eq!(config.bind.to_string(), "0.0.0.0:8090");
        assert_eq!(config.causal_wait, Duration::from_millis(500));
    }

    #[test]
    fn loopback_replicas_bind_to_their_own_address() {
        let config = args(&["--listen", "127.0.0.1:9001", "--view", "127.0.0.1:9002"])
            .validate()
            .unwrap();
        assert_eq!(config.bind.to_string(), "127.0.0.1:9001");
        assert!(
            config.view.contains(&Addr::from("127.0.0.1:9001")),
            "self is added"
        );
    }

    #[test]
    fn refuses_bad_addresses() {
        assert!(matches!(
            args(&["--listen", "alice:8090", "--view", "10.0.0.1:1"]).validate(),
            Err(ConfigError::BadAddress { .. })
        ));
        assert!(matches!(
            args(&["--listen", "10.0.0.1:1", "--view", "10.0.0.1:1,nope"]).validate(),
            Err(ConfigError::BadAddress { .. })
        ));
        assert_eq!(
            args(&["--listen", "10.0.0.1:1", "--view", " , "])
                .validate()
                .unwrap_err(),
            ConfigError::MissingView
        );
    }
}
