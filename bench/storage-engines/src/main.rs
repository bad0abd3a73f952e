//! Storage-engine comparison for causalkv's durability work (issue 10).
//!
//! Compares, on causalkv's workload (short keys like `k123456`, 32-byte JSON values and a
//! 24-byte version header: Lamport time u64, writer id u32, flags u32, seq u64):
//!
//! - **fjall**: one keyspace, one `WriteBatch` per group, then `Database::persist(SyncAll)`;
//! - **redb**: one table, one write transaction per group, `Durability::Immediate`;
//! - **log**: an append-only file of `[len u32][crc32 u32][payload]` records, one `pwrite(2)`
//!   and one `fdatasync` per group (group commit); recovery replays it into a `BTreeMap`.
//!   `log` extends the file with `set_len` 64 MiB at a time (as fjall does with its journal),
//!   so an fdatasync need not commit a size change; `log-grow` appends to a growing file.
//!
//! Three experiments: durable write throughput per group size, recovery of 1M keys (open
//! plus full scan, cold and warm page cache) with on-disk size, and churn (puts and deletes
//! over 10,000 keys) with disk bytes against live bytes. Every store lives in a temporary
//! directory under `/tmp` that is removed afterwards.
//!
//! Run with `cargo run --release [-- write|recovery|churn ...]`; environment: `RUNS`
//! (default 3), `SECS` per throughput point (default 5), `CHURN_OPS` (default 10,000,000).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes of version metadata a store entry carries.
const META: usize = 24;
const VALUE: usize = 32;

/// One mutation: a put carries `META + VALUE` bytes, a delete none.
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
}

trait Engine: Sized {
    const NAME: &'static str;
    fn open(dir: &Path) -> Self;
    /// Applies `ops` atomically and returns once they are durable.
    fn commit(&mut self, ops: &[Op]);
    /// Reads every live entry; returns (entries, key + value bytes).
    fn scan(&self) -> (u64, u64);
}

// ---------------------------------------------------------------- fjall

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Engine for Fjall {
    const NAME: &'static str = "fjall";
    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir).open().unwrap();
        let ks = db
            .keyspace("kv", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        Fjall { db, ks }
    }
    fn commit(&mut self, ops: &[Op]) {
        let mut b = self.db.batch();
        for op in ops {
            match op {
                Op::Put(k, v) => b.insert(&self.ks, k.as_slice(), v.as_slice()),
                Op::Del(k) => b.remove(&self.ks, k.as_slice()),
            }
        }
        b.commit().unwrap();
        self.db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    fn scan(&self) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        for g in self.ks.iter() {
            let (k, v) = g.into_inner().unwrap();
            n += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        (n, bytes)
    }
}

// ---------------------------------------------------------------- redb

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

struct Redb {
    db: redb::Database,
}

impl Engine for Redb {
    const NAME: &'static str = "redb";
    fn open(dir: &Path) -> Self {
        Redb {
            db: redb::Database::create(dir.join("store.redb")).unwrap(),
        }
    }
    fn commit(&mut self, ops: &[Op]) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(redb::Durability::Immediate).unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for op in ops {
                match op {
                    Op::Put(k, v) => drop(t.insert(k.as_slice(), v.as_slice()).unwrap()),
                    Op::Del(k) => drop(t.remove(k.as_slice()).unwrap()),
                }
            }
        }
        tx.commit().unwrap();
    }
    fn scan(&self) -> (u64, u64) {
        use redb::{ReadableDatabase, ReadableTable};
        let rx = self.db.begin_read().unwrap();
        let t = match rx.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return (0, 0),
            Err(e) => panic!("{e}"),
        };
        let (mut n, mut bytes) = (0, 0);
        for r in t.iter().unwrap() {
            let (k, v) = r.unwrap();
            n += 1;
            bytes += (k.value().len() + v.value().len()) as u64;
        }
        (n, bytes)
    }
}

// ---------------------------------------------------------------- append-only log

/// Record payload: `[op u8][key len u8][key][meta + value]` (a delete has no meta/value).
/// With `PREALLOC`, the file is extended in steps of `STEP` zero bytes and replay stops at
/// the first zero length.
struct Log<const PREALLOC: bool> {
    file: File,
    /// End of the valid records.
    pos: u64,
    buf: Vec<u8>,
    map: BTreeMap<Box<[u8]>, Box<[u8]>>,
}

const STEP: u64 = 64 << 20;

impl<const PREALLOC: bool> Log<PREALLOC> {
    fn encode(buf: &mut Vec<u8>, op: &Op) {
        let (tag, k, v): (u8, &[u8], &[u8]) = match op {
            Op::Put(k, v) => (1, k, v),
            Op::Del(k) => (2, k, &[]),
        };
        let start = buf.len();
        buf.extend_from_slice(&[0; 8]);
        buf.push(tag);
        buf.push(k.len() as u8);
        buf.extend_from_slice(k);
        buf.extend_from_slice(v);
        let len = (buf.len() - start - 8) as u32;
        let crc = crc32fast::hash(&buf[start + 8..]);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

impl<const PREALLOC: bool> Engine for Log<PREALLOC> {
    const NAME: &'static str = if PREALLOC { "log" } else { "log-grow" };
    fn open(dir: &Path) -> Self {
        let path = dir.join("wal.log");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let mut data = Vec::new();
        file.read_to_end(&mut data).unwrap();
        let mut map = BTreeMap::new();
        let mut at = 0;
        while at + 8 <= data.len() {
            let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap());
            let Some(p) = data.get(at + 8..at + 8 + len) else {
                break;
            };
            if len == 0 || crc32fast::hash(p) != crc {
                break; // torn tail; a real store would truncate here
            }
            let klen = 2 + p[1] as usize;
            let key: Box<[u8]> = p[2..klen].into();
            match p[0] {
                1 => drop(map.insert(key, p[klen..].into())),
                _ => drop(map.remove(&key)),
            }
            at += 8 + len;
        }
        Log {
            file,
            pos: at as u64,
            buf: Vec::new(),
            map,
        }
    }
    fn commit(&mut self, ops: &[Op]) {
        use std::os::unix::fs::FileExt;
        self.buf.clear();
        for op in ops {
            Self::encode(&mut self.buf, op);
        }
        let end = self.pos + self.buf.len() as u64;
        if PREALLOC && end > self.file.metadata().unwrap().len() {
            self.file.set_len(end.next_multiple_of(STEP)).unwrap();
            self.file.sync_all().unwrap();
        }
        self.file.write_all_at(&self.buf, self.pos).unwrap();
        self.pos = end;
        self.file.sync_data().unwrap();
        // Stand-in for causalkv's in-memory store, which the log backs.
        for op in ops {
            match op {
                Op::Put(k, v) => drop(self.map.insert(k.as_slice().into(), v.as_slice().into())),
                Op::Del(k) => drop(self.map.remove(k.as_slice())),
            }
        }
    }
    fn scan(&self) -> (u64, u64) {
        let bytes = self
            .map
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        (self.map.len() as u64, bytes)
    }
}

// ---------------------------------------------------------------- workload helpers

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("k{i:06}").into_bytes()
}

/// Version header plus a 32-byte JSON string value.
fn value(seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(META + VALUE);
    v.extend_from_slice(&(seq * 3).to_le_bytes()); // Lamport time
    v.extend_from_slice(&7u32.to_le_bytes()); // writer id
    v.extend_from_slice(&0u32.to_le_bytes()); // flags
    v.extend_from_slice(&seq.to_le_bytes()); // sequence number
    v.extend_from_slice(format!("\"value-{seq:024}\"").as_bytes());
    debug_assert_eq!(v.len(), META + VALUE);
    v
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("causalkv-engines-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            walk(&e.path(), f);
        } else {
            f(&e.path(), &m);
        }
    }
}

/// (apparent bytes, allocated bytes) of every file under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    let (mut len, mut alloc) = (0, 0);
    walk(dir, &mut |_, m| {
        len += m.len();
        alloc += m.blocks() * 512;
    });
    (len, alloc)
}

/// Writes back and evicts every file under `dir` from the page cache (no root needed).
fn evict(dir: &Path) {
    walk(dir, &mut |p, _| {
        let f = File::open(p).unwrap();
        f.sync_all().unwrap();
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    });
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

// ---------------------------------------------------------------- experiments

/// One writer thread committing groups of `batch` puts over 1,000 keys for `secs`.
/// Returns (writes/s, p50 ms, p99 ms) of the commit-plus-sync latency.
fn write_once<E: Engine>(batch: usize, secs: u64) -> (f64, f64, f64) {
    let dir = TempDir::new(E::NAME);
    let mut e = E::open(&dir.0);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut lat, mut seq) = (Vec::new(), 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let ops: Vec<Op> = (0..batch)
            .map(|_| {
                seq += 1;
                Op::Put(key(rng.below(1000)), value(seq))
            })
            .collect();
        let t = Instant::now();
        e.commit(&ops);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rate = seq as f64 / start.elapsed().as_secs_f64();
    drop(e);
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    (rate, pct(0.50), pct(0.99))
}

/// Runs are interleaved across engines so that a slow spell of the disk hits them all.
fn write(runs: u64, secs: u64) {
    type Run = fn(usize, u64) -> (f64, f64, f64);
    let engines: [(&str, Run); 4] = [
        (Fjall::NAME, write_once::<Fjall>),
        (Redb::NAME, write_once::<Redb>),
        (Log::<true>::NAME, write_once::<Log<true>>),
        (Log::<false>::NAME, write_once::<Log<false>>),
    ];
    for batch in [1, 16, 256] {
        let mut rs = vec![Vec::new(); engines.len()];
        for _ in 0..runs {
            for (i, (_, run)) in engines.iter().enumerate() {
                rs[i].push(run(batch, secs));
            }
        }
        for ((name, _), rs) in engines.iter().zip(rs) {
            write_report(name, batch, &rs);
        }
    }
}

fn write_report(name: &str, batch: usize, rs: &[(f64, f64, f64)]) {
    let all = |i: usize| rs.iter().map(|r| [r.0, r.1, r.2][i]).collect::<Vec<_>>();
    let rates = all(0);
    println!(
        "write  {:8} batch {:3}: {:>9.0} writes/s (runs {}), sync p50 {:.2} ms, p99 {:.2} ms",
        name,
        batch,
        median(rates.clone()),
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join("/"),
        median(all(1)),
        median(all(2)),
    );
}

fn recovery<E: Engine>(runs: u64) {
    const N: u64 = 1_000_000;
    let dir = TempDir::new(E::NAME);
    let t = Instant::now();
    {
        let mut e = E::open(&dir.0);
        let mut rng = Rng(42);
        let mut order: Vec<u64> = (0..N).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for chunk in order.chunks(10_000) {
            let ops: Vec<Op> = chunk.iter().map(|&i| Op::Put(key(i), value(i))).collect();
            e.commit(&ops);
        }
    }
    let load = t.elapsed().as_secs_f64();
    let raw = N * (7 + VALUE + META) as u64;
    let (len, alloc) = disk_usage(&dir.0);
    println!(
        "recov  {:5} load 1M (random order, 10k/sync) {:.1} s; disk {:.1} MiB apparent, {:.1} MiB allocated, {:.2}x raw {:.1} MiB",
        E::NAME, load, mib(len), mib(alloc), alloc as f64 / raw as f64, mib(raw)
    );
    for cold in [true, false] {
        let (mut opens, mut scans) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            if cold {
                evict(&dir.0);
            }
            let t = Instant::now();
            let e = E::open(&dir.0);
            let open = t.elapsed().as_secs_f64();
            let (n, _) = e.scan();
            assert_eq!(n, N);
            opens.push(open);
            scans.push(t.elapsed().as_secs_f64() - open);
        }
        println!(
            "recov  {:5} {} cache: open {:.3} s + scan {:.3} s = {:.3} s (medians of {runs})",
            E::NAME,
            if cold { "cold" } else { "warm" },
            median(opens.clone()),
            median(scans.clone()),
            median(opens.iter().zip(&scans).map(|(a, b)| a + b).collect()),
        );
    }
    if E::NAME == Fjall::NAME {
        // The same store once its memtable is flushed, so the journal no longer holds it.
        let e = Fjall::open(&dir.0);
        e.ks.rotate_memtable_and_wait().unwrap();
        drop(e);
        evict(&dir.0);
        let t = Instant::now();
        let e = Fjall::open(&dir.0);
        let open = t.elapsed().as_secs_f64();
        assert_eq!(e.scan().0, N);
        let journal = e.db.journal_disk_space().unwrap();
        drop(e);
        println!(
            "recov  fjall flushed, cold: open {:.3} s, open + scan {:.3} s; disk {:.1} MiB ({:.1} MiB journal)",
            open, t.elapsed().as_secs_f64(), mib(disk_usage(&dir.0).1), mib(journal)
        );
    }
    let (len, alloc) = disk_usage(&dir.0);
    println!(
        "recov  {:5} disk after reopens: {:.1} MiB apparent, {:.1} MiB allocated",
        E::NAME,
        mib(len),
        mib(alloc)
    );
}

/// Puts and deletes (50/50) over 10,000 keys, 256 per sync.
fn churn<E: Engine>(ops_total: u64) {
    let dir = TempDir::new(E::NAME);
    let mut rng = Rng(7);
    let t = Instant::now();
    let (n, bytes) = {
        let mut e = E::open(&dir.0);
        let mut done = 0;
        while done < ops_total {
            let ops: Vec<Op> = (0..256)
                .map(|_| {
                    done += 1;
                    let k = key(rng.below(10_000));
                    if rng.below(2) == 0 {
                        Op::Put(k, value(done))
                    } else {
                        Op::Del(k)
                    }
                })
                .collect();
            e.commit(&ops);
        }
        let (_, open_alloc) = disk_usage(&dir.0);
        println!(
            "churn  {:5} disk while open at the end: {:.1} MiB",
            E::NAME,
            mib(open_alloc)
        );
        e.scan()
    };
    let secs = t.elapsed().as_secs_f64();
    let (_, alloc) = disk_usage(&dir.0);
    let live = n * (7 + VALUE + META) as u64;
    println!(
        "churn  {:5} {} ops in {:.1} s ({:.0}/s): {} live keys = {:.2} MiB live ({} B k+v read), disk after close {:.1} MiB = {:.1}x live",
        E::NAME, ops_total, secs, ops_total as f64 / secs, n, mib(live), bytes, mib(alloc), alloc as f64 / live as f64
    );
    // Space an engine gives back when reopened (fjall may compact in the background, the
    // log replays), plus each engine's explicit compaction where one exists.
    let e = E::open(&dir.0);
    std::thread::sleep(Duration::from_secs(2));
    let (_, reopened) = disk_usage(&dir.0);
    drop(e);
    println!(
        "churn  {:5} disk after reopen + 2 s: {:.1} MiB",
        E::NAME,
        mib(reopened)
    );
    if E::NAME == Fjall::NAME {
        let e = Fjall::open(&dir.0);
        println!(
            "churn  fjall journal {:.1} MiB of that",
            mib(e.db.journal_disk_space().unwrap())
        );
    }
    compact_report::<E>(&dir.0, live);
}

fn compact_report<E: Engine>(dir: &Path, live: u64) {
    let after = match E::NAME {
        "redb" => {
            let mut db = redb::Database::create(dir.join("store.redb")).unwrap();
            while db.compact().unwrap() {}
            drop(db);
            disk_usage(dir).1
        }
        "fjall" => {
            let e = Fjall::open(dir);
            e.ks.rotate_memtable_and_wait().unwrap();
            e.ks.major_compact().unwrap();
            drop(e);
            disk_usage(dir).1
        }
        _ => {
            // What a compaction (a snapshot of the live entries) would write.
            let log = Log::<true>::open(dir);
            let mut buf = Vec::new();
            for (k, v) in &log.map {
                Log::<true>::encode(&mut buf, &Op::Put(k.to_vec(), v.to_vec()));
            }
            buf.len() as u64
        }
    };
    println!("churn  {:5} after flush + explicit compaction (log: a snapshot of the live entries): {:.2} MiB = {:.2}x live", E::NAME, mib(after), after as f64 / live as f64);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let (runs, secs, churn_ops) = (env("RUNS", 3), env("SECS", 5), env("CHURN_OPS", 10_000_000));
    println!("tmp dir: {}", std::env::temp_dir().display());
    macro_rules! each {
        ($f:ident($($a:expr),*)) => {{
            $f::<Fjall>($($a),*);
            $f::<Redb>($($a),*);
            $f::<Log<true>>($($a),*);
        }};
    }
    if want("write") {
        write(runs, secs);
    }
    if want("recovery") {
        each!(recovery(runs));
    }
    if want("churn") {
        each!(churn(churn_ops));
    }
}
