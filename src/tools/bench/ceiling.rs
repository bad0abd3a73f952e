//! The machine's ceiling for causalkv's stack: `causalkv ceiling` answers every request
//! with one fixed JSON answer, on the same runtime and HTTP library as a replica (tokio's
//! single-threaded runtime, hyper's HTTP/1 server, the request body read whole), with no
//! store, no routing and no causal metadata to decode.
//!
//! `bench/compare.sh` drives three of these exactly as it drives the three replicas, with
//! the same load generator and sessions, so that every causalkv figure is also a fraction
//! of the fastest HTTP/JSON answer this machine gives, and the load generator's own share
//! of the cores shows in the ceiling itself. The answer reads as a found value (GET), a
//! replaced one (PUT) and a view (`GET /view`, which the load generator asks first).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The one answer.
const ANSWER: &str = r#"{"result":"found","value":"ceiling-value-of-32-bytes-xxxx","causal-metadata":"c","view":[]}"#;

#[derive(Args, Debug, Clone)]
pub struct CeilingArgs {
    /// Address to listen on, IP:PORT.
    #[arg(long)]
    pub listen: SocketAddr,
}

/// Serves the fixed answer on `addr` until `shutdown` completes.
pub async fn serve(addr: SocketAddr, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(answer);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    // Read the body whole, as a replica does.
    let _ = request.into_body().collect().await;
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::client::{Client, Metadata, Outcome};
    use std::time::Duration;

    #[tokio::test]
    async fn the_ceiling_answers_reads_and_writes_as_a_replica_would() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(addr, async {
            let _ = stopped.await;
        }));
        let client = Client::new(Duration::from_secs(2)).unwrap();
        let replica = addr.to_string();
        let mut read = None;
        for _ in 0..100 {
            match client.get(&replica, "k", &Metadata::default()).await {
                Ok(reply) => {
                    read = Some(reply);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let read = read.expect("the ceiling answers");
        assert!(matches!(read.outcome, Outcome::Found(_)));
        let write = client
            .put(&replica, "k", &serde_json::json!("v"), &read.metadata)
            .await
            .unwrap();
        assert_eq!(write.outcome, Outcome::Replaced);
        assert!(client.view(&replica).await.is_ok());
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
