//! The reference deployment: three replica containers on a Docker network.
//!
//! The contract's faults are container faults: `docker kill` and a later
//! `docker run` with the same address, and `docker network disconnect` and
//! `connect`; its timelines are those of the classroom test suite, run against
//! containers `alice`, `bob` and `carol` at 10.10.0.2-4:8090, published on
//! 127.0.0.1:8082-8084. This suite deploys exactly that (the image must already
//! exist: `scripts/test` builds it; `CAUSALKV_IMAGE` names another tag) and runs
//! each scenario on a fresh deployment.
//!
//! Every test is `#[ignore]`d (it needs Docker and the image) and they share
//! ports, names and the subnet: a process-wide lock serialises them under
//! `cargo test`, and nextest's `docker` test group (`.config/nextest.toml`) runs
//! one at a time. Containers and network are removed when a test ends, even by
//! a panic, and leftovers of an earlier run are removed before each deployment.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    CONTRACT_HEAL, ERR_CAUSAL, Node, READY_TIMEOUT, Reply, SETTLE_TIMEOUT, poll_until, ready_check,
    until_served, within,
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Serialises the tests of this file within one process.
static DOCKER: Mutex<()> = Mutex::const_new(());

/// Prefix of every container and network this suite creates.
const PREFIX: &str = "ckvtest-";
const SUBNET: &str = "10.10.0.0/16";
const NAMES: [&str; 3] = ["alice", "bob", "carol"];
const IPS: [&str; 3] = ["10.10.0.2", "10.10.0.3", "10.10.0.4"];
const HOST_PORTS: [u16; 3] = [8082, 8083, 8084];
const PORT: u16 = 8090;
const ALICE: usize = 0;
const BOB: usize = 1;
const CAROL: usize = 2;
/// How promptly a PUT must answer with two peers cut off: the contract allows
/// each silent peer at most the per-peer replication timeout (1 s by default).
const PROMPT: Duration = Duration::from_secs(3);

/// Runs `docker args...`; its stdout, or its stderr as the error.
fn docker(args: &[&str]) -> Result<String, String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .map_err(|err| format!("cannot run docker: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs `docker args...`, panicking if it fails.
fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|err| panic!("{err}"))
}

fn image() -> String {
    std::env::var("CAUSALKV_IMAGE").unwrap_or_else(|_| "causalkv".to_owned())
}

fn network() -> String {
    format!("{PREFIX}net")
}

fn container(i: usize) -> String {
    format!("{PREFIX}{}", NAMES[i])
}

/// Replica `i`'s socket address inside the network.
fn addr(i: usize) -> String {
    format!("{}:{PORT}", IPS[i])
}

fn full_view() -> BTreeSet<String> {
    (0..NAMES.len()).map(addr).collect()
}

/// Removes this suite's containers and networks, whoever left them. Never
/// panics (it also runs in `Drop`): what it cannot remove, the next run will.
fn remove_leftovers() {
    let filter = format!("name={PREFIX}");
    let containers = docker(&["ps", "--all", "--quiet", "--filter", &filter]);
    for id in containers.unwrap_or_default().split_whitespace() {
        let _ = docker(&["rm", "--force", id]);
    }
    let networks = docker(&["network", "ls", "--quiet", "--filter", &filter]);
    for id in networks.unwrap_or_default().split_whitespace() {
        let _ = docker(&["network", "rm", id]);
    }
}

/// The three containers on their network; removed when dropped.
struct Deployment {
    scenario: &'static str,
}

impl Deployment {
    /// Deploys alice, bob and carol afresh and waits until they are ready.
    async fn start(scenario: &'static str) -> Self {
        eprintln!("== docker scenario: {scenario}");
        remove_leftovers();
        let image = image();
        docker(&["image", "inspect", "--format", "{{.Id}}", &image]).unwrap_or_else(|err| {
            panic!("image {image} is missing (scripts/docker-build builds it): {err}")
        });
        docker_ok(&["network", "create", "--subnet", SUBNET, &network()]);
        let deployment = Deployment { scenario };
        for i in 0..NAMES.len() {
            deployment.run(i);
        }
        deployment.until_ready(within(READY_TIMEOUT)).await;
        deployment
    }

    /// `docker run` of replica `i`, exactly as the contract shows (published on
    /// loopback only).
    fn run(&self, i: usize) {
        let view = Vec::from_iter(full_view()).join(",");
        docker_ok(&[
            "run",
            "--rm",
            "--detach",
            &format!("--publish=127.0.0.1:{}:{PORT}", HOST_PORTS[i]),
            &format!("--net={}", network()),
            &format!("--ip={}", IPS[i]),
            &format!("--name={}", container(i)),
            &format!("-e=SOCKET_ADDRESS={}", addr(i)),
            &format!("-e=VIEW={view}"),
            &image(),
        ]);
    }

    /// `docker kill` of replica `i`; returns once `--rm` has removed it.
    async fn kill(&self, i: usize) {
        docker_ok(&["kill", &container(i)]);
        let what = format!("{} is removed", container(i));
        poll_until(within(SETTLE_TIMEOUT), &what, async || {
            match docker(&["container", "inspect", &container(i)]) {
                Ok(_) => Err("still there".to_owned()),
                Err(_) => Ok(()),
            }
        })
        .await;
    }

    fn disconnect(&self, i: usize) {
        docker_ok(&["network", "disconnect", &network(), &container(i)]);
    }

    fn connect(&self, i: usize) {
        docker_ok(&[
            "network",
            "connect",
            "--ip",
            IPS[i],
            &network(),
            &container(i),
        ]);
    }

    /// A client of replica `i` through its published port.
    fn node(&self, i: usize) -> Node {
        Node::new(format!("127.0.0.1:{}", HOST_PORTS[i]))
    }

    fn nodes(&self) -> Vec<Node> {
        (0..NAMES.len()).map(|i| self.node(i)).collect()
    }

    async fn until_ready(&self, deadline: Instant) {
        let expected = full_view();
        for node in self.nodes() {
            let what = format!("{} is ready", node.addr());
            poll_until(deadline, &what, async || {
                ready_check(&node, &expected).await
            })
            .await;
        }
    }

    fn print_logs(&self) {
        for i in 0..NAMES.len() {
            let logs = Command::new("docker")
                .args(["logs", "--tail", "60", &container(i)])
                .output();
            let text = match logs {
                Ok(out) => String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned(),
                Err(err) => format!("<no logs: {err}>"),
            };
            eprintln!(
                "----- {} ({}): docker logs -----\n{text}",
                container(i),
                self.scenario
            );
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        remove_leftovers();
    }
}

/// Waits until the view of each of `nodes` is exactly `expected`.
async fn until_views(nodes: &[Node], expected: &BTreeSet<String>, deadline: Instant) {
    for node in nodes {
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

/// Waits until `node` reads `key` as `value` with null metadata.
async fn until_holds(node: &Node, key: &str, value: &Value, deadline: Instant) {
    let what = format!("{} holds {key} = {value}", node.addr());
    poll_until(deadline, &what, async || {
        let reply = node.try_get(key, &Value::Null).await?;
        if reply.status == 200 && reply.value() == value {
            Ok(())
        } else {
            Err(reply.to_string())
        }
    })
    .await;
}

/// A GET with `meta`, repeated while it answers 503.
async fn get_served(node: &Node, key: &str, meta: &Value, deadline: Instant) -> Reply {
    let what = format!("GET {key} at {} is served", node.addr());
    until_served(deadline, &what, async || node.get(key, meta).await).await
}

#[tokio::test]
#[ignore = "needs Docker; run by scripts/test"]
async fn docker_basic() {
    let _serial = DOCKER.lock().await;
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
    let _serial = DOCKER.lock().await;
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
    let _serial = DOCKER.lock().await;
    let deployment = Deployment::start("crash").await;
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
    let _serial = DOCKER.lock().await;
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
