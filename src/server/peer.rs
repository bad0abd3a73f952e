//! Talking to other replicas: a pooled keep-alive HTTP client per peer, and [`call`], which
//! makes one call the protocol machine asked for (`Output::Send`) and turns the answer,
//! or its failure, into what the machine understands.
//!
//! Every request is signed and every answer verified when the cluster has a secret, and
//! answers are validated under this replica's limits before the machine sees them. No
//! lock is held while a request is in flight.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::causal::Addr;
use crate::protocol::machine::{Answer, CallError, Message};
use crate::protocol::replica::Received;
use crate::protocol::wire::{ANNOUNCE, HEARTBEAT, REPLICATE, SYNC, VIEW_CHANGE, Validate};
use crate::server::auth;
use crate::server::trust::Trust;
use crate::server::wallclock::{limits, now_ms};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// Makes one call the protocol machine asked for and translates its outcome.
pub async fn call(
    client: &PeerClient,
    to: &Addr,
    message: &Message,
    timeout: Duration,
) -> Result<Answer, CallError> {
    let answer = match message {
        Message::Heartbeat(m) => client
            .post_checked(to, HEARTBEAT, m, timeout)
            .await
            .map(Answer::Status),
        Message::Announce(m) => client
            .post_checked(to, ANNOUNCE, m, timeout)
            .await
            .map(Answer::Status),
        Message::ViewChange(m) => client
            .post::<_, serde_json::Value>(to, VIEW_CHANGE, m, timeout)
            .await
            .map(|_| Answer::Done),
        Message::Replicate(m) => {
            let mut result = client.post::<_, Taken>(to, REPLICATE, m, timeout).await;
            if matches!(result, Err(PeerError::Unreachable(_))) {
                // A connection the peer reset (it restarted): once more, on a fresh one.
                result = client.post(to, REPLICATE, m, timeout).await;
            }
            result.map(|taken| {
                Answer::Taken(Received {
                    refused: taken.refused,
                    ..Received::default()
                })
            })
        }
        Message::Sync(m) => client
            .post_checked(to, SYNC, m, timeout)
            .await
            .map(Answer::Delta),
    };
    answer.map_err(|error| match error {
        PeerError::Timeout(_) => CallError::Timeout,
        PeerError::Unreachable(why) => CallError::Unreachable(why),
        ref refused if refused.is_not_in_view() => CallError::NotInView,
        PeerError::Unauthenticated(why) => CallError::Unauthenticated(why),
        other @ (PeerError::Refused { .. } | PeerError::Malformed(_)) => {
            CallError::Refused(other.to_string())
        }
    })
}

/// What a peer answered to a batch it took: how many writes it refused.
#[derive(serde::Deserialize)]
struct Taken {
    #[serde(default)]
    refused: usize,
}
