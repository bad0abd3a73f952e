//! The trust boundary, against real `causalkv serve` processes on loopback.
//!
//! Someone who can reach a replica's port but holds no secret (or, without a secret,
//! connects from another address) must not be able to inject writes, change views, read
//! the store through the internal endpoints, or wedge replication. Every internal
//! endpoint gets forged, tampered, stale and replayed messages; each must be refused
//! (`401`, JSON) with every replica's view and store unchanged and replication still
//! working. Then: rotating the cluster secret under load without a failed request, TLS
//! from client to replica and between replicas, a slow-header client, a connection flood,
//! and bodies that a refusal leaves unread.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use causalkv::protocol::wire;
use causalkv::server::auth::{self, Keyring};
use causalkv::server::wallclock::now_ms;
use causalkv::tools::client::{Client, Metadata};
use common::pki::Pki;
use common::{
    InSession, Node, READY_TIMEOUT, SETTLE_TIMEOUT, Session, TestCluster, poll_until, until_views,
    within,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SECRET: &str = "trust-suite-secret-0123456789abcdef";
const NEW_SECRET: &str = "trust-suite-rotated-secret-fedcba9876543210";
/// An address on this machine that is not any replica's: a foreign host, as far as the
/// replicas (all on 127.0.0.1) can tell.
const FOREIGN: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A scratch directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("causalkv-trust")
        .join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch directory");
    dir
}

/// Writes a secret file atomically (a replica never reads half of it).
fn write_secret(path: &Path, lines: &[&str]) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, lines.join("\n") + "\n").expect("write secret file");
    fs::rename(&tmp, path).expect("replace secret file");
}

/// An HTTP client whose connections start from `source`.
fn http_from(source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(source)
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client")
}

/// POSTs `body` to `addr`'s `path` with `headers`; the status and JSON answer.
async fn post(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &Value,
) -> (u16, Value) {
    let mut request = http
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let json = response.json().await.expect("a JSON answer");
    (status, json)
}

/// The headers a peer sends with `body`, signed with `keys` at `time_ms`.
fn signed(keys: &Keyring, path: &str, body: &Value, time_ms: u64) -> Vec<(&'static str, String)> {
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
    vec![
        (auth::FROM, from),
        (auth::TIME, signed.time_ms.to_string()),
        (auth::NONCE, signed.nonce),
        (auth::MAC, signed.mac),
    ]
}

fn unsigned(body: &Value) -> Vec<(&'static str, String)> {
    vec![(auth::FROM, body["from"].as_str().unwrap_or("").to_owned())]
}

/// Messages that would change a replica if it accepted them, all claiming to come from
/// `member`, a replica of the cluster; `other` is a third one.
fn harmful_messages(member: &str, other: &str) -> Vec<(&'static str, Value)> {
    let write = json!({
        "key": "injected",
        "entry": {
            "value": "evil",
            "lamport": 1u64 << 40,
            "dot": { "inc": { "addr": member, "epoch": 1 }, "seq": 1 },
        },
        "deps": { "entries": [] },
    });
    vec![
        (
            wire::HEARTBEAT,
            json!({ "from": member, "epoch": 1, "clock": {"entries": []} }),
        ),
        (wire::ANNOUNCE, json!({ "from": member })),
        (
            wire::VIEW_CHANGE,
            json!({ "from": member, "op": "remove", "addr": other }),
        ),
        (
            wire::VIEW_CHANGE,
            json!({ "from": member, "op": "add", "addr": "127.0.0.1:9" }),
        ),
        (
            wire::REPLICATE,
            json!({ "from": member, "writes": [write] }),
        ),
        (
            wire::SYNC,
            json!({ "from": member, "clock": {"entries": []} }),
        ),
    ]
}

/// Every replica lists all of them, holds `key` = `value` and no injected key, and a
/// write at one replica is read at every other: replication works.
async fn assert_unharmed(cluster: &TestCluster, key: &str, value: &Value) {
    let expected = cluster.addrs();
    until_views(&cluster.nodes(), &expected, within(SETTLE_TIMEOUT)).await;
    let mut session = Session::default();
    for node in cluster.nodes() {
        session.get_at(node, key).await.expect_found(value);
        node.get("injected", &Value::Null).await.expect_status(404);
    }
    let marker = json!(format!("after-{}", now_ms()));
    session
        .put_at(cluster.node(0), "replicated", marker.clone())
        .await;
    for node in cluster.nodes() {
        session
            .get_at(node, "replicated")
            .await
            .expect_found(&marker);
    }
}

#[tokio::test]
async fn with_a_secret_forged_tampered_stale_and_replayed_messages_are_refused() {
    let dir = scratch("forged");
    let secret = dir.join("secret");
    write_secret(&secret, &[SECRET]);
    let secret_arg = secret.to_str().expect("UTF-8 path");
    let cluster =
        TestCluster::start_with("trust-forged", 3, &["--cluster-secret-file", secret_arg]).await;
    let mut session = Session::default();
    session.put_at(cluster.node(0), "k", json!("before")).await;
    let keys = Keyring::single(SECRET).expect("a secret");
    let wrong = Keyring::single("someone-elses-secret-0123456789").expect("a secret");
    let window = auth::WINDOW.as_millis() as u64;
    // From the replicas' own IP address: a secret makes the address worthless.
    let http = http_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (target, member, other) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    for (path, body) in harmful_messages(&member, &other) {
        let mut tampered_body = body.clone();
        tampered_body["tampered"] = json!(true);
        let attempts = [
            ("unsigned", unsigned(&body), &body),
            ("forged", signed(&wrong, path, &body, now_ms()), &body),
            (
                "stale",
                signed(&keys, path, &body, now_ms() - 2 * window),
                &body,
            ),
            (
                "tampered",
                signed(&keys, path, &body, now_ms()),
                &tampered_body,
            ),
        ];
        for (what, headers, sent) in attempts {
            let (status, answer) = post(&http, &target, path, &headers, sent).await;
            assert_eq!(status, 401, "{what} {path}: {answer}");
            assert!(answer["error"].is_string(), "{what} {path}: {answer}");
        }
    }
    // Replays of harmless genuine messages: accepted once, refused after.
    for (path, body) in [
        (
            wire::HEARTBEAT,
            json!({ "from": member, "epoch": null, "clock": {"entries": []} }),
        ),
        (
            wire::SYNC,
            json!({ "from": member, "clock": {"entries": []} }),
        ),
    ] {
        let headers = signed(&keys, path, &body, now_ms());
        let (first, _) = post(&http, &target, path, &headers, &body).await;
        assert_eq!(first, 200, "genuine {path}");
        let (replay, answer) = post(&http, &target, path, &headers, &body).await;
        assert_eq!(replay, 401, "replayed {path}: {answer}");
    }
    assert_unharmed(&cluster, "k", &json!("before")).await;
    // Refusals are logged at warn with their source, but not one line each.
    let log = cluster.log_text(0);
    let lines = log.matches("refused an internal request").count();
    assert!(lines >= 1, "no refusal logged:\n{log}");
    assert!(
        log.contains("source=127.0.0.1:"),
        "no source address:\n{log}"
    );
    let refusals = 4 * harmful_messages(&member, &other).len() + 2;
    assert!(
        lines < refusals,
        "{lines} lines for {refusals} refusals: not rate-limited"
    );
}

#[tokio::test]
async fn without_a_secret_messages_from_a_foreign_address_are_refused() {
    let cluster = TestCluster::start("trust-foreign", 3).await;
    let mut session = Session::default();
    session.put_at(cluster.node(0), "k", json!("before")).await;
    let http = http_from(FOREIGN);
    let (target, member, other) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    for (path, body) in harmful_messages(&member, &other) {
        let (status, answer) = post(&http, &target, path, &unsigned(&body), &body).await;
        assert_eq!(status, 401, "foreign {path}: {answer}");
        assert!(answer["error"].is_string(), "{path}: {answer}");
    }
    // A replica never sends to itself: from its own address, a claim to be it is refused.
    let local = http_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for (path, body) in harmful_messages(&target, &other) {
        let (status, answer) = post(&local, &target, path, &unsigned(&body), &body).await;
        assert_eq!(
            status, 401,
            "{path} claiming to be the replica itself: {answer}"
        );
    }
    assert_unharmed(&cluster, "k", &json!("before")).await;
}

/// How many times replica `i` has reloaded its secret file.
fn reloads(cluster: &TestCluster, i: usize) -> usize {
    cluster
        .log_text(i)
        .matches("cluster secret file changed: reloaded")
        .count()
}

#[tokio::test]
async fn the_secret_rotates_under_load_without_a_failed_request() {
    let dir = scratch("rotation");
    let secret = dir.join("secret");
    write_secret(&secret, &[SECRET]);
    let secret_arg = secret.to_str().expect("UTF-8 path");
    let cluster =
        TestCluster::start_with("trust-rotation", 3, &["--cluster-secret-file", secret_arg]).await;
    let nodes: Vec<Node> = cluster.nodes().into_iter().cloned().collect();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    // Sessions that write at one replica and read at the next, so that every request
    // depends on replication between replicas.
    let load = tokio::spawn({
        let (stop, done) = (stop.clone(), done.clone());
        async move {
            let mut session = Session::default();
            let mut failures = Vec::new();
            for n in 0..20_000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let value = json!(n);
                let key = format!("k{}", n % 50);
                let put = session.put_at(&nodes[n % 3], &key, value.clone()).await;
                let get = session.get_at(&nodes[(n + 1) % 3], &key).await;
                if !(put.status == 200 || put.status == 201) {
                    failures.push(format!("PUT {key} at {}: {put}", nodes[n % 3].addr()));
                }
                if get.status != 200 || get.value() != &value {
                    failures.push(format!("GET {key} at {}: {get}", nodes[(n + 1) % 3].addr()));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }
    });
    for (step, lines) in [
        [SECRET, NEW_SECRET].as_slice(),
        &[NEW_SECRET, SECRET],
        &[NEW_SECRET],
    ]
    .into_iter()
    .enumerate()
    {
        let before = done.load(Ordering::Relaxed);
        write_secret(&secret, lines);
        for i in 0..3 {
            let what = format!("replica {i} reloaded the secret file for step {}", step + 1);
            poll_until(within(SETTLE_TIMEOUT), &what, async || {
                match reloads(&cluster, i) > step {
                    true => Ok(()),
                    false => Err(format!("{} reloads", reloads(&cluster, i))),
                }
            })
            .await;
        }
        // Requests went on meanwhile.
        let what = format!("requests are served after step {}", step + 1);
        poll_until(within(SETTLE_TIMEOUT), &what, async || {
            match done.load(Ordering::Relaxed) > before + 20 {
                true => Ok(()),
                false => Err(format!("{} requests", done.load(Ordering::Relaxed))),
            }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.expect("the load task");
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    assert!(done.load(Ordering::Relaxed) > 60, "too few requests ran");
    for i in 0..3 {
        let log = cluster.log_text(i);
        for bad in [
            "refused an internal request",
            "replication failed",
            "refused replicated",
        ] {
            assert!(!log.contains(bad), "replica {i} logged {bad:?}:\n{log}");
        }
    }
    // The old secret is no longer accepted anywhere.
    let old = Keyring::single(SECRET).expect("a secret");
    let http = http_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let body = json!({ "from": cluster.addr(1), "epoch": null, "clock": {"entries": []} });
    for i in [0, 2] {
        let headers = signed(&old, wire::HEARTBEAT, &body, now_ms());
        let (status, _) = post(&http, &cluster.addr(i), wire::HEARTBEAT, &headers, &body).await;
        assert_eq!(status, 401, "the old secret at replica {i}");
    }
}

#[tokio::test]
async fn tls_from_client_to_replica_and_between_replicas() {
    let pki = Pki::new("trust-tls");
    let (cert, key, ca) = (pki.cert(), pki.key(), pki.ca());
    let args = [
        "--tls-cert",
        cert.to_str().expect("UTF-8"),
        "--tls-key",
        key.to_str().expect("UTF-8"),
        "--tls-ca",
        ca.to_str().expect("UTF-8"),
    ];
    let cluster = TestCluster::spawn("trust-tls", 3, &args);
    let client = Client::with_tls_ca(REQUEST_TIMEOUT, Some(&ca)).expect("a TLS client");
    let urls: Vec<String> = (0..3)
        .map(|i| format!("https://{}", cluster.addr(i)))
        .collect();
    let all: BTreeSet<String> = cluster.addrs();
    for url in &urls {
        poll_until(
            within(READY_TIMEOUT),
            &format!("{url} lists every replica"),
            async || {
                let view = client.view(url).await.map_err(|e| e.to_string())?;
                match view.into_iter().collect::<BTreeSet<_>>() == all {
                    true => Ok(()),
                    false => Err("not yet".to_string()),
                }
            },
        )
        .await;
    }
    // A write at one replica is read at the others: replication over mutual TLS.
    let written = client
        .put(
            &urls[0],
            "tls",
            &json!("secret value"),
            &Metadata::default(),
        )
        .await
        .expect("a write over TLS");
    for url in &urls[1..] {
        let read = client
            .get(url, "tls", &written.metadata)
            .await
            .expect("a read over TLS");
        assert_eq!(
            read.outcome,
            causalkv::tools::client::Outcome::Found(json!("secret value"))
        );
    }
    // Plain HTTP to a TLS replica gets no answer.
    assert!(
        Client::new(REQUEST_TIMEOUT)
            .expect("a client")
            .view(&cluster.addr(0))
            .await
            .is_err()
    );
    // A client without a certificate signed by the cluster CA may use the contract's
    // routes but not the internal ones.
    let body = json!({ "from": cluster.addr(1), "epoch": null, "clock": {"entries": []} });
    let answer = client
        .request(http::Method::POST, &urls[0], wire::HEARTBEAT, Some(&body))
        .await
        .expect("an answer");
    assert_eq!(answer.status, 401, "{:?}", answer.body);
}

/// A raw TCP connection to `addr` from `source`.
async fn connect_from(source: IpAddr, addr: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    socket.connect(addr.parse().expect("an address")).await
}

/// Reads until the server closes the connection or `deadline` passes; what was read.
async fn read_until_closed(
    stream: &mut TcpStream,
    deadline: std::time::Instant,
) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(answer),
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_client_that_sends_its_headers_slowly_is_cut_off() {
    let cluster = TestCluster::start_with("trust-slow", 1, &["--header-timeout", "1s"]).await;
    let mut stream = connect_from(FOREIGN, &cluster.addr(0))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /view HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send the request line");
    // One header byte every 100 ms, for up to 30 s: the server must close first.
    let deadline = within(Duration::from_secs(30));
    let mut closed = false;
    while std::time::Instant::now() < deadline {
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "a client trickling its headers was never cut off");
    // The replica still serves everyone else.
    cluster.node(0).view_get().await.expect_status(200);
}

#[tokio::test]
async fn a_connection_flood_does_not_stall_replication() {
    let cluster = TestCluster::start_with("trust-flood", 3, &["--max-connections", "32"]).await;
    // Idle connections from a foreign address, far past the limit.
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        let mut stream = connect_from(FOREIGN, &cluster.addr(0))
            .await
            .expect("connect");
        let mut peek = [0u8; 64];
        // A refused connection is answered at once; an accepted one stays silent.
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut peek)).await {
            Ok(Ok(n)) if n > 0 => {
                assert!(
                    peek.starts_with(b"HTTP/1.1 503"),
                    "{:?}",
                    String::from_utf8_lossy(&peek)
                );
                refused += 1;
            }
            _ => flood.push(stream),
        }
    }
    assert!(
        refused > 0,
        "no connection was refused past --max-connections"
    );
    assert!(
        flood.len() <= 40,
        "{} connections were accepted",
        flood.len()
    );
    // Replication and probes between replicas go on, and so do requests from the
    // replicas' own address, while the flood holds every client connection.
    let mut session = Session::default();
    for n in 0..20 {
        session
            .put_at(cluster.node(0), "flooded", json!(n))
            .await
            .expect_status(if n == 0 { 201 } else { 200 });
        session
            .get_at(cluster.node(1), "flooded")
            .await
            .expect_found(&json!(n));
        session
            .get_at(cluster.node(2), "flooded")
            .await
            .expect_found(&json!(n));
    }
    assert_eq!(
        cluster.node(1).view().await,
        cluster.addrs(),
        "the view held"
    );
    // Once the flood is gone, foreign clients are served again.
    drop(flood);
    let http = http_from(FOREIGN);
    poll_until(
        within(SETTLE_TIMEOUT),
        "a foreign client is served again",
        async || match http
            .get(format!("http://{}/view", cluster.addr(0)))
            .send()
            .await
        {
            Ok(response) if response.status() == 200 => Ok(()),
            Ok(response) => Err(response.status().to_string()),
            Err(error) => Err(error.to_string()),
        },
    )
    .await;
}

/// Sends a request with a body of `size` bytes on a raw connection and reads the answer
/// to its end: a reset instead of an answer fails the test.
async fn raw_answer(addr: &str, head: &str, size: usize) -> String {
    let mut stream = connect_from(FOREIGN, addr).await.expect("connect");
    let request =
        format!("{head}\r\nHost: x\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the head");
    stream
        .write_all(&vec![b'x'; size])
        .await
        .expect("send the body");
    let answer = read_until_closed(&mut stream, within(Duration::from_secs(10)))
        .await
        .expect("the answer within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn bodies_a_refusal_leaves_unread_are_drained_not_reset() {
    let cluster = TestCluster::start("trust-drain", 1).await;
    let small = TestCluster::start_with("trust-drain-413", 1, &["--max-body-bytes", "1024"]).await;
    for (addr, head, status) in [
        (cluster.addr(0), "POST /no/such/route HTTP/1.1", "404"),
        (cluster.addr(0), "POST /view HTTP/1.1", "405"),
        (cluster.addr(0), "GET /view HTTP/1.1", "200"),
        (cluster.addr(0), "POST /internal/replicate HTTP/1.1", "401"),
        (small.addr(0), "PUT /kvs/k HTTP/1.1", "413"),
        (small.addr(0), "GET /view HTTP/1.1", "413"),
    ] {
        for size in [100 * 1024, 256 * 1024] {
            let answer = raw_answer(&addr, head, size).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{head} with {size} bytes: {answer:?}"
            );
            assert!(answer.contains("application/json"), "{head}: {answer:?}");
        }
    }
}

#[tokio::test]
async fn a_lamport_time_at_the_ceiling_does_not_wedge_replication() {
    // Without a secret, a message from a member's address is accepted: push replica 0's
    // Lamport time to the highest value a peer may send.
    let cluster = TestCluster::start("trust-ceiling", 3).await;
    let member = cluster.addr(1);
    let write = json!({
        "key": "pushed",
        "entry": {
            "value": "high",
            "lamport": now_ms() * 1000,
            "dot": { "inc": { "addr": member, "epoch": 1 }, "seq": 1 },
        },
        "deps": { "entries": [] },
    });
    let body = json!({ "from": member, "writes": [write] });
    let local = http_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (status, answer) = post(
        &local,
        &cluster.addr(0),
        wire::REPLICATE,
        &unsigned(&body),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // Writes at replica 0 still reach its peers, and still win over what they follow.
    let mut session = Session::default();
    for n in 0..10 {
        session.put_at(cluster.node(0), "after", json!(n)).await;
        for i in [1, 2] {
            session
                .get_at(cluster.node(i), "after")
                .await
                .expect_found(&json!(n));
        }
    }
    let log = cluster.log_text(0);
    assert!(!log.contains("refused replicated writes"), "{log}");
}

#[tokio::test]
async fn writes_a_peer_refuses_are_not_acknowledged_but_repaired_by_anti_entropy() {
    // A delivery buffer of zero refuses every replicated write: each is a refusal, logged
    // at error, and the receiver pulls what it misses.
    let cluster = TestCluster::start_with("trust-refused", 3, &["--delivery-buffer", "0"]).await;
    let mut session = Session::default();
    session
        .put_at(cluster.node(0), "refused", json!("repaired"))
        .await;
    for i in [1, 2] {
        let node = cluster.node(i);
        poll_until(
            within(SETTLE_TIMEOUT),
            "anti-entropy repairs the refused write",
            async || {
                let reply = node.get("refused", &Value::Null).await;
                match reply.value() == &json!("repaired") {
                    true => Ok(()),
                    false => Err(reply.to_string()),
                }
            },
        )
        .await;
    }
    let log = cluster.log_text(0);
    assert!(
        log.contains("ERROR") && log.contains("peer refused replicated writes"),
        "the refusal is not logged at error:\n{log}"
    );
}
