//! The server layer: the thin driver around the protocol core. It binds the listener,
//! moves client requests and peer messages into the core and its outputs onto the network,
//! and owns everything that touches a socket, a clock or a file.
//!
//! `causalkv serve`: binds the listener, starts the node's tasks and serves the API until
//! shutdown is requested; keeps the cluster secret file loaded.

pub mod alloc;
pub mod api;
pub mod auth;
pub mod config;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod storage;
pub mod tls;
pub mod trust;
pub mod wallclock;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use config::{Config, SecretSource};
use listener::Options;
use node::Node;
use tls::TlsError;

/// How often a secret file is checked for changes.
const SECRET_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Start(#[from] node::StartError),
}

/// Runs a replica until `shutdown` completes.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = config.bind;
    let tls = match &config.tls {
        Some(files) => Some(TlsAcceptor::from(tls::server_config(
            &files.cert,
            &files.key,
            Some(&files.ca),
        )?)),
        None => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    tracing::info!(
        replica = %config.me,
        bind = %addr,
        view = ?config.view,
        tls = tls.is_some(),
        "replica listening"
    );
    log_trust(&config);
    let options = Options {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        tls,
    };
    let node = Node::new(config)?;
    node::start(&node);
    let reload = tokio::spawn(reload_secret(node.clone()));
    listener::serve(listener, api::router(node.clone()), node, options, shutdown).await;
    reload.abort();
    tracing::info!("replica stopped");
    Ok(())
}

/// Says once how internal traffic is authenticated.
fn log_trust(config: &Config) {
    match (&config.secret, &config.tls) {
        (Some(SecretSource::Env(_)), _) => {
            tracing::info!(
                "internal traffic is authenticated with the cluster secret (CLUSTER_SECRET)"
            )
        }
        (Some(SecretSource::File(path, keys)), _) => tracing::info!(
            path = %path.display(),
            secrets = keys.len(),
            "internal traffic is authenticated with the cluster secret file"
        ),
        (None, Some(_)) => tracing::info!(
            "internal traffic is authenticated by mutual TLS and by source address (no cluster secret)"
        ),
        (None, None) => tracing::warn!(
            "no cluster secret: internal traffic is authenticated only by its source address; \
             set CLUSTER_SECRET or --cluster-secret-file on every replica"
        ),
    }
}

/// Re-reads the secret file when it changes (rotation without a restart).
async fn reload_secret(node: Arc<Node>) {
    let mut ticker = tokio::time::interval(SECRET_RELOAD_INTERVAL);
    loop {
        ticker.tick().await;
        node.trust.reload();
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}
