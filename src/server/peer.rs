//! Talking to other replicas: a pooled keep-alive HTTP client and one replication link per
//! peer.
//!
//! A link is an ordered, bounded queue and one sender task. The task sends the queue in
//! batches (one request in flight per peer, so a slow or dead peer delays nobody else) and
//! acknowledges each write to whoever waits for it. A write that cannot be queued (queue
//! full) or sent (peer out of view, request failed) is not acknowledged; anti-entropy brings
//! it to the peer later. No lock is held while a request is in flight.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::causal::Addr;
use crate::protocol::delivery::Write;
use crate::protocol::wire::Validate;
use crate::server::auth;
use crate::server::metrics::FailureReason;
use crate::server::trust::Trust;
use crate::server::wallclock::{limits, now_ms};

/// Most writes in one replication request.
const MAX_BATCH: usize = 512;
/// A batch stops growing once its values reach this many bytes.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Pooled connections to a peer are dropped after this long idle: well before a replica
/// closes an idle connection itself (`--header-timeout`, 10 s by default), so that no
/// request is ever sent on a connection the peer is closing.
const POOL_IDLE: Duration = Duration::from_secs(4);

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
    #[error("peer's answer is not authenticated: {0}")]
    Unauthenticated(String),
}

impl PeerError {
    /// True when the peer answered but does not have us in its view (yet).
    pub fn is_not_in_view(&self) -> bool {
        matches!(self, PeerError::Refused { status, .. } if *status == StatusCode::CONFLICT)
    }
}

/// How this replica reaches its peers: who it is, what it signs with, and over what.
#[derive(Debug)]
pub struct PeerSettings {
    pub me: Addr,
    pub trust: Arc<Trust>,
    /// Present when replicas speak TLS: trusts the cluster CA and presents this
    /// replica's certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The address outgoing connections start from: this replica's own IP when it can
    /// bind it, so that peers that check source addresses see the address it claims.
    pub local_ip: Option<IpAddr>,
}

/// The HTTP client for replica-to-replica traffic; cheap to clone, connections are pooled
/// and kept alive per peer. Every request is signed and every answer verified when the
/// cluster has a secret.
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    settings: Arc<PeerSettings>,
}

impl PeerClient {
    pub fn new(settings: Arc<PeerSettings>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_local_address(settings.local_ip);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(64)
            .build(crate::server::tls::connector(
                connector,
                settings.tls.clone(),
            ));
        PeerClient { http, settings }
    }

    /// POSTs `body` as JSON to `addr`'s `path` and decodes the JSON answer.
    pub async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, PeerError> {
        let bytes = serde_json::to_vec(body).map_err(|e| PeerError::Malformed(e.to_string()))?;
        let scheme = if self.settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let me = &self.settings.me;
        let mut request = http::Request::post(format!("{scheme}://{addr}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(auth::FROM, me.as_ref());
        // With a secret: the keys, and this request's nonce, which its answer must carry.
        let signing = self
            .settings
            .trust
            .keyring()
            .map(|keys| (keys, auth::nonce()));
        if let Some((keys, nonce)) = &signing {
            let signed = auth::sign_request(keys, "POST", path, me, now_ms(), nonce, &bytes);
            request = request
                .header(auth::TIME, signed.time_ms)
                .header(auth::NONCE, signed.nonce)
                .header(auth::MAC, signed.mac);
        }
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| PeerError::Unreachable(format!("not a valid peer address: {e}")))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| classify(&e))?;
            let status = response.status();
            let mac = response.headers().get(auth::MAC).cloned();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| classify(&e))?
                .to_bytes();
            if let Some((keys, nonce)) = &signing {
                let mac = mac.as_ref().and_then(|m| m.to_str().ok()).unwrap_or("");
                auth::verify_answer(keys, nonce, status.as_u16(), addr, &body, mac)
                    .map_err(|e| PeerError::Unauthenticated(e.to_string()))?;
            }
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

impl PeerClient {
    /// Like [`PeerClient::post`], for an answer that must also pass validation under the
    /// receiver's current limits before this replica acts on it.
    pub async fn post_checked<B: Serialize + ?Sized, R: DeserializeOwned + Validate>(
        &self,
        addr: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, PeerError> {
        let answer: R = self.post(addr, path, body, timeout).await?;
        answer.validate(&limits()).map_err(PeerError::Malformed)?;
        Ok(answer)
    }
}

fn classify(error: &dyn std::error::Error) -> PeerError {
    PeerError::Unreachable(crate::error_chain(error))
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
    /// `peer` answered but refused replicated writes (not for being out of its view).
    fn replication_refused(&self, peer: &Addr, reason: FailureReason, why: &str);
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
    let message = crate::protocol::wire::Replicate {
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
        Ok(Ok(())) => {
            for outgoing in batch {
                if let Some(ack) = outgoing.ack {
                    let _ = ack.send(());
                }
            }
        }
        // Not acknowledged: dropping the batch's acknowledgement senders tells waiting
        // clients at once. The peer's own probes see what it misses and pull it.
        Ok(Err(refused)) => owner.replication_refused(peer, FailureReason::Refused, &refused),
        Err(error @ (PeerError::Timeout(_) | PeerError::Unreachable(_))) => {
            owner.replication_failed(peer, generation, &error)
        }
        Err(error) if error.is_not_in_view() => {
            tracing::debug!(%peer, "peer does not list us yet; anti-entropy will catch it up");
        }
        Err(error) => {
            let reason = match error {
                PeerError::Unauthenticated(_) => FailureReason::Unauthenticated,
                _ => FailureReason::Refused,
            };
            owner.replication_refused(peer, reason, &error.to_string())
        }
    }
}

/// What a peer answered to a batch it took: how many writes it refused.
#[derive(serde::Deserialize)]
struct Taken {
    #[serde(default)]
    refused: usize,
}

/// Sends one batch; `Ok(Err(why))` when the peer answered but refused some of it.
async fn replicate(
    client: &PeerClient,
    peer: &Addr,
    message: &crate::protocol::wire::Replicate,
    timeout: Duration,
) -> Result<Result<(), String>, PeerError> {
    let taken: Taken = client
        .post(peer, crate::protocol::wire::REPLICATE, message, timeout)
        .await?;
    Ok(match taken.refused {
        0 => Ok(()),
        n => Err(format!(
            "the peer refused {n} of {} writes",
            message.writes.len()
        )),
    })
}
