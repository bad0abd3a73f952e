//! The closed-loop load: `concurrency` sessions, each sending its next request as soon as
//! the previous one is answered, optionally after writing every key once
//! (pre-population) and a warm-up whose operations are not recorded.
//!
//! The loop itself allocates nothing per operation: keys are built once and shared, each session
//! owns its random generator, metadata and histograms, and the only shared state is two
//! atomic counters (the operation budget and the progress count).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::BenchError;
use super::cpu;
use super::driver::Driver;
use super::progress::{Goal, Progress};
use super::stats::{Recorder, Status};
use super::workload::{KeyChooser, OpKind, Workload};
use crate::tools::client::Session;

/// Pause after a request that got no answer, so that a dead target is not spun on.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Debug)]
pub struct Plan {
    pub workload: Workload,
    pub keys: Arc<[String]>,
    pub chooser: KeyChooser,
    pub concurrency: usize,
    pub warmup: Duration,
    /// The measured period ends at the first of: this long, or `ops` operations.
    pub duration: Duration,
    pub ops: Option<u64>,
    pub prepopulate: bool,
    pub seed: u64,
    /// The servers whose CPU time the measured period is charged (see `cpu`).
    pub server_pids: Vec<u32>,
}

/// The key names `0..count`.
pub fn key_names(count: u64) -> Arc<[String]> {
    (0..count).map(|i| format!("k{i}")).collect()
}

/// How pre-population went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prepopulation {
    pub keys: u64,
    pub seconds: f64,
    /// Writes not answered with a 2xx status.
    pub failed: u64,
}

/// What a run measured.
#[derive(Debug)]
pub struct Measured {
    pub recorder: Recorder,
    /// From the end of warm-up to the last session's last answer.
    pub elapsed: Duration,
    pub prepopulation: Option<Prepopulation>,
    /// The sessions as they ended (with their latest metadata).
    pub sessions: Vec<Session>,
    /// The CPU time of `Plan::server_pids` over the measured period (`None` without).
    pub server_cpu: Option<Duration>,
}

/// Runs the plan against the driver.
pub async fn run(
    driver: Arc<Driver>,
    plan: Arc<Plan>,
    progress: &Progress,
) -> Result<Measured, BenchError> {
    let mut sessions: Vec<Session> = (0..plan.concurrency).map(|i| driver.session(i)).collect();
    let prepopulation = if plan.prepopulate {
        let (filled, report) = prepopulate(&driver, &plan.keys, sessions, progress).await?;
        sessions = filled;
        Some(report)
    } else {
        None
    };
    let (recorder, elapsed, sessions, server_cpu) =
        measure(&driver, &plan, sessions, progress).await?;
    Ok(Measured {
        recorder,
        elapsed,
        prepopulation,
        sessions,
        server_cpu,
    })
}

/// Writes every key once, the keys dealt round-robin over the sessions.
pub async fn prepopulate(
    driver: &Arc<Driver>,
    keys: &Arc<[String]>,
    sessions: Vec<Session>,
    progress: &Progress,
) -> Result<(Vec<Session>, Prepopulation), BenchError> {
    let done = Arc::new(AtomicU64::new(0));
    let count = u64::try_from(keys.len()).unwrap_or(u64::MAX);
    let _ticker = progress.phase("prepopulate", Goal::Count(count), done.clone());
    let started = Instant::now();
    let stride = sessions.len();
    let mut tasks = JoinSet::new();
    for (index, mut session) in sessions.into_iter().enumerate() {
        let (driver, keys, done) = (driver.clone(), keys.clone(), done.clone());
        tasks.spawn(async move {
            let mut failed = 0;
            for key in keys.iter().skip(index).step_by(stride) {
                let status = driver.run(&mut session, OpKind::Update, key).await;
                if !matches!(status, Status::Http(200..=299)) {
                    failed += 1;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (index, session, failed)
        });
    }
    let mut ended = Vec::new();
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        let (index, session, f) = joined.map_err(|e| BenchError::Setup(e.to_string()))?;
        ended.push((index, session));
        failed += f;
    }
    ended.sort_by_key(|(index, _)| *index);
    let report = Prepopulation {
        keys: count,
        seconds: started.elapsed().as_secs_f64(),
        failed,
    };
    Ok((ended.into_iter().map(|(_, s)| s).collect(), report))
}

/// The shared state of a measured run.
struct Shared {
    warm_end: Instant,
    deadline: Instant,
    /// Operation tickets left, when the run is bounded by a count.
    budget: Option<AtomicU64>,
    warm_done: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
}

impl Shared {
    /// Takes a ticket for one measured operation; false when the budget is spent.
    fn take(&self) -> bool {
        match &self.budget {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

async fn measure(
    driver: &Arc<Driver>,
    plan: &Arc<Plan>,
    sessions: Vec<Session>,
    progress: &Progress,
) -> Result<(Recorder, Duration, Vec<Session>, Option<Duration>), BenchError> {
    let start = Instant::now();
    let warm_end = start + plan.warmup;
    let shared = Arc::new(Shared {
        warm_end,
        deadline: warm_end + plan.duration,
        budget: plan.ops.map(AtomicU64::new),
        warm_done: Arc::new(AtomicU64::new(0)),
        done: Arc::new(AtomicU64::new(0)),
    });
    let mut tasks = JoinSet::new();
    for (index, session) in sessions.into_iter().enumerate() {
        let rng =
            SmallRng::seed_from_u64(plan.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let worker = Worker {
            driver: driver.clone(),
            plan: plan.clone(),
            shared: shared.clone(),
            rng,
        };
        tasks.spawn(async move { (index, worker.run(session).await) });
    }
    if !plan.warmup.is_zero() {
        let goal = Goal::Until {
            start,
            end: warm_end,
        };
        let _ticker = progress.phase("warm-up", goal, shared.warm_done.clone());
        tokio::time::sleep_until(warm_end.into()).await;
    }
    let goal = match plan.ops {
        Some(ops) => Goal::Count(ops),
        None => Goal::Until {
            start: warm_end,
            end: shared.deadline,
        },
    };
    let _ticker = progress.phase("measure", goal, shared.done.clone());
    let cpu_before = server_cpu(&plan.server_pids)?;
    let (recorder, elapsed, sessions) = collect(tasks, warm_end).await?;
    let cpu = match cpu_before {
        Some(before) => server_cpu(&plan.server_pids)?.map(|after| after.saturating_sub(before)),
        None => None,
    };
    Ok((recorder, elapsed, sessions, cpu))
}

/// The CPU time `pids` used so far; `None` when no server is named.
fn server_cpu(pids: &[u32]) -> Result<Option<Duration>, BenchError> {
    match pids.is_empty() {
        true => Ok(None),
        false => cpu::used_by(pids).map(Some),
    }
}

/// Joins the sessions; merges their records in session order.
async fn collect(
    mut tasks: JoinSet<(usize, (Session, Recorder, Instant))>,
    warm_end: Instant,
) -> Result<(Recorder, Duration, Vec<Session>), BenchError> {
    let mut ended = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        ended.push(joined.map_err(|e| BenchError::Setup(e.to_string()))?);
    }
    ended.sort_by_key(|(index, _)| *index);
    let mut recorder = Recorder::default();
    let mut last = warm_end;
    let mut sessions = Vec::with_capacity(ended.len());
    for (_, (session, record, end)) in ended {
        recorder.merge(&record);
        last = last.max(end);
        sessions.push(session);
    }
    Ok((recorder, last.saturating_duration_since(warm_end), sessions))
}

/// One session's loop.
struct Worker {
    driver: Arc<Driver>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    rng: SmallRng,
}

impl Worker {
    async fn run(mut self, mut session: Session) -> (Session, Recorder, Instant) {
        let mut recorder = Recorder::default();
        loop {
            let started = Instant::now();
            if started >= self.shared.deadline {
                break;
            }
            let measuring = started >= self.shared.warm_end;
            if measuring && !self.shared.take() {
                break;
            }
            let kind = self.plan.workload.pick(&mut self.rng);
            let key = &self.plan.keys[self.plan.chooser.pick(&mut self.rng)];
            let status = self.driver.run(&mut session, kind, key).await;
            if measuring {
                recorder.record(kind, started.elapsed(), status);
                self.shared.done.fetch_add(1, Ordering::Relaxed);
            } else {
                self.shared.warm_done.fetch_add(1, Ordering::Relaxed);
            }
            if matches!(status, Status::Transport) {
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
        (session, recorder, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_short_and_distinct() {
        let keys = key_names(1_000_000);
        assert_eq!(keys.len(), 1_000_000);
        assert_eq!(&*keys[0], "k0");
        assert_eq!(&*keys[999_999], "k999999");
        assert!(keys.iter().all(|k| k.len() <= 50));
    }

    #[test]
    fn a_budget_hands_out_exactly_its_tickets() {
        let now = Instant::now();
        let shared = Shared {
            warm_end: now,
            deadline: now,
            budget: Some(AtomicU64::new(3)),
            warm_done: Arc::default(),
            done: Arc::default(),
        };
        let taken = (0..10).filter(|_| shared.take()).count();
        assert_eq!(taken, 3);
        let unbounded = Shared {
            budget: None,
            ..shared
        };
        assert!((0..10).all(|_| unbounded.take()));
    }
}
