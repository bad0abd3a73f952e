//! `causalkv bench --scale --under-writes DURATION`: reads under a write load on the
//! loaded store, and how long the replicas held their machine's lock meanwhile.
//!
//! `--concurrency` writer sessions overwrite uniformly drawn keys (values of
//! `--value-size` bytes) while as many reader sessions read uniformly drawn keys, both for
//! DURATION (and at most [`MAX_OPS`] operations each). Every replica's `/metrics` is scraped before and
//! after: the lock-hold histogram's difference is the phase's holds, how many exceeded the
//! 1 ms budget, and a bound on the longest; the maximum since start is shown before and
//! after. The replicas of `--scale` run with `--lock-cpu-metrics`, so the same holds are
//! also counted in the holding thread's CPU time: a hold over budget in wall-clock time
//! but not in CPU time was a thread preempted while it held the lock, not work.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::driver::{Driver, DriverConfig, Target};
use super::load::{self, Plan};
use super::progress::Progress;
use super::scrape::{self, HOLD_BUDGET_S, Holds, LockHolds};
use super::stats::KindReport;
use super::workload::{Distribution, KeyChooser, Workload};
use super::{BenchArgs, BenchError};
use crate::tools::client::pooled_http;

/// The most operations each of the two loads makes, whatever its duration.
const MAX_OPS: u64 = 50_000_000;

/// Reads and writes of the phase, and each replica's lock holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnderWrites {
    pub seconds: f64,
    pub writers: usize,
    pub readers: usize,
    pub reads: KindReport,
    pub writes: KindReport,
    pub replicas: Vec<ReplicaHolds>,
}

/// One replica's lock holds around the phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaHolds {
    pub addr: String,
    /// The holds during the phase (the histogram's difference).
    pub phase: LockHolds,
    /// The longest hold since start, before and after the phase (seconds).
    pub max_before_s: f64,
    pub max_after_s: f64,
    /// The phase's holds in the holding thread's CPU time (replicas started with
    /// `--lock-cpu-metrics`): a hold longer than its CPU time was preempted.
    #[serde(default)]
    pub cpu: Option<LockHolds>,
}

/// Runs the phase against `addrs` for `duration`.
pub async fn run(
    args: &BenchArgs,
    addrs: &[String],
    timeout: Duration,
    duration: Duration,
) -> Result<UnderWrites, BenchError> {
    let http = pooled_http().map_err(|e| BenchError::Setup(e.to_string()))?;
    let before = scrape_all(&http, addrs).await?;
    let config = DriverConfig {
        target: Target::Causalkv,
        endpoints: addrs.to_vec(),
        timeout,
        value_size: args.value_size,
        serializable_reads: true,
        tls_ca: None,
    };
    let driver = Arc::new(Driver::new(&config)?);
    let quiet = Progress::new(false);
    let (writes, reads) = tokio::join!(
        load::run(
            driver.clone(),
            plan(args, Workload::Write, duration, 1),
            &quiet
        ),
        load::run(driver.clone(), plan(args, Workload::C, duration, 2), &quiet),
    );
    let (writes, reads) = (writes?, reads?);
    let after = scrape_all(&http, addrs).await?;
    let seconds = reads.elapsed.max(writes.elapsed).as_secs_f64();
    Ok(UnderWrites {
        seconds,
        writers: args.concurrency,
        readers: args.concurrency,
        reads: KindReport::of(&reads.recorder.read, seconds),
        writes: KindReport::of(&writes.recorder.update, seconds),
        replicas: addrs
            .iter()
            .zip(before.iter().zip(&after))
            .map(|(addr, (before, after))| ReplicaHolds {
                addr: addr.clone(),
                phase: after.wall.since(&before.wall),
                max_before_s: before.wall.max_s,
                max_after_s: after.wall.max_s,
                cpu: match (&before.cpu, &after.cpu) {
                    (Some(b), Some(a)) => Some(a.since(b)),
                    (None, Some(a)) => Some(a.clone()),
                    _ => None,
                },
            })
            .collect(),
    })
}

/// `--concurrency` sessions of `workload` over every key, uniformly, for `duration`.
fn plan(args: &BenchArgs, workload: Workload, duration: Duration, seed: u64) -> Arc<Plan> {
    Arc::new(Plan {
        workload,
        keys: load::key_names(args.keys),
        chooser: KeyChooser::new(Distribution::Uniform, args.keys),
        concurrency: args.concurrency,
        warmup: Duration::ZERO,
        duration,
        ops: Some(MAX_OPS),
        prepopulate: false,
        seed: args.seed ^ seed,
        server_pids: Vec::new(),
    })
}

async fn scrape_all(http: &reqwest::Client, addrs: &[String]) -> Result<Vec<Holds>, BenchError> {
    let mut all = Vec::with_capacity(addrs.len());
    for addr in addrs {
        all.push(scrape::lock_holds(http, addr).await?);
    }
    Ok(all)
}

impl UnderWrites {
    pub fn render(&self) -> String {
        let ms = |s: f64| s * 1000.0;
        let mut out = format!(
            "\nreads under writes ({} writers, {} readers, {:.1} s):\n",
            self.writers, self.readers, self.seconds
        );
        for (name, kind) in [("reads", &self.reads), ("writes", &self.writes)] {
            let _ = write!(
                out,
                "  {name:<7}{:>9} ops {:>8.0}/s  errors {}",
                kind.ops, kind.ops_per_sec, kind.errors.total
            );
            match &kind.latency {
                Some(l) => {
                    let _ = writeln!(
                        out,
                        "  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
                        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
                    );
                }
                None => out.push('\n'),
            }
        }
        let _ = writeln!(
            out,
            "  {:<18}{:>10}{:>10}{:>14}{:>16}{:>15}{:>12}{:>18}",
            "lock holds",
            "holds",
            "> 1 ms",
            "longest ≤ ms",
            "max before ms",
            "max after ms",
            "CPU > 1 ms",
            "CPU longest ≤ ms"
        );
        for r in &self.replicas {
            let longest = |holds: &LockHolds| match holds.longest_bound_s() {
                Some(s) if s.is_finite() => format!("{:.3}", ms(s)),
                Some(_) => "> last bucket".to_string(),
                None => "-".to_string(),
            };
            let (cpu_over, cpu_longest) = match &r.cpu {
                Some(cpu) => (cpu.longer_than(HOLD_BUDGET_S).to_string(), longest(cpu)),
                None => ("-".to_string(), "-".to_string()),
            };
            let _ = writeln!(
                out,
                "  {:<18}{:>10}{:>10}{:>14}{:>16.3}{:>15.3}{:>12}{:>18}",
                r.addr,
                r.phase.count,
                r.phase.longer_than(HOLD_BUDGET_S),
                longest(&r.phase),
                ms(r.max_before_s),
                ms(r.max_after_s),
                cpu_over,
                cpu_longest
            );
        }
        out
    }
}
