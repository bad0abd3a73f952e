//! The fault suite: the reference deployment under crashes and partitions.
//!
//! Every test deploys alice, bob and carol afresh (`tests/common/docker.rs`:
//! the image must exist, `scripts/docker-build` builds it, `CAUSALKV_IMAGE`
//! names another tag) and injects the contract's faults: `docker kill` and a
//! later `docker run` with the same address and full view (a crash and
//! restart), and `docker network disconnect` then `connect --ip` (a partition
//! of one replica, its process running).
//!
//! - [`randomized_nemesis_run`]: client sessions of the `causalkv check`
//!   workload move between replicas at random while a seeded nemesis injects
//!   one fault at a time; after the last heal every replica must list all three
//!   and hold identical stores, and the checker must find no violation in the
//!   recorded history. `CAUSALKV_FAULT_SEED` replays a run's fault schedule.
//! - [`randomized_nemesis_run_with_data_dirs`]: the same on the durable
//!   deployment (each replica's store in a named volume, `DATA_DIR=/data`),
//!   whose fault menu adds a whole-cluster crash (`docker kill` of all three at
//!   once, then all three started again on their volumes), and which must
//!   inject one. The checker then also shows that no acknowledged write was
//!   lost across it: no read after it misses or reads past a write in its
//!   causal past, and no replica ends with a value or absence that an
//!   acknowledged write overwrote (`causalkv::tools::check::checker`, check 4).
//! - Scenario tests of issue 4: two replicas cut off while the third keeps
//!   accepting writes; a replica killed, the view shrinking, the replica
//!   restarted and catching up; a replica cut off, writes elsewhere, reconnect,
//!   and the replica serving the newest write; a replica cut off during a burst
//!   of writes from several clients; and a quiet cluster of 10,000 keys healing
//!   a partition within the contract's bound.
//!
//! Waits poll with deadlines; sleeps only hold a fault or a burst for a while.
//! Every test is `#[ignore]`d (run by `scripts/test`); the deployment removes
//! its containers and network when dropped, even when the test fails.

mod common;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use causalkv::tools::check::checker::{self, Violation};
use causalkv::tools::check::history::{History, Status};
use causalkv::tools::check::settle::{self, FinalState};
use causalkv::tools::check::workload::{self, SplitMix64, WorkloadConfig};
use causalkv::tools::client::{Client, Metadata};
use common::docker::{
    ALICE, BOB, CAROL, Contents, Deployment, NAMES, REPLICAS, bulk_client, check_views, full_view,
    get_served, read_contents, until_holds, view_of,
};
use common::until_views;
use common::{
    Body, CONTRACT_HEAL, InSession, Node, Reply, SETTLE_TIMEOUT, Session, kvs_path, poll_until,
    within,
};
use reqwest::Method;
use serde_json::{Value, json};

/// How promptly a PUT must answer with two peers cut off: each silent peer may
/// cost at most the per-peer replication timeout (1 s by default).
const PROMPT: Duration = Duration::from_secs(3);
/// The contract's stability period: a reconnected replica is re-admitted only
/// after it has been reachable continuously for this long.
const STABILITY: Duration = Duration::from_millis(2500);
/// Slack added to a contract bound measured from the test's side of Docker.
const MARGIN: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// The randomized nemesis run
// ---------------------------------------------------------------------------

/// How long the workload's sessions issue requests.
const WORKLOAD: Duration = Duration::from_secs(50);
const SESSIONS: u32 = 8;
const SHARED_KEYS: u32 = 8;
/// The per-request timeout of the workload's client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Quiet time at the start, and the least the workload runs after the last heal.
const QUIET_START: Duration = Duration::from_secs(3);
const QUIET_END: Duration = Duration::from_secs(5);
/// How long a fault holds: a random duration in this range.
const HOLD_MS: (u64, u64) = (2000, 5000);
/// Before the next fault, every view is full continuously for this long, so
/// that no write is held by the next crashed replica alone (the contract
/// promises nothing for such a write).
const STABLE_BEFORE_FAULT: Duration = Duration::from_secs(3);
/// Longest wait for a healed cluster to list every replica everywhere again.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for identical stores once the workload ended.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Violations printed in full.
const SHOWN_VIOLATIONS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    /// `docker network disconnect`, later `connect --ip`.
    Partition,
    /// `docker kill`, later `docker run` with the same address and full view.
    Crash,
    /// `docker kill` of all three at once, later `docker run` of all three on
    /// their volumes (durable deployments only: in memory, nothing survives).
    ClusterCrash,
}

impl FaultKind {
    /// The faults the nemesis takes turns with on `deployment`.
    fn menu(deployment: &Deployment) -> &'static [FaultKind] {
        match deployment.is_durable() {
            true => &[
                FaultKind::Partition,
                FaultKind::Crash,
                FaultKind::ClusterCrash,
            ],
            false => &[FaultKind::Partition, FaultKind::Crash],
        }
    }
}

/// One fault injected by the nemesis; times since the run's origin.
#[derive(Clone, Debug)]
struct Fault {
    kind: FaultKind,
    /// The replica it struck (every one, for a cluster crash).
    replica: usize,
    injected: Duration,
    healed: Duration,
    /// From the heal until every replica listed all three again.
    back_in_view: Duration,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, whom) = match self.kind {
            FaultKind::Partition => ("partition", NAMES[self.replica]),
            FaultKind::Crash => ("crash", NAMES[self.replica]),
            FaultKind::ClusterCrash => ("crash", "all"),
        };
        let late = match self.back_in_view > CONTRACT_HEAL {
            true => " (later than the contract's 5 s)",
            false => "",
        };
        write!(
            f,
            "{what:9} {whom:5} at {:6.2}s, healed at {:6.2}s, all views full {:.2}s later{late}",
            self.injected.as_secs_f64(),
            self.healed.as_secs_f64(),
            self.back_in_view.as_secs_f64()
        )
    }
}

/// The seed of a run: `CAUSALKV_FAULT_SEED`, or one from the clock.
fn fault_seed() -> u64 {
    match std::env::var("CAUSALKV_FAULT_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CAUSALKV_FAULT_SEED={text:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    }
}

/// Injects faults one at a time, each healed and recovered from before the next.
struct Nemesis<'a> {
    deployment: &'a mut Deployment,
    rng: SplitMix64,
    origin: Instant,
    faults: Vec<Fault>,
}

impl<'a> Nemesis<'a> {
    fn new(deployment: &'a mut Deployment, seed: u64, origin: Instant) -> Self {
        Nemesis {
            deployment,
            rng: SplitMix64::new(seed),
            origin,
            faults: Vec::new(),
        }
    }

    /// Injects faults until no further one can be healed before `stop`:
    /// partitions, crashes and (when durable) whole-cluster crashes in turn
    /// (the first drawn at random), each of a random replica, held for a
    /// random time.
    async fn run(mut self, stop: Instant) -> Vec<Fault> {
        tokio::time::sleep(QUIET_START).await;
        self.until_stable().await;
        let kinds = FaultKind::menu(self.deployment);
        let first = self.rng.below(kinds.len());
        for turn in first.. {
            let hold = Duration::from_millis(
                HOLD_MS.0 + self.rng.below(1 + (HOLD_MS.1 - HOLD_MS.0) as usize) as u64,
            );
            if Instant::now() + hold >= stop {
                break;
            }
            let replica = self.rng.below(REPLICAS);
            self.one_fault(kinds[turn % kinds.len()], replica, hold)
                .await;
        }
        self.faults
    }

    /// Injects one fault, holds it, heals it and waits until the cluster is
    /// stable again.
    async fn one_fault(&mut self, kind: FaultKind, replica: usize, hold: Duration) {
        let injected = self.origin.elapsed();
        eprintln!("nemesis: {kind:?} of replica {replica} at {injected:.2?} for {hold:.2?}");
        self.inject(kind, replica).await;
        tokio::time::sleep(hold).await;
        self.heal(kind, replica);
        let healed_at = Instant::now();
        let healed = self.origin.elapsed();
        let back_in_view = self.until_stable().await.duration_since(healed_at);
        self.faults.push(Fault {
            kind,
            replica,
            injected,
            healed,
            back_in_view,
        });
    }

    async fn inject(&mut self, kind: FaultKind, replica: usize) {
        match kind {
            FaultKind::Partition => self.deployment.disconnect(replica),
            FaultKind::Crash => self.deployment.kill(replica).await,
            FaultKind::ClusterCrash => self.deployment.kill_all().await,
        }
    }

    fn heal(&mut self, kind: FaultKind, replica: usize) {
        match kind {
            FaultKind::Partition => self.deployment.connect(replica),
            FaultKind::Crash => self.deployment.run(replica),
            FaultKind::ClusterCrash => self.deployment.run_all(),
        }
    }

    /// Waits until every view is full and has stayed so for
    /// [`STABLE_BEFORE_FAULT`]; returns when it first became full.
    async fn until_stable(&self) -> Instant {
        let nodes = self.deployment.nodes();
        let expected = full_view();
        let deadline = within(RECOVERY_TIMEOUT);
        let mut full_since: Option<Instant> = None;
        loop {
            let seen = check_views(&nodes, &expected).await;
            let now = Instant::now();
            match (&seen, full_since) {
                (Ok(()), Some(since)) if now - since >= STABLE_BEFORE_FAULT => return since,
                (Ok(()), None) => full_since = Some(now),
                (Ok(()), Some(_)) => {}
                (Err(_), _) => full_since = None,
            }
            assert!(
                now < deadline,
                "the cluster did not list every replica everywhere, steadily, within \
                 {RECOVERY_TIMEOUT:?}; last seen: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What a nemesis run did, for its report.
struct RunReport<'a> {
    seed: u64,
    history: &'a History,
    faults: &'a [Fault],
    end: &'a FinalState,
    /// From the last heal until the workload ended.
    heal_to_end: Duration,
    /// From the last heal until the collection of the final state began.
    heal_to_collect: Duration,
    violations: &'a [Violation],
    /// Where the history was saved, if it was.
    saved: Option<PathBuf>,
}

impl RunReport<'_> {
    /// When the stores were seen identical. The final state is read in
    /// rounds, so the time includes the round that saw them agree.
    fn write_convergence(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self
            .end
            .reads
            .values()
            .next()
            .map_or(0, |store| store.len());
        let Some(reading) = self.end.converged_after else {
            return writeln!(f, "   did NOT converge within {CONVERGE_TIMEOUT:?}");
        };
        writeln!(
            f,
            "   identical stores at most {:.2}s after the last heal (the workload ended {:.2}s \
             after it; reading {keys} keys from every replica took {:.2}s in {} rounds)",
            (self.heal_to_collect + reading).as_secs_f64(),
            self.heal_to_end.as_secs_f64(),
            reading.as_secs_f64(),
            self.end.rounds
        )
    }
}

impl fmt::Display for RunReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops = &self.history.ops;
        let count = |pred: &dyn Fn(Status) -> bool| ops.iter().filter(|op| pred(op.status)).count();
        writeln!(
            f,
            "== nemesis run, seed {} (replay: CAUSALKV_FAULT_SEED={})",
            self.seed, self.seed
        )?;
        writeln!(
            f,
            "   operations: {} ({} ok, {} 404, {} 503, {} no answer)",
            ops.len(),
            count(&|s| matches!(s, Status::Http(200..=299))),
            count(&|s| s == Status::Http(404)),
            count(&|s| s == Status::Http(503)),
            count(&|s| matches!(s, Status::Unreachable | Status::Timeout)),
        )?;
        writeln!(f, "   faults injected: {}", self.faults.len())?;
        for fault in self.faults {
            writeln!(f, "     {fault}")?;
        }
        self.write_convergence(f)?;
        writeln!(f, "   violations: {}", self.violations.len())?;
        for violation in self.violations.iter().take(SHOWN_VIOLATIONS) {
            writeln!(
                f,
                "   - {}: {}",
                violation.kind.name(),
                violation.explanation
            )?;
            for op in &violation.ops {
                writeln!(f, "       {op}")?;
            }
        }
        if let Some(path) = &self.saved {
            writeln!(f, "   history: {}", path.display())?;
        }
        Ok(())
    }
}

/// Saves `text` as `name` in the suite's directory under the target tmp dir.
fn save(name: &str, text: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("causalkv-faults");
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(name);
    std::fs::write(&path, text).ok()?;
    Some(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Docker; run by scripts/test"]
async fn randomized_nemesis_run() {
    let faults = nemesis_run(Deployment::start("nemesis").await).await;
    assert!(!faults.is_empty(), "the nemesis injected no fault");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Docker; run by scripts/test"]
async fn randomized_nemesis_run_with_data_dirs() {
    let faults = nemesis_run(Deployment::start_durable("nemesis-durable").await).await;
    assert!(
        faults
            .iter()
            .any(|fault| fault.kind == FaultKind::ClusterCrash),
        "the nemesis injected no whole-cluster crash"
    );
}

/// The nemesis run on `deployment`: the workload's sessions under the
/// nemesis's faults, then convergence and the checker; panics with the run's
/// report when either fails. Returns the faults injected.
async fn nemesis_run(mut deployment: Deployment) -> Vec<Fault> {
    let seed = fault_seed();
    eprintln!("nemesis seed {seed} (replay: CAUSALKV_FAULT_SEED={seed})");
    let client = Client::new(REQUEST_TIMEOUT).expect("HTTP client");
    let config = WorkloadConfig {
        replicas: deployment.host_addrs(),
        sessions: SESSIONS,
        duration: WORKLOAD,
        max_ops: u64::MAX / 2,
        keys: SHARED_KEYS,
        seed,
        run_tag: workload::fresh_run_tag(),
    };
    let origin = Instant::now();
    let sessions = tokio::spawn({
        let (client, config) = (client.clone(), config.clone());
        async move { workload::run(&client, &config).await }
    });
    let nemesis = Nemesis::new(&mut deployment, seed, origin);
    let faults = nemesis.run(origin + WORKLOAD - QUIET_END).await;
    let history = sessions.await.expect("workload task");
    let last_heal = faults.last().map_or(origin, |fault| origin + fault.healed);
    let heal_to_end = last_heal.elapsed();

    until_views(&deployment.nodes(), &full_view(), within(RECOVERY_TIMEOUT)).await;
    let heal_to_collect = last_heal.elapsed();
    let keys: Vec<String> = history.keys().into_iter().collect();
    let end = settle::collect(&client, &config.replicas, &keys, CONVERGE_TIMEOUT).await;
    let violations = checker::check(&history, &end);
    // The history (about 10 MB) is kept only when it shows a failure.
    let failed = !end.agrees() || !violations.is_empty();
    let report = RunReport {
        seed,
        history: &history,
        faults: &faults,
        end: &end,
        heal_to_end,
        heal_to_collect,
        violations: &violations,
        saved: failed
            .then(|| save(&format!("history-{seed}.jsonl"), &history.to_jsonl()))
            .flatten(),
    };
    eprintln!("{report}");
    save(&format!("report-{seed}.txt"), &report.to_string());
    assert!(end.agrees(), "the replicas did not converge:\n{report}");
    assert!(
        violations.is_empty(),
        "the checker found violations:\n{report}"
    );
    faults
}

// ---------------------------------------------------------------------------
// Scenario tests
// ---------------------------------------------------------------------------

/// Writes in flight at once when loading many keys.
const LOAD_PARALLELISM: usize = 16;
/// Every replica of the deployment.
const ALL: [usize; REPLICAS] = [ALICE, BOB, CAROL];

/// `key → value` pairs named `{prefix}-{n}` for `n` in `range`.
fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<(String, Value)> {
    range
        .map(|n| (format!("{prefix}-{n}"), json!(format!("{prefix} #{n}"))))
        .collect()
}

/// What every replica must hold: `pairs` as present values.
fn contents_of(pairs: &[(String, Value)]) -> Contents {
    pairs
        .iter()
        .map(|(key, value)| (key.clone(), Some(value.clone())))
        .collect()
}

/// Bulk traffic through one pooled client: loading and reading many keys.
struct Bulk {
    client: Client,
    /// The published address of each replica, by index.
    replicas: Vec<String>,
}

impl Bulk {
    fn new(deployment: &Deployment) -> Self {
        Bulk {
            client: bulk_client(),
            replicas: deployment.host_addrs(),
        }
    }

    /// PUTs every pair (null metadata, several at once), round-robin over the
    /// replicas `on`; every write must be acknowledged.
    async fn load(&self, on: &[usize], pairs: &[(String, Value)]) {
        let pairs: Arc<[(String, Value)]> = pairs.into();
        let targets: Arc<[String]> = on.iter().map(|&i| self.replicas[i].clone()).collect();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..LOAD_PARALLELISM {
            let client = self.client.clone();
            let (pairs, targets, next) = (pairs.clone(), targets.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some((key, value)) = pairs.get(n) else {
                        return;
                    };
                    let target = &targets[n % targets.len()];
                    let put = client.put(target, key, value, &Metadata::default()).await;
                    put.unwrap_or_else(|err| panic!("PUT {key} at {target}: {err}"));
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("load task");
        }
    }

    /// `Ok` when replica `i` holds exactly `expected` for the keys of `expected`.
    async fn check(&self, i: usize, expected: &Contents) -> Result<(), String> {
        let keys: Vec<String> = expected.keys().cloned().collect();
        let held = read_contents(&self.client, &self.replicas[i], &keys).await?;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(key, value)| held.get(*key) != Some(*value))
            .map(|(key, value)| format!("{key}: {:?} instead of {value:?}", held.get(key)))
            .take(5)
            .collect();
        match wrong.is_empty() {
            true => Ok(()),
            false => Err(format!("{} holds {}", NAMES[i], wrong.join("; "))),
        }
    }

    /// Waits until each replica of `on` holds exactly `expected`.
    async fn until_contents(&self, on: &[usize], expected: &Contents, deadline: Instant) {
        for &i in on {
            let what = format!("{} holds all {} keys as expected", NAMES[i], expected.len());
            poll_until(deadline, &what, async || self.check(i, expected).await).await;
        }
    }

    /// Waits until every replica holds the same for `keys`; returns that.
    async fn until_identical(&self, keys: &[String], deadline: Instant) -> Contents {
        poll_until(deadline, "every replica holds the same store", async || {
            let first = read_contents(&self.client, &self.replicas[0], keys).await?;
            for (i, replica) in self.replicas.iter().enumerate().skip(1) {
                let other = read_contents(&self.client, replica, keys).await?;
                if let Some(key) = keys.iter().find(|key| first.get(*key) != other.get(*key)) {
                    return Err(format!(
                        "{key}: {:?} at {} but {:?} at {}",
                        first.get(key),
                        NAMES[0],
                        other.get(key),
                        NAMES[i]
                    ));
                }
            }
            Ok(first)
        })
        .await
    }
}

/// Polls until `check` passes; returns how long it took from `since`.
async fn measure(
    since: Instant,
    deadline: Instant,
    what: &str,
    check: impl AsyncFnMut() -> Result<(), String>,
) -> Duration {
    poll_until(deadline, what, check).await;
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Docker; run by scripts/test"]
async fn two_replicas_cut_off_while_the_third_accepts_writes() {
    let deployment = Deployment::start("two-cut-off").await;
    let (nodes, bulk) = (deployment.nodes(), Bulk::new(&deployment));
    let alice = &nodes[ALICE];
    let before = numbered("before", 0..20);
    bulk.load(&ALL, &before).await;
    bulk.until_contents(&ALL, &contents_of(&before), within(SETTLE_TIMEOUT))
        .await;

    deployment.disconnect(BOB);
    deployment.disconnect(CAROL);
    let cut = Instant::now();
    let mut session = Session::default();
    let during = numbered("during", 0..30);
    for (key, value) in &during {
        let started = Instant::now();
        let reply = session.put_at(alice, key, value.clone()).await;
        let took = started.elapsed();
        reply.expect_result(201, "created");
        assert!(took < PROMPT, "PUT {key} at alice alone took {took:?}");
    }
    session
        .get_at(alice, "during-0")
        .await
        .expect_found(&during[0].1);
    let alone = view_of(&[ALICE]);
    let dropped = measure(
        cut,
        cut + CONTRACT_HEAL,
        "alice's view is alice alone",
        async || check_views(std::slice::from_ref(alice), &alone).await,
    )
    .await;

    deployment.connect(BOB);
    deployment.connect(CAROL);
    let healed = Instant::now();
    let all: Vec<(String, Value)> = before.iter().chain(&during).cloned().collect();
    until_views(&nodes, &full_view(), healed + CONTRACT_HEAL).await;
    let listed = healed.elapsed();
    bulk.until_contents(&ALL, &contents_of(&all), healed + CONTRACT_HEAL)
        .await;
    eprintln!(
        "two cut off: alice alone in her view {dropped:.2?} after the cut; after the heal, \
         all listed in {listed:.2?}, all caught up in {:.2?}",
        healed.elapsed()
    );
    let meta = session.meta().clone();
    for node in &nodes {
        get_served(node, "during-29", &meta, within(SETTLE_TIMEOUT))
            .await
            .expect_found(&during[29].1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Docker; run by scripts/test"]
async fn killed_replica_leaves_the_view_and_catches_up_on_restart() {
    let mut deployment = Deployment::start("kill-restart").await;
    let (nodes, bulk) = (deployment.nodes(), Bulk::new(&deployment));
    let survivors = [nodes[ALICE].clone(), nodes[BOB].clone()];
    let old = numbered("old", 0..150);
    let mut expected = contents_of(&old);
    bulk.load(&ALL, &old).await;
    bulk.until_contents(&ALL, &expected, within(SETTLE_TIMEOUT))
        .await;

    deployment.kill(CAROL).await;
    let killed = Instant::now();
    let shrunk = view_of(&[ALICE, BOB]);
    let dropped = measure(
        killed,
        killed + CONTRACT_HEAL,
        "the view shrinks",
        async || check_views(&survivors, &shrunk).await,
    )
    .await;
    let new = numbered("new", 0..150);
    bulk.load(&[ALICE, BOB], &new).await;
    expected.extend(contents_of(&new));
    let replaced = numbered("old", 0..20)
        .into_iter()
        .map(|(key, _)| {
            (
                key.clone(),
                json!(format!("{key} replaced while carol was down")),
            )
        })
        .collect::<Vec<_>>();
    bulk.load(&[ALICE, BOB], &replaced).await;
    expected.extend(contents_of(&replaced));
    for n in 20..40 {
        let key = format!("old-{n}");
        survivors[n % 2]
            .delete(&key, &Value::Null)
            .await
            .expect_result(200, "deleted");
        expected.insert(key, None);
    }

    deployment.run(CAROL);
    let restarted = Instant::now();
    until_views(&nodes, &full_view(), restarted + CONTRACT_HEAL).await;
    let listed = restarted.elapsed();
    bulk.until_contents(&ALL, &expected, restarted + CONTRACT_HEAL)
        .await;
    eprintln!(
        "kill and restart: the view shrank {dropped:.2?} after the kill; after the restart, \
         all listed in {listed:.2?}, all hold the {} keys after {:.2?}",
        expected.len(),
        restarted.elapsed()
    );
    // The new life's writes are new writes: they reach the others.
    let value = json!("written by carol's second life");
    nodes[CAROL]
        .put("after-restart", value.clone(), &Value::Null)
        .await
        .expect_result(201, "created");
    for node in &survivors {
        until_holds(node, "after-restart", &value, within(SETTLE_TIMEOUT)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Docker; run by scripts/test"]
async fn reconnected_replica_serves_the_newest_write() {
    let deployment = Deployment::start("reconnect-newest").await;
    let [alice, bob, carol] = [ALICE, BOB, CAROL].map(|i| deployment.node(i));
    let m0 = alice
        .put("chai", json!("masala"), &Value::Null)
        .await
        .expect_result(201, "created");
    until_holds(&bob, "chai", &json!("masala"), within(SETTLE_TIMEOUT)).await;

    deployment.disconnect(BOB);
    let cut = Instant::now();
    let others = [alice.clone(), carol.clone()];
    until_views(&others, &view_of(&[ALICE, CAROL]), cut + CONTRACT_HEAL).await;
    let m1 = alice
        .put("chai", json!("rooibos"), &m0)
        .await
        .expect_result(200, "replaced");
    let m1 = carol
        .put("oolong", json!("milk"), &m1)
        .await
        .expect_result(201, "created");
    // Hold the partition long enough for bob to drop the others too.
    tokio::time::sleep(Duration::from_secs(2)).await;

    deployment.connect(BOB);
    let healed = Instant::now();
    let m2 = get_served(&bob, "chai", &m1, healed + CONTRACT_HEAL + MARGIN)
        .await
        .expect_found(&json!("rooibos"));
    let served = healed.elapsed();
    bob.get("oolong", &m2).await.expect_found(&json!("milk"));
    // The metadata bob answered with covers the newest write: a write made
    // with it at bob follows it everywhere.
    let m3 = bob
        .put("chai", json!("genmaicha"), &m2)
        .await
        .expect_result(200, "replaced");
    for node in [&alice, &carol] {
        get_served(node, "chai", &m3, within(SETTLE_TIMEOUT))
            .await
            .expect_found(&json!("genmaicha"));
    }
    until_views(&deployment.nodes(), &full_view(), within(SETTLE_TIMEOUT)).await;
    eprintln!("reconnect: bob served the newest write {served:.2?} after the heal");
}

/// What one burst client did.
#[derive(Default)]
struct BurstLog {
    /// Acknowledged writes to write-once keys.
    acked: Vec<(String, Value)>,
    /// Every key written, acknowledged or not.
    keys: BTreeSet<String>,
    /// Writes answered 503 or not answered.
    failed: usize,
}

/// A PUT that may get no answer: the reply, or why none came.
async fn try_put(node: &Node, key: &str, value: &Value, meta: &Value) -> Result<Reply, String> {
    let body = json!({ "value": value, "causal-metadata": meta });
    node.try_request(Method::PUT, &kvs_path(key), Body::Json(body))
        .await
        .map_err(|err| err.to_string())
}

/// One client of the burst: a session writing at random replicas until
/// `until`, mostly fresh write-once keys, every fifth write a shared key.
async fn burst_client(nodes: Vec<Node>, client: u64, until: Instant) -> BurstLog {
    let mut rng = SplitMix64::new(0xB0057 ^ client);
    let mut session = Session::default();
    let mut log = BurstLog::default();
    for n in 0.. {
        if Instant::now() >= until {
            break;
        }
        let key = match n % 5 {
            4 => format!("burst-shared-{}", rng.below(3)),
            _ => format!("burst-c{client}-{n}"),
        };
        let value = json!(format!("c{client}-{n}"));
        let node = &nodes[rng.below(nodes.len())];
        log.keys.insert(key.clone());
        match try_put(node, &key, &value, session.meta()).await {
            Ok(reply) if matches!(reply.status, 200 | 201) => {
                session.observe(&reply);
                if !key.contains("shared") {
                    log.acked.push((key, value));
                }
            }
            Ok(reply) if reply.status == 503 => log.failed += 1,
            Ok(reply) => panic!("PUT {key} at {}: {reply}", node.addr()),
            Err(_) => {
                // Cut off or refused: like any client, back off a little.
                log.failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Docker; run by scripts/test"]
async fn replica_cut_off_during_a_burst_of_writes() {
    let deployment = Deployment::start("burst").await;
    let nodes = deployment.nodes();
    let burst_end = within(Duration::from_secs(8));
    let clients: Vec<_> = (0..6)
        .map(|client| tokio::spawn(burst_client(nodes.clone(), client, burst_end)))
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    deployment.disconnect(CAROL);
    tokio::time::sleep(Duration::from_secs(3)).await;
    deployment.connect(CAROL);
    let healed = Instant::now();

    let mut logs = Vec::new();
    for client in clients {
        logs.push(client.await.expect("burst client"));
    }
    let burst_over = healed.elapsed();
    let acked: Vec<(String, Value)> = logs.iter().flat_map(|log| log.acked.clone()).collect();
    let keys: Vec<String> = logs.iter().flat_map(|log| log.keys.clone()).collect();
    let failed: usize = logs.iter().map(|log| log.failed).sum();
    until_views(&nodes, &full_view(), within(SETTLE_TIMEOUT)).await;
    let bulk = Bulk::new(&deployment);
    bulk.until_contents(&ALL, &contents_of(&acked), within(SETTLE_TIMEOUT))
        .await;
    let store = bulk.until_identical(&keys, within(SETTLE_TIMEOUT)).await;
    eprintln!(
        "burst: {} keys, {} acknowledged write-once writes, {failed} writes failed (503 or \
         no answer); the burst went on {burst_over:.2?} after the heal; converged {:.2?} \
         after the heal, {} keys present",
        keys.len(),
        acked.len(),
        healed.elapsed(),
        store.values().filter(|value| value.is_some()).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Docker; run by scripts/test"]
async fn quiet_cluster_of_10000_keys_catches_up_after_a_partition() {
    let deployment = Deployment::start("quiet-10k").await;
    let bulk = Bulk::new(&deployment);
    let started = Instant::now();
    let loaded = numbered("bulk", 0..10_000);
    bulk.load(&ALL, &loaded).await;
    let load_time = started.elapsed();
    let mut expected = contents_of(&loaded);
    // Bob holds the whole load before he is cut off: what he misses is
    // exactly what is written while he is away.
    bulk.until_contents(&[BOB], &expected, within(SETTLE_TIMEOUT))
        .await;

    deployment.disconnect(BOB);
    let missed = contents_of(&numbered("missed", 0..300));
    let pairs: Vec<(String, Value)> = missed
        .iter()
        .map(|(key, value)| (key.clone(), value.clone().unwrap_or_default()))
        .collect();
    bulk.load(&[ALICE, CAROL], &pairs).await;

    deployment.connect(BOB);
    let healed = Instant::now();
    let bound = STABILITY + CONTRACT_HEAL + Duration::from_millis(500);
    let caught_up = measure(
        healed,
        healed + bound,
        "bob holds the writes he missed",
        async || bulk.check(BOB, &missed).await,
    )
    .await;
    expected.extend(missed);
    bulk.until_contents(&ALL, &expected, within(SETTLE_TIMEOUT))
        .await;
    eprintln!(
        "quiet cluster: loaded 10,000 keys in {load_time:.2?}; bob caught up on the 300 \
         writes he missed {caught_up:.2?} after the heal (bound {bound:?}); all hold all {} \
         keys {:.2?} after the heal",
        expected.len(),
        healed.elapsed()
    );
}
