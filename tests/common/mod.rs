//! Shared harness of the integration suites that talk to real `causalkv` replicas.
//!
//! The contract, cluster and Docker suites must exercise the server exactly as its
//! clients do: over HTTP, against real processes (or containers). This module gives
//! them one way to do that:
//!
//! - [`TestCluster`] starts N `causalkv serve` processes on loopback ports chosen
//!   free per test, waits (by polling, never by sleeping) until each one is ready,
//!   can kill a replica and restart it with the same address and full view, keeps
//!   each replica's stderr in a file under the target tmp dir, prints the tail of
//!   those files when the test fails, and kills every process when dropped.
//! - [`Node`] is an HTTP client for one replica, with helpers for every route of
//!   the contract; [`Reply`] is what a replica answered.
//! - [`Session`] is a client session that sends back the latest causal metadata.
//! - [`poll_until`] and [`until_served`] wait for a condition up to a deadline.
//!
//! Each test crate uses a different part of this module, hence `dead_code` is
//! allowed here.

#![allow(dead_code)]

pub mod docker;
pub mod pki;

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
/// A key the readiness probe reads (never written by any test).
const PROBE_KEY: &str = "readiness-probe";

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

/// `Ok` when `node` is ready: its view lists every address of `expected`, and
/// a KVS read answers something other than 503 (its bootstrap is done).
pub async fn ready_check(node: &Node, expected: &BTreeSet<String>) -> Result<(), String> {
    let view = node.try_view().await?;
    if !view.is_superset(expected) {
        return Err(format!("view {view:?} lacks some of {expected:?}"));
    }
    let read = node.try_get(PROBE_KEY, &Value::Null).await?;
    match read.status {
        503 => Err(format!("still bootstrapping: {read}")),
        _ => Ok(()),
    }
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

/// A client session: sends back the causal metadata of the latest answer that
/// carried one, as the contract tells clients to.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub meta: Value,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn put(&mut self, node: &Node, key: &str, value: Value) -> Reply {
        let reply = node.put(key, value, &self.meta).await;
        self.observe(&reply);
        reply
    }

    pub async fn get(&mut self, node: &Node, key: &str) -> Reply {
        let reply = node.get(key, &self.meta).await;
        self.observe(&reply);
        reply
    }

    pub async fn delete(&mut self, node: &Node, key: &str) -> Reply {
        let reply = node.delete(key, &self.meta).await;
        self.observe(&reply);
        reply
    }

    /// Keeps the answer's metadata, if it has any.
    pub fn observe(&mut self, reply: &Reply) {
        if let Some(meta) = reply.body.get("causal-metadata")
            && !meta.is_null()
        {
            self.meta = meta.clone();
        }
    }
}

/// `n` distinct loopback socket addresses that were free a moment ago (each
/// found by binding port 0; all are held at once so none repeats).
pub fn free_addrs(n: usize) -> Vec<String> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").to_string())
        .collect()
}

/// One replica process of a [`TestCluster`].
struct Replica {
    node: Node,
    child: Option<Child>,
    log: PathBuf,
    starts: usize,
}

/// N `causalkv serve` processes on loopback, all with the same full view. Every
/// process is killed when the cluster is dropped; if the test is failing then,
/// the tail of each replica's log is printed.
pub struct TestCluster {
    name: String,
    args: Vec<String>,
    replicas: Vec<Replica>,
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
    pub fn spawn(name: &str, n: usize, args: &[&str]) -> Self {
        let log_dir = log_dir(name);
        let replicas = free_addrs(n)
            .into_iter()
            .enumerate()
            .map(|(i, addr)| Replica {
                node: Node::new(addr),
                child: None,
                log: log_dir.join(format!("replica-{i}.log")),
                starts: 0,
            })
            .collect();
        let mut cluster = TestCluster {
            name: name.to_owned(),
            args: args.iter().map(|arg| arg.to_string()).collect(),
            replicas,
        };
        for i in 0..n {
            cluster.launch(i);
        }
        cluster
    }

    /// Number of replicas (running or killed).
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The client of replica `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.replicas[i].node
    }

    /// Clients of every replica, in order.
    pub fn nodes(&self) -> Vec<&Node> {
        self.replicas.iter().map(|replica| &replica.node).collect()
    }

    /// Socket address of replica `i`.
    pub fn addr(&self, i: usize) -> String {
        self.replicas[i].node.addr().to_owned()
    }

    /// Socket addresses of every replica: the full view.
    pub fn addrs(&self) -> BTreeSet<String> {
        (0..self.len()).map(|i| self.addr(i)).collect()
    }

    /// The process id of replica `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.replicas[i].child.as_ref().map(Child::id)
    }

    /// Everything replica `i` logged so far (all its lives).
    pub fn log_text(&self, i: usize) -> String {
        fs::read_to_string(&self.replicas[i].log).unwrap_or_default()
    }

    /// Indexes of the replicas whose process is running.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.replicas[i].child.is_some())
            .collect()
    }

    /// Kills replica `i` abruptly (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.replicas[i]
            .child
            .take()
            .unwrap_or_else(|| panic!("replica {i} is not running"));
        stop(&mut child);
    }

    /// Starts replica `i` again, with its old address and the full view; does
    /// not wait for it (see [`TestCluster::wait_ready`]).
    pub fn restart(&mut self, i: usize) {
        assert!(self.replicas[i].child.is_none(), "replica {i} is running");
        self.launch(i);
    }

    /// Waits until every running replica lists every running replica in its view
    /// and answers a KVS read other than 503 (bootstrap done). Panics if a
    /// process exits or `deadline` passes.
    pub async fn wait_ready(&mut self, deadline: Instant) {
        let expected: BTreeSet<String> = self.running().iter().map(|&i| self.addr(i)).collect();
        for i in self.running() {
            let what = format!("replica {i} ({}) is ready", self.addr(i));
            poll_until(deadline, &what, async || self.probe(i, &expected).await).await;
        }
    }

    /// One readiness check of replica `i`.
    async fn probe(&mut self, i: usize, expected: &BTreeSet<String>) -> Result<(), String> {
        self.assert_alive(i);
        ready_check(&self.replicas[i].node, expected).await
    }

    /// Panics (with the replica's log) if replica `i`'s process has exited.
    fn assert_alive(&mut self, i: usize) {
        let replica = &mut self.replicas[i];
        let child = replica.child.as_mut().expect("replica is running");
        if let Some(status) = child.try_wait().expect("check replica process") {
            panic!(
                "replica {i} ({}) exited with {status}; its log:\n{}",
                replica.node.addr(),
                tail(&replica.log, LOG_TAIL_LINES)
            );
        }
    }

    /// Spawns the process of replica `i`, its output appended to its log.
    fn launch(&mut self, i: usize) {
        let view = Vec::from_iter(self.addrs()).join(",");
        let replica = &mut self.replicas[i];
        replica.starts += 1;
        let mut log = open_log(&replica.log);
        writeln!(
            log,
            "===== {} replica {i} at {}: start #{} =====",
            self.name,
            replica.node.addr(),
            replica.starts
        )
        .expect("write replica log");
        let stdout = log.try_clone().expect("clone log file");
        let child = Command::new(env!("CARGO_BIN_EXE_causalkv"))
            .args(["serve", "--listen", replica.node.addr(), "--view", &view])
            .args(&self.args)
            .env_remove("SOCKET_ADDRESS")
            .env_remove("VIEW")
            // Replica 0 runs the single-threaded runtime (`--worker-threads 1`, as
            // `causalkv cluster` runs replicas on a small machine), the others the default
            // multi-threaded one, so that every test exercises both.
            .env("CAUSALKV_WORKER_THREADS", if i == 0 { "1" } else { "2" })
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .expect("spawn causalkv");
        replica.child = Some(child);
    }

    /// Prints the last lines of every replica's log to stderr.
    fn print_logs(&self) {
        for (i, replica) in self.replicas.iter().enumerate() {
            eprintln!(
                "----- {} replica {i} ({}), last {LOG_TAIL_LINES} lines of {} -----\n{}",
                self.name,
                replica.node.addr(),
                replica.log.display(),
                tail(&replica.log, LOG_TAIL_LINES)
            );
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            if let Some(mut child) = replica.child.take() {
                stop(&mut child);
            }
        }
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

fn stop(child: &mut Child) {
    // Killing a process that already exited fails harmlessly; reap it either way.
    let _ = child.kill();
    let _ = child.wait();
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

fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open replica log")
}

/// The last `lines` lines of the file at `path`.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|err| format!("<unreadable: {err}>"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
