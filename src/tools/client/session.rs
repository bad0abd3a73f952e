//! A causal client session over one or more replicas.
//!
//! The contract leaves the causal guarantee to the client: it must send back the metadata
//! of the latest response it received, whichever replica sent it. [`Session`] does that
//! for every request, so a program (or the CLI, across invocations) cannot forget it. And
//! because the metadata travels with the session rather than with a connection, the
//! session may move between replicas freely: it spreads requests over them, fails over
//! when one is down, and retries a `503` (a replica that has not yet applied what the
//! session saw) on the others and then again after a bounded exponential backoff.
//!
//! The routing and retry decisions are pure ([`RetryPolicy::backoff`], [`Retries`],
//! [`Spread`]) so they are tested without a network.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Client, ClientError, Metadata, Outcome, Reply};

/// How long and how often a request is retried.
///
/// Attempts go round the replicas: after a replica fails with a retryable error
/// ([`ClientError::is_retryable`]) the next one is tried at once. When a whole round has
/// failed and at least one replica answered `503`, the next round starts after a backoff
/// that doubles from `initial_backoff` up to `max_backoff`. A round in which no replica
/// answered at all ends the request: there is nobody to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts of one request, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second round.
    pub initial_backoff: Duration,
    /// Longest backoff between rounds.
    pub max_backoff: Duration,
    /// No retry round starts later than this after the request's first attempt.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 12,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            max_total: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries (failover over the replicas still happens once).
    pub fn no_backoff_rounds() -> Self {
        RetryPolicy {
            max_total: Duration::ZERO,
            ..RetryPolicy::default()
        }
    }

    /// The pause before retry round `round` (1 for the second round, 2 for the third...).
    pub fn backoff(&self, round: u32) -> Duration {
        let factor = 1u32
            .checked_shl(round.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// The retry state of one request: decides, after each failed attempt, whether and when
/// to try again. Time is passed in, so it is a pure state machine.
#[derive(Clone, Debug)]
pub struct Retries {
    policy: RetryPolicy,
    replicas: usize,
    attempts: u32,
    rounds: u32,
    round_saw_503: bool,
}

impl Retries {
    /// The state before the first attempt of a request over `replicas` replicas.
    pub fn new(policy: RetryPolicy, replicas: usize) -> Self {
        Retries {
            policy,
            replicas: replicas.max(1),
            attempts: 0,
            rounds: 0,
            round_saw_503: false,
        }
    }

    /// After an attempt failed with `error`, `elapsed` after the first attempt began:
    /// the pause before the next attempt, or `None` to give up and return `error`.
    pub fn after_failure(&mut self, error: &ClientError, elapsed: Duration) -> Option<Duration> {
        if !error.is_retryable() {
            return None;
        }
        self.attempts += 1;
        self.round_saw_503 |= matches!(error, ClientError::CausalTimeout { .. });
        if self.attempts >= self.policy.max_attempts.max(1) {
            return None;
        }
        let round_over = self.attempts as usize % self.replicas == 0;
        if !round_over {
            // Fail over within the round; past the first round the time budget holds.
            let over_budget = self.rounds > 0 && elapsed >= self.policy.max_total;
            return (!over_budget).then_some(Duration::ZERO);
        }
        if !std::mem::take(&mut self.round_saw_503) {
            return None;
        }
        self.rounds += 1;
        let pause = self.policy.backoff(self.rounds);
        (elapsed + pause < self.policy.max_total).then_some(pause)
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// Where each request starts among the replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spread {
    /// Stay with the replica that answered last; move on only when it fails.
    #[default]
    Sticky,
    /// Start each request at the replica after the one that answered last.
    RoundRobin,
}

impl Spread {
    /// The replica the next request starts at, after replica `answered` of `len` answered.
    pub fn next_start(self, answered: usize, len: usize) -> usize {
        match self {
            Spread::Sticky => answered % len.max(1),
            Spread::RoundRobin => (answered + 1) % len.max(1),
        }
    }
}

/// The replicas of a session and where the next request goes.
#[derive(Clone, Debug)]
struct Router {
    replicas: Vec<String>,
    spread: Spread,
    retry: RetryPolicy,
    next: usize,
}

impl Router {
    /// Runs `attempt` against the replicas, from the next one on, with failover and
    /// retries; the first answer that is not retryable is the result.
    ///
    /// `attempt` takes the replica by value: a closure over borrowed arguments keeps the
    /// request future `Send`, which `AsyncFnMut(&str)` does not (its higher-ranked
    /// lifetime defeats the auto-trait check).
    async fn call<T, F>(&mut self, mut attempt: impl FnMut(String) -> F) -> Result<T, ClientError>
    where
        F: Future<Output = Result<T, ClientError>>,
    {
        let len = self.replicas.len();
        let started = Instant::now();
        let mut retries = Retries::new(self.retry, len);
        let mut index = self.next;
        loop {
            let result = attempt(self.replicas[index % len].clone()).await;
            let error = match result {
                Ok(answer) => {
                    self.next = self.spread.next_start(index, len);
                    return Ok(answer);
                }
                Err(error) => error,
            };
            match retries.after_failure(&error, started.elapsed()) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => {
                    if !error.is_retryable() {
                        self.next = self.spread.next_start(index, len);
                    }
                    return Err(error);
                }
            }
            index = (index + 1) % len;
        }
    }
}

/// A causal session: every request carries the metadata of the latest response.
///
/// ```no_run
/// # async fn demo() -> Result<(), causalkv::tools::client::ClientError> {
/// use std::time::Duration;
/// use causalkv::tools::client::{Client, Session};
///
/// let client = Client::new(Duration::from_secs(3))?;
/// let replicas = vec!["127.0.0.1:8082".to_string(), "127.0.0.1:8083".to_string()];
/// let mut session = Session::new(client, replicas)?;
/// session.put("x", &serde_json::json!(1)).await?;
/// assert_eq!(session.get("x").await?, Some(serde_json::json!(1)));
/// # Ok(()) }
/// ```
///
/// Retried writes: a `PUT` or `DELETE` whose replica timed out may have been applied
/// there. Retrying it elsewhere with the same metadata is safe for the store (the two
/// tries write the same thing and are concurrent, so either may win), but the retry's
/// answer may then say `replaced`, or for a `DELETE` that the key did not exist.
#[derive(Clone, Debug)]
pub struct Session {
    client: Client,
    router: Router,
    metadata: Metadata,
}

impl Session {
    /// A fresh session (first request sends `null` metadata) over `replicas`, which must
    /// not be empty.
    pub fn new(client: Client, replicas: Vec<String>) -> Result<Self, ClientError> {
        if replicas.is_empty() {
            return Err(ClientError::BadRequest(
                "a session needs at least one replica".to_string(),
            ));
        }
        Ok(Session {
            client,
            router: Router {
                replicas,
                spread: Spread::default(),
                retry: RetryPolicy::default(),
                next: 0,
            },
            metadata: Metadata::default(),
        })
    }

    /// Resumes a session whose metadata was saved.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets how requests are retried.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.router.retry = retry;
        self
    }

    /// Sets how requests are spread over the replicas.
    pub fn with_spread(mut self, spread: Spread) -> Self {
        self.router.spread = spread;
        self
    }

    /// The metadata the next request will carry.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The replicas, in the order they are tried.
    pub fn replicas(&self) -> &[String] {
        &self.router.replicas
    }

    /// `PUT`: [`Outcome::Created`] or [`Outcome::Replaced`].
    pub async fn put(&mut self, key: &str, value: &Value) -> Result<Outcome, ClientError> {
        let metadata = &self.metadata.clone();
        let client = &self.client;
        let result = self
            .router
            .call(|replica| async move { client.put(&replica, key, value, metadata).await })
            .await;
        self.observe(result)
    }

    /// `GET`: the value, or `None` when the key does not exist.
    pub async fn get(&mut self, key: &str) -> Result<Option<Value>, ClientError> {
        let metadata = &self.metadata.clone();
        let client = &self.client;
        let result = self
            .router
            .call(|replica| async move { client.get(&replica, key, metadata).await })
            .await;
        match self.observe(result) {
            Ok(Outcome::Found(value)) => Ok(Some(value)),
            // `Client::get` answers only `Found`; anything else is a bug worth naming.
            Ok(other) => Err(ClientError::Unexpected {
                replica: String::new(),
                status: 200,
                body: format!("{other:?} answering a GET"),
            }),
            Err(ClientError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `DELETE`: true when the key was deleted, false when it did not exist.
    pub async fn delete(&mut self, key: &str) -> Result<bool, ClientError> {
        let metadata = &self.metadata.clone();
        let client = &self.client;
        let result = self
            .router
            .call(|replica| async move { client.delete(&replica, key, metadata).await })
            .await;
        match self.observe(result) {
            Ok(_) => Ok(true),
            Err(ClientError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// `GET /view` at the first replica that answers.
    pub async fn view(&mut self) -> Result<Vec<String>, ClientError> {
        let client = &self.client;
        self.router
            .call(|replica| async move { client.view(&replica).await })
            .await
    }

    /// `PUT /view`: true when added, false when already present.
    pub async fn view_add(&mut self, addr: &str) -> Result<bool, ClientError> {
        let client = &self.client;
        self.router
            .call(|replica| async move { client.view_add(&replica, addr).await })
            .await
    }

    /// `DELETE /view`; [`ClientError::NoSuchReplica`] when `addr` is not in the view.
    pub async fn view_remove(&mut self, addr: &str) -> Result<(), ClientError> {
        let client = &self.client;
        self.router
            .call(|replica| async move { client.view_remove(&replica, addr).await })
            .await
    }

    /// Adopts the metadata of an answer (a success, or a 404 that carries some) and
    /// passes the answer on. Null metadata is never adopted: it would forget history.
    fn observe(&mut self, result: Result<Reply, ClientError>) -> Result<Outcome, ClientError> {
        let metadata = match &result {
            Ok(reply) => Some(&reply.metadata),
            Err(ClientError::NotFound { metadata }) => metadata.as_ref(),
            Err(_) => None,
        };
        if let Some(metadata) = metadata.filter(|m| !m.is_null()) {
            self.metadata = metadata.clone();
        }
        result.map(|reply| reply.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 100,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
            max_total: Duration::from_secs(60),
        }
    }

    fn busy() -> ClientError {
        ClientError::CausalTimeout {
            replica: "r".into(),
        }
    }

    fn down() -> ClientError {
        ClientError::Unreachable {
            replica: "r".into(),
            reason: "refused".into(),
        }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let pauses: Vec<_> = (1..=5).map(|round| p.backoff(round)).collect();
        assert_eq!(pauses, [MS(100), MS(200), MS(400), MS(700), MS(700)]);
        assert_eq!(p.backoff(200), MS(700), "no overflow on huge rounds");
    }

    #[test]
    fn a_busy_cluster_fails_over_then_backs_off_round_by_round() {
        let mut retries = Retries::new(policy(), 3);
        let pauses: Vec<_> = (0..7)
            .map(|_| retries.after_failure(&busy(), Duration::ZERO))
            .collect();
        let zero = Some(Duration::ZERO);
        let expected = [zero, zero, Some(MS(100)), zero, zero, Some(MS(200)), zero];
        assert_eq!(pauses, expected);
    }

    #[test]
    fn a_round_with_no_answer_at_all_ends_the_request() {
        let mut retries = Retries::new(policy(), 2);
        assert_eq!(
            retries.after_failure(&down(), Duration::ZERO),
            Some(Duration::ZERO)
        );
        assert_eq!(retries.after_failure(&down(), Duration::ZERO), None);
        let mut single = Retries::new(policy(), 1);
        assert_eq!(single.after_failure(&down(), Duration::ZERO), None);
    }

    #[test]
    fn one_busy_replica_in_a_round_keeps_retrying() {
        let mut retries = Retries::new(policy(), 2);
        assert_eq!(
            retries.after_failure(&busy(), Duration::ZERO),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retries.after_failure(&down(), Duration::ZERO),
            Some(MS(100))
        );
    }

    #[test]
    fn answers_that_are_not_retryable_end_the_request() {
        let mut retries = Retries::new(policy(), 3);
        let not_found = ClientError::NotFound { metadata: None };
        assert_eq!(retries.after_failure(&not_found, Duration::ZERO), None);
        let bad = ClientError::BadRequest("no".into());
        assert_eq!(retries.after_failure(&bad, Duration::ZERO), None);
        assert_eq!(retries.attempts(), 0);
    }

    #[test]
    fn attempts_are_bounded() {
        let limited = RetryPolicy {
            max_attempts: 3,
            ..policy()
        };
        let mut retries = Retries::new(limited, 1);
        assert_eq!(
            retries.after_failure(&busy(), Duration::ZERO),
            Some(MS(100))
        );
        assert_eq!(
            retries.after_failure(&busy(), Duration::ZERO),
            Some(MS(200))
        );
        assert_eq!(retries.after_failure(&busy(), Duration::ZERO), None);
        assert_eq!(retries.attempts(), 3);
    }

    #[test]
    fn total_time_is_bounded() {
        let limited = RetryPolicy {
            max_total: Duration::from_secs(1),
            ..policy()
        };
        let mut retries = Retries::new(limited, 2);
        let early = MS(10);
        assert_eq!(retries.after_failure(&busy(), early), Some(Duration::ZERO));
        assert_eq!(retries.after_failure(&busy(), early), Some(MS(100)));
        // The first round always fails over; later ones stop once the budget is spent.
        let late = MS(950);
        assert_eq!(retries.after_failure(&busy(), late), Some(Duration::ZERO));
        assert_eq!(retries.after_failure(&busy(), late), None);
        let mut spent = Retries::new(limited, 2);
        assert_eq!(spent.after_failure(&down(), MS(5000)), Some(Duration::ZERO));
    }

    #[test]
    fn no_backoff_rounds_still_fails_over_once() {
        let mut retries = Retries::new(RetryPolicy::no_backoff_rounds(), 2);
        assert_eq!(
            retries.after_failure(&busy(), Duration::ZERO),
            Some(Duration::ZERO)
        );
        assert_eq!(retries.after_failure(&busy(), Duration::ZERO), None);
    }

    #[test]
    fn sticky_stays_and_round_robin_moves_on() {
        assert_eq!(Spread::Sticky.next_start(1, 3), 1);
        assert_eq!(Spread::RoundRobin.next_start(1, 3), 2);
        assert_eq!(Spread::RoundRobin.next_start(2, 3), 0);
    }

    fn session(replicas: &[&str]) -> Session {
        let client = Client::new(Duration::from_millis(200)).expect("client");
        Session::new(client, replicas.iter().map(|r| r.to_string()).collect()).expect("session")
    }

    #[test]
    fn a_session_needs_a_replica() {
        let client = Client::new(Duration::from_millis(200)).expect("client");
        assert!(matches!(
            Session::new(client, vec![]),
            Err(ClientError::BadRequest(_))
        ));
    }

    #[test]
    fn answers_update_the_metadata_but_null_never_erases_it() {
        let mut s = session(&["a"]).with_metadata(Metadata(Value::from("m0")));
        let reply = |m: Value| Reply {
            outcome: Outcome::Created,
            metadata: Metadata(m),
        };
        let _ = s.observe(Ok(reply(Value::from("m1"))));
        assert_eq!(s.metadata(), &Metadata(Value::from("m1")));
        let _ = s.observe(Ok(reply(Value::Null)));
        assert_eq!(s.metadata(), &Metadata(Value::from("m1")));
        let not_found = ClientError::NotFound {
            metadata: Some(Metadata(Value::from("m2"))),
        };
        let _ = s.observe(Err(not_found));
        assert_eq!(s.metadata(), &Metadata(Value::from("m2")));
        let _ = s.observe(Err(busy()));
        assert_eq!(s.metadata(), &Metadata(Value::from("m2")));
    }

    #[tokio::test]
    async fn unreachable_replicas_are_each_tried_once() {
        // Port 1 on loopback refuses connections at once.
        let mut s = session(&["127.0.0.1:1", "127.0.0.2:1"]);
        match s.get("k").await {
            Err(ClientError::Unreachable { replica, .. }) => assert_eq!(replica, "127.0.0.2:1"),
            other => panic!("expected unreachable, got {other:?}"),
        }
        assert!(s.metadata().is_null());
    }

    type Bodies = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

    /// A one-trick replica on loopback: answers its requests with `answers` in turn (the
    /// last one forever) and records each request body.
    struct FakeReplica {
        addr: String,
        bodies: Bodies,
    }

    impl FakeReplica {
        async fn start(answers: Vec<(u16, Value)>) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address").to_string();
            let bodies: Bodies = std::sync::Arc::default();
            let seen = std::sync::Arc::clone(&bodies);
            tokio::spawn(async move {
                for n in 0.. {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let answer = &answers[n.min(answers.len() - 1)];
                    let body = serve_one(stream, answer).await;
                    seen.lock().expect("lock").push(body);
                }
            });
            FakeReplica { addr, bodies }
        }

        fn bodies(&self) -> Vec<Value> {
            self.bodies.lock().expect("lock").clone()
        }
    }

    /// Reads one request, answers it and closes the connection; returns the body.
    async fn serve_one(mut stream: tokio::net::TcpStream, answer: &(u16, Value)) -> Value {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        let body_start = loop {
            let n = stream.read(&mut chunk).await.expect("read");
            request.extend_from_slice(&chunk[..n]);
            if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&request[..body_start]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |value| value.trim().parse().expect("length"));
        while request.len() < body_start + length {
            let n = stream.read(&mut chunk).await.expect("read body");
            request.extend_from_slice(&chunk[..n]);
        }
        let body = serde_json::from_slice(&request[body_start..]).unwrap_or(Value::Null);
        let (status, reply) = answer;
        let reply = reply.to_string();
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{reply}",
            reply.len()
        );
        stream.write_all(response.as_bytes()).await.expect("write");
        body
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: MS(1),
            max_backoff: MS(5),
            ..RetryPolicy::default()
        }
    }

    fn busy_answer() -> (u16, Value) {
        let error = "Causal dependencies not satisfied; try again later";
        (503, serde_json::json!({ "error": error }))
    }

    fn found(value: i64, metadata: &str) -> (u16, Value) {
        let body =
            serde_json::json!({"result": "found", "value": value, "causal-metadata": metadata});
        (200, body)
    }

    #[tokio::test]
    async fn a_503_is_retried_with_the_same_metadata_until_served() {
        let replica = FakeReplica::start(vec![busy_answer(), busy_answer(), found(7, "m1")]).await;
        let mut s = session(&[&replica.addr])
            .with_retry(quick())
            .with_metadata(Metadata(Value::from("m0")));
        assert_eq!(s.get("k").await.expect("served"), Some(Value::from(7)));
        assert_eq!(s.metadata(), &Metadata(Value::from("m1")));
        let sent: Vec<Value> = replica
            .bodies()
            .iter()
            .map(|body| body["causal-metadata"].clone())
            .collect();
        assert_eq!(sent, vec![Value::from("m0"); 3]);
    }

    #[tokio::test]
    async fn a_503_that_lasts_ends_as_a_causal_timeout() {
        let replica = FakeReplica::start(vec![busy_answer()]).await;
        let limited = RetryPolicy {
            max_attempts: 4,
            ..quick()
        };
        let mut s = session(&[&replica.addr]).with_retry(limited);
        let result = s.get("k").await;
        assert!(
            matches!(result, Err(ClientError::CausalTimeout { .. })),
            "{result:?}"
        );
        assert_eq!(replica.bodies().len(), 4);
    }

    #[tokio::test]
    async fn failover_carries_the_metadata_and_sticks_to_the_live_replica() {
        let live = FakeReplica::start(vec![found(1, "m1"), found(2, "m2")]).await;
        let mut s = session(&["127.0.0.1:1", &live.addr]);
        assert_eq!(s.get("k").await.expect("served"), Some(Value::from(1)));
        assert_eq!(s.get("k").await.expect("served"), Some(Value::from(2)));
        let sent: Vec<Value> = live
            .bodies()
            .iter()
            .map(|body| body["causal-metadata"].clone())
            .collect();
        assert_eq!(sent, [Value::Null, Value::from("m1")]);
    }

    #[tokio::test]
    async fn round_robin_spreads_requests() {
        let one = FakeReplica::start(vec![found(1, "m1")]).await;
        let two = FakeReplica::start(vec![found(2, "m2")]).await;
        let mut s = session(&[&one.addr, &two.addr]).with_spread(Spread::RoundRobin);
        for _ in 0..4 {
            s.get("k").await.expect("served");
        }
        assert_eq!((one.bodies().len(), two.bodies().len()), (2, 2));
        assert_eq!(two.bodies()[1]["causal-metadata"], Value::from("m1"));
    }

    #[test]
    fn session_futures_are_send() {
        fn assert_send<T: Send>(_: T) {}
        let mut s = session(&["a"]);
        assert_send(s.get("k"));
        let value = Value::Null;
        let mut s = session(&["a"]);
        assert_send(s.put("k", &value));
    }
}
