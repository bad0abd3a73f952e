//! The report of one benchmark run: what was run, throughput, latency percentiles and
//! status counts, per operation kind and overall; as JSON (`--json`) or as a table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::driver::Target;
use super::load::{Measured, Prepopulation};
use super::progress::group_digits;
use super::stats::{KindReport, Latency};
use super::workload::{Distribution, Workload};

/// Everything a run measured, with the parameters that produced it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The system's name in comparisons (`--label`, else the target).
    pub system: String,
    pub target: Target,
    /// `A`, `B`, `C` or `write`.
    pub workload: String,
    pub read_percent: u32,
    pub distribution: Distribution,
    pub keys: u64,
    pub value_size: usize,
    pub concurrency: usize,
    pub endpoints: Vec<String>,
    pub seed: u64,
    pub warmup_s: f64,
    /// Length of the measured period.
    pub duration_s: f64,
    pub prepopulate: Option<Prepopulation>,
    /// All operations finished in the measured period, per second.
    pub throughput_ops_s: f64,
    pub overall: KindReport,
    pub read: Option<KindReport>,
    pub update: Option<KindReport>,
    /// The servers' CPU time in the measured period (with `--server-pids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<ServerCpu>,
}

/// The CPU time the servers named by `--server-pids` used in the measured period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerCpu {
    pub seconds: f64,
    /// Per operation finished in the period (every operation, answered or not).
    pub us_per_op: f64,
}

/// The parameters of a run, as the report shows them.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub system: String,
    pub target: Target,
    pub workload: Workload,
    pub distribution: Distribution,
    pub keys: u64,
    pub value_size: usize,
    pub concurrency: usize,
    pub endpoints: Vec<String>,
    pub seed: u64,
    pub warmup_s: f64,
}

impl Report {
    pub fn new(info: RunInfo, measured: &Measured) -> Report {
        let seconds = measured.elapsed.as_secs_f64();
        let overall = KindReport::of(&measured.recorder.overall(), seconds);
        let kind = |record| {
            let report = KindReport::of(record, seconds);
            (report.ops > 0).then_some(report)
        };
        Report {
            system: info.system,
            target: info.target,
            workload: info.workload.name().to_string(),
            read_percent: info.workload.read_percent(),
            distribution: info.distribution,
            keys: info.keys,
            value_size: info.value_size,
            concurrency: info.concurrency,
            endpoints: info.endpoints,
            seed: info.seed,
            warmup_s: info.warmup_s,
            duration_s: seconds,
            prepopulate: measured.prepopulation.clone(),
            throughput_ops_s: overall.ops_per_sec,
            read: kind(&measured.recorder.read),
            update: kind(&measured.recorder.update),
            server_cpu: measured.server_cpu.map(|cpu| ServerCpu {
                seconds: cpu.as_secs_f64(),
                us_per_op: cpu.as_secs_f64() * 1e6 / (overall.ops.max(1) as f64),
            }),
            overall,
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} bench: workload {} ({}% read / {}% update), {} keys {}, {}-byte values",
            self.system,
            self.workload,
            self.read_percent,
            100 - self.read_percent,
            group_digits(self.keys),
            serde_plain(&self.distribution),
            self.value_size
        );
        let _ = writeln!(
            out,
            "{} sessions over {} endpoint(s): {}",
            self.concurrency,
            self.endpoints.len(),
            self.endpoints.join(", ")
        );
        if let Some(p) = &self.prepopulate {
            let _ = writeln!(
                out,
                "prepopulated {} keys in {:.2} s ({} failed)",
                group_digits(p.keys),
                p.seconds,
                group_digits(p.failed)
            );
        }
        let _ = writeln!(
            out,
            "measured {:.2} s after {:.1} s warm-up\n\nthroughput: {} ops/s ({} ops)\n",
            self.duration_s,
            self.warmup_s,
            group_digits(self.throughput_ops_s.round() as u64),
            group_digits(self.overall.ops)
        );
        if let Some(cpu) = &self.server_cpu {
            let _ = writeln!(
                out,
                "servers' CPU time: {:.2} s, {:.1} µs per operation\n",
                cpu.seconds, cpu.us_per_op
            );
        }
        out.push_str(&self.latency_table());
        out.push('\n');
        out.push_str(&self.status_lines());
        out
    }

    fn latency_table(&self) -> String {
        let mut out = format!(
            "{:<8}{:>10}{:>11}{:>9}{:>9}{:>9}{:>9}{:>9}   (latency in ms)\n",
            "op", "ops", "ops/s", "p50", "p90", "p99", "p99.9", "max"
        );
        let rows = [
            ("read", self.read.as_ref()),
            ("update", self.update.as_ref()),
            ("all", Some(&self.overall)),
        ];
        for (name, kind) in rows {
            if let Some(kind) = kind {
                out.push_str(&latency_row(name, kind));
            }
        }
        out
    }

    fn status_lines(&self) -> String {
        let mut out = String::new();
        let rows = [
            ("read", self.read.as_ref()),
            ("update", self.update.as_ref()),
        ];
        for (name, kind) in rows {
            let Some(kind) = kind else { continue };
            let codes: Vec<String> = kind
                .status
                .iter()
                .map(|(code, n)| format!("{code}: {}", group_digits(*n)))
                .collect();
            let _ = writeln!(
                out,
                "{name:<8}status {}; 503 (causal timeout): {}; errors: {} (timeouts {}, transport {})",
                if codes.is_empty() {
                    "none".to_string()
                } else {
                    codes.join(", ")
                },
                group_digits(kind.unavailable),
                group_digits(kind.errors.total),
                group_digits(kind.errors.timeouts),
                group_digits(kind.errors.transport)
            );
        }
        out
    }
}

fn latency_row(name: &str, kind: &KindReport) -> String {
    let cells = match &kind.latency {
        Some(Latency {
            p50_ms,
            p90_ms,
            p99_ms,
            p999_ms,
            max_ms,
            ..
        }) => [p50_ms, p90_ms, p99_ms, p999_ms, max_ms]
            .iter()
            .map(|ms| format!("{:>9}", format_ms(**ms)))
            .collect::<String>(),
        None => format!("{:>9}", "-").repeat(5),
    };
    format!(
        "{name:<8}{:>10}{:>11}{cells}\n",
        group_digits(kind.ops),
        group_digits(kind.ops_per_sec.round() as u64)
    )
}

/// Milliseconds with three significant digits or so.
pub fn format_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.3}")
    }
}

/// A unit enum's serde name (`uniform`).
fn serde_plain<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tools::bench::stats::{Recorder, Status};
    use crate::tools::bench::workload::OpKind;

    fn sample() -> Report {
        let mut recorder = Recorder::default();
        for i in 0..90 {
            recorder.record(
                OpKind::Read,
                Duration::from_micros(500 + i),
                Status::Http(200),
            );
        }
        recorder.record(OpKind::Read, Duration::from_millis(500), Status::Http(503));
        for _ in 0..8 {
            recorder.record(OpKind::Update, Duration::from_millis(2), Status::Http(200));
        }
        recorder.record(OpKind::Update, Duration::from_secs(5), Status::Timeout);
        let measured = Measured {
            recorder,
            elapsed: Duration::from_secs(2),
            prepopulation: Some(Prepopulation {
                keys: 1000,
                seconds: 0.5,
                failed: 0,
            }),
            sessions: Vec::new(),
            server_cpu: Some(Duration::from_millis(90)),
        };
        let info = RunInfo {
            system: "causalkv".into(),
            target: Target::Causalkv,
            workload: Workload::B,
            distribution: Distribution::Zipfian,
            keys: 1000,
            value_size: 32,
            concurrency: 4,
            endpoints: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            seed: 1,
            warmup_s: 1.0,
        };
        Report::new(info, &measured)
    }

    #[test]
    fn the_report_adds_up() {
        let r = sample();
        assert_eq!(r.overall.ops, 100);
        assert_eq!(r.throughput_ops_s, 50.0);
        let read = r.read.as_ref().unwrap();
        let update = r.update.as_ref().unwrap();
        assert_eq!(read.ops + update.ops, r.overall.ops);
        assert_eq!(read.unavailable, 1);
        assert_eq!(update.errors.timeouts, 1);
        assert_eq!(
            r.overall.status.values().sum::<u64>() + r.overall.errors.total,
            100
        );
        assert_eq!(r.workload, "B");
        assert_eq!(r.read_percent, 95);
        // 90 ms of the servers' CPU over 100 operations.
        let cpu = r.server_cpu.as_ref().unwrap();
        assert!((cpu.us_per_op - 900.0).abs() < 1e-6, "{cpu:?}");
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let r = sample();
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""distribution":"zipfian""#), "{text}");
        assert!(text.contains(r#""target":"causalkv""#), "{text}");
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_table_shows_every_kind_and_status() {
        let text = sample().render();
        assert!(
            text.contains("workload B (95% read / 5% update), 1,000 keys zipfian, 32-byte values"),
            "{text}"
        );
        assert!(text.contains("throughput: 50 ops/s (100 ops)"), "{text}");
        assert!(
            text.contains("servers' CPU time: 0.09 s, 900.0 µs per operation"),
            "{text}"
        );
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("read ") || l.starts_with("update ") || l.starts_with("all "))
            .collect();
        assert_eq!(rows.len(), 5, "{text}");
        assert!(text.contains("503 (causal timeout): 1"), "{text}");
        assert!(
            text.contains("errors: 1 (timeouts 1, transport 0)"),
            "{text}"
        );
    }

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        assert_eq!(format_ms(0.1234), "0.123");
        assert_eq!(format_ms(12.34), "12.3");
        assert_eq!(format_ms(512.0), "512");
    }
}
