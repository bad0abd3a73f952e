//! The command-line client (`causalkv put|get|delete|view`) as its users run it.
//!
//! Scripts depend on the CLI's exit statuses, its one-line errors and its `--json`
//! output, and people depend on the session file to keep their causal guarantee from one
//! invocation to the next. So every test here runs the real binary as a subprocess
//! against a 3-replica cluster of real `causalkv serve` processes (the shared harness in
//! `common`), with its own scratch directory as cache and home.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{TestCluster, free_addrs};
use serde_json::{Value, json};

/// A scratch directory and the CLI binary, run with a clean environment.
struct Cli {
    dir: PathBuf,
}

/// What one invocation printed and how it exited.
#[derive(Debug)]
struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("causalkv-cli")
            .join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch directory");
        Cli { dir }
    }

    /// The session file most tests use.
    fn session(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    /// Runs `causalkv ARGS` at `replica` with the default session file.
    async fn at(&self, replica: &str, args: &[&str]) -> Run {
        let session = self.session();
        let session = session.to_str().expect("UTF-8 scratch path");
        let mut all = args.to_vec();
        all.extend(["--replica", replica, "--session", session]);
        self.run(&all).await
    }

    /// Runs `causalkv ARGS` exactly as given, with XDG_CACHE_HOME and HOME in the
    /// scratch directory and none of the CLI's variables set.
    async fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[]).await
    }

    async fn run_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Run {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_causalkv"));
        command
            .args(args)
            .env_remove("CAUSALKV_REPLICA")
            .env_remove("CAUSALKV_SESSION")
            .env_remove("CAUSALKV_TLS_CA")
            .env_remove("RUST_LOG")
            .env("XDG_CACHE_HOME", self.dir.join("xdg-cache"))
            .env("HOME", self.dir.join("home"))
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().await.expect("run causalkv");
        Run::new(args, output)
    }
}

impl Run {
    fn new(args: &[&str], output: Output) -> Self {
        Run {
            what: format!("causalkv {}", args.join(" ")),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts exit status 0 and nothing on stderr; returns stdout without its newline.
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{}: {self:#?}", self.what);
        assert_eq!(self.stderr, "", "{self:#?}");
        self.stdout.trim_end_matches('\n')
    }

    /// Asserts exit status `code` and exactly one `causalkv: ...` line on stderr;
    /// returns that line.
    #[track_caller]
    fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{}: {self:#?}", self.what);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "not one stderr line: {self:#?}");
        assert!(lines[0].starts_with("causalkv: "), "{self:#?}");
        lines[0]
    }

    /// stdout parsed as one JSON document.
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

async fn three(name: &str) -> TestCluster {
    TestCluster::start(name, 3).await
}

/// The `causal-metadata` saved in a session file.
fn saved_metadata(path: &Path) -> Value {
    let text = fs::read_to_string(path).expect("read session file");
    let document: Value = serde_json::from_str(&text).expect("session file is JSON");
    document["causal-metadata"].clone()
}

#[tokio::test]
async fn put_get_delete_round_trip_with_exit_codes() {
    let cluster = three("cli-round-trip").await;
    let cli = Cli::new("round-trip");
    let a = cluster.addr(0);

    assert_eq!(
        cli.at(&a, &["put", "greeting", "hello"]).await.ok(),
        "created"
    );
    assert_eq!(
        cli.at(&a, &["put", "greeting", "hi"]).await.ok(),
        "replaced"
    );
    assert_eq!(cli.at(&a, &["get", "greeting"]).await.ok(), "hi");
    assert_eq!(cli.at(&a, &["delete", "greeting"]).await.ok(), "deleted");

    let missing = cli.at(&a, &["get", "greeting"]).await;
    let line = missing.fails(1);
    assert!(line.contains("not found"), "{line}");
    assert_eq!(missing.stdout, "", "nothing on stdout for a missing key");
    cli.at(&a, &["delete", "greeting"]).await.fails(1);

    let long_key = "k".repeat(51);
    let line = cli
        .at(&a, &["put", &long_key, "v"])
        .await
        .fails(2)
        .to_owned();
    assert!(line.contains("Key is too long"), "{line}");
    cli.at(&a, &["put", "k", "null"]).await.fails(2);
    // A usage error (no key) is exit 2 as well, from the argument parser.
    assert_eq!(cli.run(&["get"]).await.code, Some(2));
}

#[tokio::test]
async fn values_are_json_when_they_parse_and_json_prints_the_answer() {
    let cluster = three("cli-values").await;
    let cli = Cli::new("values");
    let a = cluster.addr(0);
    let cases: [(&[&str], Value); 6] = [
        (&["put", "number", "42"], json!(42)),
        (&["put", "negative", "-5"], json!(-5)),
        (&["put", "text", "hello world"], json!("hello world")),
        (&["put", "quoted", "\"42\""], json!("42")),
        (&["put", "forced", "42", "--string"], json!("42")),
        (
            &["put", "object", r#"{"a": [1, true]}"#],
            json!({"a": [1, true]}),
        ),
    ];
    for (args, expected) in &cases {
        cli.at(&a, args).await.ok();
        let read = cli.at(&a, &["get", args[1], "--json"]).await;
        read.ok();
        let body = read.json();
        assert_eq!(body["result"], json!("found"), "{read:#?}");
        assert_eq!(&body["value"], expected, "{read:#?}");
        assert!(!body["causal-metadata"].is_null(), "{read:#?}");
    }
    // The replica itself holds a number, not the text "42".
    cluster
        .node(0)
        .get("number", &Value::Null)
        .await
        .expect_found(&json!(42));

    let pretty = cli.at(&a, &["get", "object"]).await;
    let expected = serde_json::to_string_pretty(&json!({"a": [1, true]})).expect("pretty");
    assert_eq!(pretty.ok(), expected);

    let put = cli.at(&a, &["put", "fresh", "1", "--json"]).await;
    put.ok();
    assert_eq!(put.json()["result"], json!("created"));
    assert_eq!(
        put.json()["causal-metadata"],
        saved_metadata(&cli.session())
    );

    let missing = cli.at(&a, &["get", "absent", "--json"]).await;
    missing.fails(1);
    assert_eq!(missing.json(), json!({"error": "Key does not exist"}));
}

#[tokio::test]
async fn the_session_file_carries_causal_metadata_across_invocations() {
    let cluster = three("cli-session").await;
    let cli = Cli::new("session");
    let (a, b) = (cluster.addr(0), cluster.addr(1));

    cli.at(&a, &["put", "x", "1"]).await.ok();
    let after_put = saved_metadata(&cli.session());
    assert!(!after_put.is_null(), "the put's metadata is saved");
    assert_eq!(cli.at(&b, &["get", "x"]).await.ok(), "1");
    let entries: Vec<_> = fs::read_dir(&cli.dir)
        .expect("list scratch directory")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name())
        .collect();
    assert_eq!(
        entries,
        ["session.json"],
        "no temporary file is left behind"
    );

    // The saved metadata is really sent: metadata the replica did not make is refused.
    fs::write(cli.session(), r#"{"causal-metadata": "not ours"}"#).expect("write");
    let line = cli.at(&b, &["get", "x"]).await.fails(2).to_owned();
    assert!(
        line.contains("--no-session"),
        "the error says how to recover: {line}"
    );

    // --no-session ignores the file and saves nothing.
    let run = cli
        .run(&["get", "x", "--replica", &b, "--no-session"])
        .await;
    assert_eq!(run.ok(), "1");
    assert_eq!(saved_metadata(&cli.session()), json!("not ours"));
    let elsewhere = cli.dir.join("unused.json");
    let elsewhere_arg = elsewhere.to_str().expect("UTF-8 path");
    let args = [
        "put",
        "y",
        "2",
        "--replica",
        &a,
        "--no-session",
        "--session",
        elsewhere_arg,
    ];
    cli.run(&args).await.ok();
    assert!(!elsewhere.exists(), "--no-session wins over --session");

    // A file that is not a session is an error, not silently replaced.
    fs::write(cli.session(), "garbage").expect("write");
    let line = cli.at(&a, &["get", "x"]).await.fails(2).to_owned();
    assert!(line.contains("session.json"), "{line}");
    assert_eq!(fs::read_to_string(cli.session()).expect("read"), "garbage");
}

#[tokio::test]
async fn a_session_the_cluster_cannot_satisfy_is_retried_then_exit_2() {
    let cluster = three("cli-stale-session").await;
    let elsewhere = TestCluster::start("cli-stale-session-other", 1).await;
    let cli = Cli::new("stale-session");
    // Metadata naming a write this cluster never saw, as after a cluster restart.
    cli.at(&elsewhere.addr(0), &["put", "x", "1"]).await.ok();

    let all = Vec::from_iter(cluster.addrs()).join(",");
    let run = cli.at(&all, &["get", "x", "--retry-for", "300ms"]).await;
    let line = run.fails(2);
    assert!(
        line.contains("--no-session"),
        "the error says how to recover: {line}"
    );
    let fresh = cli
        .run(&["get", "x", "--replica", &all, "--no-session"])
        .await;
    fresh.fails(1);
}

#[tokio::test]
async fn the_default_session_lives_in_the_cache_directory() {
    let cluster = three("cli-default-session").await;
    let cli = Cli::new("default-session");
    let (a, b) = (cluster.addr(0), cluster.addr(1));

    cli.run(&["put", "x", "1", "--replica", &a]).await.ok();
    let xdg = cli.dir.join("xdg-cache/causalkv/session.json");
    assert!(!saved_metadata(&xdg).is_null());

    let session = cli.dir.join("from-env.json");
    let env = [
        ("CAUSALKV_REPLICA", Path::new(&b)),
        ("CAUSALKV_SESSION", &session),
    ];
    assert_eq!(cli.run_env(&["get", "x"], &env).await.ok(), "1");
    assert!(!saved_metadata(&session).is_null());
}

#[tokio::test]
async fn view_lists_adds_and_removes_replicas() {
    // A long failure timeout keeps the never-started replica added below in the view.
    let cluster = TestCluster::start_with("cli-view", 3, &["--failure-timeout", "60s"]).await;
    let cli = Cli::new("view");
    let a = cluster.addr(0);
    let mut all: Vec<String> = cluster.addrs().into_iter().collect();

    assert_eq!(cli.at(&a, &["view"]).await.ok(), all.join("\n"));
    let listed = cli.at(&a, &["view", "--json"]).await.json();
    let mut listed: Vec<String> = serde_json::from_value(listed["view"].clone()).expect("list");
    listed.sort();
    assert_eq!(listed, all);

    let extra = free_addrs(1).remove(0);
    assert_eq!(cli.at(&a, &["view", "add", &extra]).await.ok(), "added");
    let again = cli.at(&a, &["view", "add", &extra, "--json"]).await;
    assert_eq!(again.json(), json!({"result": "already present"}));
    all.push(extra.clone());
    all.sort();
    assert_eq!(cli.at(&a, &["view"]).await.ok(), all.join("\n"));

    assert_eq!(
        cli.at(&a, &["view", "remove", &extra]).await.ok(),
        "deleted"
    );
    let gone = cli.at(&a, &["view", "remove", &extra, "--json"]).await;
    gone.fails(1);
    assert_eq!(gone.json(), json!({"error": "View has no such replica"}));
    cli.at(&a, &["view", "add", "not-an-address"])
        .await
        .fails(2);
    assert!(!cli.session().exists(), "view commands touch no session");
}

#[tokio::test]
async fn requests_fail_over_when_the_first_replica_is_down() {
    let mut cluster = three("cli-failover").await;
    let cli = Cli::new("failover");
    let (a, b, c) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    cli.at(&a, &["put", "x", "before"]).await.ok();
    cluster.kill(0);

    let both = format!("{a},{b}");
    assert_eq!(cli.at(&both, &["put", "x", "after"]).await.ok(), "replaced");
    let args = ["get", "x", "--replica", &a, "--replica", &c, "--session"];
    let session = cli.session();
    let mut args = args.to_vec();
    args.push(session.to_str().expect("UTF-8 path"));
    assert_eq!(cli.run(&args).await.ok(), "after");

    let line = cli.at(&a, &["get", "x"]).await.fails(2).to_owned();
    assert!(line.contains(&a) && line.contains("unreachable"), "{line}");
}

#[tokio::test]
async fn an_unreachable_replica_is_exit_2_with_one_line() {
    let cli = Cli::new("unreachable");
    let nobody = free_addrs(2);
    let line = cli.at(&nobody[0], &["get", "x"]).await.fails(2).to_owned();
    assert!(line.contains(&nobody[0]), "{line}");
    let both = nobody.join(",");
    let line = cli.at(&both, &["view"]).await.fails(2).to_owned();
    assert!(line.contains(&nobody[1]), "{line}");
    assert!(!cli.session().exists(), "nothing answered, nothing saved");
}

#[tokio::test]
async fn help_documents_the_exit_statuses() {
    let cli = Cli::new("help");
    for command in [
        &["put", "--help"][..],
        &["get", "--help"],
        &["view", "--help"],
    ] {
        let help = cli.run(command).await;
        let text = help.ok();
        assert!(text.contains("Exit status"), "{help:#?}");
        assert!(text.contains("1  not found"), "{help:#?}");
    }
}
