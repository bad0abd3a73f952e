//! The end of a run: read every key used from every replica until they all agree.
//!
//! After the workload, [`collect`] reads each key from each replica with `null` metadata
//! (no dependencies: any replica may answer at once), in rounds, until one round finds
//! every replica readable and holding the same value (or absence) for every key, or the
//! settle deadline passes. The last round is the [`FinalState`] the checker judges; the
//! time from the call until the agreeing round ended is the convergence time.
//!
//! Bounded: each round sends at most `keys × replicas` requests, [`READERS_PER_REPLICA`]
//! at once per replica, each with the client's timeout; a reader stops at its first
//! failure (that round cannot agree); no round starts after the deadline (the first one
//! always runs).
//! Requests go only to the replicas given.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::tools::client::{Client, ClientError, Metadata, Outcome};

/// Concurrent readers per replica during a round.
pub const READERS_PER_REPLICA: usize = 8;
/// Pause between two rounds that did not agree.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// What a replica held for one key at the end.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalRead {
    Value(Value),
    Absent,
    /// The read failed (no answer, 503, unexpected answer).
    Failed(String),
}

impl fmt::Display for FinalRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FinalRead::Value(value) => write!(f, "{value}"),
            FinalRead::Absent => f.write_str("absent"),
            FinalRead::Failed(error) => write!(f, "failed ({error})"),
        }
    }
}

/// Every replica's answer for every key used, at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FinalState {
    /// Replica → key → what it held.
    pub reads: BTreeMap<String, BTreeMap<String, FinalRead>>,
    /// How long after [`collect`] began all replicas agreed; `None` if they never did
    /// before the deadline.
    pub converged_after: Option<Duration>,
    /// Rounds of reads made.
    pub rounds: u32,
}

impl FinalState {
    /// True when every replica was readable and all hold the same store.
    pub fn agrees(&self) -> bool {
        let mut stores = self.reads.values();
        let Some(first) = stores.next() else {
            return true;
        };
        let readable = |store: &BTreeMap<String, FinalRead>| {
            store
                .values()
                .all(|read| !matches!(read, FinalRead::Failed(_)))
        };
        readable(first) && stores.all(|store| store == first)
    }
}

/// Reads `keys` from every replica in rounds until they agree or `settle` has passed.
pub async fn collect(
    client: &Client,
    replicas: &[String],
    keys: &[String],
    settle: Duration,
) -> FinalState {
    let began = Instant::now();
    let deadline = began + settle;
    let keys: Arc<[String]> = keys.into();
    let mut rounds = 0;
    loop {
        let reads = read_round(client, replicas, &keys).await;
        rounds += 1;
        let mut state = FinalState {
            reads,
            converged_after: None,
            rounds,
        };
        if state.agrees() {
            state.converged_after = Some(began.elapsed());
            return state;
        }
        if Instant::now() + ROUND_PAUSE >= deadline {
            return state;
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

/// One round: every key from every replica.
async fn read_round(
    client: &Client,
    replicas: &[String],
    keys: &Arc<[String]>,
) -> BTreeMap<String, BTreeMap<String, FinalRead>> {
    let mut tasks = JoinSet::new();
    for replica in replicas {
        for reader in 0..READERS_PER_REPLICA {
            let (client, replica, keys) = (client.clone(), replica.clone(), Arc::clone(keys));
            tasks.spawn(async move {
                let mine = keys.iter().skip(reader).step_by(READERS_PER_REPLICA);
                let held = read_keys(&client, &replica, mine).await;
                (replica, held)
            });
        }
    }
    let mut reads: BTreeMap<String, BTreeMap<String, FinalRead>> = replicas
        .iter()
        .map(|replica| (replica.clone(), BTreeMap::new()))
        .collect();
    while let Some(joined) = tasks.join_next().await {
        // A reader task only awaits requests; it cannot panic short of a bug in them.
        if let Ok((replica, held)) = joined {
            reads.entry(replica).or_default().extend(held);
        }
    }
    fill_missing(&mut reads, keys);
    reads
}

/// Marks as failed any key a (panicked) reader did not report.
fn fill_missing(reads: &mut BTreeMap<String, BTreeMap<String, FinalRead>>, keys: &[String]) {
    for store in reads.values_mut() {
        for key in keys {
            store
                .entry(key.clone())
                .or_insert_with(|| FinalRead::Failed("not read".into()));
        }
    }
}

/// Reads `keys` from `replica` one after the other. After the first failure the rest are
/// marked failed unread: the round cannot agree anyway, and a silent replica then costs
/// one timeout per reader rather than one per key.
async fn read_keys<'k>(
    client: &Client,
    replica: &str,
    keys: impl Iterator<Item = &'k String>,
) -> Vec<(String, FinalRead)> {
    let mut held = Vec::new();
    let mut first_failure: Option<String> = None;
    for key in keys {
        let read = match &first_failure {
            Some(error) => FinalRead::Failed(format!("not read after: {error}")),
            None => read_one(client, replica, key).await,
        };
        if let (None, FinalRead::Failed(error)) = (&first_failure, &read) {
            first_failure = Some(error.clone());
        }
        held.push((key.clone(), read));
    }
    held
}

/// One key from one replica, with no dependencies.
async fn read_one(client: &Client, replica: &str, key: &str) -> FinalRead {
    match client.get(replica, key, &Metadata::default()).await {
        Ok(reply) => match reply.outcome {
            Outcome::Found(value) => FinalRead::Value(value),
            other => FinalRead::Failed(format!("unexpected outcome {other:?}")),
        },
        Err(ClientError::NotFound { .. }) => FinalRead::Absent,
        Err(error) => FinalRead::Failed(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(pairs: &[(&str, FinalRead)]) -> BTreeMap<String, FinalRead> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn identical_readable_stores_agree() {
        let a = store(&[
            ("k", FinalRead::Value(json!("v"))),
            ("j", FinalRead::Absent),
        ]);
        let mut state = FinalState::default();
        assert!(state.agrees(), "no replicas: nothing to disagree on");
        state.reads.insert("r1".into(), a.clone());
        state.reads.insert("r2".into(), a);
        assert!(state.agrees());
    }

    #[test]
    fn differences_or_failures_disagree() {
        let a = store(&[("k", FinalRead::Value(json!("v")))]);
        let b = store(&[("k", FinalRead::Absent)]);
        let failed = store(&[("k", FinalRead::Failed("down".into()))]);
        let two = |x: &BTreeMap<_, _>, y: &BTreeMap<_, _>| FinalState {
            reads: [("r1".into(), x.clone()), ("r2".into(), y.clone())].into(),
            ..FinalState::default()
        };
        assert!(!two(&a, &b).agrees());
        assert!(!two(&failed, &failed).agrees());
    }

    #[tokio::test]
    async fn unreachable_replicas_are_reported_failed_within_the_deadline() {
        let client = Client::new(Duration::from_millis(200)).unwrap();
        // Port 1 on loopback: nothing listens there, connections are refused at once.
        let replicas = vec!["127.0.0.1:1".to_string()];
        let keys = vec!["a".to_string(), "b".to_string()];
        let state = collect(&client, &replicas, &keys, Duration::ZERO).await;
        assert_eq!(state.rounds, 1);
        assert_eq!(state.converged_after, None);
        let held = &state.reads["127.0.0.1:1"];
        assert_eq!(held.len(), 2);
        assert!(held.values().all(|r| matches!(r, FinalRead::Failed(_))));
    }
}
