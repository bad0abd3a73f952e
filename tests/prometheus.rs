//! `/metrics` as operators consume it: the exposition text checked by a parser, and a real
//! Prometheus (Debian's `prometheus`, which `.ci/run` installs) scraping a local cluster
//! and answering queries over its HTTP API.
//!
//! The families must all be there, counters must move with traffic, and the replication
//! queue-depth and lag gauges must rise while a peer is cut off (stopped with SIGSTOP: it
//! keeps its connections but answers nothing) and fall once it is back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{InSession, Session, TestCluster, poll_until, within};
use serde_json::{Value, json};

/// The families dashboards and alerts depend on, as a query names their samples.
const FAMILIES: [&str; 15] = [
    "causalkv_http_requests_total",
    "causalkv_http_request_duration_seconds_count",
    "causalkv_replication_queue_depth",
    "causalkv_replication_lag_writes",
    "causalkv_replication_failures_total",
    "causalkv_delivery_buffer_writes",
    "causalkv_view_members",
    "causalkv_view_changes_total",
    "causalkv_causal_wait_seconds_count",
    "causalkv_causal_timeouts_total",
    "causalkv_anti_entropy_entries_total",
    "causalkv_lock_hold_seconds_count",
    "causalkv_lock_hold_max_seconds",
    "causalkv_keys",
    "causalkv_store_bytes",
];
const PROCESS: [&str; 3] = [
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
];
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(60);

/// One parsed sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses OpenMetrics text strictly enough to catch a malformed exposition: every
/// sample belongs to the family its `# TYPE` line declared (with that type's suffixes),
/// label values are quoted and escaped, values are numbers, and `# EOF` ends it.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut family: Option<(String, String)> = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            return match lines.peek() {
                None => Ok(samples),
                Some(extra) => Err(format!("text after # EOF: {extra:?}")),
            };
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            family = Some((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        let (name, kind) = family
            .as_ref()
            .ok_or(format!("sample before TYPE: {line}"))?;
        let sample = parse_sample(line)?;
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "gauge" => &[""],
            other => return Err(format!("unexpected type {other}")),
        };
        let ok = suffixes.iter().any(|s| sample.name == format!("{name}{s}"));
        if !ok {
            return Err(format!(
                "{} does not belong to {name} ({kind})",
                sample.name
            ));
        }
        samples.push(sample);
    }
    Err("no # EOF".into())
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().map_err(|_| format!("bad value in {line}"))?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest
                .strip_suffix('}')
                .ok_or(format!("unclosed labels: {line}"))?;
            (
                name,
                parse_labels(body).map_err(|e| format!("{e} in {line}"))?,
            )
        }
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    if name.is_empty() || !name.chars().all(valid) {
        return Err(format!("bad metric name in {line}"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_labels(mut body: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    while !body.is_empty() {
        let (name, rest) = body.split_once("=\"").ok_or("label without =\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("bad escape".into()),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.insert(name.to_string(), value);
        body = rest[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&rest[end + 1..]);
    }
    Ok(labels)
}

async fn scrape(addr: &str) -> String {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.expect("metrics text")
}

#[tokio::test]
async fn the_exposition_parses_and_counts_traffic() {
    let cluster = TestCluster::start("metrics-text", 3).await;
    let mut session = Session::default();
    for n in 0..10 {
        session
            .put_at(cluster.node(0), &format!("k{n}"), json!(n))
            .await;
        session.get_at(cluster.node(1), &format!("k{n}")).await;
    }
    let samples = parse_exposition(&scrape(&cluster.addr(0)).await).expect("valid exposition");
    let names: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for family in FAMILIES.iter().chain(&PROCESS) {
        assert!(names.contains(family), "{family} missing from {names:?}");
    }
    let puts = samples
        .iter()
        .find(|s| {
            s.name == "causalkv_http_requests_total"
                && s.labels.get("method").map(String::as_str) == Some("PUT")
                && s.labels.get("status").map(String::as_str) == Some("201")
        })
        .expect("PUT 201 counted");
    assert_eq!(puts.value, 10.0);
    let keys = samples
        .iter()
        .find(|s| s.name == "causalkv_keys")
        .expect("keys");
    assert_eq!(keys.value, 10.0);
    // Every request held the machine's lock at least once.
    let holds = samples
        .iter()
        .find(|s| s.name == "causalkv_lock_hold_seconds_count")
        .expect("lock holds");
    assert!(holds.value >= 10.0, "{holds:?}");
    for sample in &samples {
        for value in sample.labels.values() {
            assert!(!value.starts_with('k'), "a key became a label: {sample:?}");
        }
    }
}

/// A Prometheus server scraping `targets` every second, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus, or `None` where it is not installed (outside CI).
    fn start(name: &str, targets: &[String]) -> Option<Prometheus> {
        let installed = Command::new("prometheus").arg("--version").output().is_ok();
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "prometheus is not installed; .ci/run installs it"
            );
            eprintln!("prometheus is not installed: skipping (apt-get install prometheus)");
            return None;
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("causalkv-prometheus")
            .join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch directory");
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: causalkv\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write the configuration");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Some(Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// The instant vector of `query`: (labels, value) per series.
    async fn query(&self, query: &str) -> Result<Vec<(Value, f64)>, String> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query?query={encoded}", self.url))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        let series = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(series
            .into_iter()
            .map(|s| {
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok());
                (s["metric"].clone(), value.unwrap_or(f64::NAN))
            })
            .collect())
    }

    /// Polls `query` until `ok` holds for its series.
    async fn until(&self, what: &str, query: &str, ok: impl Fn(&[(Value, f64)]) -> bool) {
        poll_until(within(PROMETHEUS_DEADLINE), what, async || {
            let series = self.query(query).await?;
            match ok(&series) {
                true => Ok(()),
                false => Err(format!("{query} = {series:?}")),
            }
        })
        .await;
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test]
async fn prometheus_scrapes_the_cluster_and_sees_a_cut_off_peer() {
    // Long timeouts: the stopped replica stays in the view, so writes queue for it.
    let args = ["--replication-timeout", "30s", "--failure-timeout", "30s"];
    let mut cluster = TestCluster::start_with("metrics-prometheus", 3, &args).await;
    let targets: Vec<String> = (0..3).map(|i| cluster.addr(i)).collect();
    let Some(prometheus) = Prometheus::start("scrape", &targets) else {
        return;
    };
    let (writer, stopped) = (cluster.addr(0), cluster.addr(2));
    prometheus
        .until("every replica is scraped", "sum(up)", |s| {
            s.first().is_some_and(|(_, v)| *v == 3.0)
        })
        .await;
    for family in FAMILIES.iter().chain(&PROCESS) {
        let what = format!("{family} is scraped from every replica");
        prometheus
            .until(
                &what,
                &format!("count(count by (instance) ({family}))"),
                |s| s.first().is_some_and(|(_, v)| *v == 3.0),
            )
            .await;
    }
    // Counters move with traffic.
    let total = "sum(causalkv_http_requests_total{route=\"/kvs/{key}\"})";
    let before = prometheus.query(total).await.expect("a query")[0].1;
    let mut session = Session::default();
    for n in 0..50 {
        session.put_at(cluster.node(0), "counted", json!(n)).await;
    }
    prometheus
        .until("the request counter counts 50 more", total, |s| {
            s.first().is_some_and(|(_, v)| *v >= before + 50.0)
        })
        .await;

    // Cut replica 2 off (it stops answering), and keep writing at replica 0.
    let pid = cluster.pid(2).expect("replica 2 runs");
    signal(pid, "-STOP");
    // Writers that give up on each answer quickly: a write is applied and queued for
    // every peer before its answer waits for the peers, so each one adds to the queue.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (addr, stop) = (writer.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(200))
                .build()
                .expect("an HTTP client");
            for n in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = http
                    .put(format!("http://{addr}/kvs/w{w}"))
                    .body(json!({ "value": n }).to_string())
                    .send()
                    .await;
            }
        }));
    }
    let depth =
        format!("causalkv_replication_queue_depth{{instance=\"{writer}\",peer=\"{stopped}\"}}");
    let lag =
        format!("causalkv_replication_lag_writes{{instance=\"{writer}\",peer=\"{stopped}\"}}");
    prometheus
        .until("the queue for the cut-off peer rises", &depth, |s| {
            s.first().is_some_and(|(_, v)| *v > 0.0)
        })
        .await;
    prometheus
        .until("the lag of the cut-off peer rises", &lag, |s| {
            s.first().is_some_and(|(_, v)| *v > 0.0)
        })
        .await;
    // Back: it drains its queue and catches up.
    signal(pid, "-CONT");
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("a writer");
    }
    prometheus
        .until("the queue for the healed peer falls to 0", &depth, |s| {
            s.first().is_some_and(|(_, v)| *v == 0.0)
        })
        .await;
    prometheus
        .until("the lag of the healed peer falls to 0", &lag, |s| {
            s.first().is_some_and(|(_, v)| *v == 0.0)
        })
        .await;
    cluster.wait_ready(within(PROMETHEUS_DEADLINE)).await;
}

#[tokio::test]
async fn lock_holds_are_timed_in_cpu_time_only_when_asked() {
    let count = |samples: &[Sample], name: &str| {
        (samples.iter())
            .find(|s| s.name == name)
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    for (args, counted) in [(&["--lock-cpu-metrics"][..], true), (&[][..], false)] {
        let cluster = TestCluster::start_with("metrics-cpu", 1, args).await;
        let mut session = Session::default();
        for n in 0..10 {
            session
                .put_at(cluster.node(0), &format!("k{n}"), json!(n))
                .await;
        }
        let text = scrape(&cluster.addr(0)).await;
        let samples = parse_exposition(&text).expect("valid exposition");
        let cpu = count(&samples, "causalkv_lock_hold_cpu_seconds_count");
        let wall = count(&samples, "causalkv_lock_hold_seconds_count");
        assert!(wall >= 10.0, "{wall}");
        match counted {
            // Both are observed as each hold ends; the scrape's own hold may fall between.
            true => assert!(cpu >= 10.0 && cpu <= wall, "cpu {cpu}, wall {wall}"),
            false => assert_eq!(cpu, 0.0),
        }
    }
}
