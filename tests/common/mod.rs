//! Shared harness of the integration suites that talk to real `causalkv` replicas.
//!
//! The contract, cluster and Docker suites must exercise the server exactly as its
//! clients do: over HTTP, against real processes (or containers). This module gives
//! them one way to do that:
//!
//! - [`TestCluster`] is the crate's own launcher ([`LocalCluster`]) set up for tests:
//!   N `causalkv serve` processes on loopback ports chosen free per test, waited for
//!   (by polling, never by sleeping) until each one is ready, a replica killed and
//!   restarted with the same address and full view, each replica's output kept in a
//!   file under the target tmp dir, the tail of those files printed when the test
//!   fails, every process killed when dropped.
//! - [`Node`] is an HTTP client for one replica, with helpers for every route of
//!   the contract; [`Reply`] is what a replica answered.
//! - [`Session`] is the crate's client session; [`InSession`] sends a [`Node`]'s raw
//!   requests in one, carrying the latest causal metadata.
//! - [`poll_until`] and [`until_served`] wait for a condition up to a deadline.
//!
//! Each test crate uses a different part of this module, hence `dead_code` is
//! allowed here.

#![allow(dead_code)]

pub mod docker;
pub mod pki;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use causalkv::tools::client::Client;
pub use causalkv::tools::client::Session;
pub use causalkv::tools::launcher::tail;
use causalkv::tools::launcher::{self, Launch, LaunchError, LocalCluster};
use reqwest::Method;
use serde_json::{Value, json};

/// Error sentences fixed by the contract.
pub const ERR_NO_VALUE: &str = "PUT request does not specify a value";
pub const ERR_KEY_TOO_LONG: &str = "Key is too long";
pub const ERR_NO_KEY: &str = "Key does not exist";
pub const ERR_NO_REPLICA: &str = "View has no such replica";
pub const ERR_CAUSAL: &str = "Causal dependencies not satisfied; try again later";

/// How long a freshly started cluster may take to become ready. Generous: the
/// machine is small and test processes run in parallel.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// A deadline for eventual properties (replication, convergence) that the contract
/// does not time: long enough never to fail a correct server on a loaded machine.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// The contract's "within a few seconds" of the crash and reconnect timelines.
pub const CONTRACT_HEAL: Duration = Duration::from_secs(5);

const POLL_INTERVAL: Duration = Duration::from_millis(25);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 60;

/// The instant `after` from now.
pub fn within(after: Duration) -> Instant {
    Instant::now() + after
}

/// Calls `attempt` until it returns `Ok`, pausing briefly between attempts.
/// Panics when `deadline` passes; `attempt`'s last `Err` says what was seen.
pub async fn poll_until<T>(
    deadline: Instant,
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    loop {
        let last = match attempt().await {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("timed out waiting until {what}; last seen: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until the view of each of `nodes` is exactly `expected`.
pub async fn until_views(
    nodes: &[impl std::borrow::Borrow<Node>],
    expected: &BTreeSet<String>,
    deadline: Instant,
) {
    for node in nodes {
        let node = node.borrow();
        let what = format!("the view at {} is {expected:?}", node.addr());
        poll_until(deadline, &what, async || {
            let view = node.try_view().await?;
            if view == *expected {
                Ok(())
            } else {
                Err(format!("{view:?}"))
            }
        })
        .await;
    }
}

/// Repeats a KVS request while it answers 503 (as a client is told to), up to
/// `deadline`; returns the first other answer.
pub async fn until_served(
    deadline: Instant,
    what: &str,
    mut request: impl AsyncFnMut() -> Reply,
) -> Reply {
    poll_until(deadline, what, async || {
        let reply = request().await;
        if reply.status == 503 {
            Err(reply.to_string())
        } else {
            Ok(reply)
        }
    })
    .await
}

/// The body of a request.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body at all (no Content-Type either).
    Empty,
    /// A JSON document.
    Json(Value),
    /// Arbitrary bytes, sent as `application/json`.
    Raw(Vec<u8>),
}

/// What a replica answered: status, Content-Type and the JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Value,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let content_type = self.content_type.as_deref().unwrap_or("no content-type");
        write!(f, "{} ({content_type}) {}", self.status, self.body)
    }
}

impl Reply {
    /// The causal metadata of a successful answer (panics if there is none).
    pub fn meta(&self) -> Value {
        match self.body.get("causal-metadata") {
            Some(meta) if !meta.is_null() => meta.clone(),
            _ => panic!("answer carries no causal-metadata: {self}"),
        }
    }

    /// The `"value"` of a GET answer, `Null` if absent.
    pub fn value(&self) -> &Value {
        self.body.get("value").unwrap_or(&Value::Null)
    }

    /// Whether Content-Type is `application/json` (parameters allowed).
    pub fn is_json(&self) -> bool {
        self.content_type
            .as_deref()
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    }

    /// Asserts status `status`, a JSON Content-Type and `"result": result` with
    /// non-null causal metadata; returns that metadata.
    #[track_caller]
    pub fn expect_result(&self, status: u16, result: &str) -> Value {
        self.expect_status(status);
        assert_eq!(self.body["result"], json!(result), "answer: {self}");
        self.meta()
    }

    /// Asserts a GET answer `200 found` with `value`; returns its metadata.
    #[track_caller]
    pub fn expect_found(&self, value: &Value) -> Value {
        let meta = self.expect_result(200, "found");
        assert_eq!(self.value(), value, "answer: {self}");
        meta
    }

    /// Asserts status `status`, a JSON Content-Type and `"error": error`
    /// (other fields allowed, as for 404 which may add metadata).
    #[track_caller]
    pub fn expect_error(&self, status: u16, error: &str) {
        self.expect_status(status);
        assert_eq!(self.body["error"], json!(error), "answer: {self}");
    }

    /// Asserts status `status`, a JSON Content-Type and exactly `{"error": error}`.
    #[track_caller]
    pub fn expect_exact_error(&self, status: u16, error: &str) {
        self.expect_status(status);
        assert_eq!(self.body, json!({ "error": error }), "answer: {self}");
    }

    /// Asserts status `status`, a JSON Content-Type and some `"error"` sentence.
    #[track_caller]
    pub fn expect_some_error(&self, status: u16) {
        self.expect_status(status);
        let error = self.body["error"].as_str().unwrap_or_default();
        assert!(!error.trim().is_empty(), "no error sentence in: {self}");
    }

    /// Asserts status `status`, a JSON Content-Type and exactly `body`.
    #[track_caller]
    pub fn expect_status_body(&self, status: u16, body: Value) {
        self.expect_status(status);
        assert_eq!(self.body, body, "answer: {self}");
    }

    /// Asserts status `status` and a JSON Content-Type.
    #[track_caller]
    pub fn expect_status(&self, status: u16) {
        assert_eq!(self.status, status, "answer: {self}");
        assert!(
            self.is_json(),
            "Content-Type is not application/json: {self}"
        );
    }
}

/// An HTTP client for one replica, reached at `addr` (`IP:PORT`).
#[derive(Clone)]
pub struct Node {
    addr: String,
    http: reqwest::Client,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({})", self.addr)
    }
}

impl Node {
    /// A client for the replica at `addr`. Connections are not pooled, so that a
    /// killed and restarted replica never meets a stale connection.
    pub fn new(addr: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("build HTTP client");
        Node {
            addr: addr.into(),
            http,
        }
    }

    /// The socket address this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request; `Err` only when no HTTP answer came back.
    /// Panics when the answer's body is not JSON: every answer must be.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<Reply, reqwest::Error> {
        let url = format!("http://{}{path}", self.addr);
        let request = self.http.request(method.clone(), url);
        let request = match body {
            Body::Empty => request,
            Body::Json(value) => request.json(&value),
            Body::Raw(bytes) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes),
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|ct| String::from_utf8_lossy(ct.as_bytes()).into_owned());
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{} answered {method} {path} with a non-JSON body: {status} ({content_type:?}) {:?}",
                self.addr,
                String::from_utf8_lossy(&bytes)
            )
        });
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }

    /// Sends one request; panics when no HTTP answer came back.
    pub async fn request(&self, method: Method, path: &str, body: Body) -> Reply {
        let what = format!("{method} {path} at {}", self.addr);
        self.try_request(method, path, body)
            .await
            .unwrap_or_else(|err| panic!("{what}: no answer: {err:?}"))
    }

    /// A request to `/kvs/<key>`, the key percent-encoded.
    pub async fn kvs(&self, method: Method, key: &str, body: Body) -> Reply {
        self.request(method, &kvs_path(key), body).await
    }

    /// `PUT /kvs/<key>` with `{"value": value, "causal-metadata": meta}`.
    pub async fn put(&self, key: &str, value: Value, meta: &Value) -> Reply {
        let body = json!({ "value": value, "causal-metadata": meta });
        self.kvs(Method::PUT, key, Body::Json(body)).await
    }

    /// `GET /kvs/<key>` with `{"causal-metadata": meta}`.
    pub async fn get(&self, key: &str, meta: &Value) -> Reply {
        self.kvs(Method::GET, key, meta_body(meta)).await
    }

    /// `GET /kvs/<key>` with `{"causal-metadata": meta}`; `Err` says why no
    /// answer came back.
    pub async fn try_get(&self, key: &str, meta: &Value) -> Result<Reply, String> {
        self.try_request(Method::GET, &kvs_path(key), meta_body(meta))
            .await
            .map_err(|err| format!("GET /kvs/{key} at {}: no answer: {err}", self.addr))
    }

    /// `PUT /kvs/<key>`; `Err` when no answer came back (the replica died).
    pub async fn try_put(&self, key: &str, value: &Value, meta: &Value) -> Result<Reply, String> {
        let body = json!({ "value": value, "causal-metadata": meta });
        self.try_request(Method::PUT, &kvs_path(key), Body::Json(body))
            .await
            .map_err(|err| format!("PUT /kvs/{key} at {}: no answer: {err}", self.addr))
    }

    /// `DELETE /kvs/<key>`; `Err` when no answer came back.
    pub async fn try_delete(&self, key: &str, meta: &Value) -> Result<Reply, String> {
        self.try_request(Method::DELETE, &kvs_path(key), meta_body(meta))
            .await
            .map_err(|err| format!("DELETE /kvs/{key} at {}: no answer: {err}", self.addr))
    }

    /// `DELETE /kvs/<key>` with `{"causal-metadata": meta}`.
    pub async fn delete(&self, key: &str, meta: &Value) -> Reply {
        self.kvs(Method::DELETE, key, meta_body(meta)).await
    }

    /// `GET /view`, the raw answer.
    pub async fn view_get(&self) -> Reply {
        self.request(Method::GET, "/view", Body::Empty).await
    }

    /// `PUT /view` with `{"socket-address": addr}`.
    pub async fn view_put(&self, addr: &str) -> Reply {
        let body = json!({ "socket-address": addr });
        self.request(Method::PUT, "/view", Body::Json(body)).await
    }

    /// `DELETE /view` with `{"socket-address": addr}`.
    pub async fn view_delete(&self, addr: &str) -> Reply {
        let body = json!({ "socket-address": addr });
        self.request(Method::DELETE, "/view", Body::Json(body))
            .await
    }

    /// The view as a set, or what went wrong (no answer, not 200, malformed).
    pub async fn try_view(&self) -> Result<BTreeSet<String>, String> {
        let reply = self
            .try_request(Method::GET, "/view", Body::Empty)
            .await
            .map_err(|err| format!("GET /view at {}: no answer: {err}", self.addr))?;
        parse_view(&reply).ok_or_else(|| format!("GET /view at {}: {reply}", self.addr))
    }

    /// The view as a set; panics unless `GET /view` answers a well-formed 200.
    pub async fn view(&self) -> BTreeSet<String> {
        self.try_view().await.unwrap_or_else(|err| panic!("{err}"))
    }
}

/// The client readiness is checked with (the launcher's).
fn probe_client() -> Client {
    Client::new(REQUEST_TIMEOUT).expect("build the readiness client")
}

/// `Ok` when `node` is ready: its view lists every address of `expected`, and
/// a KVS read answers something other than 503 (its bootstrap is done); the
/// launcher's check ([`launcher::ready_check`]).
pub async fn ready_check(node: &Node, expected: &BTreeSet<String>) -> Result<(), String> {
    launcher::ready_check(&probe_client(), node.addr(), expected).await
}

/// The view listed by a `200 {"view": [...]}` answer.
fn parse_view(reply: &Reply) -> Option<BTreeSet<String>> {
    if reply.status != 200 || !reply.is_json() {
        return None;
    }
    let list = reply.body.get("view")?.as_array()?;
    list.iter()
        .map(|addr| addr.as_str().map(str::to_owned))
        .collect()
}

fn meta_body(meta: &Value) -> Body {
    Body::Json(json!({ "causal-metadata": meta }))
}

/// `/kvs/<key>` with every byte of `key` outside the URL's unreserved set
/// percent-encoded, so the replica sees `key` once it decodes the path.
pub fn kvs_path(key: &str) -> String {
    let mut path = String::from("/kvs/");
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

/// Requests through a [`Node`] in a [`Session`]: each sends the session's metadata
/// and the session adopts the answer's (if it has one that is not null), as the
/// contract tells clients to.
pub trait InSession {
    /// The metadata the next request carries.
    fn meta(&self) -> &Value;
    /// Keeps the answer's metadata, if it has any.
    fn observe(&mut self, reply: &Reply);
    fn put_at(
        &mut self,
        node: &Node,
        key: &str,
        value: Value,
    ) -> impl Future<Output = Reply> + Send;
    fn get_at(&mut self, node: &Node, key: &str) -> impl Future<Output = Reply> + Send;
    fn delete_at(&mut self, node: &Node, key: &str) -> impl Future<Output = Reply> + Send;
}

impl InSession for Session {
    fn meta(&self) -> &Value {
        &self.metadata().0
    }

    fn observe(&mut self, reply: &Reply) {
        self.observe_json(&reply.body);
    }

    async fn put_at(&mut self, node: &Node, key: &str, value: Value) -> Reply {
        let reply = node.put(key, value, self.meta()).await;
        self.observe(&reply);
        reply
    }

    async fn get_at(&mut self, node: &Node, key: &str) -> Reply {
        let reply = node.get(key, self.meta()).await;
        self.observe(&reply);
        reply
    }

    async fn delete_at(&mut self, node: &Node, key: &str) -> Reply {
        let reply = node.delete(key, self.meta()).await;
        self.observe(&reply);
        reply
    }
}

/// `n` distinct loopback socket addresses that were free a moment ago.
pub fn free_addrs(n: usize) -> Vec<String> {
    launcher::free_loopback_addrs(n)
        .expect("bind free loopback ports")
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// N `causalkv serve` processes on loopback, all with the same full view, each
/// logging to a file: the crate's [`LocalCluster`] with a [`Node`] per replica.
/// Every process is killed when the cluster is dropped; if the test is failing
/// then, the tail of each replica's log is printed.
pub struct TestCluster {
    name: String,
    replicas: LocalCluster,
    nodes: Vec<Node>,
}

impl TestCluster {
    /// Starts `n` replicas with default settings and waits until they are ready.
    pub async fn start(name: &str, n: usize) -> Self {
        Self::start_with(name, n, &[]).await
    }

    /// Starts `n` replicas, each given `args` after `serve --listen --view`
    /// (e.g. `["--failure-timeout", "60s"]`), and waits until they are ready.
    pub async fn start_with(name: &str, n: usize, args: &[&str]) -> Self {
        let mut cluster = Self::spawn(name, n, args);
        cluster.wait_ready(within(READY_TIMEOUT)).await;
        cluster
    }

    /// Starts the processes without waiting for them.
    ///
    /// Replica 0 runs the single-threaded runtime (`--worker-threads 1`, as
    /// `causalkv cluster` runs replicas on a small machine), the others the default
    /// multi-threaded one, so that every test exercises both.
    pub fn spawn(name: &str, n: usize, args: &[&str]) -> Self {
        Self::spawn_with(name, n, args, |launch, _| launch)
    }

    /// Starts `n` replicas, each keeping its data in `root/<i>` (`DATA_DIR`), and waits
    /// until they are ready.
    pub async fn start_durable(name: &str, n: usize, args: &[&str], root: &Path) -> Self {
        let mut cluster = Self::spawn_with(name, n, args, |launch, i| {
            launch.replica_env(i, "DATA_DIR", root.join(i.to_string()))
        });
        cluster.wait_ready(within(READY_TIMEOUT)).await;
        cluster
    }

    /// Like [`TestCluster::spawn`], with `each` adjusting every replica's launch.
    pub fn spawn_with(
        name: &str,
        n: usize,
        args: &[&str],
        each: impl Fn(Launch, usize) -> Launch,
    ) -> Self {
        let addrs = launcher::free_loopback_addrs(n).expect("bind free loopback ports");
        let log_level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let mut launch = Launch::new(addrs)
            .program(env!("CARGO_BIN_EXE_causalkv"))
            .name(name)
            .log_dir(log_dir(name))
            .args(args)
            .env("RUST_LOG", log_level);
        for i in 0..n {
            launch =
                launch.replica_env(i, "CAUSALKV_WORKER_THREADS", if i == 0 { "1" } else { "2" });
            launch = each(launch, i);
        }
        let mut replicas = launch.build();
        replicas.start_all().expect("spawn causalkv");
        let nodes = replicas
            .addrs()
            .iter()
            .map(|addr| Node::new(addr.to_string()))
            .collect();
        TestCluster {
            name: name.to_owned(),
            replicas,
            nodes,
        }
    }

    /// Number of replicas (running or killed).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The client of replica `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Clients of every replica, in order.
    pub fn nodes(&self) -> Vec<&Node> {
        self.nodes.iter().collect()
    }

    /// Socket address of replica `i`.
    pub fn addr(&self, i: usize) -> String {
        self.nodes[i].addr().to_owned()
    }

    /// Socket addresses of every replica: the full view.
    pub fn addrs(&self) -> BTreeSet<String> {
        (0..self.len()).map(|i| self.addr(i)).collect()
    }

    /// The process id of replica `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.replicas.pid(i)
    }

    /// Everything replica `i` logged so far (all its lives).
    pub fn log_text(&self, i: usize) -> String {
        self.replicas.log_text(i)
    }

    /// Indexes of the replicas whose process is running.
    pub fn running(&self) -> Vec<usize> {
        self.replicas.running()
    }

    /// Kills replica `i` abruptly (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        assert!(self.replicas.kill(i), "replica {i} is not running");
    }

    /// Starts replica `i` again, with its old address and the full view; does
    /// not wait for it (see [`TestCluster::wait_ready`]).
    pub fn restart(&mut self, i: usize) {
        assert!(!self.replicas.is_running(i), "replica {i} is running");
        self.replicas.start(i).expect("spawn causalkv");
    }

    /// Waits until every running replica lists every running replica in its view
    /// and answers a KVS read other than 503 (bootstrap done). Panics if a
    /// process exits or `deadline` passes.
    pub async fn wait_ready(&mut self, deadline: Instant) {
        // A client of its own, dropped with its connections once done, so that a killed
        // and restarted replica never meets a stale connection.
        match self.replicas.wait_ready(&probe_client(), deadline).await {
            Ok(()) => {}
            Err(LaunchError::Exited(exit)) => panic!(
                "replica {} ({}) exited with {}; its log:\n{}",
                exit.index,
                exit.addr,
                exit.status,
                self.replicas.log_tail(exit.index, LOG_TAIL_LINES)
            ),
            Err(LaunchError::NotReady { index, addr, last }) => panic!(
                "timed out waiting until replica {index} ({addr}) is ready; last seen: {last}"
            ),
        }
    }

    /// Prints the last lines of every replica's log to stderr.
    fn print_logs(&self) {
        for i in 0..self.len() {
            let log = self.replicas.log_path(i).unwrap_or_default();
            eprintln!(
                "----- {} replica {i} ({}), last {LOG_TAIL_LINES} lines of {} -----\n{}",
                self.name,
                self.addr(i),
                log.display(),
                self.replicas.log_tail(i, LOG_TAIL_LINES)
            );
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.replicas.kill_all();
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

/// A fresh directory for one cluster's logs under the target tmp dir.
fn log_dir(name: &str) -> PathBuf {
    static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
    let seq = CLUSTERS.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("causalkv-logs")
        .join(format!("{name}-{}-{seq}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create log directory");
    dir
}
