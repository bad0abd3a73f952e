//! `causalkv check` end to end: three real `causalkv serve` processes on loopback (the
//! shared [`common::TestCluster`] harness: free ports, readiness by polling `GET /view`
//! and a read, processes killed on drop), and the `check` command run against them as a
//! user would. A healthy cluster must get a clean verdict (exit 0), and the history file
//! must hold every operation as a JSON line.

mod common;

use std::process::Stdio;

use causalkv::tools::check::history::History;
use common::TestCluster;

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_cluster_gets_a_clean_verdict() {
    let cluster = TestCluster::start("check", 3).await;
    let replicas = Vec::from_iter(cluster.addrs()).join(",");
    let history_file = std::env::temp_dir().join(format!(
        "causalkv-check-history-{}.jsonl",
        std::process::id()
    ));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_causalkv"))
        .args(["check", "--replica", &replicas])
        .args(["--sessions", "4", "--duration", "3s", "--seed", "7"])
        .arg("--history")
        .arg(&history_file)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run causalkv check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let shown = format!(
        "exit: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert_eq!(output.status.code(), Some(0), "{shown}");
    assert!(stdout.contains("clean: no violations"), "{shown}");

    let text = std::fs::read_to_string(&history_file).expect("read the history file");
    let _ = std::fs::remove_file(&history_file);
    let history = History::from_jsonl(&text).expect("parse the history file");
    assert!(!history.ops.is_empty(), "{shown}");
    let operations = format!("clean: no violations in {} operations", history.ops.len());
    assert!(stdout.contains(&operations), "{shown}");
}
