//! Bounded growth under churn: puts and deletes over a fixed set of keys, on a replica
//! with a data directory, must leave the store and the disk within twice what the live
//! data needs (tombstones collected, the journal compacted into snapshots), and the
//! process's memory must not grow with the number of operations.
//!
//! The replica is served in process (no HTTP: the load is the store's, not the
//! network's) and is alone in its view, so a tombstone may go as soon as the next
//! probe round sees its delete applied (with peers the same rounds wait for their
//! clocks; `tools::sim` and `machine::tombstones` cover that rule).
//!
//! `churn_stays_bounded` runs a short churn in every test run. `bench/churn.sh` runs
//! the long one of the durability issue (10 million operations over 10,000 keys) through
//! the same code, with `CHURN_OPS`, `CHURN_KEYS`, `CHURN_VALUE_BYTES`, and
//! `CHURN_REPORT` (a file to write the measurements to, as JSON).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use causalkv::protocol::causal::Clock;
use causalkv::protocol::machine::{Reply, Request};
use causalkv::protocol::store::{Key, Value};
use causalkv::server::config::{Config, ServeArgs};
use causalkv::server::node::Node;
use causalkv::tools::bench::scale::Memory;
use clap::Parser;
use serde_json::value::RawValue;

/// The allocator the server binary uses, so that memory is measured as it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// Concurrent clients of the churn.
const CLIENTS: u64 = 16;
/// Longest wait for the replica to settle (tombstones collected, journal compacted).
const SETTLE: Duration = Duration::from_secs(60);

fn config(dir: &Path) -> Config {
    let dir = dir.to_string_lossy().into_owned();
    let args = [
        "churn",
        "--listen",
        "127.0.0.1:1",
        "--view",
        "127.0.0.1:1",
        "--data-dir",
        &dir,
        "--heartbeat-interval",
        "50ms",
    ];
    let args = Cli::try_parse_from(args).expect("valid flags").serve;
    args.validate().expect("valid configuration")
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    Memory::of(std::process::id()).map_or(0, |m| m.rss_kib * 1024)
}

fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A key of the churn (fixed width, so that every key costs the same).
fn key(i: u64) -> Key {
    Key::from(format!("churn-{i:08}"))
}

fn value(tag: u64, bytes: usize) -> Value {
    let text = format!("\"{tag:016x}{}\"", "v".repeat(bytes.saturating_sub(16)));
    Value::from(RawValue::from_string(text).expect("a JSON string"))
}

/// A client's share of the churn: puts and deletes, half and half, over every key.
async fn client(node: Arc<Node>, id: u64, ops: u64, keys: u64, bytes: usize) {
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for op in 0..ops {
        // xorshift64: enough spread, no dependency.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = key(x % keys);
        let deps = Clock::new();
        let request = match op % 2 {
            0 => Request::Put {
                key,
                value: value(x, bytes),
                deps,
            },
            _ => Request::Delete { key, deps },
        };
        match node.kvs(request).await {
            Reply::Failed(error) => panic!("a write failed: {error}"),
            _ => continue,
        }
    }
}

/// Runs `ops` operations from `CLIENTS` clients (ids from `first_id` on), to the end.
async fn run_clients(node: &Arc<Node>, first_id: u64, ops: u64, keys: u64, bytes: usize) {
    let clients: Vec<_> = (first_id..first_id + CLIENTS)
        .map(|id| tokio::spawn(client(node.clone(), id, ops / CLIENTS, keys, bytes)))
        .collect();
    for c in clients {
        c.await.expect("a client finished");
    }
}

/// What a churn run measured.
#[derive(Debug, serde::Serialize)]
struct Measured {
    ops: u64,
    keys: u64,
    value_bytes: usize,
    seconds: f64,
    live_keys: usize,
    /// Bytes of the live keys and values.
    live_bytes: u64,
    store_bytes: usize,
    tombstones: usize,
    /// Resident memory grown since the replica was up and empty, at the end...
    memory_bytes: u64,
    /// ... and after the first quarter of the churn.
    memory_bytes_at_a_quarter: u64,
    disk_bytes: u64,
}

fn churn(dir: &Path, ops: u64, keys: u64, bytes: usize) -> Measured {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let node = Node::new(config(dir)).expect("a replica");
        causalkv::server::node::start(&node);
        let deadline = Instant::now() + SETTLE;
        while !node.is_ready() {
            assert!(Instant::now() < deadline, "not ready within {SETTLE:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // What an empty replica takes (runtime, threads, buffers) is not the data's.
        let before = resident_bytes();
        let started = Instant::now();
        // A quarter of the churn, then the rest: memory must not grow with the count.
        run_clients(&node, 0, ops / 4, keys, bytes).await;
        let quarter = resident_bytes().saturating_sub(before);
        run_clients(&node, CLIENTS, ops - ops / 4, keys, bytes).await;
        let seconds = started.elapsed().as_secs_f64();
        let settled = settle(&node, dir).await;
        let health = node.health();
        let live_bytes = health.keys as u64 * (key(0).len() + value(0, bytes).get().len()) as u64;
        Measured {
            ops,
            keys,
            value_bytes: bytes,
            seconds,
            live_keys: health.keys,
            live_bytes,
            store_bytes: health.store_bytes,
            tombstones: health.tombstones,
            memory_bytes: resident_bytes().saturating_sub(before),
            memory_bytes_at_a_quarter: quarter,
            disk_bytes: settled,
        }
    })
}

/// Waits until every tombstone is collected and the journal was compacted after the
/// last of them (the disk stops shrinking); returns the disk's size then.
async fn settle(node: &Node, dir: &Path) -> u64 {
    let deadline = Instant::now() + SETTLE;
    let mut last = u64::MAX;
    loop {
        let disk = disk_bytes(dir);
        let done = node.health().tombstones == 0 && disk == last;
        if done || Instant::now() >= deadline {
            return disk;
        }
        last = disk;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("causalkv-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn churn_stays_bounded() {
    let ops = env_or("CHURN_OPS", 200_000);
    let keys = env_or("CHURN_KEYS", 10_000);
    let bytes = env_or("CHURN_VALUE_BYTES", 1024) as usize;
    let dir = temp_dir("churn");
    let m = churn(&dir, ops, keys, bytes);
    let text = serde_json::to_string_pretty(&m).expect("measurements as JSON");
    println!("{text}");
    if let Ok(path) = std::env::var("CHURN_REPORT") {
        std::fs::write(&path, &text).expect("the report written");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        m.tombstones, 0,
        "every tombstone collected once the churn stopped"
    );
    let live = m.live_bytes.max(1);
    assert!(
        m.disk_bytes <= 2 * live,
        "disk {} B is more than twice the live data ({live} B)",
        m.disk_bytes
    );
    assert!(
        m.store_bytes as u64 <= 2 * live,
        "the store holds {} B for {live} B of live data",
        m.store_bytes
    );
    // The process's own caches (allocator pages, buffers) are a few MiB whatever the
    // data: what must hold is that they do not grow with the churn.
    let slack = (live / 2).max(4 << 20);
    assert!(
        m.memory_bytes <= m.memory_bytes_at_a_quarter + slack,
        "memory grew from {} B after a quarter of the churn to {} B at its end",
        m.memory_bytes_at_a_quarter,
        m.memory_bytes
    );
}
