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
//! Every test is `#[ignore]`d (it needs Docker and the image) and they share
//! ports, names and the subnet: the deployment holds a process-wide lock under
//! `cargo test`, and nextest's `docker` test group (`.config/nextest.toml`) runs
//! one at a time. Containers and network are removed when a test ends, even by
//! a panic, and leftovers of an earlier run are removed before each deployment.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use causalkv::protocol::wire;
use causalkv::server::auth::{self, Keyring};
use causalkv::server::wallclock::now_ms;
use common::docker::{ALICE, BOB, CAROL, Deployment, addr, full_view, get_served, until_holds};
use common::until_views;
use common::{CONTRACT_HEAL, ERR_CAUSAL, SETTLE_TIMEOUT, within};
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
