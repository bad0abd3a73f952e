//! `causalkv serve`: binds the listener, starts the node's tasks and serves the API until
//! shutdown is requested.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::api;
use crate::config::Config;
use crate::node::{self, Node};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot build the HTTP client for peers: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the server stopped: {0}")]
    Io(#[from] io::Error),
}

/// Runs a replica until `shutdown` completes.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = config.bind;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?
        .tap_io(|tcp| {
            // Small request/response exchanges: never wait for Nagle's algorithm.
            let _ = tcp.set_nodelay(true);
        });
    tracing::info!(
        replica = %config.me,
        bind = %addr,
        view = ?config.view,
        "replica listening"
    );
    let node = Node::new(config)?;
    node::start(&node);
    axum::serve(listener, api::router(node))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("replica stopped");
    Ok(())
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
