//! The data directory (`--data-dir`): a replica's journal on disk, its recovery at
//! start-up, and the writer thread that makes records durable with group commit and
//! writes snapshots. File operations go through `disk::Disk` (the real file system, or
//! a disk in memory that tests crash).
//!
//! # Files
//!
//! * `journal-G.log`: records, appended in order. Generation G's journal starts where
//!   generation G-1's ends: the journals, in generation order, are one sequence.
//! * `snapshot-G.snap`: records that rebuild the state as of the start of `journal-G`,
//!   taken in pieces (`Replica::snapshot_head`, then `snapshot_chunk`s taken later, which
//!   is correct because `journal-G` is replayed after it). Written as
//!   `snapshot-G.snap.tmp` and renamed once whole and synced: a `.snap` is always whole.
//!
//! # The snapshot protocol
//!
//! 1. *Begin* (queued under the node's lock, with the head): the writer syncs the
//!    current journal, creates `journal-(G+1).log`, syncs the directory, and appends
//!    every later record there; it starts `snapshot-(G+1).snap.tmp` with the head.
//! 2. *Chunks* (each taken under one short hold of the lock) are appended to the `.tmp`.
//! 3. *End*: the writer syncs the `.tmp`, renames it to `snapshot-(G+1).snap`, syncs the
//!    directory, then removes every file of a generation below G+1.
//!
//! A failure at any step abandons the snapshot (its `.tmp` is removed); the journals
//! stay, so nothing is lost. A crash at any step leaves a directory that recovery reads
//! correctly: the newest `.snap` (or none: an empty state, generation 0), then every
//! journal of its generation and above, in order; `.tmp` files and older generations are
//! removed. Because the old journal is synced and the new one's name made durable before
//! anything is appended to it, the journals have no hole even after a power loss: a torn
//! tail (a crash in the middle of an append) can only end the *last* journal, and is cut
//! off there; a torn or damaged frame anywhere else stops the replica with an error
//! naming the file and the offset (see `frame`).
//!
//! At start-up nothing is rewritten: the writer appends to the last journal (its torn
//! tail cut), and the next compaction folds the recovered journals into a snapshot.
//!
//! # Durability
//!
//! The writer thread takes every append already queued (group commit), writes them with
//! one `write`, then, by `--fsync` policy: `always` syncs (`fdatasync`) before it reports
//! them durable; `interval` reports them once written (the OS has them) and syncs at most
//! every `--fsync-interval`; `never` leaves syncing to the OS. Under every policy a record
//! is reported only once the OS has it, so a write survives a crash of the process; with
//! `always` it also survives a power loss. A failed write is reported as an error, the
//! file is cut back to its last whole frame before the next attempt, and the batch is
//! retried.

pub mod codec;
pub mod disk;
pub mod frame;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::protocol::journal::{Record, Seq};
use disk::{Disk, RealDisk};

/// How often a failed write is retried.
const RETRY: Duration = Duration::from_secs(1);
/// The journal is compacted into a snapshot once it is larger than half the last
/// snapshot and than this floor.
pub const COMPACT_MIN_BYTES: u64 = 1024 * 1024;
/// How many snapshot chunks may wait for the writer before `Journal::snapshot_chunk`
/// blocks (so that a snapshot never sits in memory whole).
const QUEUED_CHUNKS: usize = 4;

/// True when a journal of `journal_bytes` should be compacted, after a snapshot of
/// `snapshot_bytes` (0 when this process has written none yet): the directory then stays
/// within about 1.5 times the last snapshot (plus the floor), that is within twice the
/// live data, whatever the churn. (Before the first snapshot of a life the floor decides,
/// so a restarted replica compacts once early.)
pub fn wants_compaction(journal_bytes: u64, snapshot_bytes: u64) -> bool {
    journal_bytes > COMPACT_MIN_BYTES.max(snapshot_bytes / 2)
}

/// When records are synced to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// Before a write is acknowledged (survives a power loss).
    Always,
    /// At most every `--fsync-interval` (a power loss may lose that much).
    Interval,
    /// When the OS chooses (a power loss may lose anything not yet flushed).
    Never,
}

/// Errors of the data directory.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is corrupt at byte {offset} ({why}); the replica cannot trust its data \
         directory. Move the directory away (or delete it) and restart: the replica then \
         copies the store from its peers"
    )]
    Corrupt {
        path: PathBuf,
        offset: usize,
        why: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot-{generation}.snap"))
}

fn snapshot_tmp_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot-{generation}.snap.tmp"))
}

fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation}.log"))
}

/// The files of a data directory, by kind and generation.
#[derive(Default)]
struct Listing {
    snapshots: Vec<u64>,
    journals: Vec<u64>,
    temporary: Vec<String>,
}

fn generation_of(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

fn list<D: Disk>(disk: &D, dir: &Path) -> Result<Listing, StorageError> {
    let mut listing = Listing::default();
    for name in disk.list(dir).map_err(io_error(dir))? {
        if name.ends_with(".tmp") {
            listing.temporary.push(name);
        } else if let Some(g) = generation_of(&name, "snapshot-", ".snap") {
            listing.snapshots.push(g);
        } else if let Some(g) = generation_of(&name, "journal-", ".log") {
            listing.journals.push(g);
        }
    }
    listing.journals.sort_unstable();
    Ok(listing)
}

/// What a data directory held.
#[derive(Debug)]
pub struct Recovered {
    pub records: Vec<Record>,
    /// The generation of the last journal (0 for an empty directory): appends go on there.
    pub generation: u64,
    /// Bytes of a torn tail that were cut off.
    pub torn_bytes: usize,
}

/// Reads the newest snapshot and every journal from its generation on, creating the
/// directory if needed; cuts a torn tail off the last journal; removes `.tmp` files and
/// older generations.
pub fn recover(dir: &Path) -> Result<Recovered, StorageError> {
    recover_on(&RealDisk, dir)
}

/// `recover` over `disk`.
pub fn recover_on<D: Disk>(disk: &D, dir: &Path) -> Result<Recovered, StorageError> {
    disk.create_dir_all(dir).map_err(io_error(dir))?;
    let listing = list(disk, dir)?;
    for name in &listing.temporary {
        let _ = disk.remove(&dir.join(name));
    }
    let base = listing.snapshots.iter().copied().max();
    let mut records = match base {
        Some(g) => read_snapshot(disk, &snapshot_path(dir, g))?,
        None => Vec::new(),
    };
    let base = base.unwrap_or(0);
    let journals: Vec<u64> = (listing.journals.iter().copied())
        .filter(|&g| g >= base)
        .collect();
    let mut contents = Vec::with_capacity(journals.len());
    for &g in &journals {
        let path = journal_path(dir, g);
        let bytes = disk.read(&path).map_err(io_error(&path))?;
        contents.push((path, bytes));
    }
    // Empty journals after the last one written add nothing (a snapshot that failed to
    // begin can leave one): a torn tail may end the last one with bytes.
    let last = (contents.iter())
        .rposition(|(_, bytes)| !bytes.is_empty())
        .unwrap_or(0);
    let mut torn_bytes = 0;
    for (i, (path, bytes)) in contents.into_iter().enumerate() {
        torn_bytes += read_journal(disk, &path, &bytes, i >= last, &mut records)?;
    }
    remove_below(disk, dir, &listing, base);
    Ok(Recovered {
        records,
        generation: journals.last().copied().unwrap_or(base),
        torn_bytes,
    })
}

fn read_snapshot<D: Disk>(disk: &D, path: &Path) -> Result<Vec<Record>, StorageError> {
    let bytes = disk.read(path).map_err(io_error(path))?;
    let (records, _, end) = frame::decode(&bytes);
    let (offset, why) = match end {
        frame::End::Clean => return Ok(records),
        frame::End::TornTail { offset } => (offset, "a snapshot ends early".into()),
        frame::End::Corrupt { offset, why } => (offset, why),
    };
    Err(StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        why,
    })
}

/// Appends the records of a journal's `bytes` to `records`; a torn tail is cut off when
/// the journal is the `last` one written (and is corruption otherwise). Gives the bytes
/// cut.
fn read_journal<D: Disk>(
    disk: &D,
    path: &Path,
    bytes: &[u8],
    last: bool,
    records: &mut Vec<Record>,
) -> Result<usize, StorageError> {
    let (mut logged, valid, end) = frame::decode(bytes);
    let corrupt = |offset, why| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        why,
    };
    match end {
        // What is recovered is served and built on: it must survive a power loss even
        // when it was only written (a crash under `interval` or `never`), or a later
        // journal would follow a torn one.
        frame::End::Clean if !bytes.is_empty() => {
            let (mut file, _) = disk.open_append(path).map_err(io_error(path))?;
            disk.sync(&mut file).map_err(io_error(path))?;
        }
        frame::End::Clean => {}
        frame::End::TornTail { offset } if !last => {
            return Err(corrupt(
                offset,
                "a journal before the last ends early".into(),
            ));
        }
        frame::End::TornTail { .. } => {
            let (mut file, _) = disk.open_append(path).map_err(io_error(path))?;
            disk.truncate(&mut file, valid as u64)
                .and_then(|()| disk.sync(&mut file))
                .map_err(io_error(path))?;
        }
        frame::End::Corrupt { offset, why } => return Err(corrupt(offset, why)),
    }
    records.append(&mut logged);
    Ok(bytes.len() - valid)
}

/// Removes (best effort) every snapshot and journal of a generation below `base`.
fn remove_below<D: Disk>(disk: &D, dir: &Path, listing: &Listing, base: u64) {
    let snapshots = listing
        .snapshots
        .iter()
        .map(|&g| (g, snapshot_path(dir, g)));
    let journals = listing.journals.iter().map(|&g| (g, journal_path(dir, g)));
    for (_, path) in snapshots.chain(journals).filter(|(g, _)| *g < base) {
        let _ = disk.remove(&path);
    }
}

/// What the writer thread tells the node.
#[derive(Debug)]
pub enum Report {
    /// Every record up to this position is durable (by the policy's meaning).
    Durable {
        upto: Seq,
        journal_bytes: u64,
        /// The size of the last snapshot this writer completed (0: none yet).
        snapshot_bytes: u64,
    },
    /// Writing failed; the batch is kept and retried.
    Failed(String),
}

enum Command {
    Append {
        upto: Seq,
        records: Vec<Record>,
    },
    /// A snapshot begins with these records (its head): appends go to a new journal.
    Begin {
        head: Vec<Record>,
    },
    Chunk {
        records: Vec<Record>,
    },
    End,
}

/// How many snapshot chunks are queued, and a signal when one is written.
#[derive(Default)]
struct ChunkQueue {
    queued: Mutex<usize>,
    taken: Condvar,
}

impl ChunkQueue {
    fn add(&self, n: isize) {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        *queued = queued.saturating_add_signed(n);
        self.taken.notify_all();
    }

    fn wait_below(&self, limit: usize) {
        let queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        let _unused = self
            .taken
            .wait_while(queued, |q| *q >= limit)
            .unwrap_or_else(|p| p.into_inner());
    }
}

/// The handle of the writer thread. `append`, `begin_snapshot` and `end_snapshot` never
/// block and do no I/O, so they may be called under the node's lock (which keeps appends
/// and a snapshot's beginning in the machine's order).
pub struct Journal {
    tx: mpsc::Sender<Command>,
    chunks: Arc<ChunkQueue>,
}

impl Journal {
    /// Queues records, in order, to be made durable.
    pub fn append(&self, upto: Seq, records: Vec<Record>) {
        let _ = self.tx.send(Command::Append { upto, records });
    }

    /// Begins a snapshot of the state as of every record queued so far, with its head
    /// (`Replica::snapshot_head`): later appends go to the next generation's journal.
    pub fn begin_snapshot(&self, head: Vec<Record>) {
        let _ = self.tx.send(Command::Begin { head });
    }

    /// Queues a piece of the snapshot (`Replica::snapshot_chunk`). Blocks while the
    /// writer has a few pieces still to write: call it without holding the node's lock.
    pub fn snapshot_chunk(&self, records: Vec<Record>) {
        self.chunks.wait_below(QUEUED_CHUNKS);
        self.chunks.add(1);
        if self.tx.send(Command::Chunk { records }).is_err() {
            self.chunks.add(-1);
        }
    }

    /// Ends the snapshot: once written, it replaces the older generations.
    pub fn end_snapshot(&self) {
        let _ = self.tx.send(Command::End);
    }
}

/// How the writer syncs and retries.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub fsync: Fsync,
    pub interval: Duration,
    /// How long after a failed write it is retried.
    pub retry: Duration,
}

impl Policy {
    pub fn new(fsync: Fsync, interval: Duration) -> Policy {
        Policy {
            fsync,
            interval,
            retry: RETRY,
        }
    }
}

/// Starts the writer thread on `dir`: it appends to the journal of `generation` (the
/// recovered one), which it creates if needed.
pub fn start(
    dir: PathBuf,
    generation: u64,
    policy: Policy,
    report: impl Fn(Report) + Send + 'static,
) -> Result<Journal, StorageError> {
    start_on(RealDisk, dir, generation, policy, report)
}

/// `start` over `disk`.
pub fn start_on<D: Disk>(
    disk: D,
    dir: PathBuf,
    generation: u64,
    policy: Policy,
    report: impl Fn(Report) + Send + 'static,
) -> Result<Journal, StorageError> {
    disk.create_dir_all(&dir).map_err(io_error(&dir))?;
    let path = journal_path(&dir, generation);
    let (mut file, good_len) = disk.open_append(&path).map_err(io_error(&path))?;
    // What was recovered is served: make it durable (a process crash may have left it
    // written and not synced).
    disk.sync(&mut file).map_err(io_error(&path))?;
    disk.sync_dir(&dir).map_err(io_error(&dir))?;
    let chunks = Arc::new(ChunkQueue::default());
    let writer = Writer {
        disk,
        dir,
        generation,
        file,
        good_len,
        cut: true,
        policy,
        last_sync: Instant::now(),
        dirty: false,
        snapshot: None,
        snapshot_bytes: 0,
        chunks: chunks.clone(),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || writer.run(rx, report))
        .map_err(io_error(Path::new("journal thread")))?;
    Ok(Journal { tx, chunks })
}

/// A snapshot being written.
struct Snapshot<F> {
    generation: u64,
    /// `None` once abandoned (a step failed): its later pieces are dropped.
    file: Option<F>,
    bytes: u64,
    records: usize,
}

struct Writer<D: Disk> {
    disk: D,
    dir: PathBuf,
    /// The generation of the journal appended to.
    generation: u64,
    file: D::File,
    /// Length of the journal's whole frames.
    good_len: u64,
    /// The file may be longer than `good_len` (a write failed): cut it before appending.
    cut: bool,
    policy: Policy,
    last_sync: Instant,
    /// Written but not synced.
    dirty: bool,
    snapshot: Option<Snapshot<D::File>>,
    /// The size of the last snapshot completed.
    snapshot_bytes: u64,
    chunks: Arc<ChunkQueue>,
}

impl<D: Disk> Writer<D> {
    fn run(mut self, rx: mpsc::Receiver<Command>, report: impl Fn(Report)) {
        let mut backlog = VecDeque::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut upto = 0;
        loop {
            if backlog.is_empty() && pending.is_empty() {
                match rx.recv_timeout(self.idle_wait()) {
                    Ok(command) => backlog.push_back(command),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.sync_if_due();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            backlog.extend(rx.try_iter());
            // Group commit: every append queued before the next snapshot begins.
            upto = take_appends(&mut backlog, &mut pending).unwrap_or(upto);
            if !pending.is_empty() {
                match self.append(&pending) {
                    Ok(()) => {
                        pending.clear();
                        report(Report::Durable {
                            upto,
                            journal_bytes: self.good_len,
                            snapshot_bytes: self.snapshot_bytes,
                        });
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot write the journal; writes are refused until it can");
                        report(Report::Failed(error.to_string()));
                        match rx.recv_timeout(self.policy.retry) {
                            Ok(command) => backlog.push_back(command),
                            Err(mpsc::RecvTimeoutError::Timeout) => {}
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                        continue;
                    }
                }
            }
            if let Some(command) = backlog.pop_front() {
                self.snapshot_step(command);
            }
        }
    }

    /// How long to wait for a command when idle: until an `interval` sync is due.
    fn idle_wait(&self) -> Duration {
        match (self.policy.fsync, self.dirty) {
            (Fsync::Interval, true) => self
                .policy
                .interval
                .saturating_sub(self.last_sync.elapsed()),
            _ => Duration::from_secs(3600),
        }
    }

    fn sync_if_due(&mut self) {
        if self.policy.fsync == Fsync::Interval
            && self.dirty
            && let Err(error) = self.sync()
        {
            tracing::error!(%error, "cannot sync the journal");
        }
    }

    /// Appends whole frames; syncs by policy. After a failure the file is cut back to
    /// its last whole frame before the next attempt, so that a retry appends after it.
    fn append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.cut_back()?;
        let path = journal_path(&self.dir, self.generation);
        if let Err(source) = self.disk.write(&mut self.file, bytes) {
            self.cut = true;
            return Err(StorageError::Io { path, source });
        }
        self.dirty = true;
        let due = match self.policy.fsync {
            Fsync::Always => true,
            Fsync::Interval => self.last_sync.elapsed() >= self.policy.interval,
            Fsync::Never => false,
        };
        if due && let Err(error) = self.sync() {
            // Not reported durable: the retry writes the batch again, after cutting it.
            self.cut = true;
            return Err(error);
        }
        self.good_len += bytes.len() as u64;
        Ok(())
    }

    /// Cuts the journal back to its whole frames after a failed write, durably: a torn
    /// frame must not come back after a power loss, least of all once appends have moved
    /// on to the next journal (a torn frame there would read as corruption).
    fn cut_back(&mut self) -> Result<(), StorageError> {
        if self.cut {
            let path = journal_path(&self.dir, self.generation);
            (self.disk.truncate(&mut self.file, self.good_len))
                .and_then(|()| self.disk.sync(&mut self.file))
                .map_err(io_error(&path))?;
            self.cut = false;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let path = journal_path(&self.dir, self.generation);
        self.disk.sync(&mut self.file).map_err(io_error(&path))?;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn snapshot_step(&mut self, command: Command) {
        let result = match command {
            Command::Append { .. } => Ok(()),
            Command::Begin { head } => self.begin(&head),
            Command::Chunk { records } => {
                self.chunks.add(-1);
                self.write_chunk(&records)
            }
            Command::End => self.end(),
        };
        if let Err(error) = result {
            tracing::error!(%error, "cannot write a snapshot; the journal keeps growing");
            self.abandon();
        }
    }

    /// Moves appends to the next generation's journal, and starts its snapshot.
    fn begin(&mut self, head: &[Record]) -> Result<(), StorageError> {
        self.abandon();
        // The old journal must be whole and durable before the new one gets records.
        self.cut_back()?;
        if self.dirty {
            self.sync()?;
        }
        let next = self.generation + 1;
        let path = journal_path(&self.dir, next);
        let (file, good_len) = self.disk.open_append(&path).map_err(io_error(&path))?;
        self.disk.sync_dir(&self.dir).map_err(io_error(&self.dir))?;
        (self.generation, self.file, self.good_len) = (next, file, good_len);
        let tmp = snapshot_tmp_path(&self.dir, next);
        self.snapshot = Some(Snapshot {
            generation: next,
            file: Some(self.disk.create(&tmp).map_err(io_error(&tmp))?),
            bytes: 0,
            records: 0,
        });
        self.write_chunk(head)
    }

    fn write_chunk(&mut self, records: &[Record]) -> Result<(), StorageError> {
        let Some(Snapshot {
            generation,
            file: Some(file),
            bytes,
            records: count,
        }) = &mut self.snapshot
        else {
            return Ok(());
        };
        let mut encoded = Vec::new();
        records.iter().for_each(|r| frame::encode(r, &mut encoded));
        let tmp = snapshot_tmp_path(&self.dir, *generation);
        self.disk.write(file, &encoded).map_err(io_error(&tmp))?;
        *bytes += encoded.len() as u64;
        *count += records.len();
        Ok(())
    }

    /// Makes the snapshot durable under its final name, then removes older generations.
    fn end(&mut self) -> Result<(), StorageError> {
        let Some(Snapshot {
            generation,
            file: Some(mut file),
            bytes,
            records,
        }) = self.snapshot.take()
        else {
            return Ok(());
        };
        let tmp = snapshot_tmp_path(&self.dir, generation);
        let snapshot = snapshot_path(&self.dir, generation);
        let synced = self.disk.sync(&mut file).map_err(io_error(&tmp));
        if let Err(error) =
            synced.and_then(|()| (self.disk.rename(&tmp, &snapshot)).map_err(io_error(&snapshot)))
        {
            let _ = self.disk.remove(&tmp);
            return Err(error);
        }
        self.disk.sync_dir(&self.dir).map_err(io_error(&self.dir))?;
        let listing = list(&self.disk, &self.dir)?;
        remove_below(&self.disk, &self.dir, &listing, generation);
        self.snapshot_bytes = bytes;
        tracing::info!(generation, records, bytes, "wrote a snapshot");
        Ok(())
    }

    /// Drops the snapshot being written, if any, and its `.tmp` (best effort).
    fn abandon(&mut self) {
        if let Some(Snapshot { generation, .. }) = self.snapshot.take() {
            let _ = self.disk.remove(&snapshot_tmp_path(&self.dir, generation));
        }
    }
}

/// Moves every append before the first `Begin` of `backlog` into `pending` (encoded);
/// gives the position of the last one, if any.
fn take_appends(backlog: &mut VecDeque<Command>, pending: &mut Vec<u8>) -> Option<Seq> {
    let begin = (backlog.iter())
        .position(|c| matches!(c, Command::Begin { .. }))
        .unwrap_or(backlog.len());
    let mut later = backlog.split_off(begin);
    let mut upto = None;
    backlog.retain(|command| match command {
        Command::Append { upto: u, records } => {
            records.iter().for_each(|r| frame::encode(r, pending));
            upto = Some(*u);
            false
        }
        _ => true,
    });
    backlog.append(&mut later);
    upto
}
