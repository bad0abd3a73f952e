//! What the benchmarks read from a replica besides the contract: the lock-hold histogram
//! and maximum of `GET /metrics` (`causalkv_lock_hold_seconds`,
//! `causalkv_lock_hold_max_seconds`; and `causalkv_lock_hold_cpu_seconds`, the same holds
//! in CPU time, from a replica run with `--lock-cpu-metrics`), and the key count of
//! `GET /health`.
//!
//! The histogram's cumulative buckets are kept as scraped, so that two scrapes subtract
//! into what happened between them.

use serde::{Deserialize, Serialize};

use super::BenchError;
use crate::tools::client::{Client, Method};

const HOLD: &str = "causalkv_lock_hold_seconds";
const HOLD_MAX: &str = "causalkv_lock_hold_max_seconds";
const HOLD_CPU: &str = "causalkv_lock_hold_cpu_seconds";
/// The request path's budget for one hold of the lock, in seconds.
pub const HOLD_BUDGET_S: f64 = 0.001;

/// One replica's lock holds as of a scrape (or between two, see [`LockHolds::since`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LockHolds {
    /// Cumulative counts: holds that lasted at most `le` seconds, for each finite bound
    /// (the `+Inf` bucket is `count`).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_s: f64,
    /// The longest hold since the replica started.
    pub max_s: f64,
}

impl LockHolds {
    /// Parses the families out of an exposition text; `None` if either is missing.
    pub fn parse(text: &str) -> Option<LockHolds> {
        Self::parse_family(text, HOLD, Some(HOLD_MAX))
    }

    /// The holds in CPU time; `None` when the replica does not count them.
    pub fn parse_cpu(text: &str) -> Option<LockHolds> {
        Self::parse_family(text, HOLD_CPU, None).filter(|holds| holds.count > 0)
    }

    /// The histogram `family`, and the gauge `max` when given (both required).
    fn parse_family(text: &str, family: &str, max: Option<&str>) -> Option<LockHolds> {
        let mut holds = LockHolds::default();
        let (mut seen_count, mut seen_max) = (false, max.is_none());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, Ok(value))) = line
                .rsplit_once(' ')
                .map(|(name, value)| (name, value.parse::<f64>()))
            else {
                continue;
            };
            if let Some(labels) = name.strip_prefix(&format!("{family}_bucket{{")) {
                let le = labels.strip_prefix("le=\"")?.strip_suffix("\"}")?;
                if le != "+Inf" {
                    holds.buckets.push((le.parse().ok()?, value as u64));
                }
            } else if name == format!("{family}_count") {
                holds.count = value as u64;
                seen_count = true;
            } else if name == format!("{family}_sum") {
                holds.sum_s = value;
            } else if Some(name) == max {
                holds.max_s = value;
                seen_max = true;
            }
        }
        (seen_count && seen_max).then_some(holds)
    }

    /// The holds between `earlier` and this scrape (the maximum stays this one's).
    pub fn since(&self, earlier: &LockHolds) -> LockHolds {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0, |(_, n)| *n)
        };
        LockHolds {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| (le, n.saturating_sub(before(le))))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
            sum_s: (self.sum_s - earlier.sum_s).max(0.0),
            max_s: self.max_s,
        }
    }

    /// Holds longer than `seconds` (which should be a bucket bound).
    pub fn longer_than(&self, seconds: f64) -> u64 {
        let within = self
            .buckets
            .iter()
            .filter(|(le, _)| *le <= seconds)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        self.count.saturating_sub(within)
    }

    /// The upper bound of the lowest bucket that counted every hold: the longest hold was
    /// at most this long (infinite: longer than the last finite bound); `None` without
    /// holds.
    pub fn longest_bound_s(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let within = self.buckets.iter().find(|(_, n)| *n >= self.count);
        Some(within.map_or(f64::INFINITY, |(le, _)| *le))
    }
}

/// A replica's lock holds as of a scrape: in wall-clock time, and in CPU time when it
/// counts them.
pub struct Holds {
    pub wall: LockHolds,
    pub cpu: Option<LockHolds>,
}

/// `GET /metrics` of `addr`, parsed.
pub async fn lock_holds(http: &reqwest::Client, addr: &str) -> Result<Holds, BenchError> {
    let url = format!("http://{addr}/metrics");
    let text = async { http.get(&url).send().await?.text().await }
        .await
        .map_err(|e| BenchError::Unreachable {
            endpoint: url.clone(),
            reason: e.to_string(),
        })?;
    let wall = LockHolds::parse(&text).ok_or_else(|| {
        BenchError::Setup(format!(
            "{url} has no {HOLD} (a causalkv older than this bench?)"
        ))
    })?;
    let cpu = LockHolds::parse_cpu(&text);
    Ok(Holds { wall, cpu })
}

/// The number of keys `addr` holds, from `GET /health`; `None` while it does not answer.
pub async fn keys_held(client: &Client, addr: &str) -> Option<u64> {
    let reply = client
        .request(Method::GET, addr, "/health", None)
        .await
        .ok()?;
    reply.body.get("keys")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(buckets: &[(&str, u64)], sum: f64, max: f64) -> String {
        let mut out = String::from("# TYPE causalkv_lock_hold_seconds histogram\n");
        for (le, n) in buckets {
            out.push_str(&format!(
                "causalkv_lock_hold_seconds_bucket{{le=\"{le}\"}} {n}\n"
            ));
        }
        let count = buckets.last().map_or(0, |b| b.1);
        out.push_str(&format!(
            "causalkv_lock_hold_seconds_sum {sum}\ncausalkv_lock_hold_seconds_count {count}\n"
        ));
        out.push_str(&format!("causalkv_lock_hold_max_seconds {max}\n# EOF\n"));
        out
    }

    #[test]
    fn holds_parse_and_subtract() {
        let before = LockHolds::parse(&text(
            &[("0.0005", 10), ("0.001", 12), ("0.002", 12), ("+Inf", 12)],
            0.004,
            0.0009,
        ))
        .expect("parses");
        assert_eq!(before.count, 12);
        assert_eq!(before.max_s, 0.0009);
        assert_eq!(before.buckets.last(), Some(&(0.002, 12)));
        let after = LockHolds::parse(&text(
            &[("0.0005", 15), ("0.001", 18), ("0.002", 20), ("+Inf", 20)],
            0.01,
            0.0015,
        ))
        .expect("parses");
        let phase = after.since(&before);
        assert_eq!(phase.count, 8);
        assert_eq!(phase.buckets[1], (0.001, 6));
        assert_eq!(phase.longer_than(HOLD_BUDGET_S), 2);
        assert_eq!(phase.longest_bound_s(), Some(0.002));
        assert_eq!(LockHolds::default().longest_bound_s(), None);
        let beyond = LockHolds::parse(&text(&[("0.002", 1), ("+Inf", 3)], 9.0, 4.0));
        assert_eq!(
            beyond.and_then(|h| h.longest_bound_s()),
            Some(f64::INFINITY)
        );
        let json = serde_json::to_string(&phase).expect("encodes");
        assert_eq!(serde_json::from_str::<LockHolds>(&json).ok(), Some(phase));
    }

    #[test]
    fn cpu_holds_parse_only_when_counted() {
        let wall = text(&[("0.001", 4), ("+Inf", 5)], 0.01, 0.003);
        assert_eq!(LockHolds::parse_cpu(&wall), None);
        let cpu = wall.replace("causalkv_lock_hold_seconds", HOLD_CPU);
        let holds = LockHolds::parse_cpu(&cpu).expect("parses");
        assert_eq!((holds.count, holds.longer_than(HOLD_BUDGET_S)), (5, 1));
        let none = wall
            .replace("causalkv_lock_hold_seconds", HOLD_CPU)
            .replace(" 4\n", " 0\n");
        let none = none.replace(" 5\n", " 0\n");
        assert_eq!(LockHolds::parse_cpu(&none), None);
    }

    #[test]
    fn an_exposition_without_the_families_is_refused() {
        assert_eq!(LockHolds::parse("causalkv_keys 3\n# EOF\n"), None);
    }
}
