//! Property tests that throw arbitrary input at the request handlers, in process.
//!
//! The contract promises that no request, however malformed or large, crashes a replica,
//! gets a 5xx other than the causal `503`, or is answered with anything but JSON. The
//! loopback suites (`contract`, `cluster`) check the contract row by row over HTTP; this
//! file instead calls the axum router of one single-replica node directly (no sockets on
//! the client side), so proptest can run hundreds of cases per property in seconds and
//! shrink any failure to a minimal request. It covers arbitrary methods, paths and bytes;
//! arbitrary JSON shapes on `/kvs` and `/view`; mutated and foreign causal metadata; and
//! arbitrary peer messages on the internal endpoints. A few plain tests pin the exact
//! contract sentences that the properties only check the shape of.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::HeaderValue;
use axum::http::{Method, Request, StatusCode, header};
use causalkv::protocol::causal::{Clock, Dot, Incarnation, metadata};
use causalkv::protocol::delivery::Write;
use causalkv::protocol::store::Entry;
use causalkv::protocol::wire::{self, Heartbeat, Replicate, SyncRequest, ViewChange, ViewOp};
use causalkv::server::api::Remote;
use causalkv::server::auth::{self, Keyring, Signed};
use causalkv::server::config::{Config, ServeArgs};
use causalkv::server::node::Node;
use causalkv::server::wallclock::now_ms;
use clap::Parser;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseResult, TestRunner};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio::runtime::Runtime;
use tower::ServiceExt;

/// The node's own address: it never binds, the router is called directly.
const ME: &str = "127.0.0.1:1";
/// A second single-replica node, whose writes the first one never sees. Nothing listens
/// there, so it is also a valid but unreachable peer.
const STRANGER: &str = "127.0.0.1:2";
/// Small, so that the `413` path is exercised.
const MAX_BODY: usize = 4096;
const MAX_KEY_CHARS: usize = 50;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Far above any handler's own bound: an answer this late means a handler hangs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const ERR_NO_VALUE: &str = "PUT request does not specify a value";
const ERR_KEY_TOO_LONG: &str = "Key is too long";
const ERR_NO_KEY: &str = "Key does not exist";
const ERR_CAUSAL: &str = "Causal dependencies not satisfied; try again later";

const INTERNAL: [&str; 5] = [
    wire::HEARTBEAT,
    wire::ANNOUNCE,
    wire::VIEW_CHANGE,
    wire::REPLICATE,
    wire::SYNC,
];

// ---------------------------------------------------------------------------------------
// The harness: one node, its router, and the runtime that drives both.
// ---------------------------------------------------------------------------------------

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// A single-replica configuration with short waits, so that `503`s and unreachable peers
/// added by the fuzzer cost milliseconds.
fn config(listen: &str) -> Config {
    config_with(listen, None, "300ms")
}

/// The same, with the cluster secret `secret` when given, and a failure timeout.
fn config_with(listen: &str, secret: Option<&str>, failure_timeout: &str) -> Config {
    let max_body = MAX_BODY.to_string();
    let args = [
        "handlers",
        "--listen",
        listen,
        "--view",
        listen,
        "--max-body-bytes",
        &max_body,
        "--causal-wait",
        "20ms",
        "--replication-timeout",
        "100ms",
        "--heartbeat-interval",
        "50ms",
        "--failure-timeout",
        failure_timeout,
    ];
    let mut args = Cli::try_parse_from(args).expect("valid flags").serve;
    args.cluster_secret = secret.map(str::to_owned);
    args.validate().expect("valid configuration")
}

/// The cluster secret of the replicas that have one.
const SECRET: &str = "handlers-test-cluster-secret-0123456789";

/// The headers that carry a request's signature.
fn signed_headers(signed: &Signed) -> [(&'static str, String); 3] {
    [
        (auth::TIME, signed.time_ms.to_string()),
        (auth::NONCE, signed.nonce.clone()),
        (auth::MAC, signed.mac.clone()),
    ]
}

/// One replica served in process.
struct Replica {
    rt: Runtime,
    app: Router,
    /// The cluster secret the harness signs internal requests with, as a peer would.
    keys: Option<Keyring>,
    /// Where requests appear to come from.
    source: SocketAddr,
}

impl Replica {
    fn start(listen: &str) -> Replica {
        Replica::start_with(config(listen))
    }

    /// A replica with the cluster secret `SECRET`.
    fn with_secret(listen: &str) -> Replica {
        Replica::start_with_secret(config_with(listen, Some(SECRET), "300ms"))
    }

    fn start_with_secret(config: Config) -> Replica {
        let mut replica = Replica::start_with(config);
        replica.keys = Some(Keyring::single(SECRET).expect("a valid secret"));
        replica
    }

    /// A replica (with `SECRET` when `secret`) whose view does not lose its unreachable
    /// members for a minute, so that only the messages a test sends change it.
    fn steady(secret: bool) -> Replica {
        match secret {
            true => Replica::start_with_secret(config_with(ME, Some(SECRET), "60s")),
            false => Replica::start_with(config_with(ME, None, "60s")),
        }
    }

    fn start_with(config: Config) -> Replica {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let node = rt.block_on(async {
            let node = Node::new(config).expect("a node");
            causalkv::server::node::start(&node);
            wait_until_ready(&node).await;
            node
        });
        let app = causalkv::server::api::router(node);
        Replica {
            rt,
            app,
            keys: None,
            source: "127.0.0.1:40000".parse().expect("an address"),
        }
    }

    fn call(&self, method: Method, uri: &str, body: Body) -> Reply {
        self.call_with(method, uri, None, body)
    }

    fn call_with(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: Body,
    ) -> Reply {
        let mut request = Request::builder().method(method.clone()).uri(uri);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(body).expect("a well-formed request");
        let request = self.rt.block_on(self.as_peer(request));
        self.send(request)
    }

    /// Adds what the listener and a peer add to an internal request: the connection's
    /// source, the sender named in the body, and with a secret, the signature.
    async fn as_peer(&self, request: Request<Body>) -> Request<Body> {
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(Remote {
            addr: self.source,
            peer_certificate: false,
        });
        let bytes = body.collect().await.expect("a body").to_bytes();
        if parts.uri.path().starts_with("/internal/") {
            let from = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("from")?.as_str().map(str::to_owned));
            if let Some(from) = from.filter(|f| HeaderValue::from_str(f).is_ok()) {
                parts
                    .headers
                    .insert(auth::FROM, from.parse().expect("checked"));
                if let Some(keys) = &self.keys {
                    let signed = auth::sign_request(
                        keys,
                        parts.method.as_str(),
                        parts.uri.path(),
                        &from,
                        now_ms(),
                        &auth::nonce(),
                        &bytes,
                    );
                    for (name, value) in signed_headers(&signed) {
                        parts.headers.insert(name, value.parse().expect("ASCII"));
                    }
                }
            }
        }
        Request::from_parts(parts, Body::from(bytes))
    }

    /// Sends a request exactly as given.
    fn send(&self, request: Request<Body>) -> Reply {
        self.rt.block_on(async {
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.app.clone().oneshot(request));
            let response = answer
                .await
                .unwrap_or_else(|_| panic!("no answer within {REQUEST_TIMEOUT:?}"))
                .expect("the router is infallible");
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = response
                .into_body()
                .collect()
                .await
                .expect("a readable body")
                .to_bytes();
            Reply {
                status,
                content_type,
                body,
            }
        })
    }

    /// A `/kvs/<key>` request; `body: None` sends no body at all.
    fn kvs(&self, method: Method, key: &str, body: Option<&Value>) -> Reply {
        let body = body.map_or_else(Body::empty, |v| Body::from(v.to_string()));
        self.call(method, &kvs_uri(key), body)
    }

    fn put(&self, key: &str, value: &Value, metadata: &Value) -> Reply {
        let body = json!({ "value": value, "causal-metadata": metadata });
        self.kvs(Method::PUT, key, Some(&body))
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, Body::from(body.to_string()))
    }

    fn view(&self) -> Vec<Value> {
        let reply = self.call(Method::GET, "/view", Body::empty());
        assert_eq!(reply.status, StatusCode::OK, "GET /view: {reply:?}");
        match reply.json()["view"].take() {
            Value::Array(list) => list,
            other => panic!("GET /view answered {other}"),
        }
    }
}

async fn wait_until_ready(node: &Node) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !node.is_ready() {
        assert!(
            Instant::now() < deadline,
            "not ready within {READY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `/kvs/<key>` with every byte of `key` but the unreserved ones percent-encoded, so the
/// handler sees exactly `key`.
fn kvs_uri(key: &str) -> String {
    let mut uri = String::from("/kvs/");
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            uri.push(char::from(byte));
        } else {
            write!(uri, "%{byte:02X}").expect("writing to a String");
        }
    }
    uri
}

/// `path` as a URI: bytes a URI may not carry are percent-encoded, but `%` and `?` are
/// kept, so invalid escapes and stray queries reach the server as they are.
fn raw_uri(path: &str) -> String {
    let mut uri = String::new();
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%?".contains(&byte) {
            uri.push(char::from(byte));
        } else {
            write!(uri, "%{byte:02X}").expect("writing to a String");
        }
    }
    uri
}

/// What the router answered.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// The `error` sentence, if the body is an object that has one.
    fn error(&self) -> Option<String> {
        let body: Value = serde_json::from_slice(&self.body).ok()?;
        body.get("error")?.as_str().map(str::to_owned)
    }

    /// What every answer must be: JSON, labelled so, and `{"error": "..."}` for errors.
    /// Answers to `HEAD` carry the headers but no body.
    fn check_shape(&self, method: &Method) -> TestCaseResult {
        prop_assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "content type of {:?}",
            self
        );
        if *method == Method::HEAD {
            prop_assert!(self.body.is_empty(), "HEAD answered a body: {:?}", self);
            return Ok(());
        }
        // Checked as raw JSON: a stored value may nest deeper than `Value` parses.
        let raw = serde_json::from_slice::<&RawValue>(&self.body);
        prop_assert!(raw.is_ok(), "body is not JSON: {:?}", self);
        if self.status.is_client_error() || self.status.is_server_error() {
            prop_assert!(
                self.error().is_some(),
                "error without a sentence: {:?}",
                self
            );
        }
        Ok(())
    }

    /// Not a 5xx, unless it is the causal 503 (checked with its exact sentence).
    fn check_not_a_crash(&self) -> TestCaseResult {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            let error = self.error();
            prop_assert_eq!(error.as_deref(), Some(ERR_CAUSAL), "{:?}", self);
        } else {
            prop_assert!(!self.status.is_server_error(), "server error: {:?}", self);
        }
        Ok(())
    }

    fn check_status_in(&self, allowed: &[u16]) -> TestCaseResult {
        prop_assert!(
            allowed.contains(&self.status.as_u16()),
            "status not in {:?}: {:?}",
            allowed,
            self
        );
        Ok(())
    }
}

/// Runs `test` on `cases` inputs; a failure panics with the minimal failing input (it is
/// not persisted to a regressions file: the panic message is the record).
fn check<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult) {
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if let Err(failure) = TestRunner::new(config).run(&strategy, test) {
        panic!("{failure}");
    }
}

// ---------------------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------------------

fn arb_method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::PUT,
        Method::DELETE,
        Method::POST,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::from_bytes(b"BREW").expect("a valid extension method"),
    ])
}

/// Numbers that break arithmetic more often than uniform ones do.
fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0..4u64,
        prop::sample::select(vec![u64::MAX, u64::MAX - 1, i64::MAX as u64, 1 << 53]),
    ]
}

fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        arb_u64().prop_map(Value::from),
        (prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO)
            .prop_map(Value::from),
    ]
}

fn arb_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        arb_number(),
        "\\PC{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A value nested `depth` arrays or objects deep.
fn nested(depth: usize, objects: bool, leaf: Value) -> Value {
    (0..depth).fold(leaf, |inner, _| match objects {
        true => json!({ "v": inner }),
        false => json!([inner]),
    })
}

/// Any JSON value, sometimes nested deeply (but shallower than what `Value` parses back).
fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => arb_json(),
        1 => (1..100usize, any::<bool>(), arb_json()).prop_map(|(d, o, l)| nested(d, o, l)),
    ]
}

/// Keys of any length, mostly short, of any characters.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{1,50}",
        2 => "[a-z0-9]{1,12}",
        1 => "[a-z]{45,60}",
        1 => "[ %/?#.]{1,8}",
    ]
}

fn arb_path() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "/",
        "/kvs",
        "/kvs/",
        "/kvs//",
        "/kvs/a/b/c",
        "//kvs/x",
        "/KVS/x",
        "/view",
        "/view/",
        "/view/x",
        "/VIEW",
        "/internal",
        "/internal/",
        wire::HEARTBEAT,
        wire::ANNOUNCE,
        wire::VIEW_CHANGE,
        wire::REPLICATE,
        wire::SYNC,
        "/kvs/%",
        "/kvs/%zz",
        "/kvs/%e9",
        "/kvs/%ff%fe",
        "/kvs/%c3%28",
        "/kvs/%2F",
        "/kvs/%00",
        "/kvs/%2e%2e",
        "/kvs/..",
        "/kvs/.",
    ]);
    let key = prop_oneof![
        "\\PC{0,60}",
        "[%0-9a-fA-Fg]{0,40}",
        (0..3000usize).prop_map(|n| "k".repeat(n)),
    ];
    let path = prop_oneof![
        2 => fixed.prop_map(str::to_owned),
        3 => key.prop_map(|k| format!("/kvs/{k}")),
        1 => "/internal/[a-z]{0,12}",
        1 => "(/[^/?#]{0,10}){1,4}",
    ];
    (path, prop::option::of("[a-z=&%]{0,10}")).prop_map(|(path, query)| match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    })
}

/// A JSON body of exactly `len` bytes (for `len` ≥ 14).
fn body_of_len(len: usize) -> Vec<u8> {
    let pad = len.saturating_sub(r#"{"value":""}"#.len());
    format!(r#"{{"value":"{}"}}"#, "x".repeat(pad)).into_bytes()
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..300),
        arb_json().prop_map(|v| v.to_string().into_bytes()),
        "\\PC{0,200}".prop_map(String::into_bytes),
        (MAX_BODY - 16..MAX_BODY + 16).prop_map(body_of_len),
    ]
    .prop_map(Bytes::from)
}

fn arb_content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(vec![
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "garbage",
    ]))
}

/// Anything a `causal-metadata` field might hold, mostly the `null` (or absent: `None`)
/// of a first request, which leaves the rest of the body to decide the answer.
fn arb_metadata() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => Just(None),
        3 => Just(Some(Value::Null)),
        1 => "[A-Za-z0-9_-]{0,64}".prop_map(|s| Some(Value::from(s))),
        1 => "[A-Za-z0-9+/]{0,64}={0,2}".prop_map(|s| Some(Value::from(s))),
        1 => "\\PC{0,30}".prop_map(|s| Some(Value::from(s))),
        1 => arb_number().prop_map(Some),
        1 => arb_json().prop_map(Some),
    ]
}

/// Socket-address candidates: valid ones (of unreachable or own ports), near misses and
/// any JSON.
fn arb_socket_address() -> impl Strategy<Value = Value> {
    let text = prop::sample::select(vec![
        ME,
        STRANGER,
        "127.0.0.1:3",
        " 127.0.0.1:4 ",
        "[::1]:2",
        "127.0.0.1",
        "localhost:2",
        "127.0.0.1:99999",
        "127.0.0.1:-1",
        "",
    ]);
    prop_oneof![
        text.prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        arb_json(),
    ]
}

/// An object body: extra fields, then the ones the handler reads (`None` leaves one out).
#[derive(Clone, Debug)]
struct ObjectBody {
    extra: Map<String, Value>,
    fields: Vec<(&'static str, Option<Value>)>,
}

impl ObjectBody {
    fn render(&self) -> Value {
        let mut object = self.extra.clone();
        for (name, value) in &self.fields {
            match value {
                Some(value) => object.insert((*name).to_owned(), value.clone()),
                None => object.remove(*name),
            };
        }
        Value::Object(object)
    }

    fn field(&self, name: &str) -> Option<&Value> {
        let (_, value) = self.fields.iter().find(|(n, _)| *n == name)?;
        value.as_ref()
    }
}

fn arb_extra_fields() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z-]{1,16}", arb_json(), 0..3)
        .prop_map(|m| m.into_iter().collect())
}

fn arb_kvs_body() -> impl Strategy<Value = ObjectBody> {
    let value = prop::option::weighted(0.8, arb_value());
    (arb_extra_fields(), value, arb_metadata()).prop_map(|(extra, value, metadata)| ObjectBody {
        extra,
        fields: vec![("value", value), ("causal-metadata", metadata)],
    })
}

fn arb_view_body() -> impl Strategy<Value = ObjectBody> {
    let address = prop::option::weighted(0.9, arb_socket_address());
    (arb_extra_fields(), address).prop_map(|(extra, address)| ObjectBody {
        extra,
        fields: vec![("socket-address", address)],
    })
}

/// A JSON request to a client endpoint: an object of the expected shape, or any JSON.
#[derive(Clone, Debug)]
enum Shaped {
    Kvs {
        method: Method,
        key: String,
        body: ObjectBody,
    },
    View {
        method: Method,
        body: ObjectBody,
    },
    Other {
        method: Method,
        key: String,
        body: Value,
    },
}

fn arb_shaped() -> impl Strategy<Value = Shaped> {
    let kvs_method =
        prop::sample::select(vec![Method::PUT, Method::PUT, Method::GET, Method::DELETE]);
    let view_method = prop::sample::select(vec![Method::PUT, Method::DELETE]);
    prop_oneof![
        5 => (kvs_method.clone(), arb_key(), arb_kvs_body())
            .prop_map(|(method, key, body)| Shaped::Kvs { method, key, body }),
        2 => (view_method, arb_view_body())
            .prop_map(|(method, body)| Shaped::View { method, body }),
        1 => (kvs_method, arb_key(), arb_json())
            .prop_map(|(method, key, body)| Shaped::Other { method, key, body }),
    ]
}

/// One edit of a metadata string.
#[derive(Clone, Debug)]
enum Edit {
    Replace(usize, char),
    Insert(usize, char),
    Delete(usize),
    Truncate(usize),
    Append(String),
}

/// Mostly characters of the metadata's own alphabet (base64url), so edits stay plausible.
fn arb_char() -> impl Strategy<Value = char> {
    const BASE64URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let alphabet: Vec<char> = BASE64URL.chars().collect();
    prop_oneof![3 => prop::sample::select(alphabet), 1 => any::<char>()]
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), arb_char()).prop_map(|(at, c)| Edit::Replace(at, c)),
        (any::<usize>(), arb_char()).prop_map(|(at, c)| Edit::Insert(at, c)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        "[A-Za-z0-9_=-]{1,8}".prop_map(Edit::Append),
    ]
}

fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        let len = chars.len();
        match edit {
            Edit::Replace(at, c) if len > 0 => chars[at % len] = *c,
            Edit::Insert(at, c) => chars.insert(at % (len + 1), *c),
            Edit::Delete(at) if len > 0 => {
                chars.remove(at % len);
            }
            Edit::Truncate(at) => chars.truncate(at % (len + 1)),
            Edit::Append(tail) => chars.extend(tail.chars()),
            Edit::Replace(..) | Edit::Delete(_) => {}
        }
    }
    chars.into_iter().collect()
}

/// Replica addresses as a peer might send them: this node, unreachable ones, garbage.
fn arb_addr() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(STRANGER.to_owned()),
        1 => Just(ME.to_owned()),
        2 => "127\\.0\\.0\\.1:[2-9]",
        1 => "\\PC{1,20}",
    ]
}

fn arb_incarnation() -> impl Strategy<Value = Incarnation> {
    (arb_addr(), arb_u64()).prop_map(|(addr, epoch)| Incarnation::new(addr, epoch))
}

fn arb_clock() -> impl Strategy<Value = Clock> {
    let entries = prop::collection::vec((arb_incarnation(), arb_u64()), 0..4);
    let floors = prop::collection::vec((arb_addr(), arb_u64()), 0..2);
    (entries, floors).prop_map(|(entries, floors)| {
        let mut clock = Clock::from_entries(entries);
        for (addr, floor) in floors {
            clock.raise_floor(&addr.into(), floor);
        }
        clock
    })
}

fn raw_value(value: &Value) -> Arc<RawValue> {
    RawValue::from_string(value.to_string())
        .expect("a serialized value is JSON")
        .into()
}

/// Replicated writes, mostly deliverable at once (first of their incarnation, no deps).
fn arb_write() -> impl Strategy<Value = Write> {
    let value = prop::option::of(arb_json());
    let seq = prop_oneof![3 => Just(1u64), 1 => arb_u64()];
    let deps = prop_oneof![3 => Just(Clock::new()), 1 => arb_clock()];
    let entry =
        (value, arb_u64(), arb_incarnation(), seq).prop_map(|(value, lamport, inc, seq)| Entry {
            value: value.filter(|v| !v.is_null()).map(|v| raw_value(&v)),
            lamport,
            dot: Dot { inc, seq },
        });
    (arb_key(), entry, deps).prop_map(|(key, entry, deps)| Write {
        key: key.into(),
        entry,
        deps,
    })
}

/// A batch of writes, mostly from this node itself: the one sender always in its view.
fn arb_replicate() -> impl Strategy<Value = Replicate> {
    let from = prop_oneof![3 => Just(STRANGER.to_owned()), 1 => arb_addr()];
    let writes = prop::collection::vec(arb_write().prop_map(Arc::new), 0..4);
    (from, writes).prop_map(|(from, writes)| Replicate {
        from: from.into(),
        writes,
    })
}

fn to_json(message: &impl serde::Serialize) -> Value {
    serde_json::to_value(message).expect("a wire message serializes")
}

/// A well-formed peer message and the endpoint it belongs to.
fn arb_peer_message() -> impl Strategy<Value = (&'static str, Value)> {
    let op = prop::sample::select(vec![ViewOp::Add, ViewOp::Remove]);
    prop_oneof![
        (arb_addr(), prop::option::of(arb_u64()), arb_clock()).prop_map(|(from, epoch, clock)| {
            let message = Heartbeat {
                from: from.into(),
                epoch,
                clock,
            };
            (wire::HEARTBEAT, to_json(&message))
        }),
        arb_addr().prop_map(|from| (wire::ANNOUNCE, json!({ "from": from }))),
        (arb_addr(), op, arb_addr()).prop_map(|(from, op, addr)| {
            let message = ViewChange {
                from: from.into(),
                op,
                addr: addr.into(),
            };
            (wire::VIEW_CHANGE, to_json(&message))
        }),
        arb_replicate().prop_map(|message| (wire::REPLICATE, to_json(&message))),
        (arb_addr(), arb_clock()).prop_map(|(from, clock)| {
            (
                wire::SYNC,
                to_json(&SyncRequest {
                    from: from.into(),
                    clock,
                    after: None,
                }),
            )
        }),
    ]
}

/// How a peer message is spoiled before it is sent.
#[derive(Clone, Debug)]
enum Spoil {
    Nothing,
    DropField(usize),
    ReplaceField(usize, Value),
    AddField(String, Value),
}

fn arb_spoil() -> impl Strategy<Value = Spoil> {
    prop_oneof![
        3 => Just(Spoil::Nothing),
        1 => any::<usize>().prop_map(Spoil::DropField),
        1 => (any::<usize>(), arb_json()).prop_map(|(at, v)| Spoil::ReplaceField(at, v)),
        1 => ("[a-z]{1,8}", arb_json()).prop_map(|(name, v)| Spoil::AddField(name, v)),
    ]
}

fn spoil(message: Value, how: &Spoil) -> Value {
    let Value::Object(mut object) = message else {
        return message;
    };
    let nth_key = |object: &Map<String, Value>, at: usize| {
        object.keys().nth(at % object.len().max(1)).cloned()
    };
    match how {
        Spoil::Nothing => {}
        Spoil::DropField(at) => {
            if let Some(key) = nth_key(&object, *at) {
                object.remove(&key);
            }
        }
        Spoil::ReplaceField(at, value) => {
            if let Some(key) = nth_key(&object, *at) {
                object.insert(key, value.clone());
            }
        }
        Spoil::AddField(name, value) => {
            object.insert(name.clone(), value.clone());
        }
    }
    Value::Object(object)
}

/// A request to an internal endpoint.
#[derive(Clone, Debug)]
struct InternalRequest {
    method: Method,
    path: &'static str,
    body: Bytes,
}

fn arb_internal_request() -> impl Strategy<Value = InternalRequest> {
    let method = prop_oneof![
        6 => Just(Method::POST),
        1 => prop::sample::select(vec![Method::GET, Method::PUT, Method::DELETE]),
    ];
    let elsewhere = prop::option::weighted(0.1, prop::sample::select(INTERNAL.to_vec()));
    let message = (arb_peer_message(), arb_spoil(), elsewhere).prop_map(
        |((path, message), how, elsewhere)| {
            let body = spoil(message, &how).to_string();
            (elsewhere.unwrap_or(path), Bytes::from(body))
        },
    );
    let anything = (prop::sample::select(INTERNAL.to_vec()), arb_bytes());
    let body = prop_oneof![4 => message, 1 => anything];
    (method, body).prop_map(|(method, (path, body))| InternalRequest { method, path, body })
}

// ---------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------

/// Any method, path and bytes: never a 5xx but the causal 503, always JSON.
#[test]
fn any_request_gets_a_json_answer_and_no_server_error() {
    let replica = Replica::start(ME);
    let strategy = (arb_method(), arb_path(), arb_content_type(), arb_bytes());
    check(1000, strategy, |(method, path, content_type, body)| {
        let reply = replica.call_with(
            method.clone(),
            &raw_uri(&path),
            content_type,
            Body::from(body),
        );
        reply.check_not_a_crash()?;
        reply.check_shape(&method)
    });
}

/// Whether the contract promises that this PUT stores its value.
fn must_store(key: &str, body: &ObjectBody, encoded_len: usize) -> bool {
    let has_value = body.field("value").is_some_and(|v| !v.is_null());
    let no_metadata = body.field("causal-metadata").is_none_or(Value::is_null);
    let key_chars = key.chars().count();
    has_value && no_metadata && (1..=MAX_KEY_CHARS).contains(&key_chars) && encoded_len <= MAX_BODY
}

/// A stored value is read back as the JSON it was written as.
fn check_stored(replica: &Replica, key: &str, put: &Reply, value: &Value) -> TestCaseResult {
    put.check_status_in(&[200, 201])?;
    let answer = put.json();
    let result = if put.status == StatusCode::CREATED {
        "created"
    } else {
        "replaced"
    };
    prop_assert_eq!(answer["result"].as_str(), Some(result), "{:?}", put);
    prop_assert!(answer["causal-metadata"].is_string(), "{:?}", put);
    let got = replica.kvs(Method::GET, key, None);
    prop_assert_eq!(got.status, StatusCode::OK, "GET after PUT: {:?}", got);
    let expected: Value = serde_json::from_str(&value.to_string()).expect("JSON");
    prop_assert_eq!(&got.json()["value"], &expected, "GET after PUT: {:?}", got);
    Ok(())
}

/// Arbitrary JSON shapes on `/kvs` and `/view`.
#[test]
fn json_bodies_get_contract_statuses_and_puts_are_stored() {
    let replica = Replica::start(ME);
    check(500, arb_shaped(), |request| {
        let (method, reply) = match &request {
            Shaped::Kvs { method, key, body } => {
                let json = body.render();
                let reply = replica.kvs(method.clone(), key, Some(&json));
                let len = json.to_string().len();
                if *method == Method::PUT && must_store(key, body, len) {
                    let value = body.field("value").expect("checked by must_store");
                    check_stored(&replica, key, &reply, value)?;
                }
                (method, reply)
            }
            Shaped::View { method, body } => {
                let reply = replica.call(
                    method.clone(),
                    "/view",
                    Body::from(body.render().to_string()),
                );
                (method, reply)
            }
            Shaped::Other { method, key, body } => {
                (method, replica.kvs(method.clone(), key, Some(body)))
            }
        };
        reply.check_status_in(&[200, 201, 400, 404, 413, 503])?;
        reply.check_not_a_crash()?;
        reply.check_shape(method)
    });
}

/// Metadata this node produced, after one or more writes and reads.
fn genuine_metadata(replica: &Replica) -> Vec<String> {
    let mut metadata = Vec::new();
    let mut latest = Value::Null;
    for (key, value) in [("m1", 1), ("m2", 2), ("m1", 3)] {
        let reply = replica.put(key, &json!(value), &latest);
        latest = reply.json()["causal-metadata"].clone();
        metadata.push(latest.as_str().expect("metadata is a string").to_owned());
    }
    let missing = replica.kvs(Method::GET, "never-written", None);
    if let Some(m) = missing.json()["causal-metadata"].as_str() {
        metadata.push(m.to_owned());
    }
    metadata
}

fn kvs_body(metadata: &str) -> Value {
    json!({ "value": "fuzz", "causal-metadata": metadata })
}

/// Mutated genuine metadata: refused with a sentence or served, never a crash.
#[test]
fn mutated_metadata_never_crashes() {
    let replica = Replica::start(ME);
    let genuine = genuine_metadata(&replica);
    let method = prop::sample::select(vec![Method::PUT, Method::GET, Method::DELETE]);
    let key = prop::sample::select(vec!["m1", "m2", "fuzz"]);
    let edits = prop::collection::vec(arb_edit(), 0..4);
    let strategy = (prop::sample::select(genuine.clone()), edits, method, key);
    check(500, strategy, |(original, edits, method, key)| {
        let mutated = apply_edits(&original, &edits);
        let reply = replica.kvs(method.clone(), key, Some(&kvs_body(&mutated)));
        reply.check_status_in(&[200, 201, 400, 404, 503])?;
        reply.check_not_a_crash()?;
        reply.check_shape(&method)?;
        if mutated == original {
            reply.check_status_in(&[200, 201, 404])?;
        }
        Ok(())
    });
}

/// Well-formed metadata that names writes this node may never have seen: waited for and
/// answered 503, never refused as malformed (causalkv could have produced it).
#[test]
fn well_formed_foreign_metadata_is_never_malformed() {
    let replica = Replica::start(ME);
    let method = prop::sample::select(vec![Method::PUT, Method::GET, Method::DELETE]);
    let incarnation = ("127\\.0\\.0\\.[0-9]{1,3}:[0-9]{1,5}", arb_u64())
        .prop_map(|(addr, epoch)| Incarnation::new(addr, epoch));
    let clock = prop::collection::vec((incarnation, arb_u64()), 0..5).prop_map(Clock::from_entries);
    check(100, (clock, method), |(clock, method)| {
        let body = kvs_body(&metadata::encode(&clock));
        let reply = replica.kvs(method.clone(), "foreign", Some(&body));
        reply.check_status_in(&[200, 201, 404, 503])?;
        reply.check_not_a_crash()?;
        reply.check_shape(&method)
    });
}

/// The view lists socket addresses only, as `GET /view` promises.
fn check_view(replica: &Replica) -> TestCaseResult {
    for entry in replica.view() {
        let addr = entry.as_str().map(str::parse::<SocketAddr>);
        prop_assert!(matches!(addr, Some(Ok(_))), "GET /view lists {}", entry);
    }
    Ok(())
}

/// After any peer messages, clients are still served: a value is created, replaced and
/// read back (two local writes, so that a clock or counter pushed to its limit shows).
fn check_still_serving(replica: &Replica) -> TestCaseResult {
    for value in [json!("first"), json!("second")] {
        let put = replica.put("alive", &value, &Value::Null);
        check_stored(replica, "alive", &put, &value)?;
    }
    Ok(())
}

/// Arbitrary peer messages on the internal endpoints: answered 2xx or 4xx in JSON, and
/// leave a replica that lists only socket addresses and still serves clients. Each case
/// gets a fresh node, so that a failure shrinks to the messages that cause it. The
/// stranger announces itself first, so that its messages reach the handlers.
fn fuzz_internal_endpoints(start: fn() -> Replica) {
    let requests = prop::collection::vec(arb_internal_request(), 1..4);
    check(300, requests, |requests| {
        let replica = start();
        replica.post(wire::ANNOUNCE, &json!({ "from": STRANGER }));
        for InternalRequest { method, path, body } in requests {
            let reply = replica.call(method.clone(), path, Body::from(body));
            prop_assert!(
                reply.status.is_success() || reply.status.is_client_error(),
                "{:?}",
                reply
            );
            reply.check_shape(&method)?;
            // Before any write: a write that fails to reach a peer drops it from the view.
            check_view(&replica)?;
        }
        check_still_serving(&replica)
    });
}

#[test]
fn internal_endpoints_answer_in_json_and_leave_a_working_replica() {
    fuzz_internal_endpoints(|| Replica::start(ME));
}

/// The same garbage, signed with the cluster's own secret: still no panic, no 5xx, and a
/// replica that serves.
#[test]
fn authenticated_garbage_leaves_a_working_replica() {
    fuzz_internal_endpoints(|| Replica::with_secret(ME));
}

// ---------------------------------------------------------------------------------------
// Forged, tampered and replayed peer messages.
// ---------------------------------------------------------------------------------------

/// A peer message that would change the replica if it were accepted.
fn harmful_messages() -> Vec<(&'static str, Value)> {
    let write = json!({
        "key": "injected",
        "entry": {
            "value": "evil",
            "lamport": 5,
            "dot": { "inc": { "addr": STRANGER, "epoch": 1 }, "seq": 1 },
        },
        "deps": { "entries": [] },
    });
    vec![
        (
            wire::HEARTBEAT,
            json!({ "from": STRANGER, "epoch": 1, "clock": {"entries": []} }),
        ),
        (wire::ANNOUNCE, json!({ "from": "127.0.0.1:8" })),
        (
            wire::VIEW_CHANGE,
            json!({ "from": STRANGER, "op": "add", "addr": "127.0.0.1:9" }),
        ),
        (
            wire::VIEW_CHANGE,
            json!({ "from": STRANGER, "op": "remove", "addr": STRANGER }),
        ),
        (
            wire::REPLICATE,
            json!({ "from": STRANGER, "writes": [write] }),
        ),
        (
            wire::SYNC,
            json!({ "from": STRANGER, "clock": {"entries": []} }),
        ),
    ]
}

/// What a refused message must leave unchanged: the view, the store, the clock.
#[derive(Debug, PartialEq)]
struct Snapshot {
    view: Vec<Value>,
    injected: StatusCode,
    clock: Value,
}

impl Replica {
    fn snapshot(&self) -> Snapshot {
        // The replica's clock, as a genuine probe from the stranger sees it.
        let probe = self.post(
            wire::HEARTBEAT,
            &json!({ "from": STRANGER, "epoch": null, "clock": {"entries": []} }),
        );
        assert_eq!(probe.status, StatusCode::OK, "{probe:?}");
        Snapshot {
            view: self.view(),
            injected: self.kvs(Method::GET, "injected", None).status,
            clock: probe.json()["clock"].clone(),
        }
    }

    fn request(&self, path: &str, body: &Value, headers: &[(&str, String)]) -> Request<Body> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .extension(Remote {
                addr: self.source,
                peer_certificate: false,
            });
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request
            .body(Body::from(body.to_string()))
            .expect("a request")
    }

    /// The headers of `body` sent to `path`, signed with `keys` at `time_ms`.
    fn signed(
        &self,
        keys: &Keyring,
        path: &str,
        body: &Value,
        time_ms: u64,
    ) -> Vec<(&str, String)> {
        let from = body["from"].as_str().expect("a sender").to_owned();
        let signed = auth::sign_request(
            keys,
            "POST",
            path,
            &from,
            time_ms,
            &auth::nonce(),
            body.to_string().as_bytes(),
        );
        let mut headers = vec![(auth::FROM, from)];
        headers.extend(signed_headers(&signed));
        headers
    }
}

fn assert_refused(reply: &Reply, what: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {reply:?}");
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    assert!(reply.error().is_some(), "{what}: {reply:?}");
}

#[test]
fn with_a_secret_forged_tampered_stale_and_replayed_messages_change_nothing() {
    let replica = Replica::steady(true);
    replica.post(wire::ANNOUNCE, &json!({ "from": STRANGER }));
    let keys = replica.keys.as_ref().expect("a secret");
    let wrong = Keyring::single("not-the-cluster-secret-at-all!!").expect("a secret");
    let window = auth::WINDOW.as_millis() as u64;
    for (path, body) in harmful_messages() {
        let before = replica.snapshot();
        let unsigned = vec![(auth::FROM, body["from"].as_str().unwrap_or("").to_owned())];
        let forged = replica.signed(&wrong, path, &body, now_ms());
        let stale = replica.signed(keys, path, &body, now_ms() - 2 * window);
        let future = replica.signed(keys, path, &body, now_ms() + 2 * window);
        let tampered = replica.signed(keys, path, &json!({"from": STRANGER, "x": 1}), now_ms());
        let mut other_sender = replica.signed(keys, path, &body, now_ms());
        other_sender[0].1 = "127.0.0.1:3".into();
        for (what, headers) in [
            ("unsigned", unsigned),
            ("forged", forged),
            ("stale", stale),
            ("from the future", future),
            ("tampered", tampered),
            ("another sender", other_sender),
        ] {
            let reply = replica.send(replica.request(path, &body, &headers));
            assert_refused(&reply, &format!("{what} {path}"));
            assert_eq!(
                replica.snapshot(),
                before,
                "{what} {path} changed the replica"
            );
        }
        // Genuine once; the same request again is a replay.
        let genuine = replica.signed(keys, path, &body, now_ms());
        let first = replica.send(replica.request(path, &body, &genuine));
        assert!(
            first.status.is_success() || first.status == StatusCode::CONFLICT,
            "{path}: {first:?}"
        );
        let after_first = replica.snapshot();
        let replay = replica.send(replica.request(path, &body, &genuine));
        assert_refused(&replay, &format!("replayed {path}"));
        assert_eq!(
            replica.snapshot(),
            after_first,
            "replayed {path} changed the replica"
        );
    }
    check_still_serving(&replica).expect("still serving");
}

#[test]
fn answers_are_signed_for_the_request_they_answer() {
    let replica = Replica::with_secret(ME);
    let keys = replica.keys.as_ref().expect("a secret");
    let body = json!({ "from": STRANGER });
    let headers = replica.signed(keys, wire::ANNOUNCE, &body, now_ms());
    let nonce = headers
        .iter()
        .find(|(n, _)| *n == auth::NONCE)
        .expect("a nonce")
        .1
        .clone();
    let request = replica.request(wire::ANNOUNCE, &body, &headers);
    let response = replica
        .rt
        .block_on(replica.app.clone().oneshot(request))
        .expect("an answer");
    let status = response.status().as_u16();
    let mac = response
        .headers()
        .get(auth::MAC)
        .expect("a signed answer")
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = replica
        .rt
        .block_on(response.into_body().collect())
        .expect("a body")
        .to_bytes();
    assert_eq!(
        auth::verify_answer(keys, &nonce, status, ME, &bytes, &mac),
        Ok(())
    );
    assert!(auth::verify_answer(keys, "another-nonce", status, ME, &bytes, &mac).is_err());
}

#[test]
fn without_a_secret_only_members_from_their_own_address_are_heard() {
    let mut replica = Replica::steady(false);
    replica.post(wire::ANNOUNCE, &json!({ "from": STRANGER }));
    let from_member =
        |body: &Value| vec![(auth::FROM, body["from"].as_str().unwrap_or("").to_owned())];
    // From a foreign host that claims to be the stranger, or this replica itself.
    replica.source = "10.9.9.9:40000".parse().unwrap();
    for (path, body) in harmful_messages() {
        let before = replica.snapshot_from_own_address();
        let reply = replica.send(replica.request(path, &body, &from_member(&body)));
        assert_refused(&reply, &format!("foreign {path}"));
        assert_eq!(
            replica.snapshot_from_own_address(),
            before,
            "foreign {path} changed the replica"
        );
    }
    replica.source = "127.0.0.1:40000".parse().unwrap();
    let before = replica.snapshot();
    for (path, mut body) in harmful_messages() {
        body["from"] = json!(ME);
        let reply = replica.send(replica.request(path, &body, &from_member(&body)));
        assert_refused(&reply, &format!("{path} claiming to be the replica itself"));
    }
    // Without the header that names the sender.
    for (path, body) in harmful_messages() {
        let reply = replica.send(replica.request(path, &body, &[]));
        assert_refused(&reply, &format!("{path} without a sender"));
    }
    // From the right address but not a member: only an announcement is heard.
    let stranger_view_change = json!({ "from": "127.0.0.1:7", "op": "add", "addr": "127.0.0.1:9" });
    let reply = replica.send(replica.request(
        wire::VIEW_CHANGE,
        &stranger_view_change,
        &from_member(&stranger_view_change),
    ));
    assert_refused(&reply, "a view change from a non-member");
    assert_eq!(
        replica.snapshot(),
        before,
        "refused messages changed the replica"
    );
    check_still_serving(&replica).expect("still serving");
}

impl Replica {
    /// A snapshot taken with requests from this replica's own host.
    fn snapshot_from_own_address(&mut self) -> Snapshot {
        let source = std::mem::replace(&mut self.source, "127.0.0.1:40000".parse().unwrap());
        let snapshot = self.snapshot();
        self.source = source;
        snapshot
    }
}

// ---------------------------------------------------------------------------------------
// The exact contract sentences.
// ---------------------------------------------------------------------------------------

fn assert_exact_error(reply: &Reply, status: u16, sentence: &str) {
    assert_eq!(reply.status.as_u16(), status, "{reply:?}");
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/json"),
        "{reply:?}"
    );
    assert_eq!(reply.json(), json!({ "error": sentence }), "{reply:?}");
}

#[test]
fn a_key_of_51_characters_is_too_long() {
    let replica = Replica::start(ME);
    let reply = replica.put(&"k".repeat(51), &json!(1), &Value::Null);
    assert_exact_error(&reply, 400, ERR_KEY_TOO_LONG);
    let reply = replica.put(&"é".repeat(50), &json!(1), &Value::Null);
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "50 characters: {reply:?}"
    );
}

#[test]
fn a_put_without_a_value_or_with_null_is_refused() {
    let replica = Replica::start(ME);
    for body in [
        json!({ "causal-metadata": null }),
        json!({ "value": null, "causal-metadata": null }),
    ] {
        let reply = replica.kvs(Method::PUT, "tea", Some(&body));
        assert_exact_error(&reply, 400, ERR_NO_VALUE);
    }
    let reply = replica.kvs(Method::GET, "tea", None);
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "refused PUTs store nothing: {reply:?}"
    );
}

#[test]
fn metadata_of_writes_never_seen_is_answered_503() {
    let stranger = Replica::start(STRANGER);
    let put = stranger.put("k", &json!("elsewhere"), &Value::Null);
    assert_eq!(put.status, StatusCode::CREATED, "{put:?}");
    let foreign = put.json()["causal-metadata"].clone();

    let replica = Replica::start(ME);
    let body = json!({ "value": 1, "causal-metadata": foreign });
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let reply = replica.kvs(method, "k", Some(&body));
        assert_exact_error(&reply, 503, ERR_CAUSAL);
    }
    // Validation comes before the causal check.
    let reply = replica.kvs(Method::PUT, &"k".repeat(51), Some(&body));
    assert_exact_error(&reply, 400, ERR_KEY_TOO_LONG);
    let reply = replica.kvs(
        Method::PUT,
        "k",
        Some(&json!({ "causal-metadata": foreign })),
    );
    assert_exact_error(&reply, 400, ERR_NO_VALUE);
}

#[test]
fn get_and_delete_without_a_body_work() {
    let replica = Replica::start(ME);
    let reply = replica.kvs(Method::GET, "k", None);
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert_eq!(reply.error().as_deref(), Some(ERR_NO_KEY), "{reply:?}");

    let put = replica.put("k", &json!({"a": [1, 2]}), &Value::Null);
    assert_eq!(put.status, StatusCode::CREATED, "{put:?}");
    let reply = replica.kvs(Method::GET, "k", None);
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json()["result"], "found");
    assert_eq!(reply.json()["value"], json!({"a": [1, 2]}));

    let reply = replica.kvs(Method::DELETE, "k", None);
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json()["result"], "deleted");
    let reply = replica.kvs(Method::GET, "k", None);
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
}

#[test]
fn bodies_up_to_the_limit_are_read_and_larger_ones_get_413() {
    let replica = Replica::start(ME);
    let fits = replica.call(
        Method::PUT,
        &kvs_uri("big"),
        Body::from(body_of_len(MAX_BODY)),
    );
    assert_eq!(fits.status, StatusCode::CREATED, "{fits:?}");
    let too_big = replica.call(
        Method::PUT,
        &kvs_uri("big"),
        Body::from(body_of_len(MAX_BODY + 1)),
    );
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE, "{too_big:?}");
    assert_eq!(too_big.content_type.as_deref(), Some("application/json"));
    assert!(too_big.error().is_some(), "{too_big:?}");
}

/// Deeper than `serde_json::Value` parses back: compared as text.
#[test]
fn deeply_nested_values_are_stored_as_sent() {
    let replica = Replica::start(ME);
    let depth = 1500;
    let value = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = format!(r#"{{"value":{value},"causal-metadata":null}}"#);
    let put = replica.call(Method::PUT, &kvs_uri("deep"), Body::from(body));
    assert_eq!(put.status, StatusCode::CREATED, "{put:?}");

    #[derive(serde::Deserialize)]
    struct Found<'a> {
        #[serde(borrow)]
        value: &'a RawValue,
    }
    let got = replica.kvs(Method::GET, "deep", None);
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    let found: Found = serde_json::from_slice(&got.body).expect("a found answer");
    assert_eq!(found.value.get(), value);
}

// ---------------------------------------------------------------------------------------
// Peer messages that the properties above found mishandled, pinned as plain tests.
// ---------------------------------------------------------------------------------------

/// A peer message naming a replica by something other than `IP:PORT`.
fn assert_view_has_socket_addresses_only(replica: &Replica) {
    for entry in replica.view() {
        let addr = entry.as_str().map(str::parse::<SocketAddr>);
        assert!(matches!(addr, Some(Ok(_))), "GET /view lists {entry}");
    }
}

#[test]
fn peers_named_by_anything_but_a_socket_address_never_join_the_view() {
    let replica = Replica::start(ME);
    let announce = replica.post(wire::ANNOUNCE, &json!({ "from": "garbage" }));
    assert!(!announce.status.is_server_error(), "{announce:?}");
    assert_view_has_socket_addresses_only(&replica);

    let change = json!({ "from": ME, "op": "add", "addr": "not an address" });
    let reply = replica.post(wire::VIEW_CHANGE, &change);
    assert!(!reply.status.is_server_error(), "{reply:?}");
    assert_view_has_socket_addresses_only(&replica);
}

#[test]
fn replicated_writes_above_the_lamport_ceiling_are_refused_and_local_writes_go_on() {
    let replica = Replica::start(ME);
    replica.post(wire::ANNOUNCE, &json!({ "from": STRANGER }));
    let write = |lamport: u64, seq: u64| {
        json!({
            "key": "k",
            "entry": {
                "value": 1,
                "lamport": lamport,
                "dot": { "inc": { "addr": STRANGER, "epoch": 1 }, "seq": seq },
            },
            "deps": { "entries": [] },
        })
    };
    let far_ahead = now_ms().saturating_mul(1000).saturating_mul(2);
    for lamport in [u64::MAX, 1 << 62, far_ahead] {
        let reply = replica.post(
            wire::REPLICATE,
            &json!({ "from": STRANGER, "writes": [write(lamport, 1)] }),
        );
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "Lamport time {lamport}: {reply:?}"
        );
    }
    // The highest time a peer may send now: accepted, and writes here go on.
    let ceiling = now_ms().saturating_mul(1000);
    let reply = replica.post(
        wire::REPLICATE,
        &json!({ "from": STRANGER, "writes": [write(ceiling, 1)] }),
    );
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let mut latest = Value::Null;
    for value in 0..20 {
        let put = replica.put("after", &json!(value), &latest);
        assert!(put.status.is_success(), "{put:?}");
        latest = put.json()["causal-metadata"].clone();
        let got = replica.kvs(
            Method::GET,
            "after",
            Some(&json!({"causal-metadata": latest})),
        );
        assert_eq!(
            got.json()["value"],
            json!(value),
            "a later write wins: {got:?}"
        );
    }
}
