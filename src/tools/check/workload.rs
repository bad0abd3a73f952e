//! The randomized session workload and its recorder.
//!
//! [`run`] starts `sessions` concurrent client sessions. Each is a sequential loop that,
//! until the duration or its share of the op budget is spent, picks a replica at random
//! (sessions move between replicas), picks an operation, sends it with the causal
//! metadata of the latest answer it received (a 404's too, when it carries one), and
//! records the request and its answer as an [`Op`]. Nothing is retried: a 503 or a
//! failure is recorded and the session goes on, its metadata unchanged (after a refused
//! connection, it pauses briefly first).
//!
//! Operations: PUT of a unique value (`"s3-17"`: session 3, op 17) to one of a few shared
//! keys (so there are overwrites and concurrent writes), GET of a shared key, DELETE of a
//! shared key (rarer), PUT of a fresh write-once key (written once by one op, never
//! overwritten or deleted), and GET of a write-once key some session has written (or is
//! writing). Keys carry a per-run tag, so runs against one cluster never see each other.
//!
//! Bounded: by duration, by op count, and by the client's per-request timeout; requests go
//! only to the replicas given. The choices are reproducible from the seed (the timing and
//! therefore the answers are not).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::history::{History, Op, OpKind, Status};
use crate::tools::client::{Client, ClientError, Metadata, Outcome, Reply};

/// Pause of a session after a replica refused its connection, so that a down replica does
/// not turn the session into a busy loop that spends the op budget on refusals.
const REFUSED_PAUSE: Duration = Duration::from_millis(20);

/// What a workload does.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Replicas to send requests to, `IP:PORT`.
    pub replicas: Vec<String>,
    /// Concurrent sessions.
    pub sessions: u32,
    /// How long sessions keep issuing requests.
    pub duration: Duration,
    /// Most operations in total (each session gets an equal share).
    pub max_ops: u64,
    /// Number of shared keys.
    pub keys: u32,
    /// Seed of the sessions' random choices.
    pub seed: u64,
    /// Tag prefixed to every key, unique to the run.
    pub run_tag: String,
}

impl WorkloadConfig {
    /// The shared keys.
    pub fn shared_keys(&self) -> Vec<String> {
        (0..self.keys.max(1))
            .map(|k| format!("{}-k{k}", self.run_tag))
            .collect()
    }

    fn ops_per_session(&self) -> u64 {
        self.max_ops.div_ceil(u64::from(self.sessions.max(1)))
    }
}

/// A run tag from the clock and process id: `ck` and 8 hex digits.
pub fn fresh_run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = SplitMix64::new(nanos ^ u64::from(std::process::id())).next_u64();
    format!("ck{:08x}", mixed as u32)
}

/// A small, seedable pseudo-random generator (SplitMix64): reproducible across versions.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`; the modulo bias is negligible for small `n`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// One planned request.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    Put { key: String, once: bool },
    Get { key: String },
    Delete { key: String },
}

/// What every session shares.
struct Shared {
    client: Client,
    config: WorkloadConfig,
    keys: Vec<String>,
    /// Write-once keys whose PUT has been sent.
    once_keys: Mutex<Vec<String>>,
    origin: Instant,
    deadline: Instant,
}

impl Shared {
    fn micros(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

/// Runs the workload; returns every operation with its answer.
pub async fn run(client: &Client, config: &WorkloadConfig) -> History {
    let origin = Instant::now();
    let shared = Arc::new(Shared {
        client: client.clone(),
        config: config.clone(),
        keys: config.shared_keys(),
        once_keys: Mutex::new(Vec::new()),
        origin,
        deadline: origin + config.duration,
    });
    let mut tasks = JoinSet::new();
    for session in 0..config.sessions {
        tasks.spawn(run_session(Arc::clone(&shared), session));
    }
    let mut ops = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        // A session only awaits requests and records them; a panic there is a bug.
        if let Ok(session_ops) = joined {
            ops.extend(session_ops);
        }
    }
    ops.sort_by_key(|op| (op.start_us, op.session, op.index));
    History::new(ops)
}

/// One session's loop.
async fn run_session(shared: Arc<Shared>, session: u32) -> Vec<Op> {
    let seed = shared.config.seed ^ u64::from(session).wrapping_mul(0xA24B_AED4_963E_E407);
    let mut rng = SplitMix64::new(seed);
    let mut metadata = Metadata::default();
    let mut ops = Vec::new();
    let limit = shared.config.ops_per_session();
    for index in 0..limit {
        if Instant::now() >= shared.deadline || shared.config.replicas.is_empty() {
            break;
        }
        let index = index as u32;
        let replica = &shared.config.replicas[rng.below(shared.config.replicas.len())];
        let action = choose(&shared, &mut rng, session, index);
        let op = perform(&shared, session, index, replica, action, &mut metadata).await;
        let refused = op.status == Status::Unreachable;
        ops.push(op);
        if refused {
            tokio::time::sleep(REFUSED_PAUSE).await;
        }
    }
    ops
}

/// Picks the next action: GET 45%, PUT 30%, GET of a write-once key 10%, DELETE 8%, PUT
/// of a new write-once key 7%.
fn choose(shared: &Shared, rng: &mut SplitMix64, session: u32, index: u32) -> Action {
    let shared_key = |rng: &mut SplitMix64| shared.keys[rng.below(shared.keys.len())].clone();
    match rng.below(100) {
        0..45 => Action::Get {
            key: shared_key(rng),
        },
        45..75 => Action::Put {
            key: shared_key(rng),
            once: false,
        },
        75..85 => {
            let once = once_key_to_read(shared, rng);
            Action::Get {
                key: once.unwrap_or_else(|| shared_key(rng)),
            }
        }
        85..93 => Action::Delete {
            key: shared_key(rng),
        },
        _ => {
            let key = format!("{}-once-s{session}-{index}", shared.config.run_tag);
            if let Ok(mut once_keys) = shared.once_keys.lock() {
                once_keys.push(key.clone());
            }
            Action::Put { key, once: true }
        }
    }
}

fn once_key_to_read(shared: &Shared, rng: &mut SplitMix64) -> Option<String> {
    let once_keys = shared.once_keys.lock().ok()?;
    (!once_keys.is_empty()).then(|| once_keys[rng.below(once_keys.len())].clone())
}

/// Sends one request and records it; carries the answer's metadata into `metadata`.
async fn perform(
    shared: &Shared,
    session: u32,
    index: u32,
    replica: &str,
    action: Action,
    metadata: &mut Metadata,
) -> Op {
    let client = &shared.client;
    let (kind, key, once, value) = match &action {
        Action::Put { key, once } => (
            OpKind::Put,
            key,
            *once,
            Some(json!(format!("s{session}-{index}"))),
        ),
        Action::Get { key } => (OpKind::Get, key, false, None),
        Action::Delete { key } => (OpKind::Delete, key, false, None),
    };
    let start_us = shared.micros();
    let answer = match (&action, &value) {
        (Action::Put { .. }, Some(value)) => client.put(replica, key, value, metadata).await,
        (Action::Delete { .. }, _) => client.delete(replica, key, metadata).await,
        _ => client.get(replica, key, metadata).await,
    };
    let end_us = shared.micros();
    let (status, read, error) = record_answer(kind, answer, metadata);
    Op {
        session,
        index,
        replica: replica.to_string(),
        kind,
        key: key.clone(),
        write_once: once,
        value,
        start_us,
        end_us,
        status,
        read,
        error,
    }
}

/// The status, value read and error of an answer; updates the session's metadata from it.
fn record_answer(
    kind: OpKind,
    answer: Result<Reply, ClientError>,
    metadata: &mut Metadata,
) -> (Status, Option<Value>, Option<String>) {
    match answer {
        Ok(reply) => {
            *metadata = reply.metadata;
            success(kind, reply.outcome)
        }
        Err(ClientError::NotFound { metadata: carried }) => {
            if let Some(carried) = carried.filter(|m| !m.is_null()) {
                *metadata = carried;
            }
            (Status::Http(404), None, None)
        }
        Err(error) => (failure_status(&error), None, Some(error.to_string())),
    }
}

fn success(kind: OpKind, outcome: Outcome) -> (Status, Option<Value>, Option<String>) {
    match (kind, outcome) {
        (_, Outcome::Created) => (Status::Http(201), None, None),
        (_, Outcome::Found(value)) => (Status::Http(200), Some(value), None),
        _ => (Status::Http(200), None, None),
    }
}

fn failure_status(error: &ClientError) -> Status {
    match error {
        ClientError::CausalTimeout { .. } => Status::Http(503),
        ClientError::BadRequest(_) => Status::Http(400),
        ClientError::NoSuchReplica | ClientError::NotFound { .. } => Status::Http(404),
        // A client is built only once its TLS configuration loaded: never seen here.
        ClientError::Unreachable { .. } | ClientError::Tls(_) => Status::Unreachable,
        ClientError::Timeout { .. } => Status::Timeout,
        ClientError::Unexpected { status, .. } => Status::Http(*status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WorkloadConfig {
        WorkloadConfig {
            replicas: vec!["127.0.0.1:1".into()],
            sessions: 3,
            duration: Duration::from_secs(1),
            max_ops: 10,
            keys: 4,
            seed: 7,
            run_tag: "ck0123abcd".into(),
        }
    }

    fn shared(config: WorkloadConfig) -> Shared {
        let origin = Instant::now();
        Shared {
            client: Client::new(Duration::from_millis(200)).unwrap(),
            keys: config.shared_keys(),
            deadline: origin + config.duration,
            config,
            once_keys: Mutex::new(Vec::new()),
            origin,
        }
    }

    #[test]
    fn choices_are_reproducible_from_the_seed() {
        let plan = |seed| {
            let shared = shared(config());
            let mut rng = SplitMix64::new(seed);
            (0..50)
                .map(|i| choose(&shared, &mut rng, 1, i))
                .collect::<Vec<_>>()
        };
        assert_eq!(plan(7), plan(7));
        assert_ne!(plan(7), plan(8));
    }

    #[test]
    fn the_mix_has_every_kind_and_keys_fit_the_contract() {
        let shared = shared(config());
        let mut rng = SplitMix64::new(1);
        let plan: Vec<Action> = (0..2000)
            .map(|i| choose(&shared, &mut rng, 999, 999_000 + i))
            .collect();
        let count = |f: fn(&Action) -> bool| plan.iter().filter(|a| f(a)).count();
        assert!(count(|a| matches!(a, Action::Put { once: false, .. })) > 0);
        assert!(count(|a| matches!(a, Action::Put { once: true, .. })) > 0);
        assert!(count(|a| matches!(a, Action::Delete { .. })) > 0);
        let once_reads = count(|a| matches!(a, Action::Get { key } if key.contains("-once-")));
        assert!(once_reads > 0);
        for action in &plan {
            let (Action::Put { key, .. } | Action::Get { key } | Action::Delete { key }) = action;
            assert!(key.len() <= 50, "{key}");
            assert!(key.starts_with("ck0123abcd-"));
        }
    }

    #[test]
    fn run_tags_are_short_and_tagged() {
        let tag = fresh_run_tag();
        assert_eq!(tag.len(), 10);
        assert!(tag.starts_with("ck"));
    }

    #[test]
    fn not_found_keeps_metadata_unless_it_carries_some() {
        let mut metadata = Metadata(json!("m1"));
        let none = Err(ClientError::NotFound { metadata: None });
        assert_eq!(
            record_answer(OpKind::Get, none, &mut metadata).0,
            Status::Http(404)
        );
        assert_eq!(metadata, Metadata(json!("m1")));
        let some = Err(ClientError::NotFound {
            metadata: Some(Metadata(json!("m2"))),
        });
        record_answer(OpKind::Delete, some, &mut metadata);
        assert_eq!(metadata, Metadata(json!("m2")));
        let busy = Err(ClientError::CausalTimeout {
            replica: "r".into(),
        });
        let (status, _, error) = record_answer(OpKind::Put, busy, &mut metadata);
        assert_eq!(status, Status::Http(503));
        assert!(error.is_some());
        assert_eq!(metadata, Metadata(json!("m2")));
    }

    #[tokio::test]
    async fn unreachable_replicas_are_recorded_as_failures() {
        let config = config();
        let client = Client::new(Duration::from_millis(200)).unwrap();
        let history = run(&client, &config).await;
        assert!(!history.ops.is_empty());
        assert!(
            history.ops.len() <= 12,
            "3 sessions × ceil(10 / 3) ops at most"
        );
        assert!(
            history
                .ops
                .iter()
                .all(|op| matches!(op.status, Status::Unreachable | Status::Timeout))
        );
    }
}
