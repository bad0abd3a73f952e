//! `causalkv status` as operators and scripts run it: the real binary, as a subprocess,
//! against real `causalkv serve` processes (the shared harness in `common`) and against
//! servers that are not replicas at all.
//!
//! Scripts depend on the exit status (0 healthy, 1 not, 2 usage) and the `--json`
//! document; people on the table's rows and markers.

mod common;

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use common::{InSession, SETTLE_TIMEOUT, Session, TestCluster, poll_until, within};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// What one `causalkv status` invocation printed and how it exited.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn new(output: Output) -> Self {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// stdout parsed as one JSON document.
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }

    /// Asserts exit status `code` and nothing on stderr; returns stdout.
    #[track_caller]
    fn exits(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{self:#?}");
        assert_eq!(self.stderr, "", "{self:#?}");
        &self.stdout
    }

    /// Asserts exit status 2 and one `causalkv: ...` line on stderr; returns that line.
    #[track_caller]
    fn usage_error(&self) -> &str {
        assert_eq!(self.code, Some(2), "{self:#?}");
        assert_eq!(self.stdout, "", "{self:#?}");
        let line = self.stderr.trim_end();
        assert!(
            line.starts_with("causalkv: ") && !line.contains('\n'),
            "{self:#?}"
        );
        line
    }
}

/// Runs `causalkv status ARGS` with none of the client's variables set.
async fn status(args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_causalkv"))
        .arg("status")
        .args(args)
        .env_remove("CAUSALKV_REPLICA")
        .env_remove("CAUSALKV_TLS_CA")
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run causalkv status");
    Run::new(output)
}

/// `status --replica A --replica B ...` then `extra`.
async fn status_of(replicas: &[String], extra: &[&str]) -> Run {
    let mut args: Vec<&str> = Vec::new();
    for replica in replicas {
        args.extend(["--replica", replica]);
    }
    args.extend(extra);
    status(&args).await
}

/// The table's cell in `column` of the row that starts with `row`: the text under the
/// column's header, up to where the next column starts.
#[track_caller]
fn cell<'a>(table: &'a str, row: &str, column: &str) -> &'a str {
    let header = table.lines().next().expect("a header line");
    let start = header
        .find(column)
        .unwrap_or_else(|| panic!("no column {column}: {table}"));
    let after = start + column.len();
    let next = header[after..]
        .find(|c: char| c != ' ')
        .map(|gap| after + gap);
    let line = table
        .lines()
        .find(|line| line.starts_with(&format!("{row} ")))
        .unwrap_or_else(|| panic!("no row of {row}: {table}"));
    let end = next.unwrap_or(line.len()).min(line.len());
    line.get(start..end).unwrap_or("").trim()
}

/// The keys count every replica reports, in order; `None` for an unreachable one.
fn keys(document: &Value) -> Vec<Option<u64>> {
    let replicas = document["replicas"].as_array().expect("replicas list");
    replicas
        .iter()
        .map(|r| r["health"]["keys"].as_u64())
        .collect()
}

#[tokio::test]
async fn a_healthy_cluster_exits_0_with_a_ready_row_per_replica() {
    let cluster = TestCluster::start("status-healthy", 3).await;
    let addrs: Vec<String> = (0..3).map(|i| cluster.addr(i)).collect();
    let mut session = Session::default();
    for key in ["x", "y", "z"] {
        session
            .put_at(cluster.node(0), key, json!(key))
            .await
            .expect_result(201, "created");
    }

    let document = poll_until(
        within(SETTLE_TIMEOUT),
        "every replica holds the 3 keys",
        async || {
            let run = status_of(&addrs, &["--json"]).await;
            let document = run.json();
            match (run.code, keys(&document)) {
                (Some(0), counts) if counts == [Some(3); 3] => Ok(document),
                _ => Err(format!("{run:?}")),
            }
        },
    )
    .await;
    assert_eq!(document["healthy"], json!(true));
    assert_eq!(document["views_agree"], json!(true));
    for (replica, addr) in document["replicas"].as_array().unwrap().iter().zip(&addrs) {
        assert_eq!(replica["replica"], json!(addr));
        assert_eq!(replica["reachable"], json!(true));
        assert_eq!(replica["health"]["ready"], json!(true));
        assert_eq!(replica["health"]["view"].as_array().unwrap().len(), 3);
    }

    let run = status_of(&addrs, &[]).await;
    let table = run.exits(0);
    assert!(table.starts_with("ADDRESS "), "{table}");
    for addr in &addrs {
        assert_eq!(cell(table, addr, "READY"), "yes", "{table}");
        assert_eq!(cell(table, addr, "VIEW"), "3", "{table}");
        assert_eq!(cell(table, addr, "KEYS"), "3", "{table}");
        assert_eq!(cell(table, addr, "BUFFER"), "0", "{table}");
        let epoch = cell(table, addr, "INCARNATION");
        assert!(epoch.parse::<u64>().is_ok(), "{epoch:?} in {table}");
    }
    let peer_rows = table.lines().filter(|l| l.contains("  up  ")).count();
    assert_eq!(peer_rows, 6, "{table}");
    assert!(
        table.ends_with("healthy: 3 replicas reachable and ready, views agree\n"),
        "{table}"
    );
}

#[tokio::test]
async fn a_dead_replica_is_shown_unreachable_and_fails() {
    let mut cluster = TestCluster::start("status-dead", 3).await;
    let addrs: Vec<String> = (0..3).map(|i| cluster.addr(i)).collect();
    cluster.kill(2);

    // At once: the dead replica refuses connections.
    let run = status_of(&addrs, &["--json"]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    let dead = &run.json()["replicas"][2];
    assert_eq!(dead["replica"], json!(addrs[2]));
    assert_eq!(dead["reachable"], json!(false));
    assert!(
        dead["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{run:#?}"
    );

    // Soon: the others drop it from their views, and agree.
    let live = BTreeSet::from([addrs[0].as_str(), addrs[1].as_str()]);
    poll_until(
        within(SETTLE_TIMEOUT),
        "the live replicas agree on a view without the dead one",
        async || {
            let run = status_of(&addrs, &["--json"]).await;
            let document = run.json();
            let views: Vec<BTreeSet<&str>> = (0..2)
                .map(|i| match &document["replicas"][i]["health"]["view"] {
                    Value::Array(view) => view.iter().filter_map(Value::as_str).collect(),
                    _ => BTreeSet::new(),
                })
                .collect();
            let settled = run.code == Some(1)
                && document["views_agree"] == json!(true)
                && document["healthy"] == json!(false)
                && document["replicas"][2]["reachable"] == json!(false)
                && views.iter().all(|view| *view == live);
            if settled {
                Ok(())
            } else {
                Err(format!("{run:?}"))
            }
        },
    )
    .await;

    let run = status_of(&addrs, &[]).await;
    let table = run.exits(1);
    let dead_row = table
        .lines()
        .find(|line| line.starts_with(&addrs[2]))
        .unwrap_or_else(|| panic!("no row of the dead replica: {table}"));
    assert!(
        dead_row[addrs[2].len()..]
            .trim_start()
            .starts_with("unreachable: "),
        "{table}"
    );
    for addr in &addrs[..2] {
        assert_eq!(cell(table, addr, "READY"), "yes", "{table}");
        assert_eq!(cell(table, addr, "VIEW"), "2", "{table}");
    }
    assert!(
        table.ends_with("unhealthy: 1 of 3 unreachable\n"),
        "{table}"
    );
}

#[tokio::test]
async fn disagreeing_views_fail_and_are_marked() {
    let a = TestCluster::start("status-split-a", 2).await;
    let b = TestCluster::start("status-split-b", 1).await;
    let addrs = vec![a.addr(0), a.addr(1), b.addr(0)];

    let run = status_of(&addrs, &["--json"]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    let document = run.json();
    assert_eq!(document["views_agree"], json!(false));
    assert_eq!(document["healthy"], json!(false));
    for replica in document["replicas"].as_array().unwrap() {
        assert_eq!(replica["reachable"], json!(true), "{document}");
        assert_eq!(replica["health"]["ready"], json!(true), "{document}");
    }

    let run = status_of(&addrs, &[]).await;
    let table = run.exits(1);
    assert_eq!(cell(table, &addrs[0], "VIEW"), "2", "{table}");
    assert_eq!(cell(table, &addrs[1], "VIEW"), "2", "{table}");
    assert_eq!(cell(table, &addrs[2], "VIEW"), "1*", "{table}");
    let mut majority = [addrs[0].as_str(), addrs[1].as_str()];
    majority.sort();
    let expected = format!(
        "Views differ: 2 of 3 reachable replicas hold {}; the others (*):\n  {}  {}\n",
        majority.join(", "),
        addrs[2],
        addrs[2]
    );
    assert!(table.contains(&expected), "{table}");
    assert!(table.ends_with("unhealthy: views differ\n"), "{table}");
}

#[tokio::test]
async fn watch_prints_every_refresh_and_stops_after_count() {
    let cluster = TestCluster::start("status-watch", 1).await;
    let addrs = vec![cluster.addr(0)];
    let watch = ["--watch", "--count", "2", "--interval", "100ms"];

    let run = status_of(&addrs, &watch).await;
    let out = run.exits(0);
    assert_eq!(out.matches("\nADDRESS ").count(), 2, "{out}");
    assert_eq!(out.matches("Every 100ms, at ").count(), 2, "{out}");
    assert_eq!(out.matches("healthy: 1 replica reachable").count(), 2);

    let mut json_watch = watch.to_vec();
    json_watch.push("--json");
    let run = status_of(&addrs, &json_watch).await;
    let lines: Vec<&str> = run.exits(0).lines().collect();
    assert_eq!(lines.len(), 2, "one JSON document per refresh: {run:#?}");
    for line in lines {
        let document: Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(document["healthy"], json!(true), "{document}");
    }
}

/// A loopback server that answers every connection with `response` (or, with `None`,
/// reads the request and never answers).
async fn fake_server(response: Option<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let response = response.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                match response {
                    Some(response) => {
                        let _ = stream.write_all(response.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    addr
}

fn http_200(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn servers_that_are_not_replicas_are_unreachable_with_a_reason() {
    let not_json = fake_server(Some(http_200("<html>\nhello\n</html>"))).await;
    let wrong_shape = fake_server(Some(http_200(r#"{"replica": 5, "view": "all"}"#))).await;
    let silent = fake_server(None).await;
    let addrs = vec![not_json, wrong_shape, silent];

    let run = status_of(&addrs, &["--json", "--timeout", "300ms"]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    let document = run.json();
    let errors: Vec<&str> = document["replicas"]
        .as_array()
        .expect("replicas list")
        .iter()
        .map(|r| {
            assert_eq!(r["reachable"], json!(false), "{document}");
            r["error"].as_str().expect("an error")
        })
        .collect();
    assert_eq!(
        errors[0],
        "/health answered 200, not JSON: <html> hello </html>"
    );
    assert!(
        errors[1].starts_with("malformed /health answer: "),
        "{errors:?}"
    );
    assert_eq!(errors[2], "no answer within 300ms");
    assert_eq!(document["healthy"], json!(false));

    let run = status_of(&addrs, &["--timeout", "300ms"]).await;
    let table = run.exits(1);
    assert_eq!(table.matches("  unreachable: ").count(), 3, "{table}");
    assert!(
        table.ends_with("unhealthy: 3 of 3 unreachable\n"),
        "{table}"
    );
}

#[tokio::test]
async fn usage_and_tls_configuration_errors_exit_2() {
    let line = status(&["--replica", "https://127.0.0.1:1"])
        .await
        .usage_error()
        .to_string();
    assert!(line.contains("--tls-ca"), "{line}");

    let missing = status(&[
        "--replica",
        "https://127.0.0.1:1",
        "--tls-ca",
        "/nonexistent/ca.pem",
    ])
    .await;
    assert!(
        missing.usage_error().contains("/nonexistent/ca.pem"),
        "{missing:#?}"
    );

    let line = status(&["--replica", " , "])
        .await
        .usage_error()
        .to_string();
    assert!(line.contains("no replica given"), "{line}");

    let count_alone = status(&["--count", "2"]).await;
    assert_eq!(count_alone.code, Some(2), "{count_alone:#?}");
    assert!(count_alone.stderr.contains("--watch"), "{count_alone:#?}");
}
