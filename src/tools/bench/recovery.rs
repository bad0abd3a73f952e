//! How a restarted replica came back, as `causalkv bench --scale` measures it beyond the
//! sessions' checks: when `/health` counts every key, a read of every key (spread over
//! the replicas given), and, for a replica with a data directory, what its log says of
//! the recovery (when it had read and decoded its data directory, when it had written the
//! fresh snapshot that every start writes before serving).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;

use super::scrape;
use crate::tools::client::{Client, Metadata, Outcome};

/// Interval of `/health` polls.
const POLL: Duration = Duration::from_millis(20);
const RECOVERED: &str = "recovered the data directory";
const SNAPSHOT: &str = "wrote a snapshot";

/// A read of every key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    pub keys: u64,
    /// Keys answered with a value of the expected size.
    pub served: u64,
    pub seconds: f64,
}

/// What a replica's log says of its recovery from its data directory, in seconds since
/// its process was started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoveryLog {
    /// The data directory was read, decoded and applied (`recovered the data directory`).
    pub recovered_s: Option<f64>,
    pub records: Option<u64>,
    pub keys: Option<u64>,
    /// A snapshot was written (`wrote a snapshot`): a restart serves without one, and
    /// compacts once early, so this is after it serves, when it happens at all.
    pub snapshot_s: Option<f64>,
    pub snapshot_bytes: Option<u64>,
}

/// Polls `addr`'s `/health` until it counts at least `keys` keys (true) or `deadline`.
pub async fn until_every_key(client: &Client, addr: &str, keys: u64, deadline: Instant) -> bool {
    loop {
        if scrape::keys_held(client, addr)
            .await
            .is_some_and(|n| n >= keys)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Reads every key once, key `i` at `addrs[i % addrs.len()]`, with `concurrency` readers,
/// until done or `deadline`.
pub async fn scan(
    client: &Client,
    addrs: &[String],
    keys: &Arc<[String]>,
    value_size: usize,
    concurrency: usize,
    deadline: Instant,
) -> Scan {
    let started = Instant::now();
    let served = Arc::new(AtomicU64::new(0));
    let addrs: Arc<[String]> = addrs.iter().cloned().collect();
    let stride = concurrency.max(1);
    let mut readers = JoinSet::new();
    for first in 0..stride {
        let (client, addrs, keys, served) =
            (client.clone(), addrs.clone(), keys.clone(), served.clone());
        readers.spawn(async move {
            for index in (first..keys.len()).step_by(stride) {
                if Instant::now() >= deadline {
                    return;
                }
                let addr = &addrs[index % addrs.len().max(1)];
                if serves(&client, addr, &keys[index], value_size).await {
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while readers.join_next().await.is_some() {}
    Scan {
        keys: keys.len() as u64,
        served: served.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// True when `addr` answers `key` with a string of `value_size` characters.
async fn serves(client: &Client, addr: &str, key: &str, value_size: usize) -> bool {
    matches!(
        client.get(addr, key, &Metadata::default()).await,
        Ok(reply) if matches!(&reply.outcome, Outcome::Found(Value::String(s)) if s.len() == value_size)
    )
}

impl RecoveryLog {
    /// Reads the last life in a replica's log (the text after its last `=====` start
    /// header), started at `started`.
    pub fn of(log: &str, started: SystemTime) -> RecoveryLog {
        let life = log.rsplit_once("\n=====").map_or(log, |(_, life)| life);
        let line = |needle: &str| life.lines().find(|l| l.contains(needle));
        let at = |line: Option<&str>| line.and_then(|l| seconds_since(l, started));
        let (recovered, snapshot) = (line(RECOVERED), line(SNAPSHOT));
        RecoveryLog {
            recovered_s: at(recovered),
            records: recovered.and_then(|l| field(l, "records")),
            keys: recovered.and_then(|l| field(l, "keys")),
            snapshot_s: at(snapshot),
            snapshot_bytes: snapshot.and_then(|l| field(l, "bytes")),
        }
    }
}

/// Seconds from `started` to the timestamp that opens a log line (RFC 3339).
fn seconds_since(line: &str, started: SystemTime) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let at = humantime::parse_rfc3339_weak(stamp).ok()?;
    Some(at.duration_since(started).ok()?.as_secs_f64())
}

/// The number of a `name=N` field of a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_life_of_a_log_tells_its_recovery() {
        let log = "===== scale replica 2 at 127.0.0.1:9: start #1 =====\n\
            2026-01-01T00:00:00.100000Z  INFO causalkv::server::node: recovered the data directory dir=/d records=0 keys=0 fsync=Interval\n\
            ===== scale replica 2 at 127.0.0.1:9: start #2 =====\n\
            2026-01-01T00:01:00.500000Z  INFO causalkv::server::node: recovered the data directory dir=/d records=1200 keys=1000 fsync=Interval\n\
            2026-01-01T00:01:00.750000Z  INFO causalkv::server::storage: wrote a snapshot and started a new journal generation=3 records=1001 bytes=64000\n";
        let started = humantime::parse_rfc3339("2026-01-01T00:01:00Z").expect("a time");
        let recovery = RecoveryLog::of(log, started);
        assert_eq!(recovery.records, Some(1200));
        assert_eq!(recovery.keys, Some(1000));
        assert_eq!(recovery.snapshot_bytes, Some(64000));
        let recovered = recovery.recovered_s.expect("recovered");
        assert!((recovered - 0.5).abs() < 1e-6, "{recovered}");
        let snapshot = recovery.snapshot_s.expect("snapshot");
        assert!((snapshot - 0.75).abs() < 1e-6, "{snapshot}");
        assert_eq!(RecoveryLog::of("", started), RecoveryLog::default());
    }
}
