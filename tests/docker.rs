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
