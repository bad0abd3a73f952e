//! The accept loop: every connection a replica takes, from a client or a peer.
//!
//! * **Capacity.** Client connections are bounded by `--max-connections`; connections from
//!   the IP of a member of the view draw first on a separate reserve of
//!   [`PEER_RESERVE`], so that a flood of clients cannot starve replication or probes.
//!   A connection past both is answered `503` with a JSON error and closed. (On a
//!   loopback cluster every replica shares one IP, so there the reserve is shared with
//!   local clients too.)
//! * **Slow clients.** A connection that has not sent a whole request head within
//!   `--header-timeout`, including a keep-alive connection left idle that long, is closed;
//!   so is a TLS handshake that takes longer.
//! * **TLS.** With `--tls-cert`, every connection is TLS (rustls). Whether the client
//!   presented a certificate that the cluster CA signed is recorded for the internal
//!   endpoints' guard.
//!
//! Each request carries the connection's [`Remote`] as an extension. No lock is held
//! across I/O: the membership is consulted once per connection, before it is served.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::server::api::Remote;
use crate::server::node::Node;

/// Connections kept for members of the view, beyond `--max-connections`.
pub const PEER_RESERVE: usize = 256;
/// How long open connections get to finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 52\r\nconnection: close\r\n\r\n{\"error\":\"Too many open connections; try again later\"}";

/// What the loop needs besides the listener.
pub struct Options {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub tls: Option<TlsAcceptor>,
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections
/// finish their requests (bounded by a grace period).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    node: Arc<Node>,
    options: Options,
    shutdown: impl Future<Output = ()>,
) {
    let clients = Arc::new(Semaphore::new(options.max_connections));
    let peers = Arc::new(Semaphore::new(PEER_RESERVE));
    let (stop, stopping) = watch::channel(false);
    let options = Arc::new(options);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // pause a moment rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let from_member = node.is_member_ip(addr.ip());
        let permit = if from_member {
            peers
                .clone()
                .try_acquire_owned()
                .or_else(|_| clients.clone().try_acquire_owned())
        } else {
            clients.clone().try_acquire_owned()
        };
        let Ok(permit) = permit else {
            refuse(stream, addr, options.tls.is_some());
            continue;
        };
        let connection = Connection {
            app: app.clone(),
            options: options.clone(),
            addr,
            stopping: stopping.clone(),
            _permit: permit,
        };
        connections.spawn(connection.run(stream));
    }
    drop(listener);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// Past capacity: a plain-HTTP client gets a `503` (the socket's send buffer is empty, so
/// the write completes at once or not at all); a TLS client is closed.
fn refuse(stream: TcpStream, addr: SocketAddr, tls: bool) {
    if !tls {
        let _ = stream.try_write(REFUSAL);
    }
    tracing::debug!(%addr, "connection refused: too many open connections");
}

struct Connection {
    app: Router,
    options: Arc<Options>,
    addr: SocketAddr,
    stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let Some(tls) = self.options.tls.clone() else {
            let remote = Remote {
                addr: self.addr,
                peer_certificate: false,
            };
            return self.http(stream, remote).await;
        };
        let handshake = tokio::time::timeout(self.options.header_timeout, tls.accept(stream));
        match handshake.await {
            Ok(Ok(stream)) => {
                // The verifier accepts only certificates the cluster CA signed; a client
                // that presented none is let in for the public routes only.
                let peer_certificate = stream.get_ref().1.peer_certificates().is_some();
                let remote = Remote {
                    addr: self.addr,
                    peer_certificate,
                };
                self.http(stream, remote).await
            }
            Ok(Err(error)) => tracing::debug!(addr = %self.addr, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(addr = %self.addr, "TLS handshake timed out"),
        }
    }

    async fn http<S>(mut self, stream: S, remote: Remote)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(remote);
            let mut app = app.clone();
            async move { Ok::<_, Infallible>(app.call(request).await.unwrap_or_else(|e| match e {})) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.options.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = stopped(&mut self.stopping) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            log_connection_error(self.addr, &error);
        }
    }
}

/// Completes once the server is stopping.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    while !*stopping.borrow_and_update() {
        if stopping.changed().await.is_err() {
            return;
        }
    }
}

fn log_connection_error(addr: SocketAddr, error: &hyper::Error) {
    if error.is_timeout() {
        tracing::debug!(%addr, "connection closed: no request head within the header timeout");
    } else if !error.is_incomplete_message() && !is_reset(error) {
        tracing::debug!(%addr, %error, "connection error");
    }
}

fn is_reset(error: &hyper::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|e| e.downcast_ref::<io::Error>())
        .is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            )
        })
}
