//! The reference deployment: three replica containers on a Docker network.
//!
//! The contract's faults are container faults: `docker kill` and a later
//! `docker run` with the same address, and `docker network disconnect` and
//! `connect`; its timelines are those of the classroom test suite, run against
//! containers `alice`, `bob` and `carol` at 10.10.0.2-4:8090, published on
//! 127.0.0.1:8082-8084. This suite deploys exactly that (see
//! `tests/common/docker.rs`; the image must already exist: `scripts/test`
//! builds it; `CAUSALKV_IMAGE` names another tag) and runs each scenario on a
//! fresh deployment. The randomized fault suite is `tests/faults.rs`.
//!
//! - `docker_basic`: a write at alice is read at bob and carol; every view
//!   lists all three.
//! - `docker_availability`: with bob and carol cut off, alice still accepts a
//!   write promptly and reads it back.
//! - `docker_crash_and_restart`: bob killed, a write while he is down, bob
//!   restarted: within the contract's 5 s all views are full and bob holds
//!   every write.
//! - `docker_reconnect_timeline`: the contract's reconnect timeline, second by
//!   second (503 for metadata bob cannot satisfy yet, then caught up).
//! - `docker_without_a_secret_outsiders_are_refused`,
//!   `docker_with_a_secret_file`: replication messages from outside the
//!   cluster are refused, with and without a cluster secret file.
//! - `docker_kill_all_with_volumes_loses_no_acknowledged_write`: the durable
//!   deployment (each replica's store in a named volume, `DATA_DIR=/data`);
//!   concurrent writers put and delete their own keys, and all three replicas
//!   are killed at once mid-load, then started again on the same volumes. Then
//!   every replica holds, for every key, its last acknowledged write (or
//!   absence for a delete), or a write that got no definite answer; all hold
//!   the same store and list each other.
//!
//! Every test is `#[ignore]`d (it needs Docker and the image) and they share
//! ports, names and the subnet: the deployment holds a process-wide lock under
//! `cargo test`, and nextest's `docker` test group (`.config/nextest.toml`) runs
//! one at a time. Containers and network are removed when a test ends, even by
//! a panic, and leftovers of an earlier run are removed before each deployment.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use causalkv::protocol::wire;
use causalkv::server::auth::{self, Keyring};
use causalkv::server::wallclock::now_ms;
use causalkv::tools::check::workload::SplitMix64;
use causalkv::tools::client::Client;
use common::docker::{
    ALICE, BOB, CAROL, Contents, Deployment, addr, bulk_client, full_view, get_served,
    read_contents, until_holds,
};
use common::{
    CONTRACT_HEAL, ERR_CAUSAL, InSession, Node, READY_TIMEOUT, SETTLE_TIMEOUT, Session, poll_until,
    until_views, within,
};
use serde_json::{Value, json};

/// How promptly a PUT must answer with two peers cut off: the contract allows
/// each silent peer at most the per-peer replication timeout (1 s by default).
const PROMPT: Duration = Duration::from_secs(3);

#[tokio::test]
#[ignore = "needs Docker; run by scripts/test"]
async fn docker_basic() {
    let deployment = Deployment::start("basic").await;
    let [alice, bob, carol] = [0, 1, 2].map(|i| deployment.node(i));

    let meta = alice
        .put("latte", json!("milk"), &Value::Null)
        .await
        .expect_result(201, "created");
    for node in [&bob, &carol] {
        get_served(node, "latte", &meta, within(SETTLE_TIMEOUT))
            .await
            .expect_found(&json!("milk"));
    }
    for node in [&alice, &bob, &carol] {
        assert_eq!(node.view().await, full_view());
    }
}

#[tokio::test]
#[ignore = "needs Docker; run by scripts/test"]
async fn docker_availability() {
    let deployment = Deployment::start("availability").await;
    let alice = deployment.node(ALICE);

    deployment.disconnect(BOB);
    deployment.disconnect(CAROL);
    let started = Instant::now();
    let reply = alice.put("espresso", json!("alone"), &Value::Null).await;
    let took = started.elapsed();
    let meta = reply.expect_result(201, "created");
    assert!(took < PROMPT, "PUT with two peers cut off took {took:?}");
    alice
        .get("espresso", &meta)
        .await
        .expect_found(&json!("alone"));
}

#[tokio::test]
#[ignore = "needs Docker; run by scripts/test"]
async fn docker_crash_and_restart() {
    let mut deployment = Deployment::start("crash").await;
    let [alice, bob, carol] = [0, 1, 2].map(|i| deployment.node(i));
    let mut keys: Vec<(String, Value)> = Vec::new();
    for (i, node) in [&alice, &carol, &alice].into_iter().enumerate() {
        let (key, value) = (format!("before-{i}"), json!(i));
        node.put(&key, value.clone(), &Value::Null)
            .await
            .expect_result(201, "created");
        keys.push((key, value));
    }
    for (key, value) in &keys {
        until_holds(&bob, key, value, within(SETTLE_TIMEOUT)).await;
    }

    let killed = Instant::now() + CONTRACT_HEAL;
    deployment.kill(BOB).await;
    alice
        .put("during", json!("bob is down"), &Value::Null)
        .await
        .expect_result(201, "created");
    keys.push(("during".into(), json!("bob is down")));
    let survivors = BTreeSet::from([addr(ALICE), addr(CAROL)]);
    until_views(&[alice.clone(), carol.clone()], &survivors, killed).await;

    let restarted = Instant::now() + CONTRACT_HEAL;
    deployment.run(BOB);
    until_views(&deployment.nodes(), &full_view(), restarted).await;
    for (key, value) in &keys {
        until_holds(&bob, key, value, restarted).await;
    }
}

/// The contract's reconnect timeline, step by step; here the sleeps are the
/// timeline itself.
#[tokio::test]
#[ignore = "needs Docker; run by scripts/test"]
async fn docker_reconnect_timeline() {
    let deployment = Deployment::start("reconnect").await;
    let (alice, bob) = (deployment.node(ALICE), deployment.node(BOB));
    let second = Duration::from_secs(1);

    let m0 = alice
        .put("matcha", json!("ice-cream"), &Value::Null)
        .await
        .expect_result(201, "created");
    // The write reaches bob before he is cut off (at once with a prompt broadcast).
    until_holds(&bob, "matcha", &json!("ice-cream"), within(SETTLE_TIMEOUT)).await;

    deployment.disconnect(BOB);
    tokio::time::sleep(second).await;
    let m1 = alice
        .put("matcha", json!("tea"), &m0)
        .await
        .expect_result(200, "replaced");

    deployment.connect(BOB);
    let healed = Instant::now() + CONTRACT_HEAL;
    tokio::time::sleep(second).await;
    let m2 = alice.get("matcha", &m1).await.expect_found(&json!("tea"));
    bob.get("matcha", &m2)
        .await
        .expect_exact_error(503, ERR_CAUSAL);
    bob.put("matcha", json!("hojicha"), &m2)
        .await
        .expect_exact_error(503, ERR_CAUSAL);
    bob.get("matcha", &m0)
        .await
        .expect_found(&json!("ice-cream"));

    // Then, within 5 s of the network healing, bob is back and caught up.
    until_views(&deployment.nodes(), &full_view(), healed).await;
    get_served(&bob, "matcha", &m2, healed)
        .await
        .expect_found(&json!("tea"));
}

/// Messages an outsider sends through alice's published port, claiming to be bob:
/// remove carol from alice's view, inject a write, read the store.
fn outsider_messages() -> Vec<(&'static str, Value)> {
    let write = json!({
        "key": "injected",
        "entry": {
            "value": "evil",
            "lamport": 7,
            "dot": { "inc": { "addr": addr(BOB), "epoch": 1 }, "seq": 1 },
        },
        "deps": { "entries": [] },
    });
    vec![
        (
            wire::VIEW_CHANGE,
            json!({ "from": addr(BOB), "op": "remove", "addr": addr(CAROL) }),
        ),
        (
            wire::REPLICATE,
            json!({ "from": addr(BOB), "writes": [write] }),
        ),
        (
            wire::SYNC,
            json!({ "from": addr(BOB), "clock": {"entries": []} }),
        ),
    ]
}

/// POSTs `body` to alice's `path` from the host with `headers`; the status.
async fn post_to_alice(path: &str, body: &Value, headers: &[(&str, String)]) -> u16 {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let mut request = http
        .post(format!("http://127.0.0.1:8082{path}"))
        .header(auth::FROM, addr(BOB))
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("an answer").status().as_u16()
}

/// After the outsider's attempts: every replica lists all three and holds no injected
/// key, and a write at alice reaches bob and carol.
async fn assert_unharmed(deployment: &Deployment) {
    let nodes = deployment.nodes();
    until_views(&nodes, &full_view(), within(SETTLE_TIMEOUT)).await;
    for node in &nodes {
        node.get("injected", &Value::Null).await.expect_status(404);
    }
    let meta = nodes[ALICE]
        .put("after-outsider", json!("ok"), &Value::Null)
        .await
        .expect_result(201, "created");
    for node in &nodes[1..] {
        get_served(node, "after-outsider", &meta, within(SETTLE_TIMEOUT))
            .await
            .expect_found(&json!("ok"));
    }
}

#[tokio::test]
#[ignore = "needs Docker; run by scripts/test"]
async fn docker_without_a_secret_outsiders_are_refused() {
    let deployment = Deployment::start("outsiders").await;
    // Through the published port the source is Docker's gateway, not bob's address.
    for (path, body) in outsider_messages() {
        assert_eq!(post_to_alice(path, &body, &[]).await, 401, "{path}");
    }
    assert_unharmed(&deployment).await;
    assert!(
        deployment
            .logs(ALICE)
            .contains("authenticated only by its source address"),
        "the start-up warning is missing:\n{}",
        deployment.logs(ALICE)
    );
}

#[tokio::test]
#[ignore = "needs Docker; run by scripts/test"]
async fn docker_with_a_secret_file() {
    const SECRET: &str = "docker-suite-cluster-secret-0123456789";
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("causalkv-docker-secret");
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let file = dir.join("cluster-secret");
    std::fs::write(&file, format!("{SECRET}\n")).expect("write the secret file");
    let mut deployment = Deployment::start_with("secret-file", Some(file)).await;
    for i in [ALICE, BOB, CAROL] {
        let logs = deployment.logs(i);
        assert!(
            logs.contains("authenticated with the cluster secret file"),
            "{logs}"
        );
    }
    // Unsigned, and signed with the wrong secret: refused.
    let wrong = Keyring::single("not-the-docker-suite-secret-0123").expect("a secret");
    for (path, body) in outsider_messages() {
        assert_eq!(
            post_to_alice(path, &body, &[]).await,
            401,
            "unsigned {path}"
        );
        let signed = auth::sign_request(
            &wrong,
            "POST",
            path,
            &addr(BOB),
            now_ms(),
            &auth::nonce(),
            body.to_string().as_bytes(),
        );
        let headers = [
            (auth::TIME, signed.time_ms.to_string()),
            (auth::NONCE, signed.nonce),
            (auth::MAC, signed.mac),
        ];
        assert_eq!(
            post_to_alice(path, &body, &headers).await,
            401,
            "forged {path}"
        );
    }
    assert_unharmed(&deployment).await;
    // A killed replica restarts with the same secret file and catches up.
    deployment.kill(BOB).await;
    let meta = deployment
        .node(ALICE)
        .put("while-bob-restarted", json!(1), &Value::Null)
        .await
        .expect_result(201, "created");
    deployment.run(BOB);
    // Polled with requests that tolerate a container still starting.
    until_views(&deployment.nodes(), &full_view(), within(SETTLE_TIMEOUT)).await;
    let bob = deployment.node(BOB);
    until_holds(
        &bob,
        "while-bob-restarted",
        &json!(1),
        within(SETTLE_TIMEOUT),
    )
    .await;
    get_served(&bob, "while-bob-restarted", &meta, within(SETTLE_TIMEOUT))
        .await
        .expect_found(&json!(1));
}

// ---------------------------------------------------------------------------
// The durable deployment: every replica killed at once, nothing lost
// ---------------------------------------------------------------------------

/// Concurrent writers of the whole-cluster crash; each owns its keys.
const WRITERS: u64 = 6;
const KEYS_PER_WRITER: usize = 16;
/// Most writes a writer sends, and how long it keeps writing.
const MAX_WRITES: usize = 2000;
const LOAD: Duration = Duration::from_secs(12);
/// Acknowledged writes, in all, before every replica is killed.
const ACKED_BEFORE_KILL: usize = 300;

/// What a write leaves: the value a PUT wrote, `None` for a DELETE.
type Written = Option<Value>;

/// What one writer saw.
#[derive(Default)]
struct WriterLog {
    /// Per key, the last acknowledged write.
    last_acked: BTreeMap<String, Written>,
    /// Per key, the writes answered 503 or not at all: each may or may not
    /// have taken effect, and none is in the causal past of a later write
    /// (the session never saw its metadata), so any may be the one that wins.
    indeterminate: BTreeMap<String, Vec<Written>>,
}

/// How a write was answered.
enum Answer {
    /// `200` or `201`: it took effect.
    Acknowledged,
    /// A DELETE answered `404`: the key was absent, nothing was written.
    NoEffect,
    /// `503`, or no answer: it may or may not have taken effect.
    Indeterminate,
}

/// One write of `session` at `node`: a PUT of the value, or a DELETE.
async fn write_in_session(
    session: &mut Session,
    node: &Node,
    key: &str,
    written: &Written,
) -> Answer {
    let answer = match written {
        Some(value) => node.try_put(key, value, session.meta()).await,
        None => node.try_delete(key, session.meta()).await,
    };
    let Ok(reply) = answer else {
        return Answer::Indeterminate;
    };
    match reply.status {
        200 | 201 => session.observe(&reply),
        404 if written.is_none() => session.observe(&reply),
        503 => return Answer::Indeterminate,
        _ => panic!("{} answered a write of {key}: {reply}", node.addr()),
    }
    match reply.status {
        404 => Answer::NoEffect,
        _ => Answer::Acknowledged,
    }
}

/// A writer: a session putting (two times in three) and deleting its own
/// keys at random replicas, until `until` or [`MAX_WRITES`]; counts its
/// acknowledged writes in `acked`.
async fn crash_writer(
    nodes: Vec<Node>,
    writer: u64,
    until: Instant,
    acked: Arc<AtomicUsize>,
) -> WriterLog {
    let mut rng = SplitMix64::new(0xC2A5 ^ writer);
    let (mut session, mut log) = (Session::default(), WriterLog::default());
    for n in 0..MAX_WRITES {
        if Instant::now() >= until {
            break;
        }
        let key = crash_key(writer, rng.below(KEYS_PER_WRITER));
        let written = (rng.below(3) > 0).then(|| json!(format!("w{writer}-{n}")));
        let node = &nodes[rng.below(nodes.len())];
        match write_in_session(&mut session, node, &key, &written).await {
            Answer::Acknowledged => {
                log.last_acked.insert(key, written);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Answer::NoEffect => {}
            Answer::Indeterminate => {
                log.indeterminate.entry(key).or_default().push(written);
                // The replica is down or busy: back off a little, as a client would.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    log
}

/// Key `k` of writer `writer`.
fn crash_key(writer: u64, k: usize) -> String {
    format!("crash-w{writer}-k{k}")
}

/// Per key, what a replica may hold at the end: the last acknowledged write
/// (absence if there was none), or any write without a definite answer.
/// `logs[w]` is writer `w`'s, the only one writing its keys.
fn allowed_outcomes(logs: &[WriterLog]) -> BTreeMap<String, Vec<Written>> {
    let mut allowed = BTreeMap::new();
    for (writer, log) in (0..).zip(logs) {
        for k in 0..KEYS_PER_WRITER {
            let key = crash_key(writer, k);
            let mut outcomes = vec![log.last_acked.get(&key).cloned().flatten()];
            outcomes.extend(log.indeterminate.get(&key).into_iter().flatten().cloned());
            allowed.insert(key, outcomes);
        }
    }
    allowed
}

/// `Ok` when `replica` holds one of the allowed outcomes for every key.
async fn holds_allowed(
    client: &Client,
    replica: &str,
    allowed: &BTreeMap<String, Vec<Written>>,
) -> Result<Contents, String> {
    let keys: Vec<String> = allowed.keys().cloned().collect();
    let held = read_contents(client, replica, &keys).await?;
    let wrong: Vec<String> = allowed
        .iter()
        .filter(|(key, outcomes)| !outcomes.contains(&held[*key]))
        .map(|(key, outcomes)| format!("{key}: {:?}, not one of {outcomes:?}", held[key]))
        .take(5)
        .collect();
    match wrong.is_empty() {
        true => Ok(held),
        false => Err(format!("{replica} holds {}", wrong.join("; "))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Docker; run by scripts/test"]
async fn docker_kill_all_with_volumes_loses_no_acknowledged_write() {
    let mut deployment = Deployment::start_durable("kill-all-durable").await;
    let nodes = deployment.nodes();
    let acked = Arc::new(AtomicUsize::new(0));
    let until = within(LOAD);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(crash_writer(nodes.clone(), w, until, acked.clone())))
        .collect();
    let what = format!("the writers have {ACKED_BEFORE_KILL} acknowledged writes");
    poll_until(within(SETTLE_TIMEOUT), &what, async || {
        let n = acked.load(Ordering::Relaxed);
        if n >= ACKED_BEFORE_KILL {
            Ok(n)
        } else {
            Err(n.to_string())
        }
    })
    .await;

    deployment.kill_all().await;
    let before_kill = acked.load(Ordering::Relaxed);
    deployment.run_all();
    let restarted = Instant::now();
    deployment.until_ready(within(READY_TIMEOUT)).await;
    let ready = restarted.elapsed();
    let mut logs = Vec::new();
    for writer in writers {
        logs.push(writer.await.expect("writer task"));
    }
    let stopped = Instant::now();
    let allowed = allowed_outcomes(&logs);

    let client = bulk_client();
    let deadline = within(SETTLE_TIMEOUT);
    for replica in deployment.host_addrs() {
        let what = format!("{replica} holds every acknowledged write");
        poll_until(deadline, &what, async || {
            holds_allowed(&client, &replica, &allowed).await
        })
        .await;
    }
    poll_until(deadline, "the replicas hold the same store", async || {
        let mut stores = Vec::new();
        for replica in deployment.host_addrs() {
            stores.push(holds_allowed(&client, &replica, &allowed).await?);
        }
        match stores.windows(2).all(|pair| pair[0] == pair[1]) {
            true => Ok(()),
            false => Err("the stores differ".to_owned()),
        }
    })
    .await;
    until_views(&nodes, &full_view(), deadline).await;
    let indeterminate: usize = logs
        .iter()
        .flat_map(|log| log.indeterminate.values())
        .map(Vec::len)
        .sum();
    eprintln!(
        "kill all: {before_kill} writes acknowledged before the kill, {} in all, {indeterminate} \
         without a definite answer; every replica ready {ready:.2?} after the restart; all hold \
         every acknowledged write and the same store {:.2?} after the writers stopped ({:.2?} \
         after the restart)",
        acked.load(Ordering::Relaxed),
        stopped.elapsed(),
        restarted.elapsed()
    );
}
