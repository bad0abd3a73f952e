//! The client side of TLS: the client library, the CLI, `causalkv bench` and
//! `causalkv check` talking to `https://` replicas with `--tls-ca`, and plain HTTP
//! unchanged.
//!
//! The certificates are made at test time (rcgen): a CA, a replica certificate for
//! `127.0.0.1` that it signed, and an unrelated CA. The replica is a tiny in-process
//! store that speaks enough of the contract (`GET /view`, `PUT`/`GET /kvs/<key>`) over
//! HTTPS or plain HTTP.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use causalkv::server::tls::TlsError;
use causalkv::tools::client::{Client, ClientError, Metadata, Outcome};
use common::pki::Pki;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The store behind the fake replica: key to value.
type Store = Arc<Mutex<HashMap<String, Value>>>;

/// A one-replica store on loopback that speaks the contract's basics, over HTTPS when
/// given an acceptor, else plain HTTP; it serves until the test's runtime ends.
async fn replica(tls: Option<TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let store = Store::default();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (tls, store) = (tls.clone(), Arc::clone(&store));
            tokio::spawn(async move {
                match tls {
                    Some(tls) => {
                        // A failed handshake is what some tests are about: drop the
                        // connection.
                        if let Ok(stream) = tls.accept(stream).await {
                            serve_connection(stream, store).await;
                        }
                    }
                    None => serve_connection(stream, store).await,
                }
            });
        }
    });
    addr
}

async fn serve_connection<S>(stream: S, store: Store)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| answer(request, Arc::clone(&store)));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn answer(
    request: Request<Incoming>,
    store: Store,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body: Value = match body.collect().await {
        Ok(bytes) => serde_json::from_slice(&bytes.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let path = parts.uri.path();
    let (status, answer) = match (&parts.method, path.strip_prefix("/kvs/")) {
        (&Method::GET, None) if path == "/view" => {
            (StatusCode::OK, json!({"view": ["127.0.0.1:1"]}))
        }
        (&Method::PUT, Some(key)) => {
            let value = body.get("value").cloned().unwrap_or(Value::Null);
            let old = store.lock().unwrap().insert(key.to_string(), value);
            match old {
                None => (
                    StatusCode::CREATED,
                    json!({"result": "created", "causal-metadata": "x"}),
                ),
                Some(_) => (
                    StatusCode::OK,
                    json!({"result": "replaced", "causal-metadata": "x"}),
                ),
            }
        }
        (&Method::GET, Some(key)) => match store.lock().unwrap().get(key) {
            Some(value) => (
                StatusCode::OK,
                json!({"result": "found", "value": value, "causal-metadata": "x"}),
            ),
            None => (
                StatusCode::NOT_FOUND,
                json!({"error": "Key does not exist", "causal-metadata": "x"}),
            ),
        },
        (&Method::DELETE, Some(key)) => match store.lock().unwrap().remove(key) {
            Some(_) => (
                StatusCode::OK,
                json!({"result": "deleted", "causal-metadata": "x"}),
            ),
            None => (
                StatusCode::NOT_FOUND,
                json!({"error": "Key does not exist", "causal-metadata": "x"}),
            ),
        },
        _ => (StatusCode::NOT_FOUND, json!({"error": "no such route"})),
    };
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[track_caller]
fn assert_unreachable(result: Result<Vec<String>, ClientError>, replica: &str) -> String {
    match result {
        Err(ClientError::Unreachable { replica: r, reason }) => {
            assert_eq!(r, replica);
            reason
        }
        other => panic!("expected an unreachable replica, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_with_the_ca_talks_https() {
    let pki = Pki::new("with-ca");
    let addr = replica(Some(pki.acceptor())).await;
    let https = format!("https://{addr}");
    let client = pki.client(&pki.ca());

    assert_eq!(client.view(&https).await.expect("view"), ["127.0.0.1:1"]);
    let reply = client
        .put(&https, "k", &json!(1), &Metadata::default())
        .await
        .expect("put");
    assert_eq!(reply.outcome, Outcome::Created);
    assert_eq!(reply.metadata, Metadata(json!("x")));
    let found = client.get(&https, "k", &reply.metadata).await.expect("get");
    assert_eq!(found.outcome, Outcome::Found(json!(1)));

    // The same through a CA file, and with a trailing slash on the replica.
    let from_file = Client::with_tls_ca(TIMEOUT, Some(&pki.ca())).expect("client");
    let view = from_file.view(&format!("{https}/")).await.expect("view");
    assert_eq!(view, ["127.0.0.1:1"]);
}

#[tokio::test]
async fn without_a_ca_https_is_unreachable() {
    let pki = Pki::new("without-ca");
    let addr = replica(Some(pki.acceptor())).await;
    let https = format!("https://{addr}");

    let plain = Client::new(TIMEOUT).expect("client");
    let reason = assert_unreachable(plain.view(&https).await, &https);
    assert!(reason.contains("certificate"), "{reason}");
    assert!(reason.contains("no CA certificate was given"), "{reason}");

    let no_ca = Client::with_tls_ca(TIMEOUT, None).expect("client");
    assert_unreachable(no_ca.view(&https).await, &https);
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_certificate_is_refused() {
    let pki = Pki::new("other-ca");
    let addr = replica(Some(pki.acceptor())).await;
    let https = format!("https://{addr}");
    let client = pki.client(&pki.other_ca());
    let reason = assert_unreachable(client.view(&https).await, &https);
    assert!(reason.contains("certificate"), "{reason}");
    assert!(!reason.contains("no CA certificate was given"), "{reason}");
}

#[tokio::test]
async fn plain_http_still_works_with_or_without_a_ca() {
    let pki = Pki::new("plain");
    let addr = replica(None).await;
    for client in [Client::new(TIMEOUT).expect("client"), pki.client(&pki.ca())] {
        for replica in [addr.to_string(), format!("http://{addr}")] {
            assert_eq!(client.view(&replica).await.expect("view"), ["127.0.0.1:1"]);
        }
    }
    // An https:// client does not downgrade: a plain server fails the handshake.
    let https = format!("https://{addr}");
    assert_unreachable(pki.client(&pki.ca()).view(&https).await, &https);
}

#[test]
fn a_bad_ca_file_is_a_tls_error() {
    let pki = Pki::new("bad-ca");
    let missing = pki.dir.join("missing.pem");
    match Client::with_tls_ca(TIMEOUT, Some(&missing)) {
        Err(ClientError::Tls(TlsError::Read { path, .. })) => assert_eq!(path, missing),
        other => panic!("expected a read error, got {other:?}"),
    }
    let key_only = pki.dir.join("replica.key");
    match Client::with_tls_ca(TIMEOUT, Some(&key_only)) {
        Err(error @ ClientError::Tls(TlsError::NoCertificate(_))) => {
            let text = error.to_string();
            assert!(text.starts_with("TLS configuration: "), "{text}");
            assert!(text.contains("replica.key"), "{text}");
        }
        other => panic!("expected no certificate, got {other:?}"),
    }
}

/// What one run of the binary printed and how it exited.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `causalkv ARGS` with none of the CLI's variables set, plus `env`.
async fn causalkv(args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_causalkv"));
    command
        .args(args)
        .env_remove("CAUSALKV_REPLICA")
        .env_remove("CAUSALKV_SESSION")
        .env_remove("CAUSALKV_TLS_CA")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.expect("run causalkv");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Run {
    /// Asserts exit status `code` and exactly one `causalkv: ...` line on stderr;
    /// returns that line.
    #[track_caller]
    fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "not one stderr line: {self:#?}");
        assert!(lines[0].starts_with("causalkv: "), "{self:#?}");
        lines[0]
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 scratch path")
}

#[tokio::test]
async fn the_cli_talks_https_with_tls_ca() {
    let pki = Pki::new("cli");
    let addr = replica(Some(pki.acceptor())).await;
    let https = format!("https://{addr}");
    let ca = pki.ca();

    let view = [
        "view",
        "--no-session",
        "--replica",
        &https,
        "--tls-ca",
        path_str(&ca),
    ];
    let run = causalkv(&view, &[]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.stdout, "127.0.0.1:1\n");
    assert_eq!(run.stderr, "");

    // The CA from the environment; a put, as JSON.
    let put = [
        "put",
        "k",
        "1",
        "--json",
        "--no-session",
        "--replica",
        &https,
    ];
    let run = causalkv(&put, &[("CAUSALKV_TLS_CA", &ca)]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let body: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(body, json!({"result": "created", "causal-metadata": "x"}));
}

#[tokio::test]
async fn the_cli_without_the_right_ca_fails_with_one_line() {
    let pki = Pki::new("cli-fails");
    let addr = replica(Some(pki.acceptor())).await;
    let https = format!("https://{addr}");

    let run = causalkv(&["view", "--no-session", "--replica", &https], &[]).await;
    let line = run.fails(2);
    assert!(line.contains(&https), "{line}");
    assert!(line.contains("no CA certificate was given"), "{line}");

    let other = pki.other_ca();
    let args = [
        "view",
        "--no-session",
        "--replica",
        &https,
        "--tls-ca",
        path_str(&other),
    ];
    let line = causalkv(&args, &[]).await.fails(2).to_string();
    assert!(line.contains("certificate"), "{line}");

    let missing = pki.dir.join("missing.pem");
    let args = [
        "view",
        "--no-session",
        "--replica",
        &https,
        "--tls-ca",
        path_str(&missing),
    ];
    let line = causalkv(&args, &[]).await.fails(2).to_string();
    assert!(line.contains("TLS configuration"), "{line}");
    assert!(line.contains("missing.pem"), "{line}");
}

#[tokio::test]
async fn bench_drives_an_https_replica_with_tls_ca() {
    let pki = Pki::new("bench");
    let addr = replica(Some(pki.acceptor())).await;
    let https = format!("https://{addr}");
    let ca = pki.ca();
    let args = [
        "bench",
        "--replica",
        &https,
        "--tls-ca",
        path_str(&ca),
        "--workload",
        "write",
        "--ops",
        "50",
        "--concurrency",
        "2",
        "--keys",
        "10",
        "--json",
    ];
    let run = causalkv(&args, &[]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let report: Value = serde_json::from_str(&run.stdout).expect("a JSON report");
    assert_eq!(report["endpoints"], json!([https]));
    let overall = &report["overall"];
    assert_eq!(overall["ops"], json!(50), "{report:#}");
    assert_eq!(overall["errors"]["total"], json!(0), "{report:#}");

    // Without the CA the probe fails before any load.
    let plain = ["bench", "--replica", &https, "--ops", "5"];
    let run = causalkv(&plain, &[]).await;
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("cannot reach"), "{run:#?}");

    // A CA goes with the causalkv target only, and not with --scale (its replicas are
    // its own, on plain HTTP).
    let etcd = ["bench", "--target", "etcd", "--tls-ca", path_str(&ca)];
    let run = causalkv(&etcd, &[]).await;
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("--tls-ca goes with"), "{run:#?}");
    let scale = ["bench", "--scale", "--tls-ca", path_str(&ca)];
    let run = causalkv(&scale, &[]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("cannot be used with"), "{run:#?}");
}

#[tokio::test]
async fn check_runs_against_an_https_replica_with_tls_ca() {
    let pki = Pki::new("check");
    let addr = replica(Some(pki.acceptor())).await;
    let https = format!("https://{addr}");
    let ca = pki.ca();
    let args = [
        "check",
        "--replica",
        &https,
        "--tls-ca",
        path_str(&ca),
        "--sessions",
        "2",
        "--duration",
        "500ms",
        "--settle",
        "5s",
        "--json",
    ];
    let run = causalkv(&args, &[]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let report: Value = serde_json::from_str(&run.stdout).expect("a JSON report");
    assert_eq!(report["clean"], json!(true), "{report:#}");
    assert_eq!(report["replicas"], json!([https]));

    let missing = pki.dir.join("missing.pem");
    let args = ["check", "--replica", &https, "--tls-ca", path_str(&missing)];
    let line = causalkv(&args, &[]).await.fails(2).to_string();
    assert!(line.contains("TLS configuration"), "{line}");
}
