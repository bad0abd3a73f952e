//! `causalkv simulate`: whole clusters of protocol machines under faults, in simulated
//! time, one seed per run (in the spirit of FoundationDB's simulation and TigerBeetle's
//! VOPR).
//!
//! A seed picks the cluster size (3 to 5 replicas, unless given), the network's latency,
//! loss and duplication, and a plan of fault episodes, one after another with calm gaps:
//! crashes and restarts, restarts during catch-up, two-way and one-way partitions,
//! flapping links, and wall-clock jumps. Client sessions run the `check` workload
//! throughout. At the end every fault is healed, the sessions stop, and the cluster is
//! given time to converge. The run then fails if:
//!
//! * the checker (`check::checker`) finds a violation in the history and the final state
//!   (stale reads, missed or lost writes, divergence);
//! * a timing rule of the contract broke, on seeds whose network loses nothing: a crashed
//!   replica still in a live view 5 s later; a restarted or reconnected one not in every
//!   view, or not caught up, 5 s after it came back.
//!
//! Everything is deterministic: the same seed gives the same run, event for event
//! (`--seed S --verbose` prints it). Module map: [`world`] (machines, network, event
//! queue), [`workload`] (the sessions), [`scenario`] (the story files of
//! `tests/scenarios/`).

pub mod scenario;
pub mod workload;
pub mod world;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;

use crate::protocol::causal::Clock;
use crate::protocol::machine::Settings;
use crate::protocol::time::Time;
use crate::tools::check::checker::{Violation, check};
use crate::tools::check::settle::{FinalRead, FinalState};
use crate::tools::check::workload::SplitMix64;
use world::{Network, Session, World, replica_addr};

/// A fault or a check, at an instant of the plan.
#[derive(Clone, Debug)]
pub enum Action {
    /// Crashes a replica (`true`: then checks it leaves every view within 5 s). Without
    /// a data directory a replica loses what only it holds, and the contract allows that;
    /// so a crash waits (up to 30 s) until every write the replica applied is applied
    /// elsewhere, so that the checker may demand every acknowledged write.
    Crash(usize, bool),
    Restart(usize),
    /// Cuts every link between `side` and the other replicas, both ways.
    Isolate(Vec<usize>),
    /// Cuts the link from one replica to another, one way.
    CutOneWay(usize, usize),
    /// Restores every link.
    Heal,
    /// Moves a replica's wall clock by this many microseconds.
    JumpClock(usize, i64),
    /// A crash that waited since this instant.
    CrashWaiting(usize, bool, Time),
    /// Every replica loses power at once (durable clusters only).
    CrashAll,
    /// Every replica loses power the moment the next write is acknowledged to its client
    /// (durable clusters only): the instant an acknowledgement must already be durable.
    CrashAllAfterAck,
    /// Timing rule: `r`, reconnected a moment ago, is not yet back in any view (the
    /// stability period).
    CheckStillOut(usize, Vec<usize>),
    /// Timing rule: `r`, crashed, is out of every live replica's view.
    CheckGone(usize),
    /// Timing rule: `r` is in every live view, and caught up to `clocks` (what the others
    /// had when it came back).
    CheckBack(usize, Vec<Clock>),
    /// Records what the others hold now, and checks `r` against it `after` from now.
    ExpectBack(usize, Duration),
    StopSessions,
}

impl Action {
    fn is_fault(&self) -> bool {
        matches!(
            self,
            Action::Crash(..)
                | Action::CrashWaiting(..)
                | Action::CrashAll
                | Action::CrashAllAfterAck
                | Action::Restart(_)
                | Action::Isolate(_)
                | Action::CutOneWay(..)
                | Action::Heal
        )
    }
}

/// One simulation's parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Replicas; `None` lets the seed pick 3 to 5.
    pub replicas: Option<usize>,
    /// Simulated time the run lasts.
    pub duration: Duration,
    pub sessions: u32,
    /// Replicas keep a journal on a simulated disk (`Some(true)`), or memory only;
    /// `None` lets the seed pick.
    pub durable: Option<bool>,
    #[cfg(test)]
    pub bugs: crate::protocol::machine::Bugs,
    /// Bounds of catch-up chunks (bytes, records scanned) other than the product's.
    #[cfg(test)]
    pub sync_chunk: Option<(usize, usize)>,
}

impl SimConfig {
    pub fn new(seed: u64, replicas: Option<usize>, duration: Duration) -> SimConfig {
        SimConfig {
            seed,
            replicas,
            duration,
            sessions: 4,
            durable: None,
            #[cfg(test)]
            bugs: Default::default(),
            #[cfg(test)]
            sync_chunk: None,
        }
    }
}

/// What one seed's run found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub replicas: usize,
    pub durable: bool,
    pub ops: usize,
    pub violations: Vec<Violation>,
    pub timing: Vec<String>,
    pub converged: bool,
    /// Keys whose converged write is older than an acknowledged write of them.
    pub wrong_winners: Vec<String>,
    /// The faults, in one short line.
    pub trace: String,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
            && self.timing.is_empty()
            && self.converged
            && self.wrong_winners.is_empty()
    }

    /// One line: the seed, what broke first, and the faults.
    pub fn summary(&self) -> String {
        let what = if let Some(v) = self.violations.first() {
            let op = v.ops.first().map(ToString::to_string).unwrap_or_default();
            format!("{}: {} [{op}]", v.kind.name(), v.explanation)
        } else if let Some(t) = self.timing.first() {
            format!("timing: {t}")
        } else if !self.converged {
            "replicas did not converge after the last heal".into()
        } else if let Some(w) = self.wrong_winners.first() {
            format!("winner: {w}")
        } else {
            "ok".into()
        };
        let mut trace = self.trace.clone();
        if trace.len() > 300 {
            trace.truncate(300);
            trace.push_str("...");
        }
        let storage = if self.durable { "durable" } else { "in memory" };
        format!(
            "seed {} ({} replicas {storage}, {} ops): {what} | {trace}",
            self.seed, self.replicas, self.ops
        )
    }
}

/// The protocol's settings in the simulation: the server's defaults.
pub fn default_settings(replicas: usize) -> Settings {
    Settings {
        me: replica_addr(0),
        view: (0..replicas).map(replica_addr).collect(),
        causal_wait: Duration::from_millis(500),
        replication_timeout: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(250),
        failure_timeout: Duration::from_millis(1500),
        stability_period: Duration::from_millis(2500),
        anti_entropy_interval: Duration::from_secs(1),
        delivery_buffer: 100_000,
        peer_queue: 65_536,
    }
}

/// Runs one seed.
pub fn run(config: &SimConfig, verbose: bool) -> Outcome {
    let mut rng = SplitMix64::new(config.seed ^ 0x5EED_F0CA_05A1);
    let replicas = config.replicas.unwrap_or(3 + rng.below(3));
    let network = pick_network(&mut rng);
    let durable = config.durable.unwrap_or(rng.below(2) == 0);
    let mut world = World::new(
        rng.next_u64(),
        replicas,
        default_settings(replicas),
        network,
    );
    world.verbose = verbose;
    world.durable = durable;
    world.check_acks = network.loss_ppm == 0;
    #[cfg(test)]
    world.plant(config.bugs);
    #[cfg(test)]
    {
        world.sync_chunk = config.sync_chunk;
    }
    let storage = if durable { "durable" } else { "in memory" };
    world.note(format!("{replicas} replicas {storage}, {network:?}"));
    for r in 0..replicas {
        world.start(r);
    }
    // Let the cluster form before clients arrive.
    world.run_until(Time::from_millis(3_000));
    for s in 0..config.sessions {
        world.sessions.push(Session {
            metadata: Clock::new(),
            replica: s as usize % replicas,
            next_index: 0,
            in_flight: None,
            stopped: false,
        });
        workload::schedule_next(&mut world, s);
    }
    let timed = network.loss_ppm == 0;
    let end = Time::ZERO + config.duration;
    let faults_end = plan_faults(&mut world, &mut rng, end, timed);
    world.schedule_action(faults_end, Action::Heal);
    for r in 0..replicas {
        world.schedule_action(faults_end, Action::Restart(r));
    }
    let stop = faults_end + Duration::from_secs(5);
    world.schedule_action(stop, Action::StopSessions);
    world.run_until(stop + world::CLIENT_TIMEOUT);
    let converged = settle(&mut world, end.max(stop + Duration::from_secs(20)));
    let wrong_winners = wrong_winners(&world);
    let final_state = final_state(&world);
    let violations = check(
        &crate::tools::check::history::History::new(world.history.clone()),
        &final_state,
    );
    if verbose {
        for v in &violations {
            println!("{}: {}", v.kind.name(), v.explanation);
            for op in &v.ops {
                println!("  {op}");
            }
            if let Some(op) = v.ops.first() {
                for line in world.explain_key(&op.key) {
                    println!("  {line}");
                }
            }
        }
    }
    let trace = world
        .trace
        .iter()
        .skip(1)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    Outcome {
        seed: config.seed,
        replicas,
        durable,
        ops: world.history.len(),
        violations,
        timing: world.timing.clone(),
        converged,
        wrong_winners,
        trace,
    }
}

fn pick_network(rng: &mut SplitMix64) -> Network {
    let lossy = rng.below(2) == 0;
    Network {
        min_latency: Duration::from_micros(100 + rng.below(900) as u64),
        jitter: Duration::from_micros(rng.below(5_000) as u64),
        loss_ppm: if lossy {
            [1_000, 5_000, 20_000][rng.below(3)]
        } else {
            0
        },
        dup_ppm: [0, 5_000, 20_000][rng.below(3)],
    }
}

/// Schedules fault episodes from 5 s until about 30 s before `end`; returns when the last
/// one is over. `timed` adds the contract's timing checks.
fn plan_faults(world: &mut World, rng: &mut SplitMix64, end: Time, timed: bool) -> Time {
    let n = world.replicas();
    let last = end.since_origin().saturating_sub(Duration::from_secs(40));
    let mut t = Duration::from_secs(5);
    let secs = |rng: &mut SplitMix64, lo: u64, hi: u64| {
        Duration::from_millis(lo * 1000 + rng.below(((hi - lo) * 1000) as usize) as u64)
    };
    while t < last {
        let at = Time::ZERO + t;
        let r = rng.below(n);
        let length = match rng.below(6) {
            0 | 1 => {
                let down = secs(rng, 1, 15);
                let check = timed && down > Duration::from_secs(5);
                world.schedule_action(at, Action::Crash(r, check));
                world.schedule_action(at + down, Action::Restart(r));
                if timed {
                    let back = Action::ExpectBack(r, Duration::from_secs(5));
                    world.schedule_action(at + down, back);
                }
                down
            }
            2 => {
                // A restart during catch-up: down again right after it came back.
                let down = secs(rng, 1, 4);
                let again = Duration::from_millis(rng.below(800) as u64);
                world.schedule_action(at, Action::Crash(r, false));
                world.schedule_action(at + down, Action::Restart(r));
                world.schedule_action(at + down + again, Action::Crash(r, false));
                world.schedule_action(at + down + again + down, Action::Restart(r));
                down + again + down
            }
            3 => {
                let cut = secs(rng, 1, 15);
                let side = minority(rng, n);
                world.schedule_action(at, Action::Isolate(side.clone()));
                world.schedule_action(at + cut, Action::Heal);
                if timed && cut > Duration::from_secs(3) {
                    for &r in &side {
                        let soon = at + cut + Duration::from_secs(1);
                        let check = Action::CheckStillOut(r, side.clone());
                        world.schedule_action(soon, check);
                    }
                }
                if timed {
                    for &r in &side {
                        let back = Action::ExpectBack(r, Duration::from_secs(5));
                        world.schedule_action(at + cut, back);
                    }
                }
                cut
            }
            4 => {
                // One-way cut, or a link that flaps.
                let to = (r + 1 + rng.below(n - 1)) % n;
                if rng.below(2) == 0 {
                    let cut = secs(rng, 1, 10);
                    world.schedule_action(at, Action::CutOneWay(r, to));
                    world.schedule_action(at + cut, Action::Heal);
                    cut
                } else {
                    let mut flap = Duration::ZERO;
                    for _ in 0..(2 + rng.below(6)) {
                        world.schedule_action(at + flap, Action::Isolate(vec![r]));
                        flap += Duration::from_millis(200 + rng.below(1300) as u64);
                        world.schedule_action(at + flap, Action::Heal);
                        flap += Duration::from_millis(200 + rng.below(1300) as u64);
                    }
                    flap
                }
            }
            5 if world.durable => {
                let down = secs(rng, 1, 10);
                let crash = match rng.below(2) {
                    0 => Action::CrashAll,
                    _ => Action::CrashAllAfterAck,
                };
                world.schedule_action(at, crash);
                for r in 0..n {
                    world.schedule_action(at + down, Action::Restart(r));
                }
                down
            }
            _ => {
                let by = (rng.below(4_000_001) as i64 - 2_000_000)
                    * if rng.below(2) == 0 { 1 } else { -1 };
                world.schedule_action(at, Action::JumpClock(r, by));
                Duration::ZERO
            }
        };
        t += length + secs(rng, 6, 12);
    }
    Time::ZERO + t.min(last + Duration::from_secs(15))
}

/// One to half (rounded down) of the replicas, picked at random.
fn minority(rng: &mut SplitMix64, n: usize) -> Vec<usize> {
    let size = 1 + rng.below((n / 2).max(1));
    let mut all: Vec<usize> = (0..n).collect();
    let mut side = Vec::new();
    for _ in 0..size {
        side.push(all.remove(rng.below(all.len())));
    }
    side.sort_unstable();
    side
}

/// Carries out a planned action.
pub fn act(world: &mut World, action: Action) {
    if action.is_fault() {
        world.disturbed = world.now;
    }
    match action {
        Action::Crash(r, check) => crash(world, r, check, world.now),
        Action::CrashWaiting(r, check, since) => crash(world, r, check, since),
        Action::CrashAll => {
            world.note("power loss everywhere".into());
            for r in 0..world.replicas() {
                world.power_loss(r);
            }
        }
        Action::CrashAllAfterAck => world.crash_after_ack = true,
        Action::Restart(r) => {
            if !world.is_up(r) {
                world.note(format!("restart r{r}"));
                world.start(r);
            }
        }
        Action::Isolate(side) => {
            world.note(format!("isolate {side:?}"));
            for &a in &side {
                for b in (0..world.replicas()).filter(|b| !side.contains(b)) {
                    world.cut.insert((a, b));
                    world.cut.insert((b, a));
                }
            }
        }
        Action::CutOneWay(from, to) => {
            world.note(format!("cut r{from}->r{to}"));
            world.cut.insert((from, to));
        }
        Action::Heal => {
            if !world.cut.is_empty() {
                world.note("heal".into());
                world.cut.clear();
            }
        }
        Action::JumpClock(r, by) => {
            world.note(format!("clock r{r} {:+}ms", by / 1000));
            world.jump_clock(r, by);
        }
        Action::CheckGone(r) => check_gone(world, r),
        Action::CheckStillOut(r, side) => check_still_out(world, r, &side),
        Action::ExpectBack(r, after) => {
            let clocks = (0..world.replicas())
                .filter(|&o| o != r)
                .filter_map(|o| world.machine(o).map(|m| m.replica().clock().clone()))
                .collect();
            world.schedule_action(world.now + after, Action::CheckBack(r, clocks));
        }
        Action::CheckBack(r, clocks) => check_back(world, r, &clocks),
        Action::StopSessions => {
            world.note("sessions stop".into());
            for s in &mut world.sessions {
                s.stopped = true;
            }
        }
    }
}

/// `r` was cut off with `side`: no replica on the other side lists it yet.
fn check_still_out(world: &mut World, r: usize, side: &[usize]) {
    let addr = world.addr(r).clone();
    for o in (0..world.replicas()).filter(|o| !side.contains(o)) {
        if world.machine(o).is_some_and(|m| m.members().in_view(&addr)) {
            let rule = format!(
                "r{r} is back in r{o}'s view 1 s after reconnecting, before the stability period"
            );
            world.note(format!("TIMING: {rule}"));
            world.timing.push(rule);
        }
    }
}

/// Crashes `r` once every write it applied is applied at another live replica.
fn crash(world: &mut World, r: usize, check: bool, since: Time) {
    if !world.is_up(r) {
        return;
    }
    if world.durable {
        // A durable replica keeps what it synced: it may crash at any moment, as a
        // process (the OS keeps what it was handed) or with the power (it does not).
        if world.rng.below(2) == 0 {
            world.note(format!("crash r{r}"));
            world.crash(r);
        } else {
            world.note(format!("power loss r{r}"));
            world.power_loss(r);
        }
    } else if world.held_elsewhere(r) {
        world.note(format!("crash r{r}"));
        world.crash(r);
    } else {
        if world.now.duration_since(since) < CRASH_PATIENCE {
            let retry = world.now + Duration::from_millis(200);
            world.schedule_action(retry, Action::CrashWaiting(r, check, since));
        } else {
            world.note(format!("crash of r{r} skipped: it alone holds some writes"));
        }
        return;
    }
    if check {
        let at = world.now + Duration::from_secs(5);
        world.schedule_action(at, Action::CheckGone(r));
    }
}

/// How long a planned crash waits for the replica's writes to be applied elsewhere.
const CRASH_PATIENCE: Duration = Duration::from_secs(30);

fn check_gone(world: &mut World, r: usize) {
    if world.is_up(r) {
        return;
    }
    let addr = world.addr(r).clone();
    for o in 0..world.replicas() {
        let listed = world.machine(o).is_some_and(|m| m.members().in_view(&addr));
        if listed {
            let rule = format!("r{r} crashed 5 s ago and is still in r{o}'s view");
            world.note(format!("TIMING: {rule}"));
            world.timing.push(rule);
        }
    }
}

fn check_back(world: &mut World, r: usize, clocks: &[Clock]) {
    let Some(machine) = world.machine(r) else {
        return;
    };
    let addr = world.addr(r).clone();
    let mut broken = Vec::new();
    if !clocks
        .iter()
        .all(|c| machine.replica().clock().covers_clock(c))
    {
        broken.push(format!("r{r} is not caught up 5 s after it came back"));
    }
    for o in (0..world.replicas()).filter(|&o| o != r) {
        if world
            .machine(o)
            .is_some_and(|m| !m.members().in_view(&addr))
        {
            broken.push(format!("r{r} is not in r{o}'s view 5 s after it came back"));
        }
    }
    for rule in broken {
        world.note(format!("TIMING: {rule}"));
        world.timing.push(rule);
    }
}

/// Runs until every replica holds the same store, checking each second, or until
/// `deadline`; returns whether they agreed.
fn settle(world: &mut World, deadline: Time) -> bool {
    loop {
        if final_state(world).agrees() {
            return true;
        }
        if world.now >= deadline {
            world.note("replicas still disagree at the end".into());
            return false;
        }
        let next = world.now + Duration::from_secs(1);
        world.run_until(next);
    }
}

/// Keys where a replica holds a write older (by the version that decides between
/// concurrent writes) than an acknowledged write of the key: a write that lost came back,
/// for instance after the tombstone that beat it was collected too early. (A key that holds
/// nothing is not judged: a newer, unacknowledged delete may have won and been collected.)
fn wrong_winners(world: &World) -> Vec<String> {
    let mut wrong = Vec::new();
    for (key, (version, op)) in &world.acknowledged {
        for r in 0..world.replicas() {
            match world.version_directly(r, key) {
                Some(held) if held < *version => wrong.push(format!(
                    "r{r} holds {key} at version {held:?}, older than {op} at {version:?}"
                )),
                _ => {}
            }
        }
    }
    wrong
}

/// Every replica's value of every key the history touched, read from its state.
fn final_state(world: &World) -> FinalState {
    let mut keys: Vec<&str> = world.history.iter().map(|op| op.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut reads = BTreeMap::new();
    for r in 0..world.replicas() {
        let store = keys
            .iter()
            .map(|key| {
                let read = match world.read_directly(r, key) {
                    Some(Some(value)) => FinalRead::Value(value),
                    Some(None) => FinalRead::Absent,
                    None => FinalRead::Failed("replica down".into()),
                };
                (key.to_string(), read)
            })
            .collect();
        reads.insert(world.addr(r).to_string(), store);
    }
    FinalState {
        reads,
        converged_after: None,
        rounds: 1,
    }
}

/// `causalkv simulate` options.
#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// How many seeds to run (from --first-seed on).
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// Run only this seed (replays a failure exactly).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The first seed of a run of --seeds.
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Replicas per cluster [default: 3 to 5, picked by each seed].
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=9))]
    pub replicas: Option<u64>,
    /// Simulated time per seed.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Every replica keeps a journal on a simulated disk [default: each seed picks
    /// durable or in-memory replicas].
    #[arg(long)]
    pub durable: bool,
    /// Threads running seeds [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print every event of the run (with --seed).
    #[arg(long)]
    pub verbose: bool,
}

/// Runs the seeds; prints one line per failure and a summary. Returns whether all passed.
pub fn command(args: &SimulateArgs) -> bool {
    let started = Instant::now();
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first_seed..args.first_seed.saturating_add(args.seeds)).collect(),
    };
    let replicas = args.replicas.map(|r| r as usize);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, seeds.len().max(1));
    let verbose = args.verbose && args.seed.is_some();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    let mut config = SimConfig::new(seed, replicas, args.duration);
                    config.durable = args.durable.then_some(true);
                    let outcome = run(&config, verbose);
                    if !outcome.passed() {
                        println!("FAIL {}", outcome.summary());
                    }
                    if let Ok(mut results) = results.lock() {
                        results.push((outcome.passed(), outcome.ops));
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    let failed = results.iter().filter(|(ok, _)| !ok).count();
    let ops: usize = results.iter().map(|(_, ops)| ops).sum();
    println!(
        "simulate: {} seeds of {} simulated, {} passed, {failed} failed, {ops} client operations checked, {:.1} s",
        results.len(),
        humantime::format_duration(args.duration),
        results.len() - failed,
        started.elapsed().as_secs_f64()
    );
    failed == 0
}

#[cfg(test)]
mod tests;
