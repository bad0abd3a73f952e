//! Measurements: what each session records (latency histograms and status counts per
//! operation kind), how sessions' records merge, and the summary that a report shows.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::workload::OpKind;

/// Highest latency a histogram tracks exactly, in microseconds (larger ones are clamped).
const MAX_TRACKED_MICROS: u64 = 120_000_000;

/// How one operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The server answered with this HTTP status.
    Http(u16),
    /// No answer within the request timeout.
    Timeout,
    /// Connection refused or reset, or an answer that was not the expected JSON.
    Transport,
}

/// Counts of outcomes of one operation kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Answered requests by HTTP status.
    pub status: BTreeMap<u16, u64>,
    pub timeouts: u64,
    pub transport_errors: u64,
}

impl Counts {
    fn add(&mut self, status: Status) {
        match status {
            Status::Http(code) => *self.status.entry(code).or_insert(0) += 1,
            Status::Timeout => self.timeouts += 1,
            Status::Transport => self.transport_errors += 1,
        }
    }

    fn merge(&mut self, other: &Counts) {
        for (code, n) in &other.status {
            *self.status.entry(*code).or_insert(0) += n;
        }
        self.timeouts += other.timeouts;
        self.transport_errors += other.transport_errors;
    }

    /// Requests that got an answer.
    pub fn answered(&self) -> u64 {
        self.status.values().sum()
    }

    /// Requests that got no usable answer.
    pub fn errors(&self) -> u64 {
        self.timeouts + self.transport_errors
    }

    pub fn total(&self) -> u64 {
        self.answered() + self.errors()
    }

    /// Answers with this status.
    pub fn with_status(&self, code: u16) -> u64 {
        self.status.get(&code).copied().unwrap_or(0)
    }

    /// Answers with a 2xx status.
    pub fn successes(&self) -> u64 {
        self.status.range(200..300).map(|(_, n)| n).sum::<u64>()
    }
}

/// The record of one operation kind.
#[derive(Clone, Debug)]
pub struct KindRecord {
    /// Latencies of answered requests, in microseconds.
    pub latency: Histogram<u64>,
    pub counts: Counts,
}

impl KindRecord {
    fn new() -> Self {
        KindRecord {
            latency: new_histogram(),
            counts: Counts::default(),
        }
    }

    fn record(&mut self, latency: Duration, status: Status) {
        self.counts.add(status);
        if matches!(status, Status::Http(_)) {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency.saturating_record(micros.max(1));
        }
    }

    fn merge(&mut self, other: &KindRecord) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.counts.merge(&other.counts);
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3).expect("constant, valid bounds")
}

/// What one session (or, merged, a whole run) measured.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub read: KindRecord,
    pub update: KindRecord,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            read: KindRecord::new(),
            update: KindRecord::new(),
        }
    }
}

impl Recorder {
    /// Records one finished operation. Only answered requests go into the histograms.
    pub fn record(&mut self, kind: OpKind, latency: Duration, status: Status) {
        match kind {
            OpKind::Read => self.read.record(latency, status),
            OpKind::Update => self.update.record(latency, status),
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.read.merge(&other.read);
        self.update.merge(&other.update);
    }

    /// Reads and updates together.
    pub fn overall(&self) -> KindRecord {
        let mut all = self.read.clone();
        all.merge(&self.update);
        all
    }

    pub fn total(&self) -> u64 {
        self.read.counts.total() + self.update.counts.total()
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// The summary of a histogram in microseconds; `None` when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Option<Latency> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Latency {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        })
    }
}

/// The report section of one operation kind (or all of them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindReport {
    /// Operations finished in the measured period, answered or not.
    pub ops: u64,
    /// Operations per second over the measured period.
    pub ops_per_sec: f64,
    /// Answered requests by HTTP status (`503` = causal dependencies not satisfied).
    pub status: BTreeMap<u16, u64>,
    /// Answers with status 503.
    pub unavailable: u64,
    /// Requests without an answer.
    pub errors: ErrorCounts,
    /// Latency of answered requests; `null` when there were none.
    pub latency: Option<Latency>,
}

/// Requests that got no usable answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub total: u64,
    pub timeouts: u64,
    pub transport: u64,
}

impl KindReport {
    pub fn of(record: &KindRecord, seconds: f64) -> KindReport {
        let ops = record.counts.total();
        KindReport {
            ops,
            ops_per_sec: per_second(ops, seconds),
            status: record.counts.status.clone(),
            unavailable: record.counts.with_status(503),
            errors: ErrorCounts {
                total: record.counts.errors(),
                timeouts: record.counts.timeouts,
                transport: record.counts.transport_errors,
            },
            latency: Latency::of(&record.latency),
        }
    }
}

/// `count / seconds`, 0 for an empty period.
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_separate_statuses_and_errors() {
        let mut r = Recorder::default();
        r.record(OpKind::Read, ms(1), Status::Http(200));
        r.record(OpKind::Read, ms(2), Status::Http(404));
        r.record(OpKind::Update, ms(3), Status::Http(201));
        r.record(OpKind::Update, ms(500), Status::Http(503));
        r.record(OpKind::Update, ms(5000), Status::Timeout);
        r.record(OpKind::Read, ms(0), Status::Transport);
        assert_eq!(r.total(), 6);
        let all = r.overall();
        assert_eq!(all.counts.answered(), 4);
        assert_eq!(all.counts.errors(), 2);
        assert_eq!(all.counts.successes(), 2);
        assert_eq!(all.latency.len(), 4, "errors are not in the histogram");
        let report = KindReport::of(&all, 2.0);
        assert_eq!(report.ops, 6);
        assert_eq!(report.ops_per_sec, 3.0);
        assert_eq!(report.unavailable, 1);
        assert_eq!(report.errors.timeouts, 1);
        assert_eq!(report.errors.transport, 1);
    }

    #[test]
    fn merging_adds_up() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 0..100 {
            a.record(OpKind::Read, ms(1), Status::Http(200));
            b.record(OpKind::Update, ms(i), Status::Http(200));
        }
        a.merge(&b);
        assert_eq!(a.read.counts.total(), 100);
        assert_eq!(a.update.counts.total(), 100);
        assert_eq!(a.overall().latency.len(), 200);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = new_histogram();
        for micros in 1..=1000u64 {
            h.record(micros * 1000).unwrap();
        }
        let l = Latency::of(&h).unwrap();
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
        assert!(l.p50_ms <= l.p90_ms && l.p90_ms <= l.p99_ms && l.p99_ms <= l.p999_ms);
        assert!(Latency::of(&new_histogram()).is_none());
    }

    #[test]
    fn status_codes_serialize_as_json_object_keys() {
        let mut counts = Counts::default();
        counts.add(Status::Http(200));
        counts.add(Status::Http(503));
        let text = serde_json::to_string(&counts.status).unwrap();
        assert_eq!(text, r#"{"200":1,"503":1}"#);
        let back: BTreeMap<u16, u64> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, counts.status);
    }
}
