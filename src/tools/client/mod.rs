//! A client for any replica that speaks the causalkv contract.
//!
//! [`Client`] makes single requests to a named replica and returns typed answers; it never
//! interprets causal metadata, which it carries as an opaque [`Metadata`]. Sessions that
//! carry metadata from response to request, spread requests over replicas and retry 503s
//! are built on top of it.
//!
//! Because it speaks only the public contract, it drives the original system or any other
//! compatible store as well as causalkv.
//!
//! A replica is named `IP:PORT`, which is plain HTTP, or `http://IP:PORT` or
//! `https://IP:PORT`. HTTPS needs the CA certificate that signed the replicas'
//! certificates ([`Client::with_tls_ca`], or a configuration from
//! [`crate::server::tls::client_config`] given to [`Client::with_tls`]); without one no server is
//! trusted and every `https://` request fails its handshake.

pub mod session;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::server::tls::{self, TlsError};

pub use http::{Method, StatusCode};

pub use session::Session;

/// Causal metadata as received from a replica; `Metadata::default()` is a first request's
/// `null`. Opaque: send back the metadata of the latest response, unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(pub Value);

impl Metadata {
    pub fn is_null(&self) -> bool {
        self.0.is_null()
    }
}

/// What a successful key-value request did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// `PUT` of a key that did not exist (201).
    Created,
    /// `PUT` of a key that existed (200).
    Replaced,
    /// `GET` of a key that exists (200).
    Found(Value),
    /// `DELETE` of a key that existed (200).
    Deleted,
}

/// A successful key-value answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub outcome: Outcome,
    pub metadata: Metadata,
}

/// Everything that can go wrong with one request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("key does not exist")]
    NotFound { metadata: Option<Metadata> },
    #[error("causal dependencies not satisfied at {replica}; try again later")]
    CausalTimeout { replica: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("view has no such replica")]
    NoSuchReplica,
    #[error("{replica} is unreachable: {reason}")]
    Unreachable { replica: String, reason: String },
    #[error("{replica} did not answer within {timeout:?}")]
    Timeout { replica: String, timeout: Duration },
    #[error("unexpected answer from {replica}: {status} {body}")]
    Unexpected {
        replica: String,
        status: u16,
        body: String,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] TlsError),
}

impl ClientError {
    /// True for errors that another replica, or a later try, may not have.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::CausalTimeout { .. }
                | ClientError::Unreachable { .. }
                | ClientError::Timeout { .. }
        )
    }
}

/// A raw answer: status and JSON body.
#[derive(Clone, Debug)]
pub struct RawReply {
    pub status: StatusCode,
    pub body: Value,
}

/// A pooled keep-alive HTTP and HTTPS client for the contract's endpoints.
///
/// Built directly on hyper's pooled client rather than reqwest: it sits in the load
/// generator's hot loop, which shares the machine with the replicas it measures, and
/// skipping reqwest's URL parsing and request layers halves its cost per request.
#[derive(Clone, Debug)]
pub struct Client {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    /// Whether a CA was given: without one, no `https://` replica is trusted.
    trusts: bool,
}

impl Client {
    /// A plain client whose requests each give up after `timeout`: it speaks `http://`,
    /// and trusts no `https://` replica.
    pub fn new(timeout: Duration) -> Result<Self, ClientError> {
        Self::with_tls(timeout, None)
    }

    /// A client that also speaks `https://` to the replicas `tls` trusts (see
    /// [`crate::server::tls::client_config`]); with `None`, the same as [`Client::new`].
    pub fn with_tls(
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ClientError> {
        let trusts = tls.is_some();
        // Idle connections are dropped before a replica closes them (it closes a
        // connection idle for `--header-timeout`, 10 s by default), so that no request
        // goes out on a connection the replica is closing.
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(4))
            .build(tls::connector(HttpConnector::new(), tls));
        Ok(Client {
            http,
            timeout,
            trusts,
        })
    }

    /// A client that trusts the `https://` replicas whose certificates the CA in the PEM
    /// file `ca` signed; with `None`, the same as [`Client::new`]. An unreadable or
    /// invalid file is [`ClientError::Tls`].
    pub fn with_tls_ca(timeout: Duration, ca: Option<&Path>) -> Result<Self, ClientError> {
        let tls = ca.map(|ca| tls::client_config(ca, None)).transpose()?;
        Self::with_tls(timeout, tls)
    }

    /// `PUT /kvs/<key>`.
    pub async fn put(
        &self,
        replica: &str,
        key: &str,
        value: &Value,
        metadata: &Metadata,
    ) -> Result<Reply, ClientError> {
        let body = json!({"value": value, "causal-metadata": metadata});
        let raw = self
            .request(Method::PUT, replica, &kvs_path(key), Some(&body))
            .await?;
        match raw.status {
            StatusCode::CREATED => Ok(reply(Outcome::Created, &raw)),
            StatusCode::OK => Ok(reply(Outcome::Replaced, &raw)),
            _ => Err(kvs_error(replica, raw)),
        }
    }

    /// `GET /kvs/<key>`.
    pub async fn get(
        &self,
        replica: &str,
        key: &str,
        metadata: &Metadata,
    ) -> Result<Reply, ClientError> {
        let body = json!({"causal-metadata": metadata});
        let raw = self
            .request(Method::GET, replica, &kvs_path(key), Some(&body))
            .await?;
        match (raw.status, raw.body.get("value")) {
            (StatusCode::OK, Some(value)) => Ok(reply(Outcome::Found(value.clone()), &raw)),
            _ => Err(kvs_error(replica, raw)),
        }
    }

    /// `DELETE /kvs/<key>`.
    pub async fn delete(
        &self,
        replica: &str,
        key: &str,
        metadata: &Metadata,
    ) -> Result<Reply, ClientError> {
        let body = json!({"causal-metadata": metadata});
        let raw = self
            .request(Method::DELETE, replica, &kvs_path(key), Some(&body))
            .await?;
        match raw.status {
            StatusCode::OK => Ok(reply(Outcome::Deleted, &raw)),
            _ => Err(kvs_error(replica, raw)),
        }
    }

    /// `GET /view`.
    pub async fn view(&self, replica: &str) -> Result<Vec<String>, ClientError> {
        let raw = self.request(Method::GET, replica, "/view", None).await?;
        let list = raw.body.get("view").and_then(Value::as_array);
        match (raw.status, list) {
            (StatusCode::OK, Some(list)) => Ok(list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()),
            _ => Err(unexpected(replica, &raw)),
        }
    }

    /// `PUT /view`: true when added, false when already present.
    pub async fn view_add(&self, replica: &str, addr: &str) -> Result<bool, ClientError> {
        let body = json!({"socket-address": addr});
        let raw = self
            .request(Method::PUT, replica, "/view", Some(&body))
            .await?;
        match raw.status {
            StatusCode::CREATED => Ok(true),
            StatusCode::OK => Ok(false),
            StatusCode::BAD_REQUEST => Err(ClientError::BadRequest(error_text(&raw))),
            _ => Err(unexpected(replica, &raw)),
        }
    }

    /// `DELETE /view`.
    pub async fn view_remove(&self, replica: &str, addr: &str) -> Result<(), ClientError> {
        let body = json!({"socket-address": addr});
        let raw = self
            .request(Method::DELETE, replica, "/view", Some(&body))
            .await?;
        match raw.status {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => Err(ClientError::NoSuchReplica),
            StatusCode::BAD_REQUEST => Err(ClientError::BadRequest(error_text(&raw))),
            _ => Err(unexpected(replica, &raw)),
        }
    }

    /// One request with an optional JSON body; any status is returned as it came.
    pub async fn request(
        &self,
        method: Method,
        replica: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<RawReply, ClientError> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(tls::url(replica, path));
        let body = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::default(),
        };
        let request = request.body(body).map_err(|e| ClientError::Unreachable {
            replica: replica.to_string(),
            reason: format!("not a valid address: {e}"),
        })?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| crate::error_chain(&e))?;
            let status = response.status();
            let bytes = response.into_body().collect().await;
            Ok::<_, String>((
                status,
                bytes.map_err(|e| crate::error_chain(&e))?.to_bytes(),
            ))
        };
        let (status, bytes) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(mut reason)) => {
                if !self.trusts && replica.starts_with("https://") {
                    reason.push_str(
                        " (no CA certificate was given, so no https:// replica is trusted)",
                    );
                }
                return Err(ClientError::Unreachable {
                    replica: replica.to_string(),
                    reason,
                });
            }
            Err(_) => {
                return Err(ClientError::Timeout {
                    replica: replica.to_string(),
                    timeout: self.timeout,
                });
            }
        };
        let body = serde_json::from_slice(&bytes).map_err(|_| ClientError::Unexpected {
            replica: replica.to_string(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })?;
        Ok(RawReply { status, body })
    }
}

/// The HTTP client every load-generating tool uses: keep-alive pool, no proxy, no Nagle.
pub fn pooled_http() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .build()
}

/// `/kvs/<key>` with the key percent-encoded as one path segment's worth of characters.
pub fn kvs_path(key: &str) -> String {
    let mut path = String::from("/kvs/");
    for byte in key.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                path.push(byte as char)
            }
            _ => path.push_str(&format!("%{byte:02X}")),
        }
    }
    path
}

fn reply(outcome: Outcome, raw: &RawReply) -> Reply {
    Reply {
        outcome,
        metadata: metadata_of(&raw.body).unwrap_or_default(),
    }
}

fn metadata_of(body: &Value) -> Option<Metadata> {
    body.get("causal-metadata").cloned().map(Metadata)
}

fn error_text(raw: &RawReply) -> String {
    raw.body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no error message")
        .to_string()
}

fn kvs_error(replica: &str, raw: RawReply) -> ClientError {
    match raw.status {
        StatusCode::NOT_FOUND => ClientError::NotFound {
            metadata: metadata_of(&raw.body),
        },
        StatusCode::SERVICE_UNAVAILABLE => ClientError::CausalTimeout {
            replica: replica.to_string(),
        },
        StatusCode::BAD_REQUEST => ClientError::BadRequest(error_text(&raw)),
        _ => unexpected(replica, &raw),
    }
}

fn unexpected(replica: &str, raw: &RawReply) -> ClientError {
    ClientError::Unexpected {
        replica: replica.to_string(),
        status: raw.status.as_u16(),
        body: raw.body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(kvs_path("a-b_c.d~"), "/kvs/a-b_c.d~");
        assert_eq!(kvs_path("a b/é"), "/kvs/a%20b%2F%C3%A9");
    }

    #[test]
    fn metadata_is_transparent_json() {
        assert_eq!(serde_json::to_string(&Metadata::default()).unwrap(), "null");
        let m: Metadata = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(m.0, json!("abc"));
    }
}
