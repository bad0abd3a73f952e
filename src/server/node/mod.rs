//! The running replica: the driver of the protocol machine (`protocol::machine`).
//!
//! The machine decides everything; this module only moves inputs in and outputs out:
//!
//! * a client request or a peer's message is stepped into the machine under the lock, and
//!   its outputs are carried out after the lock is dropped;
//! * each `Output::Send` becomes a task that makes the HTTP call (`peer::call`) and steps
//!   its outcome back in;
//! * a timer task ticks the machine at its next deadline; a flusher task sends queued
//!   writes once the request handlers that are already runnable have queued theirs, so that
//!   writes arriving together travel together;
//! * replies go to the waiting request handler over a oneshot channel.
//!
//! # Locking
//!
//! The machine lives in one `std::sync::Mutex`, held only for a step, never across an
//! `.await` (the pattern of mini-redis's `db.rs`). The per-peer HTTP clients sit under a
//! second mutex that is never held together with the first. Network I/O always happens
//! after the guards are dropped. Every hold of the machine's lock is timed (one
//! `Instant::now()` pair) into `causalkv_lock_hold_seconds`; with `--lock-cpu-metrics`
//! also in the thread's CPU time, into `causalkv_lock_hold_cpu_seconds`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::protocol::causal::{Addr, parse_addr};
use crate::protocol::machine::{Answer, Event, Machine, Message, Output, Reply, Request, Settings};
use crate::protocol::time::{Now, Time};
use crate::server::alloc;
use crate::server::config::Config;
use crate::server::health::Health;
use crate::server::metrics::Metrics;
use crate::server::peer::{self, PeerClient, PeerSettings};
use crate::server::storage::disk::RealDisk;
use crate::server::storage::{self, Journal, Policy, Report, StorageError};
use crate::server::tls::TlsError;
use crate::server::trust::Trust;
use crate::server::wallclock::now_micros;

pub use crate::protocol::machine::NodeError;

/// About how many bytes of store entries one piece of a snapshot takes (one hold of the
/// lock each).
const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;

/// Where a reply goes: the request handler waiting for it.
pub type Waiter = oneshot::Sender<Reply>;

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("data directory: {0}")]
    Storage(#[from] StorageError),
}

pub struct Node {
    pub config: Config,
    /// The journal's writer, with a data directory.
    journal: Option<Journal>,
    /// A snapshot is being taken.
    compacting: AtomicBool,
    /// Its reports, until `start` takes them.
    reports: Mutex<Option<mpsc::UnboundedReceiver<Report>>>,
    machine: Mutex<Machine<Waiter>>,
    /// How peers are reached and what this replica trusts (see `trust`).
    pub trust: Arc<Trust>,
    pub metrics: Metrics,
    peer_settings: Arc<PeerSettings>,
    /// One client (connection pool) per peer, replaced when the peer restarts so that no
    /// request goes out on a connection to its previous life.
    clients: Mutex<HashMap<Addr, PeerClient>>,
    /// Wakes the timer task when the machine's next deadline moved earlier.
    timer: Notify,
    /// Wakes the flusher task when writes were queued.
    flusher: Notify,
    /// The origin of the machine's time.
    origin: Instant,
    /// When this process started serving.
    started: std::time::Instant,
    this: std::sync::Weak<Node>,
}

impl Node {
    pub fn new(config: Config) -> Result<Arc<Node>, StartError> {
        let tls = match &config.tls {
            Some(files) => Some(crate::server::tls::client_config(
                &files.ca,
                Some((&files.cert, &files.key)),
            )?),
            None => None,
        };
        let trust = Arc::new(Trust::new(config.secret.as_ref(), tls.is_some()));
        let peer_settings = Arc::new(PeerSettings {
            me: config.me.clone(),
            trust: trust.clone(),
            tls,
            local_ip: own_ip(&config.me),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (machine, journal) = match &config.data_dir {
            None => (Machine::new(settings(&config)), None),
            Some(dir) => {
                let (machine, journal) = open_data_dir(&config, dir, tx)?;
                (machine, Some(journal))
            }
        };
        Ok(Arc::new_cyclic(|this| Node {
            config,
            journal,
            compacting: AtomicBool::new(false),
            reports: Mutex::new(Some(rx)),
            machine: Mutex::new(machine),
            trust,
            metrics: Metrics::new(),
            peer_settings,
            clients: Mutex::new(HashMap::new()),
            timer: Notify::new(),
            flusher: Notify::new(),
            origin: Instant::now(),
            started: std::time::Instant::now(),
            this: this.clone(),
        }))
    }

    #[track_caller]
    fn lock(&self) -> Held<'_> {
        // A panic while holding the lock is a bug; the state it guards is still the best
        // this replica has, so keep serving rather than poisoning every later request.
        let guard = self
            .machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Held {
            guard: Some(guard),
            since: std::time::Instant::now(),
            cpu_since: self.config.lock_cpu_metrics.then(thread_cpu_time).flatten(),
            at: std::panic::Location::caller(),
            metrics: &self.metrics,
        }
    }

    fn now(&self) -> Now {
        Now {
            at: Time::from_duration(self.origin.elapsed()),
            wall_us: now_micros(),
        }
    }

    /// Runs one step of the machine under the lock, then carries out its outputs.
    #[track_caller]
    fn step<T>(&self, f: impl FnOnce(&mut Machine<Waiter>, Now) -> T) -> T {
        let mut persist = false;
        let (result, outputs, flush) = {
            let mut machine = self.lock();
            let before = machine.next_deadline();
            let result = f(&mut machine, self.now());
            if machine.next_deadline() < before {
                self.timer.notify_one();
            }
            let mut outputs = machine.take_outputs();
            if let Some(journal) = &self.journal {
                // Queued under the lock, so that the journal's order is the machine's.
                outputs.retain_mut(|output| match output {
                    Output::Persist { upto, records } => {
                        journal.append(*upto, std::mem::take(records));
                        persist = true;
                        false
                    }
                    _ => true,
                });
            }
            (result, outputs, machine.take_flush_wanted())
        };
        if flush {
            self.flusher.notify_one();
        }
        self.perform(outputs);
        if persist {
            self.write_journal();
        }
        result
    }

    /// Writes the journal's queued appends from this task (`Journal::write_queued`: with
    /// `--fsync interval` or `never`), and takes the writer's report into the machine.
    fn write_journal(&self) {
        let report = self.journal.as_ref().and_then(Journal::write_queued);
        if let Some(report) = report {
            self.on_report(report);
        }
    }

    /// Takes a report of the journal's writer into the machine, and compacts the journal
    /// into a snapshot once it outgrows half the last one (`storage::wants_compaction`).
    fn on_report(&self, report: Report) {
        match report {
            Report::Durable {
                upto,
                journal_bytes,
                snapshot_bytes,
            } => {
                self.step(|m, _| m.persisted(upto));
                if storage::wants_compaction(journal_bytes, snapshot_bytes) {
                    self.compact();
                }
            }
            Report::Failed(error) => self.step(|m, _| m.storage_failed(error)),
        }
    }

    fn perform(&self, outputs: Vec<Output<Waiter>>) {
        for output in outputs {
            match output {
                Output::Reply(waiter, reply) => {
                    // The handler may have gone (client disconnected): nothing to do.
                    let _ = waiter.send(reply);
                }
                Output::Send {
                    call,
                    to,
                    message,
                    timeout,
                } => {
                    let Some(node) = self.this.upgrade() else {
                        return;
                    };
                    let client = self.client_for(&to);
                    tokio::spawn(async move {
                        let outcome = peer::call(&client, &to, &message, timeout).await;
                        node.step(|m, now| m.answered(call, outcome, now));
                    });
                }
                Output::ResetPeer(peer) => self.reset_client(&peer),
                // Queued by `step` already (a machine without a journal never asks).
                Output::Persist { .. } => {}
                Output::Event(event) => self.count(event),
            }
        }
    }

    fn count(&self, event: Event) {
        match event {
            Event::ViewChanged { joined } => self.metrics.view_changed(joined),
            Event::ReplicationFailed { peer, reason } => {
                self.metrics.replication_failed(&peer, reason)
            }
            Event::CausalWait { waited, timed_out } => self.metrics.causal_wait(waited, timed_out),
            Event::AntiEntropyEntries(n) => self.metrics.anti_entropy_entries(n),
            Event::TombstonesCollected(n) => self.metrics.tombstones_collected(n),
            Event::StorePacked => alloc::release_free_memory(),
        }
    }

    /// The HTTP client for `peer`.
    fn client_for(&self, peer: &Addr) -> PeerClient {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(peer.clone())
            .or_insert_with(|| PeerClient::new(self.peer_settings.clone()))
            .clone()
    }

    /// Drops `peer`'s pooled connections: it restarted, and they lead to its old life.
    fn reset_client(&self, peer: &Addr) {
        let fresh = PeerClient::new(self.peer_settings.clone());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.insert(peer.clone(), fresh);
    }

    /// Compacts the journal into a snapshot taken in pieces (see `storage`), unless one
    /// is under way: the head is queued under the lock, so that appends before it stay
    /// in the old journal and appends after it go to the new one; then each chunk is
    /// taken under its own short hold of the lock, on a blocking thread.
    fn compact(&self) {
        let (Some(node), Some(journal)) = (self.this.upgrade(), &self.journal) else {
            return;
        };
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        journal.begin_snapshot(self.lock().replica().snapshot_head());
        tokio::task::spawn_blocking(move || {
            node.snapshot_chunks();
            node.compacting.store(false, Ordering::Release);
        });
    }

    /// Sends the store to the journal's writer in chunks, releasing the lock between
    /// them, then ends the snapshot.
    fn snapshot_chunks(&self) {
        let Some(journal) = &self.journal else {
            return;
        };
        let mut after = None;
        loop {
            let (records, next) =
                (self.lock().replica()).snapshot_chunk(after.as_deref(), SNAPSHOT_CHUNK_BYTES);
            journal.snapshot_chunk(records);
            match next {
                Some(key) => after = Some(key),
                None => break,
            }
            // Let the threads that waited for the lock take it before the next piece.
            std::thread::yield_now();
        }
        journal.end_snapshot();
    }

    /// A snapshot of this replica (`/health`, `/ready`, the gauges).
    pub fn health(&self) -> Health {
        let uptime = self.started.elapsed().as_secs_f64();
        Health::of(&self.lock(), uptime)
    }

    /// The current view, sorted.
    pub fn view(&self) -> Vec<Addr> {
        self.lock().members().view()
    }

    /// True when `ip` is the IP of a member (in the view, or down), this replica aside.
    pub fn is_member_ip(&self, ip: IpAddr) -> bool {
        let machine = self.lock();
        machine
            .members()
            .members()
            .any(|(addr, ..)| parse_addr(addr).is_some_and(|a| a.ip() == ip))
    }

    /// `addr`'s membership status, as this replica sees it.
    pub fn member_status(&self, addr: &str) -> Option<crate::protocol::membership::Status> {
        self.lock().members().status(addr)
    }

    pub fn is_ready(&self) -> bool {
        self.lock().is_ready()
    }

    /// Steps a client request (`/kvs`) in and waits for its reply.
    pub async fn kvs(&self, request: Request) -> Reply {
        let (waiter, reply) = oneshot::channel();
        self.step(|m, now| m.request(waiter, request, now));
        // The machine always answers (at the latest at a deadline); a dropped waiter
        // means the machine is gone with the process.
        reply
            .await
            .unwrap_or(Reply::Failed(NodeError::CausalTimeout))
    }

    /// `PUT /view`: returns true when `addr` was added.
    pub fn add_to_view(&self, addr: &Addr) -> bool {
        self.step(|m, now| m.add_to_view(addr, now))
    }

    /// `DELETE /view`: returns false when `addr` was not in the view.
    pub fn remove_from_view(&self, addr: &Addr) -> bool {
        self.step(|m, now| m.remove_from_view(addr, now))
    }

    /// A peer's message (authenticated and validated by the API).
    pub fn on_message(&self, message: Message) -> Result<Answer, NodeError> {
        self.step(|m, now| m.message(message, now))
    }
}

/// The machine's lock, held: counts how long into `causalkv_lock_hold_seconds` when it
/// is released (the observation itself, tens of nanoseconds, happens just before).
struct Held<'a> {
    /// `Some` until dropped (taken then, to release the lock before logging).
    guard: Option<MutexGuard<'a, Machine<Waiter>>>,
    since: std::time::Instant,
    /// The thread's CPU time when it took the lock (with `--lock-cpu-metrics`).
    cpu_since: Option<std::time::Duration>,
    /// Where the lock was taken (for the step, where the step was asked for).
    at: &'static std::panic::Location<'static>,
    metrics: &'a Metrics,
}

/// A hold that takes more CPU time than this is logged, with where it was taken.
const LOGGED_HOLD_CPU: std::time::Duration = std::time::Duration::from_millis(1);

/// The calling thread's CPU time so far.
fn thread_cpu_time() -> Option<std::time::Duration> {
    use nix::time::{ClockId, clock_gettime};
    let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(std::time::Duration::from(now))
}

impl Deref for Held<'_> {
    type Target = Machine<Waiter>;

    fn deref(&self) -> &Machine<Waiter> {
        self.guard
            .as_deref()
            .expect("the guard is held until the drop")
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Machine<Waiter> {
        self.guard
            .as_deref_mut()
            .expect("the guard is held until the drop")
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.metrics.lock_held(self.since.elapsed());
        let cpu = self
            .cpu_since
            .and_then(|before| Some(thread_cpu_time()?.saturating_sub(before)));
        // Released before anything is logged: no I/O under the lock.
        drop(self.guard.take());
        if let Some(cpu) = cpu {
            self.metrics.lock_held_cpu(cpu);
            if cpu > LOGGED_HOLD_CPU {
                let (cpu_us, wall_us) = (cpu.as_micros(), self.since.elapsed().as_micros());
                tracing::info!(at = %self.at, cpu_us, wall_us, "a hold of the machine's lock took over 1 ms of CPU");
            }
        }
    }
}

/// Starts the machine (bootstrap), the timer and the flusher.
pub fn start(node: &Arc<Node>) {
    let reports = node.reports.lock().ok().and_then(|mut r| r.take());
    if let (Some(reports), Some(_)) = (reports, &node.journal) {
        tokio::spawn(run_storage_reports(node.clone(), reports));
    }
    node.step(|m, now| m.start(now));
    tokio::spawn(run_timer(node.clone()));
    tokio::spawn(run_flusher(node.clone()));
}

/// Ticks the machine at each deadline it asks for.
async fn run_timer(node: Arc<Node>) {
    loop {
        let deadline = node.lock().next_deadline();
        let at = node.origin + deadline.since_origin();
        tokio::select! {
            _ = tokio::time::sleep_until(at) => node.step(|m, now| m.tick(now)),
            _ = node.timer.notified() => {}
        }
    }
}

/// Sends queued writes, after letting the handlers that are already runnable queue theirs.
async fn run_flusher(node: Arc<Node>) {
    loop {
        node.flusher.notified().await;
        tokio::task::yield_now().await;
        node.step(|m, now| m.flush(now));
    }
}

/// Recovers the data directory into a durable machine and starts the journal's writer,
/// which reports on `reports`.
fn open_data_dir(
    config: &Config,
    dir: &std::path::Path,
    reports: mpsc::UnboundedSender<Report>,
) -> Result<(Machine<Waiter>, Journal), StorageError> {
    let began = std::time::Instant::now();
    let mut recovery = storage::Recovery::open(&RealDisk, dir)?;
    // The records are replayed as they are read, one at a time.
    let machine = Machine::durable(settings(config), &mut recovery);
    let recovered = recovery.finish()?;
    if recovered.torn_bytes > 0 {
        tracing::warn!(
            bytes = recovered.torn_bytes,
            "cut a torn tail off the journal (a crash in the middle of a write)"
        );
    }
    let records = recovered.records;
    let keys = machine.replica().store().live_keys();
    let ms = began.elapsed().as_millis() as u64;
    tracing::info!(dir = %dir.display(), records, keys, ms, fsync = ?config.fsync, "recovered the data directory");
    let journal = storage::start(
        dir.to_path_buf(),
        recovered.generation,
        Policy::new(config.fsync, config.fsync_interval),
        move |report| {
            let _ = reports.send(report);
        },
    )?;
    Ok((machine, journal))
}

/// Carries the journal writer thread's reports into the machine.
async fn run_storage_reports(node: Arc<Node>, mut reports: mpsc::UnboundedReceiver<Report>) {
    while let Some(report) = reports.recv().await {
        node.on_report(report);
    }
}

/// The machine's settings from the configuration.
fn settings(config: &Config) -> Settings {
    Settings {
        me: config.me.clone(),
        view: config.view.clone(),
        causal_wait: config.causal_wait,
        replication_timeout: config.replication_timeout,
        heartbeat_interval: config.heartbeat_interval,
        failure_timeout: config.failure_timeout,
        stability_period: config.stability_period,
        anti_entropy_interval: config.anti_entropy_interval,
        delivery_buffer: config.delivery_buffer,
        peer_queue: config.peer_queue,
    }
}

/// This replica's own IP, when it can bind it: outgoing connections to peers start from
/// it, so that a peer checking source addresses sees the address this replica claims.
fn own_ip(me: &str) -> Option<IpAddr> {
    let ip = parse_addr(me)?.ip();
    std::net::TcpListener::bind((ip, 0)).ok().map(|_| ip)
}
