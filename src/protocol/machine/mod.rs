//! The whole protocol of one replica as a deterministic state machine.
//!
//! A [`Machine`] owns the replica's causal state ([`Replica`]), its view ([`Membership`]),
//! its replication links, its anti-entropy pulls, its bootstrap and every request that
//! waits: client requests parked until their causal dependencies are applied, and local
//! writes waiting for their peers' acknowledgements. It is driven by four kinds of input:
//!
//! * a client request ([`Machine::request`]), carrying a waiter `W` that the reply is for;
//! * a peer's message ([`Machine::message`]), answered at once;
//! * the outcome of a call this machine asked for ([`Machine::answered`]);
//! * a timer tick ([`Machine::tick`]) at or after [`Machine::next_deadline`], and a flush
//!   ([`Machine::flush`]) that sends the writes queued on idle links as batches.
//!
//! Every input carries [`Now`]. The machine answers with [`Output`]s, taken with
//! [`Machine::take_outputs`]: replies to waiters, calls to send, peers whose connections
//! to drop, and events for the metrics. It does no I/O, reads no clock, spawns nothing and
//! draws no random number, and it iterates only ordered maps: the same inputs give the same
//! outputs, which is what lets the simulator (`tools::sim`) replay a seed exactly. The
//! server (`server::node`) is the driver that moves these inputs and outputs over sockets.
//!
//! # Invariants
//!
//! * A request is served only when the replica has applied everything its metadata names
//!   (`Replica::satisfies`); otherwise it parks, a pull from every peer in the view
//!   starts, and it is answered `CausalTimeout` when `causal_wait` passes first.
//! * A local write is applied, then queued on the link of every peer in the view; its
//!   client is answered when each of those peers has acknowledged it, failed, or
//!   `replication_timeout` (plus a little slack) has passed. The answer never waits for
//!   a peer outside the view. On a durable replica ([`Machine::durable`]) it also waits,
//!   without a deadline, until the journal record of the write is durable.
//! * Data (replicated writes, catch-up chunks) is exchanged only with peers in the view on
//!   both sides (`membership`); a link never sends to a peer that has left it.
//! * At most one call per peer is in flight on a link, one pull per peer and one probe per
//!   peer; so a slow or dead peer delays nobody else.

mod links;
mod peers;
#[cfg(test)]
mod tests;
mod tombstones;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::causal::{Addr, Clock, Dot};
use crate::protocol::delivery::Write;
use crate::protocol::journal::{Record, Seq};
use crate::protocol::membership::{Change, Membership, Timing};
use crate::protocol::replica::{CoreError, Delta, Received, Replica};
use crate::protocol::store::{Key, Read, Value};
use crate::protocol::time::{Now, Time};
use crate::protocol::wire::{self, Announce, Heartbeat, Replicate, SyncRequest, ViewChange};

pub use links::FailureReason;

/// Extra time a writer waits past the replication timeout, for the links to report.
pub const ACK_SLACK: Duration = Duration::from_millis(100);

/// The tunables of the protocol (see `causalkv serve --help` for each).
#[derive(Clone, Debug)]
pub struct Settings {
    pub me: Addr,
    /// The configured view, this replica included.
    pub view: Vec<Addr>,
    pub causal_wait: Duration,
    pub replication_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub failure_timeout: Duration,
    pub stability_period: Duration,
    pub anti_entropy_interval: Duration,
    pub delivery_buffer: usize,
    pub peer_queue: usize,
}

/// Mistakes that can be planted on purpose, to prove the simulator finds them. They exist
/// only in test builds; the product has no switch to turn any of them on.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Replicated writes are applied at once, before their dependencies.
    pub apply_before_deps: bool,
    /// A restarted replica takes its previous life's epoch again.
    pub reuse_identity: bool,
    /// A peer that comes back is admitted at its first answered probe.
    pub skip_stability: bool,
    /// A local write is acknowledged without being queued to its peers.
    pub ack_without_queueing: bool,
    /// A catch-up transfer stops before its last chunk.
    pub drop_last_chunk: bool,
    /// A durable replica acknowledges a write before its record is durable.
    pub ack_before_persisted: bool,
    /// Tombstones are collected as soon as this replica applied their delete.
    pub collect_unstable: bool,
}

/// Errors a request or a peer's message can meet (the server maps each to a status).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("Causal dependencies not satisfied; try again later")]
    CausalTimeout,
    #[error("sender {0} is not in this replica's view")]
    NotInView(Addr),
    #[error("{0}")]
    ClockAhead(CoreError),
    #[error("This replica cannot make writes durable ({0}); reads still work")]
    Storage(String),
}

/// A client's request to the key-value store, with the metadata it carried.
#[derive(Debug)]
pub enum Request {
    Get { key: Key, deps: Clock },
    Put { key: Key, value: Value, deps: Clock },
    Delete { key: Key, deps: Clock },
}

impl Request {
    fn deps(&self) -> &Clock {
        match self {
            Request::Get { deps, .. }
            | Request::Put { deps, .. }
            | Request::Delete { deps, .. } => deps,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// A read found a value (JSON text).
    Found {
        value: Box<str>,
        metadata: Clock,
    },
    /// A read or delete of a key that holds no value.
    Missing {
        metadata: Clock,
    },
    /// A put or delete was made; `existed` when the key held a value before. `lamport`
    /// and `dot` are the write's version (what the simulator checks the winner against).
    Written {
        existed: bool,
        metadata: Clock,
        lamport: u64,
        dot: Dot,
    },
    Failed(NodeError),
}

/// A message from a peer, to be answered at once.
#[derive(Clone, Debug)]
pub enum Message {
    Heartbeat(Heartbeat),
    Announce(Announce),
    ViewChange(ViewChange),
    Replicate(Replicate),
    Sync(SyncRequest),
}

impl Message {
    /// The replica the message claims to come from.
    pub fn from(&self) -> &Addr {
        match self {
            Message::Heartbeat(m) => &m.from,
            Message::Announce(m) => &m.from,
            Message::ViewChange(m) => &m.from,
            Message::Replicate(m) => &m.from,
            Message::Sync(m) => &m.from,
        }
    }
}

/// The answer to a [`Message`].
#[derive(Debug)]
pub enum Answer {
    /// To a heartbeat or an announcement.
    Status(wire::Status),
    /// To a view change.
    Done,
    /// To replicated writes: what became of them.
    Taken(Received),
    /// To a sync request: one chunk of what the requester misses.
    Delta(Delta),
}

/// Why a call to a peer brought no answer the machine can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No answer within the call's timeout.
    Timeout,
    /// No connection, or it broke.
    Unreachable(String),
    /// The peer answered that this replica is not in its view.
    NotInView,
    /// The peer answered with another error.
    Refused(String),
    /// The answer did not verify under the cluster secret.
    Unauthenticated(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => f.write_str("no answer in time"),
            CallError::Unreachable(why) => write!(f, "unreachable: {why}"),
            CallError::NotInView => f.write_str("not in the peer's view"),
            CallError::Refused(why) => write!(f, "refused: {why}"),
            CallError::Unauthenticated(why) => write!(f, "unauthenticated answer: {why}"),
        }
    }
}

/// Names one call to a peer, so that its outcome finds its way back.
pub type CallId = u64;

/// What the machine asks its driver to do, or tells it.
#[derive(Debug)]
pub enum Output<W> {
    /// Answer the waiter `W`.
    Reply(W, Reply),
    /// Send `message` to `to` and report the outcome with [`Machine::answered`] (a
    /// [`CallError::Timeout`] once `timeout` has passed without an answer).
    Send {
        call: CallId,
        to: Addr,
        message: Message,
        timeout: Duration,
    },
    /// `peer` restarted: drop connections to its previous life.
    ResetPeer(Addr),
    /// Make these journal records durable (a durable replica only), after every record
    /// of earlier `Persist` outputs; `upto` is the position of the last one. Report with
    /// [`Machine::persisted`].
    Persist { upto: Seq, records: Vec<Record> },
    /// Something for the metrics.
    Event(Event),
}

/// What the metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ViewChanged {
        joined: bool,
    },
    ReplicationFailed {
        peer: Addr,
        reason: FailureReason,
    },
    CausalWait {
        waited: Duration,
        timed_out: bool,
    },
    AntiEntropyEntries(usize),
    /// Tombstones were collected (see `tombstones`).
    TombstonesCollected(usize),
    /// The store packed recent writes: a good moment to give memory back to the OS.
    StorePacked,
}

/// A request waiting for its causal dependencies.
#[derive(Debug)]
struct Parked<W> {
    waiter: W,
    request: Request,
    since: Time,
    deadline: Time,
}

/// A local write waiting for its peers' acknowledgements and, on a durable replica, for
/// its journal record to be durable.
#[derive(Debug)]
struct PendingWrite<W> {
    waiter: W,
    reply: Reply,
    /// Peers whose outcome is still unknown (0 once the replication deadline passed).
    outstanding: usize,
    /// The journal position that must be durable first (0: none).
    durable_at: Seq,
}

pub struct Machine<W> {
    settings: Settings,
    replica: Replica,
    members: Membership,
    links: BTreeMap<Addr, links::Link>,
    calls: BTreeMap<CallId, peers::Call>,
    next_call: CallId,
    /// Peers with a pull in flight, and when each was last pulled from.
    pulling: BTreeSet<Addr>,
    last_pull: BTreeMap<Addr, Time>,
    /// Peers with a probe in flight.
    probing: BTreeSet<Addr>,
    /// Per peer, how many times it restarted while this replica ran: a failed call to an
    /// earlier life does not count against its current one.
    generations: BTreeMap<Addr, u64>,
    parked: VecDeque<Parked<W>>,
    pending: BTreeMap<u64, PendingWrite<W>>,
    /// Deadlines of `pending`, in order (every write waits the same time).
    pending_deadlines: VecDeque<(Time, u64)>,
    next_pending: u64,
    bootstrap: Option<peers::Bootstrap>,
    next_probe: Time,
    outputs: Vec<Output<W>>,
    flush_wanted: bool,
    /// Journal positions: the last handed out in a `Persist`, and the last durable.
    journal_taken: Seq,
    journal_durable: Seq,
    /// Why the journal cannot be written, while it cannot: writes are refused.
    storage_error: Option<String>,
    /// The round of tombstone collection in progress.
    collection: Option<tombstones::Collection>,
    #[cfg(test)]
    bugs: Bugs,
    /// The bounds of a catch-up chunk this machine serves: bytes, records scanned (the
    /// `peers::SYNC_CHUNK_*` constants; tests shrink them).
    sync_chunk: (usize, usize),
}

impl<W> Machine<W> {
    /// A replica that has not started: call [`Machine::start`] first.
    pub fn new(settings: Settings) -> Self {
        let timing = Timing {
            failure_timeout: settings.failure_timeout,
            stability_period: settings.stability_period,
        };
        Machine {
            replica: Replica::new(settings.me.clone(), settings.delivery_buffer),
            members: Membership::new(settings.me.clone(), settings.view.iter().cloned(), timing),
            settings,
            links: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_call: 0,
            pulling: BTreeSet::new(),
            last_pull: BTreeMap::new(),
            probing: BTreeSet::new(),
            generations: BTreeMap::new(),
            parked: VecDeque::new(),
            pending: BTreeMap::new(),
            pending_deadlines: VecDeque::new(),
            next_pending: 0,
            bootstrap: None,
            next_probe: Time::ZERO,
            outputs: Vec::new(),
            flush_wanted: false,
            journal_taken: 0,
            journal_durable: 0,
            storage_error: None,
            collection: None,
            #[cfg(test)]
            bugs: Bugs::default(),
            sync_chunk: (peers::SYNC_CHUNK_BYTES, peers::SYNC_CHUNK_SCAN),
        }
    }

    /// A durable replica: it keeps a journal of every change of its state (handed out as
    /// [`Output::Persist`]) and answers a write only once its record is durable.
    /// `records` are what its previous lives left, replayed before it starts (see
    /// `journal`); call [`Machine::start`] next.
    pub fn durable(settings: Settings, records: impl IntoIterator<Item = Record>) -> Self {
        let mut machine = Machine::new(settings);
        let (addr, capacity) = (
            machine.settings.me.clone(),
            machine.settings.delivery_buffer,
        );
        machine.replica = Replica::with_journal(addr, capacity, records);
        machine
    }

    /// Every journal record up to `upto` is durable: answers the writes that waited only
    /// for that.
    pub fn persisted(&mut self, upto: Seq) {
        if upto <= self.journal_durable {
            return;
        }
        if let Some(error) = self.storage_error.take() {
            tracing::info!(%error, "the journal is written again; writes are accepted");
        }
        self.journal_durable = upto;
        let ready: Vec<u64> = (self.pending.iter())
            .filter(|(_, p)| p.outstanding == 0 && p.durable_at <= upto)
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(done) = self.pending.remove(&id) {
                self.outputs.push(Output::Reply(done.waiter, done.reply));
            }
        }
    }

    /// The journal cannot be written: every write waiting for it is answered with the
    /// error (it was applied here, and maybe replicated, but is not acknowledged), and new
    /// writes are refused until a later record is durable. Reads go on.
    pub fn storage_failed(&mut self, error: String) {
        let durable = self.journal_durable;
        let failed: Vec<u64> = (self.pending.iter())
            .filter(|(_, p)| p.durable_at > durable)
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some(done) = self.pending.remove(&id) {
                let reply = Reply::Failed(NodeError::Storage(error.clone()));
                self.outputs.push(Output::Reply(done.waiter, reply));
            }
        }
        self.storage_error = Some(error);
    }

    /// The journal position of the last change made so far.
    fn journal_position(&self) -> Seq {
        self.journal_taken + self.replica.journal_len() as Seq
    }

    /// Plants `bugs` (test builds only).
    #[cfg(test)]
    pub fn plant(&mut self, bugs: Bugs) {
        self.bugs = bugs;
    }

    /// Serves catch-up chunks of at most `max_bytes` and `max_scanned` records (test
    /// builds only: small chunks make every pull take many steps).
    #[cfg(test)]
    pub fn bound_sync_chunks(&mut self, max_bytes: usize, max_scanned: usize) {
        self.sync_chunk = (max_bytes, max_scanned);
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn members(&self) -> &Membership {
        &self.members
    }

    /// True once bootstrapped.
    pub fn is_ready(&self) -> bool {
        self.replica.is_ready()
    }

    /// Writes queued for `peer`, not yet sent.
    pub fn queue_depth(&self, peer: &str) -> usize {
        self.links.get(peer).map_or(0, |link| link.queue.len())
    }

    /// Everything the machine has asked for since the last call, in order. The driver
    /// calls it after every step, so it also ends the step: the store's merge work is
    /// bounded per step (see `store::table`).
    pub fn take_outputs(&mut self) -> Vec<Output<W>> {
        self.replica.end_step();
        let records = self.replica.take_journal();
        if !records.is_empty() {
            self.journal_taken += records.len() as Seq;
            let upto = self.journal_taken;
            self.outputs.push(Output::Persist { upto, records });
        }
        std::mem::take(&mut self.outputs)
    }

    /// True (once) when writes were queued since the last [`Machine::flush`]: the driver
    /// should flush soon, after letting other requests queue theirs.
    pub fn take_flush_wanted(&mut self) -> bool {
        std::mem::take(&mut self.flush_wanted)
    }

    /// The earliest instant at which [`Machine::tick`] has something to do.
    pub fn next_deadline(&self) -> Time {
        let mut next = self.next_probe;
        if let Some(parked) = self.parked.front() {
            next = next.min(parked.deadline);
        }
        if let Some((deadline, _)) = self.pending_deadlines.front() {
            next = next.min(*deadline);
        }
        if let Some(step) = self.next_collection_step() {
            next = next.min(step);
        }
        next
    }

    /// Starts the replica: announces it to every configured peer (see `peers`).
    pub fn start(&mut self, now: Now) {
        self.next_probe = now.at;
        self.begin_bootstrap(now);
    }

    /// A client's request. The reply comes as an [`Output::Reply`] for `waiter`: in the
    /// outputs of this very step when the request could be served at once.
    pub fn request(&mut self, waiter: W, request: Request, now: Now) {
        if self.replica.satisfies(request.deps()) {
            self.serve(waiter, request, now);
            return;
        }
        let deadline = now.at + self.settings.causal_wait;
        self.parked.push_back(Parked {
            waiter,
            request,
            since: now.at,
            deadline,
        });
        self.pull_from_view(true, now);
    }

    /// Timers: probes, view expiry, retirement, housekeeping, and the deadlines of waiting
    /// requests and writes.
    pub fn tick(&mut self, now: Now) {
        self.expire_parked(now);
        self.expire_pending(now);
        if now.at >= self.next_probe {
            self.next_probe =
                next_period(self.next_probe, now.at, self.settings.heartbeat_interval);
            self.probe_round(now);
        } else if self.next_collection_step().is_some_and(|at| now.at >= at) {
            self.collect_tombstones(now.at);
        }
    }

    /// Answers requests whose dependencies are now applied, in arrival order.
    fn wake_parked(&mut self, now: Now) {
        if self.parked.is_empty() {
            return;
        }
        let mut still = VecDeque::with_capacity(self.parked.len());
        while let Some(parked) = self.parked.pop_front() {
            if self.replica.satisfies(parked.request.deps()) {
                self.event(Event::CausalWait {
                    waited: now.at.duration_since(parked.since),
                    timed_out: false,
                });
                self.serve(parked.waiter, parked.request, now);
            } else {
                still.push_back(parked);
            }
        }
        self.parked = still;
    }

    fn expire_parked(&mut self, now: Now) {
        let mut still = VecDeque::with_capacity(self.parked.len());
        while let Some(parked) = self.parked.pop_front() {
            if parked.deadline <= now.at {
                self.event(Event::CausalWait {
                    waited: now.at.duration_since(parked.since),
                    timed_out: true,
                });
                let reply = Reply::Failed(NodeError::CausalTimeout);
                self.outputs.push(Output::Reply(parked.waiter, reply));
            } else {
                still.push_back(parked);
            }
        }
        self.parked = still;
    }

    /// Serves a request whose dependencies are applied.
    fn serve(&mut self, waiter: W, request: Request, now: Now) {
        let reply = match request {
            Request::Get { key, deps } => Some(self.read(&key, &deps)),
            Request::Put { key, value, deps } => {
                return self.write(waiter, key, Some(value), &deps, now);
            }
            Request::Delete { key, deps } => match self.replica.read(&key) {
                Read::Found { .. } => return self.write(waiter, key, None, &deps, now),
                read => Some(Reply::Missing {
                    metadata: self.replica.metadata_with(&deps, deleted_by(&read)),
                }),
            },
        };
        if let Some(reply) = reply {
            self.outputs.push(Output::Reply(waiter, reply));
        }
    }

    fn read(&self, key: &str, deps: &Clock) -> Reply {
        match self.replica.read(key) {
            Read::Found { value, dot } => Reply::Found {
                value: value.to_json().into(),
                metadata: self.replica.metadata_with(deps, Some(&dot)),
            },
            read => Reply::Missing {
                metadata: self.replica.metadata_with(deps, deleted_by(&read)),
            },
        }
    }

    /// Makes a local write and queues it on every link in the view; the reply waits for
    /// the acknowledgements.
    fn write(&mut self, waiter: W, key: Key, value: Option<Value>, deps: &Clock, now: Now) {
        if let Some(error) = &self.storage_error {
            let reply = Reply::Failed(NodeError::Storage(error.clone()));
            self.outputs.push(Output::Reply(waiter, reply));
            return;
        }
        let local = match self.replica.write(key, value, deps, &now.limits()) {
            Ok(local) => local,
            Err(error) => {
                let error = match error {
                    CoreError::NotReady => NodeError::CausalTimeout,
                    CoreError::ClockAhead => NodeError::ClockAhead(error),
                };
                self.outputs
                    .push(Output::Reply(waiter, Reply::Failed(error)));
                return;
            }
        };
        let reply = Reply::Written {
            existed: local.existed,
            metadata: local.metadata,
            lamport: local.write.entry.lamport,
            dot: local.write.entry.dot.clone(),
        };
        // The write is applied here: requests waiting for it may go.
        self.wake_parked(now);
        let id = self.next_pending;
        self.next_pending += 1;
        let durable_at = match self.replica.has_journal() {
            true => self.journal_position(),
            false => 0,
        };
        #[cfg(test)]
        let durable_at = if self.bugs.ack_before_persisted {
            0
        } else {
            durable_at
        };
        let outstanding = self.queue_on_links(Arc::new(local.write), id);
        if outstanding == 0 && durable_at <= self.journal_durable {
            self.outputs.push(Output::Reply(waiter, reply));
            return;
        }
        let deadline = now.at + self.settings.replication_timeout + ACK_SLACK;
        self.pending.insert(
            id,
            PendingWrite {
                waiter,
                reply,
                outstanding,
                durable_at,
            },
        );
        self.pending_deadlines.push_back((deadline, id));
    }

    /// One peer's outcome for the pending write `id` is known.
    fn resolve(&mut self, id: u64) {
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        pending.outstanding = pending.outstanding.saturating_sub(1);
        if pending.outstanding == 0
            && pending.durable_at <= self.journal_durable
            && let Some(done) = self.pending.remove(&id)
        {
            self.outputs.push(Output::Reply(done.waiter, done.reply));
        }
    }

    fn expire_pending(&mut self, now: Now) {
        while let Some(&(deadline, id)) = self.pending_deadlines.front() {
            if deadline > now.at {
                break;
            }
            self.pending_deadlines.pop_front();
            // The peers are waited for no longer; durability still is.
            let durable = self.journal_durable;
            let ready = self.pending.get_mut(&id).is_some_and(|p| {
                p.outstanding = 0;
                p.durable_at <= durable
            });
            if ready && let Some(done) = self.pending.remove(&id) {
                self.outputs.push(Output::Reply(done.waiter, done.reply));
            }
        }
    }

    /// `PUT /view`: returns true when `addr` was added.
    pub fn add_to_view(&mut self, addr: &Addr, now: Now) -> bool {
        let change = self.members.add(addr, now.at);
        let added = change.is_some();
        self.apply_changes(change, now);
        if added {
            self.broadcast_view_change(wire::ViewOp::Add, addr);
        }
        added
    }

    /// `DELETE /view`: returns false when `addr` was not in the view.
    pub fn remove_from_view(&mut self, addr: &Addr, now: Now) -> bool {
        let was_in_view = self.members.in_view(addr);
        let change = self.members.remove(addr, now.at);
        self.apply_changes(change, now);
        if was_in_view {
            self.broadcast_view_change(wire::ViewOp::Remove, addr);
        }
        was_in_view
    }

    /// Logs view changes; starts links and catch-up for replicas that joined.
    fn apply_changes(&mut self, changes: impl IntoIterator<Item = Change>, now: Now) {
        for change in changes {
            match change {
                Change::Joined(peer, reason) => {
                    self.event(Event::ViewChanged { joined: true });
                    tracing::info!(%peer, "replica joined the view: {reason}");
                    self.links.entry(peer.clone()).or_default();
                    self.pull(&peer, true, now);
                }
                Change::Left(peer, reason) => {
                    self.event(Event::ViewChanged { joined: false });
                    tracing::warn!(%peer, "replica left the view: {reason}");
                    self.abandon_pull(&peer, now);
                }
            }
        }
    }

    fn event(&mut self, event: Event) {
        self.outputs.push(Output::Event(event));
    }

    fn send(&mut self, to: &Addr, message: Message, timeout: Duration, call: peers::Call) {
        let id = self.next_call;
        self.next_call += 1;
        self.calls.insert(id, call);
        self.outputs.push(Output::Send {
            call: id,
            to: to.clone(),
            message,
            timeout,
        });
    }
}

/// The first period boundary after `now`, counting from `last` in steps of `period`
/// (missed periods are skipped, not made up).
fn next_period(last: Time, now: Time, period: Duration) -> Time {
    let period = period.max(Duration::from_millis(1));
    let behind = now.duration_since(last);
    let steps = behind.as_nanos() / period.as_nanos() + 1;
    let steps = u32::try_from(steps).unwrap_or(u32::MAX);
    last + period.saturating_mul(steps)
}

fn deleted_by<'a>(read: &'a Read<'_>) -> Option<&'a Dot> {
    match read {
        Read::Deleted { dot } => Some(dot),
        _ => None,
    }
}

/// The write a link carries, shared by every link it was queued on.
pub type SharedWrite = Arc<Write>;
