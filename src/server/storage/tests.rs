//! Tests of the data directory: recovery of what was reported durable, on the real file
//! system and, property-tested, on a disk in memory crashed at any operation (as a
//! process or by a power loss), with write failures and snapshots cut short; and the
//! order of writes, syncs and durable reports.

use std::collections::BTreeSet;
use std::fs;
use std::sync::mpsc;

use proptest::prelude::*;

use super::disk::{Crash, Event, MemDisk};
use super::*;
use crate::protocol::causal::{Clock, Incarnation};
use crate::protocol::store::tests::entry;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("causalkv-storage-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn applied(i: u64) -> Record {
    Record::Applied {
        key: format!("k{i}").into(),
        entry: entry(Some("1"), i, "10.0.0.1:1", i),
        advance: true,
    }
}

/// Everything a data directory held.
#[derive(Debug)]
struct Whole {
    records: Vec<Record>,
    generation: u64,
    torn_bytes: usize,
}

fn recover_on<D: Disk>(disk: &D, dir: &Path) -> Result<Whole, StorageError> {
    let mut recovery = Recovery::open(disk, dir)?;
    let records: Vec<Record> = recovery.by_ref().collect();
    let recovered = recovery.finish()?;
    assert_eq!(recovered.records, records.len());
    Ok(Whole {
        records,
        generation: recovered.generation,
        torn_bytes: recovered.torn_bytes,
    })
}

fn recover(dir: &Path) -> Result<Whole, StorageError> {
    recover_on(&RealDisk, dir)
}

/// Waits (with a deadline) until `done`.
fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_durable(rx: &mpsc::Receiver<Report>, upto: Seq) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Report::Durable { upto: u, .. }) = rx.recv_timeout(Duration::from_millis(100))
            && u >= upto
        {
            return;
        }
    }
    panic!("records up to {upto} never became durable");
}

/// A journal driven as the node drives it: each append is followed by
/// `Journal::write_queued`, whose report goes where the thread's go.
struct Driven<D: Disk> {
    journal: Journal<D>,
    report: Arc<dyn Fn(Report) + Send + Sync>,
}

impl<D: Disk> Driven<D> {
    fn start(
        disk: D,
        dir: &Path,
        generation: u64,
        policy: Policy,
        report: impl Fn(Report) + Send + Sync + 'static,
    ) -> Driven<D> {
        let report: Arc<dyn Fn(Report) + Send + Sync> = Arc::new(report);
        let thread = report.clone();
        let journal = start_on(disk, dir.to_path_buf(), generation, policy, move |r| {
            thread(r)
        })
        .expect("the writer starts");
        Driven { journal, report }
    }

    fn append(&self, upto: Seq, records: Vec<Record>) {
        self.journal.append(upto, records);
        if let Some(report) = self.journal.write_queued() {
            (self.report)(report);
        }
    }
}

impl<D: Disk> std::ops::Deref for Driven<D> {
    type Target = Journal<D>;

    fn deref(&self) -> &Journal<D> {
        &self.journal
    }
}

fn start_real(
    dir: &Path,
    generation: u64,
    fsync: Fsync,
) -> (Driven<RealDisk>, mpsc::Receiver<Report>) {
    let (tx, rx) = mpsc::channel();
    let policy = Policy::new(fsync, Duration::from_millis(5));
    let journal = Driven::start(RealDisk, dir, generation, policy, move |r| {
        let _ = tx.send(r);
    });
    (journal, rx)
}

#[test]
fn what_was_reported_durable_is_recovered_and_a_torn_tail_is_cut() {
    let dir = dir("recover");
    let first = recover(&dir).unwrap();
    assert_eq!((first.records.len(), first.generation), (0, 0));
    let (journal, rx) = start_real(&dir, 0, Fsync::Always);
    journal.append(2, vec![applied(1), applied(2)]);
    let incarnation = Incarnation::new("10.0.0.1:1", 7);
    journal.append(3, vec![Record::Started { incarnation }]);
    wait_durable(&rx, 3);
    drop(journal);
    // A crash in the middle of the next append.
    let path = journal_path(&dir, 0);
    let mut torn = Vec::new();
    frame::encode(&applied(4), &mut torn);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    fs::write(&path, &bytes).unwrap();
    let back = recover(&dir).unwrap();
    assert_eq!(back.generation, 0);
    assert_eq!(back.records.len(), 3);
    assert_eq!(back.torn_bytes, torn.len() / 2);
    let cut = fs::read(&path).unwrap();
    assert_eq!(
        frame::decode(&cut).2,
        frame::End::Clean,
        "the torn tail is cut"
    );
    // A restart appends after the cut.
    let (journal, rx) = start_real(&dir, back.generation, Fsync::Always);
    journal.append(4, vec![applied(4)]);
    wait_durable(&rx, 4);
    drop(journal);
    assert_eq!(recover(&dir).unwrap().records.len(), 4);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_snapshot_replaces_the_older_generations_and_corruption_is_named() {
    let dir = dir("snapshot");
    let (journal, rx) = start_real(&dir, 0, Fsync::Interval);
    journal.append(1, vec![applied(1)]);
    wait_durable(&rx, 1);
    let clock = Clock::new();
    journal.begin_snapshot(vec![Record::ClockMerged { clock }]);
    journal.append(2, vec![applied(2)]);
    journal.snapshot_chunk(vec![applied(1)]);
    journal.end_snapshot();
    wait_durable(&rx, 2);
    poll("the old generation is removed", || {
        !journal_path(&dir, 0).exists()
    });
    drop(journal);
    let back = recover(&dir).unwrap();
    assert_eq!(back.generation, 1);
    assert_eq!(back.records.len(), 3, "snapshot (2) + journal (1)");
    // Damage in the middle of the journal is not a torn tail.
    let path = journal_path(&dir, 1);
    let mut bytes = fs::read(&path).unwrap();
    frame::encode(&applied(3), &mut bytes);
    bytes[frame::HEADER + 1] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let error = recover(&dir).unwrap_err().to_string();
    assert!(
        error.contains("journal-1.log") && error.contains("byte 0"),
        "{error}"
    );
    assert!(error.contains("Move the directory away"), "{error}");
    let _ = fs::remove_dir_all(&dir);
}

/// The test's records: `Retired` records that carry a number, so that a recovered
/// sequence can be compared with what was appended.
fn numbered(i: u64) -> Record {
    Record::Retired {
        addr: format!("r{i}").into(),
        floor: i,
    }
}

/// A snapshot's head, marked so that the check can tell it from the numbered records.
fn head() -> Record {
    Record::Retired {
        addr: "head".into(),
        floor: 0,
    }
}

/// The numbers of recovered records: at most one snapshot head, first, then numbered
/// records only.
fn numbers(records: &[Record]) -> Result<Vec<u64>, String> {
    let mut numbers = Vec::new();
    for (i, record) in records.iter().enumerate() {
        match record {
            Record::Retired { addr, .. } if &**addr == "head" && i == 0 => {}
            Record::Retired { addr, floor } if addr.starts_with('r') => numbers.push(*floor),
            other => return Err(format!("record {i} is not the test's: {other:?}")),
        }
    }
    Ok(numbers)
}

#[derive(Clone, Debug)]
enum Step {
    /// Appends a batch of this many records.
    Append(usize),
    /// Takes a snapshot of everything appended so far, in this many chunks (fewer than
    /// `QUEUED_CHUNKS`, so that sending them never waits), ended or not (the next begin
    /// abandons it).
    Snapshot { chunks: usize, end: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1usize..4).prop_map(Step::Append),
        1 => (1usize..QUEUED_CHUNKS, any::<bool>())
            .prop_map(|(chunks, end)| Step::Snapshot { chunks, end }),
    ]
}

fn fsync() -> impl Strategy<Value = Fsync> {
    prop_oneof![
        Just(Fsync::Always),
        Just(Fsync::Interval),
        Just(Fsync::Never)
    ]
}

fn crash() -> impl Strategy<Value = Crash> {
    prop_oneof![
        Just(Crash::Process),
        any::<u64>().prop_map(Crash::PowerLoss)
    ]
}

/// One life of a replica on `disk`, whose records so far are `sequence`: runs `steps`
/// with failures at `fail_at` and a crash at operation `crash_at` (or after the steps);
/// gives the highest position reported durable before the crash.
fn life(
    disk: &MemDisk,
    generation: u64,
    fsync: Fsync,
    sequence: &mut Vec<u64>,
    plan: &Life,
) -> Seq {
    let dir = Path::new("/data");
    let policy = Policy {
        fsync,
        interval: Duration::from_millis(1),
        retry: Duration::ZERO,
    };
    let reporter = disk.clone();
    let journal = Driven::start(disk.clone(), dir, generation, policy, move |r| {
        if let Report::Durable { upto, .. } = r {
            reporter.report(upto);
        }
    });
    disk.fail_at(plan.fail_at.iter().copied());
    disk.crash_at(plan.crash_at);
    let next = |sequence: &Vec<u64>| sequence.iter().max().map_or(0, |n| n + 1);
    for step in &plan.steps {
        if disk.crashed() {
            break;
        }
        match *step {
            Step::Append(n) => {
                let first = next(sequence);
                let batch: Vec<u64> = (first..first + n as u64).collect();
                sequence.extend(&batch);
                journal.append(
                    sequence.len() as Seq,
                    batch.into_iter().map(numbered).collect(),
                );
            }
            Step::Snapshot { chunks, end } => {
                poll("the writer takes the last snapshot's chunks", || {
                    disk.crashed() || *journal.shared.chunks.queued.lock().unwrap() == 0
                });
                if disk.crashed() {
                    break;
                }
                journal.begin_snapshot(vec![head()]);
                let size = sequence.len().div_ceil(chunks).max(1);
                for chunk in sequence.chunks(size) {
                    journal.snapshot_chunk(chunk.iter().copied().map(numbered).collect());
                }
                if end {
                    journal.end_snapshot();
                }
            }
        }
    }
    // What this life appended (nothing to wait for when it appended nothing).
    let total = match plan.steps.iter().any(|s| matches!(s, Step::Append(_))) {
        true => sequence.len() as Seq,
        false => 0,
    };
    let durable = |disk: &MemDisk| {
        (disk.events().iter())
            .filter_map(|e| match e {
                Event::Durable { upto } => Some(*upto),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    poll("everything is durable, or the disk crashed", || {
        disk.crashed() || durable(disk) >= total
    });
    disk.crash_now();
    drop(journal);
    durable(disk)
}

#[derive(Clone, Debug)]
struct Life {
    steps: Vec<Step>,
    fail_at: Vec<u64>,
    crash_at: u64,
    crash: Crash,
}

fn a_life() -> impl Strategy<Value = Life> {
    (
        prop::collection::vec(step(), 0..16),
        prop::collection::vec(1u64..60, 0..3),
        1u64..80,
        crash(),
    )
        .prop_map(|(steps, fail_at, crash_at, crash)| Life {
            steps,
            fail_at,
            crash_at,
            crash,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Two lives of a replica on a disk that fails writes and crashes at any operation
    /// (mid-append, mid-snapshot, mid-rename): each recovery gives a snapshot plus what
    /// was appended after it, in order, never anything not appended (the recovered
    /// sequence is a prefix of what was appended), and at least every record reported
    /// durable, when the policy promises it for that crash.
    #[test]
    fn recovery_gives_every_durable_record_and_only_a_prefix_of_what_was_appended(
        fsync in fsync(),
        lives in prop::collection::vec(a_life(), 1..3),
    ) {
        let dir = Path::new("/data");
        let mut disk = MemDisk::default();
        let mut recovered = recover_on(&disk, dir).expect("an empty disk recovers");
        let mut sequence: Vec<u64> = Vec::new();
        for plan in &lives {
            let before = sequence.len() as Seq;
            let durable = life(&disk, recovered.generation, fsync, &mut sequence, plan);
            disk = disk.after(plan.crash);
            recovered = recover_on(&disk, dir).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = numbers(&recovered.records).map_err(TestCaseError::fail)?;
            prop_assert!(
                sequence.starts_with(&got),
                "recovered {got:?}, not a prefix of the appended {sequence:?}"
            );
            let promised = match (fsync, plan.crash) {
                (Fsync::Always, _) | (_, Crash::Process) => durable.max(before),
                (_, Crash::PowerLoss(_)) => 0,
            };
            prop_assert!(
                got.len() as Seq >= promised,
                "recovered {} records, {promised} were promised ({got:?} of {sequence:?})",
                got.len()
            );
            sequence = got;
        }
    }
}

/// The first durable report that comes before the sync of a journal's bytes or of a new
/// journal's name (replaying the disk's events in order), if any.
fn report_before_sync(events: &[Event]) -> Option<String> {
    let journal = |path: &PathBuf| path.extension().is_some_and(|e| e == "log");
    let mut unsynced = BTreeSet::new();
    let mut unnamed = BTreeSet::new();
    for (i, event) in events.iter().enumerate() {
        match event {
            Event::Write { path } if journal(path) => {
                unsynced.insert(path.clone());
            }
            Event::Sync { path } => {
                unsynced.remove(path);
            }
            Event::Name { path, linked: true } if journal(path) => {
                unnamed.insert(path.clone());
            }
            Event::SyncDir => unnamed.clear(),
            Event::Durable { upto } if !unsynced.is_empty() || !unnamed.is_empty() => {
                return Some(format!(
                    "event {i}: records up to {upto} reported durable before the sync of \
                     {unsynced:?} (bytes) / {unnamed:?} (names)"
                ));
            }
            _ => {}
        }
    }
    None
}

/// The events of appends, a snapshot in the middle, and more appends, with `fsync`.
fn events_of_a_run(fsync: Fsync) -> Vec<Event> {
    let disk = MemDisk::default();
    let reporter = disk.clone();
    let policy = Policy::new(fsync, Duration::from_secs(3600));
    let journal = Driven::start(disk.clone(), Path::new("/data"), 0, policy, move |r| {
        if let Report::Durable { upto, .. } = r {
            reporter.report(upto);
        }
    });
    for i in 1..=40 {
        journal.append(i, vec![numbered(i)]);
        if i == 20 {
            journal.begin_snapshot(vec![head()]);
            journal.snapshot_chunk((1..=20).map(numbered).collect());
            journal.end_snapshot();
        }
    }
    poll("every record is reported durable", || {
        disk.events().contains(&Event::Durable { upto: 40 })
    });
    drop(journal);
    disk.events()
}

#[test]
fn with_fsync_always_no_durable_report_precedes_the_sync_that_covers_it() {
    let events = events_of_a_run(Fsync::Always);
    assert!(events.contains(&Event::SyncDir), "{events:?}");
    assert_eq!(report_before_sync(&events), None, "{events:?}");
    // The check is not vacuous: without syncing, reports come first.
    let unsynced = events_of_a_run(Fsync::Never);
    assert!(report_before_sync(&unsynced).is_some(), "{unsynced:?}");
}

/// A replica that made `keys` writes of 32-byte values, and its journal's records.
fn loaded_replica(keys: u64) -> (crate::protocol::replica::Replica, Vec<Record>) {
    use crate::protocol::causal::Limits;
    use crate::protocol::store::value_from_json;
    let mut replica = crate::protocol::replica::Replica::with_journal("10.0.0.1:1".into(), 16, []);
    replica.start_incarnation(1);
    let limits = Limits::at(crate::server::wallclock::now_micros());
    let mut records = Vec::new();
    for i in 0..keys {
        let value = value_from_json(&format!("\"{i:030}\"")).unwrap();
        let key = format!("key-{i:08}").into();
        let _ = replica.write(key, value, &Clock::new(), &limits);
        if i % 4096 == 0 {
            records.append(&mut replica.take_journal());
        }
    }
    records.append(&mut replica.take_journal());
    (replica, records)
}

/// Measures the recovery of a directory holding 1M keys of 32-byte values (run in
/// release: `cargo nextest run --release --run-ignored only measure_ --no-capture`):
/// reading, decoding (frames and JSON) and replaying, first from a journal, then from a
/// snapshot; and how long each hold of the lock takes for a snapshot in pieces.
#[test]
#[ignore]
fn measure_recovery_of_a_million_keys() {
    let dir = dir("measure-recovery");
    let (replica, records) = loaded_replica(1_000_000);
    let (journal, rx) = start_real(&dir, 0, Fsync::Never);
    let n = records.len() as Seq;
    journal.append(n, records);
    wait_durable(&rx, n);
    time_recovery("journal", &journal_path(&dir, 0));
    // The snapshot in pieces, timed per hold (of the replica, as under the node's lock).
    let began = Instant::now();
    journal.begin_snapshot(replica.snapshot_head());
    let mut holds = Vec::new();
    let mut after = None;
    loop {
        let taken = Instant::now();
        let (records, next) = replica.snapshot_chunk(after.as_deref(), 256 * 1024);
        holds.push(taken.elapsed());
        journal.snapshot_chunk(records);
        match next {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    journal.end_snapshot();
    poll("the snapshot replaces the journal", || {
        !journal_path(&dir, 0).exists()
    });
    holds.sort();
    eprintln!(
        "snapshot of 1M keys: {:?} in {} pieces; hold median {:?}, p99 {:?}, max {:?}",
        began.elapsed(),
        holds.len(),
        holds[holds.len() / 2],
        holds[holds.len() * 99 / 100],
        holds[holds.len() - 1]
    );
    drop(journal);
    time_recovery("snapshot", &snapshot_path(&dir, 1));
    let whole = Instant::now();
    let back = recover(&dir).unwrap();
    let replayed =
        crate::protocol::replica::Replica::with_journal("10.0.0.1:1".into(), 16, back.records);
    eprintln!(
        "recover + replay, end to end: {:?} ({} keys)",
        whole.elapsed(),
        replayed.store().live_keys()
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Times reading, decoding and replaying one file of records.
fn time_recovery(what: &str, path: &Path) {
    let t = Instant::now();
    let bytes = fs::read(path).unwrap();
    let read = t.elapsed();
    let t = Instant::now();
    let (records, _, _) = frame::decode(&bytes);
    let decode = t.elapsed();
    let t = Instant::now();
    let n = records.len();
    let replica = crate::protocol::replica::Replica::with_journal("10.0.0.1:1".into(), 16, records);
    let replay = t.elapsed();
    eprintln!(
        "{what}: {} MB, {n} records: read {read:?}, decode {decode:?}, replay {replay:?} ({} keys)",
        bytes.len() / 1_000_000,
        replica.store().live_keys()
    );
}

/// Measures the disk under churn: 10M puts and deletes over 10k keys, compacting as the
/// node does (`wants_compaction`); reports the largest directory seen and the live data.
#[test]
#[ignore]
fn measure_disk_under_churn() {
    use crate::protocol::causal::Limits;
    use crate::protocol::store::value_from_json;
    let dir = dir("measure-churn");
    let (journal, rx) = start_real(&dir, 0, Fsync::Never);
    let mut replica = crate::protocol::replica::Replica::with_journal("10.0.0.1:1".into(), 16, []);
    replica.start_incarnation(1);
    let limits = Limits::at(crate::server::wallclock::now_micros());
    let dir_bytes = || -> u64 {
        (fs::read_dir(&dir).unwrap())
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let (mut peak, mut snapshots, mut seq, mut durable) = (0, 0, 0, 0);
    let mut snapshot_bytes = 0;
    let writes: u64 = (std::env::var("CHURN_WRITES").ok())
        .and_then(|w| w.parse().ok())
        .unwrap_or(10_000_000);
    for i in 0..writes {
        let key: crate::protocol::store::Key = format!("key-{:05}", i % 10_000).into();
        let value = (i % 3 != 0)
            .then(|| value_from_json(&format!("\"{i:030}\"")).unwrap())
            .flatten();
        replica.write(key, value, &Clock::new(), &limits).unwrap();
        if i % 1000 == 999 {
            let records = replica.take_journal();
            seq += records.len() as Seq;
            journal.append(seq, records);
            // As under the node, writers wait for the disk: at most 10 batches ahead.
            let mut journal_bytes = 0;
            loop {
                let report = match durable + 10_000 < seq {
                    true => rx.recv_timeout(Duration::from_secs(10)).ok(),
                    false => rx.try_recv().ok(),
                };
                match report {
                    Some(Report::Durable {
                        upto,
                        journal_bytes: b,
                        snapshot_bytes: s,
                    }) => {
                        (durable, journal_bytes, snapshot_bytes) = (upto, b, s);
                    }
                    Some(Report::Failed(error)) => panic!("{error}"),
                    None => break,
                }
            }
            if wants_compaction(journal_bytes, snapshot_bytes)
                && *journal.shared.chunks.queued.lock().unwrap() == 0
            {
                snapshots += 1;
                journal.begin_snapshot(replica.snapshot_head());
                let mut after = None;
                loop {
                    let (records, next) = replica.snapshot_chunk(after.as_deref(), 256 * 1024);
                    journal.snapshot_chunk(records);
                    match next {
                        Some(key) => after = Some(key),
                        None => break,
                    }
                }
                journal.end_snapshot();
            }
            if i % 100_000 == 99_999 {
                peak = peak.max(dir_bytes());
            }
        }
    }
    if durable < seq {
        wait_durable(&rx, seq);
    }
    let end = dir_bytes();
    for entry in fs::read_dir(&dir).unwrap().flatten() {
        let bytes = entry.metadata().map_or(0, |m| m.len());
        eprintln!("  {:?}: {bytes} bytes", entry.file_name());
    }
    eprintln!(
        "churn: {writes} writes over 10k keys: {snapshots} snapshots; directory at the end {} KB, \
         largest seen {} KB; store {} KB ({} live keys)",
        end / 1000,
        peak.max(end) / 1000,
        replica.store().bytes() / 1000,
        replica.store().live_keys()
    );
    drop(journal);
    let _ = fs::remove_dir_all(&dir);
}

/// Measures the recovery of a journal of 1 GiB of 64 KiB values (run in release, like
/// `measure_recovery_of_a_million_keys`).
#[test]
#[ignore]
fn measure_recovery_of_a_gibibyte_of_large_values() {
    use crate::protocol::causal::Limits;
    use crate::protocol::store::value_from_json;
    let dir = dir("measure-large");
    let mut replica = crate::protocol::replica::Replica::with_journal("10.0.0.1:1".into(), 16, []);
    replica.start_incarnation(1);
    let limits = Limits::at(crate::server::wallclock::now_micros());
    let (journal, rx) = start_real(&dir, 0, Fsync::Never);
    let text = format!("\"{}\"", "x".repeat(64 * 1024 - 2));
    let mut seq = 0;
    for i in 0..16_384u64 {
        let value = value_from_json(&text).unwrap();
        let key = format!("key-{i:08}").into();
        replica.write(key, value, &Clock::new(), &limits).unwrap();
        let records = replica.take_journal();
        seq += records.len() as Seq;
        journal.append(seq, records);
    }
    wait_durable(&rx, seq);
    drop(journal);
    time_recovery("journal of 16k × 64 KiB", &journal_path(&dir, 0));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn with_interval_the_caller_writes_its_appends_and_with_always_the_thread_does() {
    for (fsync, inline) in [
        (Fsync::Interval, true),
        (Fsync::Never, true),
        (Fsync::Always, false),
    ] {
        let disk = MemDisk::default();
        let policy = Policy::new(fsync, Duration::from_secs(3600));
        let journal = start_on(disk, "/data".into(), 0, policy, |_| {}).unwrap();
        journal.append(1, vec![numbered(1)]);
        let report = journal.write_queued();
        assert_eq!(
            matches!(report, Some(Report::Durable { upto: 1, .. })),
            inline,
            "{fsync:?}: {report:?}"
        );
    }
}
