//! `/health` and `/ready` of a real replica while it bootstraps and after.
//!
//! A replica is not ready until it has bootstrapped: announced itself to the replicas of
//! its view and copied the store from a ready one. Here its only peer is a socket that
//! accepts connections but never answers, so the announcement waits out the replication
//! timeout; meanwhile `/ready` must answer 503 with a JSON error and `/health` 200 with
//! `ready: false`, and both must turn once bootstrap ends.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{Node, poll_until, within};
use serde_json::Value;

#[tokio::test]
async fn ready_answers_503_while_bootstrapping_and_200_after() {
    // Accepts (the kernel completes the handshake) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("a silent peer");
    let silent_addr = silent.local_addr().expect("its address").to_string();
    let me = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_causalkv"))
        .args([
            "serve",
            "--listen",
            &me,
            "--view",
            &format!("{me},{silent_addr}"),
        ])
        .args(["--replication-timeout", "8s"])
        .env_remove("SOCKET_ADDRESS")
        .env_remove("VIEW")
        .env_remove("CLUSTER_SECRET")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a replica");
    let node = Node::new(me.clone());
    let result = async {
        let not_ready = poll_until(
            within(Duration::from_secs(5)),
            "/ready answers",
            async || {
                node.try_request(reqwest::Method::GET, "/ready", common::Body::Empty)
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        not_ready.expect_some_error(503);
        assert_eq!(not_ready.body["ready"], Value::Bool(false), "{not_ready}");
        let health = node
            .request(reqwest::Method::GET, "/health", common::Body::Empty)
            .await;
        health.expect_status(200);
        assert_eq!(health.body["ready"], Value::Bool(false), "{health}");
        assert_eq!(health.body["incarnation"], Value::Null, "{health}");
        // Once the announcement times out, bootstrap ends: ready.
        poll_until(
            within(Duration::from_secs(30)),
            "/ready answers 200",
            async || {
                let reply = node
                    .request(reqwest::Method::GET, "/ready", common::Body::Empty)
                    .await;
                match reply.status {
                    200 => Ok(reply),
                    _ => Err(reply.to_string()),
                }
            },
        )
        .await;
        let health = node
            .request(reqwest::Method::GET, "/health", common::Body::Empty)
            .await;
        assert_eq!(health.body["ready"], Value::Bool(true), "{health}");
        assert!(health.body["incarnation"].is_string(), "{health}");
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    drop(silent);
    result
}
