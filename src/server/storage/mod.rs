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
//! The writer takes every append already queued (group commit), writes them with one
//! `write`, then, by `--fsync` policy: `always` syncs (`fdatasync`) before it reports
//! them durable; `interval` reports them once written (the OS has them) and syncs at most
//! every `--fsync-interval`; `never` leaves syncing to the OS. Under every policy a record
//! is reported only once the OS has it, so a write survives a crash of the process; with
//! `always` it also survives a power loss. With `always` the writer is a thread; with
//! `interval` and `never` the node's tasks write their own appends (`Journal::write_queued`)
//! and the thread only syncs, retries and writes snapshots. A failed write is reported as
//! an error, the file is cut back to its last whole frame before the next attempt, and
//! the batch is retried by the thread.
//!
//! # Recovery
//!
//! `Recovery` is an iterator over the records of the newest snapshot and the journals
//! after it, reading one frame at a time (`frame::Frames`): the caller replays each
//! record as it comes, so a whole file or every record is never held at once.

pub mod codec;
pub mod disk;
pub mod frame;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
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

/// What recovery found, besides the records.
#[derive(Debug)]
pub struct Recovered {
    /// How many records were read.
    pub records: usize,
    /// The generation of the last journal (0 for an empty directory): appends go on there.
    pub generation: u64,
    /// Bytes of a torn tail that were cut off.
    pub torn_bytes: usize,
}

/// A file that recovery reads.
struct Source {
    path: PathBuf,
    journal: bool,
}

/// Reads a data directory's records in order: the newest snapshot, then every journal
/// from its generation on. It is an iterator that reads one frame at a time, so that
/// recovery never holds more than one record beside the state it rebuilds. Iterate it
/// to its end, then `finish` it: an error (a damaged file, a failed read) ends the
/// iteration early, and `finish` gives it.
///
/// At the end of each journal it makes the journal durable (what is recovered is served
/// and built on: it must survive a power loss even when it was only written, or a later
/// journal would follow a torn one); a torn tail is cut off the last journal written,
/// and is corruption anywhere else.
pub struct Recovery<'d, D: Disk> {
    disk: &'d D,
    dir: PathBuf,
    listing: Listing,
    /// The generation of the snapshot read (0: none).
    base: u64,
    files: VecDeque<Source>,
    current: Option<(Source, frame::Frames<D::Reader>)>,
    error: Option<StorageError>,
    records: usize,
    torn_bytes: usize,
}

impl<'d, D: Disk> Recovery<'d, D> {
    /// Lists `dir` (creating it if needed) and removes its `.tmp` files.
    pub fn open(disk: &'d D, dir: &Path) -> Result<Self, StorageError> {
        disk.create_dir_all(dir).map_err(io_error(dir))?;
        let listing = list(disk, dir)?;
        for name in &listing.temporary {
            let _ = disk.remove(&dir.join(name));
        }
        let snapshot = listing.snapshots.iter().copied().max();
        let base = snapshot.unwrap_or(0);
        let snapshot = snapshot.map(|g| Source {
            path: snapshot_path(dir, g),
            journal: false,
        });
        let journals = (listing.journals.iter().copied())
            .filter(|&g| g >= base)
            .map(|g| Source {
                path: journal_path(dir, g),
                journal: true,
            });
        Ok(Recovery {
            disk,
            dir: dir.to_path_buf(),
            files: snapshot.into_iter().chain(journals).collect(),
            listing,
            base,
            current: None,
            error: None,
            records: 0,
            torn_bytes: 0,
        })
    }

    /// Ends recovery: gives the first error met, or what was found; removes the files of
    /// older generations.
    pub fn finish(mut self) -> Result<Recovered, StorageError> {
        // Whatever the caller left unread still has to be checked (and cut).
        for _ in self.by_ref() {}
        if let Some(error) = self.error {
            return Err(error);
        }
        remove_below(self.disk, &self.dir, &self.listing, self.base);
        let last_journal = self
            .listing
            .journals
            .iter()
            .copied()
            .filter(|&g| g >= self.base)
            .max();
        Ok(Recovered {
            records: self.records,
            generation: last_journal.unwrap_or(self.base),
            torn_bytes: self.torn_bytes,
        })
    }

    /// Reads the next record from the current file, opening the next one as needed.
    fn read_next(&mut self) -> Result<Option<Record>, StorageError> {
        loop {
            let Some((source, frames)) = &mut self.current else {
                let Some(source) = self.files.pop_front() else {
                    return Ok(None);
                };
                let (reader, len) =
                    (self.disk.open_read(&source.path)).map_err(io_error(&source.path))?;
                self.current = Some((source, frame::Frames::new(reader, len)));
                continue;
            };
            if let Some(record) = frames.next_record().map_err(io_error(&source.path))? {
                return Ok(Some(record));
            }
            if let Some((source, frames)) = self.current.take() {
                self.close(&source, &frames)?;
            }
        }
    }

    /// Checks how a file ended, and makes a journal durable (cut if torn).
    fn close<R>(&mut self, source: &Source, frames: &frame::Frames<R>) -> Result<(), StorageError> {
        let path = &source.path;
        let corrupt = |offset, why| StorageError::Corrupt {
            path: path.clone(),
            offset,
            why,
        };
        let valid = frames.valid();
        match (
            frames.end().cloned().unwrap_or(frame::End::Clean),
            source.journal,
        ) {
            (frame::End::Corrupt { offset, why }, _) => Err(corrupt(offset, why)),
            (frame::End::TornTail { offset }, false) => {
                Err(corrupt(offset, "a snapshot ends early".into()))
            }
            (frame::End::TornTail { offset }, true) => {
                // Empty journals after the last one written add nothing (a snapshot that
                // failed to begin can leave one): only the last written may be torn.
                if !self.later_journals_are_empty()? {
                    return Err(corrupt(
                        offset,
                        "a journal before the last ends early".into(),
                    ));
                }
                let (mut file, len) = self.disk.open_append(path).map_err(io_error(path))?;
                (self.disk.truncate(&mut file, valid as u64))
                    .and_then(|()| self.disk.sync(&mut file))
                    .map_err(io_error(path))?;
                self.torn_bytes += (len as usize).saturating_sub(valid);
                Ok(())
            }
            (frame::End::Clean, true) if valid > 0 => {
                let (mut file, _) = self.disk.open_append(path).map_err(io_error(path))?;
                self.disk.sync(&mut file).map_err(io_error(path))
            }
            (frame::End::Clean, _) => Ok(()),
        }
    }

    fn later_journals_are_empty(&self) -> Result<bool, StorageError> {
        for source in &self.files {
            let (_, len) = (self.disk.open_read(&source.path)).map_err(io_error(&source.path))?;
            if len > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl<D: Disk> Iterator for Recovery<'_, D> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.error.is_some() {
            return None;
        }
        match self.read_next() {
            Ok(Some(record)) => {
                self.records += 1;
                Some(record)
            }
            Ok(None) => None,
            Err(error) => {
                self.error = Some(error);
                None
            }
        }
    }
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

/// What the writer tells the node.
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

/// The commands waiting for the writer, in the machine's order.
#[derive(Default)]
struct Queued {
    commands: VecDeque<Command>,
    /// The last write failed: appends wait for the thread's retry.
    failing: bool,
    /// An inline write left the journal unsynced: the thread times the next sync.
    sync_wanted: bool,
    /// The journal's handle is gone: the thread stops.
    closed: bool,
}

impl Queued {
    /// True when the writer thread has something to do now: with inline appends it
    /// leaves those to the node (but writes any it finds queued once it has worked).
    fn has_thread_work(&self, inline: bool) -> bool {
        let appends = !inline && !self.commands.is_empty();
        self.closed || self.sync_wanted || (!self.failing && (appends || self.has_snapshot_step()))
    }

    /// True when the writer thread has more to write after a hold of the writer.
    fn has_more_work(&self) -> bool {
        !self.closed && (self.has_ready_append() || (!self.failing && self.has_snapshot_step()))
    }

    fn has_snapshot_step(&self) -> bool {
        (self.commands.iter()).any(|c| !matches!(c, Command::Append { .. }))
    }

    /// True when an append is at the front, ready for whoever writes next.
    fn has_ready_append(&self) -> bool {
        !self.failing && matches!(self.commands.front(), Some(Command::Append { .. }))
    }

    /// Takes every append before the first `Begin` (snapshot chunks and ends do not
    /// order appends: they go to another file).
    fn take_appends(&mut self) -> Vec<(Seq, Vec<Record>)> {
        let begin = (self.commands.iter())
            .position(|c| matches!(c, Command::Begin { .. }))
            .unwrap_or(self.commands.len());
        let mut later = self.commands.split_off(begin);
        let mut appends = Vec::new();
        self.commands.retain_mut(|command| match command {
            Command::Append { upto, records } => {
                appends.push((*upto, std::mem::take(records)));
                false
            }
            _ => true,
        });
        self.commands.append(&mut later);
        appends
    }

    /// Takes the first command when it is a snapshot's step.
    fn take_snapshot_step(&mut self) -> Option<Command> {
        match self.commands.front() {
            Some(Command::Append { .. }) | None => None,
            Some(_) => self.commands.pop_front(),
        }
    }
}

/// What the node's handle and the writer thread share. Lock order: `writer`, then
/// `queue` (the node pushes to `queue` under its own lock; nobody takes `writer` while
/// holding `queue`).
struct Shared<D: Disk> {
    queue: Mutex<Queued>,
    /// Wakes the writer thread.
    wake: Condvar,
    /// Held by whoever writes: the thread, or a node task writing appends inline.
    writer: Mutex<Writer<D>>,
    chunks: ChunkQueue,
    /// Appends are written by the node's tasks (`Journal::write_queued`), not the thread.
    inline: bool,
}

impl<D: Disk> Shared<D> {
    fn queue(&self) -> MutexGuard<'_, Queued> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, command: Command) {
        let wake = !self.inline || !matches!(command, Command::Append { .. });
        self.queue().commands.push_back(command);
        if wake {
            self.wake.notify_one();
        }
    }

    /// One hold of the writer by its thread: a sync if due, the appends at the front,
    /// and at most one snapshot step.
    fn work(&self, report: &impl Fn(Report)) {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer.sync_if_due();
        if let Some(r) = self.write_appends(&mut writer, true) {
            report(r);
        }
        let step = match writer.failed_at {
            Some(_) => None,
            None => self.queue().take_snapshot_step(),
        };
        if let Some(command) = step {
            writer.snapshot_step(command, &self.chunks);
        }
    }

    /// Writes the appends at the front of the queue with `writer`; gives the last report.
    fn write_appends(&self, writer: &mut Writer<D>, may_sync: bool) -> Option<Report> {
        let appends = self.queue().take_appends();
        let report = writer.write(appends, may_sync)?;
        let failed = matches!(report, Report::Failed(_));
        self.queue().failing = failed;
        Some(report)
    }
}

/// The handle of the journal's writer. `append`, `begin_snapshot` and `end_snapshot`
/// never block and do no I/O, so they may be called under the node's lock (which keeps
/// appends and a snapshot's beginning in the machine's order).
///
/// Who writes: with `--fsync always`, a thread (its syncs take milliseconds, too long
/// for the node's async tasks), which reports through the callback given to `start`.
/// With `interval` or `never`, a write is one `write` into the page cache, so the node
/// writes its appends itself (`write_queued`, after releasing its lock) and gets the
/// report back directly: no thread hand-off per batch. The thread then only syncs (at
/// most every interval), retries failed writes, and writes snapshots.
pub struct Journal<D: Disk = RealDisk> {
    shared: Arc<Shared<D>>,
}

impl<D: Disk> Journal<D> {
    /// Queues records, in order, to be made durable.
    pub fn append(&self, upto: Seq, records: Vec<Record>) {
        self.shared.push(Command::Append { upto, records });
    }

    /// Begins a snapshot of the state as of every record queued so far, with its head
    /// (`Replica::snapshot_head`): later appends go to the next generation's journal.
    pub fn begin_snapshot(&self, head: Vec<Record>) {
        self.shared.push(Command::Begin { head });
    }

    /// Queues a piece of the snapshot (`Replica::snapshot_chunk`). Blocks while the
    /// writer has a few pieces still to write: call it without holding the node's lock.
    pub fn snapshot_chunk(&self, records: Vec<Record>) {
        self.shared.chunks.wait_below(QUEUED_CHUNKS);
        self.shared.chunks.add(1);
        self.shared.push(Command::Chunk { records });
    }

    /// Ends the snapshot: once written, it replaces the older generations.
    pub fn end_snapshot(&self) {
        self.shared.push(Command::End);
    }

    /// Writes the queued appends now, unless another writer is at work (it then writes
    /// them: whoever releases the writer looks at the queue again). Only with `interval`
    /// and `never`; call it after releasing the node's lock. Gives the last report.
    pub fn write_queued(&self) -> Option<Report> {
        let shared = &*self.shared;
        let mut last = None;
        while shared.inline && shared.queue().has_ready_append() {
            let mut writer = match shared.writer.try_lock() {
                Ok(writer) => writer,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => break,
            };
            let was_dirty = writer.dirty;
            let report = shared.write_appends(&mut writer, false);
            let failed = matches!(report, Some(Report::Failed(_)));
            // The thread syncs what was written (at the interval), and retries a failure.
            if failed || (writer.dirty && !was_dirty) {
                shared.queue().sync_wanted = true;
                shared.wake.notify_one();
            }
            last = report.or(last);
        }
        last
    }
}

impl<D: Disk> Drop for Journal<D> {
    fn drop(&mut self) {
        self.shared.queue().closed = true;
        self.shared.wake.notify_one();
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

/// Starts the writer on `dir`: it appends to the journal of `generation` (the recovered
/// one), which it creates if needed. The thread reports with `report`.
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
) -> Result<Journal<D>, StorageError> {
    disk.create_dir_all(&dir).map_err(io_error(&dir))?;
    let path = journal_path(&dir, generation);
    let (mut file, good_len) = disk.open_append(&path).map_err(io_error(&path))?;
    // What was recovered is served: make it durable (a process crash may have left it
    // written and not synced).
    disk.sync(&mut file).map_err(io_error(&path))?;
    disk.sync_dir(&dir).map_err(io_error(&dir))?;
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
        pending: Vec::new(),
        pending_upto: 0,
        failed_at: None,
        snapshot: None,
        snapshot_bytes: 0,
    };
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queued::default()),
        wake: Condvar::new(),
        writer: Mutex::new(writer),
        chunks: ChunkQueue::default(),
        inline: policy.fsync != Fsync::Always,
    });
    let thread = shared.clone();
    std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || run(&thread, report))
        .map_err(io_error(Path::new("journal thread")))?;
    Ok(Journal { shared })
}

/// The writer thread: waits for work (or for a sync or a retry to be due), then does it
/// in short holds of the writer: the appends at the front and at most one snapshot step
/// each, so that inline appends are never held up for long.
fn run<D: Disk>(shared: &Shared<D>, report: impl Fn(Report)) {
    loop {
        let timeout = shared
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .idle_wait();
        let queued = shared.queue();
        let (mut queued, _) = shared
            .wake
            .wait_timeout_while(queued, timeout, |q| !q.has_thread_work(shared.inline))
            .unwrap_or_else(|p| p.into_inner());
        if queued.closed {
            return;
        }
        queued.sync_wanted = false;
        drop(queued);
        // Like `Journal::write_queued`, look at the queue again after each hold: an
        // inline append may have been queued while the writer was held.
        loop {
            shared.work(&report);
            if !shared.queue().has_more_work() {
                break;
            }
        }
    }
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
    /// Encoded appends not yet written (a failed batch waits here for its retry), and
    /// the position of the last.
    pending: Vec<u8>,
    pending_upto: Seq,
    /// When the last write failed, until one succeeds.
    failed_at: Option<Instant>,
    snapshot: Option<Snapshot<D::File>>,
    /// The size of the last snapshot completed.
    snapshot_bytes: u64,
}

impl<D: Disk> Writer<D> {
    /// How long the thread may sleep: until a retry or an `interval` sync is due.
    fn idle_wait(&self) -> Duration {
        if let Some(at) = self.failed_at {
            return self.policy.retry.saturating_sub(at.elapsed());
        }
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
            && self.failed_at.is_none()
            && self.last_sync.elapsed() >= self.policy.interval
            && let Err(error) = self.sync()
        {
            tracing::error!(%error, "cannot sync the journal");
        }
    }

    /// Writes `appends` after the pending ones (group commit: one `write` for all);
    /// `may_sync`: sync here when the policy wants it (the thread), or leave it to the
    /// thread (a node task). After a failure, only a retry (the thread, once due) writes.
    fn write(&mut self, appends: Vec<(Seq, Vec<Record>)>, may_sync: bool) -> Option<Report> {
        for (upto, records) in appends {
            records
                .iter()
                .for_each(|r| frame::encode(r, &mut self.pending));
            self.pending_upto = upto;
        }
        let retry_due = self
            .failed_at
            .is_none_or(|at| may_sync && at.elapsed() >= self.policy.retry);
        if self.pending.is_empty() || !retry_due {
            return None;
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.append(&pending, may_sync);
        self.pending = pending;
        match result {
            Ok(()) => {
                self.pending.clear();
                self.failed_at = None;
                Some(Report::Durable {
                    upto: self.pending_upto,
                    journal_bytes: self.good_len,
                    snapshot_bytes: self.snapshot_bytes,
                })
            }
            Err(error) => {
                tracing::error!(%error, "cannot write the journal; writes are refused until it can");
                self.failed_at = Some(Instant::now());
                Some(Report::Failed(error.to_string()))
            }
        }
    }

    /// Appends whole frames; syncs by policy when `may_sync`. After a failure the file
    /// is cut back to its last whole frame before the next attempt, so that a retry
    /// appends after it.
    fn append(&mut self, bytes: &[u8], may_sync: bool) -> Result<(), StorageError> {
        self.cut_back()?;
        let path = journal_path(&self.dir, self.generation);
        if let Err(source) = self.disk.write(&mut self.file, bytes) {
            self.cut = true;
            return Err(StorageError::Io { path, source });
        }
        self.dirty = true;
        let due = match self.policy.fsync {
            Fsync::Always => true,
            Fsync::Interval => may_sync && self.last_sync.elapsed() >= self.policy.interval,
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

    fn snapshot_step(&mut self, command: Command, chunks: &ChunkQueue) {
        let result = match command {
            Command::Append { .. } => Ok(()),
            Command::Begin { head } => self.begin(&head),
            Command::Chunk { records } => {
                chunks.add(-1);
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
