//! `causalkv bench --scale`: how memory and recovery grow with the data.
//!
//! Starts three `causalkv serve` processes of this binary on free loopback ports, loads
//! `--keys` keys of `--value-size` bytes through `--concurrency` sessions, and reports
//! each replica's resident memory (`VmRSS`, and the peak `VmHWM`, from `/proc/PID/status`)
//! against the raw size of keys plus values. Then it kills one replica (SIGKILL), starts
//! it again with the same address and view and an empty memory, and measures when it
//! answers again, when it serves a read that depends on the last write of a loading
//! session, when it holds every session's writes, and when every replica lists it again;
//! meanwhile it samples every replica's memory, to show what the transfer costs.
//!
//! With `--under-writes DURATION`, the loaded store then takes a bounded write load with
//! a read load beside it ([`pressure`]): read latency, and each replica's lock holds.
//! With `--durable`, each replica has a data directory: the killed replica recovers from
//! its own, and afterwards all three are killed and restarted at once on theirs. Every
//! restart is also timed until `/health` counts every key, followed by a read of every key
//! ([`recovery`]), and a durable one is explained by its log (reading and decoding the
//! directory, then writing the fresh snapshot).
//!
//! The replicas are a [`LocalCluster`] of the shared launcher, their logs (and data
//! directories) in a temporary directory; it kills them when dropped, and the run stops at
//! Ctrl-C or SIGTERM, so no replica outlives the benchmark.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::driver::{Driver, DriverConfig, Target};
use super::load::{self, Prepopulation};
use super::pressure::{self, UnderWrites};
use super::progress::{Progress, group_digits};
use super::recovery::{self, RecoveryLog, Scan};
use super::{BenchArgs, BenchError};
use crate::tools::client::{Client, ClientError, Outcome, Session};
use crate::tools::launcher::{self, Launch, LocalCluster};

const REPLICAS: usize = 3;
/// Longest wait for the cluster to list all its replicas at start.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Longest wait for the restarted replica to hold the whole store.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(300);
/// Interval of readiness polls and memory samples.
const POLL: Duration = Duration::from_millis(20);
const SAMPLE: Duration = Duration::from_millis(100);
/// How long resident memory must stay flat after the load to count as settled (a replica
/// packs recent writes once idle), and the longest wait for it.
const SETTLE_QUIET: Duration = Duration::from_secs(1);
const SETTLE_DEADLINE: Duration = Duration::from_secs(10);
/// Per-request timeout of loading and polling (large values take a while).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MIB: f64 = 1024.0 * 1024.0;

/// The scale report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleReport {
    pub keys: u64,
    pub value_size: usize,
    /// Keys plus values, in bytes, as a client sees them.
    pub raw_bytes: u64,
    pub concurrency: usize,
    pub load: Prepopulation,
    pub load_ops_per_sec: f64,
    pub replicas: Vec<ReplicaMemory>,
    /// Whether the replicas had data directories (`--durable`).
    #[serde(default)]
    pub durable: bool,
    /// Reads under a write load on the loaded store (`--under-writes`).
    #[serde(default)]
    pub under_writes: Option<UnderWrites>,
    pub restart: Restart,
    /// All three replicas killed and restarted on their data directories (`--durable`).
    #[serde(default)]
    pub restart_all: Option<RestartAll>,
}

/// One replica's memory, in MiB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaMemory {
    pub addr: String,
    /// Resident memory before loading.
    pub empty_rss_mib: f64,
    /// Resident memory once every key is loaded.
    pub loaded_rss_mib: f64,
    /// Peak resident memory up to then.
    pub loaded_peak_mib: f64,
    /// `loaded_rss_mib` ÷ the raw data size.
    pub rss_over_raw: f64,
    /// What loading added (`loaded - empty`) ÷ the raw data size.
    pub growth_over_raw: f64,
}

/// The recovery of a killed replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    pub addr: String,
    /// Seconds from the new process's start until it answers `GET /view`.
    pub answers_s: Option<f64>,
    /// Seconds until it serves a read that depends on a loading session's last write.
    pub serves_s: Option<f64>,
    /// Seconds until it has served every session's last write with that session's
    /// metadata (so it holds every write).
    pub whole_store_s: Option<f64>,
    /// Seconds until every replica lists every replica again.
    pub in_every_view_s: Option<f64>,
    /// Sessions whose last write it served, out of `sessions`.
    pub sessions_verified: usize,
    pub sessions: usize,
    /// Seconds until its `/health` counted every key.
    #[serde(default)]
    pub every_key_s: Option<f64>,
    /// A read of every key from it, once it held them.
    #[serde(default)]
    pub scan: Option<Scan>,
    /// What its log says of its recovery from its data directory (`--durable`).
    #[serde(default)]
    pub from_disk: Option<RecoveryLog>,
    /// Peak resident memory of each replica while the restarted one recovered, sampled
    /// every 100 ms (MiB).
    pub peak_rss_mib: Vec<(String, f64)>,
    /// Each replica's exact high-water mark (`VmHWM`, since its process started) once
    /// the restarted one recovered (MiB): above `loaded_peak_mib`, the recovery raised it.
    pub hwm_after_mib: Vec<(String, f64)>,
    /// The restarted replica's resident memory once recovered, and its peak (MiB).
    pub recovered_rss_mib: f64,
    pub recovered_peak_mib: f64,
    /// Each replica's resident memory once it settled after the recovery (MiB).
    #[serde(default)]
    pub settled_rss_mib: Vec<(String, f64)>,
}

pub async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    let report = tokio::select! {
        report = scale(args) => report?,
        _ = crate::server::shutdown_signal() => return Err(BenchError::Interrupted),
    };
    let encoded = serde_json::to_string_pretty(&report)
        .map_err(|e| BenchError::Setup(format!("cannot encode the report: {e}")))?;
    if args.json {
        println!("{encoded}");
    } else {
        print!("{}", report.render());
    }
    if let Some(path) = &args.save {
        let path = path.with_extension("json");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, encoded)?;
    }
    Ok(())
}

async fn scale(args: &BenchArgs) -> Result<ScaleReport, BenchError> {
    let mut cluster = Replicas::start(REPLICAS, args.durable)?;
    let client = Client::new(REQUEST_TIMEOUT).map_err(|e| BenchError::Setup(e.to_string()))?;
    note(
        args,
        &format!(
            "started {REPLICAS} replicas, logs in {}",
            cluster.dir.display()
        ),
    );
    cluster.wait_ready(&client).await?;
    let empty: Vec<Memory> = cluster.memory_all()?;
    note(
        args,
        &format!(
            "loading {} keys of {} bytes",
            group_digits(args.keys),
            args.value_size
        ),
    );
    let (sessions, load) = load_data(args, &cluster).await?;
    let keys = load::key_names(args.keys);
    let checks = session_checks(&sessions, &keys);
    let loaded = settled_memory(&cluster).await?;
    let raw_bytes: u64 = keys
        .iter()
        .map(|k| (k.len() + args.value_size) as u64)
        .sum();
    let under_writes = match args.under_writes {
        Some(duration) => {
            note(args, &format!("reads under writes for {duration:?}"));
            Some(pressure::run(args, &cluster.addrs, REQUEST_TIMEOUT, duration).await?)
        }
        None => None,
    };
    let expected = Expected {
        checks: &checks,
        keys: &keys,
        value_size: args.value_size,
        concurrency: args.concurrency,
    };
    note(args, "killing and restarting one replica");
    let restart = restart(&mut cluster, &client, &expected).await?;
    let restart_all = if args.durable {
        note(args, "killing and restarting all replicas");
        Some(restart_all(&mut cluster, &client, &expected).await?)
    } else {
        None
    };
    if args.keep_logs {
        note(
            args,
            &format!("replica logs kept in {}", cluster.dir.display()),
        );
    } else {
        cluster.cleanup();
    }
    Ok(ScaleReport {
        keys: args.keys,
        value_size: args.value_size,
        raw_bytes,
        concurrency: args.concurrency,
        load_ops_per_sec: load.keys as f64 / load.seconds.max(1e-9),
        load,
        replicas: memory_report(&cluster.addrs, &empty, &loaded, raw_bytes),
        durable: args.durable,
        under_writes,
        restart,
        restart_all,
    })
}

fn note(args: &BenchArgs, message: &str) {
    if !args.json {
        eprintln!("scale: {message}");
    }
}

async fn load_data(
    args: &BenchArgs,
    cluster: &Replicas,
) -> Result<(Vec<Session>, Prepopulation), BenchError> {
    let config = DriverConfig {
        target: Target::Causalkv,
        endpoints: cluster.addrs.clone(),
        timeout: REQUEST_TIMEOUT,
        value_size: args.value_size,
        serializable_reads: true,
        tls_ca: None,
    };
    let driver = Arc::new(Driver::new(&config)?);
    let sessions = (0..args.concurrency).map(|i| driver.session(i)).collect();
    let progress = Progress::new(!args.json && std::io::stderr().is_terminal());
    let keys = load::key_names(args.keys);
    let loaded = load::prepopulate(&driver, &keys, sessions, &progress).await;
    progress.finish();
    loaded
}

/// A session's proof of its writes: its metadata and the last key it wrote.
#[derive(Clone, Debug)]
struct Check {
    metadata: crate::tools::client::Metadata,
    key: String,
}

fn session_checks(sessions: &[Session], keys: &[String]) -> Vec<Check> {
    let stride = sessions.len();
    sessions
        .iter()
        .enumerate()
        .filter_map(|(index, session)| {
            // Keys were dealt round-robin: this session's are index, index + stride, ...
            let last = index + keys.len().checked_sub(index + 1)? / stride * stride;
            Some(Check {
                metadata: session.metadata().clone(),
                key: keys[last].clone(),
            })
        })
        .collect()
}

fn memory_report(
    addrs: &[String],
    empty: &[Memory],
    loaded: &[Memory],
    raw_bytes: u64,
) -> Vec<ReplicaMemory> {
    addrs
        .iter()
        .zip(empty.iter().zip(loaded))
        .map(|(addr, (empty, loaded))| ReplicaMemory {
            addr: addr.clone(),
            empty_rss_mib: empty.rss_mib(),
            loaded_rss_mib: loaded.rss_mib(),
            loaded_peak_mib: loaded.peak_mib(),
            rss_over_raw: loaded.rss_bytes() as f64 / raw_bytes.max(1) as f64,
            growth_over_raw: loaded.rss_bytes().saturating_sub(empty.rss_bytes()) as f64
                / raw_bytes.max(1) as f64,
        })
        .collect()
}

/// What a recovered replica must serve: each session's last write, and every key.
struct Expected<'a> {
    checks: &'a [Check],
    keys: &'a Arc<[String]>,
    value_size: usize,
    concurrency: usize,
}

impl Expected<'_> {
    fn key_count(&self) -> u64 {
        self.keys.len() as u64
    }

    /// Reads every key, spread over `addrs`.
    async fn scan(&self, client: &Client, addrs: &[String]) -> Scan {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        let (keys, size) = (self.keys, self.value_size);
        recovery::scan(client, addrs, keys, size, self.concurrency, deadline).await
    }

    /// How many sessions' last writes were served (session `i`'s at `addrs[i % len]`),
    /// each polled until `deadline`.
    async fn verify(&self, client: &Client, addrs: &[String], deadline: Instant) -> usize {
        let mut verified = 0;
        for (i, check) in self.checks.iter().enumerate() {
            let addr = &addrs[i % addrs.len().max(1)];
            if until(deadline, || serves(client, addr, check, self.value_size)).await {
                verified += 1;
            }
        }
        verified
    }
}

/// Kills the last replica, restarts it, and times its recovery.
async fn restart(
    cluster: &mut Replicas,
    client: &Client,
    expected: &Expected<'_>,
) -> Result<Restart, BenchError> {
    let victim = REPLICAS - 1;
    let addr = cluster.addrs[victim].clone();
    let targets = [addr.clone()];
    cluster.processes.kill(victim);
    let spawned = SystemTime::now();
    cluster.processes.start(victim)?;
    let started = Instant::now();
    let since = move || started.elapsed().as_secs_f64();
    let deadline = started + RECOVERY_DEADLINE;
    let sampler = Sampler::start(cluster.processes.pids());
    let answers_s = until(deadline, || async { client.view(&addr).await.is_ok() })
        .await
        .then(since);
    let serves_s = match expected.checks.first() {
        Some(check) => until(deadline, || {
            serves(client, &addr, check, expected.value_size)
        })
        .await
        .then(since),
        None => None,
    };
    let verified = expected.verify(client, &targets, deadline).await;
    let whole_store_s = (verified == expected.checks.len()).then(since);
    let every_key_s = recovery::until_every_key(client, &addr, expected.key_count(), deadline)
        .await
        .then(since);
    let in_every_view_s = until(deadline, || cluster.all_listed(client))
        .await
        .then(since);
    let peaks = sampler.stop().await;
    let after = cluster.memory_all()?;
    let recovered = after[victim];
    let scan = expected.scan(client, &targets).await;
    let settled = settled_memory(cluster).await?;
    Ok(Restart {
        addr,
        answers_s,
        serves_s,
        whole_store_s,
        in_every_view_s,
        sessions_verified: verified,
        sessions: expected.checks.len(),
        every_key_s,
        scan: Some(scan),
        from_disk: cluster
            .durable
            .then(|| cluster.recovery_log(victim, spawned)),
        peak_rss_mib: cluster.by_addr(peaks),
        hwm_after_mib: cluster.by_addr(after.iter().map(Memory::peak_mib)),
        recovered_rss_mib: recovered.rss_mib(),
        recovered_peak_mib: recovered.peak_mib(),
        settled_rss_mib: cluster.by_addr(settled.iter().map(Memory::rss_mib)),
    })
}

/// Kills every replica, restarts them all on their data directories, and times their
/// recovery (each replica polled on its own task, so that none waits for another).
async fn restart_all(
    cluster: &mut Replicas,
    client: &Client,
    expected: &Expected<'_>,
) -> Result<RestartAll, BenchError> {
    cluster.processes.kill_all();
    let spawned = SystemTime::now();
    cluster.processes.start_all()?;
    let started = Instant::now();
    let since = move || started.elapsed().as_secs_f64();
    let deadline = started + RECOVERY_DEADLINE;
    let mut pollers = tokio::task::JoinSet::new();
    for (i, addr) in cluster.addrs.iter().cloned().enumerate() {
        let (client, keys) = (client.clone(), expected.key_count());
        pollers.spawn(async move {
            let answers = until(deadline, || async { client.view(&addr).await.is_ok() }).await;
            let answers_s = answers.then(since);
            let every_key = recovery::until_every_key(&client, &addr, keys, deadline).await;
            (i, answers_s, every_key.then(since))
        });
    }
    let mut times = vec![(None, None); cluster.addrs.len()];
    while let Some(joined) = pollers.join_next().await {
        let (i, answers_s, every_key_s) = joined.map_err(|e| BenchError::Setup(e.to_string()))?;
        times[i] = (answers_s, every_key_s);
    }
    let verified = expected.verify(client, &cluster.addrs, deadline).await;
    let whole_store_s = (verified == expected.checks.len()).then(since);
    let in_every_view_s = until(deadline, || cluster.all_listed(client))
        .await
        .then(since);
    let memory = cluster.memory_all()?;
    let scan = expected.scan(client, &cluster.addrs).await;
    let replicas = times
        .into_iter()
        .zip(&memory)
        .enumerate()
        .map(|(i, ((answers_s, every_key_s), memory))| Revived {
            addr: cluster.addrs[i].clone(),
            answers_s,
            every_key_s,
            from_disk: cluster.recovery_log(i, spawned),
            rss_mib: memory.rss_mib(),
            peak_mib: memory.peak_mib(),
        })
        .collect();
    Ok(RestartAll {
        replicas,
        whole_store_s,
        sessions_verified: verified,
        sessions: expected.checks.len(),
        in_every_view_s,
        scan,
    })
}

/// All replicas killed at once and restarted on their data directories.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestartAll {
    pub replicas: Vec<Revived>,
    /// Seconds until every session's last write was served (each session's at one
    /// replica, in turn).
    pub whole_store_s: Option<f64>,
    pub sessions_verified: usize,
    pub sessions: usize,
    /// Seconds until every replica lists every replica again.
    pub in_every_view_s: Option<f64>,
    /// A read of every key, spread over the replicas.
    pub scan: Scan,
}

/// One restarted replica of [`RestartAll`]; seconds since the restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revived {
    pub addr: String,
    pub answers_s: Option<f64>,
    pub every_key_s: Option<f64>,
    pub from_disk: RecoveryLog,
    /// Its resident memory once every replica holds every key, and its peak (MiB).
    pub rss_mib: f64,
    pub peak_mib: f64,
}

/// Every replica's memory once none has changed by more than 1% for [`SETTLE_QUIET`]
/// (or at [`SETTLE_DEADLINE`]): what holding the data costs, not the load's buffers.
async fn settled_memory(cluster: &Replicas) -> Result<Vec<Memory>, BenchError> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    let mut last = cluster.memory_all()?;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < SETTLE_QUIET {
        tokio::time::sleep(SAMPLE).await;
        let now = cluster.memory_all()?;
        let moved = now
            .iter()
            .zip(&last)
            .any(|(a, b)| a.rss_kib.abs_diff(b.rss_kib) * 100 > b.rss_kib);
        if moved {
            quiet_since = Instant::now();
        }
        last = now;
    }
    Ok(last)
}

/// Polls `condition` until it holds (true) or `deadline` passes (false).
async fn until<F, Fut>(deadline: Instant, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// True when `addr` serves the check's key, with the check's metadata, at full size.
async fn serves(client: &Client, addr: &str, check: &Check, value_size: usize) -> bool {
    match client.get(addr, &check.key, &check.metadata).await {
        Ok(reply) => {
            matches!(reply.outcome, Outcome::Found(Value::String(s)) if s.len() == value_size)
        }
        Err(ClientError::NotFound { .. }) => false,
        Err(_) => false,
    }
}

/// Resident memory of a process, in KiB, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Memory> {
        parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }

    fn rss_bytes(&self) -> u64 {
        self.rss_kib * 1024
    }

    fn rss_mib(&self) -> f64 {
        self.rss_bytes() as f64 / MIB
    }

    fn peak_mib(&self) -> f64 {
        (self.peak_kib * 1024) as f64 / MIB
    }
}

/// `VmRSS` and `VmHWM` of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// Samples processes' resident memory in the background; keeps each one's peak.
struct Sampler {
    stop: Arc<Mutex<bool>>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl Sampler {
    fn start(pids: Vec<Option<u32>>) -> Sampler {
        let stop = Arc::new(Mutex::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peaks = vec![0u64; pids.len()];
            while !*flag.lock().unwrap_or_else(|p| p.into_inner()) {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    let rss = pid.and_then(Memory::of).map_or(0, |m| m.rss_kib);
                    *peak = (*peak).max(rss);
                }
                tokio::time::sleep(SAMPLE).await;
            }
            peaks
        });
        Sampler { stop, task }
    }

    /// Stops sampling; the peaks in MiB.
    async fn stop(self) -> Vec<f64> {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        let peaks = self.task.await.unwrap_or_default();
        peaks.iter().map(|kib| (kib * 1024) as f64 / MIB).collect()
    }
}

/// The replicas (the shared launcher's [`LocalCluster`]), their addresses as clients name
/// them, and the directory of their logs.
struct Replicas {
    processes: LocalCluster,
    addrs: Vec<String>,
    dir: PathBuf,
    /// Whether each has a data directory (`DIR/data-I`).
    durable: bool,
}

impl Replicas {
    /// Starts `n` replicas of this binary on free loopback ports, logging to a fresh
    /// temporary directory, and each with a data directory there when `durable`.
    fn start(n: usize, durable: bool) -> Result<Replicas, BenchError> {
        let dir = std::env::temp_dir().join(format!("causalkv-scale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut launch = Launch::new(launcher::free_loopback_addrs(n)?)
            .name("scale")
            .log_dir(&dir)
            // Tells work under the lock from preemption (see `pressure`).
            .args(["--lock-cpu-metrics"]);
        if durable {
            for i in 0..n {
                let data = dir.join(format!("data-{i}"));
                std::fs::create_dir_all(&data)?;
                launch =
                    launch.replica_args(i, [std::ffi::OsString::from("--data-dir"), data.into()]);
            }
        }
        let mut processes = launch.build();
        processes.start_all()?;
        let addrs = processes.addrs().iter().map(ToString::to_string).collect();
        Ok(Replicas {
            processes,
            addrs,
            dir,
            durable,
        })
    }

    /// What replica `i`'s log says of its latest recovery, its process started at
    /// `spawned`.
    fn recovery_log(&self, i: usize, spawned: SystemTime) -> RecoveryLog {
        RecoveryLog::of(&self.processes.log_text(i), spawned)
    }

    fn memory(&self, i: usize) -> Result<Memory, BenchError> {
        let pid = self.processes.pid(i);
        pid.and_then(Memory::of).ok_or_else(|| {
            BenchError::Setup(format!(
                "replica {} is not running (see {})",
                self.addrs[i],
                self.dir.display()
            ))
        })
    }

    /// `values`, one per replica in order, paired with the replicas' addresses.
    fn by_addr(&self, values: impl IntoIterator<Item = f64>) -> Vec<(String, f64)> {
        self.addrs.iter().cloned().zip(values).collect()
    }

    fn memory_all(&self) -> Result<Vec<Memory>, BenchError> {
        (0..self.addrs.len()).map(|i| self.memory(i)).collect()
    }

    async fn wait_ready(&mut self, client: &Client) -> Result<(), BenchError> {
        let deadline = Instant::now() + READY_DEADLINE;
        self.processes
            .wait_ready(client, deadline)
            .await
            .map_err(|e| {
                BenchError::Setup(format!(
                    "the replicas were not ready within {READY_DEADLINE:?}: {e} (see {})",
                    self.dir.display()
                ))
            })
    }

    /// True when every replica answers `GET /view` with all of them.
    async fn all_listed(&self, client: &Client) -> bool {
        for addr in &self.addrs {
            match client.view(addr).await {
                Ok(view) if self.addrs.iter().all(|a| view.contains(a)) => {}
                _ => return false,
            }
        }
        true
    }

    /// Removes the logs (after a successful run).
    fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ScaleReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let raw_mib = self.raw_bytes as f64 / MIB;
        let mode = if self.durable {
            "durable: a data directory per replica"
        } else {
            "in memory"
        };
        let _ = writeln!(
            out,
            "scale: {} keys × {}-byte values = {:.1} MiB raw (keys + values), {mode}",
            group_digits(self.keys),
            self.value_size,
            raw_mib
        );
        let _ = writeln!(
            out,
            "loaded in {:.1} s ({} writes/s, {} sessions, {} failed)\n",
            self.load.seconds,
            group_digits(self.load_ops_per_sec.round() as u64),
            self.concurrency,
            self.load.failed
        );
        let _ = writeln!(
            out,
            "{:<18}{:>11}{:>12}{:>10}{:>10}{:>12}",
            "replica", "empty MiB", "loaded MiB", "peak MiB", "RSS/raw", "growth/raw"
        );
        for r in &self.replicas {
            let _ = writeln!(
                out,
                "{:<18}{:>11.1}{:>12.1}{:>10.1}{:>9.2}×{:>11.2}×",
                r.addr,
                r.empty_rss_mib,
                r.loaded_rss_mib,
                r.loaded_peak_mib,
                r.rss_over_raw,
                r.growth_over_raw
            );
        }
        if let Some(under_writes) = &self.under_writes {
            out.push_str(&under_writes.render());
        }
        out.push_str(&self.restart.render(self.raw_bytes));
        if let Some(all) = &self.restart_all {
            out.push_str(&all.render(self.raw_bytes));
        }
        out
    }
}

/// `12.34 s`, or `never`.
fn secs(s: Option<f64>) -> String {
    s.map_or("never".to_string(), |s| format!("{s:.2} s"))
}

/// `MiB (ratio× raw)`.
fn mib_of_raw(mib: f64, raw_bytes: u64) -> String {
    format!(
        "{mib:.1} MiB ({:.2}× raw)",
        mib * MIB / raw_bytes.max(1) as f64
    )
}

impl Scan {
    fn render(&self) -> String {
        format!(
            "{}/{} keys served in {:.1} s",
            group_digits(self.served),
            group_digits(self.keys),
            self.seconds
        )
    }
}

impl RecoveryLog {
    /// `recovered N records (K keys) at T, wrote a B-byte snapshot at T` from the log.
    fn render(&self) -> String {
        let count = |n: Option<u64>| n.map_or("?".to_string(), group_digits);
        format!(
            "read and decoded {} records ({} keys) by {}, wrote a {} MiB snapshot by {}",
            count(self.records),
            count(self.keys),
            secs(self.recovered_s),
            self.snapshot_bytes
                .map_or("?".to_string(), |b| format!("{:.1}", b as f64 / MIB)),
            secs(self.snapshot_s)
        )
    }
}

impl RestartAll {
    fn render(&self, raw_bytes: u64) -> String {
        let mut out = String::from(
            "
restart of all replicas (killed, started on their data directories):
",
        );
        for r in &self.replicas {
            let _ = writeln!(
                out,
                "  {:<18}answers {}, every key by {}, memory {} (peak {:.1} MiB)",
                r.addr,
                secs(r.answers_s),
                secs(r.every_key_s),
                mib_of_raw(r.rss_mib, raw_bytes),
                r.peak_mib
            );
            let _ = writeln!(out, "  {:<18}log: {}", "", r.from_disk.render());
        }
        let _ = writeln!(
            out,
            "  holds every session's data  {} ({}/{} sessions)",
            secs(self.whole_store_s),
            self.sessions_verified,
            self.sessions
        );
        let _ = writeln!(
            out,
            "  in every view after         {}",
            secs(self.in_every_view_s)
        );
        let _ = writeln!(out, "  read of every key           {}", self.scan.render());
        out
    }
}

impl Restart {
    fn render(&self, raw_bytes: u64) -> String {
        let how = if self.from_disk.is_some() {
            "started on its data directory"
        } else {
            "started with empty memory"
        };
        let mut out = format!("\nrestart of {} (killed, {how}):\n", self.addr);
        let _ = writeln!(
            out,
            "  answers GET /view after     {}",
            secs(self.answers_s)
        );
        let _ = writeln!(out, "  serves a dependent read     {}", secs(self.serves_s));
        let _ = writeln!(
            out,
            "  holds every session's data  {} ({}/{} sessions)",
            secs(self.whole_store_s),
            self.sessions_verified,
            self.sessions
        );
        let _ = writeln!(
            out,
            "  /health counts every key    {}",
            secs(self.every_key_s)
        );
        let _ = writeln!(
            out,
            "  in every view after         {}",
            secs(self.in_every_view_s)
        );
        if let Some(log) = &self.from_disk {
            let _ = writeln!(out, "  its log                     {}", log.render());
        }
        if let Some(scan) = &self.scan {
            let _ = writeln!(out, "  read of every key from it   {}", scan.render());
        }
        let _ = writeln!(
            out,
            "  its memory once recovered   {} (peak {:.1} MiB)",
            mib_of_raw(self.recovered_rss_mib, raw_bytes),
            self.recovered_peak_mib
        );
        let _ = writeln!(
            out,
            "  RSS during recovery, sampled peak (MiB):  {}",
            by_replica(&self.peak_rss_mib)
        );
        let _ = writeln!(
            out,
            "  VmHWM after recovery (MiB):               {}",
            by_replica(&self.hwm_after_mib)
        );
        let _ = writeln!(
            out,
            "  RSS once settled again (MiB):             {}",
            by_replica(&self.settled_rss_mib)
        );
        out
    }
}

/// `addr value, addr value, ...` with one decimal.
fn by_replica(values: &[(String, f64)]) -> String {
    values
        .iter()
        .map(|(addr, mib)| format!("{addr} {mib:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_comes_from_proc_status() {
        let text = "Name:\tcausalkv\nVmPeak:\t  900 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss_kib: 1024,
                peak_kib: 2048
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
        let own = Memory::of(std::process::id()).expect("this process's status");
        assert!(own.rss_kib > 0 && own.peak_kib >= own.rss_kib);
    }

    #[test]
    fn each_session_is_checked_on_its_last_key() {
        let sessions: Vec<Session> = (0..3)
            .map(|i| {
                Session::default().with_metadata(crate::tools::client::Metadata(Value::from(i)))
            })
            .collect();
        let keys = load::key_names(7);
        let checks = session_checks(&sessions, &keys);
        let last: Vec<&str> = checks.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(last, ["k6", "k4", "k5"]);
        assert_eq!(checks[1].metadata.0, Value::from(1));
        let few = session_checks(&sessions, &load::key_names(2));
        assert_eq!(few.len(), 2, "a session that wrote nothing proves nothing");
    }

    #[test]
    fn the_report_renders() {
        let report = ScaleReport {
            keys: 1000,
            value_size: 32,
            raw_bytes: 36_000,
            concurrency: 4,
            load: Prepopulation {
                keys: 1000,
                seconds: 0.5,
                failed: 0,
            },
            load_ops_per_sec: 2000.0,
            replicas: vec![ReplicaMemory {
                addr: "127.0.0.1:1".into(),
                empty_rss_mib: 5.0,
                loaded_rss_mib: 6.0,
                loaded_peak_mib: 6.5,
                rss_over_raw: 174.8,
                growth_over_raw: 29.1,
            }],
            restart: Restart {
                addr: "127.0.0.1:3".into(),
                answers_s: Some(0.1),
                serves_s: Some(0.4),
                whole_store_s: Some(0.5),
                in_every_view_s: None,
                sessions_verified: 4,
                sessions: 4,
                every_key_s: Some(0.6),
                scan: Some(Scan {
                    keys: 1000,
                    served: 1000,
                    seconds: 0.2,
                }),
                from_disk: Some(RecoveryLog {
                    recovered_s: Some(0.05),
                    records: Some(1000),
                    keys: Some(1000),
                    snapshot_s: Some(0.08),
                    snapshot_bytes: Some(3 * 1024 * 1024),
                }),
                peak_rss_mib: vec![("127.0.0.1:1".into(), 7.0)],
                hwm_after_mib: vec![("127.0.0.1:1".into(), 7.5)],
                recovered_rss_mib: 6.0,
                recovered_peak_mib: 6.1,
                settled_rss_mib: vec![("127.0.0.1:1".into(), 5.5)],
            },
            durable: true,
            under_writes: None,
            restart_all: None,
        };
        let text = report.render();
        assert!(text.contains("1,000 keys × 32-byte values"), "{text}");
        assert!(text.contains("174.80×"), "{text}");
        assert!(
            text.contains("holds every session's data  0.50 s (4/4 sessions)"),
            "{text}"
        );
        assert!(text.contains("in every view after         never"), "{text}");
        assert!(
            text.contains("durable: a data directory per replica"),
            "{text}"
        );
        assert!(
            text.contains("read and decoded 1,000 records (1,000 keys) by 0.05 s, wrote a 3.0 MiB snapshot by 0.08 s"),
            "{text}"
        );
        assert!(text.contains("1,000/1,000 keys served in 0.2 s"), "{text}");
        let json = serde_json::to_string(&report).expect("encodes");
        let back: ScaleReport = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, report);
    }
}
