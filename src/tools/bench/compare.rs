//! `causalkv bench --summarize FILE...`: one comparison of several systems.
//!
//! Each file is a `causalkv bench --json` report, or a row in the same shape written by a
//! script for a system measured by another tool (`redis-benchmark`): only `system`,
//! `workload`, `throughput_ops_s` and `overall.latency.{p50_ms,p99_ms}` are read, plus an
//! optional `note` and `server_cpu.us_per_op` (the servers' CPU time per operation, which
//! `--server-pids` adds to a report). The summary is one table (ops/s, p50, p99 per system and workload),
//! the ratios of causalkv to each peer, and where causalkv stands against the targets of
//! its performance issue; `--save PATH` writes it to PATH.json and a chart to PATH.png
//! (drawn by `chart`, with the `charts` feature: this module does not depend on it).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BenchError;
use super::progress::group_digits;
use super::report::format_ms;

/// The system the others are compared with.
pub const SUBJECT: &str = "causalkv";
/// The row of the fastest possible HTTP/JSON answer on this machine (`bench
/// --serve-ceiling`): what causalkv's figures are also a fraction of.
pub const CEILING: &str = "ceiling";

/// One system on one workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub system: String,
    pub workload: String,
    pub ops_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// How many runs this row is the median of (1 for a single run).
    #[serde(default = "one")]
    pub rounds: usize,
    /// The lowest and highest ops/s of those runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    /// The servers' CPU time per operation, in µs (reports run with `--server-pids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_op: Option<f64>,
}

fn one() -> usize {
    1
}

/// The fields of a report (or script-written row) that a summary reads.
#[derive(Deserialize)]
struct RowSource {
    system: String,
    workload: String,
    throughput_ops_s: f64,
    #[serde(default)]
    overall: Option<OverallSource>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    server_cpu: Option<ServerCpuSource>,
}

#[derive(Deserialize)]
struct ServerCpuSource {
    us_per_op: f64,
}

#[derive(Deserialize)]
struct OverallSource {
    #[serde(default)]
    latency: Option<LatencySource>,
}

#[derive(Deserialize)]
struct LatencySource {
    p50_ms: f64,
    p99_ms: f64,
}

impl Row {
    /// Reads a row from a report's JSON text.
    pub fn parse(text: &str) -> Result<Row, serde_json::Error> {
        let source: RowSource = serde_json::from_str(text)?;
        let latency = source.overall.and_then(|o| o.latency);
        Ok(Row {
            system: source.system,
            workload: source.workload,
            ops_per_sec: source.throughput_ops_s,
            p50_ms: latency.as_ref().map(|l| l.p50_ms),
            p99_ms: latency.as_ref().map(|l| l.p99_ms),
            note: source.note,
            rounds: 1,
            range: None,
            cpu_us_per_op: source.server_cpu.map(|cpu| cpu.us_per_op),
        })
    }

    /// One row for several runs of the same system and workload: the median of each
    /// figure, and the range of ops/s.
    fn median_of(runs: &[Row]) -> Row {
        let ops: Vec<f64> = runs.iter().map(|r| r.ops_per_sec).collect();
        let median_of = |f: fn(&Row) -> Option<f64>| {
            let values: Vec<f64> = runs.iter().filter_map(f).collect();
            (!values.is_empty()).then(|| median(values))
        };
        let min = ops.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ops.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Row {
            system: runs[0].system.clone(),
            workload: runs[0].workload.clone(),
            ops_per_sec: median(ops),
            p50_ms: median_of(|r| r.p50_ms),
            p99_ms: median_of(|r| r.p99_ms),
            note: runs[0].note.clone(),
            rounds: runs.len(),
            range: (runs.len() > 1).then_some([min, max]),
            cpu_us_per_op: median_of(|r| r.cpu_us_per_op),
        }
    }
}

/// The median (the mean of the middle two for an even count); `values` is not empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() % 2 {
        1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

/// Rows of the same system and workload (several rounds) folded into their median.
fn medians(rows: Vec<Row>) -> Vec<Row> {
    let mut groups: Vec<Vec<Row>> = Vec::new();
    for row in rows {
        let same = |g: &Vec<Row>| {
            g[0].system == row.system && g[0].workload.eq_ignore_ascii_case(&row.workload)
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(group) => group.push(row),
            None => groups.push(vec![row]),
        }
    }
    groups.iter().map(|g| Row::median_of(g)).collect()
}

/// causalkv against one peer on one workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub workload: String,
    pub peer: String,
    /// causalkv ops/s ÷ peer ops/s.
    pub throughput: f64,
    /// causalkv p99 ÷ peer p99.
    pub p99: Option<f64>,
}

/// One target of the performance issue, and whether this run meets it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// A whole comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub rows: Vec<Row>,
    pub ratios: Vec<Ratio>,
    pub targets: Vec<TargetCheck>,
}

/// Throughput of the original Flask system on this machine, measured before issue 5
/// (it cannot run here): writes/s and reads/s.
pub const ORIGINAL_WRITES_PER_SEC: f64 = 240.0;
pub const ORIGINAL_READS_PER_SEC: f64 = 230.0;

impl Summary {
    /// The summary of `rows`: runs of the same system and workload (interleaved rounds)
    /// become their median, ordered by workload (C, write, A, B, others) and system
    /// (causalkv, redis, etcd, ceiling, others). Ratios and targets count on medians.
    pub fn new(rows: Vec<Row>) -> Summary {
        let mut rows = medians(rows);
        rows.sort_by_key(|r| (workload_rank(&r.workload), system_rank(&r.system)));
        let ratios = ratios(&rows);
        let targets = targets(&rows);
        Summary {
            rows,
            ratios,
            targets,
        }
    }

    fn find(&self, system: &str, workload: &str) -> Option<&Row> {
        find(&self.rows, system, workload)
    }

    /// Workloads: C, write, A, B, then others in the order of the files.
    pub fn workloads(&self) -> Vec<String> {
        ordered(self.rows.iter().map(|r| r.workload.clone()))
    }

    /// Systems: causalkv, redis, etcd, then others in the order of the files.
    pub fn systems(&self) -> Vec<String> {
        let mut systems = ordered(self.rows.iter().map(|r| r.system.clone()));
        systems.sort_by_key(|s| system_rank(s));
        systems
    }

    /// The comparison as text.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{:<10}{:<11}{:>12}{:>10}{:>10}{:>12}   {}\n",
            "workload", "system", "ops/s", "p50 ms", "p99 ms", "CPU µs/op", "ops/s range (rounds)"
        );
        for workload in self.workloads() {
            for system in self.systems() {
                if let Some(row) = self.find(&system, &workload) {
                    out.push_str(&row_line(row));
                }
            }
        }
        out.push_str(&self.ratio_lines());
        out.push_str(&self.target_lines());
        let notes: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| {
                Some(format!(
                    "  {} {}: {}\n",
                    r.system,
                    r.workload,
                    r.note.as_ref()?
                ))
            })
            .collect();
        if !notes.is_empty() {
            out.push_str("\nnotes:\n");
            out.extend(notes);
        }
        out
    }

    fn ratio_lines(&self) -> String {
        if self.ratios.is_empty() {
            return String::new();
        }
        let mut out = format!("\n{SUBJECT} ÷ peer (throughput; p99 latency, lower is better):\n");
        for r in &self.ratios {
            let p99 = r.p99.map_or("-".to_string(), |p| format!("{p:.2}×"));
            let _ = writeln!(
                out,
                "  {:<8} vs {:<9} {:>8}   p99 {:>8}",
                r.workload,
                r.peer,
                format!("{:.2}×", r.throughput),
                p99
            );
        }
        out
    }

    fn target_lines(&self) -> String {
        if self.targets.is_empty() {
            return String::new();
        }
        let mut out = String::from("\nperformance targets (medians):\n");
        for t in &self.targets {
            let mark = if t.met { "met   " } else { "MISSED" };
            let _ = writeln!(out, "  [{mark}] {}: {}", t.target, t.measured);
        }
        out
    }
}

fn row_line(row: &Row) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), format_ms);
    let ops = |v: f64| group_digits(v.round() as u64);
    let range = match row.range {
        Some([min, max]) => format!("   {}–{} ({})", ops(min), ops(max), row.rounds),
        None => String::new(),
    };
    let cpu = row
        .cpu_us_per_op
        .map_or("-".to_string(), |us| format!("{us:.1}"));
    format!(
        "{:<10}{:<11}{:>12}{:>10}{:>10}{cpu:>12}{range}\n",
        row.workload,
        row.system,
        ops(row.ops_per_sec),
        ms(row.p50_ms),
        ms(row.p99_ms)
    )
}

fn workload_rank(workload: &str) -> usize {
    ["c", "write", "a", "b"]
        .iter()
        .position(|w| workload.eq_ignore_ascii_case(w))
        .unwrap_or(usize::MAX)
}

fn system_rank(system: &str) -> usize {
    [SUBJECT, "redis", "etcd", CEILING]
        .iter()
        .position(|s| system == *s)
        .unwrap_or(usize::MAX)
}

fn ordered(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    items.filter(|item| seen.insert(item.clone())).collect()
}

fn find<'a>(rows: &'a [Row], system: &str, workload: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.system == system && r.workload.eq_ignore_ascii_case(workload))
}

fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for subject in rows.iter().filter(|r| r.system == SUBJECT) {
        for peer in rows
            .iter()
            .filter(|r| r.system != SUBJECT && r.workload == subject.workload)
        {
            if peer.ops_per_sec <= 0.0 {
                continue;
            }
            let p99 = match (subject.p99_ms, peer.p99_ms) {
                (Some(s), Some(p)) if p > 0.0 => Some(s / p),
                _ => None,
            };
            out.push(Ratio {
                workload: subject.workload.clone(),
                peer: peer.system.clone(),
                throughput: subject.ops_per_sec / peer.ops_per_sec,
                p99,
            });
        }
    }
    out
}

/// The targets in force (issue 13, on medians) that the rows allow to check, and the
/// earlier ones still claimed (etcd, the original system).
fn targets(rows: &[Row]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let subject = |w| find(rows, SUBJECT, w);
    if let Some(reads) = subject("C") {
        if let Some(redis) = find(rows, "redis", "C") {
            out.push(at_least("reads (C) ≥ 1.0× Redis GET", reads, redis, 1.0));
        }
        out.push(p99_at_most("reads (C) p99 ≤ 1 ms", reads, 1.0));
        if let Some(ceiling) = find(rows, CEILING, "C") {
            out.push(at_least(
                "reads (C) ≥ 0.8× the ceiling",
                reads,
                ceiling,
                0.8,
            ));
        }
        out.push(absolute(
            "reads (C) ≥ 100× the original system (230 reads/s, measured before)",
            reads,
            100.0 * ORIGINAL_READS_PER_SEC,
        ));
    }
    if let Some(writes) = subject("write") {
        if let Some(redis) = find(rows, "redis", "write") {
            out.push(at_least("writes ≥ 0.6× Redis SET", writes, redis, 0.6));
        }
        out.push(p99_at_most("writes p99 ≤ 1.5 ms", writes, 1.5));
        if let Some(etcd) = find(rows, "etcd", "write") {
            out.push(at_least("writes ≥ 5× etcd puts", writes, etcd, 5.0));
        }
        out.push(absolute(
            "writes ≥ 100× the original system (240 writes/s, measured before)",
            writes,
            100.0 * ORIGINAL_WRITES_PER_SEC,
        ));
    }
    if let (Some(mixed), Some(redis)) = (subject("A"), find(rows, "redis", "A")) {
        out.push(at_least("workload A ≥ 0.8× Redis's A", mixed, redis, 0.8));
    }
    out
}

fn at_least(target: &str, subject: &Row, peer: &Row, factor: f64) -> TargetCheck {
    let ratio = subject.ops_per_sec / peer.ops_per_sec.max(f64::MIN_POSITIVE);
    TargetCheck {
        target: target.to_string(),
        measured: format!(
            "{:.2}× ({} vs {} ops/s)",
            ratio,
            group_digits(subject.ops_per_sec.round() as u64),
            group_digits(peer.ops_per_sec.round() as u64)
        ),
        met: ratio >= factor,
    }
}

fn p99_at_most(target: &str, subject: &Row, limit_ms: f64) -> TargetCheck {
    TargetCheck {
        target: target.to_string(),
        measured: subject
            .p99_ms
            .map_or("no latency measured".to_string(), |p| {
                format!("{} ms", format_ms(p))
            }),
        met: subject.p99_ms.is_some_and(|p| p <= limit_ms),
    }
}

fn absolute(target: &str, subject: &Row, floor: f64) -> TargetCheck {
    TargetCheck {
        target: target.to_string(),
        measured: format!(
            "{} ops/s ({:.0}×)",
            group_digits(subject.ops_per_sec.round() as u64),
            subject.ops_per_sec / (floor / 100.0)
        ),
        met: subject.ops_per_sec >= floor,
    }
}

/// Reads the files, prints the summary (table, or JSON with `json`), saves it as JSON
/// when asked, and returns it.
pub fn run(files: &[PathBuf], save: Option<&Path>, json: bool) -> Result<Summary, BenchError> {
    let mut rows = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| BenchError::Usage(format!("cannot read {}: {e}", file.display())))?;
        let row = Row::parse(&text).map_err(|e| {
            BenchError::Usage(format!("{} is not a bench report: {e}", file.display()))
        })?;
        rows.push(row);
    }
    let summary = Summary::new(rows);
    let encoded = serde_json::to_string_pretty(&summary)
        .map_err(|e| BenchError::Setup(format!("cannot encode the summary: {e}")))?;
    if json {
        println!("{encoded}");
    } else {
        print!("{}", summary.render());
    }
    if let Some(path) = save {
        save_summary(path, &encoded)?;
    }
    Ok(summary)
}

fn save_summary(path: &Path, encoded: &str) -> Result<(), BenchError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let json_path = path.with_extension("json");
    std::fs::write(&json_path, encoded)?;
    eprintln!("saved {}", json_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, workload: &str, ops: f64, p99: f64) -> Row {
        Row {
            system: system.into(),
            workload: workload.into(),
            ops_per_sec: ops,
            p50_ms: Some(p99 / 4.0),
            p99_ms: Some(p99),
            note: None,
            rounds: 1,
            range: None,
            cpu_us_per_op: None,
        }
    }

    fn sample() -> Summary {
        Summary::new(vec![
            row("etcd", "write", 3_000.0, 11.0),
            row("redis", "write", 80_000.0, 0.3),
            row("causalkv", "write", 20_000.0, 4.0),
            row("etcd", "C", 10_000.0, 5.0),
            row("redis", "C", 80_000.0, 0.3),
            row("causalkv", "C", 60_000.0, 0.9),
        ])
    }

    #[test]
    fn rows_are_read_from_reports_and_script_rows() {
        let script = r#"{"system":"redis","workload":"C","throughput_ops_s":81234.5,
            "overall":{"latency":{"p50_ms":0.1,"p99_ms":0.3}},"note":"redis-benchmark"}"#;
        let r = Row::parse(script).unwrap();
        assert_eq!(r.system, "redis");
        assert_eq!(r.p99_ms, Some(0.3));
        assert_eq!(r.note.as_deref(), Some("redis-benchmark"));
        let bare =
            r#"{"system":"x","workload":"A","throughput_ops_s":1.0,"overall":{"latency":null}}"#;
        assert_eq!(Row::parse(bare).unwrap().p50_ms, None);
        assert_eq!(Row::parse(bare).unwrap().cpu_us_per_op, None);
        let report = r#"{"system":"causalkv","workload":"C","throughput_ops_s":2.0,
            "server_cpu":{"seconds":1.5,"us_per_op":41.5}}"#;
        assert_eq!(Row::parse(report).unwrap().cpu_us_per_op, Some(41.5));
        assert!(Row::parse(r#"{"system":"x"}"#).is_err());
    }

    #[test]
    fn ratios_compare_causalkv_with_each_peer() {
        let s = sample();
        assert_eq!(s.ratios.len(), 4);
        let c_redis = &s.ratios[0];
        assert_eq!(
            (c_redis.workload.as_str(), c_redis.peer.as_str()),
            ("C", "redis")
        );
        assert!((c_redis.throughput - 0.75).abs() < 1e-9);
        assert!((c_redis.p99.unwrap() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn targets_are_checked() {
        let s = sample();
        let met = |name: &str| {
            s.targets
                .iter()
                .find(|t| t.target.starts_with(name))
                .unwrap_or_else(|| panic!("no target {name}"))
                .met
        };
        assert!(!met("reads (C) ≥ 1.0× Redis GET"));
        assert!(met("reads (C) p99 ≤ 1 ms"));
        assert!(met("reads (C) ≥ 100×"));
        assert!(!met("writes ≥ 0.6× Redis SET"));
        assert!(!met("writes p99 ≤ 1.5 ms"));
        assert!(met("writes ≥ 5× etcd puts"));
        assert!(!met("writes ≥ 100×"));
    }

    #[test]
    fn interleaved_rounds_are_summarized_by_their_median_and_range() {
        let s = Summary::new(vec![
            row("causalkv", "C", 50_000.0, 1.2),
            row("ceiling", "C", 100_000.0, 0.2),
            row("causalkv", "C", 70_000.0, 0.8),
            row("ceiling", "C", 90_000.0, 0.3),
            row("causalkv", "C", 60_000.0, 0.9),
            row("ceiling", "C", 80_000.0, 0.4),
        ]);
        let causalkv = s.find("causalkv", "C").unwrap();
        assert_eq!(causalkv.ops_per_sec, 60_000.0);
        assert_eq!(causalkv.p99_ms, Some(0.9));
        assert_eq!(causalkv.rounds, 3);
        assert_eq!(causalkv.range, Some([50_000.0, 70_000.0]));
        assert_eq!(s.rows.len(), 2);
        let ceiling = s.ratios.iter().find(|r| r.peer == "ceiling").unwrap();
        assert!((ceiling.throughput - 60.0 / 90.0).abs() < 1e-9);
        let target = s
            .targets
            .iter()
            .find(|t| t.target.contains("ceiling"))
            .unwrap();
        assert!(!target.met, "0.67× the ceiling is below 0.8×");
        assert!(s.render().contains("50,000–70,000 (3)"), "{}", s.render());
        let with_cpu = |us| Row {
            cpu_us_per_op: us,
            ..row("causalkv", "write", 1.0, 1.0)
        };
        let s = Summary::new(vec![
            with_cpu(Some(30.0)),
            with_cpu(None),
            with_cpu(Some(20.0)),
        ]);
        assert_eq!(
            s.find("causalkv", "write").unwrap().cpu_us_per_op,
            Some(25.0)
        );
        assert!(s.render().contains("        25.0"), "{}", s.render());
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn the_table_lists_causalkv_first_in_each_workload() {
        let text = sample().render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("workload"));
        assert!(lines[1].starts_with("C         causalkv"), "{text}");
        assert!(lines[2].starts_with("C         redis"), "{text}");
        assert!(lines[3].starts_with("C         etcd"), "{text}");
        assert!(lines[4].starts_with("write     causalkv"), "{text}");
        assert!(
            text.contains("C        vs redis        0.75×   p99    3.00×"),
            "{text}"
        );
        assert!(
            text.contains("[MISSED] writes p99 ≤ 1.5 ms: 4.000 ms"),
            "{text}"
        );
    }
}
