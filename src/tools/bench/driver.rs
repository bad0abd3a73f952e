//! The stores a benchmark can drive, one request per operation: causalkv or any store
//! that speaks the replica contract (through [`crate::tools::client::Client`], carrying each
//! session's causal metadata), and etcd through its JSON gateway (`/v3/kv/put`,
//! `/v3/kv/range`, keys and values base64), so that both are measured by the same loop.
//! Contract replicas may be `https://` (with a CA, [`DriverConfig::tls_ca`]); etcd is
//! spoken to over plain HTTP.
//!
//! A benchmark session is a [`Session`] pinned to one endpoint with one attempt per
//! request ([`RetryPolicy::single_attempt`]): every answer, a 503 included, is recorded as
//! it came. For etcd only its endpoint matters.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::ValueEnum;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::BenchError;
use super::stats::Status;
use super::workload::OpKind;
use crate::tools::client::session::RetryPolicy;
use crate::tools::client::{Client, ClientError, Outcome, Session};

/// Which protocol the benchmark speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The causalkv replica contract (`/kvs/<key>` with causal metadata).
    Causalkv,
    /// etcd v3's JSON gateway (`/v3/kv/put`, `/v3/kv/range`).
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Causalkv => "causalkv",
            Target::Etcd => "etcd",
        }
    }
}

/// Sends one operation to the target.
#[derive(Debug)]
pub enum Driver {
    Contract(ContractDriver),
    Etcd(EtcdDriver),
}

/// How a driver is built.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub target: Target,
    pub endpoints: Vec<String>,
    pub timeout: Duration,
    pub value_size: usize,
    /// etcd only: serializable (local) reads rather than linearizable ones.
    pub serializable_reads: bool,
    /// Contract targets only: the CA certificate (PEM) that signed the `https://`
    /// replicas' certificates.
    pub tls_ca: Option<PathBuf>,
}

impl Driver {
    pub fn new(config: &DriverConfig) -> Result<Driver, BenchError> {
        if config.endpoints.is_empty() {
            return Err(BenchError::Usage("at least one --replica is needed".into()));
        }
        let payload = payload(config.value_size);
        let session = Session::new(config.endpoints.clone())
            .map_err(|e| BenchError::Usage(e.to_string()))?
            .with_retry(RetryPolicy::single_attempt());
        Ok(match config.target {
            Target::Causalkv => Driver::Contract(ContractDriver {
                client: Client::with_tls_ca(config.timeout, config.tls_ca.as_deref())
                    .map_err(|e| BenchError::Setup(e.to_string()))?,
                session,
                value: Value::String(payload),
            }),
            Target::Etcd => Driver::Etcd(EtcdDriver::new(config, &payload, session)?),
        })
    }

    /// A fresh session over every endpoint, at the first: what [`Driver::session`] copies.
    fn fresh(&self) -> &Session {
        match self {
            Driver::Contract(d) => &d.session,
            Driver::Etcd(d) => &d.session,
        }
    }

    /// Number of endpoints sessions are spread over.
    pub fn endpoints(&self) -> usize {
        self.fresh().replicas().len()
    }

    /// Checks that every endpoint answers (the contract's `GET /view`, or an etcd range).
    pub async fn probe_all(&self) -> Result<(), BenchError> {
        for index in 0..self.endpoints() {
            self.probe(index).await?;
        }
        Ok(())
    }

    async fn probe(&self, index: usize) -> Result<(), BenchError> {
        let unreachable = |endpoint: &str, reason: String| BenchError::Unreachable {
            endpoint: endpoint.to_string(),
            reason,
        };
        match self {
            Driver::Contract(d) => {
                let endpoint = &d.session.replicas()[index];
                d.client
                    .view(endpoint)
                    .await
                    .map(|_| ())
                    .map_err(|e| unreachable(endpoint, e.to_string()))
            }
            Driver::Etcd(d) => {
                let session = self.session(index);
                match d.read(&session, "causalkv-bench-probe").await {
                    Status::Http(200 | 404) => Ok(()),
                    status => Err(unreachable(&d.range_urls[index], format!("{status:?}"))),
                }
            }
        }
    }

    /// A fresh session on endpoint `index` (modulo the number of endpoints).
    pub fn session(&self, index: usize) -> Session {
        self.fresh().clone().starting_at(index)
    }

    /// Runs one operation on `key` and says how it ended.
    pub async fn run(&self, session: &mut Session, kind: OpKind, key: &str) -> Status {
        match (self, kind) {
            (Driver::Contract(d), OpKind::Read) => d.read(session, key).await,
            (Driver::Contract(d), OpKind::Update) => d.update(session, key).await,
            (Driver::Etcd(d), OpKind::Read) => d.read(session, key).await,
            (Driver::Etcd(d), OpKind::Update) => d.update(session, key).await,
        }
    }
}

/// `value_size` bytes of printable ASCII, the value every update writes.
pub fn payload(value_size: usize) -> String {
    (0..value_size)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// Drives a store that speaks the causalkv contract.
#[derive(Debug)]
pub struct ContractDriver {
    client: Client,
    /// A fresh session over the endpoints.
    session: Session,
    value: Value,
}

impl ContractDriver {
    /// A `GET`: the session sends its metadata and takes the answer's (a 404's too).
    async fn read(&self, session: &mut Session, key: &str) -> Status {
        match session.get(&self.client, key).await {
            Ok(Some(_)) => Status::Http(200),
            Ok(None) => Status::Http(404),
            Err(error) => error_status(error),
        }
    }

    async fn update(&self, session: &mut Session, key: &str) -> Status {
        match session.put(&self.client, key, &self.value).await {
            Ok(Outcome::Created) => Status::Http(201),
            Ok(_) => Status::Http(200),
            Err(error) => error_status(error),
        }
    }
}

/// The status behind a client error.
fn error_status(error: ClientError) -> Status {
    match error {
        ClientError::NotFound { .. } => Status::Http(404),
        ClientError::CausalTimeout { .. } => Status::Http(503),
        ClientError::BadRequest(_) => Status::Http(400),
        ClientError::NoSuchReplica => Status::Http(404),
        ClientError::Timeout { .. } => Status::Timeout,
        ClientError::Unreachable { .. } | ClientError::Tls(_) => Status::Transport,
        // A success status with a body that is not what the contract says is an error.
        ClientError::Unexpected { status, .. } if (200..300).contains(&status) => Status::Transport,
        ClientError::Unexpected { status, .. } => Status::Http(status),
    }
}

/// Drives etcd v3 through its gRPC gateway's JSON API.
#[derive(Debug)]
pub struct EtcdDriver {
    http: reqwest::Client,
    /// A fresh session over the endpoints (only its endpoint is used).
    session: Session,
    put_urls: Vec<String>,
    range_urls: Vec<String>,
    value_b64: String,
    serializable: bool,
    timeout: Duration,
}

/// The part of a range answer the benchmark looks at.
#[derive(Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    kvs: Vec<IgnoredAny>,
}

impl EtcdDriver {
    fn new(
        config: &DriverConfig,
        payload: &str,
        session: Session,
    ) -> Result<EtcdDriver, BenchError> {
        let http = crate::tools::client::pooled_http()
            .map_err(|e| BenchError::Setup(format!("cannot build an HTTP client: {e}")))?;
        let urls = |path: &str| {
            config
                .endpoints
                .iter()
                .map(|e| crate::server::tls::url(e, path))
                .collect()
        };
        Ok(EtcdDriver {
            http,
            session,
            put_urls: urls("/v3/kv/put"),
            range_urls: urls("/v3/kv/range"),
            value_b64: BASE64.encode(payload),
            serializable: config.serializable_reads,
            timeout: config.timeout,
        })
    }

    async fn read(&self, session: &Session, key: &str) -> Status {
        let body = format!(
            r#"{{"key":"{}","serializable":{}}}"#,
            BASE64.encode(key),
            self.serializable
        );
        let url = &self.range_urls[session.replica_index() % self.range_urls.len()];
        match self.post(url, body).await {
            Ok((200, bytes)) => match serde_json::from_slice::<RangeAnswer>(&bytes) {
                Ok(answer) if answer.kvs.is_empty() => Status::Http(404),
                Ok(_) => Status::Http(200),
                Err(_) => Status::Transport,
            },
            Ok((status, _)) => Status::Http(status),
            Err(status) => status,
        }
    }

    async fn update(&self, session: &Session, key: &str) -> Status {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            BASE64.encode(key),
            self.value_b64
        );
        let url = &self.put_urls[session.replica_index() % self.put_urls.len()];
        match self.post(url, body).await {
            Ok((status, _)) => Status::Http(status),
            Err(status) => status,
        }
    }

    async fn post(&self, url: &str, body: String) -> Result<(u16, bytes::Bytes), Status> {
        let response = self
            .http
            .post(url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport_status)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport_status)?;
        Ok((status, bytes))
    }
}

fn transport_status(error: reqwest::Error) -> Status {
    if error.is_timeout() {
        Status::Timeout
    } else {
        Status::Transport
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_has_the_requested_size() {
        assert_eq!(payload(0), "");
        assert_eq!(payload(3), "abc");
        assert_eq!(payload(1000).len(), 1000);
    }

    #[test]
    fn client_errors_map_to_statuses() {
        let not_found = ClientError::NotFound { metadata: None };
        assert_eq!(error_status(not_found), Status::Http(404));
        let busy = ClientError::CausalTimeout {
            replica: "r".into(),
        };
        assert_eq!(error_status(busy), Status::Http(503));
        let down = ClientError::Unreachable {
            replica: "r".into(),
            reason: "refused".into(),
        };
        assert_eq!(error_status(down), Status::Transport);
        let garbled = ClientError::Unexpected {
            replica: "r".into(),
            status: 200,
            body: "<html>".into(),
        };
        assert_eq!(error_status(garbled), Status::Transport);
    }

    #[test]
    fn sessions_are_spread_over_endpoints() {
        let config = DriverConfig {
            target: Target::Causalkv,
            endpoints: vec!["a:1".into(), "b:2".into(), "c:3".into()],
            timeout: Duration::from_secs(1),
            value_size: 8,
            serializable_reads: true,
            tls_ca: None,
        };
        let driver = Driver::new(&config).unwrap();
        let spread: Vec<usize> = (0..6).map(|i| driver.session(i).replica_index()).collect();
        assert_eq!(spread, [0, 1, 2, 0, 1, 2]);
        let empty = DriverConfig {
            endpoints: vec![],
            ..config
        };
        assert!(Driver::new(&empty).is_err());
    }
}
