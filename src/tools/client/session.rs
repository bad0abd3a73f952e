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
//! It is the only session type: the CLI, the benchmark's load generator and the
//! integration tests all carry their metadata in one. Requests borrow a shared
//! [`Client`], and an answer's metadata is moved into the session, never copied, so a
//! request through a session costs what the bare client's request costs.
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

    /// One attempt per request: no failover, no retry. A session with it stays on its
    /// replica and reports each answer as it came (the benchmark's sessions).
    pub fn single_attempt() -> Self {
        RetryPolicy {
            max_attempts: 1,
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

/// Where a session's requests go: the next replica, how requests spread and are retried.
#[derive(Clone, Copy, Debug, Default)]
struct Route {
    spread: Spread,
    retry: RetryPolicy,
    next: usize,
}

impl Route {
    /// Runs `attempt` against `replicas`, from the next one on, with failover and retries;
    /// the first answer that is not retryable is the result.
    ///
    /// `attempt` gets the replica borrowed for `'a`, the borrow of the whole list, so its
    /// future may hold it without a copy, and stays `Send` (an `AsyncFnMut(&str)` would
    /// not be: its higher-ranked lifetime defeats the auto-trait check).
    async fn call<'a, T, F>(
        &mut self,
        replicas: &'a [String],
        mut attempt: impl FnMut(&'a str) -> F,
    ) -> Result<T, ClientError>
    where
        F: Future<Output = Result<T, ClientError>>,
    {
        let len = replicas.len();
        if len == 0 {
            return Err(no_replica());
        }
        // Only a policy that may retry needs the time: a single-attempt session (the
        // benchmark's) pays nothing beyond its request.
        let started = (self.retry.max_attempts > 1).then(Instant::now);
        let mut retries = Retries::new(self.retry, len);
        let mut index = self.next % len;
        loop {
            let error = match attempt(replicas[index].as_str()).await {
                Ok(answer) => {
                    self.next = self.spread.next_start(index, len);
                    return Ok(answer);
                }
                Err(error) => error,
            };
            let elapsed = started.map_or(Duration::ZERO, |started| started.elapsed());
            match retries.after_failure(&error, elapsed) {
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

fn no_replica() -> ClientError {
    ClientError::BadRequest("a session needs at least one replica".to_string())
}

/// A causal session: every request carries the metadata of the latest response.
///
/// It is the one session of the tools: the CLI's (across invocations, through its session
/// file), each benchmark session's (pinned to one replica, one attempt per request:
/// [`Session::starting_at`], [`RetryPolicy::single_attempt`]) and the integration tests'.
/// A session names its replicas; requests go through a [`Client`] given to each call, so
/// a session costs no connection pool of its own and many share one client.
///
/// ```no_run
/// # async fn demo() -> Result<(), causalkv::tools::client::ClientError> {
/// use std::time::Duration;
/// use causalkv::tools::client::{Client, Session};
///
/// let client = Client::new(Duration::from_secs(3))?;
/// let replicas = vec!["127.0.0.1:8082".to_string(), "127.0.0.1:8083".to_string()];
/// let mut session = Session::new(replicas)?;
/// session.put(&client, "x", &serde_json::json!(1)).await?;
/// assert_eq!(session.get(&client, "x").await?, Some(serde_json::json!(1)));
/// # Ok(()) }
/// ```
///
/// A caller that sends its requests itself (the tests check raw answers) uses a session
/// without replicas, [`Session::default`]: it sends [`Session::metadata`] and hands each
/// answer's JSON body to [`Session::observe_json`].
///
/// Retried writes: a `PUT` or `DELETE` whose replica timed out may have been applied
/// there. Retrying it elsewhere with the same metadata is safe for the store (the two
/// tries write the same thing and are concurrent, so either may win), but the retry's
/// answer may then say `replaced`, or for a `DELETE` that the key did not exist.
#[derive(Clone, Debug, Default)]
pub struct Session {
    replicas: Vec<String>,
    route: Route,
    metadata: Metadata,
}

impl Session {
    /// A fresh session (first request sends `null` metadata) over `replicas`, which must
    /// not be empty.
    pub fn new(replicas: Vec<String>) -> Result<Self, ClientError> {
        if replicas.is_empty() {
            return Err(no_replica());
        }
        Ok(Session {
            replicas,
            ..Session::default()
        })
    }

    /// Resumes a session whose metadata was saved.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets how requests are retried.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.route.retry = retry;
        self
    }

    /// Sets how requests are spread over the replicas.
    pub fn with_spread(mut self, spread: Spread) -> Self {
        self.route.spread = spread;
        self
    }

    /// Starts at replica `index` (modulo the number of replicas) rather than the first.
    pub fn starting_at(mut self, index: usize) -> Self {
        self.route.next = index % self.replicas.len().max(1);
        self
    }

    /// The metadata the next request will carry.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The replicas, in the order they are tried.
    pub fn replicas(&self) -> &[String] {
        &self.replicas
    }

    /// The index among [`Session::replicas`] of the replica the next request starts at.
    pub fn replica_index(&self) -> usize {
        self.route.next
    }

    /// `PUT`: [`Outcome::Created`] or [`Outcome::Replaced`].
    pub async fn put(
        &mut self,
        client: &Client,
        key: &str,
        value: &Value,
    ) -> Result<Outcome, ClientError> {
        let metadata = &self.metadata;
        let result = self
            .route
            .call(&self.replicas, |replica| {
                client.put(replica, key, value, metadata)
            })
            .await;
        self.take_answer(result)
    }

    /// `GET`: the value, or `None` when the key does not exist.
    pub async fn get(&mut self, client: &Client, key: &str) -> Result<Option<Value>, ClientError> {
        let metadata = &self.metadata;
        let result = self
            .route
            .call(&self.replicas, |replica| client.get(replica, key, metadata))
            .await;
        match self.take_answer(result) {
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
    pub async fn delete(&mut self, client: &Client, key: &str) -> Result<bool, ClientError> {
        let metadata = &self.metadata;
        let result = self
            .route
            .call(&self.replicas, |replica| {
                client.delete(replica, key, metadata)
            })
            .await;
        match self.take_answer(result) {
            Ok(_) => Ok(true),
            Err(ClientError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// `GET /view` at the first replica that answers.
    pub async fn view(&mut self, client: &Client) -> Result<Vec<String>, ClientError> {
        self.route
            .call(&self.replicas, |replica| client.view(replica))
            .await
    }

    /// `PUT /view`: true when added, false when already present.
    pub async fn view_add(&mut self, client: &Client, addr: &str) -> Result<bool, ClientError> {
        self.route
            .call(&self.replicas, |replica| client.view_add(replica, addr))
            .await
    }

    /// `DELETE /view`; [`ClientError::NoSuchReplica`] when `addr` is not in the view.
    pub async fn view_remove(&mut self, client: &Client, addr: &str) -> Result<(), ClientError> {
        self.route
            .call(&self.replicas, |replica| client.view_remove(replica, addr))
            .await
    }

    /// Adopts the `causal-metadata` of an answer's JSON body, when it has one that is not
    /// null: for callers that send their requests themselves.
    pub fn observe_json(&mut self, body: &Value) {
        if let Some(metadata) = body.get("causal-metadata") {
            self.adopt(Metadata(metadata.clone()));
        }
    }

    /// Adopts `metadata` unless it is null: null would forget the session's history.
    fn adopt(&mut self, metadata: Metadata) {
        if !metadata.is_null() {
            self.metadata = metadata;
        }
    }

    /// Adopts the metadata of an answer (a success, or a 404 that carries some; moved,
    /// never copied) and passes the outcome on. A 404 is passed on without its metadata,
    /// which the session now holds.
    fn take_answer(&mut self, result: Result<Reply, ClientError>) -> Result<Outcome, ClientError> {
        match result {
            Ok(Reply { outcome, metadata }) => {
                self.adopt(metadata);
                Ok(outcome)
            }
            Err(ClientError::NotFound { metadata }) => {
                if let Some(metadata) = metadata {
                    self.adopt(metadata);
                }
                Err(ClientError::NotFound { metadata: None })
            }
            Err(error) => Err(error),
        }
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
        Session::new(replicas.iter().map(|r| r.to_string()).collect()).expect("session")
    }

    fn client() -> Client {
        Client::new(Duration::from_millis(200)).expect("client")
    }

    #[test]
    fn a_session_needs_a_replica() {
        assert!(matches!(
            Session::new(vec![]),
            Err(ClientError::BadRequest(_))
        ));
    }

    #[tokio::test]
    async fn a_session_without_replicas_refuses_requests() {
        let client = client();
        let mut s = Session::default();
        let result = s.get(&client, "k").await;
        assert!(
            matches!(result, Err(ClientError::BadRequest(_))),
            "{result:?}"
        );
    }

    #[test]
    fn answers_update_the_metadata_but_null_never_erases_it() {
        let mut s = session(&["a"]).with_metadata(Metadata(Value::from("m0")));
        let reply = |m: Value| Reply {
            outcome: Outcome::Created,
            metadata: Metadata(m),
        };
        let _ = s.take_answer(Ok(reply(Value::from("m1"))));
        assert_eq!(s.metadata(), &Metadata(Value::from("m1")));
        let _ = s.take_answer(Ok(reply(Value::Null)));
        assert_eq!(s.metadata(), &Metadata(Value::from("m1")));
        let not_found = ClientError::NotFound {
            metadata: Some(Metadata(Value::from("m2"))),
        };
        let _ = s.take_answer(Err(not_found));
        assert_eq!(s.metadata(), &Metadata(Value::from("m2")));
        let _ = s.take_answer(Err(busy()));
        assert_eq!(s.metadata(), &Metadata(Value::from("m2")));
    }

    #[test]
    fn raw_answers_update_the_metadata_but_null_never_erases_it() {
        let mut s = Session::default();
        s.observe_json(&serde_json::json!({"result": "created", "causal-metadata": "m1"}));
        assert_eq!(s.metadata(), &Metadata(Value::from("m1")));
        s.observe_json(&serde_json::json!({"error": "Key does not exist"}));
        s.observe_json(&serde_json::json!({"causal-metadata": null}));
        s.observe_json(&serde_json::json!("not an object"));
        assert_eq!(s.metadata(), &Metadata(Value::from("m1")));
    }

    #[test]
    fn sessions_start_where_they_are_told() {
        let s = session(&["a", "b", "c"]);
        assert_eq!(s.replica_index(), 0);
        assert_eq!(s.clone().starting_at(4).replica_index(), 1);
        assert_eq!(Session::default().starting_at(4).replica_index(), 0);
    }

    #[tokio::test]
    async fn unreachable_replicas_are_each_tried_once() {
        let client = client();
        // Port 1 on loopback refuses connections at once.
        let mut s = session(&["127.0.0.1:1", "127.0.0.2:1"]);
        match s.get(&client, "k").await {
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
        let client = client();
        let replica = FakeReplica::start(vec![busy_answer(), busy_answer(), found(7, "m1")]).await;
        let mut s = session(&[&replica.addr])
            .with_retry(quick())
            .with_metadata(Metadata(Value::from("m0")));
        assert_eq!(
            s.get(&client, "k").await.expect("served"),
            Some(Value::from(7))
        );
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
        let client = client();
        let replica = FakeReplica::start(vec![busy_answer()]).await;
        let limited = RetryPolicy {
            max_attempts: 4,
            ..quick()
        };
        let mut s = session(&[&replica.addr]).with_retry(limited);
        let result = s.get(&client, "k").await;
        assert!(
            matches!(result, Err(ClientError::CausalTimeout { .. })),
            "{result:?}"
        );
        assert_eq!(replica.bodies().len(), 4);
    }

    #[tokio::test]
    async fn failover_carries_the_metadata_and_sticks_to_the_live_replica() {
        let client = client();
        let live = FakeReplica::start(vec![found(1, "m1"), found(2, "m2")]).await;
        let mut s = session(&["127.0.0.1:1", &live.addr]);
        assert_eq!(
            s.get(&client, "k").await.expect("served"),
            Some(Value::from(1))
        );
        assert_eq!(
            s.get(&client, "k").await.expect("served"),
            Some(Value::from(2))
        );
        let sent: Vec<Value> = live
            .bodies()
            .iter()
            .map(|body| body["causal-metadata"].clone())
            .collect();
        assert_eq!(sent, [Value::Null, Value::from("m1")]);
    }

    #[tokio::test]
    async fn round_robin_spreads_requests() {
        let client = client();
        let one = FakeReplica::start(vec![found(1, "m1")]).await;
        let two = FakeReplica::start(vec![found(2, "m2")]).await;
        let mut s = session(&[&one.addr, &two.addr]).with_spread(Spread::RoundRobin);
        for _ in 0..4 {
            s.get(&client, "k").await.expect("served");
        }
        assert_eq!((one.bodies().len(), two.bodies().len()), (2, 2));
        assert_eq!(two.bodies()[1]["causal-metadata"], Value::from("m1"));
    }

    #[tokio::test]
    async fn a_single_attempt_session_stays_on_its_replica() {
        let client = client();
        let busy = FakeReplica::start(vec![busy_answer(), found(3, "m3")]).await;
        let spare = FakeReplica::start(vec![found(9, "m9")]).await;
        let mut s = session(&[&spare.addr, &busy.addr])
            .with_retry(RetryPolicy::single_attempt())
            .starting_at(1);
        let result = s.get(&client, "k").await;
        assert!(
            matches!(result, Err(ClientError::CausalTimeout { .. })),
            "{result:?}"
        );
        assert_eq!(s.replica_index(), 1);
        assert_eq!(
            s.get(&client, "k").await.expect("served"),
            Some(Value::from(3))
        );
        assert_eq!((busy.bodies().len(), spare.bodies().len()), (2, 0));
        assert_eq!(s.metadata(), &Metadata(Value::from("m3")));
    }

    #[test]
    fn session_futures_are_send() {
        fn assert_send<T: Send>(_: T) {}
        let client = client();
        let mut s = session(&["a"]);
        assert_send(s.get(&client, "k"));
        let value = Value::Null;
        let mut s = session(&["a"]);
        assert_send(s.put(&client, "k", &value));
    }
}
