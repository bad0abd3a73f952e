//! The file operations of the data directory, behind a trait, so that the writer thread
//! and recovery run unchanged over the real file system (`RealDisk`) or over a disk in
//! memory that tests crash (`MemDisk`, tests only).
//!
//! Invariant of every implementation: an operation that returns `Ok` was done (as far as
//! the OS is concerned); `sync` makes a file's bytes durable, `sync_dir` makes the
//! directory's names (new files, renames, removals) durable. Nothing else is promised
//! across a power loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// The read buffer of recovery: large enough that reading a file costs few system calls.
const READ_BUFFER: usize = 1024 * 1024;

/// The file system as the data directory uses it. Generic (not `dyn`), so that the
/// production path is the direct `std::fs` calls it always was.
pub trait Disk: Send + 'static {
    type File: Send;
    type Reader: io::Read;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` to read it from the start; gives its length.
    fn open_read(&self, path: &Path) -> io::Result<(Self::Reader, u64)>;
    /// Opens `path` to append to it, creating it empty when absent; gives its length.
    fn open_append(&self, path: &Path) -> io::Result<(Self::File, u64)>;
    /// Creates `path` empty (truncating it if it exists), to write it.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Appends all of `bytes` (on error, a part of them may have been written).
    fn write(&self, file: &mut Self::File, bytes: &[u8]) -> io::Result<()>;
    fn truncate(&self, file: &mut Self::File, len: u64) -> io::Result<()>;
    /// Makes the file's bytes durable (`fdatasync`).
    fn sync(&self, file: &mut Self::File) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealDisk;

impl Disk for RealDisk {
    type File = File;
    type Reader = io::BufReader<File>;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        fs::read_dir(dir)?
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    fn open_read(&self, path: &Path) -> io::Result<(Self::Reader, u64)> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok((io::BufReader::with_capacity(READ_BUFFER, file), len))
    }

    fn open_append(&self, path: &Path) -> io::Result<(File, u64)> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok((file, len))
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        File::create(path)
    }

    fn write(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)
    }

    fn truncate(&self, file: &mut File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn sync(&self, file: &mut File) -> io::Result<()> {
        file.sync_data()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
pub use mem::{Crash, Event, MemDisk};

#[cfg(test)]
mod mem {
    //! A disk in memory that models what a crash keeps.
    //!
    //! Per file: the bytes written and the bytes as of its last sync. Per directory (one,
    //! flat): the names, the names as of the last directory sync, and the name changes
    //! since, in order. A *process crash* keeps everything written. A *power loss* keeps
    //! each file's synced bytes plus a prefix (possibly a torn frame) of what was written
    //! after, and the synced names plus a prefix of the later name changes (a file created
    //! or renamed and not made durable by a directory sync may be gone). Operations are
    //! numbered; a chosen one may fail (`ENOSPC`, a write then leaving half its bytes) or
    //! crash the disk (it and every later operation fail, changing nothing).

    use std::collections::{BTreeMap, BTreeSet};
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, MutexGuard};

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::Disk;
    use crate::protocol::journal::Seq;

    /// What the disk saw, in order (and the writer's reports, logged by the test).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Event {
        Write {
            path: PathBuf,
        },
        Sync {
            path: PathBuf,
        },
        /// A name created or renamed to (`linked`), or removed or renamed from.
        Name {
            path: PathBuf,
            linked: bool,
        },
        SyncDir,
        Durable {
            upto: Seq,
        },
    }

    /// How the machine went down.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Crash {
        Process,
        /// With the seed that picks what unsynced state survives.
        PowerLoss(u64),
    }

    #[derive(Clone, Default)]
    struct Inode {
        data: Vec<u8>,
        synced: Vec<u8>,
    }

    #[derive(Default)]
    struct Mem {
        inodes: Vec<Inode>,
        names: BTreeMap<PathBuf, usize>,
        durable_names: BTreeMap<PathBuf, usize>,
        /// Name changes since the last directory sync: a name and its inode (or `None`:
        /// removed).
        unsynced: Vec<(PathBuf, Option<usize>)>,
        ops: u64,
        fail_at: BTreeSet<u64>,
        crash_at: Option<u64>,
        crashed: bool,
        events: Vec<Event>,
    }

    /// A shared disk in memory (clones are the same disk).
    #[derive(Clone, Default)]
    pub struct MemDisk(Arc<Mutex<Mem>>);

    fn enospc() -> io::Error {
        io::Error::from_raw_os_error(28)
    }

    impl Mem {
        /// Numbers an operation; fails it if it is crashed or chosen to fail.
        fn op(&mut self) -> io::Result<()> {
            if self.crashed {
                return Err(io::Error::other("the disk crashed"));
            }
            self.ops += 1;
            if self.crash_at == Some(self.ops) {
                self.crashed = true;
                return Err(io::Error::other("the disk crashed"));
            }
            match self.fail_at.contains(&self.ops) {
                true => Err(enospc()),
                false => Ok(()),
            }
        }

        fn name(&mut self, path: &Path, inode: Option<usize>) {
            match inode {
                Some(i) => self.names.insert(path.to_path_buf(), i),
                None => self.names.remove(path),
            };
            self.unsynced.push((path.to_path_buf(), inode));
            self.events.push(Event::Name {
                path: path.to_path_buf(),
                linked: inode.is_some(),
            });
        }

        fn inode(&self, path: &Path) -> io::Result<usize> {
            (self.names.get(path).copied()).ok_or_else(|| io::ErrorKind::NotFound.into())
        }
    }

    impl MemDisk {
        fn mem(&self) -> MutexGuard<'_, Mem> {
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Fails these operations (numbered from 1 from now on) with `ENOSPC`.
        pub fn fail_at(&self, ops: impl IntoIterator<Item = u64>) {
            let mut mem = self.mem();
            let base = mem.ops;
            mem.fail_at = ops.into_iter().map(|op| base + op).collect();
        }

        /// Crashes the disk at this operation (numbered from 1 from now on).
        pub fn crash_at(&self, op: u64) {
            let mut mem = self.mem();
            mem.crash_at = Some(mem.ops + op);
        }

        /// Crashes the disk now (if it has not crashed yet).
        pub fn crash_now(&self) {
            self.mem().crashed = true;
        }

        pub fn crashed(&self) -> bool {
            self.mem().crashed
        }

        /// Logs a durable report, unless the disk crashed before it: returns whether the
        /// report came before the crash.
        pub fn report(&self, upto: Seq) -> bool {
            let mut mem = self.mem();
            if !mem.crashed {
                mem.events.push(Event::Durable { upto });
            }
            !mem.crashed
        }

        pub fn events(&self) -> Vec<Event> {
            self.mem().events.clone()
        }

        /// The bytes of `path` as they are now.
        pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
            let mem = self.mem();
            let inode = mem.names.get(path)?;
            Some(mem.inodes[*inode].data.clone())
        }

        /// A new disk holding what `crash` keeps of this one (which is crashed, so that
        /// nothing more changes it).
        pub fn after(&self, crash: Crash) -> MemDisk {
            let mut mem = self.mem();
            mem.crashed = true;
            let kept = match crash {
                Crash::Process => mem
                    .names
                    .iter()
                    .map(|(path, &i)| (path.clone(), mem.inodes[i].clone()))
                    .collect(),
                Crash::PowerLoss(seed) => power_loss(&mem, seed),
            };
            let restarted = MemDisk::default();
            {
                let mut new = restarted.mem();
                for (path, inode) in kept {
                    new.inodes.push(inode);
                    let i = new.inodes.len() - 1;
                    new.names.insert(path.clone(), i);
                    new.durable_names.insert(path, i);
                }
            }
            restarted
        }
    }

    /// The names and bytes a power loss keeps.
    fn power_loss(mem: &Mem, seed: u64) -> Vec<(PathBuf, Inode)> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut names = mem.durable_names.clone();
        let changes = rng.random_range(0..=mem.unsynced.len());
        for (path, inode) in &mem.unsynced[..changes] {
            match inode {
                Some(i) => names.insert(path.clone(), *i),
                None => names.remove(path),
            };
        }
        names
            .into_iter()
            .map(|(path, i)| {
                let Inode { data, synced } = &mem.inodes[i];
                let mut kept = synced.clone();
                if data.starts_with(synced) {
                    let extra = rng.random_range(0..=data.len() - synced.len());
                    kept.extend_from_slice(&data[synced.len()..synced.len() + extra]);
                }
                let inode = Inode {
                    data: kept.clone(),
                    synced: kept,
                };
                (path, inode)
            })
            .collect()
    }

    impl Disk for MemDisk {
        /// The inode and the name it was opened by.
        type File = (usize, PathBuf);
        type Reader = io::Cursor<Vec<u8>>;

        fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
            Ok(())
        }

        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            let mem = self.mem();
            Ok((mem.names.keys())
                .filter(|path| path.parent() == Some(dir))
                .filter_map(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
                .collect())
        }

        fn open_read(&self, path: &Path) -> io::Result<(Self::Reader, u64)> {
            let mem = self.mem();
            let data = mem.inodes[mem.inode(path)?].data.clone();
            let len = data.len() as u64;
            Ok((io::Cursor::new(data), len))
        }

        fn open_append(&self, path: &Path) -> io::Result<(Self::File, u64)> {
            let mut mem = self.mem();
            mem.op()?;
            if let Ok(i) = mem.inode(path) {
                return Ok(((i, path.to_path_buf()), mem.inodes[i].data.len() as u64));
            }
            mem.inodes.push(Inode::default());
            let i = mem.inodes.len() - 1;
            mem.name(path, Some(i));
            Ok(((i, path.to_path_buf()), 0))
        }

        fn create(&self, path: &Path) -> io::Result<Self::File> {
            let mut mem = self.mem();
            mem.op()?;
            mem.inodes.push(Inode::default());
            let i = mem.inodes.len() - 1;
            mem.name(path, Some(i));
            Ok((i, path.to_path_buf()))
        }

        fn write(&self, (i, path): &mut Self::File, bytes: &[u8]) -> io::Result<()> {
            let mut mem = self.mem();
            let result = mem.op();
            if result.as_ref().is_err_and(|e| e.raw_os_error() == Some(28)) {
                // A full disk takes part of the write.
                mem.inodes[*i]
                    .data
                    .extend_from_slice(&bytes[..bytes.len() / 2]);
            }
            result?;
            mem.inodes[*i].data.extend_from_slice(bytes);
            mem.events.push(Event::Write { path: path.clone() });
            Ok(())
        }

        fn truncate(&self, (i, _): &mut Self::File, len: u64) -> io::Result<()> {
            let mut mem = self.mem();
            mem.op()?;
            let data = &mut mem.inodes[*i].data;
            data.resize(len as usize, 0);
            Ok(())
        }

        fn sync(&self, (i, path): &mut Self::File) -> io::Result<()> {
            let mut mem = self.mem();
            mem.op()?;
            let inode = &mut mem.inodes[*i];
            inode.synced = inode.data.clone();
            mem.events.push(Event::Sync { path: path.clone() });
            Ok(())
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            let mut mem = self.mem();
            mem.op()?;
            let i = mem.inode(from)?;
            // The new name first: a power loss may keep both, never neither.
            mem.name(to, Some(i));
            mem.name(from, None);
            Ok(())
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            let mut mem = self.mem();
            mem.op()?;
            mem.inode(path)?;
            mem.name(path, None);
            Ok(())
        }

        fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
            let mut mem = self.mem();
            mem.op()?;
            mem.durable_names = mem.names.clone();
            mem.unsynced.clear();
            mem.events.push(Event::SyncDir);
            Ok(())
        }
    }
}
