//! The report of a `causalkv check` run: counts, timings and the verdict.
//!
//! A [`Report`] is built from the run's history, final state and violations; it renders as
//! a short text summary ([`Report::render`]) or serializes as JSON. The verdict is clean
//! exactly when there are no violations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::checker::Violation;
use super::history::{History, Status};
use super::settle::FinalState;

/// Violations shown in full in the text report; the JSON report has all of them.
pub const SHOWN_VIOLATIONS: usize = 50;

/// Operation counts of one kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KindCounts {
    pub total: usize,
    /// Status label (`"201"`, `"503"`, `"unreachable"`, `"timeout"`) → count.
    pub statuses: BTreeMap<String, usize>,
}

/// What a run did and found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub replicas: Vec<String>,
    pub sessions: u32,
    pub seed: u64,
    pub run_tag: String,
    pub operations: usize,
    /// `"put"`, `"get"`, `"delete"` → counts.
    pub kinds: BTreeMap<String, KindCounts>,
    /// Requests answered 503.
    pub unavailable: usize,
    /// Requests with no answer (unreachable or timed out).
    pub unreachable: usize,
    /// How long the workload ran, in seconds.
    pub duration_s: f64,
    /// Seconds from the end of the workload until all replicas agreed; `None` if they did
    /// not agree before the settle deadline.
    pub convergence_s: Option<f64>,
    pub clean: bool,
    pub violations: Vec<Violation>,
}

/// The facts about a run that its history does not hold.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub replicas: Vec<String>,
    pub sessions: u32,
    pub seed: u64,
    pub run_tag: String,
    pub duration: Duration,
}

impl Report {
    pub fn new(
        info: &RunInfo,
        history: &History,
        end: &FinalState,
        violations: Vec<Violation>,
    ) -> Self {
        let mut kinds: BTreeMap<String, KindCounts> = BTreeMap::new();
        for op in &history.ops {
            let counts = kinds.entry(op.kind.name().to_string()).or_default();
            counts.total += 1;
            *counts.statuses.entry(op.status.label()).or_default() += 1;
        }
        let count =
            |pred: fn(Status) -> bool| history.ops.iter().filter(|op| pred(op.status)).count();
        Report {
            replicas: info.replicas.clone(),
            sessions: info.sessions,
            seed: info.seed,
            run_tag: info.run_tag.clone(),
            operations: history.ops.len(),
            kinds,
            unavailable: count(|s| s == Status::Http(503)),
            unreachable: count(|s| matches!(s, Status::Unreachable | Status::Timeout)),
            duration_s: info.duration.as_secs_f64(),
            convergence_s: end.converged_after.map(|d| d.as_secs_f64()),
            clean: violations.is_empty(),
            violations,
        }
    }

    /// The text summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "causalkv check: {} operations by {} sessions on {} replicas in {:.1} s \
             (seed {}, keys {}-*)",
            self.operations,
            self.sessions,
            self.replicas.len(),
            self.duration_s,
            self.seed,
            self.run_tag
        );
        for (kind, counts) in &self.kinds {
            let statuses: Vec<String> = counts
                .statuses
                .iter()
                .map(|(status, n)| format!("{status} x{n}"))
                .collect();
            let _ = writeln!(
                out,
                "  {kind:<7}{:>7}: {}",
                counts.total,
                statuses.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  503s: {}, unreachable or timed out: {}",
            self.unavailable, self.unreachable
        );
        let _ = match self.convergence_s {
            Some(s) => writeln!(out, "  replicas agreed {s:.2} s after the workload ended"),
            None => writeln!(out, "  replicas did NOT agree before the settle deadline"),
        };
        self.render_verdict(&mut out);
        out
    }

    fn render_verdict(&self, out: &mut String) {
        if self.clean {
            let _ = writeln!(
                out,
                "clean: no violations in {} operations",
                self.operations
            );
            return;
        }
        let _ = writeln!(
            out,
            "VIOLATIONS: {} in {} operations",
            self.violations.len(),
            self.operations
        );
        for (n, violation) in self.violations.iter().take(SHOWN_VIOLATIONS).enumerate() {
            let _ = writeln!(
                out,
                "{}. {}: {}",
                n + 1,
                violation.kind.name(),
                violation.explanation
            );
            for op in &violation.ops {
                let _ = writeln!(out, "     {op}");
            }
        }
        if self.violations.len() > SHOWN_VIOLATIONS {
            let more = self.violations.len() - SHOWN_VIOLATIONS;
            let _ = writeln!(out, "... and {more} more (--json lists them all)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::check::checker::ViolationKind;
    use crate::tools::check::history::{Op, OpKind};
    use serde_json::json;

    fn info() -> RunInfo {
        RunInfo {
            replicas: vec!["a:1".into(), "b:2".into()],
            sessions: 2,
            seed: 9,
            run_tag: "ck00000000".into(),
            duration: Duration::from_millis(1500),
        }
    }

    fn op(kind: OpKind, status: Status) -> Op {
        Op {
            session: 0,
            index: 0,
            replica: "a:1".into(),
            kind,
            key: "k".into(),
            write_once: false,
            value: None,
            start_us: 0,
            end_us: 1,
            status,
            read: None,
            error: None,
        }
    }

    fn history() -> History {
        History::new(vec![
            op(OpKind::Put, Status::Http(201)),
            op(OpKind::Put, Status::Http(503)),
            op(OpKind::Get, Status::Timeout),
            op(OpKind::Get, Status::Unreachable),
        ])
    }

    #[test]
    fn a_clean_run_says_so() {
        let end = FinalState {
            converged_after: Some(Duration::from_millis(250)),
            ..FinalState::default()
        };
        let report = Report::new(&info(), &history(), &end, Vec::new());
        assert_eq!(report.kinds["put"].total, 2);
        assert_eq!(report.kinds["put"].statuses["503"], 1);
        assert_eq!((report.unavailable, report.unreachable), (1, 2));
        let text = report.render();
        assert!(
            text.contains("clean: no violations in 4 operations"),
            "{text}"
        );
        assert!(text.contains("agreed 0.25 s after"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["clean"], json!(true));
        assert_eq!(json["kinds"]["get"]["statuses"]["timeout"], json!(1));
    }

    #[test]
    fn violations_are_listed_with_their_ops() {
        let violation = Violation {
            kind: ViolationKind::StaleRead,
            explanation: "something old".into(),
            ops: vec![op(OpKind::Get, Status::Http(200))],
        };
        let many = vec![violation; SHOWN_VIOLATIONS + 2];
        let report = Report::new(&info(), &history(), &FinalState::default(), many);
        let text = report.render();
        assert!(!report.clean);
        assert!(text.contains("VIOLATIONS: 52 in 4 operations"), "{text}");
        assert!(text.contains("1. stale read: something old"), "{text}");
        assert!(text.contains("     s0#0 GET k at a:1"), "{text}");
        assert!(text.contains("and 2 more"), "{text}");
        assert!(text.contains("did NOT agree"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["violations"][0]["kind"], json!("stale-read"));
    }
}
