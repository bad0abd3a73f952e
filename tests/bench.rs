//! `causalkv bench` end to end: the load generator against 3 real replicas, the comparison
//! summary, and the scale report. Only counts and shapes are checked, never timings.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use causalkv::tools::bench::compare::Summary;
use causalkv::tools::bench::report::Report;
use causalkv::tools::bench::scale::ScaleReport;
use common::TestCluster;

/// Runs `causalkv bench ARGS` to completion.
fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_causalkv"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run causalkv bench")
}

/// Runs `causalkv bench ARGS`, which must succeed; returns its stdout.
fn bench_ok(args: &[&str]) -> String {
    let output = bench(args);
    assert!(
        output.status.success(),
        "causalkv bench {args:?} failed: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn replicas(cluster: &TestCluster) -> String {
    Vec::from_iter(cluster.addrs()).join(",")
}

fn report(json: &str) -> Report {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not a report ({e}): {json}"))
}

/// Checks that the report's counts add up to `ops`, all answered with a 2xx.
fn assert_adds_up(r: &Report, ops: u64) {
    assert_eq!(r.overall.ops, ops, "{r:#?}");
    let kinds = r.read.as_ref().map_or(0, |k| k.ops) + r.update.as_ref().map_or(0, |k| k.ops);
    assert_eq!(kinds, ops, "read + update = all");
    let answered: u64 = r.overall.status.values().sum();
    assert_eq!(
        answered + r.overall.errors.total,
        ops,
        "statuses + errors = all"
    );
    assert_eq!(r.overall.errors.total, 0, "no errors: {r:#?}");
    assert_eq!(r.overall.unavailable, 0, "no 503s: {r:#?}");
    assert!(
        r.overall
            .status
            .keys()
            .all(|code| (200..300).contains(code)),
        "{r:#?}"
    );
    let latency = r.overall.latency.as_ref().expect("latency");
    assert_eq!(latency.count, ops);
    assert!(latency.p50_ms <= latency.p99_ms && latency.p99_ms <= latency.max_ms);
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_of_each_workload_adds_up() {
    let cluster = TestCluster::start("bench-workloads", 3).await;
    let replicas = replicas(&cluster);
    let common = [
        "--replica",
        &replicas,
        "--concurrency",
        "4",
        "--keys",
        "50",
        "--prepopulate",
        "--json",
    ];
    let a = report(&bench_ok(
        &[&common[..], &["--workload", "a", "--ops", "200"]].concat(),
    ));
    assert_adds_up(&a, 200);
    assert_eq!((a.workload.as_str(), a.read_percent), ("A", 50));
    assert_eq!(a.endpoints.len(), 3);
    let prepopulated = a.prepopulate.as_ref().expect("prepopulated");
    assert_eq!((prepopulated.keys, prepopulated.failed), (50, 0));

    let c = report(&bench_ok(
        &[&common[..], &["--workload", "c", "--ops", "100"]].concat(),
    ));
    assert_adds_up(&c, 100);
    assert!(c.update.is_none(), "workload C only reads");
    assert_eq!(
        c.read.as_ref().map(|k| k.status.get(&200)),
        Some(Some(&100))
    );

    let write = report(&bench_ok(
        &[
            &common[..],
            &[
                "--workload",
                "write",
                "--ops",
                "100",
                "--distribution",
                "zipfian",
            ],
        ]
        .concat(),
    ));
    assert_adds_up(&write, 100);
    assert!(write.read.is_none(), "workload write only updates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_run_without_prepopulation_counts_404s() {
    let cluster = TestCluster::start("bench-duration", 3).await;
    let replicas = replicas(&cluster);
    let text = bench_ok(&[
        "--replica",
        &replicas,
        "--workload",
        "c",
        "--keys",
        "20",
        "--duration",
        "300ms",
        "--concurrency",
        "2",
        "--json",
    ]);
    let r = report(&text);
    assert!(r.overall.ops > 0);
    assert_eq!(
        r.overall.status.get(&404),
        Some(&r.overall.ops),
        "nothing was written"
    );
    assert!(r.prepopulate.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_report_shows_throughput_and_percentiles() {
    let cluster = TestCluster::start("bench-text", 3).await;
    let text = bench_ok(&[
        "--replica",
        &replicas(&cluster),
        "--ops",
        "50",
        "--keys",
        "10",
    ]);
    assert!(text.contains("throughput:"), "{text}");
    for column in ["p50", "p90", "p99", "p99.9", "max"] {
        assert!(text.contains(column), "{column} missing: {text}");
    }
}

#[test]
fn an_unreachable_target_fails_at_once() {
    let addr = common::free_addrs(1).remove(0);
    let output = bench(&["--replica", &addr, "--ops", "10"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

#[test]
fn bad_options_are_refused() {
    for args in [
        &["--concurrency", "0"][..],
        &["--keys", "0"],
        &["--workload", "z"],
    ] {
        let output = bench(args);
        assert!(!output.status.success(), "{args:?} accepted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_summarized_with_ratios_and_saved() {
    let cluster = TestCluster::start("bench-summary", 3).await;
    let dir = temp_dir("summary");
    let replicas = replicas(&cluster);
    for workload in ["c", "write"] {
        let json = bench_ok(&[
            "--replica",
            &replicas,
            "--workload",
            workload,
            "--ops",
            "100",
            "--keys",
            "20",
            "--prepopulate",
            "--json",
        ]);
        std::fs::write(dir.join(format!("causalkv-{workload}.json")), json).unwrap();
    }
    let peer = r#"{"system":"redis","workload":"C","throughput_ops_s":1000.0,
        "overall":{"latency":{"p50_ms":0.1,"p99_ms":0.2}},"note":"written by a script"}"#;
    std::fs::write(dir.join("redis-c.json"), peer).unwrap();
    let files: Vec<String> = ["causalkv-c", "causalkv-write", "redis-c"]
        .iter()
        .map(|f| dir.join(format!("{f}.json")).display().to_string())
        .collect();
    let save = dir.join("out").join("summary");
    let mut args = vec!["--summarize"];
    args.extend(files.iter().map(String::as_str));
    let save_text = save.display().to_string();
    args.extend(["--save", &save_text]);
    let text = bench_ok(&args);
    assert!(text.contains("C         causalkv"), "{text}");
    assert!(text.contains("vs redis"), "{text}");
    assert!(text.contains("performance targets"), "{text}");
    let saved = std::fs::read_to_string(save.with_extension("json")).expect("summary JSON");
    let summary: Summary = serde_json::from_str(&saved).expect("a summary");
    assert_eq!(summary.rows.len(), 3);
    assert_eq!(summary.ratios.len(), 1, "causalkv vs redis on C");
    if !cfg!(feature = "charts") {
        // Built without the plotting code: no chart, a notice, and still a success.
        assert!(
            !save.with_extension("png").exists(),
            "no chart without `charts`"
        );
        let output = bench(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("without the `charts` feature"), "{stderr}");
    } else if Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        let png = std::fs::read(save.with_extension("png")).expect("chart");
        assert!(png.starts_with(b"\x89PNG"), "a PNG file");
    }
}

#[test]
fn the_scale_report_restarts_a_replica_that_recovers_every_session() {
    let text = bench_ok(&["--scale", "--keys", "300", "--concurrency", "4", "--json"]);
    let r: ScaleReport = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!((r.keys, r.load.keys, r.load.failed), (300, 300, 0));
    let key_bytes: u64 = (0..300u64).map(|i| format!("k{i}").len() as u64).sum();
    assert_eq!(r.raw_bytes, key_bytes + 300 * 32);
    assert_eq!(r.replicas.len(), 3);
    assert!(r.replicas.iter().all(|m| m.loaded_rss_mib > 0.0));
    assert_eq!((r.restart.sessions_verified, r.restart.sessions), (4, 4));
    assert!(r.restart.whole_store_s.is_some() && r.restart.in_every_view_s.is_some());
}

#[test]
fn a_durable_scale_report_restarts_from_disk_and_reads_under_writes() {
    let args = [
        "--scale",
        "--durable",
        "--keys",
        "300",
        "--concurrency",
        "4",
        "--under-writes",
        "1s",
        "--json",
    ];
    let text = bench_ok(&args);
    let r: ScaleReport = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(r.durable);
    let under = r.under_writes.as_ref().expect("the phase under writes");
    assert!(under.reads.ops > 0 && under.writes.ops > 0, "{under:?}");
    assert_eq!(under.replicas.len(), 3);
    assert!(
        under.replicas.iter().all(|h| h.phase.count > 0),
        "{under:?}"
    );
    let disk = r.restart.from_disk.as_ref().expect("the restart's log");
    assert_eq!(disk.keys, Some(300), "{disk:?}");
    // A restart writes no snapshot before serving (the next compaction writes one).
    assert!(disk.recovered_s.is_some(), "{disk:?}");
    let scan = r.restart.scan.as_ref().expect("a read of every key");
    assert_eq!((scan.keys, scan.served), (300, 300));
    let all = r.restart_all.as_ref().expect("the restart of all replicas");
    assert_eq!((all.sessions_verified, all.sessions), (4, 4));
    assert_eq!(all.replicas.len(), 3);
    assert!(
        all.replicas.iter().all(|v| v.from_disk.keys == Some(300)),
        "{all:?}"
    );
    assert_eq!((all.scan.keys, all.scan.served), (300, 300));
}
