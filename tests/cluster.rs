//! Replication, causality, convergence and failure handling of a real cluster.
//!
//! The contract promises more than single-replica behaviour: causally ordered
//! reads across replicas, writes that reach every replica, concurrent writes that
//! converge, views that follow crashes and restarts, and writes of a restarted
//! replica that are never mistaken for old ones. These tests check each promise
//! on 3 real `causalkv serve` processes on loopback, killing and restarting them
//! where a scenario calls for it. They poll with deadlines; the only timing they
//! assert is the contract's own ("within 5 s" in the crash timeline).

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use common::{
    CONTRACT_HEAL, ERR_NO_KEY, InSession, Node, Reply, SETTLE_TIMEOUT, Session, TestCluster,
    poll_until, until_served, until_views, within,
};
use serde_json::{Value, json};
use tokio::task::JoinSet;

async fn three(name: &str) -> TestCluster {
    TestCluster::start(name, 3).await
}

/// A session request, retried while it answers 503 (the client's duty), that
/// must then succeed with one of `statuses`; the session keeps its metadata.
async fn served(
    session: &mut Session,
    statuses: &[u16],
    what: &str,
    mut request: impl AsyncFnMut(&Value) -> Reply,
) -> Reply {
    let meta = session.meta().clone();
    let reply = until_served(within(SETTLE_TIMEOUT), what, async || request(&meta).await).await;
    assert!(statuses.contains(&reply.status), "{what}: {reply}");
    session.observe(&reply);
    reply
}

/// Waits until `node` answers `key` (with null metadata) with `expected`:
/// `Some(value)` for `200 found`, `None` for `404`.
async fn until_reads(node: &Node, key: &str, expected: Option<&Value>, deadline: Instant) {
    let what = format!("{} reads {key} as {expected:?}", node.addr());
    poll_until(deadline, &what, async || {
        let reply = node.try_get(key, &Value::Null).await?;
        let seen = match reply.status {
            200 => Some(reply.value()),
            404 => None,
            _ => return Err(reply.to_string()),
        };
        if seen == expected {
            Ok(())
        } else {
            Err(reply.to_string())
        }
    })
    .await
}

/// Waits until every node in `nodes` answers `key` with the same found value,
/// and returns it.
async fn until_agreed(nodes: &[&Node], key: &str, deadline: Instant) -> Value {
    let what = format!("every replica holds the same {key}");
    poll_until(deadline, &what, async || {
        let mut seen = Vec::new();
        for node in nodes {
            let reply = node.try_get(key, &Value::Null).await?;
            if reply.status != 200 {
                return Err(format!("{}: {reply}", node.addr()));
            }
            seen.push(reply.value().clone());
        }
        if seen.iter().all(|value| *value == seen[0]) {
            Ok(seen[0].clone())
        } else {
            Err(format!("values differ: {seen:?}"))
        }
    })
    .await
}

#[tokio::test]
async fn causal_chain_across_replicas() {
    let cluster = three("causal_chain_across_replicas").await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let mut session = Session::default();

    served(&mut session, &[201], "PUT x at A", async |m| {
        a.put("x", json!("first"), m).await
    })
    .await;
    let read = served(&mut session, &[200], "GET x at B", async |m| {
        b.get("x", m).await
    })
    .await;
    assert_eq!(read.value(), &json!("first"), "{read}");
    served(&mut session, &[201], "PUT y at B", async |m| {
        b.put("y", json!("second"), m).await
    })
    .await;
    let read = served(&mut session, &[200], "GET y at C", async |m| {
        c.get("y", m).await
    })
    .await;
    assert_eq!(read.value(), &json!("second"), "{read}");
    let read = served(&mut session, &[200], "GET x at C", async |m| {
        c.get("x", m).await
    })
    .await;
    assert_eq!(read.value(), &json!("first"), "{read}");
}

#[tokio::test]
async fn writes_replicate_to_every_replica() {
    let cluster = three("writes_replicate_to_every_replica").await;
    let deadline = within(SETTLE_TIMEOUT);
    for (i, origin) in cluster.nodes().into_iter().enumerate() {
        let key = format!("from-{i}");
        origin
            .put(&key, json!(i), &Value::Null)
            .await
            .expect_result(201, "created");
        for node in cluster.nodes() {
            until_reads(node, &key, Some(&json!(i)), deadline).await;
        }
    }
}

#[tokio::test]
async fn concurrent_writes_to_one_key_converge() {
    let cluster = three("concurrent_writes_to_one_key_converge").await;
    let nodes = cluster.nodes();
    for round in 0..5 {
        let key = format!("contested-{round}");
        let mut writers = JoinSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let node = (*node).clone();
            let key = key.clone();
            writers
                .spawn(async move { node.put(&key, json!(format!("w{i}")), &Value::Null).await });
        }
        while let Some(reply) = writers.join_next().await {
            let reply = reply.expect("writer task");
            assert!(matches!(reply.status, 200 | 201), "{reply}");
        }
        let written: Vec<Value> = (0..nodes.len()).map(|i| json!(format!("w{i}"))).collect();
        let agreed = until_agreed(&nodes, &key, within(SETTLE_TIMEOUT)).await;
        assert!(written.contains(&agreed), "{agreed} was never written");
    }
}

#[tokio::test]
async fn causally_later_write_wins_everywhere() {
    let cluster = three("causally_later_write_wins_everywhere").await;
    let (a, b) = (cluster.node(0), cluster.node(1));
    let mut session = Session::default();

    served(&mut session, &[201], "PUT at A", async |m| {
        a.put("order", json!("earlier"), m).await
    })
    .await;
    served(&mut session, &[200], "PUT at B after A", async |m| {
        b.put("order", json!("later"), m).await
    })
    .await;
    let deadline = within(SETTLE_TIMEOUT);
    for node in cluster.nodes() {
        until_reads(node, "order", Some(&json!("later")), deadline).await;
    }
}

/// One client session of [`many_sessions_then_convergence`]: bounded puts and
/// gets at one replica; every answer succeeds and reads see the session's writes.
async fn session_loop(id: usize, node: Node, rounds: usize) -> Vec<(String, Value)> {
    let mut session = Session::default();
    let own_keys: Vec<String> = (0..3).map(|k| format!("s{id}-k{k}")).collect();
    for round in 0..rounds {
        let key = &own_keys[round % own_keys.len()];
        let value = json!({ "session": id, "round": round });
        let put = session.put_at(&node, key, value.clone()).await;
        let expected = if round < own_keys.len() { 201 } else { 200 };
        assert_eq!(put.status, expected, "session {id} PUT {key}: {put}");
        session.get_at(&node, key).await.expect_found(&value);

        let shared = format!("shared-{}", round % 4);
        let put = session.put_at(&node, &shared, value).await;
        assert!(matches!(put.status, 200 | 201), "session {id}: {put}");
        let read = session.get_at(&node, &shared).await;
        assert_eq!(read.status, 200, "session {id} GET {shared}: {read}");
    }
    let last_round = |k: usize| (0..rounds).filter(|r| r % own_keys.len() == k).max();
    own_keys
        .iter()
        .enumerate()
        .filter_map(|(k, key)| {
            let round = last_round(k)?;
            Some((key.clone(), json!({ "session": id, "round": round })))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_then_convergence() {
    const SESSIONS: usize = 64;
    const ROUNDS: usize = 8;
    let cluster = three("many_sessions_then_convergence").await;
    let mut sessions = JoinSet::new();
    for id in 0..SESSIONS {
        let node = cluster.node(id % cluster.len()).clone();
        sessions.spawn(session_loop(id, node, ROUNDS));
    }
    let mut finals = Vec::new();
    while let Some(written) = sessions.join_next().await {
        finals.extend(written.expect("session task"));
    }

    let nodes = cluster.nodes();
    let deadline = within(SETTLE_TIMEOUT);
    for (key, value) in &finals {
        for node in &nodes {
            until_reads(node, key, Some(value), deadline).await;
        }
    }
    for shared in 0..4 {
        until_agreed(&nodes, &format!("shared-{shared}"), deadline).await;
    }
}

#[tokio::test]
async fn deletes_reach_every_replica() {
    let cluster = three("deletes_reach_every_replica").await;
    let (a, b) = (cluster.node(0), cluster.node(1));
    let mut session = Session::default();

    served(&mut session, &[201], "PUT at A", async |m| {
        a.put("gone", json!("soon"), m).await
    })
    .await;
    served(&mut session, &[200], "DELETE at B", async |m| {
        b.delete("gone", m).await
    })
    .await;
    for node in cluster.nodes() {
        let what = format!("GET after the delete at {}", node.addr());
        let meta = session.meta().clone();
        until_served(within(SETTLE_TIMEOUT), &what, async || {
            node.get("gone", &meta).await
        })
        .await
        .expect_error(404, ERR_NO_KEY);
    }
    let deadline = within(SETTLE_TIMEOUT);
    for node in cluster.nodes() {
        until_reads(node, "gone", None, deadline).await;
    }
}

#[tokio::test]
async fn view_changes_propagate() {
    let cluster = three("view_changes_propagate").await;
    let (a, b) = (cluster.node(0), cluster.node(1));
    let gone = cluster.addr(2);
    let mut without: BTreeSet<String> = cluster.addrs();
    without.remove(&gone);

    a.view_delete(&gone)
        .await
        .expect_status_body(200, json!({ "result": "deleted" }));
    // The deletion reaches B. (C is alive, so the cluster may re-admit it after
    // its stability period: look for B's view without C, not for how long.)
    let what = format!("{} drops {gone}", b.addr());
    poll_until(within(SETTLE_TIMEOUT), &what, async || {
        let view = b.try_view().await?;
        match view.contains(&gone) {
            false => Ok(()),
            true => Err(format!("{view:?}")),
        }
    })
    .await;

    // PUT re-adds it ("already present" if the cluster re-admitted it first).
    let put = a.view_put(&gone).await;
    assert!(matches!(put.status, 200 | 201), "{put}");
    until_views(&cluster.nodes(), &cluster.addrs(), within(SETTLE_TIMEOUT)).await;
}

/// `n` keys `prefix-0..n` with values `0..n`.
fn numbered(prefix: &str, n: usize) -> Vec<(String, Value)> {
    (0..n)
        .map(|i| (format!("{prefix}-{i}"), json!(i)))
        .collect()
}

/// Writes `keys` at A and B and waits until every replica holds them all.
async fn write_everywhere(cluster: &TestCluster, keys: &[(String, Value)]) {
    for (i, (key, value)) in keys.iter().enumerate() {
        cluster
            .node(i % 2)
            .put(key, value.clone(), &Value::Null)
            .await
            .expect_result(201, "created");
    }
    let deadline = within(SETTLE_TIMEOUT);
    for (key, value) in keys {
        for node in cluster.nodes() {
            until_reads(node, key, Some(value), deadline).await;
        }
    }
}

/// Waits until `node` holds every key of `keys` (a 503 counts as not yet).
async fn until_holds(node: &Node, keys: &[(String, Value)], deadline: Instant) {
    for (key, value) in keys {
        until_reads(node, key, Some(value), deadline).await;
    }
}

#[tokio::test]
async fn crashed_replica_leaves_views_and_returns_whole() {
    let mut cluster = three("crashed_replica_leaves_views_and_returns_whole").await;
    let mut keys = numbered("before", 5);
    write_everywhere(&cluster, &keys).await;

    cluster.kill(2);
    let killed = Instant::now() + CONTRACT_HEAL;
    cluster
        .node(0)
        .put("during", json!("down"), &Value::Null)
        .await
        .expect_result(201, "created");
    keys.push(("during".into(), json!("down")));
    let mut survivors = cluster.addrs();
    survivors.remove(&cluster.addr(2));
    until_views(&[cluster.node(0), cluster.node(1)], &survivors, killed).await;

    cluster.restart(2);
    let restarted = Instant::now() + CONTRACT_HEAL;
    until_views(&cluster.nodes(), &cluster.addrs(), restarted).await;
    until_holds(cluster.node(2), &keys, restarted).await;
}

#[tokio::test]
async fn restarted_replica_writes_are_new() {
    let mut cluster = three("restarted_replica_writes_are_new").await;
    let (old_keys, new_keys) = (numbered("old", 3), numbered("new", 3));
    let mut old = Session::default();
    for (key, value) in &old_keys {
        old.put_at(cluster.node(0), key, value.clone())
            .await
            .expect_result(201, "created");
    }
    for node in [cluster.node(1), cluster.node(2)] {
        until_holds(node, &old_keys, within(SETTLE_TIMEOUT)).await;
    }

    cluster.kill(0);
    cluster.restart(0);
    cluster.wait_ready(within(common::READY_TIMEOUT)).await;

    // A fresh client session writes as many new keys at the restarted replica:
    // if its writes reused the old ones' identities, B and C would skip them.
    let mut fresh = Session::default();
    let a = cluster.node(0);
    for (key, value) in &new_keys {
        served(&mut fresh, &[201], "PUT at restarted A", async |m| {
            a.put(key, value.clone(), m).await
        })
        .await;
    }
    for node in [cluster.node(1), cluster.node(2)] {
        for (key, value) in &new_keys {
            let what = format!("GET {key} at {}", node.addr());
            let read = served(&mut fresh, &[200], &what, async |m| node.get(key, m).await).await;
            assert_eq!(read.value(), value, "{read}");
        }
        until_holds(node, &new_keys, within(SETTLE_TIMEOUT)).await;
    }
}
