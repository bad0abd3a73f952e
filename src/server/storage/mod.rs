//! The data directory (`--data-dir`): a replica's journal on disk, its recovery at
//! start-up, and the writer thread that makes records durable with group commit.
//!
//! # Files
//!
//! * `snapshot-G.snap`: records that rebuild the whole state as of the start of
//!   generation G (`Replica::snapshot_records`). Written as `.tmp`, synced, then renamed:
//!   a snapshot file is always whole.
//! * `journal-G.log`: every record since that snapshot, appended in order.
//!
//! Recovery reads the newest snapshot and its journal. A torn tail of the journal (a crash
//! in the middle of an append) is cut off; any other damage stops the replica with an
//! error naming the file and the offset (see `frame`). A new snapshot is written at every
//! start and whenever the journal outgrows the store, then older files are removed.
//!
//! # Durability
//!
//! The writer thread takes every batch of records already queued (group commit), writes
//! them with one `write`, then, by `--fsync` policy: `always` syncs (`fdatasync`) before
//! it reports them durable; `interval` reports them once written (the OS has them) and
//! syncs at most every `--fsync-interval`; `never` leaves syncing to the OS. Under every
//! policy a record is reported only once the OS has it, so a write survives a crash of
//! the process; with `always` it also survives a power loss. A failed write is reported
//! as an error, the file is cut back to its last whole frame, and the batch is retried.

pub mod codec;
pub mod frame;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::protocol::journal::{Record, Seq};

/// How often a failed write is retried.
const RETRY: Duration = Duration::from_secs(1);
/// The journal is compacted into a snapshot once it is this large and larger than twice
/// the store.
pub const COMPACT_MIN_BYTES: u64 = 64 * 1024 * 1024;

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

fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation}.log"))
}

/// What a data directory held.
#[derive(Debug)]
pub struct Recovered {
    pub records: Vec<Record>,
    /// The generation of the files read (0 for an empty directory).
    pub generation: u64,
    /// Bytes of a torn tail that were cut off.
    pub torn_bytes: usize,
}

/// Reads the newest snapshot and its journal, creating the directory if needed; cuts a
/// torn tail off the journal.
pub fn recover(dir: &Path) -> Result<Recovered, StorageError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut generation = None;
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let name = entry.map_err(io_error(dir))?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") {
            let _ = fs::remove_file(dir.join(&*name));
        } else if let Some(g) = (name.strip_prefix("snapshot-"))
            .and_then(|rest| rest.strip_suffix(".snap"))
            .and_then(|g| g.parse::<u64>().ok())
        {
            generation = generation.max(Some(g));
        }
    }
    let generation = generation.unwrap_or(0);
    let mut records = Vec::new();
    let snapshot = snapshot_path(dir, generation);
    if snapshot.exists() {
        let bytes = fs::read(&snapshot).map_err(io_error(&snapshot))?;
        let (mut snap, _, end) = frame::decode(&bytes);
        if let Some((offset, why)) = match end {
            frame::End::Clean => None,
            frame::End::TornTail { offset } => Some((offset, "a snapshot ends early".into())),
            frame::End::Corrupt { offset, why } => Some((offset, why)),
        } {
            return Err(StorageError::Corrupt {
                path: snapshot,
                offset,
                why,
            });
        }
        records.append(&mut snap);
    }
    let journal = journal_path(dir, generation);
    let mut torn_bytes = 0;
    if journal.exists() {
        let bytes = fs::read(&journal).map_err(io_error(&journal))?;
        let (mut logged, valid, end) = frame::decode(&bytes);
        match end {
            frame::End::Clean => {}
            frame::End::TornTail { .. } => {
                torn_bytes = bytes.len() - valid;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&journal)
                    .map_err(io_error(&journal))?;
                file.set_len(valid as u64).map_err(io_error(&journal))?;
                file.sync_all().map_err(io_error(&journal))?;
            }
            frame::End::Corrupt { offset, why } => {
                return Err(StorageError::Corrupt {
                    path: journal,
                    offset,
                    why,
                });
            }
        }
        records.append(&mut logged);
    }
    Ok(Recovered {
        records,
        generation,
        torn_bytes,
    })
}

/// What the writer thread tells the node.
#[derive(Debug)]
pub enum Report {
    /// Every record up to this position is durable (by the policy's meaning).
    Durable { upto: Seq, journal_bytes: u64 },
    /// Writing failed; the batch is kept and retried.
    Failed(String),
}

enum Command {
    Append { upto: Seq, records: Vec<Record> },
    Snapshot { records: Vec<Record> },
}

/// The handle of the writer thread. Sending never blocks and does no I/O, so it may be
/// called under the node's lock (which keeps appends and snapshots in journal order).
pub struct Journal {
    tx: mpsc::Sender<Command>,
}

impl Journal {
    /// Queues records, in order, to be made durable.
    pub fn append(&self, upto: Seq, records: Vec<Record>) {
        let _ = self.tx.send(Command::Append { upto, records });
    }

    /// Queues a snapshot of the state as of every record queued so far: the writer
    /// writes it as the next generation and starts a new journal.
    pub fn snapshot(&self, records: Vec<Record>) {
        let _ = self.tx.send(Command::Snapshot { records });
    }
}

/// Starts the writer thread on `dir`: it writes `initial` (the recovered state) as the
/// next generation's snapshot before anything else, then appends.
pub fn start(
    dir: PathBuf,
    generation: u64,
    initial: Vec<Record>,
    fsync: Fsync,
    interval: Duration,
    report: impl Fn(Report) + Send + 'static,
) -> Result<Journal, StorageError> {
    let mut writer = Writer {
        dir,
        generation,
        file: None,
        good_len: 0,
        fsync,
        interval,
        last_sync: Instant::now(),
        dirty: false,
    };
    writer.rotate(&initial)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || writer.run(rx, report))
        .map_err(io_error(Path::new("journal thread")))?;
    Ok(Journal { tx })
}

struct Writer {
    dir: PathBuf,
    generation: u64,
    file: Option<File>,
    /// Length of the journal's whole frames.
    good_len: u64,
    fsync: Fsync,
    interval: Duration,
    last_sync: Instant,
    /// Written but not synced.
    dirty: bool,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>, report: impl Fn(Report)) {
        let mut pending: Vec<u8> = Vec::new();
        let mut upto = 0;
        loop {
            let wait = match (self.fsync, self.dirty, pending.is_empty()) {
                (_, _, false) => RETRY,
                (Fsync::Interval, true, _) => {
                    self.interval.saturating_sub(self.last_sync.elapsed())
                }
                _ => Duration::from_secs(3600),
            };
            let first = match rx.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            // Group commit: everything already queued goes in this write.
            let mut snapshot = None;
            for command in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                match command {
                    Command::Append { upto: u, records } => {
                        records.iter().for_each(|r| frame::encode(r, &mut pending));
                        upto = u;
                    }
                    Command::Snapshot { records } => {
                        snapshot = Some(records);
                        break;
                    }
                }
            }
            if !pending.is_empty() {
                match self.append(&pending) {
                    Ok(()) => {
                        pending.clear();
                        let journal_bytes = self.good_len;
                        report(Report::Durable {
                            upto,
                            journal_bytes,
                        });
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot write the journal; writes are refused until it can");
                        report(Report::Failed(error.to_string()));
                        continue;
                    }
                }
            } else if self.fsync == Fsync::Interval && self.dirty {
                if let Err(error) = self.sync() {
                    tracing::error!(%error, "cannot sync the journal");
                }
            }
            if let Some(records) = snapshot {
                if let Err(error) = self.rotate(&records) {
                    tracing::error!(%error, "cannot write a snapshot; the journal keeps growing");
                }
            }
        }
    }

    /// Appends whole frames; syncs by policy. On failure the file is cut back to its last
    /// whole frame, so that a retry appends after it.
    fn append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let path = journal_path(&self.dir, self.generation);
        let Some(file) = &mut self.file else {
            return Err(StorageError::Io {
                path,
                source: io::Error::other("no journal open"),
            });
        };
        if let Err(source) = file.write_all(bytes) {
            let _ = file.set_len(self.good_len);
            return Err(StorageError::Io { path, source });
        }
        self.good_len += bytes.len() as u64;
        self.dirty = true;
        let due = match self.fsync {
            Fsync::Always => true,
            Fsync::Interval => self.last_sync.elapsed() >= self.interval,
            Fsync::Never => false,
        };
        if due {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let path = journal_path(&self.dir, self.generation);
        if let Some(file) = &self.file {
            file.sync_data().map_err(io_error(&path))?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Writes `records` as the next generation's snapshot, starts its journal, and
    /// removes the previous generation's files.
    fn rotate(&mut self, records: &[Record]) -> Result<(), StorageError> {
        if self.dirty {
            self.sync()?;
        }
        fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        let next = self.generation + 1;
        let snapshot = snapshot_path(&self.dir, next);
        let tmp = snapshot.with_extension("snap.tmp");
        let mut bytes = Vec::new();
        records.iter().for_each(|r| frame::encode(r, &mut bytes));
        let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
        file.write_all(&bytes).map_err(io_error(&tmp))?;
        file.sync_all().map_err(io_error(&tmp))?;
        fs::rename(&tmp, &snapshot).map_err(io_error(&snapshot))?;
        let journal = journal_path(&self.dir, next);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .map_err(io_error(&journal))?;
        file.set_len(0).map_err(io_error(&journal))?;
        sync_dir(&self.dir)?;
        let old = self.generation;
        let _ = fs::remove_file(journal_path(&self.dir, old));
        let _ = fs::remove_file(snapshot_path(&self.dir, old));
        self.generation = next;
        self.file = Some(file);
        self.good_len = 0;
        self.dirty = false;
        tracing::info!(
            generation = next,
            records = records.len(),
            bytes = bytes.len(),
            "wrote a snapshot and started a new journal"
        );
        Ok(())
    }
}

/// Makes renames and new files in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::causal::{Clock, Incarnation};
    use crate::protocol::store::tests::entry;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("causalkv-storage-{name}-{}", std::process::id()));
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

    #[test]
    fn what_was_reported_durable_is_recovered_and_a_torn_tail_is_cut() {
        let dir = dir("recover");
        let first = recover(&dir).unwrap();
        assert_eq!((first.records.len(), first.generation), (0, 0));
        let (tx, rx) = mpsc::channel();
        let journal = start(
            dir.clone(),
            0,
            Vec::new(),
            Fsync::Always,
            Duration::ZERO,
            move |r| {
                let _ = tx.send(r);
            },
        )
        .unwrap();
        journal.append(2, vec![applied(1), applied(2)]);
        journal.append(
            3,
            vec![Record::Started {
                incarnation: Incarnation::new("10.0.0.1:1", 7),
            }],
        );
        wait_durable(&rx, 3);
        drop(journal);
        // A crash in the middle of the next append.
        let path = journal_path(&dir, 1);
        let mut torn = Vec::new();
        frame::encode(&applied(4), &mut torn);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        let back = recover(&dir).unwrap();
        assert_eq!(back.generation, 1);
        assert_eq!(back.records.len(), 3);
        assert_eq!(back.torn_bytes, torn.len() / 2);
        let cut = fs::read(&path).unwrap();
        assert_eq!(
            frame::decode(&cut).2,
            frame::End::Clean,
            "the torn tail is cut off"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_snapshot_replaces_the_journal_and_corruption_is_named() {
        let dir = dir("snapshot");
        let (tx, rx) = mpsc::channel();
        let journal = start(
            dir.clone(),
            0,
            Vec::new(),
            Fsync::Interval,
            Duration::from_millis(5),
            move |r| {
                let _ = tx.send(r);
            },
        )
        .unwrap();
        journal.append(1, vec![applied(1)]);
        wait_durable(&rx, 1);
        journal.snapshot(vec![
            Record::ClockMerged {
                clock: Clock::new(),
            },
            applied(1),
        ]);
        journal.append(2, vec![applied(2)]);
        wait_durable(&rx, 2);
        drop(journal);
        let back = recover(&dir).unwrap();
        assert_eq!(back.generation, 2);
        assert_eq!(back.records.len(), 3, "snapshot (2) + journal (1)");
        assert!(!journal_path(&dir, 1).exists(), "the old journal is gone");
        // Damage in the middle of the journal is not a torn tail.
        let path = journal_path(&dir, 2);
        let mut bytes = fs::read(&path).unwrap();
        frame::encode(&applied(3), &mut bytes);
        bytes[frame::HEADER + 1] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let error = recover(&dir).unwrap_err().to_string();
        assert!(
            error.contains("journal-2.log") && error.contains("byte 0"),
            "{error}"
        );
        assert!(error.contains("Move the directory away"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }
}
