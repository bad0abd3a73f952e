//! The HTTP contract (`shared/api-contract.md`), row by row, against real replicas.
//!
//! Clients written for the classroom system must work against causalkv unchanged,
//! so every row of the contract's tables is checked here over HTTP, against a
//! 3-replica cluster of real `causalkv serve` processes (plus a one-replica
//! cluster where a row needs special settings or a foreign origin): statuses,
//! exact error sentences, JSON bodies and Content-Type on every answer.

mod common;

use std::net::TcpListener;

use common::{
    Body, ERR_CAUSAL, ERR_KEY_TOO_LONG, ERR_NO_KEY, ERR_NO_REPLICA, ERR_NO_VALUE, InSession,
    Session, TestCluster, kvs_path, until_served, within,
};
use reqwest::Method;
use serde_json::{Value, json};

async fn three(name: &str) -> TestCluster {
    TestCluster::start(name, 3).await
}

/// A JSON value of `len` characters (as a JSON string).
fn long_string(len: usize) -> Value {
    Value::String("v".repeat(len))
}

#[tokio::test]
async fn put_creates_then_replaces() {
    let cluster = three("put_creates_then_replaces").await;
    let node = cluster.node(0);

    let m1 = node
        .put("latte", json!("milk"), &Value::Null)
        .await
        .expect_result(201, "created");
    node.put("latte", json!("oat milk"), &m1)
        .await
        .expect_result(200, "replaced");
    // A fresh session (null metadata) replaces just the same.
    node.put("latte", json!("soy milk"), &Value::Null)
        .await
        .expect_result(200, "replaced");
}

#[tokio::test]
async fn put_without_a_value_is_rejected() {
    let cluster = three("put_without_a_value_is_rejected").await;
    let node = cluster.node(0);

    let no_value = json!({ "causal-metadata": null });
    let null_value = json!({ "value": null, "causal-metadata": null });
    for body in [no_value, null_value] {
        node.kvs(Method::PUT, "tea", Body::Json(body))
            .await
            .expect_exact_error(400, ERR_NO_VALUE);
    }
    // Rejected requests change nothing.
    node.get("tea", &Value::Null)
        .await
        .expect_error(404, ERR_NO_KEY);
}

#[tokio::test]
async fn keys_longer_than_50_are_rejected() {
    let cluster = three("keys_longer_than_50_are_rejected").await;
    let node = cluster.node(0);
    let key50 = "k".repeat(50);
    let key51 = "k".repeat(51);

    let meta = node
        .put(&key50, json!(50), &Value::Null)
        .await
        .expect_result(201, "created");
    node.get(&key50, &meta).await.expect_found(&json!(50));
    node.put(&key51, json!(51), &meta)
        .await
        .expect_exact_error(400, ERR_KEY_TOO_LONG);
}

#[tokio::test]
async fn key_length_counts_the_decoded_key() {
    let cluster = three("key_length_counts_the_decoded_key").await;
    let node = cluster.node(0);
    // 50 characters, 100 once percent-encoded ("a b" -> "a%20b").
    let key50 = "a ".repeat(25);
    let key51 = format!("{key50}!");
    assert!(kvs_path(&key50).len() > "/kvs/".len() + 51);

    let meta = node
        .put(&key50, json!("spaced"), &Value::Null)
        .await
        .expect_result(201, "created");
    node.get(&key50, &meta).await.expect_found(&json!("spaced"));
    node.put(&key51, json!("spaced"), &meta)
        .await
        .expect_exact_error(400, ERR_KEY_TOO_LONG);
}

#[tokio::test]
async fn get_finds_or_answers_404() {
    let cluster = three("get_finds_or_answers_404").await;
    let node = cluster.node(0);

    let meta = node
        .put("mocha", json!("chocolate"), &Value::Null)
        .await
        .expect_result(201, "created");
    let after = node
        .get("mocha", &meta)
        .await
        .expect_found(&json!("chocolate"));
    node.get("chai", &after).await.expect_error(404, ERR_NO_KEY);
    node.get("chai", &Value::Null)
        .await
        .expect_error(404, ERR_NO_KEY);
}

#[tokio::test]
async fn delete_removes_or_answers_404() {
    let cluster = three("delete_removes_or_answers_404").await;
    let node = cluster.node(0);

    let meta = node
        .put("espresso", json!("short"), &Value::Null)
        .await
        .expect_result(201, "created");
    let meta = node
        .delete("espresso", &meta)
        .await
        .expect_result(200, "deleted");
    node.get("espresso", &meta)
        .await
        .expect_error(404, ERR_NO_KEY);
    node.delete("espresso", &meta)
        .await
        .expect_error(404, ERR_NO_KEY);
    node.delete("ristretto", &Value::Null)
        .await
        .expect_error(404, ERR_NO_KEY);
    // A deleted key is created anew.
    node.put("espresso", json!("double"), &meta)
        .await
        .expect_result(201, "created");
}

#[tokio::test]
async fn get_and_delete_work_without_a_body() {
    let cluster = three("get_and_delete_work_without_a_body").await;
    let node = cluster.node(0);
    node.put("cortado", json!("equal parts"), &Value::Null)
        .await
        .expect_result(201, "created");

    node.kvs(Method::GET, "cortado", Body::Empty)
        .await
        .expect_found(&json!("equal parts"));
    node.kvs(Method::GET, "macchiato", Body::Empty)
        .await
        .expect_error(404, ERR_NO_KEY);
    node.kvs(Method::DELETE, "cortado", Body::Empty)
        .await
        .expect_result(200, "deleted");
    node.kvs(Method::DELETE, "cortado", Body::Empty)
        .await
        .expect_error(404, ERR_NO_KEY);
}

#[tokio::test]
async fn every_non_null_json_value_round_trips() {
    let cluster = three("every_non_null_json_value_round_trips").await;
    let node = cluster.node(0);
    let values = [
        json!({ "size": "grande", "shots": [1, 2], "iced": false, "nested": { "a": {} } }),
        json!({}),
        json!([1, "two", 3.5, null, [true]]),
        json!([]),
        json!(42),
        json!(-7),
        json!(2.5),
        json!(true),
        json!(false),
        json!("a string"),
        json!(""),
        json!("ünïcødé ☕"),
    ];
    let mut session = Session::default();
    for (i, value) in values.iter().enumerate() {
        let key = format!("value-{i}");
        session
            .put_at(node, &key, value.clone())
            .await
            .expect_result(201, "created");
        session.get_at(node, &key).await.expect_found(value);
    }
}

/// Metadata causalkv never produced, in every position it can appear.
#[tokio::test]
async fn foreign_metadata_is_rejected_with_400() {
    let cluster = three("foreign_metadata_is_rejected_with_400").await;
    let node = cluster.node(0);
    node.put("flat-white", json!("velvet"), &Value::Null)
        .await
        .expect_result(201, "created");

    for meta in [json!("garbage"), json!({ "x": 1 }), json!(42)] {
        node.put("flat-white", json!("foam"), &meta)
            .await
            .expect_some_error(400);
        node.get("flat-white", &meta).await.expect_some_error(400);
        node.delete("flat-white", &meta)
            .await
            .expect_some_error(400);
    }
    // None of them changed anything.
    node.get("flat-white", &Value::Null)
        .await
        .expect_found(&json!("velvet"));
}

#[tokio::test]
async fn malformed_bodies_are_rejected_with_400() {
    let cluster = three("malformed_bodies_are_rejected_with_400").await;
    let node = cluster.node(0);
    node.put("lungo", json!("long"), &Value::Null)
        .await
        .expect_result(201, "created");

    let broken: [&[u8]; 4] = [b"{not json", b"{\"value\": ", b"\xff\xfe", b"[1, 2]"];
    for bytes in broken {
        for method in [Method::PUT, Method::GET, Method::DELETE] {
            node.kvs(method, "lungo", Body::Raw(bytes.to_vec()))
                .await
                .expect_some_error(400);
        }
        node.request(Method::PUT, "/view", Body::Raw(bytes.to_vec()))
            .await
            .expect_some_error(400);
        node.request(Method::DELETE, "/view", Body::Raw(bytes.to_vec()))
            .await
            .expect_some_error(400);
    }
    // The replica is unharmed and its state unchanged.
    node.get("lungo", &Value::Null)
        .await
        .expect_found(&json!("long"));
    assert_eq!(node.view().await, cluster.addrs());
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let cluster = three("unknown_routes_and_methods_answer_json_errors").await;
    let node = cluster.node(0);

    for path in ["/", "/nope", "/views", "/view/extra", "/kvsx/americano"] {
        node.request(Method::GET, path, Body::Empty)
            .await
            .expect_some_error(404);
    }
    // No key at all: not fixed by the contract, but a JSON client error.
    for path in ["/kvs", "/kvs/"] {
        let reply = node.request(Method::GET, path, Body::Empty).await;
        assert!((400..500).contains(&reply.status), "GET {path}: {reply}");
        reply.expect_some_error(reply.status);
    }
    let wrong_methods = [
        (Method::POST, "/kvs/americano".to_owned()),
        (Method::PATCH, "/kvs/americano".to_owned()),
        (Method::POST, "/view".to_owned()),
        (Method::PATCH, "/view".to_owned()),
    ];
    for (method, path) in wrong_methods {
        let reply = node
            .request(method.clone(), &path, Body::Json(json!({ "value": 1 })))
            .await;
        assert!(
            (400..500).contains(&reply.status),
            "{method} {path}: {reply}"
        );
        reply.expect_some_error(reply.status);
    }
}

#[tokio::test]
async fn view_put_get_delete() {
    // A long failure timeout keeps the stand-in replica listed while we look.
    let cluster =
        TestCluster::start_with("view_put_get_delete", 3, &["--failure-timeout", "60s"]).await;
    let node = cluster.node(0);
    // A stand-in replica: a port that accepts connections and never answers.
    let stand_in = TcpListener::bind("127.0.0.1:0").expect("bind stand-in");
    let extra = stand_in.local_addr().expect("stand-in address").to_string();

    let view = node.view_get().await;
    view.expect_status(200);
    assert_eq!(node.view().await, cluster.addrs(), "{view}");

    node.view_put(&extra)
        .await
        .expect_status_body(201, json!({ "result": "added" }));
    node.view_put(&extra)
        .await
        .expect_status_body(200, json!({ "result": "already present" }));
    node.view_put(&cluster.addr(1))
        .await
        .expect_status_body(200, json!({ "result": "already present" }));
    let mut with_extra = cluster.addrs();
    with_extra.insert(extra.clone());
    assert_eq!(node.view().await, with_extra);

    node.view_delete(&extra)
        .await
        .expect_status_body(200, json!({ "result": "deleted" }));
    node.view_delete(&extra)
        .await
        .expect_exact_error(404, ERR_NO_REPLICA);
    assert_eq!(node.view().await, cluster.addrs());
    drop(stand_in);
}

#[tokio::test]
async fn view_requests_need_a_well_formed_socket_address() {
    let cluster = three("view_requests_need_a_well_formed_socket_address").await;
    let node = cluster.node(0);
    let bad_bodies = [
        json!({}),
        json!({ "address": "127.0.0.1:8090" }),
        json!({ "socket-address": null }),
        json!({ "socket-address": 8090 }),
        json!({ "socket-address": ["127.0.0.1:8090"] }),
        json!({ "socket-address": "" }),
        json!({ "socket-address": "nonsense" }),
        json!({ "socket-address": "127.0.0.1" }),
        json!({ "socket-address": "127.0.0.1:99999" }),
        json!({ "socket-address": "127.0.0.1:port" }),
        json!("127.0.0.1:8090"),
    ];
    for body in bad_bodies {
        for method in [Method::PUT, Method::DELETE] {
            node.request(method, "/view", Body::Json(body.clone()))
                .await
                .expect_some_error(400);
        }
    }
    for method in [Method::PUT, Method::DELETE] {
        node.request(method, "/view", Body::Empty)
            .await
            .expect_some_error(400);
    }
    assert_eq!(node.view().await, cluster.addrs());
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let cluster = TestCluster::start_with(
        "bodies_over_the_limit_get_413",
        1,
        &["--max-body-bytes", "1024"],
    )
    .await;
    let node = cluster.node(0);

    node.put("big", long_string(4096), &Value::Null)
        .await
        .expect_some_error(413);
    // Still serving, and the big write did not happen.
    node.get("big", &Value::Null)
        .await
        .expect_error(404, ERR_NO_KEY);
    node.put("small", long_string(100), &Value::Null)
        .await
        .expect_result(201, "created");
}

/// Metadata from a replica of another cluster names writes this cluster never
/// saw: well-formed, but its dependencies can never be satisfied here.
#[tokio::test]
async fn unsatisfiable_dependencies_get_503_after_validation() {
    let home = three("unsatisfiable_dependencies_home").await;
    let foreign = TestCluster::start("unsatisfiable_dependencies_foreign", 1).await;
    let foreign_meta = foreign
        .node(0)
        .put("matcha", json!("foreign"), &Value::Null)
        .await
        .expect_result(201, "created");
    let node = home.node(0);
    node.put("matcha", json!("home"), &Value::Null)
        .await
        .expect_result(201, "created");

    // Validation (400) comes before the causal check (503).
    let no_value = json!({ "causal-metadata": foreign_meta });
    node.kvs(Method::PUT, "matcha", Body::Json(no_value))
        .await
        .expect_exact_error(400, ERR_NO_VALUE);
    node.put(&"k".repeat(51), json!(1), &foreign_meta)
        .await
        .expect_exact_error(400, ERR_KEY_TOO_LONG);

    node.get("matcha", &foreign_meta)
        .await
        .expect_exact_error(503, ERR_CAUSAL);
    node.get("hojicha", &foreign_meta)
        .await
        .expect_exact_error(503, ERR_CAUSAL);
    node.put("matcha", json!("tea"), &foreign_meta)
        .await
        .expect_exact_error(503, ERR_CAUSAL);
    node.delete("matcha", &foreign_meta)
        .await
        .expect_exact_error(503, ERR_CAUSAL);

    // The refused write and delete did not happen.
    node.get("matcha", &Value::Null)
        .await
        .expect_found(&json!("home"));
}

/// Metadata may grow with the number of replicas, never with the number of writes.
#[tokio::test]
async fn metadata_stays_small() {
    let cluster = three("metadata_stays_small").await;
    let mut session = Session::default();
    let deadline = within(common::SETTLE_TIMEOUT);
    let mut sizes = Vec::new();
    for round in 0..40 {
        for node in cluster.nodes() {
            let key = format!("cup-{}", round % 5);
            let reply = until_served(deadline, "a write is served", async || {
                node.put(&key, json!(round), session.meta()).await
            })
            .await;
            assert!(matches!(reply.status, 200 | 201), "{reply}");
            session.observe(&reply);
        }
        sizes.push(session.meta().to_string().len());
    }
    let (first, last) = (sizes[0], sizes[sizes.len() - 1]);
    assert!(
        last <= first + 64,
        "metadata grew from {first} to {last} bytes over {} writes: {sizes:?}",
        sizes.len() * 3
    );
}
