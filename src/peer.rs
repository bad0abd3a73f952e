//! Talking to other replicas: a pooled keep-alive HTTP client and one replication link per
//! peer.
//!
//! A link is an ordered, bounded queue and one sender task. The task sends the queue in
//! batches (one request in flight per peer, so a slow or dead peer delays nobody else) and
//! acknowledges each write to whoever waits for it. A write that cannot be queued (queue
//! full) or sent (peer out of view, request failed) is not acknowledged; anti-entropy brings
//! it to the peer later. No lock is held while a request is in flight.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::causal::Addr;
use crate::delivery::Write;

/// Most writes in one replication request.
const MAX_BATCH: usize = 512;
/// A batch stops growing once its values reach this many bytes.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("peer refused the request ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("peer sent a malformed answer: {0}")]
    Malformed(String),
}

impl PeerError {
    /// True when the peer answered but does not have us in its view (yet).
    pub fn is_not_in_view(&self) -> bool {
        matches!(self, PeerError::Refused { status, .. } if *status == StatusCode::CONFLICT)
    }
}

/// The HTTP client for replica-to-replica traffic; cheap to clone, connections are pooled
/// and kept alive per peer.
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: reqwest::Client,
}

impl PeerClient {
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()?;
        Ok(PeerClient { http })
    }

    /// POSTs `body` as JSON to `http://{addr}{path}` and decodes the JSON answer.
    pub async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, PeerError> {
        let bytes = serde_json::to_vec(body).map_err(|e| PeerError::Malformed(e.to_string()))?;
        let request = self
            .http
            .post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(bytes)
            .send();
        let exchange = async {
            let response = request.await.map_err(classify)?;
            let status = response.status();
            let body = response.bytes().await.map_err(classify)?;
            if !status.is_success() {
                let message = String::from_utf8_lossy(&body).into_owned();
                return Err(PeerError::Refused { status, message });
            }
            serde_json::from_slice(&body).map_err(|e| PeerError::Malformed(e.to_string()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PeerError::Timeout(timeout))?
    }
}

fn classify(error: reqwest::Error) -> PeerError {
    PeerError::Unreachable(error.to_string())
}

/// One write queued for a peer, with the acknowledgement its client may wait for.
#[derive(Debug)]
pub struct Outgoing {
    pub write: Arc<Write>,
    pub ack: Option<oneshot::Sender<()>>,
}

/// The sending side of a link.
pub type LinkSender = mpsc::Sender<Outgoing>;

/// What a link needs from the node it belongs to.
pub trait LinkOwner: Send + Sync + 'static {
    fn me(&self) -> &Addr;
    /// The client for `peer` and its generation, which changes when `peer` restarts.
    fn client_for(&self, peer: &Addr) -> (PeerClient, u64);
    fn replication_timeout(&self) -> Duration;
    /// True while data may be sent to `peer`.
    fn may_send_to(&self, peer: &Addr) -> bool;
    /// A replication request to `peer`, sent with the client of `generation`, failed.
    fn replication_failed(&self, peer: &Addr, generation: u64, error: &PeerError);
}

/// Starts the link to `peer`; it ends when the sender is dropped.
pub fn spawn_link<O: LinkOwner>(owner: Arc<O>, peer: Addr, capacity: usize) -> LinkSender {
    let (tx, rx) = mpsc::channel(capacity);
    tokio::spawn(run_link(owner, peer, rx));
    tx
}

async fn run_link<O: LinkOwner>(owner: Arc<O>, peer: Addr, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(first) = rx.recv().await {
        // Let request handlers that are already runnable queue their writes first, so
        // that writes arriving together travel together.
        tokio::task::yield_now().await;
        let batch = fill_batch(first, &mut rx);
        if owner.may_send_to(&peer) {
            send_batch(&*owner, &peer, batch).await;
        }
    }
}

/// Takes what is already queued behind `first`, up to the batch limits.
fn fill_batch(first: Outgoing, rx: &mut mpsc::Receiver<Outgoing>) -> Vec<Outgoing> {
    let mut bytes = first.write.size();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        let Ok(next) = rx.try_recv() else { break };
        bytes += next.write.size();
        batch.push(next);
    }
    batch
}

async fn send_batch<O: LinkOwner>(owner: &O, peer: &Addr, batch: Vec<Outgoing>) {
    let message = crate::wire::Replicate {
        from: owner.me().clone(),
        writes: batch.iter().map(|o| o.write.clone()).collect(),
    };
    let timeout = owner.replication_timeout();
    let (client, generation) = owner.client_for(peer);
    let mut result = replicate(&client, peer, &message, timeout).await;
    if matches!(result, Err(PeerError::Unreachable(_))) {
        // A connection the peer reset (it restarted): once more, on a fresh one.
        result = replicate(&client, peer, &message, timeout).await;
    }
    match result {
        Ok(()) => {
            for outgoing in batch {
                if let Some(ack) = outgoing.ack {
                    let _ = ack.send(());
                }
            }
        }
        Err(error @ (PeerError::Timeout(_) | PeerError::Unreachable(_))) => {
            owner.replication_failed(peer, generation, &error)
        }
        Err(error) if error.is_not_in_view() => {
            tracing::debug!(%peer, "peer does not list us yet; anti-entropy will catch it up");
        }
        Err(error) => {
            tracing::warn!(%peer, %error, "peer refused replicated writes; anti-entropy will retry")
        }
    }
}

async fn replicate(
    client: &PeerClient,
    peer: &Addr,
    message: &crate::wire::Replicate,
    timeout: Duration,
) -> Result<(), PeerError> {
    let answer: serde_json::Value = client
        .post(peer, crate::wire::REPLICATE, message, timeout)
        .await?;
    drop(answer);
    Ok(())
}
